//! A process under a supervisor that restarts it whenever it dies (a crash, or a kill the
//! test asked for) unless told to hold it down. Each process's output goes to a log file,
//! the evidence when a guarantee fails; the log lines recovery is measured by are kept in
//! memory with the instant they were read.

use std::{
    fs::{File, OpenOptions},
    io::{LineWriter, Write},
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use super::listening_url;

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
    pub lines: Vec<LogLine>,
    pub warnings: usize,
    pub errors: usize,
    pub ended: Option<(Instant, Ending)>,
}

impl Life {
    /// Counts a stderr line's level, and returns the line if it is worth keeping in memory.
    fn read(&mut self, line: &str, at: Instant) -> Option<LogLine> {
        let Ok(fields) = serde_json::from_str::<Value>(line) else {
            // Not JSON: the crash hook prints before it aborts.
            return line.contains(CRASH_HOOK_LINE).then(|| LogLine {
                at,
                message: CRASH_HOOK_LINE.to_owned(),
                fields: Value::String(line.to_owned()),
            });
        };
        match fields["level"].as_str().unwrap_or_default() {
            "WARN" => self.warnings += 1,
            "ERROR" => self.errors += 1,
            _ => {}
        }
        let message = fields["message"].as_str().unwrap_or_default().to_owned();
        KEPT_MESSAGES
            .contains(&message.as_str())
            .then_some(LogLine {
                at,
                message,
                fields,
            })
    }

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
    /// Spawns the process and supervises it until [`Supervised::stop`].
    pub fn start(launch: Launch) -> Self {
        let name = launch.name.clone();
        let lives = Arc::new(Mutex::new(Vec::new()));
        let (url_tx, url_rx) = watch::channel(None);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(supervise(launch, lives.clone(), url_tx, cmd_rx));
        Self {
            name,
            lives,
            url: url_rx,
            cmds: cmd_tx,
            task: Some(task),
        }
    }

    /// Read the runs so far (the last is the current or latest one).
    pub fn lives<T>(&self, f: impl FnOnce(&[Life]) -> T) -> T {
        f(&self.lives.lock().expect("lives lock"))
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

/// What to run, with which environment, logging where.
pub struct Launch {
    pub name: String,
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log_path: PathBuf,
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
                lines: Vec::new(),
                warnings: 0,
                errors: 0,
                ended: None,
            });
            lives.len() - 1
        };

        let stdout = child.stdout.take().expect("stdout is piped");
        let (out_log, out_url) = (log.clone(), url_tx.clone());
        let stdout_task = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log_line(&out_log, &format!("[stdout] {line}"));
                if let Some(url) = listening_url(&line) {
                    out_url.send_replace(Some(url));
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
                let mut lives = err_lives.lock().expect("lives lock");
                let life = &mut lives[index];
                if let Some(kept) = life.read(&line, at) {
                    life.lines.push(kept);
                }
            }
        });
        (child, vec![stdout_task, stderr_task])
    }
}

/// Runs one process, life after life, until told to stop.
struct Supervisor {
    launch: Launch,
    lives: Arc<Mutex<Vec<Life>>>,
    url_tx: watch::Sender<Option<String>>,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    log: Log,
}

/// What the supervisor does once a life ended.
enum After {
    Respawn,
    /// It died on its own: respawning at once could spin.
    PauseAndRespawn,
    /// Killed and held down until told to start again.
    Hold,
    Stop,
}

async fn supervise(
    launch: Launch,
    lives: Arc<Mutex<Vec<Life>>>,
    url_tx: watch::Sender<Option<String>>,
    cmds: mpsc::UnboundedReceiver<Cmd>,
) {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log_path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", launch.log_path.display()));
    let log: Log = Arc::new(Mutex::new(LineWriter::new(file)));
    let mut supervisor = Supervisor {
        launch,
        lives,
        url_tx,
        cmds,
        log,
    };
    let mut generation = 0;
    loop {
        generation += 1;
        let (child, readers) = supervisor.launch.spawn(
            generation,
            &supervisor.log,
            &supervisor.lives,
            &supervisor.url_tx,
        );
        match supervisor.watch(child, readers).await {
            After::Respawn => {}
            After::PauseAndRespawn => tokio::time::sleep(Duration::from_millis(500)).await,
            After::Hold => {
                if !supervisor.hold_down().await {
                    return;
                }
            }
            After::Stop => return,
        }
    }
}

impl Supervisor {
    /// Waits until the process dies or a command ends it; records how this life ended.
    async fn watch(&mut self, mut child: Child, readers: Vec<JoinHandle<()>>) -> After {
        enum Next {
            Exited(std::io::Result<std::process::ExitStatus>),
            Command(Option<Cmd>),
        }
        let next = loop {
            tokio::select! {
                status = child.wait() => break Next::Exited(status),
                cmd = self.cmds.recv() => match cmd {
                    // Already running.
                    Some(Cmd::Start) => continue,
                    other => break Next::Command(other),
                },
            }
        };
        let at = Instant::now();
        let cmd = match next {
            Next::Exited(status) => {
                self.down(readers).await;
                if self.crash_hooked() {
                    self.record_end(at, Ending::CrashHook);
                    return After::Respawn;
                }
                self.record_end(at, Ending::Exited(format!("{status:?}")));
                return After::PauseAndRespawn;
            }
            Next::Command(cmd) => cmd,
        };
        let _ = child.start_kill();
        let _ = child.wait().await;
        self.down(readers).await;
        match cmd {
            Some(Cmd::Kill { hold, ack }) => {
                self.record_end(at, Ending::Killed);
                let _ = ack.send(at);
                if hold { After::Hold } else { After::Respawn }
            }
            Some(Cmd::Start) => unreachable!("handled while running"),
            Some(Cmd::Stop(ack)) => {
                self.record_end(at, Ending::Stopped);
                let _ = ack.send(());
                After::Stop
            }
            None => {
                self.record_end(at, Ending::Stopped);
                After::Stop
            }
        }
    }

    /// The process is gone: no URL, and its last output read (the crash hook's line).
    async fn down(&self, readers: Vec<JoinHandle<()>>) {
        self.url_tx.send_replace(None);
        for reader in readers {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
    }

    fn crash_hooked(&self) -> bool {
        self.lives
            .lock()
            .expect("lives lock")
            .last()
            .is_some_and(|life| life.lines.iter().any(|l| l.message == CRASH_HOOK_LINE))
    }

    /// Down until told to start again (true) or to stop (false).
    async fn hold_down(&mut self) -> bool {
        loop {
            match self.cmds.recv().await {
                Some(Cmd::Start) => return true,
                Some(Cmd::Kill { ack, .. }) => {
                    let _ = ack.send(Instant::now());
                }
                Some(Cmd::Stop(ack)) => {
                    let _ = ack.send(());
                    return false;
                }
                None => return false,
            }
        }
    }

    fn record_end(&self, at: Instant, ending: Ending) {
        log_line(
            &self.log,
            &format!("===== {} ended: {ending:?} =====", self.launch.name),
        );
        if let Some(life) = self.lives.lock().expect("lives lock").last_mut() {
            life.ended = Some((at, ending));
        }
    }
}
