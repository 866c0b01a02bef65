//! One fresh database and one broker namespace per test, and their removal afterwards —
//! also when the test panics. Every system a test starts (the all-in-one process, or a
//! cluster of role processes) lives inside one sandbox, so tests run in parallel without
//! seeing each other's orders, jobs or events.

use std::sync::{Arc, LazyLock};

use lapin::{
    Connection, ConnectionProperties,
    options::{ExchangeDeleteOptions, QueueDeleteOptions},
};
use sqlx::{Connection as _, PgConnection};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
use uuid::Uuid;

const DEFAULT_PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Every test shares one RabbitMQ. A test that stops it (the fault suite) holds this lock
/// for writing, every other test for reading: the outage never overlaps another test of
/// this binary, whatever the test threads.
static BROKER: LazyLock<Arc<RwLock<()>>> = LazyLock::new(|| Arc::new(RwLock::new(())));

/// Whether the test may stop the shared broker (and so must run alone).
pub enum BrokerUse {
    Shared,
    Exclusive,
}

/// Held for the sandbox's life; released after its cleanup.
enum BrokerGuard {
    Shared { _guard: OwnedRwLockReadGuard<()> },
    Exclusive { _guard: OwnedRwLockWriteGuard<()> },
}

pub struct Sandbox {
    admin_url: String,
    pub db_name: String,
    pub db_url: String,
    pub amqp_url: String,
    /// Prefix of every exchange and queue name, e.g. `t-1a2b3c4d.`.
    pub ns: String,
    pub jwt_secret: String,
    /// Durable queues a test declared itself, deleted with the namespace.
    own_queues: Vec<String>,
    cleaned: bool,
    _broker: BrokerGuard,
}

impl Sandbox {
    /// Names a fresh database and namespace and creates the (empty) database.
    pub async fn create(broker: BrokerUse) -> Self {
        let broker = match broker {
            BrokerUse::Shared => BrokerGuard::Shared {
                _guard: BROKER.clone().read_owned().await,
            },
            BrokerUse::Exclusive => BrokerGuard::Exclusive {
                _guard: BROKER.clone().write_owned().await,
            },
        };
        let admin_url =
            std::env::var("TEST_PG_ADMIN_URL").unwrap_or_else(|_| DEFAULT_PG_ADMIN_URL.to_owned());
        let amqp_url =
            std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned());
        let db_name = format!("of_test_{}", Uuid::new_v4().simple());
        let sandbox = Self {
            db_url: with_database(&admin_url, &db_name),
            admin_url,
            db_name,
            amqp_url,
            ns: format!("t-{}.", &Uuid::new_v4().simple().to_string()[..8]),
            jwt_secret: format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()),
            own_queues: Vec::new(),
            cleaned: false,
            _broker: broker,
        };
        let mut admin = sandbox.admin().await;
        sqlx::query(&format!(r#"create database "{}""#, sandbox.db_name))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("creating database {}: {e}", sandbox.db_name));
        let _ = admin.close().await;
        sandbox
    }

    /// A connection to the server's admin database (`TEST_PG_ADMIN_URL`).
    pub async fn admin(&self) -> PgConnection {
        PgConnection::connect(&self.admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "connecting to Postgres at {} (TEST_PG_ADMIN_URL): {e}",
                    self.admin_url
                )
            })
    }

    /// The environment that points a process of the system at this sandbox.
    pub fn env(&self) -> [(&'static str, &str); 4] {
        [
            ("DATABASE_URL", &self.db_url),
            ("AMQP_URL", &self.amqp_url),
            ("ORDERFLOW_NAMESPACE", &self.ns),
            ("JWT_SECRET", &self.jwt_secret),
        ]
    }

    /// Remember a durable queue the test declared, so that cleanup deletes it.
    pub fn own_queue(&mut self, name: &str) {
        self.own_queues.push(name.to_owned());
    }

    /// Drops the database and deletes the namespace's broker objects. Stop the processes first.
    pub async fn clean(mut self) {
        self.cleaned = true;
        remove(self.leftovers()).await;
    }

    fn leftovers(&self) -> Leftovers {
        Leftovers {
            admin_url: self.admin_url.clone(),
            db_name: self.db_name.clone(),
            amqp_url: self.amqp_url.clone(),
            ns: self.ns.clone(),
            own_queues: self.own_queues.clone(),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // A test that panicked before cleaning up: clean up now, unless asked to keep the
        // evidence.
        if std::env::var_os("TEST_KEEP_DB").is_some() {
            eprintln!(
                "TEST_KEEP_DB: kept database {} and namespace {}",
                self.db_name, self.ns
            );
            return;
        }
        let leftovers = self.leftovers();
        // Drop runs inside the test's runtime: clean up on a thread with its own.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(remove(leftovers));
            }
        })
        .join();
    }
}

struct Leftovers {
    admin_url: String,
    db_name: String,
    amqp_url: String,
    ns: String,
    own_queues: Vec<String>,
}

async fn remove(left: Leftovers) {
    let Leftovers {
        admin_url,
        db_name,
        amqp_url,
        ns,
        own_queues,
    } = left;
    match PgConnection::connect(&admin_url).await {
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
    let Ok(conn) = Connection::connect(&amqp_url, ConnectionProperties::default()).await else {
        eprintln!("cleanup: cannot connect to RabbitMQ to delete namespace {ns}");
        return;
    };
    // The durable queues a namespace may have (deleting one that does not exist is a no-op):
    // work and dead queues, the relay's marker, one delay queue per retry step, and the
    // test's own.
    let mut queues: Vec<String> = [
        "orderflow.jobs",
        "orderflow.jobs.dead",
        "orderflow.bulk",
        "orderflow.bulk.dead",
        "orderflow.relay.published",
    ]
    .iter()
    .map(|q| format!("{ns}{q}"))
    .collect();
    for step in 1..=16 {
        queues.push(format!("{ns}orderflow.jobs.retry.{step}"));
        queues.push(format!("{ns}orderflow.bulk.retry.{step}"));
    }
    queues.extend(own_queues);
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
