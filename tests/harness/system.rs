//! The system under test as one `orderflow all` process (every role, one HTTP port) in its
//! own sandbox, and what a client does with it over HTTP: tokens, orders, changes, jobs,
//! history, event streams — plus the database rows the guarantees are about.

use std::{process::Stdio, time::Duration};

use jsonwebtoken::Algorithm;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    task::JoinHandle,
};
use uuid::Uuid;

use super::answer::expect_content_type;
use super::{
    Answer, Broker, BrokerUse, JOB_DEADLINE, Sandbox, SseStream, listening_url, tokens, wait,
};

/// How long the process may take from spawn to `listening on` (migrations, topology).
const START_DEADLINE: Duration = Duration::from_secs(60);

pub const TERMINAL_JOB_STATUSES: [&str; 4] = ["succeeded", "rejected", "dead", "cancelled"];

/// One running `orderflow all` with its own database and broker namespace.
pub struct TestSystem {
    // Dropped in this order: the process dies before its sandbox is removed.
    child: Option<Child>,
    stdout_drain: Option<JoinHandle<()>>,
    pool: PgPool,
    base_url: String,
    http: reqwest::Client,
    broker: Broker,
    /// Extra environment of the spawned process (kept across `restart`).
    extra_env: Vec<(String, String)>,
    sandbox: Sandbox,
}

impl TestSystem {
    pub async fn start() -> Self {
        Self::start_with_env(&[]).await
    }

    /// Like [`TestSystem::start`], with extra environment variables for the spawned process
    /// (e.g. `RATE_PER_ACTOR`); `restart` keeps them.
    pub async fn start_with_env(env: &[(&str, &str)]) -> Self {
        let sandbox = Sandbox::create(BrokerUse::Shared).await;
        let mut system = Self {
            child: None,
            stdout_drain: None,
            // The schema does not exist yet: `all` applies the migrations before it listens.
            pool: PgPoolOptions::new()
                .max_connections(4)
                .connect_lazy(&sandbox.db_url)
                .unwrap_or_else(|e| panic!("the test database URL {}: {e}", sandbox.db_url)),
            base_url: String::new(),
            http: reqwest::Client::new(),
            broker: Broker {
                amqp_url: sandbox.amqp_url.clone(),
                ns: sandbox.ns.clone(),
            },
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            sandbox,
        };
        system.spawn().await;
        system
    }

    async fn spawn(&mut self) {
        // A free port unless the test fixed one (`BIND` in its env: a browser page that must
        // reconnect to the same address after a restart).
        let fixed = self.extra_env.iter().any(|(k, _)| k == "BIND");
        let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
        command.arg("all");
        if !fixed {
            command.args(["--bind", "127.0.0.1:0"]).env_remove("BIND");
        }
        let mut child = command
            .envs(self.sandbox.env())
            .env("RUST_LOG", "info,orderflow=debug")
            .env("LOG_FORMAT", "pretty")
            .envs(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning `orderflow all`");
        let stdout = child.stdout.take().expect("child stdout is piped");
        let mut lines = BufReader::new(stdout).lines();

        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        self.base_url = loop {
            match tokio::time::timeout_at(deadline, lines.next_line()).await {
                Err(_) => panic!(
                    "`orderflow all` (db {}, ns {}) printed no `listening on http://…` line within {START_DEADLINE:?}",
                    self.sandbox.db_name, self.sandbox.ns
                ),
                Ok(Ok(Some(line))) => {
                    if let Some(url) = listening_url(&line) {
                        break url;
                    }
                    eprintln!("[orderflow stdout] {line}");
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    let status = child.wait().await;
                    panic!(
                        "`orderflow all` exited before it was listening: {status:?} (its stderr is above)"
                    );
                }
            }
        };
        // Keep draining stdout so that the child never blocks on a full pipe.
        self.stdout_drain = Some(tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[orderflow stdout] {line}");
            }
        }));
        self.child = Some(child);
    }

    /// Kills the process (SIGKILL: no graceful shutdown, like a crash) and starts a new
    /// one on the same database and namespace. The port changes; `url` follows it.
    pub async fn restart(&mut self) {
        self.kill_process().await;
        self.spawn().await;
    }

    /// Kills the process (SIGKILL) and leaves it down: the database and the namespace stay
    /// for the test to inspect or arrange; `restart` brings the system back.
    pub async fn kill_process(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        if let Some(drain) = self.stdout_drain.take() {
            drain.abort();
        }
    }

    /// Stops the process as an operator would (SIGTERM) and waits until it has exited
    /// after its graceful shutdown; panics if it takes longer than `within`.
    pub async fn terminate(&mut self, within: Duration) {
        let mut child = self.child.take().expect("the process is running");
        let pid = child.id().expect("a running child has a pid");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM {pid}: {sent}");
        match tokio::time::timeout(within, child.wait()).await {
            Ok(status) => eprintln!("`orderflow all` stopped: {status:?}"),
            Err(_) => panic!("`orderflow all` did not exit within {within:?} of SIGTERM"),
        }
    }

    /// Kills the process, drops the database and deletes the namespace's broker objects.
    pub async fn stop(mut self) {
        self.kill_process().await;
        self.pool.close().await;
        self.sandbox.clean().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub fn db(&self) -> &PgPool {
        &self.pool
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    // ---- tokens -------------------------------------------------------------------

    /// A valid HS256 token for `role` and `sub`, valid for an hour.
    pub fn token(&self, role: &str, sub: Uuid) -> String {
        tokens::signed_token(&self.sandbox.jwt_secret, role, sub, 3600)
    }

    /// A correctly signed token that expired an hour ago (beyond any leeway).
    pub fn expired_token(&self, role: &str, sub: Uuid) -> String {
        tokens::signed_token(&self.sandbox.jwt_secret, role, sub, -3600)
    }

    /// A correctly signed token without the required `exp` claim.
    pub fn token_without_exp(&self, role: &str, sub: Uuid) -> String {
        tokens::token_without_exp(&self.sandbox.jwt_secret, role, sub)
    }

    /// A JWT with exactly this header and these claims, signed with this system's secret by
    /// the HMAC algorithm `alg`, whatever the header claims (for algorithm-confusion cases).
    pub fn token_with(&self, alg: Algorithm, header: &Value, claims: &Value) -> String {
        tokens::jwt_signed_with(self.sandbox.jwt_secret.as_bytes(), alg, header, claims)
    }

    // ---- HTTP ---------------------------------------------------------------------

    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends `req` and reads the answer; panics naming `what` on a transport error.
    pub async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Answer {
        Answer::read(req.send().await.unwrap_or_else(|e| panic!("{what}: {e}"))).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let req = self.request(Method::GET, path, token);
        self.send(req, &format!("GET {path}")).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Answer {
        let req = self.request(Method::POST, path, token).json(body);
        self.send(req, &format!("POST {path}")).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: &Value) -> Answer {
        let req = self.request(Method::PUT, path, token).json(body);
        self.send(req, &format!("PUT {path}")).await
    }

    // ---- orders and jobs ----------------------------------------------------------

    /// `POST /orders` with these items; asserts 201 and returns the order.
    pub async fn create_order(&self, token: &str, items: Value) -> Value {
        let answer = self
            .post("/orders", Some(token), &json!({ "items": items }))
            .await
            .expect_status(201, "POST /orders");
        let order = answer.body;
        assert_eq!(
            order["status"], "pending",
            "a new order is pending: {order}"
        );
        assert_eq!(
            order["payment_status"], "unpaid",
            "a new order is unpaid: {order}"
        );
        assert_eq!(order["version"], 1, "a new order has version 1: {order}");
        order
    }

    /// An order of one item of a sku that has no inventory row (so it is always in stock).
    pub async fn create_simple_order(&self, token: &str) -> Uuid {
        let sku = format!("SKU-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let order = self
            .create_order(
                token,
                json!([{"sku": sku, "quantity": 1, "unit_price_cents": 1250}]),
            )
            .await;
        uuid_of(&order, "id")
    }

    /// `PUT /inventory/{sku}`; asserts 200.
    pub async fn set_inventory(&self, admin_token: &str, sku: &str, on_hand: i64) -> Value {
        self.put(
            &format!("/inventory/{sku}"),
            Some(admin_token),
            &json!({ "on_hand": on_hand }),
        )
        .await
        .expect_status(200, "PUT /inventory/{sku}")
        .body
    }

    /// `POST /orders/{id}/change-status` with a JSON body and extra headers.
    pub async fn change_status(
        &self,
        token: &str,
        order_id: Uuid,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Answer {
        let path = format!("/orders/{order_id}/change-status");
        let mut req = self.request(Method::POST, &path, Some(token)).json(body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.send(req, &format!("POST {path}")).await
    }

    /// Submits a change without waiting: asserts the 202 contract and returns the job id.
    pub async fn submit(&self, token: &str, order_id: Uuid, body: &Value) -> Uuid {
        let answer = self
            .change_status(token, order_id, body, &[])
            .await
            .expect_status(202, &format!("change-status {body}"));
        let job_id = uuid_of(&answer.body, "job_id");
        assert_eq!(
            answer.body["order_id"],
            order_id.to_string(),
            "202 body: {}",
            answer.body
        );
        assert_eq!(answer.body["status"], "queued", "202 body: {}", answer.body);
        let location = answer.header("location").unwrap_or_default();
        assert!(
            location.ends_with(&format!("/jobs/{job_id}")),
            "202 must carry Location: /jobs/{job_id}, got {location:?}"
        );
        job_id
    }

    /// Submits a change and waits until its job succeeded; returns the job.
    pub async fn apply(&self, token: &str, order_id: Uuid, body: &Value) -> Value {
        let job_id = self.submit(token, order_id, body).await;
        let job = self.wait_job(token, job_id).await;
        assert_eq!(
            job["status"], "succeeded",
            "job for {body} on order {order_id}: {job}"
        );
        job
    }

    /// Polls `GET /jobs/{id}` until the job is terminal; panics after JOB_DEADLINE.
    pub async fn wait_job(&self, token: &str, job_id: Uuid) -> Value {
        let path = format!("/jobs/{job_id}");
        wait::expect_within(JOB_DEADLINE, &format!("job {job_id} terminal"), || async {
            let job = self
                .get(&path, Some(token))
                .await
                .expect_status(200, "GET /jobs/{id}")
                .body;
            let status = job["status"].as_str().unwrap_or_default();
            if TERMINAL_JOB_STATUSES.contains(&status) {
                Ok(job)
            } else {
                Err(job.to_string())
            }
        })
        .await
    }

    pub async fn order(&self, token: &str, order_id: Uuid) -> Value {
        self.get(&format!("/orders/{order_id}"), Some(token))
            .await
            .expect_status(200, "GET /orders/{id}")
            .body
    }

    /// `GET /orders/{id}/history` rows, oldest first.
    pub async fn history(&self, token: &str, order_id: Uuid) -> Vec<Value> {
        let body = self
            .get(&format!("/orders/{order_id}/history"), Some(token))
            .await
            .expect_status(200, "GET /orders/{id}/history")
            .body;
        body["history"]
            .as_array()
            .unwrap_or_else(|| panic!("history body has no `history` array: {body}"))
            .clone()
    }

    /// Opens an SSE stream; asserts 200 and `text/event-stream`. Once this returned, the
    /// server delivers every event published later (and the replay, if resuming).
    pub async fn sse_connect(
        &self,
        path_and_query: &str,
        token: Option<&str>,
        last_event_id: Option<u64>,
    ) -> SseStream {
        let mut req = self
            .request(Method::GET, path_and_query, token)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"));
        if resp.status() != StatusCode::OK {
            let answer = Answer::read(resp).await;
            panic!(
                "SSE GET {path_and_query}: expected 200, got {} {}",
                answer.status, answer.body
            );
        }
        expect_content_type(
            &resp,
            "text/event-stream",
            &format!("SSE GET {path_and_query}"),
        );
        SseStream::new(resp)
    }

    // ---- database -----------------------------------------------------------------

    /// A `select count(*) …` with one uuid parameter.
    pub async fn count(&self, sql: &str, id: Uuid) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .bind(id)
            .fetch_one(self.db())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn jobs_of_order(&self, order_id: Uuid) -> i64 {
        self.count("select count(*) from jobs where order_id = $1", order_id)
            .await
    }

    pub async fn table_count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("select count(*) from {table}"))
            .fetch_one(self.db())
            .await
            .unwrap_or_else(|e| panic!("count of {table}: {e}"))
    }

    /// Waits until every outbox row is published (the relay drained).
    pub async fn wait_outbox_drained(&self, within: Duration) {
        wait::expect_within(within, "every outbox row published", || async {
            let left: i64 = sqlx::query_scalar(
                "select count(*) from outbox where seq > (select published_seq from outbox_cursor)",
            )
            .fetch_one(self.db())
            .await
            .expect("counting unpublished outbox rows");
            if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} outbox rows unpublished"))
            }
        })
        .await
    }
}

pub fn uuid_of(value: &Value, field: &str) -> Uuid {
    value[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no uuid `{field}` in {value}"))
}
