//! Telemetry: the numeric samples devices report, and the payload format they report them in.
//!
//! A [`Sample`] is one value of one metric of a device at one point in time. Samples are keyed
//! by device, metric and time: a second value for the same key replaces the first (that is
//! what makes re-delivery harmless).
//!
//! # The device payload (public device protocol)
//!
//! [`parse_payload`] accepts a UTF-8 JSON document in exactly one of these forms:
//!
//! 1. **Flat shorthand**, an object of metric names to numbers, all measured when the server
//!    received the message:
//!
//!    ```json
//!    {"temperature": 21.5, "cpu.load": 0.3}
//!    ```
//!
//! 2. **Structured**, an object with a `"values"` object and an optional `"ts"` (when the values
//!    were measured: Unix milliseconds as an integer, or an RFC 3339 string with an offset; the
//!    time of receipt when absent):
//!
//!    ```json
//!    {"ts": 1790000000123, "values": {"temperature": 21.5}}
//!    {"ts": "2026-09-21T14:13:20.123Z", "values": {"temperature": 21.5, "humidity": 40}}
//!    ```
//!
//!    Any object with a `"values"` key is read as structured; beside `"values"` only `"ts"` is
//!    allowed. `"ts"` is therefore not allowed in the flat shorthand, where it would otherwise
//!    be taken for a metric.
//!
//! 3. **Batch**, a JSON array of objects of form 1 or 2 (which may be mixed), for readings taken
//!    at several times or buffered while offline:
//!
//!    ```json
//!    [{"ts": 1790000000000, "values": {"temperature": 21.4}},
//!     {"ts": 1790000060000, "values": {"temperature": 21.5}}]
//!    ```
//!
//! Rules, each checked before anything is stored (a payload is taken whole or not at all):
//! - Metric names are 1 to 128 characters of ASCII letters, digits and `_ . - : /`, starting
//!   with a letter or a digit (see [`MetricName`]); case matters.
//! - Every value is a JSON number (an integer or a decimal) that fits a 64-bit float. `true`,
//!   strings, `null`, arrays and objects are refused, naming the metric.
//! - Every object carries at least one value, and a payload at most
//!   [`MAX_SAMPLES_PER_PAYLOAD`] (1000) values in all.
//! - `"ts"` lies within the 30 days before and the 5 minutes after the time the server received
//!   the message (both bounds included): a device whose clock is wrong cannot write into the
//!   far past or the future. A device without a trustworthy clock should omit `"ts"`.
//! - An object has no key twice, and a metric has at most one value per timestamp in one
//!   payload (in particular, two flat objects in one batch cannot both carry the same metric,
//!   since both are stamped with the time of receipt).
//!
//! An error is a [`TelemetryError`] whose message is one line of at most
//! [`MAX_ERROR_MESSAGE_LEN`] characters that names the offending entry (`payload` or
//! `payload[N]` for the N-th, from 0, of a batch) and metric or field, fit to go back to the
//! device (for example as an MQTT 5 reason string).

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Most samples one payload may carry.
pub const MAX_SAMPLES_PER_PAYLOAD: usize = 1000;
/// Longest metric name, in bytes (names are ASCII).
pub const MAX_METRIC_NAME_LEN: usize = 128;
/// How far before the time of receipt a payload's `ts` may lie: 30 days.
pub const MAX_TS_PAST_MILLIS: i64 = 30 * 24 * 60 * 60 * 1000;
/// How far after the time of receipt a payload's `ts` may lie: 5 minutes.
pub const MAX_TS_FUTURE_MILLIS: i64 = 5 * 60 * 1000;
/// Upper bound on the length of a [`TelemetryError`] message, in characters.
pub const MAX_ERROR_MESSAGE_LEN: usize = 200;

/// One value of one metric of a device at one point in time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub metric: MetricName,
    pub at: Timestamp,
    pub value: f64,
}

/// The name of a metric: 1 to [`MAX_METRIC_NAME_LEN`] bytes of ASCII letters, digits and
/// `_ . - : /`, starting with a letter or a digit (so that it is safe in a URL path segment
/// once `/` is escaped, in a label, and in a log line). Case-sensitive.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MetricName(String);

impl MetricName {
    pub fn parse(s: &str) -> Result<Self, InvalidMetricName> {
        let bytes = s.as_bytes();
        let ok_len = (1..=MAX_METRIC_NAME_LEN).contains(&bytes.len());
        let ok_first = bytes.first().is_some_and(u8::is_ascii_alphanumeric);
        let ok_chars = bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':' | b'/'));
        if ok_len && ok_first && ok_chars {
            Ok(MetricName(s.to_owned()))
        } else {
            Err(InvalidMetricName(s.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MetricName {
    type Error = InvalidMetricName;
    fn try_from(s: String) -> Result<Self, InvalidMetricName> {
        MetricName::parse(&s)
    }
}

impl From<MetricName> for String {
    fn from(m: MetricName) -> String {
        m.0
    }
}

impl AsRef<str> for MetricName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MetricName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MetricName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MetricName({:?})", self.0)
    }
}

/// A string that is not a valid [`MetricName`] (its first 80 characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid metric name {}: use 1-128 characters of A-Z a-z 0-9 _ . - : / starting with a letter or digit",
    Quoted(.0)
)]
pub struct InvalidMetricName(pub String);

/// Why a payload was refused. Every message is one line of at most [`MAX_ERROR_MESSAGE_LEN`]
/// characters, names the entry (`payload`, or `payload[N]` in a batch) and the metric or field
/// at fault, and quotes what the device sent only in part and escaped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TelemetryError {
    #[error("payload is not UTF-8")]
    NotUtf8,
    /// The JSON parser's complaint (duplicate keys included).
    #[error("payload is not valid JSON: {}", Clipped(.0, 120))]
    Json(String),
    #[error("{}: expected a JSON object or an array of objects, not {found}", Entry(*.entry))]
    NotAnObject {
        entry: Option<usize>,
        found: &'static str,
    },
    #[error("{}: no values", Entry(*.entry))]
    Empty { entry: Option<usize> },
    #[error(
        "payload has more than {MAX_SAMPLES_PER_PAYLOAD} values; send at most {MAX_SAMPLES_PER_PAYLOAD} per message"
    )]
    TooMany,
    #[error("{}: {error}", Entry(*.entry))]
    InvalidMetric {
        entry: Option<usize>,
        error: InvalidMetricName,
    },
    #[error("{}: metric {} must be a number, not {found}", Entry(*.entry), Quoted(.metric))]
    NotANumber {
        entry: Option<usize>,
        metric: MetricName,
        found: &'static str,
    },
    #[error("{}: metric {} must be a finite number", Entry(*.entry), Quoted(.metric))]
    NotFinite {
        entry: Option<usize>,
        metric: MetricName,
    },
    #[error("{}: metric {} has a second value at {at}", Entry(*.entry), Quoted(.metric))]
    Duplicate {
        entry: Option<usize>,
        metric: MetricName,
        at: Timestamp,
    },
    #[error(r#"{}: unknown field {}; beside "values" only "ts" is allowed"#, Entry(*.entry), Quoted(.field))]
    UnknownField { entry: Option<usize>, field: String },
    #[error(r#"{}: "values" must be an object of metric names to numbers, not {found}"#, Entry(*.entry))]
    ValuesNotObject {
        entry: Option<usize>,
        found: &'static str,
    },
    #[error(r#"{}: "ts" is only allowed beside "values"; put the metrics in "values""#, Entry(*.entry))]
    TsWithoutValues { entry: Option<usize> },
    /// `found` describes what was sent instead (a kind such as `a boolean`, or the quoted string).
    #[error(r#"{}: "ts" must be Unix milliseconds (an integer) or an RFC 3339 time, not {found}"#, Entry(*.entry))]
    InvalidTs { entry: Option<usize>, found: String },
    #[error(
        r#"{}: "ts" {} is more than 30 days before the server's time {received_at}; check the device's clock"#,
        Entry(*.entry), Shown(*.ts)
    )]
    TsTooOld {
        entry: Option<usize>,
        ts: Timestamp,
        received_at: Timestamp,
    },
    #[error(
        r#"{}: "ts" {} is more than 5 minutes after the server's time {received_at}; check the device's clock"#,
        Entry(*.entry), Shown(*.ts)
    )]
    TsTooNew {
        entry: Option<usize>,
        ts: Timestamp,
        received_at: Timestamp,
    },
}

/// Parses a device's telemetry payload (see the [module documentation](self) for the forms
/// and rules) received at `received_at`. The samples come in payload order.
pub fn parse_payload(
    payload: &[u8],
    received_at: Timestamp,
) -> Result<Vec<Sample>, TelemetryError> {
    let text = std::str::from_utf8(payload).map_err(|_| TelemetryError::NotUtf8)?;
    let json: Json = serde_json::from_str(text).map_err(|e| TelemetryError::Json(e.to_string()))?;
    let mut out = Collector {
        received_at,
        samples: Vec::new(),
        seen: HashSet::new(),
    };
    match json {
        Json::Object(fields) => out.object(None, fields)?,
        Json::Array(items) => {
            if items.is_empty() {
                return Err(TelemetryError::Empty { entry: None });
            }
            // Every entry carries at least one value, so a longer batch is too many.
            if items.len() > MAX_SAMPLES_PER_PAYLOAD {
                return Err(TelemetryError::TooMany);
            }
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Json::Object(fields) => out.object(Some(i), fields)?,
                    other => {
                        return Err(TelemetryError::NotAnObject {
                            entry: Some(i),
                            found: other.kind(),
                        });
                    }
                }
            }
        }
        other => {
            return Err(TelemetryError::NotAnObject {
                entry: None,
                found: other.kind(),
            });
        }
    }
    Ok(out.samples)
}

struct Collector {
    received_at: Timestamp,
    samples: Vec<Sample>,
    seen: HashSet<(MetricName, Timestamp)>,
}

impl Collector {
    fn object(
        &mut self,
        entry: Option<usize>,
        fields: Vec<(String, Json)>,
    ) -> Result<(), TelemetryError> {
        if !fields.iter().any(|(k, _)| k == "values") {
            if fields.iter().any(|(k, _)| k == "ts") {
                return Err(TelemetryError::TsWithoutValues { entry });
            }
            return self.values(entry, self.received_at, fields);
        }
        let mut ts = None;
        let mut values = None;
        for (key, value) in fields {
            match key.as_str() {
                "values" => values = Some(value),
                "ts" => ts = Some(value),
                _ => return Err(TelemetryError::UnknownField { entry, field: key }),
            }
        }
        let at = match ts {
            None => self.received_at,
            Some(ts) => self.timestamp(entry, ts)?,
        };
        match values {
            Some(Json::Object(values)) => self.values(entry, at, values),
            other => Err(TelemetryError::ValuesNotObject {
                entry,
                found: other.map_or("nothing", |v| v.kind()),
            }),
        }
    }

    fn timestamp(&self, entry: Option<usize>, ts: Json) -> Result<Timestamp, TelemetryError> {
        let invalid = |found: String| TelemetryError::InvalidTs { entry, found };
        let at = match ts {
            Json::Int(ms) => Timestamp::from_unix_millis(ms),
            Json::Str(s) => {
                Timestamp::parse_rfc3339(&s).map_err(|_| invalid(Quoted(&s).to_string()))?
            }
            Json::UInt(_) => return Err(invalid("an integer that large".into())),
            Json::Float(_) => return Err(invalid("a fractional number".into())),
            other => return Err(invalid(other.kind().into())),
        };
        let received_at = self.received_at;
        if at < received_at.plus_millis(-MAX_TS_PAST_MILLIS) {
            return Err(TelemetryError::TsTooOld {
                entry,
                ts: at,
                received_at,
            });
        }
        if at > received_at.plus_millis(MAX_TS_FUTURE_MILLIS) {
            return Err(TelemetryError::TsTooNew {
                entry,
                ts: at,
                received_at,
            });
        }
        Ok(at)
    }

    fn values(
        &mut self,
        entry: Option<usize>,
        at: Timestamp,
        values: Vec<(String, Json)>,
    ) -> Result<(), TelemetryError> {
        if values.is_empty() {
            return Err(TelemetryError::Empty { entry });
        }
        for (name, value) in values {
            let metric = MetricName::parse(&name)
                .map_err(|error| TelemetryError::InvalidMetric { entry, error })?;
            let value = match value {
                Json::Int(v) => v as f64,
                Json::UInt(v) => v as f64,
                Json::Float(v) => v,
                other => {
                    return Err(TelemetryError::NotANumber {
                        entry,
                        metric,
                        found: other.kind(),
                    });
                }
            };
            self.push(entry, Sample { metric, at, value })?;
        }
        Ok(())
    }

    fn push(&mut self, entry: Option<usize>, sample: Sample) -> Result<(), TelemetryError> {
        if !sample.value.is_finite() {
            return Err(TelemetryError::NotFinite {
                entry,
                metric: sample.metric,
            });
        }
        if self.samples.len() == MAX_SAMPLES_PER_PAYLOAD {
            return Err(TelemetryError::TooMany);
        }
        if !self.seen.insert((sample.metric.clone(), sample.at)) {
            return Err(TelemetryError::Duplicate {
                entry,
                metric: sample.metric,
                at: sample.at,
            });
        }
        self.samples.push(sample);
        Ok(())
    }
}

/// A JSON document as the parser needs it: objects keep their keys in order and refuse
/// duplicates (which `serde_json::Value` would silently collapse), and integers stay exact.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    /// An integer above `i64::MAX`.
    UInt(u64),
    Float(f64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Int(_) | Json::UInt(_) | Json::Float(_) => "a number",
            Json::Str(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        Ok(i64::try_from(v).map_or(Json::UInt(v), Json::Int))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        Ok(Json::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::Str(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut keys = HashSet::new();
        let mut fields = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key.clone()) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {}",
                    Quoted(&key)
                )));
            }
            let value = map.next_value()?;
            fields.push((key, value));
        }
        Ok(Json::Object(fields))
    }
}

/// `payload` or `payload[N]`.
struct Entry(Option<usize>);

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("payload"),
            Some(i) => write!(f, "payload[{i}]"),
        }
    }
}

/// What a device sent, quoted and escaped (so it stays on one line), cut after 40 characters.
struct Quoted<'a, T: AsRef<str> + ?Sized>(&'a T);

impl<T: AsRef<str> + ?Sized> fmt::Display for Quoted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let escaped: String = self
            .0
            .as_ref()
            .chars()
            .flat_map(char::escape_debug)
            .collect();
        write!(f, "\"{}\"", Clipped(&escaped, 40))
    }
}

/// A message cut after `n` characters, marked with `...`.
struct Clipped<'a>(&'a str, usize);

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(self.1) {
            None => f.write_str(self.0),
            Some((cut, _)) => write!(f, "{}...", &self.0[..cut]),
        }
    }
}

/// A timestamp as RFC 3339 when it is within the years 1 to 9999, else as Unix milliseconds
/// (a clock that far off is worth showing as it is).
struct Shown(Timestamp);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const YEAR_1: i64 = -62_135_596_800_000;
        const YEAR_10000: i64 = 253_402_300_800_000;
        let ms = self.0.unix_millis();
        if (YEAR_1..YEAR_10000).contains(&ms) {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{ms} (Unix milliseconds)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-09-21T14:13:20.123Z
    const NOW: Timestamp = Timestamp::from_unix_millis(1_790_000_000_123);

    fn m(name: &str) -> MetricName {
        MetricName::parse(name).unwrap()
    }

    fn s(metric: &str, at: Timestamp, value: f64) -> Sample {
        Sample {
            metric: m(metric),
            at,
            value,
        }
    }

    fn parse(payload: &str) -> Result<Vec<Sample>, TelemetryError> {
        parse_payload(payload.as_bytes(), NOW)
    }

    fn err(payload: &str) -> TelemetryError {
        let e = parse(payload).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.len() <= MAX_ERROR_MESSAGE_LEN,
            "{} chars: {msg}",
            msg.len()
        );
        assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg}");
        e
    }

    #[test]
    fn metric_names() {
        let longest = "a".repeat(128);
        for ok in [
            "a",
            "0",
            "Z9",
            "temperature",
            "cpu.load",
            "disk:/dev/sda1",
            "net_rx-bytes",
            "9.a_b-c:d/e",
            longest.as_str(),
        ] {
            assert_eq!(
                MetricName::parse(ok).map(|n| n.to_string()).ok(),
                Some(ok.into())
            );
        }
        let too_long = "a".repeat(129);
        for bad in [
            "",
            "_a",
            ".a",
            "-a",
            ":a",
            "/a",
            "a b",
            "a\n",
            "ä",
            "aä",
            "a#b",
            "a+b",
            "a,b",
            "a\"b",
            too_long.as_str(),
        ] {
            assert!(MetricName::parse(bad).is_err(), "{bad:?}");
        }
        let e = MetricName::parse("x y").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid metric name "x y": use 1-128 characters of A-Z a-z 0-9 _ . - : / starting with a letter or digit"#
        );
    }

    #[test]
    fn metric_names_serialise_as_strings_and_are_checked_when_read() {
        let json = serde_json::to_string(&m("cpu.load")).unwrap();
        assert_eq!(json, r#""cpu.load""#);
        assert_eq!(
            serde_json::from_str::<MetricName>(&json).unwrap(),
            m("cpu.load")
        );
        assert!(serde_json::from_str::<MetricName>(r#""a b""#).is_err());
    }

    #[test]
    fn flat_shorthand_is_stamped_with_the_time_of_receipt() {
        assert_eq!(
            parse(r#"{"temperature": 21.5, "cpu.load": 0.3, "count": 7, "delta": -2}"#).unwrap(),
            vec![
                s("temperature", NOW, 21.5),
                s("cpu.load", NOW, 0.3),
                s("count", NOW, 7.0),
                s("delta", NOW, -2.0),
            ]
        );
    }

    #[test]
    fn structured_with_and_without_ts() {
        let at = NOW.plus_millis(-60_000);
        assert_eq!(
            parse(&format!(
                r#"{{"ts": {}, "values": {{"t": 21.5, "h": 40}}}}"#,
                at.unix_millis()
            ))
            .unwrap(),
            vec![s("t", at, 21.5), s("h", at, 40.0)]
        );
        assert_eq!(
            parse(r#"{"values": {"t": 1e2}, "ts": "2026-09-21T14:12:20.123Z"}"#).unwrap(),
            vec![s("t", at, 100.0)],
            "RFC 3339, keys in any order"
        );
        assert_eq!(
            parse(r#"{"ts": "2026-09-21T16:12:20.123+02:00", "values": {"t": 1}}"#).unwrap(),
            vec![s("t", at, 1.0)],
            "an offset other than Z"
        );
        assert_eq!(
            parse(r#"{"values": {"t": 0}}"#).unwrap(),
            vec![s("t", NOW, 0.0)]
        );
    }

    #[test]
    fn batches_of_either_form_in_order() {
        let a = NOW.plus_millis(-2000);
        let b = NOW.plus_millis(-1000);
        let payload = format!(
            r#"[{{"ts": {}, "values": {{"t": 1, "h": 2}}}},
                {{"ts": {}, "values": {{"t": 3}}}},
                {{"cpu": 0.5}}]"#,
            a.unix_millis(),
            b.unix_millis()
        );
        assert_eq!(
            parse(&payload).unwrap(),
            vec![
                s("t", a, 1.0),
                s("h", a, 2.0),
                s("t", b, 3.0),
                s("cpu", NOW, 0.5)
            ]
        );
        assert_eq!(parse(r#"[{"a": 1}]"#).unwrap(), vec![s("a", NOW, 1.0)]);
    }

    #[test]
    fn values_keep_full_precision() {
        let got = parse(r#"{"a": 0.1, "b": -1.5e-300, "c": 1.7976931348623157e308, "d": 9007199254740993, "e": -0.0}"#)
            .unwrap();
        let values: Vec<f64> = got.iter().map(|s| s.value).collect();
        assert_eq!(
            values,
            vec![0.1, -1.5e-300, f64::MAX, 9_007_199_254_740_992.0, 0.0]
        );
        assert_eq!(
            parse(r#"{"big": 18446744073709551615}"#).unwrap()[0].value,
            1.8446744073709552e19
        );
    }

    #[test]
    fn at_least_one_value() {
        assert_eq!(err("{}"), TelemetryError::Empty { entry: None });
        assert_eq!(err("[]"), TelemetryError::Empty { entry: None });
        assert_eq!(
            err(r#"{"values": {}}"#),
            TelemetryError::Empty { entry: None }
        );
        assert_eq!(
            err(r#"[{"a": 1}, {"ts": 1790000000000, "values": {}}]"#),
            TelemetryError::Empty { entry: Some(1) }
        );
        assert_eq!(
            err(r#"[{"a": 1}, {}]"#).to_string(),
            "payload[1]: no values"
        );
    }

    fn batch(entries: usize, per_entry: usize) -> String {
        let objects: Vec<String> = (0..entries)
            .map(|e| {
                let values: Vec<String> =
                    (0..per_entry).map(|v| format!(r#""m{v}": {e}"#)).collect();
                format!(
                    r#"{{"ts": {}, "values": {{{}}}}}"#,
                    NOW.plus_millis(-(e as i64)).unix_millis(),
                    values.join(", ")
                )
            })
            .collect();
        format!("[{}]", objects.join(", "))
    }

    #[test]
    fn at_most_a_thousand_values() {
        assert_eq!(parse(&batch(1000, 1)).unwrap().len(), 1000);
        assert_eq!(parse(&batch(10, 100)).unwrap().len(), 1000);
        assert_eq!(err(&batch(1001, 1)), TelemetryError::TooMany);
        assert_eq!(
            err(&batch(7, 143)),
            TelemetryError::TooMany,
            "1001 values in 7 entries"
        );
        let flat: Vec<String> = (0..1001).map(|i| format!(r#""m{i}": 1"#)).collect();
        assert_eq!(
            err(&format!("{{{}}}", flat.join(","))),
            TelemetryError::TooMany
        );
        assert_eq!(
            err(&batch(1001, 1)).to_string(),
            "payload has more than 1000 values; send at most 1000 per message"
        );
    }

    #[test]
    fn values_must_be_numbers() {
        for (value, found) in [
            ("true", "a boolean"),
            ("false", "a boolean"),
            (r#""21.5""#, "a string"),
            ("null", "null"),
            ("[1]", "an array"),
            (r#"{"x": 1}"#, "an object"),
        ] {
            assert_eq!(
                err(&format!(r#"{{"ok": 1, "temperature": {value}}}"#)),
                TelemetryError::NotANumber {
                    entry: None,
                    metric: m("temperature"),
                    found
                }
            );
        }
        assert_eq!(
            err(r#"[{"a": 1}, {"values": {"temperature": "hot"}}]"#).to_string(),
            r#"payload[1]: metric "temperature" must be a number, not a string"#
        );
    }

    #[test]
    fn values_must_be_finite() {
        // JSON cannot spell NaN or infinity, and a literal too large for a 64-bit float is
        // refused by the JSON parser, with its position.
        for payload in [r#"{"t": NaN}"#, r#"{"t": Infinity}"#, r#"{"t": -Infinity}"#] {
            assert!(matches!(err(payload), TelemetryError::Json(_)), "{payload}");
        }
        let e = err(r#"{"t": 1e400}"#);
        assert!(matches!(e, TelemetryError::Json(_)), "{e}");
        assert!(e.to_string().contains("number out of range"), "{e}");
        // The check itself, for values that do not come from JSON text.
        let mut c = Collector {
            received_at: NOW,
            samples: Vec::new(),
            seen: HashSet::new(),
        };
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(
                c.values(Some(2), NOW, vec![("t".into(), Json::Float(v))]),
                Err(TelemetryError::NotFinite {
                    entry: Some(2),
                    metric: m("t")
                })
            );
        }
        assert_eq!(
            TelemetryError::NotFinite {
                entry: None,
                metric: m("t")
            }
            .to_string(),
            r#"payload: metric "t" must be a finite number"#
        );
    }

    #[test]
    fn metric_names_are_checked() {
        assert_eq!(
            err(r#"{"ok": 1, "bad name": 2}"#).to_string(),
            r#"payload: invalid metric name "bad name": use 1-128 characters of A-Z a-z 0-9 _ . - : / starting with a letter or digit"#
        );
        assert!(matches!(
            err(r#"[{"a": 1}, {"values": {"_x": 1}}]"#),
            TelemetryError::InvalidMetric { entry: Some(1), .. }
        ));
        assert!(matches!(
            err(r#"{"": 1}"#),
            TelemetryError::InvalidMetric { .. }
        ));
        let long = "a".repeat(129);
        assert!(matches!(
            err(&format!(r#"{{"{long}": 1}}"#)),
            TelemetryError::InvalidMetric { .. }
        ));
        assert_eq!(
            parse(&format!(r#"{{"{}": 1}}"#, "a".repeat(128)))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn structured_objects_allow_only_ts_and_values() {
        assert_eq!(
            err(r#"{"ts": 1790000000000, "values": {"t": 1}, "unit": "C"}"#),
            TelemetryError::UnknownField {
                entry: None,
                field: "unit".into()
            }
        );
        assert_eq!(
            err(r#"[{"a": 1}, {"values": {"t": 1}, "temperature": 2}]"#).to_string(),
            r#"payload[1]: unknown field "temperature"; beside "values" only "ts" is allowed"#
        );
        assert_eq!(
            err(r#"{"values": [1, 2]}"#),
            TelemetryError::ValuesNotObject {
                entry: None,
                found: "an array"
            }
        );
        assert_eq!(
            err(r#"{"values": 21.5}"#).to_string(),
            r#"payload: "values" must be an object of metric names to numbers, not a number"#
        );
    }

    #[test]
    fn ts_belongs_beside_values() {
        assert_eq!(
            err(r#"{"ts": 1790000000000, "temperature": 21.5}"#),
            TelemetryError::TsWithoutValues { entry: None }
        );
        assert_eq!(
            err(r#"[{"a": 1}, {"ts": 1790000000000}]"#).to_string(),
            r#"payload[1]: "ts" is only allowed beside "values"; put the metrics in "values""#
        );
        // A metric called "ts" can still be sent in the structured form.
        assert_eq!(
            parse(r#"{"values": {"ts": 1}}"#).unwrap(),
            vec![s("ts", NOW, 1.0)]
        );
        assert_eq!(
            parse(r#"{"values": {"values": 1}}"#).unwrap(),
            vec![s("values", NOW, 1.0)]
        );
    }

    #[test]
    fn ts_is_integer_milliseconds_or_rfc3339() {
        for (ts, found) in [
            ("1790000000000.5", "a fractional number"),
            ("1.79e12", "a fractional number"),
            ("true", "a boolean"),
            ("null", "null"),
            ("[1]", "an array"),
            ("{}", "an object"),
            ("18446744073709551615", "an integer that large"),
            (r#""yesterday""#, r#""yesterday""#),
            (r#""2026-09-21 14:13:20""#, r#""2026-09-21 14:13:20""#),
            (r#""2026-09-21T14:13:20""#, r#""2026-09-21T14:13:20""#),
            (r#""1790000000000""#, r#""1790000000000""#),
        ] {
            assert_eq!(
                err(&format!(r#"{{"ts": {ts}, "values": {{"t": 1}}}}"#)),
                TelemetryError::InvalidTs {
                    entry: None,
                    found: found.into()
                },
                "{ts}"
            );
        }
        assert_eq!(
            err(r#"{"ts": true, "values": {"t": 1}}"#).to_string(),
            r#"payload: "ts" must be Unix milliseconds (an integer) or an RFC 3339 time, not a boolean"#
        );
    }

    #[test]
    fn ts_window_bounds_are_inclusive() {
        let oldest = NOW.plus_millis(-MAX_TS_PAST_MILLIS);
        let newest = NOW.plus_millis(MAX_TS_FUTURE_MILLIS);
        assert_eq!(MAX_TS_PAST_MILLIS, 2_592_000_000);
        assert_eq!(MAX_TS_FUTURE_MILLIS, 300_000);
        let at = |t: Timestamp| format!(r#"{{"ts": {}, "values": {{"t": 1}}}}"#, t.unix_millis());
        assert_eq!(parse(&at(oldest)).unwrap(), vec![s("t", oldest, 1.0)]);
        assert_eq!(parse(&at(newest)).unwrap(), vec![s("t", newest, 1.0)]);
        assert_eq!(
            err(&at(oldest.plus_millis(-1))),
            TelemetryError::TsTooOld {
                entry: None,
                ts: oldest.plus_millis(-1),
                received_at: NOW
            }
        );
        assert_eq!(
            err(&at(newest.plus_millis(1))),
            TelemetryError::TsTooNew {
                entry: None,
                ts: newest.plus_millis(1),
                received_at: NOW
            }
        );
        // The same bounds through RFC 3339.
        let rfc = |t: Timestamp| format!(r#"{{"ts": "{t}", "values": {{"t": 1}}}}"#);
        assert!(parse(&rfc(oldest)).is_ok());
        assert!(parse(&rfc(newest)).is_ok());
        assert!(matches!(
            err(&rfc(oldest.plus_millis(-1))),
            TelemetryError::TsTooOld { .. }
        ));
        assert!(matches!(
            err(&rfc(newest.plus_millis(1))),
            TelemetryError::TsTooNew { .. }
        ));
        // One bad entry refuses the whole batch, and the message says which and why.
        // (Here the device sent seconds instead of milliseconds.)
        let payload = r#"[{"values": {"t": 1}}, {"ts": 1790000000, "values": {"t": 2}}]"#;
        assert_eq!(
            err(payload).to_string(),
            r#"payload[1]: "ts" 1970-01-21T17:13:20Z is more than 30 days before the server's time 2026-09-21T14:13:20.123Z; check the device's clock"#
        );
        assert_eq!(
            err(&at(newest.plus_millis(1))).to_string(),
            r#"payload: "ts" 2026-09-21T14:18:20.124Z is more than 5 minutes after the server's time 2026-09-21T14:13:20.123Z; check the device's clock"#
        );
        assert_eq!(
            err(r#"{"ts": 9223372036854775807, "values": {"t": 1}}"#).to_string(),
            r#"payload: "ts" 9223372036854775807 (Unix milliseconds) is more than 5 minutes after the server's time 2026-09-21T14:13:20.123Z; check the device's clock"#
        );
        assert!(matches!(
            err(r#"{"ts": -9223372036854775808, "values": {"t": 1}}"#),
            TelemetryError::TsTooOld { .. }
        ));
    }

    #[test]
    fn a_metric_has_one_value_per_timestamp() {
        assert_eq!(
            err(r#"[{"t": 1}, {"t": 2}]"#),
            TelemetryError::Duplicate {
                entry: Some(1),
                metric: m("t"),
                at: NOW
            }
        );
        assert_eq!(
            err(r#"[{"ts": 1790000000000, "values": {"t": 1}}, {"ts": "2026-09-21T14:13:20Z", "values": {"t": 2}}]"#)
                .to_string(),
            r#"payload[1]: metric "t" has a second value at 2026-09-21T14:13:20Z"#
        );
        // Different metrics, or different times, are fine.
        assert_eq!(parse(r#"[{"t": 1}, {"h": 2}]"#).unwrap().len(), 2);
        assert_eq!(
            parse(r#"[{"t": 1}, {"ts": 1790000000000, "values": {"t": 2}}]"#)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn duplicate_keys_are_refused() {
        for payload in [
            r#"{"t": 1, "t": 2}"#,
            r#"{"ts": 1790000000000, "ts": 1790000000001, "values": {"t": 1}}"#,
            r#"{"values": {"t": 1}, "values": {"h": 1}}"#,
            r#"{"values": {"t": 1, "t": 1}}"#,
        ] {
            let e = err(payload);
            assert!(
                matches!(&e, TelemetryError::Json(m) if m.starts_with("duplicate key")),
                "{payload}: {e}"
            );
        }
        assert_eq!(
            err(r#"{"t": 1, "t": 2}"#).to_string(),
            r#"payload is not valid JSON: duplicate key "t" at line 1 column 12"#
        );
    }

    #[test]
    fn the_payload_must_be_utf8_json_of_the_right_shape() {
        assert_eq!(
            parse_payload(b"{\"t\": 1, \"\xff\": 2}", NOW),
            Err(TelemetryError::NotUtf8)
        );
        assert!(matches!(
            parse_payload(b"\xef\xbb\xbf{\"t\": 1}", NOW),
            Err(TelemetryError::Json(_))
        ));
        for payload in [
            "",
            "  ",
            "{",
            r#"{"t": 1} x"#,
            r#"{"t": 1,}"#,
            "{'t': 1}",
            r#"{"t": 01}"#,
        ] {
            assert!(
                matches!(err(payload), TelemetryError::Json(_)),
                "{payload:?}"
            );
        }
        assert_eq!(
            err(r#"{"t": 1} {"t": 2}"#).to_string(),
            "payload is not valid JSON: trailing characters at line 1 column 10"
        );
        for (payload, found) in [
            ("1", "a number"),
            (r#""t""#, "a string"),
            ("null", "null"),
            ("true", "a boolean"),
        ] {
            assert_eq!(
                err(payload),
                TelemetryError::NotAnObject { entry: None, found }
            );
        }
        assert_eq!(
            err(r#"[{"t": 1}, [{"t": 2}]]"#).to_string(),
            "payload[1]: expected a JSON object or an array of objects, not an array"
        );
    }

    #[test]
    fn messages_stay_short_and_on_one_line_whatever_the_device_sends() {
        let nasty = "\u{1b}[31m\n\u{202e}\"".repeat(100);
        let nasty_json = serde_json::to_string(&nasty).unwrap();
        let long_ok = "a".repeat(128);
        let prefix = (0..999)
            .map(|i| {
                let ts = NOW.plus_millis(-i - 1).unix_millis();
                format!(r#"{{"values": {{"x": 1}}, "ts": {ts}}}"#)
            })
            .collect::<Vec<_>>()
            .join(",");
        let at_999 = |obj: &str| format!("[{prefix}, {obj}]");
        for payload in [
            format!("{{{nasty_json}: 1}}"),
            format!(r#"{{"values": {{"t": 1}}, {nasty_json}: 1}}"#),
            format!(r#"{{"ts": {nasty_json}, "values": {{"t": 1}}}}"#),
            format!("{{{nasty_json}: 1, {nasty_json}: 2}}"),
            at_999(&format!("{{{nasty_json}: 1}}")),
            at_999(&format!(r#"{{"{long_ok}": "x"}}"#)),
            at_999(&format!(r#"{{"values": {{"t": 1}}, {nasty_json}: 1}}"#)),
            at_999(&format!(r#"{{"ts": {nasty_json}, "values": {{"t": 1}}}}"#)),
            at_999(r#"{"ts": -9223372036854775808, "values": {"t": 1}}"#),
            at_999(r#"{"ts": 9223372036854775807, "values": {"t": 1}}"#),
            at_999(&format!(
                r#"{{"ts": {}, "values": {{"x": 1}}}}"#,
                NOW.plus_millis(-1).unix_millis()
            )),
            format!("[{}]", "[".repeat(200)),
        ] {
            err(&payload);
        }
        // The longest message a valid metric name can produce.
        let e = TelemetryError::Duplicate {
            entry: Some(999),
            metric: m(&long_ok),
            at: Timestamp::from_unix_millis(-62_135_596_800_000),
        };
        assert!(e.to_string().len() <= MAX_ERROR_MESSAGE_LEN, "{e}");
    }
}
