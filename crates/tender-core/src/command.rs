//! Device commands: what an operator asks a set of devices to do, and the life of that request
//! on each device.
//!
//! A [`Command`] is sent once to a fixed list of devices (a group or query is resolved when the
//! command is sent). Each device has its own [`Target`], whose [`CommandState`] moves:
//!
//! ```text
//! queued ──sent──▶ sent ──device: delivered──▶ delivered ──device: result──▶ succeeded | failed
//!   ▲                │                             │
//!   └──── timeout, attempts left ◀─────────────────┘   (no attempts left: timed_out)
//! any unfinished state ── TTL passed ──▶ expired      any unfinished state ── cancel ──▶ canceled
//! ```
//!
//! Rules (the transition functions below are the whole of them; the store applies them as
//! conditional updates so that two paths racing cannot move a target twice):
//! - A finished target (`succeeded`, `failed`, `timed_out`, `expired`, `canceled`) never changes
//!   state again. A result that arrives for a `canceled` target is recorded (exit code and
//!   output: the command did run) but the state stays `canceled`; a result for any other
//!   finished target is ignored.
//! - A result may arrive without `delivered` first (it implies delivery), and from `queued`
//!   (the device got an earlier copy before a retry was queued).
//! - Each send is an attempt; a target is sent at most `max_attempts` times. An attempt that
//!   has no result within `timeout` goes back to `queued` if attempts are left, else it is
//!   `timed_out`. Nothing is sent once the command's TTL has passed.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::{CommandId, DeviceId, TenantId};

/// Most arguments a command may carry.
pub const MAX_ARGS: usize = 32;
/// Most bytes one argument may have.
pub const MAX_ARG_BYTES: usize = 1024;
/// Most bytes of stdout (and, separately, of stderr) kept from a command.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Most bytes of a result's `output` JSON and of its `error` text.
pub const MAX_RESULT_JSON_BYTES: usize = 16 * 1024;
pub const MAX_ERROR_BYTES: usize = 1024;

/// Default, smallest and largest time to live (seconds).
pub const DEFAULT_TTL_SECS: u64 = 24 * 3600;
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;
/// Default, smallest and largest per-attempt timeout (seconds).
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
pub const MAX_TIMEOUT_SECS: u64 = 24 * 3600;
/// Default and largest number of attempts per device.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const MAX_ATTEMPTS: u32 = 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error(
        "invalid command name {0:?}: use reboot, restart-agent, ping, or a custom name of 1-64 characters a-z 0-9 _ . - starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("invalid arguments: {0}")]
    InvalidArgs(String),
    #[error("{field} must be between {min} and {max}, got {got}")]
    OutOfRange {
        field: &'static str,
        min: u64,
        max: u64,
        got: u64,
    },
    #[error("the command is {0}: a finished command does not change")]
    Finished(CommandState),
    #[error("a {from} command cannot become {to}")]
    NotAllowed {
        from: CommandState,
        to: CommandState,
    },
    #[error("the command expired")]
    Expired,
    #[error("all {0} attempts were used")]
    NoAttemptsLeft(u32),
    #[error("invalid result: {0}")]
    InvalidResult(String),
}

/// The built-in commands every agent knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Reboot,
    RestartAgent,
    Ping,
}

impl Builtin {
    pub const ALL: [Builtin; 3] = [Builtin::Reboot, Builtin::RestartAgent, Builtin::Ping];

    pub fn as_str(self) -> &'static str {
        match self {
            Builtin::Reboot => "reboot",
            Builtin::RestartAgent => "restart-agent",
            Builtin::Ping => "ping",
        }
    }
}

/// A command's name: a built-in, or a custom name that the agent maps to an allowed program.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CommandName(String);

impl CommandName {
    /// `[a-z0-9][a-z0-9_.-]{0,63}` (the built-ins are of that form too).
    pub fn parse(s: &str) -> Result<Self, CommandError> {
        let bytes = s.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 64
            && bytes[0].is_ascii_lowercase() | bytes[0].is_ascii_digit()
            && bytes.iter().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
            });
        if ok {
            Ok(CommandName(s.to_owned()))
        } else {
            Err(CommandError::InvalidName(s.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Which built-in this is, if any.
    pub fn builtin(&self) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.as_str() == self.0)
    }
}

impl TryFrom<String> for CommandName {
    type Error = CommandError;
    fn try_from(s: String) -> Result<Self, CommandError> {
        CommandName::parse(&s)
    }
}

impl From<CommandName> for String {
    fn from(n: CommandName) -> String {
        n.0
    }
}

impl std::fmt::Display for CommandName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a command's arguments: at most [`MAX_ARGS`], each at most [`MAX_ARG_BYTES`], no NUL.
pub fn validate_args(args: &[String]) -> Result<(), CommandError> {
    if args.len() > MAX_ARGS {
        return Err(CommandError::InvalidArgs(format!(
            "at most {MAX_ARGS} arguments, got {}",
            args.len()
        )));
    }
    for (i, a) in args.iter().enumerate() {
        if a.len() > MAX_ARG_BYTES {
            return Err(CommandError::InvalidArgs(format!(
                "argument {} is longer than {MAX_ARG_BYTES} bytes",
                i + 1
            )));
        }
        if a.contains('\0') {
            return Err(CommandError::InvalidArgs(format!(
                "argument {} contains a NUL character",
                i + 1
            )));
        }
    }
    Ok(())
}

/// Time to live, per-attempt timeout and attempts, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub ttl_secs: u64,
    pub timeout_secs: u64,
    pub max_attempts: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            ttl_secs: DEFAULT_TTL_SECS,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

impl Limits {
    /// The defaults for what is not given; an out-of-range value is an error, never clamped.
    pub fn new(
        ttl_secs: Option<u64>,
        timeout_secs: Option<u64>,
        max_attempts: Option<u32>,
    ) -> Result<Self, CommandError> {
        let d = Limits::default();
        let range = |field, min: u64, max: u64, got: u64| {
            if (min..=max).contains(&got) {
                Ok(got)
            } else {
                Err(CommandError::OutOfRange {
                    field,
                    min,
                    max,
                    got,
                })
            }
        };
        let ttl_secs = range("ttl_secs", 1, MAX_TTL_SECS, ttl_secs.unwrap_or(d.ttl_secs))?;
        let timeout_secs = range(
            "timeout_secs",
            1,
            MAX_TIMEOUT_SECS,
            timeout_secs.unwrap_or(d.timeout_secs),
        )?;
        let max_attempts = range(
            "max_attempts",
            1,
            u64::from(MAX_ATTEMPTS),
            u64::from(max_attempts.unwrap_or(d.max_attempts)),
        )?;
        Ok(Limits {
            ttl_secs,
            timeout_secs,
            // In range 1..=MAX_ATTEMPTS, so it fits.
            max_attempts: u32::try_from(max_attempts).unwrap_or(MAX_ATTEMPTS),
        })
    }
}

/// A command as sent by an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub id: CommandId,
    pub tenant_id: TenantId,
    pub name: CommandName,
    pub args: Vec<String>,
    /// How the targets were chosen, for people (`device ...`, `group "kiosks"`, a query).
    pub target: String,
    pub created_by: Option<String>,
    pub created_at: Timestamp,
    /// No send after this; unfinished targets become `expired`.
    pub expires_at: Timestamp,
    pub timeout_secs: u64,
    pub max_attempts: u32,
}

impl Command {
    /// The message sent to a device on `commands/{id}`.
    pub fn downlink_payload(&self, attempt: u32, sent_at: Timestamp) -> Vec<u8> {
        serde_json::json!({
            "id": self.id.to_string(),
            "name": self.name.as_str(),
            "args": self.args,
            "timeout_secs": self.timeout_secs,
            "attempt": attempt,
            "sent_at": sent_at.unix_millis(),
            "expires_at": self.expires_at.unix_millis(),
        })
        .to_string()
        .into_bytes()
    }
}

/// Where a command stands on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CommandState {
    Queued,
    Sent,
    Delivered,
    Succeeded,
    Failed,
    TimedOut,
    Expired,
    Canceled,
}

impl CommandState {
    pub const ALL: [CommandState; 8] = [
        CommandState::Queued,
        CommandState::Sent,
        CommandState::Delivered,
        CommandState::Succeeded,
        CommandState::Failed,
        CommandState::TimedOut,
        CommandState::Expired,
        CommandState::Canceled,
    ];
    /// The states in which a device may still get the command.
    pub const PENDING: [CommandState; 3] = [
        CommandState::Queued,
        CommandState::Sent,
        CommandState::Delivered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::Queued => "queued",
            CommandState::Sent => "sent",
            CommandState::Delivered => "delivered",
            CommandState::Succeeded => "succeeded",
            CommandState::Failed => "failed",
            CommandState::TimedOut => "timed_out",
            CommandState::Expired => "expired",
            CommandState::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        CommandState::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn is_finished(self) -> bool {
        !CommandState::PENDING.contains(&self)
    }
}

impl std::fmt::Display for CommandState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a device reported as the outcome of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Structured output (JSON text), e.g. `ping`'s diagnostics.
    pub output: Option<String>,
    /// Why the agent could not run it (not allowed, not found, ...).
    pub error: Option<String>,
}

/// One device's copy of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tenant_id: TenantId,
    pub command_id: CommandId,
    pub device_id: DeviceId,
    pub state: CommandState,
    /// Sends so far.
    pub attempts: u32,
    /// When the current attempt times out (set while `sent`/`delivered`).
    pub deadline_at: Option<Timestamp>,
    /// The command's expiry (copied, so that sweeps need no join).
    pub expires_at: Timestamp,
    pub sent_at: Option<Timestamp>,
    pub delivered_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub updated_at: Timestamp,
    pub outcome: Option<Outcome>,
}

impl Target {
    /// A new target, queued.
    pub fn queued(command: &Command, device_id: DeviceId) -> Self {
        Target {
            tenant_id: command.tenant_id,
            command_id: command.id,
            device_id,
            state: CommandState::Queued,
            attempts: 0,
            deadline_at: None,
            expires_at: command.expires_at,
            sent_at: None,
            delivered_at: None,
            finished_at: None,
            updated_at: command.created_at,
            outcome: None,
        }
    }

    fn unfinished(&self) -> Result<(), CommandError> {
        if self.state.is_finished() {
            Err(CommandError::Finished(self.state))
        } else {
            Ok(())
        }
    }

    /// The command goes out (again): a new attempt. From `queued`, or from `sent`/`delivered`
    /// when the previous attempt is being replaced. Refused once expired or out of attempts.
    pub fn on_sent(
        &self,
        now: Timestamp,
        timeout_secs: u64,
        max_attempts: u32,
    ) -> Result<Target, CommandError> {
        self.unfinished()?;
        if now >= self.expires_at {
            return Err(CommandError::Expired);
        }
        if self.attempts >= max_attempts {
            return Err(CommandError::NoAttemptsLeft(max_attempts));
        }
        let timeout_ms = i64::try_from(timeout_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        Ok(Target {
            state: CommandState::Sent,
            attempts: self.attempts + 1,
            sent_at: Some(now),
            deadline_at: Some(now.plus_millis(timeout_ms)),
            updated_at: now,
            ..self.clone()
        })
    }

    /// The device says it has the command. From `queued` (an earlier copy reached it) or
    /// `sent`; a repeat while `delivered` changes nothing.
    pub fn on_delivered(&self, now: Timestamp) -> Result<Target, CommandError> {
        self.unfinished()?;
        match self.state {
            CommandState::Delivered => Ok(self.clone()),
            _ => Ok(Target {
                state: CommandState::Delivered,
                delivered_at: Some(now),
                updated_at: now,
                ..self.clone()
            }),
        }
    }

    /// The device reports how the run ended. Returns `None` when nothing changes (a repeat
    /// for a finished target other than canceled).
    pub fn on_result(&self, succeeded: bool, outcome: Outcome, now: Timestamp) -> Option<Target> {
        match self.state {
            CommandState::Canceled if self.outcome.is_none() => Some(Target {
                outcome: Some(outcome),
                updated_at: now,
                ..self.clone()
            }),
            s if s.is_finished() => None,
            _ => Some(Target {
                state: if succeeded {
                    CommandState::Succeeded
                } else {
                    CommandState::Failed
                },
                delivered_at: self.delivered_at.or(Some(now)),
                deadline_at: None,
                finished_at: Some(now),
                updated_at: now,
                outcome: Some(outcome),
                ..self.clone()
            }),
        }
    }

    /// The current attempt's time is up: back to `queued` when attempts are left and the
    /// command has not expired, else `timed_out`. Refused before the deadline.
    pub fn on_timeout(&self, now: Timestamp, max_attempts: u32) -> Result<Target, CommandError> {
        self.unfinished()?;
        match (self.state, self.deadline_at) {
            (CommandState::Sent | CommandState::Delivered, Some(d)) if now >= d => {}
            (from, _) => {
                return Err(CommandError::NotAllowed {
                    from,
                    to: CommandState::TimedOut,
                });
            }
        }
        if self.attempts < max_attempts && now < self.expires_at {
            Ok(Target {
                state: CommandState::Queued,
                deadline_at: None,
                updated_at: now,
                ..self.clone()
            })
        } else {
            Ok(Target {
                state: CommandState::TimedOut,
                deadline_at: None,
                finished_at: Some(now),
                updated_at: now,
                ..self.clone()
            })
        }
    }

    /// The command's TTL has passed before the device finished it.
    pub fn on_expire(&self, now: Timestamp) -> Result<Target, CommandError> {
        self.unfinished()?;
        if now < self.expires_at {
            return Err(CommandError::NotAllowed {
                from: self.state,
                to: CommandState::Expired,
            });
        }
        Ok(self.finish(CommandState::Expired, now))
    }

    /// An operator cancels: any unfinished target becomes `canceled`. (A device that already
    /// runs the command may still report; see the module rules.)
    pub fn cancel(&self, now: Timestamp) -> Result<Target, CommandError> {
        self.unfinished()?;
        Ok(self.finish(CommandState::Canceled, now))
    }

    fn finish(&self, state: CommandState, now: Timestamp) -> Target {
        Target {
            state,
            deadline_at: None,
            finished_at: Some(now),
            updated_at: now,
            ..self.clone()
        }
    }
}

/// Counts of a command's targets per state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub total: u64,
    pub queued: u64,
    pub sent: u64,
    pub delivered: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub expired: u64,
    pub canceled: u64,
}

impl Summary {
    pub fn from_counts(counts: impl IntoIterator<Item = (CommandState, u64)>) -> Self {
        let mut s = Summary::default();
        for (state, n) in counts {
            s.add(state, n);
        }
        s
    }

    pub fn add(&mut self, state: CommandState, n: u64) {
        self.total += n;
        *match state {
            CommandState::Queued => &mut self.queued,
            CommandState::Sent => &mut self.sent,
            CommandState::Delivered => &mut self.delivered,
            CommandState::Succeeded => &mut self.succeeded,
            CommandState::Failed => &mut self.failed,
            CommandState::TimedOut => &mut self.timed_out,
            CommandState::Expired => &mut self.expired,
            CommandState::Canceled => &mut self.canceled,
        } += n;
    }

    /// Targets not finished yet.
    pub fn pending(&self) -> u64 {
        self.queued + self.sent + self.delivered
    }

    /// No target is pending.
    pub fn is_done(&self) -> bool {
        self.pending() == 0
    }

    /// Finished other than succeeded.
    pub fn unsuccessful(&self) -> u64 {
        self.failed + self.timed_out + self.expired + self.canceled
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A device's message on `commands/{id}/result`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// `{"status": "delivered"}`: the agent has the command and starts it.
    Delivered,
    /// `{"status": "succeeded" | "failed", "exit_code"?, "stdout"?, "stderr"?, "output"?, "error"?}`
    Finished { succeeded: bool, outcome: Outcome },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportWire {
    status: String,
    exit_code: Option<i32>,
    stdout: Option<String>,
    stderr: Option<String>,
    output: Option<serde_json::Value>,
    error: Option<String>,
}

/// Parses a result message. Output longer than the limits is cut (stdout/stderr to
/// [`MAX_OUTPUT_BYTES`] each, `error` to [`MAX_ERROR_BYTES`]); `output` must be a JSON object
/// of at most [`MAX_RESULT_JSON_BYTES`].
pub fn parse_report(payload: &[u8]) -> Result<Report, CommandError> {
    let bad = |m: String| CommandError::InvalidResult(m);
    let w: ReportWire = serde_json::from_slice(payload).map_err(|e| {
        bad(format!(
            "expected {{\"status\": \"delivered\" | \"succeeded\" | \"failed\", ...}}: {e}"
        ))
    })?;
    let succeeded = match w.status.as_str() {
        "delivered" => return Ok(Report::Delivered),
        "succeeded" => true,
        "failed" => false,
        other => {
            return Err(bad(format!(
                "status {:?} is not delivered, succeeded or failed",
                truncate_utf8(other, 40)
            )));
        }
    };
    let output = match w.output {
        None | Some(serde_json::Value::Null) => None,
        Some(v @ serde_json::Value::Object(_)) => {
            let text = v.to_string();
            if text.len() > MAX_RESULT_JSON_BYTES {
                return Err(bad(format!(
                    "output is larger than {MAX_RESULT_JSON_BYTES} bytes"
                )));
            }
            Some(text)
        }
        Some(_) => return Err(bad("output must be a JSON object".into())),
    };
    let cut = |s: Option<String>, max| s.map(|s| truncate_utf8(&s, max).to_owned());
    Ok(Report::Finished {
        succeeded,
        outcome: Outcome {
            exit_code: w.exit_code,
            stdout: cut(w.stdout, MAX_OUTPUT_BYTES).unwrap_or_default(),
            stderr: cut(w.stderr, MAX_OUTPUT_BYTES).unwrap_or_default(),
            output,
            error: cut(w.error, MAX_ERROR_BYTES),
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use uuid::Uuid;

    const T0: Timestamp = Timestamp::from_unix_millis(1_800_000_000_000);

    fn command() -> Command {
        Command {
            id: CommandId::from_uuid(Uuid::from_u128(1)),
            tenant_id: TenantId::from_uuid(Uuid::from_u128(2)),
            name: CommandName::parse("ping").unwrap(),
            args: vec![],
            target: "device".into(),
            created_by: None,
            created_at: T0,
            expires_at: T0.plus_millis(3_600_000),
            timeout_secs: 60,
            max_attempts: 2,
        }
    }

    fn target() -> Target {
        Target::queued(&command(), DeviceId::from_uuid(Uuid::from_u128(3)))
    }

    fn at(secs: i64) -> Timestamp {
        T0.plus_millis(secs * 1000)
    }

    #[test]
    fn names() {
        for ok in [
            "reboot",
            "restart-agent",
            "ping",
            "a",
            "x1.y_z-2",
            &"a".repeat(64),
        ] {
            assert!(CommandName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Reboot", "-x", ".x", "a b", "a/b", &"a".repeat(65), "é"] {
            assert!(CommandName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            CommandName::parse("restart-agent").unwrap().builtin(),
            Some(Builtin::RestartAgent)
        );
        assert_eq!(CommandName::parse("backup").unwrap().builtin(), None);
    }

    #[test]
    fn args_and_limits() {
        assert!(validate_args(&vec!["x".into(); 32]).is_ok());
        assert!(validate_args(&vec!["x".into(); 33]).is_err());
        assert!(validate_args(&["x".repeat(1025)]).is_err());
        assert!(validate_args(&["a\0b".into()]).is_err());
        assert_eq!(Limits::new(None, None, None).unwrap(), Limits::default());
        assert!(Limits::new(Some(0), None, None).is_err());
        assert!(Limits::new(None, Some(MAX_TIMEOUT_SECS + 1), None).is_err());
        assert!(Limits::new(None, None, Some(0)).is_err());
        assert!(Limits::new(None, None, Some(11)).is_err());
        let l = Limits::new(Some(60), Some(5), Some(1)).unwrap();
        assert_eq!((l.ttl_secs, l.timeout_secs, l.max_attempts), (60, 5, 1));
    }

    #[test]
    fn the_happy_path() {
        let t = target();
        let sent = t.on_sent(at(1), 60, 2).unwrap();
        assert_eq!(sent.state, CommandState::Sent);
        assert_eq!(sent.attempts, 1);
        assert_eq!(sent.deadline_at, Some(at(61)));
        let d = sent.on_delivered(at(2)).unwrap();
        assert_eq!(d.state, CommandState::Delivered);
        assert_eq!(
            d.on_delivered(at(3)).unwrap(),
            d,
            "a repeat changes nothing"
        );
        let done = d.on_result(true, Outcome::default(), at(4)).unwrap();
        assert_eq!(done.state, CommandState::Succeeded);
        assert_eq!(done.finished_at, Some(at(4)));
        assert_eq!(done.deadline_at, None);
    }

    #[test]
    fn a_finished_target_never_changes() {
        let done = target()
            .on_sent(at(1), 60, 2)
            .unwrap()
            .on_result(false, Outcome::default(), at(2))
            .unwrap();
        assert_eq!(done.state, CommandState::Failed);
        assert!(matches!(
            done.on_sent(at(3), 60, 2),
            Err(CommandError::Finished(_))
        ));
        assert!(done.on_delivered(at(3)).is_err());
        assert!(done.on_result(true, Outcome::default(), at(3)).is_none());
        assert!(done.on_timeout(at(100), 2).is_err());
        assert!(done.on_expire(at(10_000)).is_err());
        assert!(done.cancel(at(3)).is_err());
    }

    #[test]
    fn a_result_without_delivered_and_from_queued() {
        let r = target().on_result(true, Outcome::default(), at(1)).unwrap();
        assert_eq!(r.state, CommandState::Succeeded);
        assert_eq!(r.delivered_at, Some(at(1)));
    }

    #[test]
    fn timeouts_retry_then_give_up() {
        let sent = target().on_sent(at(0), 60, 2).unwrap();
        assert!(
            sent.on_timeout(at(59), 2).is_err(),
            "not before the deadline"
        );
        let again = sent.on_timeout(at(60), 2).unwrap();
        assert_eq!(again.state, CommandState::Queued);
        let sent2 = again.on_sent(at(61), 60, 2).unwrap();
        assert_eq!(sent2.attempts, 2);
        let out = sent2.on_timeout(at(121), 2).unwrap();
        assert_eq!(out.state, CommandState::TimedOut);
        assert_eq!(out.finished_at, Some(at(121)));
        assert!(matches!(
            again.on_sent(at(61), 60, 1),
            Err(CommandError::NoAttemptsLeft(1))
        ));
        assert!(
            target().on_timeout(at(1000), 2).is_err(),
            "queued has no deadline"
        );
    }

    #[test]
    fn expiry() {
        let t = target();
        assert!(t.on_expire(at(10)).is_err(), "not before the TTL");
        assert!(matches!(
            t.on_sent(at(3600), 60, 2),
            Err(CommandError::Expired)
        ));
        let e = t.on_expire(at(3600)).unwrap();
        assert_eq!(e.state, CommandState::Expired);
        // A timeout after the TTL does not requeue.
        let sent = t.on_sent(at(3590), 60, 2).unwrap();
        assert_eq!(
            sent.on_timeout(at(3650), 2).unwrap().state,
            CommandState::TimedOut
        );
    }

    #[test]
    fn cancel_keeps_a_late_result_but_not_the_state() {
        let c = target()
            .on_sent(at(1), 60, 2)
            .unwrap()
            .cancel(at(2))
            .unwrap();
        assert_eq!(c.state, CommandState::Canceled);
        let late = Outcome {
            exit_code: Some(0),
            ..Outcome::default()
        };
        let r = c.on_result(true, late.clone(), at(3)).unwrap();
        assert_eq!(r.state, CommandState::Canceled);
        assert_eq!(r.outcome, Some(late.clone()));
        assert!(r.on_result(true, late, at(4)).is_none(), "recorded once");
    }

    #[test]
    fn summary() {
        let s = Summary::from_counts([(CommandState::Succeeded, 950), (CommandState::Queued, 50)]);
        assert_eq!(s.total, 1000);
        assert_eq!(s.pending(), 50);
        assert!(!s.is_done());
        let s = Summary::from_counts([(CommandState::Succeeded, 3), (CommandState::Failed, 1)]);
        assert!(s.is_done());
        assert_eq!(s.unsuccessful(), 1);
    }

    #[test]
    fn reports() {
        assert_eq!(
            parse_report(br#"{"status":"delivered"}"#).unwrap(),
            Report::Delivered
        );
        let big = "é".repeat(MAX_OUTPUT_BYTES);
        let payload = serde_json::json!({"status": "failed", "exit_code": 2, "stdout": big,
            "stderr": "oops", "output": {"a": 1}});
        let Report::Finished { succeeded, outcome } =
            parse_report(payload.to_string().as_bytes()).unwrap()
        else {
            panic!("finished expected")
        };
        assert!(!succeeded);
        assert_eq!(outcome.exit_code, Some(2));
        assert!(outcome.stdout.len() <= MAX_OUTPUT_BYTES);
        assert!(outcome.stdout.len() > MAX_OUTPUT_BYTES - 2);
        assert_eq!(outcome.output.as_deref(), Some(r#"{"a":1}"#));
        for bad in [
            &b"nope"[..],
            br#"{"status":"done"}"#,
            br#"{"status":"failed","output":[1]}"#,
            br#"{"status":"failed","extra":1}"#,
        ] {
            assert!(parse_report(bad).is_err());
        }
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("héllo", 3), "hé");
        assert_eq!(truncate_utf8("abc", 10), "abc");
    }
}
