//! Commands from the server (`commands/{id}`): carried out, and their outcome reported on
//! `commands/{id}/result` through the store-and-forward buffer.
//!
//! - At once: `{"status": "delivered"}`. Then the run, in a task of its own, bounded by the
//!   command's `timeout_secs` (the process group is killed past it), and
//!   `{"status": "succeeded" | "failed", "exit_code", "stdout", "stderr", "output", "error"}`.
//! - Built-ins: `ping` (diagnostics as `output`), `reboot` (reports success, then runs
//!   `reboot_command`), `restart-agent` (reports success, then the agent exits so that its
//!   service manager starts it again; a no-op where `restart_exits` is off, as in the simulator).
//! - Custom commands only from the allow-list in the configuration (`[commands.<name>]`), each
//!   a fixed program and arguments; the server's arguments are appended only with
//!   `allow_args = true`. Nothing goes through a shell. Anything else fails with a clear error.
//!
//! **Invariant:** a command id runs at most once. Ids are recorded in `<data_dir>/commands.json`
//! (the last [`JOURNAL_LIMIT`]) before the run starts and with their report when it ends; a
//! command delivered again (resent at reconnect, or after a restart) re-reports the recorded
//! result, or fails as interrupted if the agent stopped while it ran.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use crate::agent::Uplink;
use crate::config::{AgentConfig, ConfigError};

/// How many command ids the journal remembers.
pub const JOURNAL_LIMIT: usize = 1000;
/// The journal's file in the data directory.
pub const JOURNAL_FILE: &str = "commands.json";
/// Most bytes of stdout and of stderr reported (the server keeps as much).
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Most bytes of stdout/stderr kept in the journal per entry.
const JOURNAL_OUTPUT_BYTES: usize = 4 * 1024;

/// A custom command as written in the configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCustomCommand {
    pub exec: Vec<String>,
    pub allow_args: Option<bool>,
}

/// An allowed custom command: a program (absolute path) with fixed arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomCommand {
    pub exec: Vec<String>,
    /// Whether the server's arguments are appended.
    pub allow_args: bool,
}

/// The commands this agent carries out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandsConfig {
    /// What `reboot` runs.
    pub reboot: Vec<String>,
    /// The allow-list of custom commands, by name.
    pub custom: BTreeMap<String, CustomCommand>,
    /// Whether `restart-agent` makes the agent exit (to be restarted by its service manager).
    pub restart_exits: bool,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            reboot: vec!["systemctl".into(), "reboot".into()],
            custom: BTreeMap::new(),
            restart_exits: true,
        }
    }
}

const BUILTINS: [&str; 3] = ["reboot", "restart-agent", "ping"];

fn valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
        })
}

impl CommandsConfig {
    pub fn from_raw(
        reboot: Option<Vec<String>>,
        custom: Option<BTreeMap<String, RawCustomCommand>>,
    ) -> Result<Self, ConfigError> {
        let mut c = CommandsConfig::default();
        if let Some(r) = reboot {
            if r.is_empty() || r[0].is_empty() {
                return Err(ConfigError::Invalid {
                    key: "reboot_command",
                    reason: "a program and its arguments, e.g. [\"systemctl\", \"reboot\"]".into(),
                });
            }
            c.reboot = r;
        }
        for (name, raw) in custom.unwrap_or_default() {
            let bad = |reason: String| ConfigError::Invalid {
                key: "commands",
                reason,
            };
            if !valid_name(&name) {
                return Err(bad(format!(
                    "{name:?}: a command name is 1-64 characters a-z 0-9 _ . - starting with a letter or digit"
                )));
            }
            if BUILTINS.contains(&name.as_str()) {
                return Err(bad(format!("{name:?} is a built-in command")));
            }
            match raw.exec.first() {
                Some(p) if Path::new(p).is_absolute() => {}
                _ => {
                    return Err(bad(format!(
                        "commands.{name}.exec must start with an absolute program path"
                    )));
                }
            }
            c.custom.insert(
                name,
                CustomCommand {
                    exec: raw.exec,
                    allow_args: raw.allow_args.unwrap_or(false),
                },
            );
        }
        Ok(c)
    }
}

/// The command message from the server.
#[derive(Debug, Clone, Deserialize)]
struct Message {
    name: String,
    #[serde(default)]
    args: Vec<String>,
    timeout_secs: Option<u64>,
    /// When the server sent it (Unix ms): the clock skew of `ping`.
    sent_at: Option<i64>,
}

/// A report to the server (`commands/{id}/result`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    fn failed(error: impl Into<String>) -> Self {
        Report {
            status: "failed".into(),
            error: Some(error.into()),
            ..Report::default()
        }
    }

    fn succeeded() -> Self {
        Report {
            status: "succeeded".into(),
            ..Report::default()
        }
    }

    /// The same report with stdout/stderr cut for the journal.
    fn for_journal(&self) -> Report {
        let cut = |s: &Option<String>| s.as_deref().map(|s| truncate(s, JOURNAL_OUTPUT_BYTES));
        Report {
            stdout: cut(&self.stdout),
            stderr: cut(&self.stderr),
            ..self.clone()
        }
    }
}

/// At most `max` bytes of `s`, cut on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    id: String,
    /// `None` while it runs.
    report: Option<Report>,
}

/// The ids of commands started and finished, with their reports (bounded, oldest dropped).
#[derive(Debug, Default)]
pub struct Journal {
    path: PathBuf,
    entries: VecDeque<Entry>,
}

impl Journal {
    /// Loads the journal; a missing or unreadable file starts an empty one (logged).
    pub fn open(data_dir: &Path) -> Journal {
        let path = data_dir.join(JOURNAL_FILE);
        let entries = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<VecDeque<Entry>>(&bytes) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "the command journal is unreadable; starting a new one");
                    VecDeque::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => VecDeque::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the command journal; starting a new one");
                VecDeque::new()
            }
        };
        Journal { path, entries }
    }

    fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.id == id)
    }

    fn record(&mut self, id: &str, report: Option<Report>) {
        match self.entries.iter_mut().find(|e| e.id == id) {
            Some(e) => e.report = report,
            None => {
                self.entries.push_back(Entry {
                    id: id.to_owned(),
                    report,
                });
                while self.entries.len() > JOURNAL_LIMIT {
                    self.entries.pop_front();
                }
            }
        }
        if let Err(e) = self.save() {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the command journal");
        }
    }

    /// Temporary file, fsync, rename: a crash leaves the old journal or the new one.
    fn save(&self) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&self.entries).map_err(std::io::Error::other)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// Runs commands from the server and reports their outcome.
pub struct CommandRunner {
    uplinks: mpsc::Sender<Uplink>,
    config: Arc<CommandsConfig>,
    data_dir: PathBuf,
    journal: Arc<Mutex<Journal>>,
    running: Arc<Mutex<HashSet<String>>>,
    restart: Arc<watch::Sender<bool>>,
    started: Instant,
}

impl CommandRunner {
    pub fn new(config: &AgentConfig, uplinks: mpsc::Sender<Uplink>) -> Self {
        let (restart, _) = watch::channel(false);
        CommandRunner {
            uplinks,
            config: Arc::new(config.commands.clone()),
            data_dir: config.data_dir.clone(),
            journal: Arc::new(Mutex::new(Journal::open(&config.data_dir))),
            running: Arc::default(),
            restart: Arc::new(restart),
            started: Instant::now(),
        }
    }

    /// Turns true when `restart-agent` asks the agent to exit (after its report was queued).
    pub fn restart_requested(&self) -> watch::Receiver<bool> {
        self.restart.subscribe()
    }

    /// A command arrived. Returns at once; the work happens in a task.
    pub fn on_command(&mut self, id: &str, payload: &[u8]) {
        let ctx = Context {
            id: id.to_owned(),
            uplinks: self.uplinks.clone(),
            config: self.config.clone(),
            data_dir: self.data_dir.clone(),
            journal: self.journal.clone(),
            running: self.running.clone(),
            restart: self.restart.clone(),
            started: self.started,
        };
        let message = serde_json::from_slice::<Message>(payload);
        tokio::spawn(async move { ctx.handle(message).await });
    }
}

struct Context {
    id: String,
    uplinks: mpsc::Sender<Uplink>,
    config: Arc<CommandsConfig>,
    data_dir: PathBuf,
    journal: Arc<Mutex<Journal>>,
    running: Arc<Mutex<HashSet<String>>>,
    restart: Arc<watch::Sender<bool>>,
    started: Instant,
}

/// What to do after the report of a built-in.
enum After {
    Nothing,
    Reboot,
    Restart,
}

impl Context {
    /// Queues the report for the buffer; returns a receiver that says once it is buffered.
    async fn report(&self, r: &Report) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        let payload = serde_json::to_vec(r).unwrap_or_default();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut up = Uplink::new(format!("commands/{}/result", self.id), payload);
        up.buffered = Some(tx);
        if self.uplinks.send(up).await.is_err() {
            tracing::warn!(command = %self.id, "the agent is stopping; a command report is not queued");
            return None;
        }
        Some(rx)
    }

    fn finish(&self, r: &Report) {
        if let Ok(mut j) = self.journal.lock() {
            j.record(&self.id, Some(r.for_journal()));
        }
        if let Ok(mut running) = self.running.lock() {
            running.remove(&self.id);
        }
    }

    async fn handle(self, message: Result<Message, serde_json::Error>) {
        // Seen before? Running now: say delivered again. Finished: report the same result.
        // Started by an earlier run of the agent that stopped: it was interrupted.
        let is_running = self
            .running
            .lock()
            .map(|r| r.contains(&self.id))
            .unwrap_or(false);
        if is_running {
            self.report(&delivered()).await;
            return;
        }
        let known = self
            .journal
            .lock()
            .ok()
            .and_then(|j| j.get(&self.id).cloned());
        match known {
            Some(Entry {
                report: Some(r), ..
            }) => {
                tracing::info!(command = %self.id, "command seen before; reporting its result again");
                self.report(&r).await;
                return;
            }
            Some(Entry { report: None, .. }) => {
                let r = Report::failed("interrupted: the agent stopped while the command ran");
                self.finish(&r);
                self.report(&r).await;
                return;
            }
            None => {}
        }
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                let r = Report::failed(format!("the command message is not valid: {e}"));
                self.finish(&r);
                self.report(&r).await;
                return;
            }
        };
        if let Ok(mut j) = self.journal.lock() {
            j.record(&self.id, None);
        }
        if let Ok(mut running) = self.running.lock() {
            running.insert(self.id.clone());
        }
        self.report(&delivered()).await;
        tracing::info!(command = %self.id, name = %message.name, "running a command from the server");
        let timeout = Duration::from_secs(message.timeout_secs.unwrap_or(300).max(1));
        let (report, after) = match message.name.as_str() {
            "ping" => (self.ping(&message), After::Nothing),
            "reboot" => (Report::succeeded(), After::Reboot),
            "restart-agent" if self.config.restart_exits => (Report::succeeded(), After::Restart),
            "restart-agent" => (
                Report {
                    output: Some(
                        json!({"restarted": false, "reason": "this agent does not restart itself"}),
                    ),
                    ..Report::succeeded()
                },
                After::Nothing,
            ),
            name => match self.config.custom.get(name) {
                None => (
                    Report::failed(format!(
                        "command {name:?} is not allowed on this device (not a built-in and not in its [commands] allow-list)"
                    )),
                    After::Nothing,
                ),
                Some(c) if !c.allow_args && !message.args.is_empty() => (
                    Report::failed(format!(
                        "command {name:?} takes no arguments here (allow_args is off)"
                    )),
                    After::Nothing,
                ),
                Some(c) => {
                    let mut argv = c.exec.clone();
                    if c.allow_args {
                        argv.extend(message.args.iter().cloned());
                    }
                    (run(&argv, timeout).await, After::Nothing)
                }
            },
        };
        self.finish(&report);
        let buffered = self.report(&report).await;
        match after {
            After::Nothing => {}
            After::Reboot => {
                // Reboot once the report is in the buffer (fsynced), bounded in case the main
                // loop is stuck; it is in the journal too, so a redelivery after the reboot
                // reports it again.
                if let Some(rx) = buffered {
                    match tokio::time::timeout(Duration::from_secs(10), rx).await {
                        Ok(Ok(true)) => {}
                        _ => {
                            tracing::warn!(command = %self.id, "the reboot report may not be buffered; rebooting anyway")
                        }
                    }
                }
                tracing::warn!(command = ?self.config.reboot, "rebooting on the server's command");
                let r = run(&self.config.reboot, timeout).await;
                if r.status != "succeeded" {
                    tracing::error!(error = ?r.error, stderr = ?r.stderr, "the reboot command failed");
                }
            }
            After::Restart => {
                tracing::warn!("restarting the agent on the server's command");
                let _ = self.restart.send(true);
            }
        }
    }

    fn ping(&self, m: &Message) -> Report {
        let now = crate::telemetry::now_ms();
        let disk = crate::telemetry::disk_usage(&self.data_dir);
        let system_uptime = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|t| crate::telemetry::parse_uptime(&t));
        Report {
            output: Some(json!({
                "server_reachable": true,
                "clock_skew_ms": m.sent_at.map(|s| now - s),
                "data_dir_free_bytes": disk.map(|(_, _, avail)| avail),
                "data_dir_total_bytes": disk.map(|(total, _, _)| total),
                "agent_version": env!("CARGO_PKG_VERSION"),
                "agent_uptime_secs": self.started.elapsed().as_secs(),
                "system_uptime_secs": system_uptime,
            })),
            ..Report::succeeded()
        }
    }
}

fn delivered() -> Report {
    Report {
        status: "delivered".into(),
        ..Report::default()
    }
}

/// Runs a program (no shell) with a timeout; stdout and stderr are kept up to
/// [`MAX_OUTPUT_BYTES`] each. Past the timeout the process group is killed.
pub async fn run(argv: &[String], timeout: Duration) -> Report {
    let Some((program, args)) = argv.split_first() else {
        return Report::failed("nothing to run");
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"TENDER_AGENT_") {
            cmd.env_remove(key);
        }
    }
    let mut child = match crate::inventory::spawn_retrying_busy(&mut cmd).await {
        Ok(c) => c,
        Err(e) => return Report::failed(format!("cannot start {program}: {e}")),
    };
    let read = |pipe: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| async move {
        let mut buf = Vec::new();
        if let Some(p) = pipe {
            // Read everything (so the program never blocks on a full pipe), keep the head.
            let mut chunk = [0u8; 8192];
            let mut p = p;
            loop {
                match p.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = (MAX_OUTPUT_BYTES + 4).saturating_sub(buf.len());
                        buf.extend_from_slice(&chunk[..n.min(room)]);
                    }
                }
            }
        }
        truncate(&String::from_utf8_lossy(&buf), MAX_OUTPUT_BYTES)
    };
    let stdout = child
        .stdout
        .take()
        .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    let stderr = child
        .stderr
        .take()
        .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    let work = async { tokio::join!(read(stdout), read(stderr), child.wait()) };
    match tokio::time::timeout(timeout, work).await {
        Ok((out, err, status)) => match status {
            Ok(status) => Report {
                status: if status.success() {
                    "succeeded"
                } else {
                    "failed"
                }
                .into(),
                exit_code: status.code(),
                stdout: Some(out),
                stderr: Some(err),
                output: None,
                error: None,
            },
            Err(e) => Report::failed(format!("waiting for {program}: {e}")),
        },
        Err(_) => {
            if let Some(pid) = child.id() {
                crate::inventory::kill_process_group(pid).await;
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            Report::failed(format!(
                "timed out after {} s; the process was killed",
                timeout.as_secs()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_allow_list_is_checked() {
        let ok = |exec: &[&str]| RawCustomCommand {
            exec: exec.iter().map(|s| (*s).to_owned()).collect(),
            allow_args: None,
        };
        let c = CommandsConfig::from_raw(
            None,
            Some([("backup".to_owned(), ok(&["/usr/bin/backup", "--now"]))].into()),
        )
        .unwrap();
        assert_eq!(c.reboot, ["systemctl", "reboot"]);
        assert!(!c.custom["backup"].allow_args);
        for (name, exec) in [
            ("Bad", &["/bin/true"][..]),
            ("ping", &["/bin/true"][..]),
            ("x", &["true"][..]),
            ("y", &[][..]),
        ] {
            assert!(
                CommandsConfig::from_raw(None, Some([(name.to_owned(), ok(exec))].into())).is_err(),
                "{name}"
            );
        }
        assert!(CommandsConfig::from_raw(Some(vec![]), None).is_err());
    }

    #[test]
    fn the_journal_is_bounded_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path());
        for i in 0..JOURNAL_LIMIT + 5 {
            j.record(&format!("c{i}"), None);
        }
        j.record("c1004", Some(Report::succeeded()));
        let j = Journal::open(dir.path());
        assert_eq!(j.entries.len(), JOURNAL_LIMIT);
        assert!(j.get("c0").is_none());
        assert_eq!(j.get("c1004").unwrap().report, Some(Report::succeeded()));
        std::fs::write(dir.path().join(JOURNAL_FILE), b"garbage").unwrap();
        assert!(Journal::open(dir.path()).entries.is_empty());
    }

    #[tokio::test]
    async fn programs_run_with_their_output_exit_code_and_timeout() {
        let sh = |script: &str| vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()];
        let r = run(
            &sh("echo out; echo err >&2; exit 3"),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(r.status, "failed");
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.stdout.as_deref(), Some("out\n"));
        assert_eq!(r.stderr.as_deref(), Some("err\n"));
        let r = run(
            &sh("head -c 200000 /dev/zero | tr '\\0' x"),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(r.status, "succeeded");
        assert_eq!(r.stdout.unwrap().len(), MAX_OUTPUT_BYTES);
        let r = run(&sh("sleep 30"), Duration::from_millis(200)).await;
        assert_eq!(r.status, "failed");
        assert!(r.error.unwrap().contains("timed out"));
        let r = run(&["/nonexistent/program".to_owned()], Duration::from_secs(1)).await;
        assert!(r.error.unwrap().contains("cannot start"));
    }

    fn runner(
        dir: &Path,
        custom: BTreeMap<String, CustomCommand>,
    ) -> (CommandRunner, mpsc::Receiver<Uplink>) {
        let (tx, rx) = mpsc::channel(16);
        let (restart, _) = watch::channel(false);
        let runner = CommandRunner {
            uplinks: tx,
            config: Arc::new(CommandsConfig {
                custom,
                ..CommandsConfig::default()
            }),
            data_dir: dir.to_owned(),
            journal: Arc::new(Mutex::new(Journal::open(dir))),
            running: Arc::default(),
            restart: Arc::new(restart),
            started: Instant::now(),
        };
        (runner, rx)
    }

    async fn report(rx: &mut mpsc::Receiver<Uplink>) -> (String, Report) {
        let up = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        (up.suffix, serde_json::from_slice(&up.payload).unwrap())
    }

    #[tokio::test]
    async fn a_command_id_runs_once_even_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let custom: BTreeMap<String, CustomCommand> = [(
            "count".to_owned(),
            CustomCommand {
                exec: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    format!("echo x >> {}; echo ran", count.display()),
                ],
                allow_args: false,
            },
        )]
        .into();
        let msg = br#"{"name": "count", "args": [], "timeout_secs": 10, "sent_at": 1}"#;
        let (mut r, mut rx) = runner(dir.path(), custom.clone());
        r.on_command("c1", msg);
        assert_eq!(report(&mut rx).await.1.status, "delivered");
        let (suffix, done) = report(&mut rx).await;
        assert_eq!(suffix, "commands/c1/result");
        assert_eq!(done.stdout.as_deref(), Some("ran\n"));
        // Delivered again, and again after a restart: the recorded result, no second run.
        r.on_command("c1", msg);
        assert_eq!(report(&mut rx).await.1, done);
        let (mut r, mut rx) = runner(dir.path(), custom);
        r.on_command("c1", msg);
        assert_eq!(report(&mut rx).await.1, done);
        assert_eq!(std::fs::read_to_string(&count).unwrap(), "x\n");
        // A run cut short by a stop (recorded as started, no report) is not run again.
        Journal::open(dir.path()).record("c2", None);
        let (mut r, mut rx) = runner(dir.path(), BTreeMap::new());
        r.on_command("c2", msg);
        let (_, cut) = report(&mut rx).await;
        assert_eq!(cut.status, "failed");
        assert!(cut.error.unwrap().contains("interrupted"));
        assert_eq!(std::fs::read_to_string(&count).unwrap(), "x\n");
    }

    #[tokio::test]
    async fn restart_agent_reports_then_asks_the_agent_to_exit() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, mut rx) = runner(dir.path(), BTreeMap::new());
        let mut restart = r.restart_requested();
        r.on_command("r1", br#"{"name": "restart-agent"}"#);
        assert_eq!(report(&mut rx).await.1.status, "delivered");
        assert_eq!(report(&mut rx).await.1.status, "succeeded");
        tokio::time::timeout(Duration::from_secs(10), restart.wait_for(|r| *r))
            .await
            .unwrap()
            .unwrap();
        // A bad message fails clearly.
        r.on_command("bad", b"{}");
        let (_, bad) = report(&mut rx).await;
        assert_eq!(bad.status, "failed");
        assert!(bad.error.unwrap().contains("not valid"));
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
