//! Real headless Chromium for end-to-end tests, driven over WebDriver (Debian's
//! `chromium` + `chromium-driver`; nothing is downloaded at run time).
//!
//! [`Driver`] runs one `chromedriver` on a free port; each [`Page`] is a browser session
//! of its own (own `--user-data-dir`, so own storage and cookies: two pages are two
//! independent operators). Every wait is for a condition evaluated in the page, with a
//! deadline, and fails with what the page showed. [`Page::console_errors`] reads the
//! browser's console log (errors, failed loads, uncaught exceptions).
//!
//! The client is `fantoccini` (WebDriver, maintained, no TLS needed here so built without
//! default features): a small dependency tree next to CDP crates, and the W3C protocol
//! means the same code would drive another browser.
//!
//! Nothing here knows the console: a page can open any URL (the system's own origin or
//! another one, say a page that subscribes with `EventSource`) and be observed through
//! scripts evaluated in it.

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const CHROMEDRIVER: &str = "chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const START_DEADLINE: Duration = Duration::from_secs(30);
/// The default deadline of a wait: generous for a loaded 2-core CI box.
pub const UI_DEADLINE: Duration = Duration::from_secs(20);
const POLL_EVERY: Duration = Duration::from_millis(100);

/// A running chromedriver.
pub struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("finding a free port for chromedriver")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {CHROMEDRIVER} (apt-get install chromium chromium-driver): {e}")
            });
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let ready = http
                .get(format!("{url}/status"))
                .send()
                .await
                .ok()
                .and_then(|r| r.status().is_success().then_some(()));
            if ready.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on {url} within {START_DEADLINE:?}"
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
        Driver { child, url }
    }

    /// A new browser session (a separate Chromium with a fresh profile) of the given
    /// window size.
    pub async fn page(&self, width: u32, height: u32) -> Page {
        let profile = std::env::temp_dir().join(format!("of-chromium-{}", uuid::Uuid::new_v4()));
        let downloads = profile.join("downloads");
        std::fs::create_dir_all(&downloads).expect("creating the browser profile directory");
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--user-data-dir={}", profile.display()),
            format!("--window-size={width},{height}"),
        ];
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": args,
                "prefs": {
                    "download.default_directory": downloads,
                    "download.prompt_for_download": false,
                },
            },
            "goog:loggingPrefs": { "browser": "ALL" },
            "timeouts": { "script": 30_000, "pageLoad": 30_000 },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("starting a Chromium session ({CHROMIUM}): {e}"));
        let page = Page {
            client,
            profile,
            downloads,
        };
        page.resize(width, height).await;
        page
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// One browser session.
pub struct Page {
    pub client: Client,
    profile: PathBuf,
    pub downloads: PathBuf,
}

/// chromedriver's log endpoint (not in W3C WebDriver, still served by chromedriver).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _url: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(r#"{"type": "browser"}"#.to_owned()),
        )
    }
}

impl Page {
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("navigating to {url}: {e}"));
    }

    /// Set the viewport to exactly `width` x `height` CSS pixels (window size minus
    /// whatever the window adds around the page).
    pub async fn resize(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width, height)
            .await
            .expect("setting the window size");
        let inner = self
            .eval("return [window.innerWidth, window.innerHeight]")
            .await;
        let (iw, ih) = (
            inner[0].as_u64().unwrap_or(0) as u32,
            inner[1].as_u64().unwrap_or(0) as u32,
        );
        if (iw, ih) != (width, height) && iw > 0 {
            self.client
                .set_window_size(
                    width + (width - iw.min(width)),
                    height + (height - ih.min(height)),
                )
                .await
                .expect("setting the window size");
        }
    }

    /// Run `script` (a function body; `arguments` are `args`) and return its value.
    pub async fn eval_with(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("running script `{script}`: {e}"))
    }

    pub async fn eval(&self, script: &str) -> Value {
        self.eval_with(script, vec![]).await
    }

    /// Wait until `script` returns something truthy; return it. Panics after `within`
    /// with `what` and the page's main text.
    pub async fn wait_for(&self, what: &str, within: Duration, script: &str) -> Value {
        let deadline = Instant::now() + within;
        loop {
            // A navigation in progress can fail a script run: that is "not yet".
            if let Ok(v) = self.client.execute(script, vec![]).await {
                let truthy = !matches!(&v, Value::Null | Value::Bool(false))
                    && v != json!(0)
                    && v != json!("");
                if truthy {
                    return v;
                }
            }
            if Instant::now() >= deadline {
                let seen = self.text("main").await;
                panic!(
                    "waited {within:?} for {what}; the page ({}) shows:\n{seen}",
                    self.location().await
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Wait for an element matching `css`, visible in the layout.
    pub async fn wait_css(&self, what: &str, css: &str) {
        let script = format!(
            "const e = document.querySelector({}); return !!e && e.getClientRects().length > 0",
            json!(css)
        );
        self.wait_for(what, UI_DEADLINE, &script).await;
    }

    /// Wait until the text of the element matching `css` satisfies the JS predicate
    /// `test` (an expression over `t`); return the text.
    pub async fn wait_text(&self, what: &str, css: &str, test: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); if (!e) return null; const t = e.textContent.trim(); return ({test}) ? t : null",
            json!(css)
        );
        self.wait_for(what, UI_DEADLINE, &script)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The text content of the first element matching `css` ("" when there is none).
    pub async fn text(&self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.innerText : ''",
            json!(css)
        );
        self.client
            .execute(&script, vec![])
            .await
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    pub async fn count(&self, css: &str) -> u64 {
        self.eval(&format!(
            "return document.querySelectorAll({}).length",
            json!(css)
        ))
        .await
        .as_u64()
        .unwrap_or(0)
    }

    pub async fn location(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    /// Click the element matching `css` as a user would (scrolled into view, real events).
    /// A live page may re-render the element between finding and clicking it (a stale
    /// element: the click did not happen); then the new one is clicked.
    pub async fn click(&self, css: &str) {
        let deadline = Instant::now() + UI_DEADLINE;
        loop {
            self.wait_css(&format!("`{css}` to click"), css).await;
            let clicked = match self.client.find(Locator::Css(css)).await {
                Ok(el) => el.click().await,
                Err(e) => Err(e),
            };
            match clicked {
                Ok(()) => return,
                Err(e) if e.to_string().contains("stale element") && Instant::now() < deadline => {
                    tokio::time::sleep(POLL_EVERY).await;
                }
                Err(e) => panic!("clicking `{css}`: {e}"),
            }
        }
    }

    /// Type `text` into the field matching `css`, replacing what it held.
    pub async fn type_into(&self, css: &str, text: &str) {
        self.wait_css(&format!("`{css}` to type into"), css).await;
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("finding `{css}`: {e}"));
        el.clear()
            .await
            .unwrap_or_else(|e| panic!("clearing `{css}`: {e}"));
        el.send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("typing into `{css}`: {e}"));
    }

    pub async fn select(&self, css: &str, value: &str) {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("finding `{css}`: {e}"));
        el.select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("selecting `{value}` in `{css}`: {e}"));
    }

    /// Save a PNG of the viewport as `dir/name.png`.
    pub async fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("taking screenshot {name}: {e}"));
        std::fs::create_dir_all(dir).expect("creating the screenshot directory");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// Save a PNG of the whole page (not only the viewport), by growing the window to
    /// the document's height for the shot.
    pub async fn full_screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        let (w, h) = self
            .client
            .get_window_size()
            .await
            .expect("reading the window size");
        let height = self
            .eval("return document.documentElement.scrollHeight")
            .await
            .as_u64()
            .unwrap_or(h);
        self.client
            .set_window_size(
                w as u32,
                (height + (h.saturating_sub(self.inner_height().await))) as u32,
            )
            .await
            .expect("growing the window");
        let path = self.screenshot(dir, name).await;
        self.client
            .set_window_size(w as u32, h as u32)
            .await
            .expect("restoring the window size");
        path
    }

    async fn inner_height(&self) -> u64 {
        self.eval("return window.innerHeight")
            .await
            .as_u64()
            .unwrap_or(0)
    }

    /// Console messages of level SEVERE (errors, failed requests, uncaught exceptions)
    /// since the last call.
    pub async fn console_errors(&self) -> Vec<String> {
        let log = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .unwrap_or_else(|e| panic!("reading the browser log: {e}"));
        log.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| e["level"] == "SEVERE")
                    .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Panics if the page's console showed an error since the last check.
    pub async fn assert_no_console_errors(&self, when: &str) {
        let errors = self.console_errors().await;
        assert!(
            errors.is_empty(),
            "console errors {when}:\n{}",
            errors.join("\n")
        );
    }

    /// Panics if the document is wider than the viewport (horizontal scrolling).
    pub async fn assert_no_horizontal_scroll(&self, when: &str) {
        let v = self
            .eval(
                "const d = document.documentElement; \
                 const wide = [...document.querySelectorAll('body *')] \
                   .filter(e => e.getBoundingClientRect().right > innerWidth + 0.5) \
                   .slice(0, 5).map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + '.' + [...e.classList].join('.')); \
                 return [d.scrollWidth, innerWidth, wide]",
            )
            .await;
        let (scroll, inner) = (v[0].as_u64().unwrap_or(0), v[1].as_u64().unwrap_or(0));
        assert!(
            scroll <= inner,
            "{when}: the page scrolls sideways (scrollWidth {scroll} > innerWidth {inner}); too wide: {}",
            v[2]
        );
    }

    pub async fn close(self) {
        let _ = self.client.close().await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Where a test's screenshots go: `target/<name>/`, next to the build's other outputs.
pub fn screenshot_dir(name: &str) -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join(name)
}
