//! Alerts: rules an operator defines, the per-(rule, device) tracker that decides when a rule
//! fires and resolves, and the alert record with its lifecycle (see docs/alerts.md).
//!
//! A rule's condition is text:
//!
//! ```text
//! temperature > 80 for 5m            threshold, held for 5 minutes (clear: < 76, 5% below)
//! cpu.load >= 0.9 for 30s clear < 0.5
//! battery < 10                       fires at the first sample below 10 (clear: > 10.5)
//! offline for 10m                    the device has had no connection for 10 minutes
//! update failed                      the device's last deployment update failed/rolled back
//! reported.battery.level < 20        the device's reported twin state (= != > >= < <=)
//! ```
//!
//! **Invariants:** everything is driven by the timestamps passed in (no clock is read); a
//! threshold fires only after the condition held continuously for its duration (a metric keeps
//! its last value until its next sample; a sample older than the newest one seen is ignored)
//! and resolves only once the value is past the clear level, which lies beyond the threshold
//! (so a value hovering at the threshold does not flap); a resolved [`Alert`] never changes;
//! at most one alert per rule and device is open (the store enforces it).

use std::fmt;

use crate::telemetry::MetricName;
use crate::{AlertId, AlertRuleId, DeviceId, GroupId, TenantId, Timestamp};

/// The longest duration a condition may name: 7 days.
pub const MAX_DURATION_MS: i64 = 7 * 24 * 3_600_000;
/// The longest condition text.
pub const MAX_CONDITION_LEN: usize = 512;
/// The longest rule name (characters).
pub const MAX_RULE_NAME_LEN: usize = 128;
/// The longest acknowledgement note (bytes).
pub const MAX_NOTE_LEN: usize = 4096;

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which devices a rule covers.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    /// Every device of the tenant.
    All,
    /// Members of a group (a static group with its subgroups, or a dynamic group).
    Group(GroupId),
    /// Devices matching a device query (its canonical text).
    Query(String),
}

impl Scope {
    /// `all`, `group:<id>` or `query:<text>`: how a scope is stored.
    pub fn to_text(&self) -> String {
        match self {
            Scope::All => "all".to_owned(),
            Scope::Group(g) => format!("group:{g}"),
            Scope::Query(q) => format!("query:{q}"),
        }
    }

    /// Reads [`Scope::to_text`]; a query is parsed and kept in canonical form.
    pub fn from_text(s: &str) -> Result<Scope, String> {
        if s == "all" {
            Ok(Scope::All)
        } else if let Some(g) = s.strip_prefix("group:") {
            g.parse()
                .map(Scope::Group)
                .map_err(|e: crate::ids::InvalidId| e.to_string())
        } else if let Some(q) = s.strip_prefix("query:") {
            crate::query::parse(q)
                .map(|q| Scope::Query(q.to_string()))
                .map_err(|e| format!("scope query {e}"))
        } else {
            Err(format!(
                "unknown scope {s:?}: expected all, group:<id> or query:<device query>"
            ))
        }
    }
}

/// A comparison of a metric's value with a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Gt,
    Ge,
    Lt,
    Le,
}

impl CompareOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
        }
    }

    pub fn holds(self, value: f64, level: f64) -> bool {
        match self {
            CompareOp::Gt => value > level,
            CompareOp::Ge => value >= level,
            CompareOp::Lt => value < level,
            CompareOp::Le => value <= level,
        }
    }

    /// Whether the comparison is satisfied by high values.
    pub fn is_upper(self) -> bool {
        matches!(self, CompareOp::Gt | CompareOp::Ge)
    }
}

/// A metric crossing a level.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub metric: MetricName,
    pub op: CompareOp,
    pub value: f64,
    /// How long the comparison must hold before the rule fires (0: at once).
    pub for_ms: i64,
    /// The comparison that resolves a firing alert: the opposite direction, at or beyond the
    /// threshold (default: 5% of the threshold's magnitude beyond it).
    pub clear_op: CompareOp,
    pub clear_value: f64,
}

/// What makes a rule fire for a device.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Threshold(Threshold),
    /// The device has been offline (no open connection) for this long.
    Offline {
        for_ms: i64,
    },
    /// A deployment update on the device ended failed or rolled back; resolves when a later
    /// update succeeds (or by acknowledging and waiting for success).
    UpdateFailed,
    /// A value of the device's reported twin state compares true (`reported.a.b OP VALUE`,
    /// VALUE a JSON number, string or boolean); resolves when it no longer does. An absent
    /// value fails every comparison, as in device queries.
    TwinReported {
        path: Vec<String>,
        op: crate::query::CmpOp,
        value: serde_json::Value,
    },
}

/// Why a condition text was refused: a byte offset and one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {position}: {message}")]
pub struct ConditionError {
    pub position: usize,
    pub message: String,
}

fn err<T>(position: usize, message: impl Into<String>) -> Result<T, ConditionError> {
    Err(ConditionError {
        position,
        message: message.into(),
    })
}

/// Words of the condition text with their byte offsets.
fn tokens(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if let Some(s) = start.take() {
                out.push((s, &text[s..i]));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        out.push((s, &text[s..]));
    }
    out
}

fn parse_op(at: usize, s: &str) -> Result<CompareOp, ConditionError> {
    Ok(match s {
        ">" => CompareOp::Gt,
        ">=" => CompareOp::Ge,
        "<" => CompareOp::Lt,
        "<=" => CompareOp::Le,
        _ => return err(at, format!("expected one of > >= < <=, found {s:?}")),
    })
}

fn parse_number(at: usize, s: &str) -> Result<f64, ConditionError> {
    match s.parse::<f64>() {
        Ok(n) if n.is_finite() && !s.starts_with(['+', 'i', 'I', 'n', 'N']) => Ok(n),
        _ => err(at, format!("expected a number, found {s:?}")),
    }
}

/// `<digits><s|m|h>`, at least 1 s, at most [`MAX_DURATION_MS`].
pub fn parse_duration(at: usize, s: &str) -> Result<i64, ConditionError> {
    let (digits, unit) = s.split_at(s.len().saturating_sub(1));
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return err(
                at,
                format!("expected a duration such as 30s, 5m or 2h, found {s:?}"),
            );
        }
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 9 {
        return err(
            at,
            format!("expected a duration such as 30s, 5m or 2h, found {s:?}"),
        );
    }
    let n: i64 = digits.parse().unwrap_or(i64::MAX);
    let ms = n.saturating_mul(unit_ms);
    if ms == 0 {
        return err(at, "a duration must be at least 1s");
    }
    if ms > MAX_DURATION_MS {
        return err(at, "a duration must be at most 7 days (168h)");
    }
    Ok(ms)
}

fn format_duration(ms: i64) -> String {
    if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1_000)
    }
}

fn format_number(n: f64) -> String {
    crate::query::canonical_number_text(n)
}

/// Parses a condition (grammar in the module documentation).
pub fn parse_condition(text: &str) -> Result<Condition, ConditionError> {
    if text.len() > MAX_CONDITION_LEN {
        return err(
            MAX_CONDITION_LEN,
            format!("a condition is at most {MAX_CONDITION_LEN} bytes"),
        );
    }
    let toks = tokens(text);
    let end = text.len();
    let Some(&(p0, first)) = toks.first() else {
        return err(
            0,
            "empty condition: expected e.g. `temperature > 80 for 5m`, `offline for 10m` or `update failed`",
        );
    };
    let at = |i: usize| toks.get(i).map_or(end, |t| t.0);
    let word = |i: usize| toks.get(i).map(|t| t.1);
    let expect_end = |i: usize| -> Result<(), ConditionError> {
        match toks.get(i) {
            None => Ok(()),
            Some(&(p, w)) => err(p, format!("unexpected {w:?} after the condition")),
        }
    };
    match first {
        "offline" => {
            if word(1) != Some("for") {
                return err(
                    at(1),
                    "expected `for <duration>` after offline, e.g. `offline for 10m`",
                );
            }
            let Some(d) = word(2) else {
                return err(at(2), "expected a duration such as 30s, 5m or 2h");
            };
            let for_ms = parse_duration(at(2), d)?;
            expect_end(3)?;
            Ok(Condition::Offline { for_ms })
        }
        "update" => {
            if word(1) != Some("failed") {
                return err(at(1), "expected `update failed`");
            }
            expect_end(2)?;
            Ok(Condition::UpdateFailed)
        }
        reported if reported.starts_with("reported.") => {
            let path: Vec<String> = reported["reported.".len()..]
                .split('.')
                .map(str::to_owned)
                .collect();
            if path.iter().any(|k| k.is_empty() || k.chars().count() > 128) {
                return err(
                    p0,
                    "expected a path such as reported.battery.level (keys of 1-128 characters)",
                );
            }
            let Some(o) = word(1) else {
                return err(at(1), "expected one of = != > >= < <= after the path");
            };
            let op = match o {
                "=" => crate::query::CmpOp::Eq,
                "!=" => crate::query::CmpOp::Ne,
                ">" => crate::query::CmpOp::Gt,
                ">=" => crate::query::CmpOp::Ge,
                "<" => crate::query::CmpOp::Lt,
                "<=" => crate::query::CmpOp::Le,
                _ => {
                    return err(
                        at(1),
                        format!("expected one of = != > >= < <=, found {o:?}"),
                    );
                }
            };
            let rest = text.get(at(2)..).unwrap_or("").trim();
            let value: serde_json::Value = match serde_json::from_str(rest) {
                Ok(
                    v @ (serde_json::Value::Number(_)
                    | serde_json::Value::String(_)
                    | serde_json::Value::Bool(_)),
                ) => v,
                _ => {
                    return err(
                        at(2),
                        "expected one value: a number, a \"quoted string\", true or false",
                    );
                }
            };
            if value.is_boolean()
                && !matches!(op, crate::query::CmpOp::Eq | crate::query::CmpOp::Ne)
            {
                return err(at(1), "true and false compare only with = and !=");
            }
            Ok(Condition::TwinReported { path, op, value })
        }
        metric => {
            let metric = MetricName::parse(metric).map_err(|_| ConditionError {
                position: p0,
                message: format!(
                    "{metric:?} is not a metric name (letters, digits and _ . - : /), nor offline or update"
                ),
            })?;
            let Some(op) = word(1) else {
                return err(at(1), "expected one of > >= < <= after the metric");
            };
            let op = parse_op(at(1), op)?;
            let Some(v) = word(2) else {
                return err(at(2), "expected a number after the comparison");
            };
            let value = parse_number(at(2), v)?;
            let mut i = 3;
            let mut for_ms = 0;
            if word(i) == Some("for") {
                let Some(d) = word(i + 1) else {
                    return err(at(i + 1), "expected a duration such as 30s, 5m or 2h");
                };
                for_ms = parse_duration(at(i + 1), d)?;
                i += 2;
            }
            let margin = value.abs() * 0.05;
            let (mut clear_op, mut clear_value) = if op.is_upper() {
                (CompareOp::Lt, value - margin)
            } else {
                (CompareOp::Gt, value + margin)
            };
            if word(i) == Some("clear") {
                let Some(o) = word(i + 1) else {
                    return err(
                        at(i + 1),
                        "expected a comparison after clear, e.g. `clear < 75`",
                    );
                };
                let cop = parse_op(at(i + 1), o)?;
                if cop.is_upper() == op.is_upper() {
                    return err(
                        at(i + 1),
                        format!(
                            "clear must compare the other way than {} (use {})",
                            op.as_str(),
                            if op.is_upper() { "< or <=" } else { "> or >=" }
                        ),
                    );
                }
                let Some(cv) = word(i + 2) else {
                    return err(at(i + 2), "expected a number after the clear comparison");
                };
                let cval = parse_number(at(i + 2), cv)?;
                let beyond = if op.is_upper() {
                    cval <= value
                } else {
                    cval >= value
                };
                if !beyond {
                    return err(
                        at(i + 2),
                        format!(
                            "the clear level must be at or {} the threshold {}",
                            if op.is_upper() { "below" } else { "above" },
                            format_number(value)
                        ),
                    );
                }
                // A clear level that the firing comparison also satisfies would never resolve.
                if op.holds(cval, value) && cop.holds(cval, cval) {
                    return err(at(i + 2), "the clear comparison overlaps the threshold");
                }
                clear_op = cop;
                clear_value = cval;
                i += 3;
            }
            if let Some(&(p, w)) = toks.get(i) {
                return err(
                    p,
                    format!("unexpected {w:?}: expected `for <duration>` or `clear <op> <number>`"),
                );
            }
            Ok(Condition::Threshold(Threshold {
                metric,
                op,
                value,
                for_ms,
                clear_op,
                clear_value,
            }))
        }
    }
}

impl fmt::Display for Condition {
    /// The canonical text, which parses back to the same condition.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Offline { for_ms } => write!(f, "offline for {}", format_duration(*for_ms)),
            Condition::UpdateFailed => f.write_str("update failed"),
            Condition::TwinReported { path, op, value } => {
                write!(f, "reported.{} {} {}", path.join("."), op.as_str(), value)
            }
            Condition::Threshold(t) => {
                write!(
                    f,
                    "{} {} {}",
                    t.metric.as_str(),
                    t.op.as_str(),
                    format_number(t.value)
                )?;
                if t.for_ms > 0 {
                    write!(f, " for {}", format_duration(t.for_ms))?;
                }
                write!(
                    f,
                    " clear {} {}",
                    t.clear_op.as_str(),
                    format_number(t.clear_value)
                )
            }
        }
    }
}

impl Condition {
    /// Whether a reported-state condition holds for this reported document (false for other
    /// conditions).
    pub fn reported_holds(&self, reported: &serde_json::Value) -> bool {
        let Condition::TwinReported { path, op, value } = self else {
            return false;
        };
        let Some(actual) = crate::query::json_at(reported, path) else {
            return false;
        };
        use serde_json::Value as V;
        let ord = match (actual, value) {
            (V::Number(a), V::Number(b)) => match (a.as_f64(), b.as_f64()) {
                (Some(a), Some(b)) => a.partial_cmp(&b),
                _ => None,
            },
            (V::String(a), V::String(b)) => Some(a.cmp(b)),
            (V::Bool(a), V::Bool(b)) => Some(a.cmp(b)),
            _ => None,
        };
        match ord {
            Some(o) => op.holds(o),
            // Values of different types are never equal; `!=` needs a comparable value too.
            None => false,
        }
    }

    /// The metric a threshold watches.
    pub fn metric(&self) -> Option<&MetricName> {
        match self {
            Condition::Threshold(t) => Some(&t.metric),
            _ => None,
        }
    }
}

/// An operator's rule.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    pub id: AlertRuleId,
    pub tenant_id: TenantId,
    pub name: String,
    pub severity: Severity,
    pub scope: Scope,
    pub condition: Condition,
    pub enabled: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub created_by: Option<String>,
}

/// Checks a rule name: 1-128 characters, no control characters.
pub fn validate_rule_name(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if n == 0 || n > MAX_RULE_NAME_LEN {
        return Err(format!(
            "a rule name has 1 to {MAX_RULE_NAME_LEN} characters"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("a rule name has no control characters".to_owned());
    }
    Ok(())
}

/// What a tracker learns about its device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input {
    /// A sample of the rule's metric, taken at the time given with it.
    Sample(f64),
    /// Time passes (no news).
    Tick,
    /// The device opened a connection.
    Connected,
    /// The device lost its last connection.
    Disconnected,
    /// A deployment update on the device failed or rolled back.
    UpdateFailed,
    /// A deployment update on the device succeeded.
    UpdateSucceeded,
    /// The device's reported state changed; whether the condition now holds.
    Reported(bool),
}

/// What a tracker decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// Open an alert.
    Fire { value: Option<f64>, reason: String },
    /// Resolve the open alert.
    Resolve { value: Option<f64>, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// The condition does not hold.
    Clear,
    /// The condition holds since then, not yet long enough.
    Pending { since: Timestamp },
    /// An alert is open.
    Firing,
}

/// The state of one rule for one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracker {
    phase: Phase,
    /// The newest sample seen (time, value).
    last: Option<(Timestamp, f64)>,
}

impl Tracker {
    /// A tracker with no alert open.
    pub fn new() -> Self {
        Tracker {
            phase: Phase::Clear,
            last: None,
        }
    }

    /// A tracker for a device whose alert for this rule is open (after a restart): the alert
    /// stays open until the condition is seen to clear.
    pub fn firing() -> Self {
        Tracker {
            phase: Phase::Firing,
            last: None,
        }
    }

    pub fn is_firing(&self) -> bool {
        self.phase == Phase::Firing
    }

    /// Whether the condition holds without having fired yet.
    pub fn is_pending(&self) -> bool {
        matches!(self.phase, Phase::Pending { .. })
    }

    /// Forget a firing state (the alert was resolved by other means).
    pub fn reset(&mut self) {
        self.phase = Phase::Clear;
    }

    /// A fire could not be carried out (the store failed): the next tick fires again, with the
    /// newest value.
    pub fn retry_fire(&mut self) {
        self.phase = Phase::Pending {
            since: Timestamp::UNIX_EPOCH,
        };
    }

    /// A sample of the rule's metric.
    pub fn observe(&mut self, cond: &Condition, value: f64, at: Timestamp) -> Option<Transition> {
        self.apply(cond, Input::Sample(value), at)
    }

    /// Time passes: fires a condition that has now held long enough.
    pub fn tick(&mut self, cond: &Condition, now: Timestamp) -> Option<Transition> {
        self.apply(cond, Input::Tick, now)
    }

    /// One input at a time.
    pub fn apply(&mut self, cond: &Condition, input: Input, at: Timestamp) -> Option<Transition> {
        match cond {
            Condition::Threshold(t) => self.threshold(t, input, at),
            Condition::Offline { for_ms } => self.offline(*for_ms, input, at),
            Condition::TwinReported { path, op, value } => match (input, self.phase) {
                (Input::Reported(true), Phase::Clear | Phase::Pending { .. })
                | (Input::Tick, Phase::Pending { .. }) => {
                    self.phase = Phase::Firing;
                    Some(Transition::Fire {
                        value: None,
                        reason: format!("reported.{} {} {}", path.join("."), op.as_str(), value),
                    })
                }
                (Input::Reported(false), Phase::Firing) => {
                    self.phase = Phase::Clear;
                    Some(Transition::Resolve {
                        value: None,
                        reason: "the reported state no longer matches".to_owned(),
                    })
                }
                _ => None,
            },
            Condition::UpdateFailed => match (input, self.phase) {
                (Input::UpdateFailed, Phase::Clear | Phase::Pending { .. })
                | (Input::Tick, Phase::Pending { .. }) => {
                    self.phase = Phase::Firing;
                    Some(Transition::Fire {
                        value: None,
                        reason: "a deployment update failed".to_owned(),
                    })
                }
                (Input::UpdateSucceeded, Phase::Firing) => {
                    self.phase = Phase::Clear;
                    Some(Transition::Resolve {
                        value: None,
                        reason: "a deployment update succeeded".to_owned(),
                    })
                }
                _ => None,
            },
        }
    }

    fn threshold(&mut self, t: &Threshold, input: Input, at: Timestamp) -> Option<Transition> {
        let held_long_enough =
            |since: Timestamp, now: Timestamp| now.unix_millis() - since.unix_millis() >= t.for_ms;
        let fire = |v: f64| Transition::Fire {
            value: Some(v),
            reason: format!(
                "{} is {} ({} {})",
                t.metric.as_str(),
                format_number(v),
                t.op.as_str(),
                format_number(t.value)
            ),
        };
        match input {
            Input::Sample(v) => {
                if let Some((last_at, _)) = self.last
                    && at < last_at
                {
                    return None; // older than what we know: ignored
                }
                self.last = Some((at, v));
                let breach = t.op.holds(v, t.value);
                match self.phase {
                    Phase::Clear if breach => {
                        if t.for_ms == 0 {
                            self.phase = Phase::Firing;
                            return Some(fire(v));
                        }
                        self.phase = Phase::Pending { since: at };
                        None
                    }
                    Phase::Clear => None,
                    Phase::Pending { since } if breach => {
                        if held_long_enough(since, at) {
                            self.phase = Phase::Firing;
                            Some(fire(v))
                        } else {
                            None
                        }
                    }
                    Phase::Pending { .. } => {
                        self.phase = Phase::Clear;
                        None
                    }
                    Phase::Firing if t.clear_op.holds(v, t.clear_value) => {
                        self.phase = Phase::Clear;
                        Some(Transition::Resolve {
                            value: Some(v),
                            reason: format!(
                                "{} is {} ({} {})",
                                t.metric.as_str(),
                                format_number(v),
                                t.clear_op.as_str(),
                                format_number(t.clear_value)
                            ),
                        })
                    }
                    Phase::Firing => None,
                }
            }
            Input::Tick => match (self.phase, self.last) {
                (Phase::Pending { since }, Some((_, v))) if held_long_enough(since, at) => {
                    self.phase = Phase::Firing;
                    Some(fire(v))
                }
                _ => None,
            },
            _ => None,
        }
    }

    fn offline(&mut self, for_ms: i64, input: Input, at: Timestamp) -> Option<Transition> {
        match (input, self.phase) {
            (Input::Disconnected, Phase::Clear) => {
                self.phase = Phase::Pending { since: at };
                None
            }
            (Input::Connected, Phase::Pending { .. }) => {
                self.phase = Phase::Clear;
                None
            }
            (Input::Connected, Phase::Firing) => {
                self.phase = Phase::Clear;
                Some(Transition::Resolve {
                    value: None,
                    reason: "the device is back online".to_owned(),
                })
            }
            (Input::Tick, Phase::Pending { since })
                if at.unix_millis() - since.unix_millis() >= for_ms =>
            {
                self.phase = Phase::Firing;
                Some(Transition::Fire {
                    value: None,
                    reason: format!("offline since {}", since.to_rfc3339()),
                })
            }
            _ => None,
        }
    }
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new()
    }
}

/// Where an alert is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertState {
    Firing,
    Acknowledged,
    Resolved,
}

impl AlertState {
    pub const ALL: [AlertState; 3] = [
        AlertState::Firing,
        AlertState::Acknowledged,
        AlertState::Resolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<AlertState> {
        AlertState::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Firing or acknowledged.
    pub fn is_open(self) -> bool {
        self != AlertState::Resolved
    }
}

impl fmt::Display for AlertState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One firing of a rule on a device, until it resolves.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub id: AlertId,
    pub tenant_id: TenantId,
    pub rule_id: AlertRuleId,
    pub device_id: DeviceId,
    /// The rule's name and severity when it fired.
    pub rule_name: String,
    pub severity: Severity,
    pub state: AlertState,
    pub fired_at: Timestamp,
    pub value: Option<f64>,
    pub reason: String,
    pub acknowledged_at: Option<Timestamp>,
    pub acknowledged_by: Option<String>,
    pub ack_note: Option<String>,
    pub resolved_at: Option<Timestamp>,
    pub resolve_reason: Option<String>,
}

/// An alert lifecycle change the rules forbid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlertError {
    #[error("the alert is already acknowledged")]
    AlreadyAcknowledged,
    #[error("the alert is resolved: a resolved alert never changes")]
    Resolved,
    #[error("an acknowledgement note is at most {MAX_NOTE_LEN} bytes")]
    NoteTooLong,
}

impl Alert {
    /// A new firing alert.
    pub fn fire(
        id: AlertId,
        rule: &AlertRule,
        device: DeviceId,
        at: Timestamp,
        value: Option<f64>,
        reason: String,
    ) -> Alert {
        Alert {
            id,
            tenant_id: rule.tenant_id,
            rule_id: rule.id,
            device_id: device,
            rule_name: rule.name.clone(),
            severity: rule.severity,
            state: AlertState::Firing,
            fired_at: at,
            value,
            reason,
            acknowledged_at: None,
            acknowledged_by: None,
            ack_note: None,
            resolved_at: None,
            resolve_reason: None,
        }
    }

    /// A user acknowledges a firing alert; it stays open until the condition clears.
    pub fn acknowledge(&mut self, by: &str, note: &str, at: Timestamp) -> Result<(), AlertError> {
        match self.state {
            AlertState::Resolved => return Err(AlertError::Resolved),
            AlertState::Acknowledged => return Err(AlertError::AlreadyAcknowledged),
            AlertState::Firing => {}
        }
        if note.len() > MAX_NOTE_LEN {
            return Err(AlertError::NoteTooLong);
        }
        self.state = AlertState::Acknowledged;
        self.acknowledged_at = Some(at);
        self.acknowledged_by = Some(by.to_owned());
        self.ack_note = Some(note.to_owned());
        Ok(())
    }

    /// The condition cleared (or the rule went away).
    pub fn resolve(&mut self, reason: &str, at: Timestamp) -> Result<(), AlertError> {
        if self.state == AlertState::Resolved {
            return Err(AlertError::Resolved);
        }
        self.state = AlertState::Resolved;
        self.resolved_at = Some(at);
        self.resolve_reason = Some(reason.to_owned());
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_unix_millis(1_700_000_000_000 + s * 1000)
    }

    fn cond(text: &str) -> Condition {
        parse_condition(text).unwrap()
    }

    fn is_fire(t: &Option<Transition>) -> bool {
        matches!(t, Some(Transition::Fire { .. }))
    }

    fn is_resolve(t: &Option<Transition>) -> bool {
        matches!(t, Some(Transition::Resolve { .. }))
    }

    #[test]
    fn parses_thresholds_with_default_and_explicit_clear() {
        let Condition::Threshold(t) = cond("temperature > 80 for 5m") else {
            panic!("threshold expected");
        };
        assert_eq!(t.metric.as_str(), "temperature");
        assert_eq!(t.op, CompareOp::Gt);
        assert_eq!(t.value, 80.0);
        assert_eq!(t.for_ms, 300_000);
        assert_eq!((t.clear_op, t.clear_value), (CompareOp::Lt, 76.0));

        let Condition::Threshold(t) = cond("  battery <= -10   clear >= -5 ") else {
            panic!("threshold expected");
        };
        assert_eq!((t.op, t.value, t.for_ms), (CompareOp::Le, -10.0, 0));
        assert_eq!((t.clear_op, t.clear_value), (CompareOp::Ge, -5.0));
        assert_eq!(cond("x < 10").to_string(), "x < 10 clear > 10.5");
    }

    #[test]
    fn parses_offline_and_update_failed() {
        assert_eq!(
            cond("offline for 90s"),
            Condition::Offline { for_ms: 90_000 }
        );
        assert_eq!(
            cond("offline for 2h"),
            Condition::Offline { for_ms: 7_200_000 }
        );
        assert_eq!(cond("update failed"), Condition::UpdateFailed);
    }

    #[test]
    fn canonical_text_parses_back_to_the_same_condition() {
        for text in [
            "temperature > 80 for 5m",
            "cpu.load >= 0.9 for 30s clear < 0.5",
            "offline for 10m",
            "update failed",
            "x < 0",
            "x >= 1e300 for 168h clear <= 0",
        ] {
            let c = cond(text);
            assert_eq!(cond(&c.to_string()), c, "{text}");
        }
    }

    #[test]
    fn errors_point_at_the_problem() {
        let cases: [(&str, usize, &str); 12] = [
            ("", 0, "empty"),
            ("temperature", 11, "expected one of"),
            ("temperature = 80", 12, "expected one of"),
            ("temperature > hot", 14, "number"),
            ("temperature > 80 for", 20, "duration"),
            ("temperature > 80 for 5d", 21, "duration"),
            ("temperature > 80 for 0s", 21, "at least"),
            ("temperature > 80 for 200h", 21, "at most"),
            ("temperature > 80 clear > 70", 23, "other way"),
            ("temperature > 80 clear < 90", 25, "below"),
            ("temperature > 80 soon", 17, "unexpected"),
            ("offline 5m", 8, "for"),
        ];
        for (text, pos, msg) in cases {
            let e = parse_condition(text).unwrap_err();
            assert_eq!(e.position, pos, "{text}: {e}");
            assert!(e.message.contains(msg), "{text}: {e}");
        }
        assert!(parse_condition("te$mp > 1").is_err());
        assert!(parse_condition("x > NaN").is_err());
        assert!(parse_condition("x > inf").is_err());
        assert!(parse_condition(&"x".repeat(600)).is_err());
        assert!(parse_condition("update ok").is_err());
        assert!(parse_condition("update failed now").is_err());
    }

    #[test]
    fn fires_only_after_the_condition_held_for_the_duration() {
        let c = cond("temperature > 80 for 5s");
        let mut t = Tracker::new();
        assert_eq!(t.observe(&c, 85.0, ts(0)), None);
        assert!(t.is_pending());
        assert_eq!(t.tick(&c, ts(4)), None);
        assert_eq!(t.observe(&c, 90.0, ts(4)), None);
        let fired = t.tick(&c, ts(5));
        assert_eq!(
            fired,
            Some(Transition::Fire {
                value: Some(90.0),
                reason: "temperature is 90 (> 80)".into()
            })
        );
        assert!(t.is_firing());
        // Firing: no second fire.
        assert_eq!(t.observe(&c, 95.0, ts(6)), None);
        assert_eq!(t.tick(&c, ts(60)), None);
    }

    #[test]
    fn a_sample_alone_fires_once_the_duration_has_passed() {
        let c = cond("temperature > 80 for 5s");
        let mut t = Tracker::new();
        assert_eq!(t.observe(&c, 85.0, ts(0)), None);
        assert!(is_fire(&t.observe(&c, 85.0, ts(5))));
    }

    #[test]
    fn a_dip_before_the_duration_restarts_the_wait() {
        let c = cond("temperature > 80 for 5s");
        let mut t = Tracker::new();
        t.observe(&c, 85.0, ts(0));
        assert_eq!(t.observe(&c, 79.0, ts(3)), None);
        assert!(!t.is_pending());
        assert_eq!(t.tick(&c, ts(10)), None);
        t.observe(&c, 85.0, ts(11));
        assert_eq!(t.tick(&c, ts(15)), None);
        assert!(is_fire(&t.tick(&c, ts(16))));
    }

    #[test]
    fn hovering_at_the_threshold_does_not_flap() {
        let c = cond("temperature > 80");
        let mut t = Tracker::new();
        let mut transitions = 0;
        for (i, v) in [81.0, 79.5, 80.5, 78.0, 80.1, 77.0, 81.0]
            .into_iter()
            .enumerate()
        {
            if t.observe(&c, v, ts(i as i64)).is_some() {
                transitions += 1;
            }
        }
        assert_eq!(transitions, 1, "fired once, never resolved above 76");
        assert!(t.is_firing());
        assert!(is_resolve(&t.observe(&c, 75.9, ts(10))));
        assert!(!t.is_firing());
    }

    #[test]
    fn explicit_clear_level() {
        let c = cond("temperature > 80 clear <= 70");
        let mut t = Tracker::new();
        assert!(is_fire(&t.observe(&c, 81.0, ts(0))));
        assert_eq!(t.observe(&c, 71.0, ts(1)), None);
        assert!(is_resolve(&t.observe(&c, 70.0, ts(2))));
    }

    #[test]
    fn lower_thresholds_resolve_above() {
        let c = cond("battery < 10 for 1s");
        let mut t = Tracker::new();
        t.observe(&c, 9.0, ts(0));
        assert!(is_fire(&t.tick(&c, ts(1))));
        assert_eq!(t.observe(&c, 10.4, ts(2)), None);
        assert!(is_resolve(&t.observe(&c, 10.6, ts(3))));
    }

    #[test]
    fn out_of_order_samples_are_ignored() {
        let c = cond("temperature > 80 for 5s");
        let mut t = Tracker::new();
        t.observe(&c, 85.0, ts(10));
        // An old low sample does not break the streak.
        assert_eq!(t.observe(&c, 20.0, ts(5)), None);
        assert!(t.is_pending());
        assert!(is_fire(&t.tick(&c, ts(15))));
        // Nor does an old low sample resolve.
        assert_eq!(t.observe(&c, 20.0, ts(1)), None);
        assert!(t.is_firing());
    }

    #[test]
    fn a_gap_keeps_the_last_value() {
        let c = cond("temperature > 80 for 60s");
        let mut t = Tracker::new();
        t.observe(&c, 85.0, ts(0));
        assert_eq!(t.tick(&c, ts(59)), None);
        assert!(is_fire(&t.tick(&c, ts(120))));
        // Gap while firing: still firing until a clearing sample arrives.
        assert_eq!(t.tick(&c, ts(3600)), None);
        assert!(t.is_firing());
    }

    #[test]
    fn refires_after_resolving() {
        let c = cond("temperature > 80");
        let mut t = Tracker::new();
        assert!(is_fire(&t.observe(&c, 90.0, ts(0))));
        assert!(is_resolve(&t.observe(&c, 50.0, ts(1))));
        assert!(is_fire(&t.observe(&c, 90.0, ts(2))));
    }

    #[test]
    fn a_restored_firing_tracker_resolves_when_the_condition_cleared() {
        let c = cond("temperature > 80");
        let mut t = Tracker::firing();
        assert_eq!(t.observe(&c, 79.0, ts(0)), None);
        assert!(is_resolve(&t.observe(&c, 10.0, ts(1))));
    }

    #[test]
    fn offline_fires_after_the_duration_and_resolves_on_reconnect() {
        let c = cond("offline for 30s");
        let mut t = Tracker::new();
        assert_eq!(t.apply(&c, Input::Disconnected, ts(0)), None);
        assert_eq!(t.tick(&c, ts(29)), None);
        // Back before the duration: nothing.
        assert_eq!(t.apply(&c, Input::Connected, ts(20)), None);
        assert_eq!(t.tick(&c, ts(100)), None);
        t.apply(&c, Input::Disconnected, ts(100));
        assert!(is_fire(&t.tick(&c, ts(130))));
        assert_eq!(t.tick(&c, ts(200)), None);
        assert!(is_resolve(&t.apply(&c, Input::Connected, ts(201))));
        // Samples mean nothing to an offline rule.
        assert_eq!(t.observe(&c, 1.0, ts(202)), None);
    }

    #[test]
    fn update_failed_fires_once_and_resolves_on_success() {
        let c = cond("update failed");
        let mut t = Tracker::new();
        assert!(is_fire(&t.apply(&c, Input::UpdateFailed, ts(0))));
        assert_eq!(t.apply(&c, Input::UpdateFailed, ts(1)), None);
        assert!(is_resolve(&t.apply(&c, Input::UpdateSucceeded, ts(2))));
        assert_eq!(t.apply(&c, Input::UpdateSucceeded, ts(3)), None);
    }

    fn rule() -> AlertRule {
        AlertRule {
            id: AlertRuleId::from_uuid(Uuid::from_u128(1)),
            tenant_id: TenantId::from_uuid(Uuid::from_u128(2)),
            name: "hot".into(),
            severity: Severity::Critical,
            scope: Scope::All,
            condition: cond("temperature > 80"),
            enabled: true,
            created_at: ts(0),
            updated_at: ts(0),
            created_by: None,
        }
    }

    #[test]
    fn reported_state_conditions() {
        let c = cond(r#"reported.battery.level < 20"#);
        assert_eq!(c.to_string(), "reported.battery.level < 20");
        assert_eq!(cond(&c.to_string()), c);
        let doc = |v: serde_json::Value| serde_json::json!({"battery": {"level": v}});
        assert!(c.reported_holds(&doc(serde_json::json!(10))));
        assert!(!c.reported_holds(&doc(serde_json::json!(20))));
        assert!(!c.reported_holds(&doc(serde_json::json!("low"))));
        assert!(!c.reported_holds(&serde_json::json!({})));
        let s = cond(r#"reported.status = "needs service""#);
        assert_eq!(s.to_string(), r#"reported.status = "needs service""#);
        assert!(s.reported_holds(&serde_json::json!({"status": "needs service"})));
        let b = cond("reported.door.open != false");
        assert!(b.reported_holds(&serde_json::json!({"door": {"open": true}})));
        assert!(!b.reported_holds(&serde_json::json!({"door": {}})));
        for (text, pos) in [
            ("reported. = 1", 0),
            ("reported.a ~ 1", 11),
            ("reported.a = ", 13),
            ("reported.a = {}", 13),
            ("reported.a = 1 2", 13),
            ("reported.a > true", 11),
        ] {
            assert_eq!(parse_condition(text).unwrap_err().position, pos, "{text}");
        }
        let mut t = Tracker::new();
        assert_eq!(t.apply(&c, Input::Reported(false), ts(0)), None);
        assert!(is_fire(&t.apply(&c, Input::Reported(true), ts(1))));
        assert_eq!(t.apply(&c, Input::Reported(true), ts(2)), None);
        assert!(is_resolve(&t.apply(&c, Input::Reported(false), ts(3))));
    }

    #[test]
    fn a_failed_fire_is_retried_on_the_next_tick() {
        for (text, input) in [
            ("temperature > 80 for 5s", Input::Sample(90.0)),
            ("update failed", Input::UpdateFailed),
        ] {
            let c = cond(text);
            let mut t = Tracker::new();
            t.apply(&c, input, ts(0));
            t.tick(&c, ts(5));
            assert!(t.is_firing(), "{text}");
            t.retry_fire();
            assert!(is_fire(&t.tick(&c, ts(6))), "{text}");
        }
        let c = cond("offline for 5s");
        let mut t = Tracker::new();
        t.apply(&c, Input::Disconnected, ts(0));
        assert!(is_fire(&t.tick(&c, ts(5))));
        t.retry_fire();
        assert!(is_fire(&t.tick(&c, ts(6))));
    }

    #[test]
    fn ack_then_resolve_and_resolved_never_changes() {
        let device = DeviceId::from_uuid(Uuid::from_u128(3));
        let mut a = Alert::fire(
            AlertId::from_uuid(Uuid::from_u128(4)),
            &rule(),
            device,
            ts(0),
            Some(90.0),
            "hot".into(),
        );
        assert_eq!(a.state, AlertState::Firing);
        a.acknowledge("alice", "looking", ts(1)).unwrap();
        assert_eq!(a.state, AlertState::Acknowledged);
        assert_eq!(a.ack_note.as_deref(), Some("looking"));
        assert_eq!(
            a.acknowledge("bob", "", ts(2)),
            Err(AlertError::AlreadyAcknowledged)
        );
        a.resolve("cooled", ts(3)).unwrap();
        let resolved = a.clone();
        assert_eq!(a.resolve("again", ts(4)), Err(AlertError::Resolved));
        assert_eq!(a.acknowledge("bob", "", ts(4)), Err(AlertError::Resolved));
        assert_eq!(a, resolved);
    }

    #[test]
    fn notes_are_bounded() {
        let mut a = Alert::fire(
            AlertId::from_uuid(Uuid::from_u128(4)),
            &rule(),
            DeviceId::from_uuid(Uuid::from_u128(3)),
            ts(0),
            None,
            String::new(),
        );
        assert_eq!(
            a.acknowledge("a", &"x".repeat(MAX_NOTE_LEN + 1), ts(1)),
            Err(AlertError::NoteTooLong)
        );
        assert_eq!(a.state, AlertState::Firing);
    }

    #[test]
    fn scopes_round_trip() {
        for s in [
            Scope::All,
            Scope::Group(GroupId::from_uuid(Uuid::from_u128(9))),
            Scope::Query("tag.site = \"a\"".into()),
        ] {
            assert_eq!(Scope::from_text(&s.to_text()).unwrap(), s);
        }
        assert!(Scope::from_text("query:(((").is_err());
        assert!(Scope::from_text("everything").is_err());
    }

    #[test]
    fn severities_and_states_parse() {
        for s in Severity::ALL {
            assert_eq!(Severity::parse(s.as_str()), Some(s));
        }
        for s in AlertState::ALL {
            assert_eq!(AlertState::parse(s.as_str()), Some(s));
        }
        assert_eq!(Severity::parse("fatal"), None);
    }
}
