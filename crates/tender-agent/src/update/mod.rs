//! Over-the-air updates on the device: signed artifacts installed by update modules, through a
//! journaled state machine that survives crashes, restarts and reboots.
//!
//! - [`install`] reads an artifact from any [`Read`] (a file, later a download), checks it with
//!   [`tender_artifact::read`] against the trusted keys, refuses before anything changes what
//!   is not for this device (device type, `depends`, an older or the same version), streams
//!   the content to the update module, then drives the update until it is over or waits for a
//!   reboot. Progress goes to a [`Progress`] (the deployment statuses of the server).
//! - [`resume`] runs when the agent starts: an update left in progress by a crash, a restart
//!   or a reboot is carried on or rolled back.
//! - [`state`]: the pure transition function; [`journal`]: the persisted update
//!   (`<data_dir>/update.json`); [`installed`]: what the device has installed and provides;
//!   [`modules`]: `file`, `script`, `rootfs-ab` and external modules; [`bootenv`]: the A/B
//!   boot environment and what the boot loader does with it.
//!
//! **Invariants:** the journal is written (atomically) before the actions of a state run, so a
//! start after any crash finds a state whose actions are safe to repeat or undo; the journal
//! says `succeeded` only after the module's commit and the installed records are written;
//! nothing outside the work directory and the inactive slot changes before the whole artifact
//! was verified.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tender_artifact::{Header, Manifest, Payload, PublicKey, Script, ScriptState, Sink, Trust};

use crate::config::ConfigError;

pub mod bootenv;
pub mod installed;
pub mod journal;
pub mod modules;
pub mod process;
pub mod state;

use installed::Installed;
use journal::{Journal, crash_point};
use modules::{Ctx, Module};
use state::{Action, Caps, Event, State};

/// The work directory's name in the data directory.
pub const WORK_DIR: &str = "update";

/// `[update]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpdateConfig {
    pub trusted_keys: Option<Vec<PathBuf>>,
    pub require_signature: Option<bool>,
    pub allow_downgrade: Option<bool>,
    pub modules_dir: Option<PathBuf>,
    pub health_check: Option<Vec<String>>,
    pub health_check_timeout_secs: Option<u64>,
    pub script_timeout_secs: Option<u64>,
    pub module_timeout_secs: Option<u64>,
    pub reboot_command: Option<Vec<String>>,
    pub verify_connection: Option<bool>,
    pub connect_timeout_secs: Option<u64>,
    pub boot_id_file: Option<PathBuf>,
    pub provides: Option<BTreeMap<String, String>>,
    pub rootfs: Option<RawRootfsConfig>,
}

/// `[update.rootfs]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRootfsConfig {
    pub slots: BTreeMap<String, PathBuf>,
    pub bootenv: PathBuf,
    pub cmdline: Option<PathBuf>,
    pub bootlimit: Option<u32>,
}

/// The A/B slots of `rootfs-ab`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootfsConfig {
    /// Exactly two: slot name → block device (or file).
    pub slots: BTreeMap<String, PathBuf>,
    /// The boot environment file (`key=value` lines).
    pub bootenv: PathBuf,
    /// The kernel command line naming the running slot (`/proc/cmdline`).
    pub cmdline: PathBuf,
    /// Boots allowed on trial before the boot loader falls back.
    pub bootlimit: u32,
}

/// The validated `[update]` settings, with what they need from the rest of the configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateConfig {
    pub data_dir: PathBuf,
    /// The device type artifacts must be compatible with (`device_type`).
    pub device_type: Option<String>,
    pub trusted_keys: Vec<PathBuf>,
    pub require_signature: bool,
    pub allow_downgrade: bool,
    /// Install the version that is installed already instead of skipping it (a deployment's
    /// `force`; not a configuration key).
    pub reinstall_same_version: bool,
    pub modules_dir: PathBuf,
    /// Run in the verify state (after the reboot, if any); failing rolls back.
    pub health_check: Vec<String>,
    pub health_check_timeout: Duration,
    pub script_timeout: Duration,
    pub module_timeout: Duration,
    pub reboot_command: Vec<String>,
    /// The running agent verifies an update only once it has connected to the server.
    pub verify_connection: bool,
    pub connect_timeout: Duration,
    pub boot_id_file: PathBuf,
    /// What the device provides before any artifact was committed (e.g. `rootfs.version`).
    pub provides: BTreeMap<String, String>,
    pub rootfs: Option<RootfsConfig>,
}

pub const DEFAULT_MODULES_DIR: &str = "/usr/lib/tender/modules";

impl UpdateConfig {
    /// Defaults with nothing configured.
    pub fn defaults(data_dir: &Path, device_type: Option<String>, reboot: &[String]) -> Self {
        UpdateConfig {
            data_dir: data_dir.to_owned(),
            device_type,
            trusted_keys: vec![],
            require_signature: true,
            allow_downgrade: false,
            reinstall_same_version: false,
            modules_dir: DEFAULT_MODULES_DIR.into(),
            health_check: vec![],
            health_check_timeout: Duration::from_secs(120),
            script_timeout: Duration::from_secs(300),
            module_timeout: Duration::from_secs(3600),
            reboot_command: reboot.to_vec(),
            verify_connection: true,
            connect_timeout: Duration::from_secs(300),
            boot_id_file: "/proc/sys/kernel/random/boot_id".into(),
            provides: BTreeMap::new(),
            rootfs: None,
        }
    }

    pub fn from_raw(
        raw: Option<RawUpdateConfig>,
        data_dir: &Path,
        device_type: Option<String>,
        reboot: &[String],
    ) -> Result<Self, ConfigError> {
        let mut c = UpdateConfig::defaults(data_dir, device_type, reboot);
        let Some(raw) = raw else {
            return Ok(c);
        };
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid { key, reason };
        let secs = |key: &'static str, v: Option<u64>, default: Duration| match v {
            None => Ok(default),
            Some(0) => Err(invalid(key, "must be at least 1".into())),
            Some(s) => Ok(Duration::from_secs(s)),
        };
        c.trusted_keys = raw.trusted_keys.unwrap_or_default();
        c.require_signature = raw.require_signature.unwrap_or(true);
        c.allow_downgrade = raw.allow_downgrade.unwrap_or(false);
        if let Some(d) = raw.modules_dir {
            c.modules_dir = d;
        }
        if let Some(h) = raw.health_check {
            if h.first().is_none_or(|p| !Path::new(p).is_absolute()) {
                return Err(invalid(
                    "update.health_check",
                    "an absolute program path and its arguments".into(),
                ));
            }
            c.health_check = h;
        }
        c.health_check_timeout = secs(
            "update.health_check_timeout_secs",
            raw.health_check_timeout_secs,
            c.health_check_timeout,
        )?;
        c.script_timeout = secs(
            "update.script_timeout_secs",
            raw.script_timeout_secs,
            c.script_timeout,
        )?;
        c.module_timeout = secs(
            "update.module_timeout_secs",
            raw.module_timeout_secs,
            c.module_timeout,
        )?;
        c.connect_timeout = secs(
            "update.connect_timeout_secs",
            raw.connect_timeout_secs,
            c.connect_timeout,
        )?;
        if let Some(r) = raw.reboot_command {
            if r.first().is_none_or(String::is_empty) {
                return Err(invalid(
                    "update.reboot_command",
                    "a program and its arguments".into(),
                ));
            }
            c.reboot_command = r;
        }
        c.verify_connection = raw.verify_connection.unwrap_or(true);
        if let Some(b) = raw.boot_id_file {
            c.boot_id_file = b;
        }
        c.provides = raw.provides.unwrap_or_default();
        if let Some(r) = raw.rootfs {
            if r.slots.len() != 2 {
                return Err(invalid(
                    "update.rootfs.slots",
                    "exactly two slots, e.g. { a = \"/dev/mmcblk0p2\", b = \"/dev/mmcblk0p3\" }"
                        .into(),
                ));
            }
            if let Some(bad) = r
                .slots
                .keys()
                .find(|k| k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            {
                return Err(invalid(
                    "update.rootfs.slots",
                    format!("{bad:?}: slot names are letters, digits and _"),
                ));
            }
            let bootlimit = r.bootlimit.unwrap_or(3);
            if bootlimit == 0 {
                return Err(invalid(
                    "update.rootfs.bootlimit",
                    "must be at least 1".into(),
                ));
            }
            c.rootfs = Some(RootfsConfig {
                slots: r.slots,
                bootenv: r.bootenv,
                cmdline: r.cmdline.unwrap_or_else(|| "/proc/cmdline".into()),
                bootlimit,
            });
        }
        Ok(c)
    }

    /// The update's work directory.
    pub fn work_dir(&self) -> PathBuf {
        self.data_dir.join(WORK_DIR)
    }
}

/// Why no update could be attempted (as opposed to an update that failed: [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("the update journal: {0}")]
    Journal(std::io::Error),
    #[error("the installed-software records: {0}")]
    Installed(std::io::Error),
    #[error("the update work directory: {0}")]
    WorkDir(std::io::Error),
    #[error("trusted key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error(
        "an update is in progress ({name} {version}, {state}); it must finish or roll back first"
    )]
    InProgress {
        name: String,
        version: String,
        state: State,
    },
}

/// How an update ended (for now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// A reboot was asked for; the update goes on when the agent starts again.
    Rebooting,
    /// Failed, nothing installed (or nothing could be undone: see the journal).
    Failed(String),
    /// Failed and undone.
    RolledBack(String),
    /// Not for this device (device type, `depends`, no module for its payload type).
    Incompatible(String),
    /// This version is installed already.
    Skipped(String),
}

impl Outcome {
    /// The deployment status.
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Rebooting => "rebooting",
            Outcome::Failed(_) => "failed",
            Outcome::RolledBack(_) => "rolled_back",
            Outcome::Incompatible(_) => "incompatible",
            Outcome::Skipped(_) => "skipped",
        }
    }
}

/// Where progress goes: the server's deployment (statuses `downloading`, `downloaded`,
/// `installing`, `rebooting`, `verifying`, then `succeeded`, `failed`, `rolled_back`,
/// `incompatible` or `skipped`) and its log.
pub trait Progress {
    fn status(&mut self, status: &str);
    fn log(&mut self, line: &str);
}

/// Progress that goes nowhere but the agent's log.
#[derive(Debug, Default)]
pub struct LogOnly;

impl Progress for LogOnly {
    fn status(&mut self, status: &str) {
        tracing::info!(status, "update");
    }
    fn log(&mut self, _: &str) {}
}

/// The health the caller adds to the verify state (e.g. "connected to the server").
pub type Health<'a> = &'a dyn Fn() -> Result<(), String>;

/// Always healthy.
pub fn no_health() -> Result<(), String> {
    Ok(())
}

/// Variables every script and external module gets.
pub(crate) fn script_env(ctx: &Ctx<'_>, j: &Journal, state: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("TENDER_UPDATE_STATE".to_owned(), state.to_owned()),
        ("TENDER_UPDATE_NAME".to_owned(), ctx.manifest.name.clone()),
        (
            "TENDER_UPDATE_VERSION".to_owned(),
            ctx.manifest.version.clone(),
        ),
        (
            "TENDER_UPDATE_PAYLOAD_TYPE".to_owned(),
            ctx.manifest.payload_type.clone(),
        ),
        (
            "TENDER_UPDATE_ARTIFACT_ID".to_owned(),
            j.artifact_id.clone(),
        ),
        (
            "TENDER_UPDATE_WORK_DIR".to_owned(),
            ctx.work_dir.display().to_string(),
        ),
    ];
    if let Some(s) = &j.slots {
        env.push(("TENDER_UPDATE_FROM_SLOT".to_owned(), s.from.clone()));
        env.push(("TENDER_UPDATE_TO_SLOT".to_owned(), s.to.clone()));
    }
    env
}

pub(crate) fn load_keys(config: &UpdateConfig) -> Result<Vec<PublicKey>, UpdateError> {
    config
        .trusted_keys
        .iter()
        .map(|path| {
            let pem = std::fs::read_to_string(path).map_err(|e| UpdateError::Key {
                path: path.clone(),
                message: e.to_string(),
            })?;
            PublicKey::from_pem(&pem).map_err(|e| UpdateError::Key {
                path: path.clone(),
                message: e.to_string(),
            })
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A refusal decided from the manifest, before any content.
enum Refusal {
    Incompatible(String),
    Skipped(String),
    Refused(String),
}

/// The artifact reader's sink: decides on the manifest, stores scripts, hands payloads to the
/// module.
struct InstallSink<'a> {
    config: &'a UpdateConfig,
    artifact_id: &'a str,
    installed: &'a Installed,
    work_dir: PathBuf,
    refusal: Option<Refusal>,
    started: Option<(Journal, Box<dyn Module>, Manifest)>,
}

impl InstallSink<'_> {
    fn decide(&mut self, header: &Header) -> Result<(), Refusal> {
        let m = &header.manifest;
        let device_type = self.config.device_type.as_deref().ok_or_else(|| {
            Refusal::Incompatible("this device has no `device_type` configured".into())
        })?;
        let provides = self.installed.provides_over(&self.config.provides);
        m.check_compatible(device_type, &provides)
            .map_err(|e| Refusal::Incompatible(e.to_string()))?;
        if let Some(have) = self.installed.artifacts.get(&m.name) {
            match tender_artifact::compare_versions(&m.version, &have.version) {
                std::cmp::Ordering::Equal if !self.config.reinstall_same_version => {
                    return Err(Refusal::Skipped(format!(
                        "{} {} is installed already",
                        m.name, m.version
                    )));
                }
                std::cmp::Ordering::Less if !self.config.allow_downgrade => {
                    return Err(Refusal::Refused(format!(
                        "{} {} is older than the installed {} (update.allow_downgrade is off)",
                        m.name, m.version, have.version
                    )));
                }
                _ => {}
            }
        }
        let mut module = modules::for_payload_type(self.config, &m.payload_type)
            .map_err(|e| Refusal::Incompatible(e.0))?;
        let now = crate::status::now_rfc3339();
        let mut journal = Journal {
            artifact_id: self.artifact_id.to_owned(),
            name: m.name.clone(),
            version: m.version.clone(),
            payload_type: m.payload_type.clone(),
            state: State::Downloading,
            attempts: 0,
            supports_rollback: false,
            slots: None,
            boot_id: None,
            provides: m.provides.clone(),
            error: None,
            started_at: now.clone(),
            updated_at: now,
            log: vec![],
        };
        let ctx = Ctx {
            config: self.config,
            work_dir: &self.work_dir,
            manifest: m,
        };
        module
            .prepare(&ctx, &mut journal)
            .map_err(|e| Refusal::Refused(e.0))?;
        let stored = modules::store_synced(
            &self.work_dir.join(tender_artifact::MANIFEST_PATH),
            &mut &header.manifest_bytes[..],
        );
        let journaled = stored.and_then(|_| {
            journal.log(format!(
                "installing artifact {} ({} {}) with the {} module",
                self.artifact_id, m.name, m.version, m.payload_type
            ));
            journal.save(&self.config.data_dir)
        });
        if let Err(e) = journaled {
            return Err(Refusal::Refused(format!("cannot start the update: {e}")));
        }
        crash_point(State::Downloading.as_str());
        self.started = Some((journal, module, m.clone()));
        Ok(())
    }
}

impl Sink for InstallSink<'_> {
    fn manifest(&mut self, header: &Header) -> std::io::Result<()> {
        self.decide(header).map_err(|r| {
            let msg = match &r {
                Refusal::Incompatible(m) | Refusal::Skipped(m) | Refusal::Refused(m) => m.clone(),
            };
            self.refusal = Some(r);
            std::io::Error::other(msg)
        })
    }

    fn script(&mut self, script: &Script, data: &mut dyn Read) -> std::io::Result<()> {
        let path = self.work_dir.join("scripts").join(&script.name);
        modules::store_synced(&path, data).map(drop)
    }

    fn payload(&mut self, payload: &Payload, data: &mut dyn Read) -> std::io::Result<()> {
        let Some((journal, module, manifest)) = self.started.as_mut() else {
            return Err(std::io::Error::other("the update was not started"));
        };
        let ctx = Ctx {
            config: self.config,
            work_dir: &self.work_dir,
            manifest,
        };
        module
            .download(&ctx, journal, payload, data)
            .map_err(|e| std::io::Error::other(e.0))
    }
}

fn reset_work_dir(dir: &Path) -> Result<(), UpdateError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(UpdateError::WorkDir(e));
        }
        _ => {}
    }
    std::fs::create_dir_all(dir).map_err(UpdateError::WorkDir)
}

/// Most bytes read from the source after the artifact's last entry (the tar end blocks and
/// padding), so that a source that checks the whole file at its end (a download's digest) is
/// read to its end before anything is installed.
const MAX_TRAILING_BYTES: u64 = 1 << 20;

/// Installs the artifact read from `src`. `artifact_id` names it in the journal and reports
/// (a deployment id, a file name). `health` is added to the verify state. Returns how it
/// ended, or [`Outcome::Rebooting`] once the reboot was asked for.
///
/// `src` is read to its end (at most [`MAX_TRAILING_BYTES`] past the artifact) before the
/// install starts: an error there (a download whose file digest does not match, a canceled
/// download) fails the update with nothing installed.
pub fn install(
    config: &UpdateConfig,
    artifact_id: &str,
    src: impl Read,
    progress: &mut dyn Progress,
    health: Health<'_>,
) -> Result<Outcome, UpdateError> {
    if let Some(j) = Journal::load(&config.data_dir).map_err(UpdateError::Journal)?
        && !j.state.is_terminal()
    {
        return Err(UpdateError::InProgress {
            name: j.name,
            version: j.version,
            state: j.state,
        });
    }
    let keys = load_keys(config)?;
    let installed = Installed::load(&config.data_dir).map_err(UpdateError::Installed)?;
    let work_dir = config.work_dir();
    reset_work_dir(&work_dir)?;
    progress.status("downloading");
    let mut sink = InstallSink {
        config,
        artifact_id,
        installed: &installed,
        work_dir: work_dir.clone(),
        refusal: None,
        started: None,
    };
    let trust = Trust {
        keys: &keys,
        require_signature: config.require_signature,
    };
    let mut src = src;
    let read = tender_artifact::read(&mut src, trust, &mut sink).and_then(|header| {
        std::io::copy(
            &mut (&mut src).take(MAX_TRAILING_BYTES),
            &mut std::io::sink(),
        )
        .map(|_| header)
        .map_err(tender_artifact::ArtifactError::from)
    });
    let refusal = sink.refusal.take();
    let Some((journal, module, manifest)) = sink.started.take() else {
        // Refused before the update started: nothing changed.
        let _ = std::fs::remove_dir_all(&work_dir);
        let outcome = match (refusal, read) {
            (Some(Refusal::Incompatible(m)), _) => Outcome::Incompatible(m),
            (Some(Refusal::Skipped(m)), _) => Outcome::Skipped(m),
            (Some(Refusal::Refused(m)), _) => Outcome::Failed(m),
            (None, Err(e)) => Outcome::Failed(format!("refused: {e}")),
            (None, Ok(_)) => Outcome::Failed("the artifact was not taken".into()),
        };
        if let Outcome::Failed(m) | Outcome::Incompatible(m) | Outcome::Skipped(m) = &outcome {
            tracing::warn!(artifact = artifact_id, "{m}");
            progress.log(m);
        }
        progress.status(outcome.status());
        return Ok(outcome);
    };
    let mut driver = Driver {
        config,
        module,
        manifest,
        journal,
        progress,
        health,
    };
    match read {
        Err(e) => driver.run(Event::Failed(format!("the artifact was refused: {e}"))),
        Ok(_) => {
            driver.progress.status("downloaded");
            let caps = {
                let ctx = Ctx {
                    config,
                    work_dir: &work_dir,
                    manifest: &driver.manifest,
                };
                driver.module.supports_rollback(&ctx)
            };
            match caps {
                Ok(rollback) => {
                    driver.journal.supports_rollback = rollback;
                    driver.run(Event::Done)
                }
                Err(e) => driver.run(Event::Failed(e.0)),
            }
        }
    }
}

/// Carries on an update the journal shows in progress (at the agent's start); `None` when
/// there is none.
pub fn resume(
    config: &UpdateConfig,
    progress: &mut dyn Progress,
    health: Health<'_>,
) -> Result<Option<Outcome>, UpdateError> {
    let Some(journal) = Journal::load(&config.data_dir).map_err(UpdateError::Journal)? else {
        return Ok(None);
    };
    if journal.state.is_terminal() {
        return Ok(None);
    }
    let work_dir = config.work_dir();
    let bytes = std::fs::read(work_dir.join(tender_artifact::MANIFEST_PATH))
        .map_err(UpdateError::WorkDir)?;
    let manifest = Manifest::parse(&bytes).map_err(|e| {
        UpdateError::WorkDir(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    })?;
    let mut module = match modules::for_payload_type(config, &journal.payload_type) {
        Ok(m) => m,
        Err(e) => {
            let mut journal = journal;
            journal.state = State::Failed;
            journal.error = Some(e.0.clone());
            journal.log(format!("cannot carry on: {e}"));
            journal
                .save(&config.data_dir)
                .map_err(UpdateError::Journal)?;
            return Ok(Some(Outcome::Failed(e.0)));
        }
    };
    let boot = {
        let ctx = Ctx {
            config,
            work_dir: &work_dir,
            manifest: &manifest,
        };
        module.boot(&ctx, &journal, journal.state)
    };
    tracing::info!(update = %journal.name, version = %journal.version, state = %journal.state, ?boot, "carrying on an update");
    let mut driver = Driver {
        config,
        module,
        manifest,
        journal,
        progress,
        health,
    };
    driver.run(Event::Started(boot)).map(Some)
}

/// The journal of the update in progress or the last one.
pub fn status(data_dir: &Path) -> std::io::Result<Option<Journal>> {
    Journal::load(data_dir)
}

/// Runs the state machine over the module, journaling each state before its actions.
struct Driver<'a> {
    config: &'a UpdateConfig,
    module: Box<dyn Module>,
    manifest: Manifest,
    journal: Journal,
    progress: &'a mut dyn Progress,
    health: Health<'a>,
}

impl<'a> Driver<'a> {
    fn run(&mut self, mut event: Event) -> Result<Outcome, UpdateError> {
        loop {
            if let Event::Failed(e) | Event::Aborted(e) = &event {
                self.journal.error = Some(e.clone());
            }
            let before = self.journal.machine();
            let caps = Caps {
                rollback: self.journal.supports_rollback,
            };
            let (next, actions) = state::step(before, event, caps);
            self.journal.state = next.state;
            self.journal.attempts = next.attempts;
            for a in &actions {
                if let Action::Log(line) = a {
                    self.journal.log(line.clone());
                    self.progress.log(line);
                }
            }
            if actions.contains(&Action::Reboot) {
                self.journal.boot_id = modules::external::boot_id(self.config);
            }
            self.journal
                .save(&self.config.data_dir)
                .map_err(UpdateError::Journal)?;
            if next.state != before.state {
                self.progress.status(state::report_status(next.state));
            }
            crash_point(next.state.as_str());
            let mut follow = None;
            for action in actions {
                match action {
                    Action::Log(_) => {}
                    Action::Install => follow = Some(self.install()),
                    Action::Verify => follow = Some(self.verify()),
                    Action::Commit => follow = Some(self.commit()),
                    Action::Rollback => follow = Some(self.rollback()),
                    Action::Scripts(s) => {
                        if let Err(e) = self.scripts(s) {
                            self.note(format!("{e} (not undone)"));
                        }
                    }
                    Action::Cleanup => self.cleanup(),
                    Action::Reboot => match self.reboot() {
                        Ok(()) => return Ok(Outcome::Rebooting),
                        Err(e) => follow = Some(Event::Failed(e)),
                    },
                }
            }
            match follow {
                Some(e) => event = e,
                None => return Ok(self.outcome()),
            }
        }
    }

    fn outcome(&self) -> Outcome {
        let why = || {
            self.journal
                .error
                .clone()
                .unwrap_or_else(|| "see the update log".into())
        };
        match self.journal.state {
            State::Succeeded => Outcome::Succeeded,
            State::RolledBack => Outcome::RolledBack(why()),
            State::Failed => Outcome::Failed(why()),
            _ => Outcome::Rebooting,
        }
    }

    /// A line for the journal, the log and the progress report (saved with the next state).
    fn note(&mut self, line: String) {
        self.progress.log(&line);
        self.journal.log(line);
    }

    fn ctx(&self) -> (PathBuf, &'a UpdateConfig) {
        (self.config.work_dir(), self.config)
    }

    fn install(&mut self) -> Event {
        if let Err(e) = self.scripts(ScriptState::BeforeInstall) {
            return Event::Aborted(e);
        }
        let (work_dir, config) = self.ctx();
        let ctx = Ctx {
            config,
            work_dir: &work_dir,
            manifest: &self.manifest,
        };
        if let Err(e) = self.module.install(&ctx, &self.journal) {
            return Event::Failed(format!("install: {e}"));
        }
        if let Err(e) = self.scripts(ScriptState::AfterInstall) {
            return Event::Failed(e);
        }
        let ctx = Ctx {
            config,
            work_dir: &work_dir,
            manifest: &self.manifest,
        };
        match self.module.needs_reboot(&ctx) {
            Ok(true) => Event::NeedsReboot,
            Ok(false) => Event::Done,
            Err(e) => Event::Failed(e.0),
        }
    }

    fn verify(&mut self) -> Event {
        let (work_dir, config) = self.ctx();
        let ctx = Ctx {
            config,
            work_dir: &work_dir,
            manifest: &self.manifest,
        };
        if let Err(e) = self.module.verify(&ctx, &self.journal) {
            return Event::Failed(e.0);
        }
        if !config.health_check.is_empty() {
            let env = script_env(&ctx, &self.journal, "verify");
            match process::run_argv(&config.health_check, &env, config.health_check_timeout) {
                Ok(r) if r.success() => {}
                Ok(r) => return Event::Failed(r.failure("the health check")),
                Err(e) => return Event::Failed(format!("the health check: {e}")),
            }
        }
        match (self.health)() {
            Ok(()) => Event::Done,
            Err(e) => Event::Failed(e),
        }
    }

    fn commit(&mut self) -> Event {
        let (work_dir, config) = self.ctx();
        let ctx = Ctx {
            config,
            work_dir: &work_dir,
            manifest: &self.manifest,
        };
        if let Err(e) = self.module.commit(&ctx, &self.journal) {
            return Event::Failed(e.0);
        }
        let recorded = Installed::load(&config.data_dir).and_then(|mut installed| {
            let j = &self.journal;
            installed.record(
                &j.name,
                &j.version,
                &j.payload_type,
                &j.artifact_id,
                &j.provides,
            );
            installed.save(&config.data_dir)
        });
        match recorded {
            Ok(()) => Event::Done,
            Err(e) => Event::Failed(format!("recording what is installed: {e}")),
        }
    }

    fn rollback(&mut self) -> Event {
        let (work_dir, config) = self.ctx();
        let ctx = Ctx {
            config,
            work_dir: &work_dir,
            manifest: &self.manifest,
        };
        match self.module.rollback(&ctx, &self.journal) {
            Ok(true) => Event::NeedsReboot,
            Ok(false) => Event::Done,
            Err(e) => Event::Failed(e.0),
        }
    }

    fn reboot(&mut self) -> Result<(), String> {
        tracing::warn!(command = ?self.config.reboot_command, "rebooting for the update");
        let r = process::run_argv(&self.config.reboot_command, &[], Duration::from_secs(120))?;
        if r.success() {
            Ok(())
        } else {
            Err(r.failure("the reboot command"))
        }
    }

    fn cleanup(&mut self) {
        let (work_dir, config) = self.ctx();
        let ctx = Ctx {
            config,
            work_dir: &work_dir,
            manifest: &self.manifest,
        };
        self.module.cleanup(&ctx, &self.journal);
        if let Err(e) = std::fs::remove_dir_all(&work_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %work_dir.display(), error = %e, "cannot remove the update work directory");
        }
    }

    /// Runs the artifact's scripts for `state`, in order; the first failure stops them.
    fn scripts(&mut self, state: ScriptState) -> Result<(), String> {
        let (work_dir, config) = self.ctx();
        let scripts: Vec<Script> = self
            .manifest
            .scripts
            .iter()
            .filter(|s| s.state == state)
            .cloned()
            .collect();
        for s in scripts {
            let path = work_dir.join("scripts").join(&s.name);
            // Checked again: the file sat on disk since the artifact was verified.
            let bytes = std::fs::read(&path).map_err(|e| format!("script {}: {e}", s.name))?;
            if hex(&Sha256::digest(&bytes)) != s.sha256 {
                return Err(format!(
                    "script {} changed on disk since it was verified",
                    s.name
                ));
            }
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(|e| format!("script {}: {e}", s.name))?;
            let ctx = Ctx {
                config,
                work_dir: &work_dir,
                manifest: &self.manifest,
            };
            let env = script_env(&ctx, &self.journal, state_name(state));
            let ran = process::run(&path, &[], &env, config.script_timeout)
                .map_err(|e| format!("{} script {}: {e}", state_name(state), s.name))?;
            if !ran.success() {
                return Err(ran.failure(&format!("{} script {}", state_name(state), s.name)));
            }
            self.note(format!("{} script {} succeeded", state_name(state), s.name));
        }
        Ok(())
    }
}

fn state_name(s: ScriptState) -> &'static str {
    match s {
        ScriptState::BeforeInstall => "before_install",
        ScriptState::AfterInstall => "after_install",
        ScriptState::AfterCommit => "after_commit",
        ScriptState::AfterRollback => "after_rollback",
    }
}
