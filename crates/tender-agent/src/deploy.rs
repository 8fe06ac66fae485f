//! Deployments from the server: a notification on `updates/{deployment_id}` is downloaded
//! over HTTPS (resumable, [`crate::download`]), streamed into [`update::install`] on a blocking
//! thread, and every status goes back on `updates/{deployment_id}/status` through the
//! store-and-forward buffer (see docs/device-protocol.md, "Deployments").
//!
//! - Statuses: `downloading` (with `progress`, each tenth), `downloaded`, `installing`,
//!   `rebooting`, `verifying`, then one of `succeeded`, `failed`, `rolled_back`,
//!   `incompatible`, `skipped` with the reason as `error`. New log lines since the last message
//!   ride along (each cut to [`MAX_LOG_LINE_BYTES`], at most [`MAX_LOG_LINES_PER_MESSAGE`] per
//!   message).
//! - `download_only`: the whole artifact is downloaded and checked (signature, every hash,
//!   compatibility), reported `downloaded`, then `succeeded` with a log line saying it was not
//!   installed. Nothing is kept.
//! - `force`: installs the same or an older version too.
//! - A cancel stops a deployment still downloading, and nothing more is reported; once it is
//!   installing it finishes (or rolls back).
//! - Updates run one at a time; a second deployment waits for the first.
//! - After a reboot into a new root file system, [`Deployments::resume`] carries the update on
//!   and reports its end for the deployment named in the update journal.
//!
//! **Invariant:** a deployment id and attempt is handled at most once. The journal
//! (`<data_dir>/deployments.json`, the last [`JOURNAL_LIMIT`], atomically replaced) records
//! the attempt before anything is downloaded and every status after; a notification for an
//! attempt that runs or ran re-reports its status instead (the server resends notifications
//! when the device reconnects), and one cut short by a stop of the agent (outside an update
//! the update journal carries on) is reported `failed` ("interrupted"). A higher attempt is a
//! new try.
//!
//! [`Mode::Simulate`] is for `tender sim`: the artifact is downloaded for real (the whole of it,
//! or only its manifest) but nothing is installed; see [`Simulation`].

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::agent::Uplink;
use crate::download::{self, ChannelReader, DownloadOptions, DownloadSpec};
use crate::identity::{self, Identity};
use crate::inventory::{Attributes, Value};
use crate::mqtt::ConnState;
use crate::update::installed::Installed;
use crate::update::{self, Outcome, Progress, UpdateConfig};

/// The journal's file in the data directory.
pub const JOURNAL_FILE: &str = "deployments.json";
/// How many deployment attempts the journal remembers.
pub const JOURNAL_LIMIT: usize = 100;
/// Longest log line in a status message.
pub const MAX_LOG_LINE_BYTES: usize = 512;
/// Most log lines in one status message.
pub const MAX_LOG_LINES_PER_MESSAGE: usize = 50;
/// Most bytes fetched for a manifest alone (simulated devices that do not download it all).
const HEAD_BYTES: u64 = 256 * 1024;

/// Statuses that end a deployment on the device.
const FINAL: [&str; 5] = [
    "succeeded",
    "failed",
    "rolled_back",
    "incompatible",
    "skipped",
];

/// A deployment notification.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Notification {
    pub deployment_id: String,
    pub artifact_id: String,
    pub name: String,
    pub version: String,
    /// The artifact file's size and SHA-256 (hex).
    pub size: u64,
    pub sha256: String,
    /// Path of the download on the device API (`/device/v1/artifacts/{id}`).
    pub url: String,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub download_only: bool,
    #[serde(default = "first_attempt")]
    pub attempt: u32,
}

fn first_attempt() -> u32 {
    1
}

/// A message on `updates/{deployment_id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Notify(Notification),
    Cancel,
}

/// Parses a message on `updates/{deployment_id}`.
pub fn parse(payload: &[u8]) -> Result<Message, String> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("cancel") == Some(&serde_json::Value::Bool(true)) {
        return Ok(Message::Cancel);
    }
    let n: Notification =
        serde_json::from_value(v).map_err(|e| format!("not a deployment notification: {e}"))?;
    if !n.url.starts_with('/') {
        return Err(format!("url {:?} is not a path on the server", n.url));
    }
    if n.sha256.len() != 64
        || !n
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("sha256 is not 64 lowercase hexadecimal digits".into());
    }
    Ok(Message::Notify(n))
}

/// A status message (`updates/{deployment_id}/status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<String>,
}

impl StatusReport {
    fn new(state: &str) -> Self {
        StatusReport {
            state: state.to_owned(),
            ..StatusReport::default()
        }
    }
}

/// The uplink suffix of a deployment's status.
pub fn status_suffix(deployment_id: &str) -> String {
    format!("updates/{deployment_id}/status")
}

/// One deployment attempt as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub deployment_id: String,
    pub attempt: u32,
    pub artifact_id: String,
    /// The last status reported (`canceled` when a cancel stopped it).
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub finished: bool,
}

/// The deployment attempts handled (bounded, oldest dropped).
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
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "the deployment journal is unreadable; starting a new one");
                VecDeque::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => VecDeque::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the deployment journal; starting a new one");
                VecDeque::new()
            }
        };
        Journal { path, entries }
    }

    pub fn get(&self, deployment_id: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.deployment_id == deployment_id)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Records `entry` (replacing the deployment's earlier one) and saves.
    pub fn put(&mut self, entry: Entry) {
        self.entries
            .retain(|e| e.deployment_id != entry.deployment_id);
        self.entries.push_back(entry);
        while self.entries.len() > JOURNAL_LIMIT {
            self.entries.pop_front();
        }
        if let Err(e) = self.save() {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the deployment journal");
        }
    }

    /// Changes the deployment's entry, if any, and saves.
    fn update(&mut self, deployment_id: &str, f: impl FnOnce(&mut Entry)) {
        if let Some(mut e) = self.get(deployment_id).cloned() {
            f(&mut e);
            self.put(e);
        }
    }

    fn save(&self) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(&self.entries).map_err(std::io::Error::other)?;
        crate::desired::write_atomically(&self.path, &bytes)
    }
}

/// What a notification leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A new attempt: download and install.
    Start,
    /// Seen before: report this again.
    Report(StatusReport),
    /// Started by an earlier run of the agent and cut short: report it failed.
    Interrupted,
    /// Nothing to do (canceled before).
    Ignore,
}

/// The rule for a notification of `attempt` of `artifact_id`: `running` is the state of the
/// attempt running now for this deployment (if one is), `entry` what the journal has,
/// `updating` whether the update journal shows this deployment's update still in progress (a
/// reboot away from its end). Another artifact than the journaled one (a deployment resumed
/// with a fixed artifact starts its attempts again) is a new try.
pub fn decide(
    running: Option<(u32, String)>,
    entry: Option<&Entry>,
    updating: bool,
    artifact_id: &str,
    attempt: u32,
) -> Decision {
    if let Some((_, state)) = running {
        return Decision::Report(StatusReport::new(&state));
    }
    let Some(e) = entry else {
        return Decision::Start;
    };
    if e.finished && e.state == "canceled" {
        return Decision::Ignore;
    }
    if e.attempt < attempt || e.artifact_id != artifact_id {
        return Decision::Start;
    }
    if e.finished {
        Decision::Report(StatusReport {
            error: e.error.clone(),
            ..StatusReport::new(&e.state)
        })
    } else if updating {
        Decision::Report(StatusReport::new(&e.state))
    } else {
        Decision::Interrupted
    }
}

/// How deployments are carried out.
#[derive(Debug, Clone, Default)]
pub enum Mode {
    /// Installed through the update engine.
    #[default]
    Install,
    /// `tender sim`: nothing is installed.
    Simulate(Simulation),
}

/// A simulated device's deployments: the artifact is downloaded over HTTPS for real (the whole
/// of it and checked when `full_download`, else only the first bytes, for its manifest), then
/// the device reports `downloaded`, `installing`, `rebooting`, `verifying` and `succeeded`,
/// and records the artifact as installed (so its inventory reports `provides.*`). It fails
/// instead (`failed`, with a log line) when the manifest's `meta.sim_fail_fraction` is above
/// the device's share: a hash of the device id and the artifact version, mapped to [0, 1),
/// so the same devices fail the same version every time and none fail another version.
#[derive(Debug, Clone, Default)]
pub struct Simulation {
    pub full_download: bool,
}

/// Where a simulated device falls in [0, 1) for `version` (FNV-1a of `device/version`).
pub fn sim_share(device_id: &str, version: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device_id.bytes().chain([b'/']).chain(version.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The inventory attributes of what the device has installed: `provides.<key>` for every key
/// the device provides (the configuration's `update.provides` overlaid with committed
/// artifacts'), so the server can skip devices that run a version already and check
/// `depends`. Keys that do not make attribute names are left out (logged).
pub fn installed_attributes(update: &UpdateConfig) -> Attributes {
    let installed = Installed::load(&update.data_dir).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read what is installed; no provides.* in the inventory");
        Installed::default()
    });
    let mut out = Attributes::new();
    for (k, v) in installed.provides_over(&update.provides) {
        let name = format!("provides.{k}");
        if valid_attribute_name(&name) && v.len() <= crate::inventory::MAX_STRING_LEN {
            out.insert(name, Value::Str(v));
        } else {
            tracing::warn!(key = %k, "a provided key does not make an inventory attribute; left out");
        }
    }
    out
}

fn valid_attribute_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= crate::inventory::MAX_NAME_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b':'))
}

fn cut(s: &str, max: usize) -> String {
    crate::commands::truncate(s, max)
}

/// An attempt running now.
#[derive(Clone)]
struct Active {
    attempt: u32,
    state: Arc<Mutex<String>>,
    cancel: CancellationToken,
    /// Set by a cancel accepted before installing: nothing more is reported.
    canceled: Arc<AtomicBool>,
    /// Set once the update engine moved past the download: a cancel no longer applies.
    installing: Arc<AtomicBool>,
}

struct Shared {
    uplinks: mpsc::Sender<Uplink>,
    update: UpdateConfig,
    device_type: Option<String>,
    server_url: String,
    ca_pem: String,
    identity: watch::Receiver<Arc<Identity>>,
    journal: Mutex<Journal>,
    active: Mutex<HashMap<String, Active>>,
    /// One update at a time.
    turn: tokio::sync::Mutex<()>,
    /// Told when something was committed: the inventory is collected again.
    inventory: Arc<Notify>,
    mode: Mode,
    download: DownloadOptions,
}

/// Handles the deployments of one agent.
#[derive(Clone)]
pub struct Deployments {
    shared: Arc<Shared>,
}

/// What [`Deployments::new`] needs beyond the configuration.
pub struct Setup {
    pub uplinks: mpsc::Sender<Uplink>,
    pub ca_pem: String,
    pub identity: watch::Receiver<Arc<Identity>>,
    /// Notified when the installed software changed.
    pub inventory: Arc<Notify>,
    pub mode: Mode,
    pub download: DownloadOptions,
}

impl Deployments {
    pub fn new(config: &crate::config::AgentConfig, setup: Setup) -> Self {
        Deployments {
            shared: Arc::new(Shared {
                uplinks: setup.uplinks,
                update: config.update.clone(),
                device_type: config.device_type.clone(),
                server_url: config.server_url.trim_end_matches('/').to_owned(),
                ca_pem: setup.ca_pem,
                identity: setup.identity,
                journal: Mutex::new(Journal::open(&config.data_dir)),
                active: Mutex::new(HashMap::new()),
                turn: tokio::sync::Mutex::new(()),
                inventory: setup.inventory,
                mode: setup.mode,
                download: setup.download,
            }),
        }
    }

    /// A message on `updates/{deployment_id}`. Returns at once; the work happens in tasks.
    pub fn on_message(&self, deployment_id: &str, payload: &[u8]) {
        let s = &self.shared;
        let n = match parse(payload) {
            Ok(Message::Cancel) => return self.cancel(deployment_id),
            Ok(Message::Notify(n)) => n,
            Err(e) => {
                tracing::warn!(deployment = deployment_id, error = %e, "a deployment message that cannot be handled");
                let r = StatusReport {
                    error: Some(format!("the notification cannot be handled: {e}")),
                    ..StatusReport::new("failed")
                };
                return s.send_later(deployment_id, vec![r]);
            }
        };
        if n.deployment_id != deployment_id {
            tracing::warn!(
                topic = deployment_id,
                message = %n.deployment_id,
                "a deployment notification whose id is not its topic's; ignored"
            );
            return;
        }
        let updating = update::status(&s.update.data_dir)
            .ok()
            .flatten()
            .is_some_and(|j| j.artifact_id == n.deployment_id && !j.state.is_terminal());
        let Ok(mut active) = s.active.lock() else {
            return;
        };
        let Ok(mut journal) = s.journal.lock() else {
            return;
        };
        let running = active.get(deployment_id).map(|a| {
            (
                a.attempt,
                a.state.lock().map(|s| s.clone()).unwrap_or_default(),
            )
        });
        match decide(
            running,
            journal.get(deployment_id),
            updating,
            &n.artifact_id,
            n.attempt,
        ) {
            Decision::Start => {
                tracing::info!(deployment = deployment_id, attempt = n.attempt, name = %n.name, version = %n.version, "deployment: starting");
                let a = Active {
                    attempt: n.attempt,
                    state: Arc::new(Mutex::new("notified".into())),
                    cancel: CancellationToken::new(),
                    canceled: Arc::default(),
                    installing: Arc::default(),
                };
                journal.put(Entry {
                    deployment_id: n.deployment_id.clone(),
                    attempt: n.attempt,
                    artifact_id: n.artifact_id.clone(),
                    state: "notified".into(),
                    error: None,
                    finished: false,
                });
                active.insert(n.deployment_id.clone(), a.clone());
                tokio::spawn(run(self.shared.clone(), n, a));
            }
            Decision::Report(r) if r.state == "notified" => {
                tracing::info!(
                    deployment = deployment_id,
                    "deployment waiting for another update to end"
                );
            }
            Decision::Report(r) => {
                tracing::info!(deployment = deployment_id, attempt = n.attempt, state = %r.state, "deployment seen before; reporting its status again");
                s.send_later(deployment_id, vec![r]);
            }
            Decision::Interrupted => {
                let error = "interrupted: the agent stopped before the update started".to_owned();
                journal.update(deployment_id, |e| {
                    e.state = "failed".into();
                    e.error = Some(error.clone());
                    e.finished = true;
                });
                s.send_later(
                    deployment_id,
                    vec![StatusReport {
                        error: Some(error),
                        ..StatusReport::new("failed")
                    }],
                );
            }
            Decision::Ignore => {
                tracing::info!(
                    deployment = deployment_id,
                    "deployment canceled before; ignored"
                )
            }
        }
    }

    fn cancel(&self, deployment_id: &str) {
        let s = &self.shared;
        let active = s
            .active
            .lock()
            .ok()
            .and_then(|a| a.get(deployment_id).cloned());
        match active {
            Some(a) if !a.installing.load(Ordering::SeqCst) => {
                tracing::info!(
                    deployment = deployment_id,
                    "deployment canceled; stopping the download"
                );
                a.canceled.store(true, Ordering::SeqCst);
                a.cancel.cancel();
                if let Ok(mut j) = s.journal.lock() {
                    j.update(deployment_id, |e| {
                        e.state = "canceled".into();
                        e.finished = true;
                    });
                }
            }
            Some(_) => tracing::info!(
                deployment = deployment_id,
                "deployment canceled while installing; the update goes on"
            ),
            None => {
                // Not started (or over): make sure a late notification does not start it.
                if let Ok(mut j) = s.journal.lock()
                    && j.get(deployment_id).is_none_or(|e| !e.finished)
                {
                    let attempt = j.get(deployment_id).map_or(u32::MAX, |e| e.attempt);
                    j.put(Entry {
                        deployment_id: deployment_id.to_owned(),
                        attempt,
                        artifact_id: String::new(),
                        state: "canceled".into(),
                        error: None,
                        finished: true,
                    });
                }
            }
        }
    }

    /// At start: carries on an update the update journal shows in progress (typically after
    /// the reboot into a new root file system), reporting its end for its deployment, and
    /// settles journal entries an earlier run left open. With `update.verify_connection` the
    /// verify state waits for the connection to the server (within
    /// `update.connect_timeout_secs`) and counts it as part of the device's health.
    pub fn resume(&self, mut state: watch::Receiver<ConnState>) {
        let shared = self.shared.clone();
        let update_cfg = shared.update.clone();
        let journal = match update::status(&update_cfg.data_dir) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the update journal; no update is carried on");
                None
            }
        };
        let in_progress = journal.as_ref().filter(|j| !j.state.is_terminal()).cloned();
        // Open entries of attempts that are not this update: settle them now.
        let mut settle = Vec::new();
        if let Ok(mut dj) = shared.journal.lock() {
            let open: Vec<Entry> = dj.entries().filter(|e| !e.finished).cloned().collect();
            for e in open {
                if in_progress
                    .as_ref()
                    .is_some_and(|j| j.artifact_id == e.deployment_id)
                {
                    continue;
                }
                let report = match &journal {
                    // The update ended but the agent stopped before recording it here.
                    Some(j) if j.artifact_id == e.deployment_id => StatusReport {
                        error: j.error.clone(),
                        ..StatusReport::new(update::state::report_status(j.state))
                    },
                    _ => StatusReport {
                        error: Some(
                            "interrupted: the agent stopped before the update started".into(),
                        ),
                        ..StatusReport::new("failed")
                    },
                };
                dj.update(&e.deployment_id, |x| {
                    x.state = report.state.clone();
                    x.error = report.error.clone();
                    x.finished = true;
                });
                settle.push((e.deployment_id.clone(), report));
            }
        }
        for (id, r) in settle {
            shared.send_later(&id, vec![r]);
        }
        let Some(current) = in_progress else {
            return;
        };
        let deployment = shared
            .journal
            .lock()
            .ok()
            .and_then(|j| j.get(&current.artifact_id).cloned());
        let active = deployment.as_ref().map(|e| Active {
            attempt: e.attempt,
            state: Arc::new(Mutex::new(e.state.clone())),
            cancel: CancellationToken::new(),
            canceled: Arc::default(),
            installing: Arc::new(AtomicBool::new(true)),
        });
        if let (Some(e), Some(a), Ok(mut act)) = (&deployment, &active, shared.active.lock()) {
            act.insert(e.deployment_id.clone(), a.clone());
        }
        tokio::spawn(async move {
            let _turn = shared.turn.lock().await;
            let connected = !update_cfg.verify_connection
                || tokio::time::timeout(
                    update_cfg.connect_timeout,
                    state.wait_for(|s| matches!(s, ConnState::Connected)),
                )
                .await
                .is_ok_and(|r| r.is_ok());
            let wait = update_cfg.connect_timeout.as_secs();
            let mut reporter = active
                .clone()
                .map(|a| Reporter::new(&shared, &current.artifact_id, a));
            let outcome = tokio::task::spawn_blocking(move || {
                let health = move || {
                    if connected {
                        Ok(())
                    } else {
                        Err(format!("no connection to the server within {wait} s"))
                    }
                };
                let r = match reporter.as_mut() {
                    Some(r) => update::resume(&update_cfg, r, &health),
                    None => update::resume(&update_cfg, &mut update::LogOnly, &health),
                };
                (r, reporter)
            })
            .await;
            match outcome {
                Ok((r, reporter)) => {
                    if let Ok(Some(o)) = &r {
                        tracing::info!(status = o.status(), "update carried on: {o:?}");
                    }
                    if let Err(e) = &r {
                        tracing::error!(error = %e, "carrying on the update failed");
                    }
                    if let Some(mut reporter) = reporter {
                        match r {
                            Ok(Some(o)) => reporter.outcome(&o),
                            Ok(None) => {}
                            Err(e) => reporter.finish("failed", Some(e.to_string())),
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "the update task failed"),
            }
        });
    }
}

impl Shared {
    /// Queues status messages for a deployment (in a task: the uplink channel is async).
    fn send_later(&self, deployment_id: &str, reports: Vec<StatusReport>) {
        let tx = self.uplinks.clone();
        let suffix = status_suffix(deployment_id);
        tokio::spawn(async move {
            for r in reports {
                let payload = serde_json::to_vec(&r).unwrap_or_default();
                if tx.send(Uplink::new(suffix.clone(), payload)).await.is_err() {
                    tracing::warn!("the agent is stopping; a deployment status is not queued");
                    return;
                }
            }
        });
    }

    fn record(&self, deployment_id: &str, f: impl FnOnce(&mut Entry)) {
        if let Ok(mut j) = self.journal.lock() {
            j.update(deployment_id, f);
        }
    }

    fn done(&self, deployment_id: &str) {
        if let Ok(mut a) = self.active.lock() {
            a.remove(deployment_id);
        }
    }
}

/// Turns the update engine's progress into status messages, in order. Used from blocking
/// threads and tasks alike: messages go through an unbounded channel to a task that queues
/// them for the buffer.
struct Reporter {
    shared: Arc<Shared>,
    deployment_id: String,
    active: Active,
    tx: mpsc::UnboundedSender<StatusReport>,
    /// The last state reported.
    last: Option<String>,
    /// The final state the engine announced (reported with its reason by [`Reporter::outcome`]).
    final_state: Option<String>,
    pending: Vec<String>,
}

impl Reporter {
    fn new(shared: &Arc<Shared>, deployment_id: &str, active: Active) -> Reporter {
        let (tx, mut rx) = mpsc::unbounded_channel::<StatusReport>();
        let uplinks = shared.uplinks.clone();
        let suffix = status_suffix(deployment_id);
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let payload = serde_json::to_vec(&r).unwrap_or_default();
                if uplinks
                    .send(Uplink::new(suffix.clone(), payload))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let last = active.state.lock().ok().map(|s| s.clone());
        Reporter {
            shared: shared.clone(),
            deployment_id: deployment_id.to_owned(),
            active,
            tx,
            last,
            final_state: None,
            pending: Vec::new(),
        }
    }

    fn canceled(&self) -> bool {
        self.active.canceled.load(Ordering::SeqCst)
    }

    /// Sends `state` with the pending log lines (earlier chunks of them first, under the
    /// current state, so that no line comes after a final state the server stops at).
    fn emit(&mut self, state: &str, progress: Option<u8>, error: Option<String>) {
        let mut lines = std::mem::take(&mut self.pending);
        let before = self.last.clone().unwrap_or_else(|| state.to_owned());
        while lines.len() > MAX_LOG_LINES_PER_MESSAGE {
            let chunk: Vec<String> = lines.drain(..MAX_LOG_LINES_PER_MESSAGE).collect();
            let _ = self.tx.send(StatusReport {
                log: chunk,
                ..StatusReport::new(&before)
            });
        }
        let _ = self.tx.send(StatusReport {
            state: state.to_owned(),
            progress,
            error,
            log: lines,
        });
    }

    /// The end: recorded, reported (unless canceled), and the attempt is no longer running.
    fn finish(&mut self, state: &str, error: Option<String>) {
        let id = self.deployment_id.clone();
        if self.canceled() {
            self.shared.record(&id, |e| {
                e.state = "canceled".into();
                e.finished = true;
            });
        } else {
            self.shared.record(&id, |e| {
                e.state = state.to_owned();
                e.error = error.clone();
                e.finished = true;
            });
            self.emit(state, None, error);
        }
        self.shared.done(&id);
        if state == "succeeded" {
            self.shared.inventory.notify_one();
        }
    }

    /// The end of an update run: a reboot goes on at the next start, anything else finishes.
    fn outcome(&mut self, o: &Outcome) {
        match o {
            Outcome::Rebooting => {
                // The update goes on when the agent starts again ([`Deployments::resume`]).
                self.shared.done(&self.deployment_id);
            }
            Outcome::Succeeded => self.finish("succeeded", None),
            Outcome::Failed(m)
            | Outcome::RolledBack(m)
            | Outcome::Incompatible(m)
            | Outcome::Skipped(m) => self.finish(o.status(), Some(cut(m, MAX_LOG_LINE_BYTES))),
        }
    }
}

impl Progress for Reporter {
    fn status(&mut self, status: &str) {
        if self.canceled() {
            if status != "installing" {
                return;
            }
            // The cancel came after the whole artifact was in: the install goes on, and its
            // outcome is reported after all (the server keeps the target canceled).
            tracing::warn!(deployment = %self.deployment_id, "canceled too late: installing");
            self.active.canceled.store(false, Ordering::SeqCst);
        }
        if FINAL.contains(&status) {
            self.final_state = Some(status.to_owned());
            return;
        }
        if status != "downloading" {
            self.active.installing.store(
                matches!(status, "installing" | "rebooting" | "verifying"),
                Ordering::SeqCst,
            );
        }
        if self.last.as_deref() == Some(status) {
            return;
        }
        if let Ok(mut s) = self.active.state.lock() {
            *s = status.to_owned();
        }
        let id = self.deployment_id.clone();
        self.shared.record(&id, |e| e.state = status.to_owned());
        self.emit(status, None, None);
        self.last = Some(status.to_owned());
    }

    fn log(&mut self, line: &str) {
        self.pending.push(cut(line, MAX_LOG_LINE_BYTES));
    }
}

/// One attempt, from download to its end.
async fn run(shared: Arc<Shared>, n: Notification, active: Active) {
    let _turn = shared.turn.lock().await;
    let deployment_id = n.deployment_id.clone();
    let mut reporter = Reporter::new(&shared, &n.deployment_id, active.clone());
    if active.cancel.is_cancelled() {
        reporter.finish("failed", None);
        return;
    }
    let id = shared.identity.borrow().clone();
    let client = match identity::download_client(&shared.ca_pem, &id) {
        Ok(c) => c,
        Err(e) => {
            return reporter.finish("failed", Some(format!("cannot set up the download: {e}")));
        }
    };
    let spec = DownloadSpec {
        url: format!("{}{}", shared.server_url, n.url),
        size: n.size,
        sha256: n.sha256.clone(),
    };
    let progress_tx = reporter.tx.clone();
    let canceled = active.canceled.clone();
    let on_progress: download::OnProgress = Box::new(move |p| {
        if p < 100 && !canceled.load(Ordering::SeqCst) {
            let _ = progress_tx.send(StatusReport {
                progress: Some(p),
                ..StatusReport::new("downloading")
            });
        }
    });
    match shared.mode.clone() {
        Mode::Install => {
            let reader = download::start(
                client,
                spec,
                shared.download,
                active.cancel.clone(),
                Some(on_progress),
            );
            let config = shared.update.clone();
            let device_type = shared.device_type.clone();
            let done = tokio::task::spawn_blocking(move || {
                let outcome = install_blocking(&config, device_type, &n, reader, &mut reporter);
                (outcome, reporter)
            })
            .await;
            match done {
                Ok((Ok(o), mut reporter)) => reporter.outcome(&o),
                Ok((Err(e), mut reporter)) => reporter.finish("failed", Some(e.to_string())),
                Err(e) => {
                    tracing::error!(error = %e, "the update task failed");
                    let mut r = Reporter::new(&shared, &deployment_id, active);
                    r.finish("failed", Some(format!("the update task failed: {e}")));
                }
            }
        }
        Mode::Simulate(sim) => {
            let device_id = id.device_id().to_owned();
            let o = simulate(
                &shared,
                &sim,
                &device_id,
                client,
                spec,
                &n,
                &active,
                on_progress,
                &mut reporter,
            )
            .await;
            reporter.outcome(&o);
        }
    }
}

/// Installs (or, for `download_only`, checks) the artifact from the download.
fn install_blocking(
    config: &UpdateConfig,
    device_type: Option<String>,
    n: &Notification,
    reader: ChannelReader,
    reporter: &mut Reporter,
) -> Result<Outcome, update::UpdateError> {
    if n.download_only {
        return Ok(verify_only(config, device_type, reader, reporter));
    }
    let mut config = config.clone();
    if n.force {
        config.allow_downgrade = true;
        config.reinstall_same_version = true;
    }
    update::install(
        &config,
        &n.deployment_id,
        reader,
        reporter,
        &update::no_health,
    )
}

/// Refuses, from the manifest, an artifact not for this device.
struct Compatible {
    device_type: Option<String>,
    provides: std::collections::BTreeMap<String, String>,
    refused: Option<String>,
}

impl tender_artifact::Sink for Compatible {
    fn manifest(&mut self, header: &tender_artifact::Header) -> std::io::Result<()> {
        let Some(t) = &self.device_type else {
            self.refused = Some("this device has no `device_type` configured".into());
            return Err(std::io::Error::other("no device type"));
        };
        header
            .manifest
            .check_compatible(t, &self.provides)
            .map_err(|e| {
                self.refused = Some(e.to_string());
                std::io::Error::other(e.to_string())
            })
    }
    fn script(&mut self, _: &tender_artifact::Script, _: &mut dyn Read) -> std::io::Result<()> {
        Ok(())
    }
    fn payload(&mut self, _: &tender_artifact::Payload, _: &mut dyn Read) -> std::io::Result<()> {
        Ok(())
    }
}

/// `download_only`: the whole artifact checked (signatures, hashes, compatibility, the file's
/// digest), nothing kept.
fn verify_only(
    config: &UpdateConfig,
    device_type: Option<String>,
    mut reader: ChannelReader,
    reporter: &mut Reporter,
) -> Outcome {
    reporter.status("downloading");
    let keys = match update::load_keys(config) {
        Ok(k) => k,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let provides = Installed::load(&config.data_dir)
        .map(|i| i.provides_over(&config.provides))
        .unwrap_or_else(|_| config.provides.clone());
    let mut sink = Compatible {
        device_type,
        provides,
        refused: None,
    };
    let trust = tender_artifact::Trust {
        keys: &keys,
        require_signature: config.require_signature,
    };
    let read = tender_artifact::read(&mut reader, trust, &mut sink).and_then(|h| {
        std::io::copy(&mut reader, &mut std::io::sink())
            .map(|_| h)
            .map_err(tender_artifact::ArtifactError::from)
    });
    match (read, sink.refused) {
        (_, Some(why)) => {
            reporter.log(&why);
            Outcome::Incompatible(why)
        }
        (Err(e), None) => {
            let why = format!("the artifact was refused: {e}");
            reporter.log(&why);
            Outcome::Failed(why)
        }
        (Ok(h), None) => {
            reporter.status("downloaded");
            reporter.log(&format!(
                "{} {} downloaded and verified; not installed (download only)",
                h.manifest.name, h.manifest.version
            ));
            Outcome::Succeeded
        }
    }
}

/// A simulated device's attempt (see [`Simulation`]).
#[allow(clippy::too_many_arguments)]
async fn simulate(
    shared: &Arc<Shared>,
    sim: &Simulation,
    device_id: &str,
    client: reqwest::Client,
    spec: DownloadSpec,
    n: &Notification,
    active: &Active,
    on_progress: download::OnProgress,
    reporter: &mut Reporter,
) -> Outcome {
    reporter.status("downloading");
    let manifest = if sim.full_download {
        let reader = download::start(
            client,
            spec,
            shared.download,
            active.cancel.clone(),
            Some(on_progress),
        );
        tokio::task::spawn_blocking(move || {
            let mut reader = reader;
            let trust = tender_artifact::Trust {
                keys: &[],
                require_signature: false,
            };
            tender_artifact::read(&mut reader, trust, &mut tender_artifact::Discard)
                .and_then(|h| {
                    std::io::copy(&mut reader, &mut std::io::sink())
                        .map(|_| h)
                        .map_err(tender_artifact::ArtifactError::from)
                })
                .map(|h| h.manifest)
                .map_err(|e| format!("the artifact was refused: {e}"))
        })
        .await
        .unwrap_or_else(|e| Err(format!("the check failed: {e}")))
    } else {
        fetch_manifest(&client, &spec.url).await
    };
    let manifest = match manifest {
        Ok(m) => m,
        Err(e) => {
            reporter.log(&e);
            return Outcome::Failed(e);
        }
    };
    let provides = Installed::load(&shared.update.data_dir)
        .map(|i| i.provides_over(&shared.update.provides))
        .unwrap_or_default();
    if let Some(t) = &shared.device_type
        && let Err(e) = manifest.check_compatible(t, &provides)
    {
        reporter.log(&e.to_string());
        return Outcome::Incompatible(e.to_string());
    }
    reporter.status("downloaded");
    if n.download_only {
        reporter.log("downloaded; not installed (download only, simulated)");
        return Outcome::Succeeded;
    }
    for s in ["installing", "rebooting", "verifying"] {
        reporter.status(s);
    }
    let fraction = manifest
        .meta
        .get("sim_fail_fraction")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0);
    if sim_share(device_id, &manifest.version) < fraction {
        let why = format!(
            "simulated failure: this device is in the artifact's sim_fail_fraction ({fraction})"
        );
        reporter.log(&why);
        return Outcome::Failed(why);
    }
    let recorded = Installed::load(&shared.update.data_dir).and_then(|mut i| {
        i.record(
            &manifest.name,
            &manifest.version,
            &manifest.payload_type,
            &n.artifact_id,
            &manifest.provides,
        );
        i.save(&shared.update.data_dir)
    });
    match recorded {
        Ok(()) => {
            reporter.log(&format!(
                "{} {} installed (simulated)",
                manifest.name, manifest.version
            ));
            Outcome::Succeeded
        }
        Err(e) => Outcome::Failed(format!("recording what is installed: {e}")),
    }
}

/// The manifest from the first bytes of the artifact (a `Range` request).
async fn fetch_manifest(
    client: &reqwest::Client,
    url: &str,
) -> Result<tender_artifact::Manifest, String> {
    let resp = client
        .get(url)
        .header(
            reqwest::header::RANGE,
            format!("bytes=0-{}", HEAD_BYTES - 1),
        )
        .send()
        .await
        .map_err(|e| format!("fetching the manifest: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!(
            "fetching the manifest: the server answered {}",
            resp.status()
        ));
    }
    let mut bytes = Vec::new();
    let mut resp = resp;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("fetching the manifest: {e}"))?
    {
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 >= HEAD_BYTES {
            break;
        }
    }
    tender_artifact::read_header(&bytes[..])
        .map(|(m, _, _)| m)
        .map_err(|e| format!("reading the manifest: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn entry(attempt: u32, state: &str, finished: bool) -> Entry {
        Entry {
            deployment_id: "d".into(),
            attempt,
            artifact_id: "a".into(),
            state: state.into(),
            error: (state == "failed").then(|| "boom".to_string()),
            finished,
        }
    }

    #[test]
    fn each_deployment_attempt_is_handled_once() {
        // New.
        assert_eq!(decide(None, None, false, "a", 1), Decision::Start);
        // Running now: its current state again, whatever the attempt says.
        assert_eq!(
            decide(
                Some((1, "downloading".into())),
                Some(&entry(1, "downloading", false)),
                false,
                "a",
                1
            ),
            Decision::Report(StatusReport::new("downloading"))
        );
        // Finished: the same final status, with its reason.
        let failed = entry(1, "failed", true);
        assert_eq!(
            decide(None, Some(&failed), false, "a", 1),
            Decision::Report(StatusReport {
                error: Some("boom".into()),
                ..StatusReport::new("failed")
            })
        );
        // A higher attempt after a failure is a new try; a lower one is old news.
        assert_eq!(decide(None, Some(&failed), false, "a", 2), Decision::Start);
        assert!(matches!(
            decide(None, Some(&entry(3, "succeeded", true)), false, "a", 2),
            Decision::Report(_)
        ));
        // Cut short by a stop of the agent: failed, unless the update journal carries it on.
        assert_eq!(
            decide(None, Some(&entry(1, "downloading", false)), false, "a", 1),
            Decision::Interrupted
        );
        assert_eq!(
            decide(None, Some(&entry(1, "rebooting", false)), true, "a", 1),
            Decision::Report(StatusReport::new("rebooting"))
        );
        // A fixed artifact for the same deployment starts over at attempt 1: a new try.
        assert_eq!(decide(None, Some(&failed), false, "b", 1), Decision::Start);
        // Canceled: never started again.
        assert_eq!(
            decide(None, Some(&entry(1, "canceled", true)), false, "a", 1),
            Decision::Ignore
        );
    }

    #[test]
    fn the_journal_keeps_the_last_entries_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path());
        for i in 0..JOURNAL_LIMIT + 5 {
            j.put(Entry {
                deployment_id: format!("d{i}"),
                ..entry(1, "succeeded", true)
            });
        }
        j.put(Entry {
            deployment_id: "d104".into(),
            ..entry(2, "failed", true)
        });
        let back = Journal::open(dir.path());
        assert_eq!(back.entries().count(), JOURNAL_LIMIT);
        assert!(back.get("d0").is_none());
        assert_eq!(back.get("d104").unwrap().attempt, 2);
        std::fs::write(dir.path().join(JOURNAL_FILE), b"{").unwrap();
        assert_eq!(Journal::open(dir.path()).entries().count(), 0);
    }

    #[test]
    fn notifications_and_cancels_parse() {
        let sha = "a".repeat(64);
        let n = format!(
            r#"{{"deployment_id": "d", "artifact_id": "a", "name": "app", "version": "1.2.0", "size": 5, "sha256": "{sha}", "url": "/device/v1/artifacts/a", "force": false, "download_only": false, "attempt": 2, "future": 1}}"#
        );
        match parse(n.as_bytes()).unwrap() {
            Message::Notify(n) => assert_eq!(
                (n.attempt, n.size, n.url.as_str()),
                (2, 5, "/device/v1/artifacts/a")
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(br#"{"deployment_id": "d", "cancel": true}"#).unwrap(),
            Message::Cancel
        );
        assert!(parse(b"{}").is_err());
        let bad = n.replace("/device", "https://elsewhere/device");
        assert!(parse(bad.as_bytes()).is_err());
    }

    #[test]
    fn sim_shares_are_stable_and_spread() {
        assert_eq!(sim_share("dev-1", "1.0"), sim_share("dev-1", "1.0"));
        let under = (0..10_000)
            .filter(|i| sim_share(&format!("device-{i}"), "2.0") < 0.1)
            .count();
        assert!((800..1200).contains(&under), "{under}");
    }

    #[test]
    fn installed_software_becomes_provides_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = UpdateConfig::defaults(dir.path(), Some("gw".into()), &[]);
        cfg.provides.insert("rootfs.version".into(), "5".into());
        cfg.provides.insert("bad key".into(), "x".into());
        let mut i = Installed::default();
        i.record("app", "1.2.0", "file", "a1", &Default::default());
        i.save(dir.path()).unwrap();
        let attrs = installed_attributes(&cfg);
        assert_eq!(
            attrs.get("provides.app.version"),
            Some(&Value::Str("1.2.0".into()))
        );
        assert_eq!(
            attrs.get("provides.rootfs.version"),
            Some(&Value::Str("5".into()))
        );
        assert_eq!(attrs.len(), 2, "{attrs:?}");
    }
}
