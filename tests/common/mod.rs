//! Harness for the end-to-end tests: each test starts the real `orderflow all` process
//! against its own fresh database and its own broker namespace, so test functions (and
//! test binaries) run in parallel without seeing each other's orders, jobs or events.
//! Everything is observed from outside, the way clients see it: HTTP, AMQP, SSE, and the
//! database rows the guarantees are about.
//!
//! Nothing here sleeps to "let things settle": every wait is for a condition, with a
//! deadline, and fails loudly with what was seen so far.

#![allow(dead_code)]

pub mod processes;

use std::{
    collections::VecDeque,
    pin::Pin,
    process::Stdio,
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    message::Delivery,
    options::{
        BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection, PgPool, postgres::PgPoolOptions};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    task::JoinHandle,
};
use uuid::Uuid;

/// How long a job may take to reach a terminal state.
pub const JOB_DEADLINE: Duration = Duration::from_secs(20);
/// How long an event may take from commit to a consumer (AMQP queue or SSE stream).
pub const EVENT_DEADLINE: Duration = Duration::from_secs(15);
/// How long the process may take from spawn to `listening on` (migrations, topology).
const START_DEADLINE: Duration = Duration::from_secs(60);
const POLL_EVERY: Duration = Duration::from_millis(50);

const DEFAULT_PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub const TERMINAL_JOB_STATUSES: [&str; 4] = ["succeeded", "rejected", "dead", "cancelled"];

/// One running `orderflow all` with its own database and broker namespace.
pub struct TestSystem {
    child: Option<Child>,
    stdout_drain: Option<JoinHandle<()>>,
    base_url: String,
    admin_url: String,
    pub db_name: String,
    pub db_url: String,
    pub amqp_url: String,
    /// Prefix of every exchange and queue name of this system, e.g. `t-1a2b3c4d.`.
    pub ns: String,
    jwt_secret: String,
    pub http: reqwest::Client,
    pool: Option<PgPool>,
    /// Set once `stop` cleaned up, so that `Drop` has nothing left to do.
    stopped: bool,
    /// Extra environment of the spawned process (kept across `restart`).
    extra_env: Vec<(String, String)>,
}

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

#[derive(Serialize)]
struct Claims<'a> {
    sub: String,
    role: &'a str,
    exp: i64,
    iat: i64,
}

impl TestSystem {
    pub async fn start() -> Self {
        Self::start_with_env(&[]).await
    }

    /// Like [`TestSystem::start`], with extra environment variables for the spawned process
    /// (e.g. `RATE_PER_ACTOR`); `restart` keeps them.
    pub async fn start_with_env(env: &[(&str, &str)]) -> Self {
        let admin_url =
            std::env::var("TEST_PG_ADMIN_URL").unwrap_or_else(|_| DEFAULT_PG_ADMIN_URL.to_owned());
        let amqp_url =
            std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned());
        let db_name = format!("of_test_{}", Uuid::new_v4().simple());
        let db_url = with_database(&admin_url, &db_name);

        let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("connecting to Postgres at {admin_url} (TEST_PG_ADMIN_URL): {e}")
        });
        sqlx::query(&format!(r#"create database "{db_name}""#))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("creating database {db_name}: {e}"));
        let _ = admin.close().await;

        let ns = format!("t-{}.", &Uuid::new_v4().simple().to_string()[..8]);
        let jwt_secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());

        let mut system = Self {
            child: None,
            stdout_drain: None,
            base_url: String::new(),
            admin_url,
            db_name,
            db_url,
            amqp_url,
            ns,
            jwt_secret,
            http: reqwest::Client::builder()
                .build()
                .expect("building the HTTP client"),
            pool: None,
            stopped: false,
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        system.spawn().await;
        // The schema exists now: `all` applies the migrations before it listens.
        system.pool = Some(
            PgPoolOptions::new()
                .max_connections(4)
                .connect(&system.db_url)
                .await
                .unwrap_or_else(|e| {
                    panic!("connecting to the test database {}: {e}", system.db_url)
                }),
        );
        system
    }

    async fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(["all", "--bind", "127.0.0.1:0"])
            .env_remove("BIND")
            .env("DATABASE_URL", &self.db_url)
            .env("AMQP_URL", &self.amqp_url)
            .env("ORDERFLOW_NAMESPACE", &self.ns)
            .env("JWT_SECRET", &self.jwt_secret)
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
        let addr = loop {
            match tokio::time::timeout_at(deadline, lines.next_line()).await {
                Err(_) => panic!(
                    "`orderflow all` (db {}, ns {}) printed no `listening on http://…` line within {START_DEADLINE:?}",
                    self.db_name, self.ns
                ),
                Ok(Ok(Some(line))) => {
                    if let Some((_, rest)) = line.split_once("listening on http://") {
                        break rest.trim().to_owned();
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
        self.base_url = format!("http://{addr}");
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
        self.kill().await;
        self.spawn().await;
    }

    /// Kills the process (SIGKILL) and leaves it down: the database and the namespace stay
    /// for the test to inspect or arrange; `restart` brings the system back.
    pub async fn kill_process(&mut self) {
        self.kill().await;
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        if let Some(drain) = self.stdout_drain.take() {
            drain.abort();
        }
    }

    /// Kills the process, drops the database and deletes the namespace's broker objects.
    pub async fn stop(mut self) {
        self.kill().await;
        if let Some(pool) = self.pool.take() {
            pool.close().await;
        }
        cleanup(&self.admin_url, &self.db_name, &self.amqp_url, &self.ns).await;
        self.stopped = true;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub fn db(&self) -> &PgPool {
        self.pool.as_ref().expect("the test database pool is open")
    }

    pub fn jobs_queue(&self) -> String {
        format!("{}orderflow.jobs", self.ns)
    }

    pub fn events_exchange(&self) -> String {
        format!("{}orderflow.events", self.ns)
    }

    // ---- tokens -------------------------------------------------------------------

    /// A valid HS256 token for `role` and `sub`, valid for an hour.
    pub fn token(&self, role: &str, sub: Uuid) -> String {
        signed_token(&self.jwt_secret, role, sub, 3600)
    }

    /// A correctly signed token that expired an hour ago (beyond any leeway).
    pub fn expired_token(&self, role: &str, sub: Uuid) -> String {
        signed_token(&self.jwt_secret, role, sub, -3600)
    }

    /// A correctly signed token without the required `exp` claim.
    pub fn token_without_exp(&self, role: &str, sub: Uuid) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": sub.to_string(), "role": role, "iat": now()}),
            &jsonwebtoken::EncodingKey::from_secret(self.jwt_secret.as_bytes()),
        )
        .expect("encoding a JWT")
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

    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let resp = self.request(Method::GET, path, token).send().await;
        Answer::read(resp.unwrap_or_else(|e| panic!("GET {path}: {e}"))).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Answer {
        let resp = self
            .request(Method::POST, path, token)
            .json(body)
            .send()
            .await;
        Answer::read(resp.unwrap_or_else(|e| panic!("POST {path}: {e}"))).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: &Value) -> Answer {
        let resp = self
            .request(Method::PUT, path, token)
            .json(body)
            .send()
            .await;
        Answer::read(resp.unwrap_or_else(|e| panic!("PUT {path}: {e}"))).await
    }

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
        order_id(&order)
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
    ) -> reqwest::Response {
        let mut req = self
            .request(
                Method::POST,
                &format!("/orders/{order_id}/change-status"),
                Some(token),
            )
            .json(body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("POST /orders/{order_id}/change-status: {e}"))
    }

    /// Submits a change without waiting: asserts the 202 contract and returns the job id.
    pub async fn submit(&self, token: &str, order_id: Uuid, body: &Value) -> Uuid {
        let answer = Answer::read(self.change_status(token, order_id, body, &[]).await)
            .await
            .expect_status(202, &format!("change-status {body}"));
        let job_id: Uuid = answer.body["job_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("202 body has no job_id: {}", answer.body));
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
        let started = Instant::now();
        loop {
            let answer = self
                .get(&format!("/jobs/{job_id}"), Some(token))
                .await
                .expect_status(200, "GET /jobs/{id}");
            let status = answer.body["status"].as_str().unwrap_or_default();
            if TERMINAL_JOB_STATUSES.contains(&status) {
                return answer.body;
            }
            assert!(
                started.elapsed() < JOB_DEADLINE,
                "job {job_id} not terminal after {JOB_DEADLINE:?}: {}",
                answer.body
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
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

    // ---- database -----------------------------------------------------------------

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

    // ---- AMQP ---------------------------------------------------------------------

    async fn amqp(&self) -> Connection {
        Connection::connect(&self.amqp_url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "connecting to RabbitMQ at {} (TEST_AMQP_URL): {e}",
                    self.amqp_url
                )
            })
    }

    /// A downstream consumer: a server-named exclusive queue bound to the events exchange
    /// with `binding_key`. Bind only after `start` returned (the system declares the exchange).
    pub async fn downstream_queue(&self, binding_key: &str) -> Downstream {
        let conn = self.amqp().await;
        let channel = conn
            .create_channel()
            .await
            .expect("opening an AMQP channel");
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declaring the downstream queue");
        let queue = queue.name().as_str().to_owned();
        let exchange = self.events_exchange();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                binding_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| {
                panic!("binding a queue to {exchange} (declared before `listening on`?): {e}")
            });
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "orderflow-test-downstream".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consuming the downstream queue");
        Downstream {
            _conn: conn,
            _channel: channel,
            consumer,
            queue,
        }
    }

    /// Publishes a job message as the ingress does (default exchange, routing key = the
    /// jobs queue, message_id = job id, persistent), and waits for the broker's confirm.
    pub async fn publish_job_message(&self, job_id: Uuid) {
        let conn = self.amqp().await;
        let channel = conn
            .create_channel()
            .await
            .expect("opening an AMQP channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("enabling publisher confirms");
        let body = json!({ "job_id": job_id }).to_string();
        let confirm = channel
            .basic_publish(
                "".into(),
                self.jobs_queue().as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body.as_bytes(),
                BasicProperties::default()
                    .with_message_id(job_id.to_string().into())
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await
            .expect("publishing a job message")
            .await
            .expect("waiting for the publisher confirm");
        assert!(confirm.is_ack(), "the broker did not ack the job message");
        assert!(
            confirm.take_message().is_none(),
            "the job message was returned: no queue {} bound to the default exchange",
            self.jobs_queue()
        );
        let _ = conn.close(200, "OK".into()).await;
    }

    // ---- SSE ----------------------------------------------------------------------

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
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "SSE GET {path_and_query}: content-type {content_type:?}"
        );
        SseStream::new(resp)
    }
}

impl Drop for TestSystem {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // A test that panicked before `stop`: kill the process now (kill_on_drop would
        // too), and clean up unless asked to keep the evidence.
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::env::var_os("TEST_KEEP_DB").is_some() {
            eprintln!(
                "TEST_KEEP_DB: kept database {} and namespace {}",
                self.db_name, self.ns
            );
            return;
        }
        self.pool.take();
        let (admin_url, db_name, amqp_url, ns) = (
            self.admin_url.clone(),
            self.db_name.clone(),
            self.amqp_url.clone(),
            self.ns.clone(),
        );
        // Drop runs inside the test's runtime: clean up on a thread with its own.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(cleanup(&admin_url, &db_name, &amqp_url, &ns));
            }
        })
        .join();
    }
}

async fn cleanup(admin_url: &str, db_name: &str, amqp_url: &str, ns: &str) {
    match PgConnection::connect(admin_url).await {
        Ok(mut admin) => {
            if let Err(e) = sqlx::query(&format!(
                r#"drop database if exists "{db_name}" with (force)"#
            ))
            .execute(&mut admin)
            .await
            {
                eprintln!("cleanup: dropping database {db_name}: {e}");
            }
            let _ = admin.close().await;
        }
        Err(e) => eprintln!("cleanup: connecting to Postgres: {e}"),
    }
    let Ok(conn) = Connection::connect(amqp_url, ConnectionProperties::default()).await else {
        eprintln!("cleanup: cannot connect to RabbitMQ to delete namespace {ns}");
        return;
    };
    // The durable queues a namespace may have (deleting one that does not exist is a no-op):
    // work and dead queues, and one delay queue per retry step.
    let mut queues: Vec<String> = [
        "orderflow.jobs",
        "orderflow.jobs.dead",
        "orderflow.bulk",
        "orderflow.bulk.dead",
    ]
    .iter()
    .map(|q| format!("{ns}{q}"))
    .collect();
    for step in 1..=16 {
        queues.push(format!("{ns}orderflow.jobs.retry.{step}"));
        queues.push(format!("{ns}orderflow.bulk.retry.{step}"));
    }
    // One channel per delete: a failed delete closes its channel.
    for queue in queues {
        if let Ok(channel) = conn.create_channel().await {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
            let _ = channel.close(200, "OK".into()).await;
        }
    }
    if let Ok(channel) = conn.create_channel().await {
        let _ = channel
            .exchange_delete(
                format!("{ns}orderflow.events").into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = conn.close(200, "OK".into()).await;
}

/// The admin URL with its database replaced by `db_name`.
fn with_database(admin_url: &str, db_name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db_name}?{q}"),
        None => format!("{base}/{db_name}"),
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An HS256 token signed with `secret`, expiring `ttl_secs` from now (negative: expired).
pub fn signed_token(secret: &str, role: &str, sub: Uuid, ttl_secs: i64) -> String {
    let claims = Claims {
        sub: sub.to_string(),
        role,
        exp: now() + ttl_secs,
        iat: now(),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encoding a JWT")
}

/// A token with `alg: none` and an empty signature, built by hand (no library mints these).
pub fn unsigned_token(role: &str, sub: Uuid) -> String {
    let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = json!({"sub": sub.to_string(), "role": role, "exp": now() + 3600, "iat": now()});
    format!("{header}.{}.", base64url(claims.to_string().as_bytes()))
}

/// Unpadded base64url (RFC 4648 §5), as JWTs use.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

pub fn order_id(order: &Value) -> Uuid {
    order["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("order without a uuid `id`: {order}"))
}

pub fn uuid_of(value: &Value, field: &str) -> Uuid {
    value[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no uuid `{field}` in {value}"))
}

// ---- downstream (AMQP) consumer -------------------------------------------------------

pub struct Downstream {
    _conn: Connection,
    _channel: Channel,
    consumer: Consumer,
    pub queue: String,
}

impl Downstream {
    /// The next delivery, or None if none arrived within `within`.
    pub async fn next_within(&mut self, within: Duration) -> Option<Delivery> {
        match tokio::time::timeout(within, self.consumer.next()).await {
            Err(_) => None,
            Ok(Some(Ok(delivery))) => Some(delivery),
            Ok(Some(Err(e))) => panic!("downstream consumer on {} failed: {e}", self.queue),
            Ok(None) => panic!("downstream consumer on {} was closed", self.queue),
        }
    }

    /// The next delivery; panics naming `what` if none arrives within EVENT_DEADLINE.
    pub async fn expect_next(&mut self, what: &str) -> Delivery {
        self.next_within(EVENT_DEADLINE).await.unwrap_or_else(|| {
            panic!("no downstream message within {EVENT_DEADLINE:?}: expected {what}")
        })
    }
}

pub fn message_id(delivery: &Delivery) -> Option<String> {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_owned())
}

pub fn message_json(delivery: &Delivery) -> Value {
    serde_json::from_slice(&delivery.data).unwrap_or_else(|e| {
        panic!(
            "downstream body is not JSON ({e}): {}",
            String::from_utf8_lossy(&delivery.data)
        )
    })
}

pub fn message_header(delivery: &Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}

// ---- SSE client -------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {self:?}"))
    }

    /// The event id as the decimal `seq` it must be.
    pub fn seq(&self) -> u64 {
        self.id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("SSE event without a decimal id: {self:?}"))
    }

    pub fn kind(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }

    pub fn order_id(&self) -> Option<String> {
        self.json()["order_id"].as_str().map(str::to_owned)
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Vec<u8>>> + Send>>;

/// A `text/event-stream` reader: parses fields, skips comments, ends events at a blank line.
pub struct SseStream {
    body: Body,
    buf: Vec<u8>,
    ready: VecDeque<SseEvent>,
    id: Option<String>,
    event: Option<String>,
    data: Vec<String>,
    /// The last `retry:` hint, in ms.
    pub retry: Option<u64>,
    /// Comment lines seen (keep-alives).
    pub comments: usize,
    ended: bool,
}

impl SseStream {
    fn new(resp: reqwest::Response) -> Self {
        Self {
            body: Box::pin(resp.bytes_stream().map(|chunk| chunk.map(|b| b.to_vec()))),
            buf: Vec::new(),
            ready: VecDeque::new(),
            id: None,
            event: None,
            data: Vec::new(),
            retry: None,
            comments: 0,
            ended: false,
        }
    }

    /// Whether the server closed the stream.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The next event, or None if none arrived within `within` (or the stream ended).
    pub async fn next_event_within(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return None,
                Ok(None) => self.ended = true,
                Ok(Some(Err(e))) => panic!("SSE stream failed: {e}"),
                Ok(Some(Ok(chunk))) => self.feed(&chunk),
            }
        }
    }

    /// The next event; panics naming `what` if none arrives within EVENT_DEADLINE.
    pub async fn expect_event(&mut self, what: &str) -> SseEvent {
        match self.next_event_within(EVENT_DEADLINE).await {
            Some(event) => event,
            None if self.ended => panic!("SSE stream ended while waiting for {what}"),
            None => panic!("no SSE event within {EVENT_DEADLINE:?}: expected {what}"),
        }
    }

    /// Events up to and including the first one matching `pred`; panics (showing what
    /// came) if none matches within `within`.
    pub async fn collect_until(
        &mut self,
        mut pred: impl FnMut(&SseEvent) -> bool,
        within: Duration,
    ) -> Vec<SseEvent> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event_within(left).await {
                Some(event) => {
                    let done = pred(&event);
                    seen.push(event);
                    if done {
                        return seen;
                    }
                }
                None => panic!(
                    "SSE: the awaited event did not come within {within:?} (stream ended: {}); got {seen:#?}",
                    self.ended
                ),
            }
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).expect("SSE stream is UTF-8");
            self.line(&line);
        }
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line.starts_with(':') {
            self.comments += 1;
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "id" => self.id = Some(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            "data" => self.data.push(value.to_owned()),
            "retry" => self.retry = value.parse().ok(),
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        let (id, event, data) = (
            self.id.take(),
            self.event.take(),
            std::mem::take(&mut self.data),
        );
        if data.is_empty() && event.is_none() {
            return; // a block of only `retry:` / `id:` lines, no event
        }
        self.ready.push_back(SseEvent {
            id,
            event,
            data: data.join("\n"),
        });
    }
}

// ---- extras: processes with extra settings, hand-made tokens, queue inspection ---------

impl TestSystem {
    /// A JWT with exactly this header and these claims, signed with this system's secret by
    /// the HMAC algorithm `alg`, whatever the header claims (for algorithm-confusion cases).
    pub fn token_with(
        &self,
        alg: jsonwebtoken::Algorithm,
        header: &Value,
        claims: &Value,
    ) -> String {
        jwt_signed_with(self.jwt_secret.as_bytes(), alg, header, claims)
    }

    /// How many messages are ready in `queue` (passive declare: the queue must exist).
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let conn = self.amqp().await;
        let channel = conn
            .create_channel()
            .await
            .expect("opening an AMQP channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("passive declare of {queue}: {e}"));
        let _ = conn.close(200, "OK".into()).await;
        declared.message_count()
    }

    /// Takes (and acks) the next message of `queue`, polling with basic.get until `within`.
    pub async fn take_message_within(&self, queue: &str, within: Duration) -> Option<Delivery> {
        let conn = self.amqp().await;
        let channel = conn
            .create_channel()
            .await
            .expect("opening an AMQP channel");
        let deadline = Instant::now() + within;
        let taken = loop {
            let got = channel
                .basic_get(
                    queue.into(),
                    lapin::options::BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap_or_else(|e| panic!("basic.get on {queue}: {e}"));
            if let Some(message) = got {
                break Some(message.delivery);
            }
            if Instant::now() >= deadline {
                break None;
            }
            tokio::time::sleep(POLL_EVERY).await;
        };
        let _ = conn.close(200, "OK".into()).await;
        taken
    }

    /// Publishes raw bytes to the jobs queue (default exchange) and waits for the confirm,
    /// as a buggy or hostile publisher would.
    pub async fn publish_raw_job_message(&self, body: &[u8]) {
        let conn = self.amqp().await;
        let channel = conn
            .create_channel()
            .await
            .expect("opening an AMQP channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("enabling publisher confirms");
        let confirm = channel
            .basic_publish(
                "".into(),
                self.jobs_queue().as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publishing a raw job message")
            .await
            .expect("waiting for the publisher confirm");
        assert!(confirm.is_ack(), "the broker did not ack the raw message");
        assert!(
            confirm.take_message().is_none(),
            "the raw message was returned: no queue {}",
            self.jobs_queue()
        );
        let _ = conn.close(200, "OK".into()).await;
    }
}

/// `base64url(header).base64url(claims).signature`, the signature made with `key` by the
/// HMAC algorithm `alg` (HS256/384/512), whatever `alg` the header names.
pub fn jwt_signed_with(
    key: &[u8],
    alg: jsonwebtoken::Algorithm,
    header: &Value,
    claims: &Value,
) -> String {
    let signing_input = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(key),
        alg,
    )
    .expect("HMAC signing");
    format!("{signing_input}.{signature}")
}

/// Unix time now, in seconds (for hand-made claims).
pub fn unix_now() -> i64 {
    now()
}
