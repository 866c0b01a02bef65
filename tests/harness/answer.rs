//! An HTTP answer as a client sees it, and the API's contracts on it (status, error shape).

use reqwest::{StatusCode, header::HeaderMap};
use serde_json::Value;

/// An HTTP answer with its body read: JSON when it parses, else the text as a JSON string
/// (so that a failing assertion can still print what the server said).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub async fn read(resp: reqwest::Response) -> Self {
        let status = resp.status();
        let headers = resp.headers().clone();
        let streaming = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("text/event-stream"));
        if streaming {
            // An open event stream never ends: do not wait for its body.
            return Self {
                status,
                headers,
                body: Value::String("<text/event-stream>".into()),
            };
        }
        let text = resp.text().await.expect("reading the response body");
        Self::parsed(status, headers, text)
    }

    /// An answer whose body text was already read.
    pub fn parsed(status: StatusCode, headers: HeaderMap, text: String) -> Self {
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Self {
            status,
            headers,
            body,
        }
    }

    /// `error.code` of an error body, if it is one.
    pub fn code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Panics unless the status is `expected`, printing the body.
    pub fn expect_status(self, expected: u16, what: &str) -> Self {
        assert_eq!(
            self.status.as_u16(),
            expected,
            "{what}: expected HTTP {expected}, got {} with body {}",
            self.status,
            self.body
        );
        self
    }

    /// Panics unless this is the API's error shape with the given status (and code, if given).
    pub fn expect_error(self, status: u16, code: Option<&str>, what: &str) -> Self {
        let answer = self.expect_status(status, what);
        let err = &answer.body["error"];
        assert!(
            err["code"].as_str().is_some_and(|c| !c.is_empty())
                && err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: error body must be {{\"error\": {{\"code\", \"message\"}}}}, got {}",
            answer.body
        );
        if let Some(code) = code {
            assert_eq!(
                answer.code(),
                Some(code),
                "{what}: wrong error code in {}",
                answer.body
            );
        }
        answer
    }
}

/// Asserts the response's content type starts with `expected` (`what` names the request).
pub fn expect_content_type(resp: &reqwest::Response, expected: &str, what: &str) {
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with(expected),
        "{what}: content-type {content_type:?}, expected {expected}"
    );
}
