//! Deployments: an artifact rolled out to a set of devices in phases, and the life of the
//! update on each device. The planner here decides everything (when a phase starts, when the
//! rollout pauses or aborts, which devices may be notified now); the server only stores what it
//! decides and carries messages. Time comes in as arguments, so a restarted server resumes
//! every rollout exactly where the stored state says it was.
//!
//! A device's [`TargetState`] moves:
//!
//! ```text
//! queued ─notify─▶ notified ─▶ downloading ─▶ downloaded ─▶ installing ─▶ rebooting ─▶ verifying ─▶ succeeded
//!   ▲                 │ (any unfinished state, device reports)                                    
//!   └── retry after back-off, attempts left ◀── failed | rolled_back ──▶ (no attempts left: final)
//! device reports: skipped (already installed), incompatible     cancel (not yet installing): canceled
//! ```
//!
//! Rules:
//! - Finished states (`succeeded`, `failed`, `rolled_back`, `skipped`, `incompatible`,
//!   `canceled`) never change, except that resuming a deployment may give failed devices
//!   fresh attempts ([`Target::retry`]).
//! - Progress only moves forward: a report of an earlier step than the current one is stale
//!   (a redelivered message) and ignored. A failure may arrive from any unfinished state.
//! - A device is notified at most `max_attempts` times; a failure with attempts left goes
//!   back to `queued`, eligible again after a back-off that doubles per attempt.
//! - Cancelling stops devices that have not started installing; those installing finish (or
//!   roll back) and their outcome is recorded.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::{ArtifactId, DeploymentId, DeviceId, TenantId};

/// Most phases in one deployment.
pub const MAX_PHASES: usize = 16;
/// Most log lines kept per device.
pub const MAX_LOG_LINES: usize = 50;
/// Most bytes per log line.
pub const MAX_LOG_LINE_BYTES: usize = 512;
/// Default and largest attempts per device.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const MAX_ATTEMPTS: u32 = 10;
/// Default first retry back-off, seconds.
pub const DEFAULT_RETRY_BACKOFF_SECS: u64 = 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentError {
    #[error("{0}")]
    Invalid(String),
    #[error("a {from} deployment cannot be {action}")]
    NotAllowed {
        from: DeploymentState,
        action: &'static str,
    },
}

fn invalid(msg: impl Into<String>) -> DeploymentError {
    DeploymentError::Invalid(msg.into())
}

/// A number of devices or a share of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(u32),
    Percent(u8),
}

impl Amount {
    /// Parses `12` or `10%`.
    pub fn parse(s: &str) -> Result<Amount, DeploymentError> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: u8 = p
                .trim()
                .parse()
                .map_err(|_| invalid(format!("{s:?} is not a percentage from 0% to 100%")))?;
            if p > 100 {
                return Err(invalid(format!("{s:?} is more than 100%")));
            }
            Ok(Amount::Percent(p))
        } else {
            s.parse()
                .map(Amount::Count)
                .map_err(|_| invalid(format!("{s:?} is neither a count (12) nor a share (10%)")))
        }
    }

    /// How many devices this is out of `total`; a share is rounded up.
    pub fn of(self, total: u32) -> u32 {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => (u64::from(total) * u64::from(p)).div_ceil(100) as u32,
        }
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u32),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Amount::Count(n)),
            Raw::S(s) => Amount::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// What to do when a phase reaches its failure threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureAction {
    /// Stop notifying until an operator resumes (the default).
    #[default]
    Pause,
    /// Stop the deployment for good: devices not yet installing are canceled.
    Abort,
    /// Note it and carry on.
    Continue,
}

/// One phase of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// How many of the targets this phase takes (`10%`, `50`); the last phase takes the rest
    /// whatever it says.
    pub size: Amount,
    /// Start at this time instead of when the previous phase succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<Timestamp>,
    /// How many of the phase's devices must succeed before the next phase starts (default all).
    #[serde(default = "all", skip_serializing_if = "is_all")]
    pub success_threshold: Amount,
    /// How many failures trigger `on_failure` (default: none do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<Amount>,
    #[serde(default)]
    pub on_failure: FailureAction,
    /// Wait for an operator's approval before this phase starts.
    #[serde(default)]
    pub requires_approval: bool,
}

fn all() -> Amount {
    Amount::Percent(100)
}

fn is_all(a: &Amount) -> bool {
    *a == Amount::Percent(100)
}

impl Phase {
    /// A phase of `size` with the defaults.
    pub fn new(size: Amount) -> Phase {
        Phase {
            size,
            start_at: None,
            success_threshold: all(),
            failure_threshold: None,
            on_failure: FailureAction::Pause,
            requires_approval: false,
        }
    }
}

/// How a rollout runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// Most devices notified per minute (none: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_minute: Option<u32>,
    /// Most devices notified but not done downloading at once (none: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_downloads: Option<u32>,
    /// Times a device is notified before its failure is final.
    pub max_attempts: u32,
    /// Wait before the first retry, doubling per attempt.
    pub retry_backoff_secs: u64,
    /// Install even where the device runs this version or a newer one.
    #[serde(default)]
    pub force: bool,
    /// Download and verify only; install on a later deployment.
    #[serde(default)]
    pub download_only: bool,
    /// Devices that come to match the target later join the last phase.
    #[serde(default)]
    pub continuous: bool,
    /// Devices are notified only while one of these is open (none: any time).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<crate::window::Window>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rate_per_minute: None,
            max_concurrent_downloads: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_backoff_secs: DEFAULT_RETRY_BACKOFF_SECS,
            force: false,
            download_only: false,
            continuous: false,
            windows: Vec::new(),
        }
    }
}

impl Options {
    /// Whether devices may be notified at `now` (inside a maintenance window, if any are set;
    /// windows that no longer check out are treated as closed).
    pub fn window_open(&self, now: Timestamp) -> bool {
        if self.windows.is_empty() {
            return true;
        }
        let checked: Vec<_> = self.windows.iter().filter_map(|w| w.check().ok()).collect();
        crate::window::any_open(&checked, now) && !checked.is_empty()
    }

    /// When the next maintenance window opens after `now`.
    pub fn next_window(&self, now: Timestamp) -> Option<Timestamp> {
        self.windows
            .iter()
            .filter_map(|w| w.check().ok())
            .filter_map(|w| w.next_open(now))
            .min()
    }
}

/// Checks phases and options.
pub fn validate(phases: &[Phase], options: &Options) -> Result<(), DeploymentError> {
    if phases.is_empty() || phases.len() > MAX_PHASES {
        return Err(invalid(format!(
            "a deployment has 1 to {MAX_PHASES} phases"
        )));
    }
    for (i, p) in phases.iter().enumerate() {
        if p.size == Amount::Count(0) || p.size == Amount::Percent(0) {
            return Err(invalid(format!("phase {}: an empty phase", i + 1)));
        }
        if p.success_threshold == Amount::Percent(0) {
            return Err(invalid(format!(
                "phase {}: a success threshold of 0% would start the next phase at once; leave it out for all",
                i + 1
            )));
        }
    }
    if options.max_attempts == 0 || options.max_attempts > MAX_ATTEMPTS {
        return Err(invalid(format!("max_attempts must be 1 to {MAX_ATTEMPTS}")));
    }
    if options.rate_per_minute == Some(0) || options.max_concurrent_downloads == Some(0) {
        return Err(invalid(
            "a rate or concurrency limit of 0 would never notify anyone; leave it out for none",
        ));
    }
    if options.retry_backoff_secs > 7 * 24 * 3600 {
        return Err(invalid("retry_backoff_secs is at most a week"));
    }
    if options.windows.len() > 16 {
        return Err(invalid("at most 16 maintenance windows"));
    }
    for w in &options.windows {
        w.check().map_err(|e| invalid(e.to_string()))?;
    }
    Ok(())
}

/// Splits `devices` into phases: a stable pseudo-random order (so that phase 1 is not, say,
/// the oldest devices), then each phase takes its size, the last one the rest. Returns each
/// device with its phase index.
pub fn assign_phases(
    deployment: DeploymentId,
    phases: &[Phase],
    devices: &[DeviceId],
) -> Vec<(DeviceId, u32)> {
    let mut order: Vec<(u64, DeviceId)> =
        devices.iter().map(|d| (mix(deployment, *d), *d)).collect();
    order.sort();
    order.dedup_by_key(|(_, d)| *d);
    let total = order.len() as u32;
    let mut out = Vec::with_capacity(order.len());
    let mut next = 0usize;
    for (i, phase) in phases.iter().enumerate() {
        let take = if i + 1 == phases.len() {
            order.len() - next
        } else {
            (phase.size.of(total) as usize).min(order.len() - next)
        };
        for (_, d) in &order[next..next + take] {
            out.push((*d, i as u32));
        }
        next += take;
    }
    out
}

/// FNV-1a over both ids: a stable, well-spread order key.
fn mix(deployment: DeploymentId, device: DeviceId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in deployment
        .as_uuid()
        .as_bytes()
        .iter()
        .chain(device.as_uuid().as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A deployment's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// Waiting for its start time.
    Scheduled,
    Running,
    /// Stopped notifying, by an operator or a failure threshold; resumable.
    Paused,
    /// Every device finished.
    Completed,
    /// Stopped by an operator.
    Canceled,
    /// Stopped by a failure threshold.
    Aborted,
}

impl DeploymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Scheduled => "scheduled",
            DeploymentState::Running => "running",
            DeploymentState::Paused => "paused",
            DeploymentState::Completed => "completed",
            DeploymentState::Canceled => "canceled",
            DeploymentState::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            DeploymentState::Scheduled,
            DeploymentState::Running,
            DeploymentState::Paused,
            DeploymentState::Completed,
            DeploymentState::Canceled,
            DeploymentState::Aborted,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            DeploymentState::Completed | DeploymentState::Canceled | DeploymentState::Aborted
        )
    }
}

impl std::fmt::Display for DeploymentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub id: DeploymentId,
    pub tenant_id: TenantId,
    pub name: String,
    pub artifact_id: ArtifactId,
    /// How the devices were chosen (for people).
    pub target: String,
    /// For continuous deployments: the query devices that join later must match.
    pub query: Option<String>,
    pub phases: Vec<Phase>,
    pub options: Options,
    pub state: DeploymentState,
    /// Why it is paused, aborted or waiting.
    pub status_reason: Option<String>,
    /// The phase being rolled out: devices of this phase and earlier ones are notified.
    pub current_phase: u32,
    /// The phases an operator approved (those that need approval).
    pub approved_phases: Vec<u32>,
    /// Per phase, the failures an operator accepted by resuming: thresholds count beyond them.
    pub accepted_failures: Vec<u32>,
    pub created_by: Option<String>,
    pub created_at: Timestamp,
    /// When it is to start (none: at once).
    pub start_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub updated_at: Timestamp,
    /// Grows with every stored change (compare-and-set).
    pub revision: u64,
}

/// A device's part in a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    Queued,
    Notified,
    Downloading,
    Downloaded,
    Installing,
    Rebooting,
    Verifying,
    Succeeded,
    Failed,
    RolledBack,
    Skipped,
    Incompatible,
    Canceled,
}

impl TargetState {
    pub const ALL: [TargetState; 13] = [
        TargetState::Queued,
        TargetState::Notified,
        TargetState::Downloading,
        TargetState::Downloaded,
        TargetState::Installing,
        TargetState::Rebooting,
        TargetState::Verifying,
        TargetState::Succeeded,
        TargetState::Failed,
        TargetState::RolledBack,
        TargetState::Skipped,
        TargetState::Incompatible,
        TargetState::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Queued => "queued",
            TargetState::Notified => "notified",
            TargetState::Downloading => "downloading",
            TargetState::Downloaded => "downloaded",
            TargetState::Installing => "installing",
            TargetState::Rebooting => "rebooting",
            TargetState::Verifying => "verifying",
            TargetState::Succeeded => "succeeded",
            TargetState::Failed => "failed",
            TargetState::RolledBack => "rolled_back",
            TargetState::Skipped => "skipped",
            TargetState::Incompatible => "incompatible",
            TargetState::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TargetState::Succeeded
                | TargetState::Failed
                | TargetState::RolledBack
                | TargetState::Skipped
                | TargetState::Incompatible
                | TargetState::Canceled
        )
    }

    /// Notified and not finished: the device is working on it.
    pub fn is_active(self) -> bool {
        !self.is_finished() && self != TargetState::Queued
    }

    /// Notified but not done downloading (counts against `max_concurrent_downloads`).
    pub fn is_downloading(self) -> bool {
        matches!(self, TargetState::Notified | TargetState::Downloading)
    }

    fn is_failure(self) -> bool {
        matches!(self, TargetState::Failed | TargetState::RolledBack)
    }

    /// Still cancellable: not yet installing.
    fn before_install(self) -> bool {
        matches!(
            self,
            TargetState::Queued
                | TargetState::Notified
                | TargetState::Downloading
                | TargetState::Downloaded
        )
    }
}

impl std::fmt::Display for TargetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One device in a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tenant_id: TenantId,
    pub deployment_id: DeploymentId,
    pub device_id: DeviceId,
    pub phase: u32,
    pub state: TargetState,
    /// Times notified since the device last got fresh attempts (counts against
    /// `max_attempts`).
    pub attempts: u32,
    /// Times notified over the deployment's whole life: the attempt number the device sees.
    /// Never goes down, so a retry after [`Target::retry`] is a new attempt to the device even
    /// with the same artifact.
    pub notifications: u32,
    /// Not notified again before this (after a failure).
    pub retry_at: Option<Timestamp>,
    pub notified_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub updated_at: Timestamp,
    /// Percent of the current step, when the device says.
    pub progress: Option<u8>,
    /// The last error the device reported.
    pub error: Option<String>,
    /// The device's log lines, newest last, at most [`MAX_LOG_LINES`].
    pub log: Vec<String>,
}

/// What a device reported about a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    pub state: Option<TargetState>,
    pub progress: Option<u8>,
    pub error: Option<String>,
    pub log: Vec<String>,
}

/// What applying a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The state changed (or only progress and log lines did, when equal).
    Changed,
    /// Stale or about a finished target: nothing changed.
    Ignored,
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl Target {
    pub fn new(
        tenant: TenantId,
        deployment: DeploymentId,
        device: DeviceId,
        phase: u32,
        at: Timestamp,
    ) -> Target {
        Target {
            tenant_id: tenant,
            deployment_id: deployment,
            device_id: device,
            phase,
            state: TargetState::Queued,
            attempts: 0,
            notifications: 0,
            retry_at: None,
            notified_at: None,
            finished_at: None,
            updated_at: at,
            progress: None,
            error: None,
            log: Vec::new(),
        }
    }

    /// Whether it may be notified now.
    pub fn is_due(&self, options: &Options, now: Timestamp) -> bool {
        self.state == TargetState::Queued
            && self.attempts < options.max_attempts
            && self.retry_at.is_none_or(|t| t <= now)
    }

    /// Queued → notified (one more attempt).
    pub fn notify(&self, now: Timestamp) -> Option<Target> {
        if self.state != TargetState::Queued {
            return None;
        }
        let mut t = self.clone();
        t.state = TargetState::Notified;
        t.attempts += 1;
        t.notifications = t.notifications.saturating_add(1);
        t.notified_at = Some(now);
        t.retry_at = None;
        t.progress = None;
        t.updated_at = now;
        Some(t)
    }

    fn add_log(&mut self, lines: &[String]) {
        for l in lines {
            self.log.push(cut(l, MAX_LOG_LINE_BYTES));
        }
        if self.log.len() > MAX_LOG_LINES {
            let drop = self.log.len() - MAX_LOG_LINES;
            self.log.drain(..drop);
        }
    }

    /// Applies a device's report (see the module rules). Returns the new target, or `None`
    /// when nothing changes.
    pub fn apply(&self, report: &Report, options: &Options, now: Timestamp) -> Option<Target> {
        if self.state.is_finished() {
            return None;
        }
        let mut t = self.clone();
        match report.state {
            None => {}
            Some(s) if s == self.state => {}
            Some(TargetState::Queued | TargetState::Notified | TargetState::Canceled) => {
                return None;
            }
            // Queued again for a retry: a repeated failure report is the same failure.
            Some(s) if s.is_failure() && self.state == TargetState::Queued => return None,
            Some(s) if s.is_failure() => {
                t.error = report.error.as_deref().map(|e| cut(e, MAX_LOG_LINE_BYTES));
                if self.attempts < options.max_attempts {
                    t.state = TargetState::Queued;
                    let backoff = options
                        .retry_backoff_secs
                        .saturating_mul(1u64 << (self.attempts.saturating_sub(1)).min(16));
                    t.retry_at = Some(now.plus_millis(
                        i64::try_from(backoff.saturating_mul(1000)).unwrap_or(i64::MAX / 2),
                    ));
                } else {
                    t.state = s;
                    t.finished_at = Some(now);
                }
            }
            Some(s) if s.is_finished() => {
                t.state = s;
                t.finished_at = Some(now);
            }
            // Progress steps only move forward, and only once notified.
            Some(s) if s > self.state && self.state != TargetState::Queued => t.state = s,
            Some(_) => return None,
        }
        if let Some(p) = report.progress {
            t.progress = Some(p.min(100));
        }
        if t.state.is_finished() || t.state == TargetState::Queued {
            t.progress = None;
        }
        if report.error.is_some() && t.error.is_none() {
            t.error = report.error.as_deref().map(|e| cut(e, MAX_LOG_LINE_BYTES));
        }
        t.add_log(&report.log);
        if t == *self {
            return None;
        }
        t.updated_at = now;
        Some(t)
    }

    /// Cancel: only before installing.
    pub fn cancel(&self, now: Timestamp) -> Option<Target> {
        if !self.state.before_install() {
            return None;
        }
        let mut t = self.clone();
        t.state = TargetState::Canceled;
        t.finished_at = Some(now);
        t.updated_at = now;
        t.progress = None;
        Some(t)
    }

    /// A failed device gets fresh attempts (an operator resumed with retries).
    pub fn retry(&self, now: Timestamp) -> Option<Target> {
        if !self.state.is_failure() {
            return None;
        }
        let mut t = self.clone();
        t.state = TargetState::Queued;
        t.attempts = 0;
        t.retry_at = None;
        t.finished_at = None;
        t.updated_at = now;
        Some(t)
    }
}

/// Counts of a phase's devices per state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PhaseStats {
    pub total: u32,
    pub queued: u32,
    /// Notified and not finished.
    pub active: u32,
    pub succeeded: u32,
    /// Failed or rolled back, finally.
    pub failed: u32,
    pub skipped: u32,
    pub incompatible: u32,
    pub canceled: u32,
}

impl PhaseStats {
    pub fn add(&mut self, state: TargetState, n: u32) {
        self.total += n;
        match state {
            TargetState::Queued => self.queued += n,
            TargetState::Succeeded => self.succeeded += n,
            TargetState::Failed | TargetState::RolledBack => self.failed += n,
            TargetState::Skipped => self.skipped += n,
            TargetState::Incompatible => self.incompatible += n,
            TargetState::Canceled => self.canceled += n,
            _ => self.active += n,
        }
    }

    /// Devices that count for thresholds (incompatible and canceled ones do not).
    pub fn eligible(&self) -> u32 {
        self.total - self.incompatible - self.canceled
    }

    /// Successes (already installed counts).
    pub fn successes(&self) -> u32 {
        self.succeeded + self.skipped
    }

    pub fn is_done(&self) -> bool {
        self.queued == 0 && self.active == 0
    }
}

/// What the planner decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub state: DeploymentState,
    pub current_phase: u32,
    pub status_reason: Option<String>,
    /// Whether devices not yet installing must be canceled (an abort).
    pub cancel_pending: bool,
}

/// Evaluates a deployment against its phases' statistics at `now`: starts it, moves to the next
/// phase, pauses or aborts on failures, completes it. Pure: the same input, the same decision.
pub fn evaluate(d: &Deployment, stats: &[PhaseStats], now: Timestamp) -> Decision {
    let mut out = Decision {
        state: d.state,
        current_phase: d.current_phase,
        status_reason: d.status_reason.clone(),
        cancel_pending: false,
    };
    match d.state {
        DeploymentState::Scheduled if d.start_at.is_none_or(|t| t <= now) => {
            out.state = DeploymentState::Running;
            out.status_reason = None;
        }
        DeploymentState::Scheduled => return out,
        DeploymentState::Running => {}
        _ => return out,
    }
    let empty = PhaseStats::default();
    let stat = |i: u32| stats.get(i as usize).unwrap_or(&empty);
    let last = (d.phases.len() as u32).saturating_sub(1);

    // Failure thresholds, in every phase started so far.
    for i in 0..=out.current_phase.min(last) {
        let phase = &d.phases[i as usize];
        let Some(threshold) = phase.failure_threshold else {
            continue;
        };
        let s = stat(i);
        let accepted = d.accepted_failures.get(i as usize).copied().unwrap_or(0);
        let failures = s.failed.saturating_sub(accepted);
        let limit = threshold.of(s.eligible()).max(1);
        if failures >= limit && phase.on_failure != FailureAction::Continue {
            let why = format!(
                "phase {}: {failures} of {} devices failed (threshold {threshold})",
                i + 1,
                s.eligible()
            );
            out.status_reason = Some(why);
            if phase.on_failure == FailureAction::Abort {
                out.state = DeploymentState::Aborted;
                out.cancel_pending = true;
            } else {
                out.state = DeploymentState::Paused;
            }
            return out;
        }
    }

    // Next phase: when the current one met its success threshold (or its time came).
    out.status_reason = None;
    while out.current_phase < last {
        let next = out.current_phase + 1;
        let phase = &d.phases[next as usize];
        let ready = match phase.start_at {
            Some(t) => t <= now,
            None => {
                let s = stat(out.current_phase);
                let needed = d.phases[out.current_phase as usize]
                    .success_threshold
                    .of(s.eligible());
                s.successes() >= needed
            }
        };
        if !ready {
            if let Some(t) = phase.start_at {
                out.status_reason =
                    Some(format!("phase {} starts at {}", next + 1, t.to_rfc3339()));
            }
            break;
        }
        if phase.requires_approval && !d.approved_phases.contains(&next) {
            out.status_reason = Some(format!("phase {} waits for approval", next + 1));
            break;
        }
        out.current_phase = next;
    }

    // Outside every maintenance window nobody is notified; say until when.
    if !d.options.window_open(now) {
        out.status_reason = Some(match d.options.next_window(now) {
            Some(t) => format!(
                "outside its maintenance windows; the next opens at {}",
                t.to_rfc3339()
            ),
            None => "outside its maintenance windows".into(),
        });
    }

    // Done when every phase started and every device finished.
    if out.current_phase == last && !d.options.continuous && stats.iter().all(PhaseStats::is_done) {
        out.state = DeploymentState::Completed;
        out.status_reason = None;
    }
    out
}

/// How many more devices may be notified now, given how many were notified in the last minute
/// and how many are still downloading (0 outside the maintenance windows). `None`: no limit.
pub fn notify_budget(
    options: &Options,
    notified_last_minute: u32,
    downloading: u32,
    now: Timestamp,
) -> Option<u32> {
    if !options.window_open(now) {
        return Some(0);
    }
    let by_rate = options
        .rate_per_minute
        .map(|r| r.saturating_sub(notified_last_minute));
    let by_downloads = options
        .max_concurrent_downloads
        .map(|m| m.saturating_sub(downloading));
    match (by_rate, by_downloads) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Operator actions on a deployment's state.
impl Deployment {
    pub fn pause(&self, now: Timestamp) -> Result<Deployment, DeploymentError> {
        if !matches!(
            self.state,
            DeploymentState::Running | DeploymentState::Scheduled
        ) {
            return Err(DeploymentError::NotAllowed {
                from: self.state,
                action: "paused",
            });
        }
        let mut d = self.clone();
        d.state = DeploymentState::Paused;
        d.status_reason = Some("paused by an operator".into());
        d.updated_at = now;
        Ok(d)
    }

    /// Resumes a paused deployment. `failures` are the phases' current failure counts: they
    /// become accepted, so thresholds count only failures from now on.
    pub fn resume(&self, failures: &[u32], now: Timestamp) -> Result<Deployment, DeploymentError> {
        if self.state != DeploymentState::Paused {
            return Err(DeploymentError::NotAllowed {
                from: self.state,
                action: "resumed",
            });
        }
        let mut d = self.clone();
        d.state = if d.started_at.is_some() || d.start_at.is_none_or(|t| t <= now) {
            DeploymentState::Running
        } else {
            DeploymentState::Scheduled
        };
        d.accepted_failures = failures.to_vec();
        d.status_reason = None;
        d.updated_at = now;
        Ok(d)
    }

    pub fn cancel(&self, now: Timestamp) -> Result<Deployment, DeploymentError> {
        if self.state.is_finished() {
            return Err(DeploymentError::NotAllowed {
                from: self.state,
                action: "canceled",
            });
        }
        let mut d = self.clone();
        d.state = DeploymentState::Canceled;
        d.status_reason = Some("canceled by an operator".into());
        d.finished_at = Some(now);
        d.updated_at = now;
        Ok(d)
    }

    /// Approves `phase` (1-based in messages, 0-based here) to start when it is ready.
    pub fn approve(&self, phase: u32, now: Timestamp) -> Result<Deployment, DeploymentError> {
        if self.state.is_finished() {
            return Err(DeploymentError::NotAllowed {
                from: self.state,
                action: "approved",
            });
        }
        let Some(p) = self.phases.get(phase as usize) else {
            return Err(invalid(format!(
                "there is no phase {}; this deployment has {}",
                phase + 1,
                self.phases.len()
            )));
        };
        if !p.requires_approval {
            return Err(invalid(format!("phase {} needs no approval", phase + 1)));
        }
        let mut d = self.clone();
        if !d.approved_phases.contains(&phase) {
            d.approved_phases.push(phase);
            d.approved_phases.sort_unstable();
        }
        d.updated_at = now;
        Ok(d)
    }

    /// Applies a planner decision; `None` when nothing changes.
    pub fn decide(&self, decision: &Decision, now: Timestamp) -> Option<Deployment> {
        let mut d = self.clone();
        d.state = decision.state;
        d.current_phase = decision.current_phase;
        d.status_reason = decision.status_reason.clone();
        if d.state == DeploymentState::Running && d.started_at.is_none() {
            d.started_at = Some(now);
        }
        if d.state.is_finished() && d.finished_at.is_none() {
            d.finished_at = Some(now);
        }
        if d == *self {
            return None;
        }
        d.updated_at = now;
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    const T0: Timestamp = Timestamp::from_unix_millis(1_800_000_000_000);

    fn at(s: i64) -> Timestamp {
        T0.plus_millis(s * 1000)
    }

    fn devices(n: usize) -> Vec<DeviceId> {
        (0..n)
            .map(|_| DeviceId::from_uuid(Uuid::now_v7()))
            .collect()
    }

    fn deployment(phases: Vec<Phase>) -> Deployment {
        Deployment {
            id: DeploymentId::from_uuid(Uuid::now_v7()),
            tenant_id: TenantId::from_uuid(Uuid::now_v7()),
            name: "d".into(),
            artifact_id: ArtifactId::from_uuid(Uuid::now_v7()),
            target: "all".into(),
            query: None,
            phases,
            options: Options::default(),
            state: DeploymentState::Scheduled,
            status_reason: None,
            current_phase: 0,
            approved_phases: vec![],
            accepted_failures: vec![],
            created_by: None,
            created_at: T0,
            start_at: None,
            started_at: None,
            finished_at: None,
            updated_at: T0,
            revision: 0,
        }
    }

    #[test]
    fn amounts_parse_and_round_up() {
        assert_eq!(Amount::parse("10%"), Ok(Amount::Percent(10)));
        assert_eq!(Amount::parse(" 12 "), Ok(Amount::Count(12)));
        assert!(Amount::parse("101%").is_err());
        assert!(Amount::parse("-1").is_err());
        assert!(Amount::parse("ten").is_err());
        assert_eq!(Amount::Percent(10).of(95), 10);
        assert_eq!(Amount::Percent(100).of(7), 7);
        assert_eq!(Amount::Count(5).of(2), 5);
        let v: Amount = serde_json::from_str("\"25%\"").unwrap();
        assert_eq!(v, Amount::Percent(25));
        let v: Amount = serde_json::from_str("3").unwrap();
        assert_eq!(v, Amount::Count(3));
        assert_eq!(
            serde_json::to_string(&Amount::Percent(5)).unwrap(),
            "\"5%\""
        );
    }

    #[test]
    fn phases_split_every_device_once_and_stably() {
        let d = DeploymentId::from_uuid(Uuid::now_v7());
        let phases = vec![
            Phase::new(Amount::Count(10)),
            Phase::new(Amount::Percent(50)),
            Phase::new(Amount::Count(1)),
        ];
        let mut devs = devices(100);
        devs.push(devs[0]);
        let a = assign_phases(d, &phases, &devs);
        assert_eq!(a.len(), 100);
        let count = |p| a.iter().filter(|(_, x)| *x == p).count();
        assert_eq!((count(0), count(1), count(2)), (10, 50, 40));
        devs.reverse();
        assert_eq!(
            assign_phases(d, &phases, &devs),
            a,
            "independent of input order"
        );
        // Phases larger than what is left: the later ones are empty, nobody is lost.
        let big = vec![Phase::new(Amount::Count(500)), Phase::new(Amount::Count(1))];
        let a = assign_phases(d, &big, &devices(3));
        assert_eq!(a.iter().filter(|(_, p)| *p == 0).count(), 3);
    }

    #[test]
    fn validation_names_the_problem() {
        let ok = vec![Phase::new(Amount::Percent(10))];
        assert!(validate(&ok, &Options::default()).is_ok());
        assert!(validate(&[], &Options::default()).is_err());
        assert!(validate(&[Phase::new(Amount::Count(0))], &Options::default()).is_err());
        let o = Options {
            max_attempts: 0,
            ..Options::default()
        };
        assert!(validate(&ok, &o).is_err());
        let o = Options {
            rate_per_minute: Some(0),
            ..Options::default()
        };
        assert!(validate(&ok, &o).is_err());
    }

    fn target() -> Target {
        Target::new(
            TenantId::from_uuid(Uuid::now_v7()),
            DeploymentId::from_uuid(Uuid::now_v7()),
            DeviceId::from_uuid(Uuid::now_v7()),
            0,
            T0,
        )
    }

    fn report(state: TargetState) -> Report {
        Report {
            state: Some(state),
            ..Report::default()
        }
    }

    #[test]
    fn a_device_moves_forward_only() {
        let o = Options::default();
        let t = target().notify(at(1)).unwrap();
        assert_eq!((t.state, t.attempts), (TargetState::Notified, 1));
        let t = t
            .apply(&report(TargetState::Downloading), &o, at(2))
            .unwrap();
        let t = t
            .apply(&report(TargetState::Installing), &o, at(3))
            .unwrap();
        // A redelivered older step is stale.
        assert_eq!(t.apply(&report(TargetState::Downloading), &o, at(4)), None);
        assert_eq!(t.apply(&report(TargetState::Notified), &o, at(4)), None);
        let mut r = report(TargetState::Installing);
        r.progress = Some(50);
        let t = t.apply(&r, &o, at(5)).unwrap();
        assert_eq!(t.progress, Some(50));
        let t = t.apply(&report(TargetState::Succeeded), &o, at(6)).unwrap();
        assert_eq!(t.state, TargetState::Succeeded);
        assert_eq!(t.finished_at, Some(at(6)));
        assert_eq!(t.progress, None);
        // Finished stays finished.
        assert_eq!(t.apply(&report(TargetState::Failed), &o, at(7)), None);
        assert_eq!(t.cancel(at(7)), None);
    }

    #[test]
    fn failures_retry_with_doubling_back_off_then_stay() {
        let o = Options {
            max_attempts: 3,
            retry_backoff_secs: 10,
            ..Options::default()
        };
        let mut t = target();
        let mut waits = vec![];
        for attempt in 1..=3 {
            assert!(t.is_due(&o, at(1000)), "attempt {attempt}");
            t = t.notify(at(100 * attempt)).unwrap();
            let mut r = report(TargetState::Failed);
            r.error = Some("disk full".into());
            r.log = vec!["writing slot b".into()];
            t = t.apply(&r, &o, at(100 * attempt)).unwrap();
            if let Some(when) = t.retry_at {
                waits.push((when.unix_millis() - at(100 * attempt).unix_millis()) / 1000);
                assert!(!t.is_due(&o, at(100 * attempt)));
            }
        }
        assert_eq!(waits, vec![10, 20]);
        assert_eq!(t.state, TargetState::Failed);
        assert_eq!(t.error.as_deref(), Some("disk full"));
        assert_eq!(t.log.len(), 3);
        assert!(!t.is_due(&o, at(10_000)));
        // A redelivered failure while queued for a retry is not a second failure.
        let queued = target().notify(at(1)).unwrap();
        let queued = queued
            .apply(&report(TargetState::Failed), &o, at(2))
            .unwrap();
        assert_eq!(queued.state, TargetState::Queued);
        assert_eq!(queued.apply(&report(TargetState::Failed), &o, at(3)), None);
        assert_eq!(
            queued.apply(&report(TargetState::Installing), &o, at(3)),
            None
        );
        // A resume with retries gives fresh attempts, and the device sees a new attempt
        // number (it handles each deployment attempt once).
        let before = t.notifications;
        assert_eq!(before, 3);
        let t = t.retry(at(2000)).unwrap();
        assert!(t.is_due(&o, at(2000)));
        let t = t.notify(at(2001)).unwrap();
        assert_eq!((t.attempts, t.notifications), (1, before + 1));
    }

    #[test]
    fn cancel_stops_only_devices_not_yet_installing() {
        let o = Options::default();
        let t = target().notify(at(1)).unwrap();
        let t2 = t
            .apply(&report(TargetState::Downloaded), &o, at(2))
            .unwrap();
        assert_eq!(t2.cancel(at(3)).unwrap().state, TargetState::Canceled);
        let t3 = t2
            .apply(&report(TargetState::Installing), &o, at(3))
            .unwrap();
        assert_eq!(t3.cancel(at(4)), None);
    }

    #[test]
    fn logs_are_bounded() {
        let o = Options::default();
        let t = target().notify(at(1)).unwrap();
        let r = Report {
            state: None,
            progress: None,
            error: None,
            log: (0..80)
                .map(|i| format!("{i} {}", "é".repeat(400)))
                .collect(),
        };
        let t = t.apply(&r, &o, at(2)).unwrap();
        assert_eq!(t.log.len(), MAX_LOG_LINES);
        assert!(t.log[0].starts_with("30 "));
        assert!(t.log.iter().all(|l| l.len() <= MAX_LOG_LINE_BYTES));
    }

    fn stats(succeeded: u32, failed: u32, active: u32, queued: u32) -> PhaseStats {
        PhaseStats {
            total: succeeded + failed + active + queued,
            queued,
            active,
            succeeded,
            failed,
            ..PhaseStats::default()
        }
    }

    #[test]
    fn phases_advance_on_success_and_pause_on_failures() {
        let mut p1 = Phase::new(Amount::Count(10));
        p1.failure_threshold = Some(Amount::Percent(20));
        p1.success_threshold = Amount::Percent(80);
        let mut p2 = Phase::new(Amount::Percent(100));
        p2.failure_threshold = Some(Amount::Count(3));
        let mut d = deployment(vec![p1, p2]);

        // Starts at once, phase 1 only.
        let dec = evaluate(&d, &[stats(0, 0, 0, 10), stats(0, 0, 0, 90)], at(0));
        assert_eq!(
            (dec.state, dec.current_phase),
            (DeploymentState::Running, 0)
        );
        d = d.decide(&dec, at(0)).unwrap();
        assert_eq!(d.started_at, Some(at(0)));

        // 7 of 10 succeeded: below 80 %, stay.
        let dec = evaluate(&d, &[stats(7, 1, 2, 0), stats(0, 0, 0, 90)], at(1));
        assert_eq!(dec.current_phase, 0);
        // 8 of 10: next phase.
        let dec = evaluate(&d, &[stats(8, 1, 1, 0), stats(0, 0, 0, 90)], at(2));
        assert_eq!(dec.current_phase, 1);
        d = d.decide(&dec, at(2)).unwrap();

        // Three failures in phase 2: paused, with the reason.
        let s = [stats(8, 1, 1, 0), stats(40, 3, 10, 37)];
        let dec = evaluate(&d, &s, at(3));
        assert_eq!(dec.state, DeploymentState::Paused);
        assert!(
            dec.status_reason
                .as_deref()
                .unwrap()
                .contains("phase 2: 3 of 90"),
            "{dec:?}"
        );
        d = d.decide(&dec, at(3)).unwrap();
        assert_eq!(evaluate(&d, &s, at(4)).state, DeploymentState::Paused);

        // Resumed: those failures are accepted; it runs until three more.
        d = d.resume(&[1, 3], at(5)).unwrap();
        assert_eq!(evaluate(&d, &s, at(5)).state, DeploymentState::Running);
        let s = [stats(9, 1, 0, 0), stats(80, 5, 5, 0)];
        assert_eq!(evaluate(&d, &s, at(6)).state, DeploymentState::Running);
        let s = [stats(9, 1, 0, 0), stats(80, 6, 4, 0)];
        assert_eq!(evaluate(&d, &s, at(6)).state, DeploymentState::Paused);

        // Everything finished: completed.
        let s = [stats(9, 1, 0, 0), stats(85, 5, 0, 0)];
        let mut d2 = d.clone();
        d2.accepted_failures = vec![1, 5];
        let dec = evaluate(&d2, &s, at(7));
        assert_eq!(dec.state, DeploymentState::Completed);
        assert_eq!(d2.decide(&dec, at(7)).unwrap().finished_at, Some(at(7)));
    }

    #[test]
    fn abort_cancels_pending_and_continue_carries_on() {
        let mut p = Phase::new(Amount::Percent(100));
        p.failure_threshold = Some(Amount::Count(1));
        p.on_failure = FailureAction::Abort;
        let mut d = deployment(vec![p.clone()]);
        d.state = DeploymentState::Running;
        let dec = evaluate(&d, &[stats(0, 1, 0, 5)], at(0));
        assert_eq!(dec.state, DeploymentState::Aborted);
        assert!(dec.cancel_pending);
        p.on_failure = FailureAction::Continue;
        let mut d = deployment(vec![p]);
        d.state = DeploymentState::Running;
        assert_eq!(
            evaluate(&d, &[stats(0, 1, 0, 5)], at(0)).state,
            DeploymentState::Running
        );
    }

    #[test]
    fn schedules_times_and_approvals() {
        let mut p2 = Phase::new(Amount::Percent(100));
        p2.requires_approval = true;
        let mut p3 = Phase::new(Amount::Percent(100));
        p3.start_at = Some(at(100));
        let mut d = deployment(vec![Phase::new(Amount::Count(1)), p2, p3]);
        d.start_at = Some(at(50));
        let s = [stats(1, 0, 0, 0), stats(0, 0, 0, 1), stats(0, 0, 0, 1)];
        assert_eq!(evaluate(&d, &s, at(10)).state, DeploymentState::Scheduled);
        let dec = evaluate(&d, &s, at(50));
        assert_eq!(dec.state, DeploymentState::Running);
        assert_eq!(dec.current_phase, 0);
        assert!(dec.status_reason.as_deref().unwrap().contains("approval"));
        d = d.decide(&dec, at(50)).unwrap();
        assert!(d.approve(0, at(51)).is_err(), "phase 1 needs no approval");
        assert!(d.approve(7, at(51)).is_err());
        d = d.approve(1, at(51)).unwrap();
        let s = [stats(1, 0, 0, 0), stats(1, 0, 0, 0), stats(0, 0, 0, 1)];
        let dec = evaluate(&d, &s, at(60));
        assert_eq!(dec.current_phase, 1);
        assert!(dec.status_reason.as_deref().unwrap().contains("starts at"));
        assert_eq!(evaluate(&d, &s, at(100)).current_phase, 2);
    }

    #[test]
    fn incompatible_and_canceled_do_not_count_and_continuous_never_completes() {
        let mut d = deployment(vec![Phase::new(Amount::Percent(100))]);
        d.state = DeploymentState::Running;
        let s = PhaseStats {
            total: 4,
            succeeded: 2,
            incompatible: 1,
            canceled: 1,
            ..PhaseStats::default()
        };
        assert_eq!(s.eligible(), 2);
        assert_eq!(
            evaluate(&d, std::slice::from_ref(&s), at(0)).state,
            DeploymentState::Completed
        );
        d.options.continuous = true;
        assert_eq!(evaluate(&d, &[s], at(0)).state, DeploymentState::Running);
    }

    #[test]
    fn budgets_take_the_tighter_limit() {
        let mut o = Options::default();
        assert_eq!(notify_budget(&o, 100, 100, at(0)), None);
        o.rate_per_minute = Some(60);
        assert_eq!(notify_budget(&o, 50, 0, at(0)), Some(10));
        o.max_concurrent_downloads = Some(5);
        assert_eq!(notify_budget(&o, 50, 3, at(0)), Some(2));
        assert_eq!(notify_budget(&o, 70, 0, at(0)), Some(0));
    }

    #[test]
    fn maintenance_windows_gate_notifications() {
        // T0 is 2027-01-15T08:00:00Z. A window 02:00-04:00 UTC every day.
        let mut o = Options::default();
        o.windows.push(crate::window::Window {
            cron: "0 2 * * *".into(),
            duration_secs: 7200,
            time_zone: "UTC".into(),
        });
        assert!(validate(&[Phase::new(Amount::Percent(100))], &o).is_ok());
        assert_eq!(notify_budget(&o, 0, 0, at(0)), Some(0));
        let in_window = at(18 * 3600 + 30 * 60); // 02:30 the next day
        assert_eq!(notify_budget(&o, 0, 0, in_window), None);
        let mut d = deployment(vec![Phase::new(Amount::Percent(100))]);
        d.state = DeploymentState::Running;
        d.options = o.clone();
        let dec = evaluate(&d, &[stats(0, 0, 0, 5)], at(0));
        assert!(
            dec.status_reason
                .as_deref()
                .unwrap()
                .contains("next opens at 2027-01-16T02:00"),
            "{dec:?}"
        );
        o.windows[0].time_zone = "Nowhere/Land".into();
        assert!(validate(&[Phase::new(Amount::Percent(100))], &o).is_err());
    }

    #[test]
    fn operator_actions_follow_the_state() {
        let mut d = deployment(vec![Phase::new(Amount::Percent(100))]);
        d.state = DeploymentState::Running;
        let p = d.pause(at(1)).unwrap();
        assert!(p.pause(at(2)).is_err());
        assert_eq!(
            p.resume(&[0], at(3)).unwrap().state,
            DeploymentState::Running
        );
        let c = p.cancel(at(4)).unwrap();
        assert!(c.cancel(at(5)).is_err());
        assert!(c.resume(&[], at(5)).is_err());
    }
}
