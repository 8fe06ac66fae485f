//! Webhooks: HTTP endpoints registered by operators that receive the server's events, signed,
//! with retries, a delivery log and a dead-letter state (see docs/webhooks.md).
//!
//! This module holds the rules; the server mints ids and secrets, reads the event log, sends
//! the requests and stores the outcome.
//!
//! **Invariants:**
//! - A webhook's URL is absolute `http`/`https` with a host and without credentials.
//! - A kind filter works on dotted names (`device.created`), families (`device.*`) and `*`; it
//!   never needs the kind to be known here, so kinds added later (alerts, ...) flow through.
//! - A secret has at least [`MIN_SECRET_BYTES`] random bytes; its `Debug` form never shows it.
//! - A delivery is attempted at most `max_attempts` times before it is `dead`; only an operator's
//!   redelivery makes a finished delivery pending again. Error texts are cut to
//!   [`MAX_ERROR_CHARS`] characters.
//! - Signatures are HMAC-SHA256 over `"<unix seconds>.<body>"`, compared in constant time.

use std::fmt;

use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::{DeliveryId, DeviceId, GroupId, TenantId, Timestamp, WebhookId};

/// The kind of the ping an operator queues with "test".
pub const TEST_KIND: &str = "webhook.test";
/// The fewest random bytes in a secret.
pub const MIN_SECRET_BYTES: usize = 32;
/// How a secret's text starts.
pub const SECRET_PREFIX: &str = "whsec_";
/// Longest last-error text kept with a delivery (characters).
pub const MAX_ERROR_CHARS: usize = 512;
/// Longest URL accepted (bytes).
pub const MAX_URL_BYTES: usize = 2048;
/// Most patterns in one filter.
pub const MAX_PATTERNS: usize = 64;
/// Default attempts before a delivery is dead.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;

/// Input the webhook rules refuse, with a message fit for an operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("invalid webhook URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("invalid event kind filter: {0}")]
    Filter(String),
    #[error("invalid webhook name: {0}")]
    Name(String),
    #[error("a webhook secret needs at least {MIN_SECRET_BYTES} random bytes")]
    WeakSecret,
    #[error("invalid retry policy: {0}")]
    Policy(String),
    #[error("delivery {0} is already pending")]
    AlreadyPending(DeliveryId),
}

/// An endpoint's URL: absolute `http` or `https`, with a host, without user name or password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub fn parse(text: &str) -> Result<WebhookUrl, WebhookError> {
        let err = |reason: &str| WebhookError::Url {
            url: text.chars().take(200).collect(),
            reason: reason.into(),
        };
        if text.len() > MAX_URL_BYTES {
            return Err(err(&format!("longer than {MAX_URL_BYTES} bytes")));
        }
        let url = url::Url::parse(text).map_err(|e| {
            err(&format!(
                "{e}; expected an absolute URL such as https://example.com/hooks/tender"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(err("the scheme must be http or https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(err("a host is required"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(err(
                "credentials in the URL are not allowed (the endpoint checks the signature instead)",
            ));
        }
        if url.fragment().is_some() {
            return Err(err(
                "a fragment (#...) is not sent to the server; remove it",
            ));
        }
        Ok(WebhookUrl(url.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which event kinds a webhook receives: exact dotted names, families (`device.*`) or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindFilter(Vec<String>);

fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl KindFilter {
    /// Every event.
    pub fn all() -> KindFilter {
        KindFilter(vec!["*".into()])
    }

    /// Checks each pattern; duplicates are dropped, order kept. At least one pattern.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<KindFilter, WebhookError> {
        if patterns.is_empty() {
            return Err(WebhookError::Filter(
                "at least one pattern is needed (\"*\" selects every event)".into(),
            ));
        }
        if patterns.len() > MAX_PATTERNS {
            return Err(WebhookError::Filter(format!(
                "at most {MAX_PATTERNS} patterns"
            )));
        }
        let mut out: Vec<String> = Vec::new();
        for p in patterns {
            let p = p.as_ref().trim();
            let valid = if p == "*" {
                true
            } else if let Some(family) = p.strip_suffix(".*") {
                family.split('.').all(is_segment)
            } else {
                let parts: Vec<&str> = p.split('.').collect();
                parts.len() >= 2 && parts.iter().all(|s| is_segment(s))
            };
            if !valid {
                let shown: String = p.chars().take(80).collect();
                return Err(WebhookError::Filter(format!(
                    "{shown:?} is not a pattern; use a dotted kind such as device.created, a \
                     family such as device.* or * for every event (lower-case letters, digits \
                     and _ between the dots)"
                )));
            }
            if !out.iter().any(|o| o == p) {
                out.push(p.to_owned());
            }
        }
        Ok(KindFilter(out))
    }

    /// A comma-separated list of patterns (the CLI's and the store's text form).
    pub fn parse(text: &str) -> Result<KindFilter, WebhookError> {
        let parts: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        KindFilter::new(&parts)
    }

    pub fn matches(&self, kind: &str) -> bool {
        self.0.iter().any(|p| {
            p == "*"
                || p == kind
                || p.strip_suffix('*')
                    .is_some_and(|prefix| kind.starts_with(prefix) && kind.len() > prefix.len())
        })
    }

    pub fn patterns(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for KindFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Checks a webhook's name: 1-128 characters, no control characters, not only blanks.
pub fn validate_name(name: &str) -> Result<(), WebhookError> {
    if name.trim().is_empty() {
        return Err(WebhookError::Name("must not be empty".into()));
    }
    if name.chars().count() > 128 {
        return Err(WebhookError::Name("at most 128 characters".into()));
    }
    if name.chars().any(char::is_control) {
        return Err(WebhookError::Name(
            "control characters are not allowed".into(),
        ));
    }
    Ok(())
}

/// The shared secret that signs deliveries: `whsec_` and the hex of the random bytes. The whole
/// text (prefix included) is the HMAC key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// A secret from random bytes the caller drew (at least [`MIN_SECRET_BYTES`]).
    pub fn from_random(bytes: &[u8]) -> Result<WebhookSecret, WebhookError> {
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(WebhookError::WeakSecret);
        }
        Ok(WebhookSecret(format!("{SECRET_PREFIX}{}", hex(bytes))))
    }

    /// A stored secret's text (as [`as_str`](Self::as_str) gave it).
    pub fn from_stored(text: &str) -> Result<WebhookSecret, WebhookError> {
        let hex_part = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(WebhookError::WeakSecret)?;
        if hex_part.len() < 2 * MIN_SECRET_BYTES || !hex_part.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(WebhookError::WeakSecret);
        }
        Ok(WebhookSecret(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

/// A registered endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub id: WebhookId,
    pub tenant_id: TenantId,
    pub name: String,
    pub url: WebhookUrl,
    pub filter: KindFilter,
    pub enabled: bool,
    pub secret: WebhookSecret,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Not attempted yet (or queued again by an operator).
    Pending,
    /// Delivered: the endpoint answered 2xx.
    Succeeded,
    /// The last attempt failed; another is due at `next_attempt_at`.
    Failed,
    /// Every attempt failed; only a redelivery sends it again.
    Dead,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 4] = [
        DeliveryState::Pending,
        DeliveryState::Succeeded,
        DeliveryState::Failed,
        DeliveryState::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Succeeded => "succeeded",
            DeliveryState::Failed => "failed",
            DeliveryState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        DeliveryState::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether the delivery still waits for an attempt.
    pub fn is_queued(self) -> bool {
        matches!(self, DeliveryState::Pending | DeliveryState::Failed)
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When to try again after a failure: exponential back-off from `base_ms`, at most `cap_ms`,
/// dead after `max_attempts` attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    base_ms: u64,
    cap_ms: u64,
    max_attempts: u32,
}

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    RetryAt(Timestamp),
    Dead,
}

impl Default for RetryPolicy {
    /// 30 s, doubling up to 1 h, 8 attempts (the last about 35 to 64 minutes after the first).
    fn default() -> Self {
        RetryPolicy {
            base_ms: 30_000,
            cap_ms: 3_600_000,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

impl RetryPolicy {
    pub fn new(base_ms: u64, cap_ms: u64, max_attempts: u32) -> Result<RetryPolicy, WebhookError> {
        if base_ms == 0 {
            return Err(WebhookError::Policy(
                "the base delay must be at least 1 ms".into(),
            ));
        }
        if cap_ms < base_ms {
            return Err(WebhookError::Policy(format!(
                "the cap ({cap_ms} ms) must not be below the base delay ({base_ms} ms)"
            )));
        }
        if cap_ms > 7 * 86_400_000 {
            return Err(WebhookError::Policy(
                "the cap must be at most 7 days".into(),
            ));
        }
        if !(1..=100).contains(&max_attempts) {
            return Err(WebhookError::Policy(format!(
                "max attempts must be 1 to 100, not {max_attempts}"
            )));
        }
        Ok(RetryPolicy {
            base_ms,
            cap_ms,
            max_attempts,
        })
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The wait after failed attempt number `attempt` (1 = the first): `base * 2^(attempt-1)`
    /// up to the cap, of which the upper half is scaled by `jitter` (the caller's random number
    /// in `0..=1`; out of range or NaN counts as the nearest bound, NaN as 0).
    pub fn delay_ms(&self, attempt: u32, jitter: f64) -> u64 {
        let shift = attempt.saturating_sub(1).min(63);
        let full = self.base_ms.saturating_mul(1u64 << shift).min(self.cap_ms);
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        let half = full / 2;
        // `half` is at most 7 days of milliseconds, exact in an f64; the product is ≤ half.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let extra = ((full - half) as f64 * jitter) as u64;
        half + extra
    }

    /// After `attempts` failed attempts (counting the one that just failed), at `now`.
    pub fn next(&self, attempts: u32, now: Timestamp, jitter: f64) -> Next {
        if attempts >= self.max_attempts {
            return Next::Dead;
        }
        let delay = i64::try_from(self.delay_ms(attempts, jitter)).unwrap_or(i64::MAX);
        Next::RetryAt(now.plus_millis(delay))
    }
}

/// One event (or test ping) for one webhook, with its attempts. `body` is the exact JSON sent,
/// fixed when the delivery is made, so every attempt and redelivery sends the same bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: DeliveryId,
    pub tenant_id: TenantId,
    pub webhook_id: WebhookId,
    /// The event delivered (`None` for a test ping).
    pub event_id: Option<u64>,
    pub kind: String,
    pub body: String,
    pub state: DeliveryState,
    pub attempts: u32,
    /// When the next attempt is due (queued deliveries only).
    pub next_attempt_at: Option<Timestamp>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Cuts `text` to at most `max` characters (on a character boundary), marking the cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

impl Delivery {
    /// A new pending delivery, due at once.
    pub fn new(
        id: DeliveryId,
        webhook: &Webhook,
        event_id: Option<u64>,
        kind: &str,
        body: String,
        now: Timestamp,
    ) -> Delivery {
        Delivery {
            id,
            tenant_id: webhook.tenant_id,
            webhook_id: webhook.id,
            event_id,
            kind: kind.to_owned(),
            body,
            state: DeliveryState::Pending,
            attempts: 0,
            next_attempt_at: Some(now),
            last_status: None,
            last_error: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Whether an attempt is due at `now`.
    pub fn is_due(&self, now: Timestamp) -> bool {
        self.state.is_queued() && self.next_attempt_at.is_some_and(|t| t <= now)
    }

    /// The endpoint answered 2xx.
    pub fn succeed(&mut self, status: u16, now: Timestamp) {
        self.attempts = self.attempts.saturating_add(1);
        self.state = DeliveryState::Succeeded;
        self.next_attempt_at = None;
        self.last_status = Some(status);
        self.last_error = None;
        self.updated_at = now;
    }

    /// The attempt failed: a non-2xx `status`, or no answer (`status` `None`) with `error`.
    pub fn fail(
        &mut self,
        status: Option<u16>,
        error: &str,
        now: Timestamp,
        policy: &RetryPolicy,
        jitter: f64,
    ) {
        self.attempts = self.attempts.saturating_add(1);
        self.last_status = status;
        self.last_error = Some(cut(error, MAX_ERROR_CHARS));
        self.updated_at = now;
        match policy.next(self.attempts, now, jitter) {
            Next::RetryAt(at) => {
                self.state = DeliveryState::Failed;
                self.next_attempt_at = Some(at);
            }
            Next::Dead => {
                self.state = DeliveryState::Dead;
                self.next_attempt_at = None;
            }
        }
    }

    /// An operator sends it again: pending, due now, attempts counted afresh.
    pub fn redeliver(&mut self, now: Timestamp) -> Result<(), WebhookError> {
        if self.state == DeliveryState::Pending {
            return Err(WebhookError::AlreadyPending(self.id));
        }
        self.state = DeliveryState::Pending;
        self.attempts = 0;
        self.next_attempt_at = Some(now);
        self.updated_at = now;
        Ok(())
    }
}

/// An event of the log as webhooks see it: the kind is its dotted name, whether or not
/// [`EventKind`](crate::event::EventKind) knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEvent {
    pub id: u64,
    pub tenant_id: TenantId,
    pub at: Timestamp,
    pub kind: String,
    pub device_id: Option<DeviceId>,
    pub group_id: Option<GroupId>,
    pub data: Map<String, Value>,
}

impl LogEvent {
    /// The delivery body for this event.
    pub fn body(&self) -> String {
        body(
            Some(self.id),
            &self.kind,
            self.at,
            self.tenant_id,
            self.device_id,
            self.group_id,
            &self.data,
        )
    }
}

/// The JSON body of a delivery: `{"id","kind","at","tenant","device","group","data"}`; `id`
/// is the event's id (`null` for a test ping).
#[allow(clippy::too_many_arguments)]
pub fn body(
    event_id: Option<u64>,
    kind: &str,
    at: Timestamp,
    tenant: TenantId,
    device: Option<DeviceId>,
    group: Option<GroupId>,
    data: &Map<String, Value>,
) -> String {
    serde_json::json!({
        "id": event_id,
        "kind": kind,
        "at": at.to_rfc3339(),
        "tenant": tenant.to_string(),
        "device": device.map(|d| d.to_string()),
        "group": group.map(|g| g.to_string()),
        "data": data,
    })
    .to_string()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    text.as_bytes()
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

fn mac(secret: &str, unix_seconds: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length: new_from_slice cannot fail.
    let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts any key length"),
    };
    m.update(unix_seconds.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The `Tender-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn sign(secret: &str, unix_seconds: i64, body: &[u8]) -> String {
    let tag = mac(secret, unix_seconds, body).finalize().into_bytes();
    format!("t={unix_seconds},v1={}", hex(&tag))
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is malformed (expected t=<unix seconds>,v1=<hex>)")]
    Malformed,
    #[error("the signature's time is more than {0} s away from now")]
    Stale(u64),
    #[error("no v1 signature matches")]
    Mismatch,
}

/// Checks a `Tender-Signature` header against `body`: the time within `tolerance_secs` of `now`
/// and some `v1` equal (in constant time) to the HMAC under `secret`.
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now: Timestamp,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let mut t: Option<i64> = None;
    let mut tags: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match k {
            "t" => t = Some(v.parse().map_err(|_| SignatureError::Malformed)?),
            "v1" => tags.push(unhex(v).ok_or(SignatureError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if tags.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let now_secs = now.unix_millis().div_euclid(1000);
    if now_secs.abs_diff(t) > tolerance_secs {
        return Err(SignatureError::Stale(tolerance_secs));
    }
    let expected = mac(secret, t, body);
    if tags
        .iter()
        .any(|tag| expected.clone().verify_slice(tag).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use uuid::Uuid;

    const NOW: Timestamp = Timestamp::from_unix_millis(1_790_000_000_000);

    fn webhook() -> Webhook {
        Webhook {
            id: WebhookId::from_uuid(Uuid::from_u128(1)),
            tenant_id: TenantId::from_uuid(Uuid::from_u128(2)),
            name: "ops".into(),
            url: WebhookUrl::parse("https://example.com/hook").unwrap(),
            filter: KindFilter::all(),
            enabled: true,
            secret: WebhookSecret::from_random(&[7; 32]).unwrap(),
            created_at: NOW,
            updated_at: NOW,
        }
    }

    #[test]
    fn urls_are_absolute_http_without_credentials() {
        assert_eq!(
            WebhookUrl::parse("https://example.com/a?b=c")
                .unwrap()
                .as_str(),
            "https://example.com/a?b=c"
        );
        assert!(WebhookUrl::parse("http://127.0.0.1:8080/x").is_ok());
        for bad in [
            "",
            "example.com/hook",
            "/hook",
            "ftp://example.com/",
            "file:///etc/passwd",
            "https://user:pw@example.com/",
            "https://user@example.com/",
            "https://example.com/#frag",
            "mailto:ops@example.com",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad} was accepted");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert!(WebhookUrl::parse(&long).is_err());
    }

    #[test]
    fn filters_match_names_families_and_everything() {
        let f = KindFilter::parse("device.*, alert.fired,deployment.state_changed").unwrap();
        assert!(f.matches("device.created"));
        assert!(f.matches("device.state_changed"));
        assert!(f.matches("alert.fired"));
        assert!(!f.matches("alert.resolved"));
        assert!(!f.matches("devices.created"));
        assert!(!f.matches("device"));
        assert!(!f.matches("twin.desired_changed"));
        // Kinds the core does not know yet flow through families and `*`.
        assert!(
            KindFilter::parse("alert.*")
                .unwrap()
                .matches("alert.acknowledged")
        );
        assert!(KindFilter::all().matches("anything.new"));
        assert_eq!(
            f.to_string(),
            "device.*,alert.fired,deployment.state_changed"
        );
        assert_eq!(
            KindFilter::parse("a.b,a.b").unwrap().patterns(),
            &["a.b".to_owned()]
        );
        for bad in [
            "",
            "device",
            "Device.created",
            "device.",
            ".x",
            "de vice.x",
            "a.*.b",
            "**",
        ] {
            assert!(KindFilter::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("k.n{i}")).collect();
        assert!(KindFilter::new(&many).is_err());
    }

    #[test]
    fn names_and_secrets_are_checked() {
        assert!(validate_name("ops pager").is_ok());
        assert!(validate_name("  ").is_err());
        assert!(validate_name("a\nb").is_err());
        assert!(validate_name(&"x".repeat(129)).is_err());
        assert_eq!(
            WebhookSecret::from_random(&[1; 31]),
            Err(WebhookError::WeakSecret)
        );
        let s = WebhookSecret::from_random(&[0xab; 32]).unwrap();
        assert_eq!(s.as_str(), format!("whsec_{}", "ab".repeat(32)));
        assert_eq!(WebhookSecret::from_stored(s.as_str()).unwrap(), s);
        assert!(WebhookSecret::from_stored("whsec_abcd").is_err());
        assert!(!format!("{s:?}").contains("abab"));
    }

    #[test]
    fn retry_delays_double_up_to_the_cap_with_jitter() {
        let p = RetryPolicy::new(1000, 10_000, 5).unwrap();
        assert_eq!(p.delay_ms(1, 1.0), 1000);
        assert_eq!(p.delay_ms(1, 0.0), 500);
        assert_eq!(p.delay_ms(2, 1.0), 2000);
        assert_eq!(p.delay_ms(3, 0.5), 3000);
        assert_eq!(p.delay_ms(5, 1.0), 10_000);
        assert_eq!(p.delay_ms(99, 1.0), 10_000);
        assert_eq!(p.delay_ms(99, f64::NAN), 5000);
        assert_eq!(p.delay_ms(1, 7.0), 1000);
        assert_eq!(p.next(1, NOW, 1.0), Next::RetryAt(NOW.plus_millis(1000)));
        assert_eq!(p.next(4, NOW, 1.0), Next::RetryAt(NOW.plus_millis(8000)));
        assert_eq!(p.next(5, NOW, 1.0), Next::Dead);
        assert_eq!(RetryPolicy::default().max_attempts(), 8);
        assert!(RetryPolicy::new(0, 10, 3).is_err());
        assert!(RetryPolicy::new(10, 5, 3).is_err());
        assert!(RetryPolicy::new(10, 50, 0).is_err());
        assert!(RetryPolicy::new(10, 50, 101).is_err());
    }

    #[test]
    fn deliveries_retry_then_die_and_can_be_redelivered() {
        let w = webhook();
        let p = RetryPolicy::new(1000, 60_000, 3).unwrap();
        let mut d = Delivery::new(
            DeliveryId::from_uuid(Uuid::from_u128(5)),
            &w,
            Some(42),
            "device.created",
            "{}".into(),
            NOW,
        );
        assert!(d.is_due(NOW));
        d.fail(Some(500), "server error", NOW, &p, 1.0);
        assert_eq!(d.state, DeliveryState::Failed);
        assert_eq!(d.attempts, 1);
        assert_eq!(d.next_attempt_at, Some(NOW.plus_millis(1000)));
        assert!(!d.is_due(NOW.plus_millis(999)));
        assert!(d.is_due(NOW.plus_millis(1000)));
        let long = "é".repeat(2 * MAX_ERROR_CHARS);
        d.fail(None, &long, NOW, &p, 1.0);
        assert_eq!(d.last_status, None);
        assert_eq!(
            d.last_error.as_deref().map(|e| e.chars().count()),
            Some(MAX_ERROR_CHARS)
        );
        d.fail(Some(503), "unavailable", NOW, &p, 1.0);
        assert_eq!(d.state, DeliveryState::Dead);
        assert_eq!(d.next_attempt_at, None);
        assert!(!d.is_due(NOW.plus_millis(1_000_000)));
        d.redeliver(NOW).unwrap();
        assert_eq!((d.state, d.attempts), (DeliveryState::Pending, 0));
        assert_eq!(d.redeliver(NOW), Err(WebhookError::AlreadyPending(d.id)));
        d.succeed(204, NOW);
        assert_eq!(d.state, DeliveryState::Succeeded);
        assert_eq!(
            (d.attempts, d.last_status, d.last_error.clone()),
            (1, Some(204), None)
        );
        for s in DeliveryState::ALL {
            assert_eq!(DeliveryState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn signatures_verify_and_refuse_tampering() {
        let secret = "whsec_0123";
        let body = br#"{"id":1}"#;
        let header = sign(secret, 1_790_000_000, body);
        assert!(header.starts_with("t=1790000000,v1="));
        assert_eq!(header.len(), "t=1790000000,v1=".len() + 64);
        assert_eq!(verify(secret, &header, body, NOW, 300), Ok(()));
        assert_eq!(
            verify(secret, &header, br#"{"id":2}"#, NOW, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("whsec_other", &header, body, NOW, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(secret, &header, body, NOW.plus_millis(301_000), 300),
            Err(SignatureError::Stale(300))
        );
        // The time is signed: moving it breaks the signature.
        let moved = header.replace("t=1790000000", "t=1790000001");
        assert_eq!(
            verify(secret, &moved, body, NOW, 300),
            Err(SignatureError::Mismatch)
        );
        // Several v1 (e.g. during a rotation): one match is enough.
        let two = format!("{header},v1={}", "00".repeat(32));
        assert_eq!(verify(secret, &two, body, NOW, 300), Ok(()));
        for bad in [
            "",
            "t=1",
            "v1=00",
            "t=x,v1=00",
            "t=1790000000,v1=zz",
            "garbage",
        ] {
            assert_eq!(
                verify(secret, bad, body, NOW, 300),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        // A known vector (HMAC-SHA256 of "1790000000.{\"id\":1}" under "whsec_0123").
        assert_eq!(
            header,
            "t=1790000000,v1=1ef149b67378c616fa0a2a844c401327ca101702c9903138b006e2f50237a7ef"
        );
    }

    #[test]
    fn bodies_have_the_documented_fields() {
        let w = webhook();
        let mut data = Map::new();
        data.insert("to".into(), "accepted".into());
        let text = body(
            Some(7),
            "device.state_changed",
            NOW,
            w.tenant_id,
            None,
            None,
            &data,
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"], 7);
        assert_eq!(v["kind"], "device.state_changed");
        assert_eq!(v["at"], NOW.to_rfc3339());
        assert_eq!(v["tenant"], w.tenant_id.to_string());
        assert_eq!(v["device"], Value::Null);
        assert_eq!(v["data"]["to"], "accepted");
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "ab…");
    }
}
