//! Harness for the fault-injection suite: every role as its own supervised process
//! (ingress, order workers, outbox relays, SSE bridge) on one fresh database and broker
//! namespace, and the faults themselves: `kill -9`, a RabbitMQ restart, terminated
//! Postgres backends.
//!
//! A supervisor restarts its process whenever it dies (a crash, or a kill the test asked
//! for) unless told to hold it down. Each process's output is kept in a log file, the
//! evidence when a guarantee fails; the log lines recovery is measured by are kept in
//! memory with the instant they were read.

use std::{
    fs::{File, OpenOptions},
    io::{LineWriter, Write},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lapin::{Connection, ConnectionProperties, options::QueueDeleteOptions};
use serde_json::Value;
use sqlx::{
    ConnectOptions as _, Connection as _, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use uuid::Uuid;

use super::{DEFAULT_AMQP_URL, DEFAULT_PG_ADMIN_URL, cleanup, signed_token, with_database};

/// `application_name` of the harness's own Postgres connections, which backend
/// termination spares: the faults are for the system, not for the observer.
pub const HARNESS_APP_NAME: &str = "orderflow-faults-harness";

/// Log messages worth keeping in memory (everything goes to the log file).
const KEPT_MESSAGES: &[&str] = &[
    "order worker consuming",
    "job settled",
    "order worker lost its broker session; reconnecting",
    "republished jobs that were accepted but not in any queue",
    "parking a job that crashes its workers",
    "parking an unreadable job message",
    "batch still failing after retries; backing off",
    "batch failed; applying its jobs one by one",
    "transient database error; retrying batch",
    "outbox relay active",
    "another relay is active; standing by",
    "outbox relay session ended; starting over",
    "published",
    "SSE bridge consuming",
    "SSE bridge lost its broker session; reconnecting",
];

/// The line the order worker's fault hook prints before it aborts.
const CRASH_HOOK_LINE: &str = "fault injection: aborting after committed batch";

/// One database and broker namespace, shared by every process the suite starts.
pub struct Cluster {
    admin_url: String,
    pub db_name: String,
    pub db_url: String,
    pub amqp_url: String,
    /// Prefix of every exchange and queue name, e.g. `t-1a2b3c4d.`.
    pub ns: String,
    jwt_secret: String,
    /// Environment every process gets (connection URLs, namespace, shared knobs).
    common_env: Vec<(String, String)>,
    pub log_dir: PathBuf,
    pool: Option<PgPool>,
    /// Durable queues the test declared itself, deleted with the namespace.
    extra_queues: Vec<String>,
    cleaned: bool,
}

impl Cluster {
    /// A fresh database (created and migrated by `orderflow migrate`) and namespace.
    /// `shared_env` goes to every process: knobs all roles must agree on.
    pub async fn create(shared_env: &[(&str, &str)]) -> Self {
        let admin_url =
            std::env::var("TEST_PG_ADMIN_URL").unwrap_or_else(|_| DEFAULT_PG_ADMIN_URL.to_owned());
        let amqp_url =
            std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_owned());
        let db_name = format!("of_test_{}", Uuid::new_v4().simple());
        let db_url = with_database(&admin_url, &db_name);
        let ns = format!("t-{}.", &Uuid::new_v4().simple().to_string()[..8]);
        let jwt_secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        let log_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("faults-{}", ns.trim_end_matches('.')));
        std::fs::create_dir_all(&log_dir)
            .unwrap_or_else(|e| panic!("creating the log directory {}: {e}", log_dir.display()));

        let mut common_env: Vec<(String, String)> = [
            ("DATABASE_URL", db_url.as_str()),
            ("AMQP_URL", amqp_url.as_str()),
            ("ORDERFLOW_NAMESPACE", ns.as_str()),
            ("JWT_SECRET", jwt_secret.as_str()),
            ("RUST_LOG", "info,orderflow=debug"),
            ("LOG_FORMAT", "json"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        common_env.extend(
            shared_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );

        // Built before anything exists, so that a failure below still cleans up.
        let mut cluster = Self {
            admin_url,
            db_name,
            db_url,
            amqp_url,
            ns,
            jwt_secret,
            common_env,
            log_dir,
            pool: None,
            extra_queues: Vec::new(),
            cleaned: false,
        };
        cluster.migrate().await;
        let options: PgConnectOptions = cluster
            .db_url
            .parse::<PgConnectOptions>()
            .expect("parsing the test database URL")
            .application_name(HARNESS_APP_NAME)
            .disable_statement_logging();
        cluster.pool = Some(
            PgPoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .unwrap_or_else(|e| panic!("connecting to {}: {e}", cluster.db_url)),
        );
        cluster
    }

    async fn migrate(&self) {
        let log = self.log_dir.join("migrate.log");
        let file = File::create(&log).expect("creating migrate.log");
        let status = Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .arg("migrate")
            .envs(self.common_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("cloning a file handle"))
            .stderr(file)
            .status()
            .await
            .expect("running `orderflow migrate`");
        assert!(
            status.success(),
            "`orderflow migrate` failed ({status}); see {}",
            log.display()
        );
    }

    /// The harness's own connections (spared by [`Cluster::terminate_backends`]).
    pub fn db(&self) -> &PgPool {
        self.pool.as_ref().expect("the test database pool is open")
    }

    /// A valid HS256 token for `role` and `sub`, valid for a day.
    pub fn token(&self, role: &str, sub: Uuid) -> String {
        signed_token(&self.jwt_secret, role, sub, 86_400)
    }

    pub fn events_exchange(&self) -> String {
        format!("{}orderflow.events", self.ns)
    }

    /// Remember a durable queue the test declared, so cleanup deletes it.
    pub fn own_queue(&mut self, name: &str) {
        self.extra_queues.push(name.to_owned());
    }

    /// Start `program` (one of the `CARGO_BIN_EXE_*` paths) under a supervisor.
    pub fn start(
        &self,
        name: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Supervised {
        let mut all_env = self.common_env.clone();
        all_env.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let launch = Launch {
            name: name.to_owned(),
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: all_env,
            log_path: self.log_dir.join(format!("{name}.log")),
        };
        let lives = Arc::new(Mutex::new(Vec::new()));
        let (url_tx, url_rx) = watch::channel(None);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(supervise(launch, lives.clone(), url_tx, cmd_rx));
        Supervised {
            name: name.to_owned(),
            lives,
            url: url_rx,
            cmds: cmd_tx,
            task: Some(task),
        }
    }

    /// `pg_terminate_backend` every session of the test database except the harness's own.
    /// Returns how many were terminated.
    pub async fn terminate_backends(&self) -> i64 {
        let mut admin = PgConnection::connect(&self.admin_url)
            .await
            .unwrap_or_else(|e| panic!("connecting to Postgres as admin: {e}"));
        let n: i64 = sqlx::query_scalar(
            "select count(*) filter (where terminated) from (
                 select pg_terminate_backend(pid) as terminated from pg_stat_activity
                 where datname = $1 and pid <> pg_backend_pid() and application_name <> $2
             ) t",
        )
        .bind(&self.db_name)
        .bind(HARNESS_APP_NAME)
        .fetch_one(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("terminating the backends of {}: {e}", self.db_name));
        let _ = admin.close().await;
        n
    }

    /// Drops the database and deletes the namespace's broker objects. Stop the processes first.
    pub async fn cleanup(mut self) {
        if let Some(pool) = self.pool.take() {
            pool.close().await;
        }
        clean(
            &self.admin_url,
            &self.db_name,
            &self.amqp_url,
            &self.ns,
            &self.extra_queues,
        )
        .await;
        self.cleaned = true;
    }
}

async fn clean(admin_url: &str, db_name: &str, amqp_url: &str, ns: &str, queues: &[String]) {
    cleanup(admin_url, db_name, amqp_url, ns).await;
    if let Ok(conn) = Connection::connect(amqp_url, ConnectionProperties::default()).await {
        for queue in queues {
            if let Ok(channel) = conn.create_channel().await {
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
                let _ = channel.close(200, "OK".into()).await;
            }
        }
        let _ = conn.close(200, "OK".into()).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        eprintln!("faults: process logs kept in {}", self.log_dir.display());
        if std::env::var_os("TEST_KEEP_DB").is_some() {
            eprintln!(
                "TEST_KEEP_DB: kept database {} and namespace {}",
                self.db_name, self.ns
            );
            return;
        }
        self.pool.take();
        let (admin_url, db_name, amqp_url, ns, queues) = (
            self.admin_url.clone(),
            self.db_name.clone(),
            self.amqp_url.clone(),
            self.ns.clone(),
            self.extra_queues.clone(),
        );
        // Drop runs inside the test's runtime: clean up on a thread with its own.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(clean(&admin_url, &db_name, &amqp_url, &ns, &queues));
            }
        })
        .join();
    }
}

// ---- supervised processes ------------------------------------------------------------

/// A log line kept in memory, with the instant the harness read it.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub at: Instant,
    pub message: String,
    pub fields: Value,
}

/// How one run of a process ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// `kill -9` asked for by the test.
    Killed,
    /// The worker's fault hook aborted it between commit and ack.
    CrashHook,
    /// Stopped at the end of the test.
    Stopped,
    /// Anything else: the process died on its own.
    Exited(String),
}

/// One run of a supervised process, from spawn to death.
#[derive(Debug)]
pub struct Life {
    pub generation: u32,
    pub spawned_at: Instant,
    pub pid: Option<u32>,
    pub listening_at: Option<Instant>,
    pub lines: Vec<LogLine>,
    pub warnings: usize,
    pub errors: usize,
    pub ended: Option<(Instant, Ending)>,
}

impl Life {
    /// The first kept line with `message` read after `after`.
    pub fn first_after(&self, message: &str, after: Instant) -> Option<&LogLine> {
        self.lines
            .iter()
            .find(|l| l.at > after && l.message == message)
    }

    /// The first job this run applied (a settled job that was not a duplicate delivery).
    pub fn first_applied_after(&self, after: Instant) -> Option<Instant> {
        self.lines
            .iter()
            .find(|l| l.at > after && l.message == "job settled" && applied(&l.fields))
            .map(|l| l.at)
    }

    /// Whether this run holds the relay lock, as far as its log says.
    pub fn relay_active(&self) -> bool {
        self.ended.is_none()
            && self
                .lines
                .iter()
                .rev()
                .find(|l| {
                    l.message == "outbox relay active"
                        || l.message == "outbox relay session ended; starting over"
                })
                .is_some_and(|l| l.message == "outbox relay active")
    }
}

/// Did a `job settled` line apply the job (succeeded or rejected), rather than skip it?
pub fn applied(fields: &Value) -> bool {
    let outcome = fields["outcome"].as_str().unwrap_or_default();
    outcome.starts_with("Succeeded") || outcome.starts_with("Rejected")
}

enum Cmd {
    /// SIGKILL the running process; respawn at once unless `hold`. Answers the kill instant.
    Kill {
        hold: bool,
        ack: oneshot::Sender<Instant>,
    },
    /// Spawn again after a held kill.
    Start,
    /// SIGKILL and do not respawn.
    Stop(oneshot::Sender<()>),
}

/// A process under a supervisor that restarts it whenever it dies.
pub struct Supervised {
    pub name: String,
    lives: Arc<Mutex<Vec<Life>>>,
    url: watch::Receiver<Option<String>>,
    cmds: mpsc::UnboundedSender<Cmd>,
    task: Option<JoinHandle<()>>,
}

impl Supervised {
    /// Read the runs so far (the last is the current or latest one).
    pub fn lives<T>(&self, f: impl FnOnce(&[Life]) -> T) -> T {
        f(&self.lives.lock().expect("lives lock"))
    }

    /// The base URL (`http://ip:port`) of the running process, once it is listening.
    pub fn url(&self) -> Option<String> {
        self.url.borrow().clone()
    }

    /// Follows the base URL across restarts (None while down).
    pub fn url_watch(&self) -> watch::Receiver<Option<String>> {
        self.url.clone()
    }

    /// Waits until the running process printed its `listening on` line.
    pub async fn wait_listening(&self, within: Duration) -> String {
        let mut url = self.url.clone();
        let found = tokio::time::timeout(within, url.wait_for(Option::is_some)).await;
        match found {
            Ok(Ok(url)) => url.clone().expect("checked by wait_for"),
            _ => panic!(
                "{} printed no `listening on http://…` within {within:?}",
                self.name
            ),
        }
    }

    /// `kill -9` now and respawn at once. Returns the instant of the kill.
    pub async fn kill(&self) -> Instant {
        self.send_kill(false).await
    }

    /// `kill -9` now and keep it down until [`Supervised::start_again`].
    pub async fn kill_and_hold(&self) -> Instant {
        self.send_kill(true).await
    }

    async fn send_kill(&self, hold: bool) -> Instant {
        let (ack, done) = oneshot::channel();
        self.cmds
            .send(Cmd::Kill { hold, ack })
            .unwrap_or_else(|_| panic!("the supervisor of {} is gone", self.name));
        done.await
            .unwrap_or_else(|_| panic!("the supervisor of {} did not kill it", self.name))
    }

    pub fn start_again(&self) {
        let _ = self.cmds.send(Cmd::Start);
    }

    /// Kill the process for good (end of the test).
    pub async fn stop(&mut self) {
        let (ack, done) = oneshot::channel();
        if self.cmds.send(Cmd::Stop(ack)).is_ok() {
            let _ = done.await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

struct Launch {
    name: String,
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log_path: PathBuf,
}

type Log = Arc<Mutex<LineWriter<File>>>;

fn log_line(log: &Log, line: &str) {
    let _ = writeln!(log.lock().expect("log lock"), "{line}");
}

impl Launch {
    fn spawn(
        &self,
        generation: u32,
        log: &Log,
        lives: &Arc<Mutex<Vec<Life>>>,
        url_tx: &watch::Sender<Option<String>>,
    ) -> (Child, Vec<JoinHandle<()>>) {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env_remove("BIND")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} ({}): {e}", self.name, self.program));
        let pid = child.id();
        log_line(
            log,
            &format!(
                "===== {} generation {generation} (pid {pid:?}) =====",
                self.name
            ),
        );
        let index = {
            let mut lives = lives.lock().expect("lives lock");
            lives.push(Life {
                generation,
                spawned_at: Instant::now(),
                pid,
                listening_at: None,
                lines: Vec::new(),
                warnings: 0,
                errors: 0,
                ended: None,
            });
            lives.len() - 1
        };

        let stdout = child.stdout.take().expect("stdout is piped");
        let (out_log, out_lives, out_url) = (log.clone(), lives.clone(), url_tx.clone());
        let stdout_task = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log_line(&out_log, &format!("[stdout] {line}"));
                if let Some((_, addr)) = line.split_once("listening on http://") {
                    out_lives.lock().expect("lives lock")[index].listening_at =
                        Some(Instant::now());
                    out_url.send_replace(Some(format!("http://{}", addr.trim())));
                }
            }
        });

        let stderr = child.stderr.take().expect("stderr is piped");
        let (err_log, err_lives) = (log.clone(), lives.clone());
        let stderr_task = tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let at = Instant::now();
                log_line(&err_log, &line);
                let kept = match serde_json::from_str::<Value>(&line) {
                    Ok(fields) => {
                        let level = fields["level"].as_str().unwrap_or_default().to_owned();
                        let message = fields["message"].as_str().unwrap_or_default().to_owned();
                        let mut lives = err_lives.lock().expect("lives lock");
                        match level.as_str() {
                            "WARN" => lives[index].warnings += 1,
                            "ERROR" => lives[index].errors += 1,
                            _ => {}
                        }
                        KEPT_MESSAGES
                            .contains(&message.as_str())
                            .then_some(LogLine {
                                at,
                                message,
                                fields,
                            })
                    }
                    Err(_) if line.contains(CRASH_HOOK_LINE) => Some(LogLine {
                        at,
                        message: CRASH_HOOK_LINE.to_owned(),
                        fields: Value::String(line.clone()),
                    }),
                    Err(_) => None,
                };
                if let Some(kept) = kept {
                    err_lives.lock().expect("lives lock")[index]
                        .lines
                        .push(kept);
                }
            }
        });
        (child, vec![stdout_task, stderr_task])
    }
}

async fn supervise(
    launch: Launch,
    lives: Arc<Mutex<Vec<Life>>>,
    url_tx: watch::Sender<Option<String>>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
) {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log_path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", launch.log_path.display()));
    let log: Log = Arc::new(Mutex::new(LineWriter::new(file)));
    let mut generation = 0;
    loop {
        generation += 1;
        let (mut child, readers) = launch.spawn(generation, &log, &lives, &url_tx);
        enum Next {
            Exited(std::io::Result<std::process::ExitStatus>),
            Command(Option<Cmd>),
        }
        let next = loop {
            tokio::select! {
                status = child.wait() => break Next::Exited(status),
                cmd = cmds.recv() => match cmd {
                    // Already running.
                    Some(Cmd::Start) => continue,
                    other => break Next::Command(other),
                },
            }
        };
        let (ending, at, then) = match next {
            Next::Exited(status) => {
                let at = Instant::now();
                url_tx.send_replace(None);
                // Read what it printed last (the crash hook's line).
                for reader in readers {
                    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
                }
                let hooked = lives
                    .lock()
                    .expect("lives lock")
                    .last()
                    .is_some_and(|life| life.lines.iter().any(|l| l.message == CRASH_HOOK_LINE));
                let ending = if hooked {
                    Ending::CrashHook
                } else {
                    Ending::Exited(format!("{status:?}"))
                };
                (ending, at, None)
            }
            Next::Command(cmd) => {
                let at = Instant::now();
                let _ = child.start_kill();
                let _ = child.wait().await;
                url_tx.send_replace(None);
                for reader in readers {
                    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
                }
                match cmd {
                    Some(Cmd::Kill { hold, ack }) => (Ending::Killed, at, Some((hold, ack))),
                    Some(Cmd::Start) => unreachable!("handled while running"),
                    Some(Cmd::Stop(ack)) => {
                        record_end(&lives, &log, &launch.name, at, Ending::Stopped);
                        let _ = ack.send(());
                        return;
                    }
                    None => {
                        record_end(&lives, &log, &launch.name, at, Ending::Stopped);
                        return;
                    }
                }
            }
        };
        let unexpected = matches!(ending, Ending::Exited(_));
        record_end(&lives, &log, &launch.name, at, ending);
        match then {
            Some((hold, ack)) => {
                let _ = ack.send(at);
                if hold {
                    // Down until told to start again (or to stop).
                    loop {
                        match cmds.recv().await {
                            Some(Cmd::Start) => break,
                            Some(Cmd::Kill { ack, .. }) => {
                                let _ = ack.send(Instant::now());
                            }
                            Some(Cmd::Stop(ack)) => {
                                let _ = ack.send(());
                                return;
                            }
                            None => return,
                        }
                    }
                }
            }
            None if unexpected => {
                // A process dying on its own at once would otherwise spin.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            None => {}
        }
    }
}

fn record_end(lives: &Arc<Mutex<Vec<Life>>>, log: &Log, name: &str, at: Instant, ending: Ending) {
    log_line(log, &format!("===== {name} ended: {ending:?} ====="));
    if let Some(life) = lives.lock().expect("lives lock").last_mut() {
        life.ended = Some((at, ending));
    }
}

/// Poll `probe` every 20 ms until it yields, or `within` passes (None).
pub async fn poll_until<T>(within: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- the broker ----------------------------------------------------------------------

/// RabbitMQ's application stopped (`rabbitmqctl stop_app`). Dropping the guard without
/// [`BrokerOutage::end`] (a panicking test) starts it again, so the broker is never left down.
pub struct BrokerOutage {
    down: bool,
}

fn rabbitmqctl() -> String {
    std::env::var("RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".to_owned())
}

async fn run_rabbitmqctl(verb: &str) {
    let output = Command::new(rabbitmqctl())
        .arg(verb)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("running `rabbitmqctl {verb}`: {e}"));
    assert!(
        output.status.success(),
        "`rabbitmqctl {verb}` failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl BrokerOutage {
    /// `rabbitmqctl stop_app`; returns once the broker no longer serves clients.
    pub async fn begin() -> Self {
        // Armed before the command runs: even a half-done stop is undone on panic.
        let guard = Self { down: true };
        run_rabbitmqctl("stop_app").await;
        guard
    }

    /// `rabbitmqctl start_app`; returns once the broker serves clients again.
    pub async fn end(mut self) {
        run_rabbitmqctl("start_app").await;
        self.down = false;
    }
}

impl Drop for BrokerOutage {
    fn drop(&mut self) {
        if self.down {
            eprintln!("faults: starting RabbitMQ again (the test did not)");
            let _ = std::process::Command::new(rabbitmqctl())
                .arg("start_app")
                .stdin(Stdio::null())
                .status();
        }
    }
}
