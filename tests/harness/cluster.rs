//! Every role as its own supervised process (ingress, order workers, outbox relays, SSE
//! bridge) on one sandbox, for the fault suite: processes can be `kill -9`ed and their
//! Postgres sessions terminated while the harness keeps its own connections.
//!
//! A cluster's sandbox holds the broker exclusively: the fault suite stops RabbitMQ.

use std::{fs::File, path::PathBuf, process::Stdio};

use sqlx::{
    ConnectOptions as _, Connection as _, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::process::Command;
use uuid::Uuid;

use super::{
    Broker, BrokerUse, Sandbox,
    supervisor::{Launch, Supervised},
    tokens,
};

/// `application_name` of the harness's own Postgres connections, which backend
/// termination spares: the faults are for the system, not for the observer.
const HARNESS_APP_NAME: &str = "orderflow-faults-harness";

/// One database and broker namespace, shared by every process the suite starts.
pub struct Cluster {
    pool: PgPool,
    broker: Broker,
    /// Environment every process gets (sandbox, log format, shared knobs).
    common_env: Vec<(String, String)>,
    pub log_dir: PathBuf,
    sandbox: Sandbox,
}

impl Cluster {
    /// A fresh database (migrated by `orderflow migrate`) and namespace.
    /// `shared_env` goes to every process: knobs all roles must agree on.
    pub async fn create(shared_env: &[(&str, &str)]) -> Self {
        let sandbox = Sandbox::create(BrokerUse::Exclusive).await;
        let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("faults-{}", sandbox.ns.trim_end_matches('.')));
        std::fs::create_dir_all(&log_dir)
            .unwrap_or_else(|e| panic!("creating the log directory {}: {e}", log_dir.display()));
        let common_env: Vec<(String, String)> = sandbox
            .env()
            .into_iter()
            .chain([("RUST_LOG", "info,orderflow=debug"), ("LOG_FORMAT", "json")])
            .chain(shared_env.iter().copied())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        migrate(&common_env, &log_dir).await;
        let options: PgConnectOptions = sandbox
            .db_url
            .parse::<PgConnectOptions>()
            .expect("parsing the test database URL")
            .application_name(HARNESS_APP_NAME)
            .disable_statement_logging();
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", sandbox.db_url));
        eprintln!(
            "faults: database {}, namespace {}, logs in {}",
            sandbox.db_name,
            sandbox.ns,
            log_dir.display()
        );
        Self {
            pool,
            broker: Broker {
                amqp_url: sandbox.amqp_url.clone(),
                ns: sandbox.ns.clone(),
            },
            common_env,
            log_dir,
            sandbox,
        }
    }

    /// The harness's own connections (spared by [`Cluster::terminate_backends`]).
    pub fn db(&self) -> &PgPool {
        &self.pool
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// A valid HS256 token for `role` and `sub`, valid for a day.
    pub fn token(&self, role: &str, sub: Uuid) -> String {
        tokens::signed_token(&self.sandbox.jwt_secret, role, sub, 86_400)
    }

    /// Declares a durable queue on the events exchange that cleanup deletes with the namespace.
    pub async fn own_durable_queue(&mut self, name: &str, binding_key: &str) -> String {
        let queue = self.broker.name(name);
        self.sandbox.own_queue(&queue);
        self.broker
            .durable_downstream_queue(&queue, binding_key)
            .await;
        queue
    }

    /// Starts `program` (one of the `CARGO_BIN_EXE_*` paths) under a supervisor.
    pub fn start(
        &self,
        name: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Supervised {
        let mut all_env = self.common_env.clone();
        all_env.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        Supervised::start(Launch {
            name: name.to_owned(),
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: all_env,
            log_path: self.log_dir.join(format!("{name}.log")),
        })
    }

    /// `pg_terminate_backend` every session of the test database except the harness's own.
    /// Returns how many were terminated.
    pub async fn terminate_backends(&self) -> i64 {
        let mut admin = self.sandbox.admin().await;
        let n: i64 = sqlx::query_scalar(
            "select count(*) filter (where terminated) from (
                 select pg_terminate_backend(pid) as terminated from pg_stat_activity
                 where datname = $1 and pid <> pg_backend_pid() and application_name <> $2
             ) t",
        )
        .bind(&self.sandbox.db_name)
        .bind(HARNESS_APP_NAME)
        .fetch_one(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("terminating the backends of {}: {e}", self.sandbox.db_name));
        let _ = admin.close().await;
        n
    }

    /// Drops the database and deletes the namespace's broker objects (and, unless
    /// `FAULT_SUITE_KEEP_LOGS` is set, the process logs). Stop the processes first.
    pub async fn clean(self) {
        self.pool.close().await;
        if std::env::var_os("FAULT_SUITE_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
        self.sandbox.clean().await;
    }
}

async fn migrate(env: &[(String, String)], log_dir: &std::path::Path) {
    let log = log_dir.join("migrate.log");
    let file = File::create(&log).expect("creating migrate.log");
    let status = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .arg("migrate")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("cloning a file handle"))
        .stderr(file)
        .status()
        .await
        .unwrap_or_else(|e| panic!("running `orderflow migrate`: {e}"));
    assert!(
        status.success(),
        "`orderflow migrate` failed ({status}); see {}",
        log.display()
    );
}
