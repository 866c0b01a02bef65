//! Reading `/metrics` as Prometheus would: the text format's samples, looked up by name and
//! a subset of their labels.

use std::time::Duration;

use crate::harness::{TestSystem, wait};

/// One sample: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// One scrape of `/metrics`.
pub struct Scrape {
    pub text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    pub async fn of(sys: &TestSystem) -> Self {
        let resp = reqwest::get(sys.url("/metrics"))
            .await
            .expect("GET /metrics");
        assert_eq!(resp.status(), 200, "GET /metrics");
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/plain"),
            "/metrics content-type {content_type:?}"
        );
        Self::parse(resp.text().await.expect("reading /metrics"))
    }

    fn parse(text: String) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let value: f64 = value.parse().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, labels_of(rest.trim_end_matches('}'))),
                    None => (series, Vec::new()),
                };
                Some((name.to_owned(), labels, value))
            })
            .collect();
        Scrape { text, samples }
    }

    /// The sum of every sample of `name` whose labels include `labels` (0 when none).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The sum of every sample of `name` whose labels include `labels`; None when there is
    /// no such sample (not recorded yet — which is not the same as 0).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matching = self
            .samples
            .iter()
            .filter(|(n, ls, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| *v)
            .peekable();
        matching.peek()?;
        Some(matching.sum())
    }

    /// Whether any sample of `name` exists at all.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|(n, _, _)| n == name)
    }
}

/// `a="x",b="y"` (values without commas or quotes: ours never have them).
fn labels_of(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        })
        .collect()
}

/// Scrape until a sample `name{labels}` exists and satisfies `wanted` (described by
/// `what`); the last scrape.
pub async fn wait_for(
    sys: &TestSystem,
    name: &str,
    labels: &[(&str, &str)],
    what: &str,
    wanted: impl Fn(f64) -> bool,
    within: Duration,
) -> Scrape {
    let description = format!("{name}{labels:?} {what}");
    wait::expect_within(within, &description, || async {
        let scrape = Scrape::of(sys).await;
        match scrape.get(name, labels) {
            Some(v) if wanted(v) => Ok(scrape),
            Some(v) => Err(format!("{v}")),
            None => Err("no such sample yet".to_owned()),
        }
    })
    .await
}
