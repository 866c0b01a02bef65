//! The OpenAPI document is the contract as running code sees it: served without a token,
//! a valid OpenAPI 3.1 document naming every route, with a docs page that loads nothing
//! from the network — and the running system keeps to it. schemathesis generates requests
//! for every operation (valid and invalid ones, and chains of them along the document's
//! links) with an admin token, and finds no server error and no answer the document does
//! not describe (status, content type, body).
//!
//! Both tools are PyPI packages that `.ci/run` installs at the versions below; without
//! them these tests fail, saying what to install.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::json;
use tokio::process::Command;
use uuid::Uuid;

use crate::harness::TestSystem;

/// Keep in step with `.ci/run`.
const SCHEMATHESIS: &str = "4.32.5";
const SPEC_VALIDATOR: &str = "0.9.0";

/// Cases per operation and phase; with the coverage phase's own cases and the stateful
/// scenarios this is well over a thousand requests, in about a minute.
const MAX_EXAMPLES: &str = "10";
/// The whole run, generously: it takes ~40 s on the development machine.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

/// Every operation API.md promises (and the console's admin additions), as (method, path
/// template).
const OPERATIONS: [(&str, &str); 26] = [
    ("post", "/orders"),
    ("get", "/orders"),
    ("get", "/orders/{id}"),
    ("get", "/orders/{id}/history"),
    ("get", "/orders/{id}/valid-actions"),
    ("post", "/orders/{id}/change-status"),
    ("get", "/orders/state-machine/documentation"),
    ("put", "/inventory/{sku}"),
    ("get", "/inventory/{sku}"),
    ("get", "/jobs/{id}"),
    ("get", "/admin/jobs"),
    ("post", "/admin/jobs/{id}/retry"),
    ("post", "/admin/jobs/{id}/discard"),
    ("post", "/admin/jobs/dead/retry"),
    ("get", "/admin/overview"),
    ("post", "/orders/bulk/filter"),
    ("post", "/orders/bulk/preview"),
    ("post", "/orders/bulk/status-update"),
    ("get", "/orders/bulk/{id}"),
    ("get", "/orders/bulk/{id}/results"),
    ("post", "/orders/bulk/{id}/cancel"),
    ("get", "/orders/events/subscribe"),
    ("get", "/orders/events/stats"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];

/// A scratch directory for one test's files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("orderflow-openapi-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a PyPI tool's command line; a missing tool or another version fails the test with
/// the command that installs the right one.
async fn python_tool(
    package: &str,
    version: &str,
    program: &str,
    args: &[&str],
    cwd: &Path,
) -> Output {
    let install = format!("pip install {package}=={version}");
    let installed = Command::new(program)
        .arg("--version")
        .output()
        .await
        .unwrap_or_else(|e| panic!("`{program}` is not installed ({e}): run `{install}`"));
    let said = String::from_utf8_lossy(&installed.stdout).into_owned()
        + &String::from_utf8_lossy(&installed.stderr);
    assert!(
        said.contains(version),
        "`{program} --version` says {said:?}, expected {version}: run `{install}`"
    );
    let run = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(RUN_DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("`{program}` did not finish within {RUN_DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("running `{program}`: {e}"))
}

fn text_of(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_valid_openapi_3_1_naming_every_operation() {
    let sys = TestSystem::start().await;
    let answer = sys
        .get("/openapi.json", None)
        .await
        .expect_status(200, "the document needs no token");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let doc = answer.body;
    assert_eq!(doc["openapi"], "3.1.0", "{doc}");

    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    let mut promised: Vec<(String, String)> = OPERATIONS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    promised.sort();
    assert_eq!(documented, promised, "the document's operations");

    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http", "{schemes}");
    assert_eq!(schemes["bearer"]["scheme"], "bearer", "{schemes}");
    assert_eq!(schemes["bearer"]["bearerFormat"], "JWT", "{schemes}");
    assert_eq!(
        schemes["access_token"],
        json!({"type": "apiKey", "in": "query", "name": "access_token",
               "description": schemes["access_token"]["description"]}),
    );
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], json!(["error"]), "{error}");

    let scratch = Scratch::new();
    let file = scratch.write("openapi.json", &doc.to_string());
    let file = file.to_str().expect("a UTF-8 path");
    let validated = python_tool(
        "openapi-spec-validator",
        SPEC_VALIDATOR,
        "openapi-spec-validator",
        &["--schema", "3.1", file],
        &scratch.0,
    )
    .await;
    assert!(
        validated.status.success(),
        "openapi-spec-validator refuses the document:\n{}",
        text_of(&validated)
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_loads_everything_from_the_server_itself() {
    let sys = TestSystem::start().await;
    let page = sys
        .get("/docs/", None)
        .await
        .expect_status(200, "the docs page needs no token");
    assert!(
        page.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        page.headers
    );
    let html = page.body.as_str().expect("an HTML page").to_owned();
    // Every script, stylesheet and icon the page names is relative, and served here.
    let assets: Vec<&str> = html
        .split(['"', '\''])
        .skip(1)
        .step_by(2)
        .filter(|s| [".js", ".css", ".png"].iter().any(|ext| s.ends_with(ext)))
        .collect();
    assert!(assets.len() >= 4, "scripts and styles in {html}");
    for asset in assets {
        assert!(
            !asset.contains("//"),
            "the docs page loads {asset} from elsewhere"
        );
        let path = format!("/docs/{}", asset.trim_start_matches("./"));
        let answer = sys.get(&path, None).await.expect_status(200, &path);
        assert!(
            answer.body.as_str().is_none_or(|s| !s.is_empty()),
            "{path} is empty"
        );
    }
    // The page reads this server's document, and asks no online validator about it.
    let init = sys
        .get("/docs/swagger-initializer.js", None)
        .await
        .expect_status(200, "the Swagger UI configuration");
    let init = init.body.as_str().expect("javascript");
    assert!(init.contains("\"url\": \"/openapi.json\""), "{init}");
    assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    // Unlimited rates: a 429 is documented, but a run spent on them would test little else.
    let sys = TestSystem::start_with_env(&[("RATE_PER_ACTOR", "0"), ("RATE_PER_IP", "0")]).await;
    let admin = sys.token("admin", Uuid::new_v4());
    // Something to find: a stocked sku and an order.
    sys.set_inventory(&admin, "tea-1kg", 10).await;
    sys.create_simple_order(&admin).await;

    let scratch = Scratch::new();
    // An event stream never ends: schemathesis reads it until the request times out (and
    // checks the events it got), so that operation gets a short timeout.
    let config = scratch.write(
        "schemathesis.toml",
        "[[operations]]\ninclude-operation-id = \"subscribe_events\"\nrequest-timeout = 1.0\n",
    );
    let spec = sys.url("/openapi.json");
    let auth = format!("Authorization: Bearer {admin}");
    let output = python_tool(
        "schemathesis",
        SCHEMATHESIS,
        "st",
        &[
            "--no-color",
            "--config-file",
            config.to_str().expect("a UTF-8 path"),
            "run",
            &spec,
            "--header",
            &auth,
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            "--max-examples",
            MAX_EXAMPLES,
            "--request-timeout",
            "10",
            "--generation-database",
            "none",
            // One worker: concurrent workers trip a CPython 3.11 bug in Hypothesis
            // ("AST constructor recursion depth mismatch"), reported as a runtime error.
            "--workers",
            "1",
        ],
        &scratch.0,
    )
    .await;
    let report = text_of(&output);
    let summary = report
        .split_once("SUMMARY")
        .map_or(report.as_str(), |(_, s)| s);
    eprintln!("schemathesis summary:{summary}");
    assert!(
        output.status.success(),
        "schemathesis found failures ({}):\n{report}",
        output.status
    );
    let tested = format!("Tested: {}", OPERATIONS.len());
    assert!(
        summary.contains(&tested),
        "every operation tested:\n{summary}"
    );
    let cases = summary
        .lines()
        .find_map(|l| l.trim().strip_suffix(" passed"))
        .and_then(|l| l.split_once(" generated, "))
        .and_then(|(generated, passed)| {
            Some((generated.parse::<u32>().ok()?, passed.parse::<u32>().ok()?))
        });
    let Some((generated, passed)) = cases else {
        panic!("no `N generated, N passed` line in:\n{summary}")
    };
    assert_eq!(generated, passed, "{summary}");
    assert!(generated >= 300, "a few hundred cases at least:\n{summary}");
    sys.stop().await;
}
