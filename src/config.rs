//! Configuration: clap structs whose every field is also an environment variable. Each
//! role takes the groups it needs; `orderflow all` takes them all.

use clap::Args;
use std::net::SocketAddr;
use std::time::Duration;

/// The development JWT secret. Anything signed with it is forgeable by whoever reads this
/// repository: processes warn loudly when they run with it.
pub const DEV_JWT_SECRET: &str = "orderflow-dev-secret-change-me";

/// Where the shared state lives: Postgres, RabbitMQ and the broker namespace.
#[derive(Args, Debug, Clone)]
pub struct CommonConfig {
    /// Postgres connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@localhost/orderflow"
    )]
    pub database_url: String,

    /// Most Postgres connections this process opens.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,

    /// RabbitMQ connection URL.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@localhost:5672/%2f"
    )]
    pub amqp_url: String,

    /// Prefix on every exchange and queue name, so several deployments (or tests) can share
    /// one broker. Empty: the names in API.md.
    #[arg(long, env = "ORDERFLOW_NAMESPACE", default_value = "")]
    pub namespace: String,

    /// Deliveries a failing job gets before it is parked in `orderflow.jobs.dead` (every
    /// process must agree: the delay queues are declared from it).
    #[arg(long, env = "JOB_MAX_ATTEMPTS", default_value_t = 5)]
    pub job_max_attempts: u32,

    /// First retry delay in milliseconds; each next step is four times longer.
    #[arg(long, env = "JOB_RETRY_BASE_MS", default_value_t = 1_000)]
    pub job_retry_base_ms: u64,

    /// The broker's ceiling on redeliveries of one job message (a crash loop ends there).
    #[arg(long, env = "JOB_DELIVERY_LIMIT", default_value_t = 20)]
    pub job_delivery_limit: u32,

    /// Seconds a process may take to finish its work in hand after SIGTERM/Ctrl-C before
    /// it exits anyway.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,

    /// Days of order status history to keep; older audit rows are deleted by the active
    /// relay (0: keep forever). Common to every process: the relay prunes by it, the
    /// ingress reports it on the operations overview.
    #[arg(long, env = "HISTORY_RETENTION_DAYS", default_value_t = 0)]
    pub history_retention_days: u32,
}

/// Where a role without an HTTP API (order worker, outbox relay) serves `/metrics`.
#[derive(Args, Debug, Clone)]
pub struct MetricsConfig {
    /// Address for `GET /metrics` (Prometheus text), e.g. 127.0.0.1:9464. Unset: none.
    /// HTTP roles serve `/metrics` on their own port instead.
    #[arg(long, env = "METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,
}

/// The HTTP side of a process that serves requests.
#[derive(Args, Debug, Clone)]
pub struct HttpConfig {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// HS256 secret for bearer tokens. The default is for development only.
    #[arg(long, env = "JWT_SECRET", default_value = DEV_JWT_SECRET, hide_default_value = true)]
    pub jwt_secret: String,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "BODY_LIMIT_BYTES", default_value_t = 64 * 1024)]
    pub body_limit_bytes: usize,

    /// Browser origins allowed to call the API and open the event stream cross-origin,
    /// comma-separated (`https://shop.example,http://localhost:3000`). Empty: none.
    #[arg(long, env = "CORS_ORIGINS", default_value = "", value_parser = parse_origins)]
    pub cors_origins: Origins,
}

/// A list of exact browser origins (`scheme://host[:port]`).
#[derive(Debug, Clone, Default)]
pub struct Origins(pub Vec<String>);

fn parse_origins(text: &str) -> Result<Origins, String> {
    let mut origins = Vec::new();
    for origin in text.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let url = url::Url::parse(origin).map_err(|e| format!("`{origin}`: {e}"))?;
        let is_origin = matches!(url.scheme(), "http" | "https")
            && url.host().is_some()
            && url.path() == "/"
            && !origin.ends_with('/')
            && url.query().is_none()
            && url.username().is_empty();
        if !is_origin {
            return Err(format!(
                "`{origin}` is not an origin: scheme://host[:port], without a path or a trailing slash"
            ));
        }
        origins.push(origin.to_owned());
    }
    Ok(Origins(origins))
}

/// The ingress: accepting jobs.
#[derive(Args, Debug, Clone)]
pub struct IngressConfig {
    /// How long to wait for the broker to confirm a job before answering 503.
    #[arg(long, env = "PUBLISH_TIMEOUT_MS", default_value_t = 5_000)]
    pub publish_timeout_ms: u64,

    /// Upper bound on `Prefer: wait=N`, in seconds.
    #[arg(long, env = "MAX_WAIT_SECS", default_value_t = 30)]
    pub max_wait_secs: u64,

    /// Largest bulk request body, in bytes (an explicit list of order ids can be long).
    #[arg(long, env = "BULK_BODY_LIMIT_BYTES", default_value_t = 40 * 1024 * 1024)]
    pub bulk_body_limit_bytes: usize,

    /// Requests per second one authenticated actor may make (bursts of twice that; 0: no limit).
    #[arg(long, env = "RATE_PER_ACTOR", default_value_t = 100)]
    pub rate_per_actor: u32,

    /// Requests per second one client IP may make without a valid token (0: no limit).
    #[arg(long, env = "RATE_PER_IP", default_value_t = 20)]
    pub rate_per_ip: u32,

    /// Admission control: API requests worked on at once; more wait for a slot up to
    /// INGRESS_QUEUE_MS, then get 503 `overloaded` — at once, without waiting, within a
    /// second of the last such refusal (0: no limit).
    #[arg(long, env = "INGRESS_MAX_IN_FLIGHT", default_value_t = 128)]
    pub ingress_max_in_flight: usize,

    /// Admission control: longest wait for a slot, in milliseconds.
    #[arg(long, env = "INGRESS_QUEUE_MS", default_value_t = 20)]
    pub ingress_queue_ms: u64,

    /// Admission control: jobs waiting in the queue (estimated from the messages ready)
    /// above which new jobs get 503 `overloaded` (0: no limit).
    #[arg(long, env = "INGRESS_MAX_BACKLOG", default_value_t = 1_000)]
    pub ingress_max_backlog: u32,

    /// [`CommonConfig::history_retention_days`], for the overview to report.
    #[arg(skip)]
    pub history_retention_days: u32,
}

impl IngressConfig {
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }

    pub fn admission(&self) -> crate::ingress::admission::Settings {
        crate::ingress::admission::Settings {
            max_in_flight: self.ingress_max_in_flight,
            queue_wait: Duration::from_millis(self.ingress_queue_ms),
            max_backlog: self.ingress_max_backlog,
        }
    }
}

/// The order worker: applying jobs in micro-batches.
#[derive(Args, Debug, Clone)]
pub struct WorkerConfig {
    /// Most jobs applied in one transaction. It binds only when the worker is behind (a
    /// batch holds what arrived while the last one was applied): there a larger cap lets
    /// the worker catch up in fewer, larger batches.
    #[arg(long, env = "WORKER_BATCH_SIZE", default_value_t = 256)]
    pub worker_batch_size: usize,

    /// How long an idle worker gathers more jobs after the first one arrived, in
    /// milliseconds (a worker that finds deliveries waiting after a batch takes them at once).
    #[arg(long, env = "WORKER_BATCH_WAIT_MS", default_value_t = 5)]
    pub worker_batch_wait_ms: u64,

    /// Unacknowledged deliveries the broker may push to this worker.
    #[arg(long, env = "WORKER_PREFETCH", default_value_t = 256)]
    pub worker_prefetch: u16,

    /// Most changes this worker applies per second, over all customers (0: no limit).
    #[arg(long, env = "WORKER_RATE_GLOBAL", default_value_t = 5_000)]
    pub worker_rate_global: u32,

    /// Most changes this worker applies per second for one customer's orders (0: no limit).
    #[arg(long, env = "WORKER_RATE_PER_CUSTOMER", default_value_t = 50)]
    pub worker_rate_per_customer: u32,

    /// Seconds after which a job still `queued` or `retrying` is published again (the
    /// ingress died between insert and publish, or a message was lost).
    #[arg(long, env = "SWEEP_AFTER_SECS", default_value_t = 120)]
    pub sweep_after_secs: u64,

    /// Seconds between sweeps for such jobs (0: this worker does not sweep).
    #[arg(long, env = "SWEEP_INTERVAL_SECS", default_value_t = 15)]
    pub sweep_interval_secs: u64,

    /// Consume bulk operations too (`false`: single changes only).
    #[arg(long, env = "WORKER_BULK", default_value_t = true, action = clap::ArgAction::Set)]
    pub worker_bulk: bool,

    /// Orders per bulk chunk (one transaction, one progress event, one cancel check).
    #[arg(long, env = "BULK_CHUNK_SIZE", default_value_t = 2_000)]
    pub bulk_chunk_size: i64,

    /// Chunks of one bulk applied at once, each in its own transaction (and with its own
    /// database connection). 1 applies them strictly one after the other.
    #[arg(long, env = "BULK_CHUNKS_IN_FLIGHT", default_value_t = 2)]
    pub bulk_chunks_in_flight: usize,

    /// Most bulk changes this worker applies per second (0: no limit). Kept apart from the
    /// single-change limits so a bulk never takes their share.
    #[arg(long, env = "WORKER_RATE_BULK", default_value_t = 20_000)]
    pub worker_rate_bulk: u32,

    /// Fault injection for tests: abort the process after every Nth committed batch,
    /// before acknowledging it (0: never). Proves that a redelivery applies nothing twice.
    /// Only in builds with the `fault-injection` feature (the test suite's).
    #[cfg(feature = "fault-injection")]
    #[arg(long, env = "ORDERFLOW_CRASH_AFTER_COMMIT_EVERY", default_value_t = 0)]
    pub crash_after_commit_every: u64,
}

/// The outbox relay.
#[derive(Args, Debug, Clone)]
pub struct RelayConfig {
    /// Most outbox rows read and published per round.
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 2_000)]
    pub relay_batch_size: i64,

    /// Poll interval when no NOTIFY arrives (a fallback: NOTIFY is the usual wake-up).
    #[arg(long, env = "RELAY_POLL_MS", default_value_t = 1_000)]
    pub relay_poll_ms: u64,

    /// How long published events stay in the outbox: the window in which SSE clients (and
    /// late consumers) can resume from it. Older ones are deleted by the active relay,
    /// oldest first; `0` keeps everything.
    #[arg(long, env = "OUTBOX_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub outbox_retention_secs: u64,

    /// Seconds between retention passes of the active relay.
    #[arg(long, env = "RETENTION_INTERVAL_SECS", default_value_t = 60)]
    pub retention_interval_secs: u64,

    /// [`CommonConfig::history_retention_days`]: the relay prunes the audit log too.
    #[arg(skip)]
    pub history_retention_days: u32,
}

/// The SSE bridge.
#[derive(Args, Debug, Clone)]
pub struct BridgeConfig {
    /// Recent events kept in memory for fast resume; older ones replay from the outbox.
    #[arg(long, env = "SSE_RING_CAPACITY", default_value_t = 10_000)]
    pub sse_ring_capacity: usize,

    /// Events buffered per connection; a client further behind is disconnected (it resumes
    /// with Last-Event-ID).
    #[arg(long, env = "SSE_CLIENT_BUFFER", default_value_t = 1_024)]
    pub sse_client_buffer: usize,

    /// Seconds between keep-alive comments.
    #[arg(long, env = "SSE_KEEPALIVE_SECS", default_value_t = 15)]
    pub sse_keepalive_secs: u64,

    /// Reconnect delay suggested to clients (`retry:`), in milliseconds.
    #[arg(long, env = "SSE_RETRY_MS", default_value_t = 2_000)]
    pub sse_retry_ms: u64,

    /// Seconds the bridge stays bound to the events exchange after its last connection
    /// closes. Unbound, it takes no events from the broker at all; the next connection
    /// binds it again (a few milliseconds) and nothing is missed: the outbox fills in.
    #[arg(long, env = "SSE_IDLE_UNBIND_SECS", default_value_t = 30)]
    pub sse_idle_unbind_secs: u64,
}

/// A connection URL without its password, for log and error messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod cors_tests {
    use super::parse_origins;

    #[test]
    fn origins_are_exact_scheme_host_and_port() {
        let parsed = parse_origins(" https://shop.example , http://127.0.0.1:18301").unwrap();
        assert_eq!(parsed.0, ["https://shop.example", "http://127.0.0.1:18301"]);
        assert!(parse_origins("").unwrap().0.is_empty());
        for bad in [
            "shop.example",
            "https://shop.example/",
            "https://shop.example/app",
            "ftp://x.example",
            "*",
        ] {
            assert!(parse_origins(bad).is_err(), "{bad}");
        }
    }
}
