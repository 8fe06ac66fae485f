//! Remote logs: an operator asks one device for its logs, the agent reads the named sources it
//! is configured with, gzips the text and uploads it; or, for a follow request, streams new
//! lines for as long as its lease is renewed.
//!
//! A [`LogRequest`]'s [`LogState`] only moves forward:
//!
//! ```text
//! pending ──sent──▶ sent ──device: uploading──▶ uploading ──upload stored──▶ ready
//!    │                │                              │
//!    └────────────────┴──────────────────────────────┴──▶ failed (device error, upload refused)
//!                                                     └──▶ expired (TTL passed)
//! ```
//!
//! Rules (the transition functions below are the whole of them; the store applies them as
//! conditional updates on the state read):
//! - A finished request (`ready`, `failed`, `expired`) never changes again.
//! - `sent` may repeat (the request is delivered again after a reconnect); it never moves a
//!   request that is `uploading` back.
//! - An upload may arrive without `uploading` first (it implies it), from `pending` too (the
//!   device got an earlier copy).
//! - Nothing is sent, and no upload is accepted, once the TTL has passed.
//!
//! Device messages (`logs/{id}/status`, `logs/{id}/lines`) are parsed here with hard bounds, so
//! that what an operator sees of them is short, printable text.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::command::truncate_utf8;
use crate::ids::{DeviceId, LogRequestId, TenantId};

/// Most sources one request names.
pub const MAX_SOURCES: usize = 8;
/// Default and largest number of lines per source.
pub const DEFAULT_LINES: u32 = 1000;
pub const MAX_LINES: u32 = 100_000;
/// Default and largest compressed size the agent may upload (the server's own cap may be lower).
pub const DEFAULT_MAX_BYTES: u64 = 8 * 1024 * 1024;
pub const MAX_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default and largest time to live (seconds).
pub const DEFAULT_TTL_SECS: u64 = 3600;
pub const MAX_TTL_SECS: u64 = 7 * 24 * 3600;
/// How long a follow lease lasts when not renewed (seconds).
pub const FOLLOW_LEASE_SECS: u64 = 30;
/// Most bytes of a device's error text kept.
pub const MAX_ERROR_BYTES: usize = 1024;
/// Most bytes of a status message.
pub const MAX_STATUS_BYTES: usize = 4096;
/// Most lines, bytes per line and bytes per message of a follow batch.
pub const MAX_BATCH_LINES: usize = 500;
pub const MAX_LINE_BYTES: usize = 4096;
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error(
        "invalid log source name {0:?}: use 1-64 characters a-z 0-9 _ . - starting with a letter or digit, as named in the agent's [logs] configuration"
    )]
    InvalidSource(String),
    #[error("name at least one log source (at most {MAX_SOURCES})")]
    SourceCount,
    #[error("{field} must be between {min} and {max}, got {got}")]
    OutOfRange {
        field: &'static str,
        min: u64,
        max: u64,
        got: u64,
    },
    #[error("since must be before until")]
    EmptyRange,
    #[error("the log request is {0}: a finished request does not change")]
    Finished(LogState),
    #[error("a {from} log request cannot become {to}")]
    NotAllowed { from: LogState, to: LogState },
    #[error("the log request expired")]
    Expired,
    #[error("invalid log report: {0}")]
    InvalidReport(String),
}

/// A log source's name, as the agent's configuration names it (`journal` units and files are
/// configured on the device; the operator can only pick among them).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SourceName(String);

impl SourceName {
    /// `[a-z0-9][a-z0-9_.-]{0,63}`.
    pub fn parse(s: &str) -> Result<Self, LogError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 64
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
            });
        if ok {
            Ok(SourceName(s.to_owned()))
        } else {
            Err(LogError::InvalidSource(s.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SourceName {
    type Error = LogError;
    fn try_from(s: String) -> Result<Self, LogError> {
        SourceName::parse(&s)
    }
}

impl From<SourceName> for String {
    fn from(n: SourceName) -> String {
        n.0
    }
}

impl std::fmt::Display for SourceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an operator asks for, before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub sources: Vec<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub lines: Option<u32>,
    pub max_bytes: Option<u64>,
    pub ttl_secs: Option<u64>,
    pub follow: bool,
}

/// The checked form of a [`LogQuery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSpec {
    pub sources: Vec<SourceName>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// Last N lines per source (of those in the range).
    pub lines: u32,
    pub max_bytes: u64,
    pub ttl_secs: u64,
    pub follow: bool,
}

fn in_range(field: &'static str, min: u64, max: u64, got: u64) -> Result<u64, LogError> {
    if (min..=max).contains(&got) {
        Ok(got)
    } else {
        Err(LogError::OutOfRange {
            field,
            min,
            max,
            got,
        })
    }
}

impl LogQuery {
    /// Checks every field; defaults fill what is not given, and nothing is clamped.
    /// `max_bytes_cap` is the server's upload cap (a request may not ask for more).
    pub fn validate(&self, max_bytes_cap: u64) -> Result<LogSpec, LogError> {
        if self.sources.is_empty() || self.sources.len() > MAX_SOURCES {
            return Err(LogError::SourceCount);
        }
        let mut sources = Vec::with_capacity(self.sources.len());
        for s in &self.sources {
            let n = SourceName::parse(s)?;
            if !sources.contains(&n) {
                sources.push(n);
            }
        }
        if let (Some(s), Some(u)) = (self.since, self.until)
            && s >= u
        {
            return Err(LogError::EmptyRange);
        }
        let lines = in_range(
            "lines",
            1,
            u64::from(MAX_LINES),
            u64::from(self.lines.unwrap_or(DEFAULT_LINES)),
        )?;
        let cap = max_bytes_cap.clamp(1, MAX_MAX_BYTES);
        let max_bytes = in_range(
            "max_bytes",
            1,
            cap,
            self.max_bytes.unwrap_or(DEFAULT_MAX_BYTES.min(cap)),
        )?;
        let ttl_secs = in_range(
            "ttl_secs",
            1,
            MAX_TTL_SECS,
            self.ttl_secs.unwrap_or(DEFAULT_TTL_SECS),
        )?;
        Ok(LogSpec {
            sources,
            since: self.since,
            until: self.until,
            // In range 1..=MAX_LINES, so it fits.
            lines: u32::try_from(lines).unwrap_or(MAX_LINES),
            max_bytes,
            ttl_secs,
            follow: self.follow,
        })
    }
}

/// Where a log request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogState {
    Pending,
    Sent,
    Uploading,
    Ready,
    Failed,
    Expired,
}

impl LogState {
    pub const ALL: [LogState; 6] = [
        LogState::Pending,
        LogState::Sent,
        LogState::Uploading,
        LogState::Ready,
        LogState::Failed,
        LogState::Expired,
    ];
    /// The states in which the device may still act on the request.
    pub const OPEN: [LogState; 3] = [LogState::Pending, LogState::Sent, LogState::Uploading];

    pub fn as_str(self) -> &'static str {
        match self {
            LogState::Pending => "pending",
            LogState::Sent => "sent",
            LogState::Uploading => "uploading",
            LogState::Ready => "ready",
            LogState::Failed => "failed",
            LogState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        LogState::ALL.into_iter().find(|l| l.as_str() == s)
    }

    pub fn is_finished(self) -> bool {
        !LogState::OPEN.contains(&self)
    }
}

impl std::fmt::Display for LogState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request for one device's logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRequest {
    pub id: LogRequestId,
    pub tenant_id: TenantId,
    pub device_id: DeviceId,
    pub sources: Vec<SourceName>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub lines: u32,
    pub max_bytes: u64,
    pub follow: bool,
    pub created_by: Option<String>,
    pub created_at: Timestamp,
    /// Nothing is sent or accepted after this; an open request becomes `expired`.
    pub expires_at: Timestamp,
    pub state: LogState,
    pub sent_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub updated_at: Timestamp,
    /// Why it failed (the device's words, bounded, or the server's).
    pub error: Option<String>,
    /// Compressed size of the stored upload, once `ready`.
    pub size: Option<u64>,
}

impl LogRequest {
    /// A new, pending request.
    pub fn new(
        id: LogRequestId,
        tenant_id: TenantId,
        device_id: DeviceId,
        spec: LogSpec,
        created_by: Option<String>,
        now: Timestamp,
    ) -> Self {
        let ttl_ms = i64::try_from(spec.ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        LogRequest {
            id,
            tenant_id,
            device_id,
            sources: spec.sources,
            since: spec.since,
            until: spec.until,
            lines: spec.lines,
            max_bytes: spec.max_bytes,
            follow: spec.follow,
            created_by,
            created_at: now,
            expires_at: now.plus_millis(ttl_ms),
            state: LogState::Pending,
            sent_at: None,
            finished_at: None,
            updated_at: now,
            error: None,
            size: None,
        }
    }

    fn open(&self, now: Timestamp) -> Result<(), LogError> {
        if self.state.is_finished() {
            return Err(LogError::Finished(self.state));
        }
        if now >= self.expires_at {
            return Err(LogError::Expired);
        }
        Ok(())
    }

    /// The request goes out (again). `pending` and `sent` become `sent`; an `uploading`
    /// request is sent again (the device may have restarted) but stays `uploading`.
    pub fn on_sent(&self, now: Timestamp) -> Result<LogRequest, LogError> {
        self.open(now)?;
        Ok(LogRequest {
            state: match self.state {
                LogState::Uploading => LogState::Uploading,
                _ => LogState::Sent,
            },
            sent_at: Some(now),
            updated_at: now,
            ..self.clone()
        })
    }

    /// The device says it is reading and will upload. A repeat changes nothing.
    pub fn on_uploading(&self, now: Timestamp) -> Result<LogRequest, LogError> {
        self.open(now)?;
        if self.follow {
            return Err(LogError::NotAllowed {
                from: self.state,
                to: LogState::Uploading,
            });
        }
        Ok(match self.state {
            LogState::Uploading => self.clone(),
            _ => LogState::Uploading.apply(self, now),
        })
    }

    /// The upload was stored: `ready` with its compressed size. Not for follow requests.
    pub fn on_ready(&self, size: u64, now: Timestamp) -> Result<LogRequest, LogError> {
        self.open(now)?;
        if self.follow {
            return Err(LogError::NotAllowed {
                from: self.state,
                to: LogState::Ready,
            });
        }
        Ok(LogRequest {
            size: Some(size),
            finished_at: Some(now),
            ..LogState::Ready.apply(self, now)
        })
    }

    /// The device could not read a source, or the upload was refused. The error is cut to
    /// [`MAX_ERROR_BYTES`].
    pub fn on_failed(&self, error: &str, now: Timestamp) -> Result<LogRequest, LogError> {
        if self.state.is_finished() {
            return Err(LogError::Finished(self.state));
        }
        Ok(LogRequest {
            error: Some(clean_text(error, MAX_ERROR_BYTES)),
            finished_at: Some(now),
            ..LogState::Failed.apply(self, now)
        })
    }

    /// The TTL has passed before the request finished.
    pub fn on_expire(&self, now: Timestamp) -> Result<LogRequest, LogError> {
        if self.state.is_finished() {
            return Err(LogError::Finished(self.state));
        }
        if now < self.expires_at {
            return Err(LogError::NotAllowed {
                from: self.state,
                to: LogState::Expired,
            });
        }
        Ok(LogRequest {
            finished_at: Some(now),
            ..LogState::Expired.apply(self, now)
        })
    }

    /// The path on the device HTTPS API where the agent uploads.
    pub fn upload_path(&self) -> String {
        format!("/device/v1/logs/{}", self.id)
    }

    /// The message sent to the device on `logs/{id}`. For a follow request, `lease_until` is
    /// when the agent stops unless the message comes again with a later lease.
    pub fn downlink_payload(&self, sent_at: Timestamp, lease_until: Option<Timestamp>) -> Vec<u8> {
        serde_json::json!({
            "id": self.id.to_string(),
            "sources": self.sources,
            "since": self.since.map(|t| t.unix_millis()),
            "until": self.until.map(|t| t.unix_millis()),
            "lines": self.lines,
            "max_bytes": self.max_bytes,
            "follow": self.follow,
            "lease_until": lease_until.map(|t| t.unix_millis()),
            "upload_path": self.upload_path(),
            "sent_at": sent_at.unix_millis(),
            "expires_at": self.expires_at.unix_millis(),
        })
        .to_string()
        .into_bytes()
    }
}

impl LogState {
    fn apply(self, r: &LogRequest, now: Timestamp) -> LogRequest {
        LogRequest {
            state: self,
            updated_at: now,
            ..r.clone()
        }
    }
}

/// The downlink message as the agent reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogDownlink {
    pub id: LogRequestId,
    pub sources: Vec<SourceName>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub lines: u32,
    pub max_bytes: u64,
    #[serde(default)]
    pub follow: bool,
    pub lease_until: Option<i64>,
    pub upload_path: String,
    pub sent_at: i64,
    pub expires_at: i64,
}

/// Parses the downlink message (on the agent).
pub fn parse_downlink(payload: &[u8]) -> Result<LogDownlink, LogError> {
    if payload.len() > MAX_STATUS_BYTES * 4 {
        return Err(LogError::InvalidReport("log request is too large".into()));
    }
    let d: LogDownlink = serde_json::from_slice(payload)
        .map_err(|e| LogError::InvalidReport(format!("log request: {e}")))?;
    if d.sources.is_empty() || d.sources.len() > MAX_SOURCES {
        return Err(LogError::SourceCount);
    }
    if d.lines == 0 || d.lines > MAX_LINES {
        return Err(LogError::OutOfRange {
            field: "lines",
            min: 1,
            max: u64::from(MAX_LINES),
            got: u64::from(d.lines),
        });
    }
    Ok(d)
}

/// Keeps at most `max` bytes of `s`, with control characters (other than newline and tab)
/// replaced, so that it is fit to show to an operator.
pub fn clean_text(s: &str, max: usize) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect();
    truncate_utf8(&cleaned, max).to_owned()
}

/// A device's message on `logs/{id}/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogReport {
    /// `{"status": "uploading"}`: the agent reads the sources and will upload.
    Uploading,
    /// `{"status": "failed", "error": "..."}`: it cannot (unknown source, unreadable file...).
    Failed { error: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportWire {
    status: String,
    error: Option<String>,
}

/// Parses a status message: at most [`MAX_STATUS_BYTES`]; the error is cleaned and cut to
/// [`MAX_ERROR_BYTES`].
pub fn parse_report(payload: &[u8]) -> Result<LogReport, LogError> {
    let bad = LogError::InvalidReport;
    if payload.len() > MAX_STATUS_BYTES {
        return Err(bad(format!(
            "larger than {MAX_STATUS_BYTES} bytes ({} bytes)",
            payload.len()
        )));
    }
    let w: ReportWire = serde_json::from_slice(payload).map_err(|e| {
        bad(format!(
            "expected {{\"status\": \"uploading\" | \"failed\", \"error\"?: \"...\"}}: {e}"
        ))
    })?;
    match w.status.as_str() {
        "uploading" => Ok(LogReport::Uploading),
        "failed" => Ok(LogReport::Failed {
            error: clean_text(
                w.error.as_deref().unwrap_or("the device gave no reason"),
                MAX_ERROR_BYTES,
            ),
        }),
        other => Err(bad(format!(
            "status {:?} is not uploading or failed",
            truncate_utf8(other, 40)
        ))),
    }
}

/// A batch of followed lines on `logs/{id}/lines`: `{"source": "app", "lines": ["...", ...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineBatch {
    pub source: SourceName,
    pub lines: Vec<String>,
}

/// Parses a batch: at most [`MAX_BATCH_BYTES`] and [`MAX_BATCH_LINES`] lines; each line is
/// cleaned and cut to [`MAX_LINE_BYTES`].
pub fn parse_lines(payload: &[u8]) -> Result<LineBatch, LogError> {
    let bad = LogError::InvalidReport;
    if payload.len() > MAX_BATCH_BYTES {
        return Err(bad(format!(
            "line batch larger than {MAX_BATCH_BYTES} bytes"
        )));
    }
    let mut b: LineBatch = serde_json::from_slice(payload).map_err(|e| {
        bad(format!(
            "expected {{\"source\": \"NAME\", \"lines\": [\"...\"]}}: {e}"
        ))
    })?;
    if b.lines.len() > MAX_BATCH_LINES {
        return Err(bad(format!(
            "more than {MAX_BATCH_LINES} lines in one batch"
        )));
    }
    for l in &mut b.lines {
        *l = clean_text(l.trim_end_matches(['\n', '\r']), MAX_LINE_BYTES).replace('\n', " ");
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use uuid::Uuid;

    const T0: Timestamp = Timestamp::from_unix_millis(1_800_000_000_000);

    fn at(secs: i64) -> Timestamp {
        T0.plus_millis(secs * 1000)
    }

    fn query() -> LogQuery {
        LogQuery {
            sources: vec!["app".into()],
            ..LogQuery::default()
        }
    }

    fn request(follow: bool) -> LogRequest {
        let spec = LogQuery {
            ttl_secs: Some(60),
            follow,
            ..query()
        }
        .validate(DEFAULT_MAX_BYTES)
        .unwrap();
        LogRequest::new(
            LogRequestId::from_uuid(Uuid::from_u128(1)),
            TenantId::from_uuid(Uuid::from_u128(2)),
            DeviceId::from_uuid(Uuid::from_u128(3)),
            spec,
            Some("alice".into()),
            T0,
        )
    }

    #[test]
    fn source_names() {
        for ok in ["app", "nginx.service", "a_b-c.1", &"a".repeat(64)] {
            assert!(SourceName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "App", "-x", "../etc", "a b", "a/b", &"a".repeat(65)] {
            assert!(SourceName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_fills_defaults_and_refuses_out_of_range() {
        let s = query().validate(DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(s.lines, DEFAULT_LINES);
        assert_eq!(s.max_bytes, DEFAULT_MAX_BYTES);
        assert_eq!(s.ttl_secs, DEFAULT_TTL_SECS);
        let small_cap = query().validate(1000).unwrap();
        assert_eq!(small_cap.max_bytes, 1000, "the default follows a lower cap");
        let dup = LogQuery {
            sources: vec!["app".into(), "app".into(), "sys".into()],
            ..query()
        };
        assert_eq!(dup.validate(DEFAULT_MAX_BYTES).unwrap().sources.len(), 2);
        let cases = [
            LogQuery::default(),
            LogQuery {
                sources: vec!["x".into(); MAX_SOURCES + 1],
                ..query()
            },
            LogQuery {
                sources: vec!["Bad".into()],
                ..query()
            },
            LogQuery {
                lines: Some(0),
                ..query()
            },
            LogQuery {
                lines: Some(MAX_LINES + 1),
                ..query()
            },
            LogQuery {
                max_bytes: Some(DEFAULT_MAX_BYTES + 1),
                ..query()
            },
            LogQuery {
                ttl_secs: Some(0),
                ..query()
            },
            LogQuery {
                since: Some(at(10)),
                until: Some(at(10)),
                ..query()
            },
        ];
        for c in cases {
            assert!(c.validate(DEFAULT_MAX_BYTES).is_err(), "{c:?}");
        }
    }

    #[test]
    fn the_happy_path() {
        let r = request(false);
        assert_eq!(r.state, LogState::Pending);
        assert_eq!(r.expires_at, at(60));
        let s = r.on_sent(at(1)).unwrap();
        assert_eq!(s.state, LogState::Sent);
        let u = s.on_uploading(at(2)).unwrap();
        assert_eq!(u.state, LogState::Uploading);
        assert_eq!(
            u.on_uploading(at(3)).unwrap(),
            u,
            "a repeat changes nothing"
        );
        let again = u.on_sent(at(3)).unwrap();
        assert_eq!(again.state, LogState::Uploading, "a resend never goes back");
        let done = again.on_ready(123, at(4)).unwrap();
        assert_eq!(done.state, LogState::Ready);
        assert_eq!(done.size, Some(123));
        assert_eq!(done.finished_at, Some(at(4)));
    }

    #[test]
    fn finished_requests_never_change() {
        let ready = request(false).on_ready(1, at(1)).unwrap();
        let failed = request(false).on_failed("no such unit", at(1)).unwrap();
        let expired = request(false).on_expire(at(60)).unwrap();
        for r in [ready, failed, expired] {
            assert!(matches!(r.on_sent(at(2)), Err(LogError::Finished(_))));
            assert!(r.on_uploading(at(2)).is_err());
            assert!(r.on_ready(1, at(2)).is_err());
            assert!(r.on_failed("x", at(2)).is_err());
            assert!(r.on_expire(at(100)).is_err());
        }
    }

    #[test]
    fn ttl() {
        let r = request(false);
        assert!(r.on_expire(at(59)).is_err(), "not before the TTL");
        assert!(matches!(r.on_sent(at(60)), Err(LogError::Expired)));
        assert!(matches!(r.on_ready(1, at(60)), Err(LogError::Expired)));
        assert_eq!(r.on_expire(at(60)).unwrap().state, LogState::Expired);
    }

    #[test]
    fn follow_requests_have_no_upload() {
        let r = request(true).on_sent(at(1)).unwrap();
        assert!(r.on_uploading(at(2)).is_err());
        assert!(r.on_ready(1, at(2)).is_err());
        assert_eq!(r.on_expire(at(60)).unwrap().state, LogState::Expired);
    }

    #[test]
    fn errors_are_bounded_and_printable() {
        let f = request(false)
            .on_failed(&format!("bad\u{1b}[31m{}", "é".repeat(2000)), at(1))
            .unwrap();
        let e = f.error.unwrap();
        assert!(e.len() <= MAX_ERROR_BYTES);
        assert!(!e.contains('\u{1b}'));
    }

    #[test]
    fn downlink_round_trips() {
        let r = request(true);
        let d = parse_downlink(&r.downlink_payload(at(1), Some(at(31)))).unwrap();
        assert_eq!(d.id, r.id);
        assert_eq!(d.sources, r.sources);
        assert!(d.follow);
        assert_eq!(d.lease_until, Some(at(31).unix_millis()));
        assert_eq!(d.upload_path, format!("/device/v1/logs/{}", r.id));
        assert!(parse_downlink(b"{}").is_err());
    }

    #[test]
    fn reports() {
        assert_eq!(
            parse_report(br#"{"status":"uploading"}"#).unwrap(),
            LogReport::Uploading
        );
        assert_eq!(
            parse_report(br#"{"status":"failed","error":"no source \"x\""}"#).unwrap(),
            LogReport::Failed {
                error: "no source \"x\"".into()
            }
        );
        let long = serde_json::json!({"status": "failed", "error": "x".repeat(3000)});
        let LogReport::Failed { error } = parse_report(long.to_string().as_bytes()).unwrap() else {
            panic!("failed expected")
        };
        assert_eq!(error.len(), MAX_ERROR_BYTES);
        for bad in [
            &b"nope"[..],
            br#"{"status":"done"}"#,
            br#"{"status":"failed","extra":1}"#,
            &vec![b' '; MAX_STATUS_BYTES + 1],
        ] {
            assert!(parse_report(bad).is_err());
        }
    }

    #[test]
    fn line_batches() {
        let b = parse_lines(br#"{"source":"app","lines":["one\n","two\u0007"]}"#).unwrap();
        assert_eq!(b.source.as_str(), "app");
        assert_eq!(b.lines, vec!["one".to_string(), "two\u{fffd}".to_string()]);
        let many = serde_json::json!({"source": "app", "lines": vec!["x"; MAX_BATCH_LINES + 1]});
        assert!(parse_lines(many.to_string().as_bytes()).is_err());
        assert!(parse_lines(br#"{"source":"../x","lines":[]}"#).is_err());
    }
}
