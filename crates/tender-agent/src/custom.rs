//! Custom telemetry: metrics that applications on the device contribute, sent along with the
//! system metrics every telemetry interval.
//!
//! Names must be valid telemetry metric names (1 to 128 characters of `A-Z a-z 0-9 _ . - : /`,
//! starting with a letter or a digit, exactly what the server accepts); they are used as
//! given, without a prefix. A line or entry with an invalid name or a value that is not a
//! finite number is logged and skipped; the rest of the output still counts. Pick names that
//! do not clash with the agent's own (`cpu.*`, `mem.*`, `load.*`, `uptime.*`, `net.*`):
//! something like `app.<name>.<metric>`.
//!
//! # Collectors
//!
//! Every executable regular file of the collectors directory ([`DEFAULT_COLLECTORS_DIR`] on a
//! device; names starting with `.` and world-writable files are not run) is run once per
//! telemetry interval, with no input, in the same way and under the same limits as inventory
//! scripts (10 s by default, then it is killed with its process group; at most 64 KiB of
//! output; a non-zero exit discards the output). It prints one metric per line, either form:
//!
//! ```text
//! # comments and blank lines are skipped
//! app.queue.depth 17
//! app.temperature.celsius=41.5
//! ```
//!
//! # The spool directory
//!
//! Applications that produce metrics on their own schedule drop files into the spool
//! directory, [`SPOOL_DIR_NAME`] in the agent's data directory
//! (`/var/lib/tender-agent/metrics.d/`). Each telemetry tick the agent reads every
//! `*.json` and `*.metrics` file there, in name order, and deletes it. Files are:
//!
//! - `*.metrics`: lines as printed by collectors, measured "now" (the tick's time);
//! - `*.json`: the telemetry payload forms of the device protocol, either a flat object
//!   `{"app.queue.depth": 17}` (measured now), or `{"ts": 1790000000123, "values": {...}}`
//!   with `ts` in Unix milliseconds (or an RFC 3339 string) when the values were measured, or
//!   an array of such objects.
//!
//! A file that cannot be used at all (not UTF-8, not JSON of those shapes, a bad `ts`, larger
//! than 1 MiB, not a regular file, nothing valid in it) is renamed to `<name>.bad` and logged,
//! so it is neither lost nor read again. Samples whose `ts` is more than 30 days old or more
//! than 5 minutes ahead are dropped (the server would refuse them). At most
//! [`DEFAULT_MAX_VALUES`] custom values go out per tick; files beyond that wait for the next
//! tick.
//!
//! **Write files atomically**, or the agent may read half a file: write to a name the agent
//! ignores (ending in something other than `.json`/`.metrics`, or starting with `.`) in the
//! same directory, then `rename(2)` it into place — and do not hard-link it (a file with
//! more than one link is refused):
//!
//! ```sh
//! d=/var/lib/tender-agent/metrics.d
//! printf 'app.backup.duration_secs %s\n' "$secs" > "$d/.backup.tmp"
//! mv "$d/.backup.tmp" "$d/backup-$(date +%s%N).metrics"
//! ```
//!
//! Use a unique name per file (a timestamp or counter): renaming over a file the agent has
//! not read yet replaces it. The agent does not create the directory; the package or the
//! operator creates it writable by the applications that report, e.g.
//! `install -d -m 2770 -g tender-metrics /var/lib/tender-agent/metrics.d`.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::inventory::{DEFAULT_SCRIPT_TIMEOUT, clip, run_dir};

/// Where collectors live on a device.
pub const DEFAULT_COLLECTORS_DIR: &str = "/etc/tender/collectors.d";
/// The spool directory's name inside the agent's data directory.
pub const SPOOL_DIR_NAME: &str = "metrics.d";
/// Largest spool file read, in bytes.
pub const MAX_SPOOL_FILE_BYTES: u64 = 1024 * 1024;
/// Most spool files read per tick.
pub const MAX_FILES_PER_TICK: usize = 256;
/// Most custom values per tick by default (the server takes at most 1000 values per payload,
/// and the agent's own metrics travel in the same one).
pub const DEFAULT_MAX_VALUES: usize = 500;
/// Longest metric name, in bytes.
pub const MAX_METRIC_NAME_LEN: usize = 128;
/// How far in the past a sample's `ts` may lie (the server's limit): 30 days.
pub const MAX_TS_PAST_MS: i64 = 30 * 24 * 60 * 60 * 1000;
/// How far in the future a sample's `ts` may lie (the server's limit): 5 minutes.
pub const MAX_TS_FUTURE_MS: i64 = 5 * 60 * 1000;

/// Most warnings kept from one output or file.
const MAX_WARNINGS: usize = 20;
/// Most warnings logged for one output or file.
const MAX_LOGGED_WARNINGS: usize = 5;

/// Where custom metrics come from.
#[derive(Clone, Debug)]
pub struct CustomOptions {
    /// The collectors directory; `None` runs none.
    pub collectors_dir: Option<PathBuf>,
    /// The spool directory; `None` reads none.
    pub spool_dir: Option<PathBuf>,
    /// How long a collector may run.
    pub timeout: Duration,
    /// Most values per tick.
    pub max_values: usize,
}

impl Default for CustomOptions {
    fn default() -> Self {
        CustomOptions {
            collectors_dir: None,
            spool_dir: None,
            timeout: DEFAULT_SCRIPT_TIMEOUT,
            max_values: DEFAULT_MAX_VALUES,
        }
    }
}

impl CustomOptions {
    /// The device defaults: [`DEFAULT_COLLECTORS_DIR`] and `<data_dir>/metrics.d`.
    pub fn for_data_dir(data_dir: &Path) -> Self {
        CustomOptions {
            collectors_dir: Some(PathBuf::from(DEFAULT_COLLECTORS_DIR)),
            spool_dir: Some(data_dir.join(SPOOL_DIR_NAME)),
            ..CustomOptions::default()
        }
    }
}

/// Values measured at one time: `ts` in Unix milliseconds, or `None` for "now" (the time of
/// the tick; the caller stamps them, typically with its own system metrics).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CustomSample {
    pub ts: Option<i64>,
    pub values: BTreeMap<String, f64>,
}

/// Whether `name` is a valid telemetry metric name (the server's `MetricName` rules).
pub fn is_valid_metric_name(name: &str) -> bool {
    (1..=MAX_METRIC_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':' | b'/'))
}

/// Collects warnings, keeping the first few and counting the rest.
#[derive(Default)]
struct Warnings {
    kept: Vec<String>,
    more: usize,
}

impl Warnings {
    fn push(&mut self, w: String) {
        if self.kept.len() < MAX_WARNINGS {
            self.kept.push(w);
        } else {
            self.more += 1;
        }
    }

    fn finish(mut self) -> Vec<String> {
        if self.more > 0 {
            self.kept.push(format!("and {} more problems", self.more));
        }
        self.kept
    }
}

/// Metric lines (`name value` or `name=value`), as collectors print them and `*.metrics`
/// files hold them; one warning per line not understood. A name given twice keeps its last
/// value.
pub fn parse_metric_lines(text: &str) -> (BTreeMap<String, f64>, Vec<String>) {
    let mut values = BTreeMap::new();
    let mut warnings = Warnings::default();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let pair = match line.split_once('=') {
            Some((name, value)) => Some((name.trim(), value.trim())),
            None => {
                let mut words = line.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some(name), Some(value), None) => Some((name, value)),
                    _ => None,
                }
            }
        };
        let Some((name, value)) = pair else {
            warnings.push(format!(
                "line {n}: expected `name value` or `name=value`, got {}",
                clip(line, 60)
            ));
            continue;
        };
        if !is_valid_metric_name(name) {
            warnings.push(format!("line {n}: invalid metric name {}", clip(name, 60)));
            continue;
        }
        match value.parse::<f64>() {
            Ok(v) if v.is_finite() => {
                if values.insert(name.to_owned(), v).is_some() {
                    warnings.push(format!(
                        "line {n}: {name} given again; the last value counts"
                    ));
                }
            }
            _ => warnings.push(format!(
                "line {n}: {name}: {} is not a finite number",
                clip(value, 40)
            )),
        }
    }
    (values, warnings.finish())
}

/// Why a spool file was set aside (renamed to `.bad`).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SpoolError {
    #[error("not UTF-8")]
    NotUtf8,
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Shape(String),
    #[error("larger than {MAX_SPOOL_FILE_BYTES} bytes")]
    TooLarge,
    #[error("not a regular file with a single link")]
    NotRegular,
    #[error("cannot be read: {0}")]
    Read(String),
    #[error("nothing usable in it")]
    NothingUsable,
}

/// A `*.json` spool file: a flat object, a `{"ts", "values"}` object, or an array of those.
/// Invalid metrics are warnings; anything else wrong is an error.
pub fn parse_metric_json(text: &str) -> Result<(Vec<CustomSample>, Vec<String>), SpoolError> {
    use serde_json::Value as J;
    let json: J =
        serde_json::from_str(text).map_err(|e| SpoolError::Json(clip(&e.to_string(), 120)))?;
    let mut warnings = Warnings::default();
    let samples = match json {
        J::Object(obj) => vec![parse_json_entry(&obj, "", &mut warnings)?],
        J::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                J::Object(obj) => parse_json_entry(obj, &format!("[{i}] "), &mut warnings),
                other => Err(SpoolError::Shape(format!(
                    "[{i}]: expected an object, not {}",
                    json_kind(other)
                ))),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(SpoolError::Shape(format!(
                "expected an object or an array of objects, not {}",
                json_kind(&other)
            )));
        }
    };
    Ok((samples, warnings.finish()))
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    use serde_json::Value as J;
    match v {
        J::Null => "null",
        J::Bool(_) => "a boolean",
        J::Number(_) => "a number",
        J::String(_) => "a string",
        J::Array(_) => "an array",
        J::Object(_) => "an object",
    }
}

fn parse_json_entry(
    obj: &serde_json::Map<String, serde_json::Value>,
    at: &str,
    warnings: &mut Warnings,
) -> Result<CustomSample, SpoolError> {
    let shape = |m: String| SpoolError::Shape(format!("{at}{m}"));
    let Some(values) = obj.get("values") else {
        if obj.contains_key("ts") {
            return Err(shape(
                "\"ts\" needs a \"values\" object beside it".to_owned(),
            ));
        }
        return Ok(CustomSample {
            ts: None,
            values: json_values(obj, at, warnings),
        });
    };
    if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "ts" | "values")) {
        return Err(shape(format!(
            "{} beside \"values\": only \"ts\" is allowed",
            clip(k, 40)
        )));
    }
    let serde_json::Value::Object(values) = values else {
        return Err(shape(format!(
            "\"values\" must be an object, not {}",
            json_kind(values)
        )));
    };
    let ts = match obj.get("ts") {
        None => None,
        Some(v) => Some(json_ts(v).ok_or_else(|| {
            shape("\"ts\" must be Unix milliseconds (an integer) or an RFC 3339 time".to_owned())
        })?),
    };
    Ok(CustomSample {
        ts,
        values: json_values(values, at, warnings),
    })
}

fn json_ts(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => {
            let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .ok()?;
            i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
        }
        _ => None,
    }
}

fn json_values(
    obj: &serde_json::Map<String, serde_json::Value>,
    at: &str,
    warnings: &mut Warnings,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (name, value) in obj {
        if !is_valid_metric_name(name) {
            warnings.push(format!("{at}invalid metric name {}", clip(name, 60)));
            continue;
        }
        match value.as_f64().filter(|v| v.is_finite()) {
            Some(v) => {
                out.insert(name.clone(), v);
            }
            None => warnings.push(format!(
                "{at}{name} must be a number, not {}",
                json_kind(value)
            )),
        }
    }
    out
}

/// A spool file's content, by its name: `*.json` as JSON, anything else as metric lines.
pub fn parse_spool_file(
    name: &str,
    bytes: &[u8],
) -> Result<(Vec<CustomSample>, Vec<String>), SpoolError> {
    let text = std::str::from_utf8(bytes).map_err(|_| SpoolError::NotUtf8)?;
    let (samples, warnings) = if name.ends_with(".json") {
        parse_metric_json(text)?
    } else {
        let (values, warnings) = parse_metric_lines(text);
        (vec![CustomSample { ts: None, values }], warnings)
    };
    let count: usize = samples.iter().map(|s| s.values.len()).sum();
    if count == 0 && !warnings.is_empty() {
        // Only garbage: keep it for someone to look at rather than delete it.
        return Err(SpoolError::NothingUsable);
    }
    Ok((samples, warnings))
}

/// Merges samples taken at the same time (`None` with `None`; a later value of a metric
/// replaces an earlier one), drops those the server would refuse for their `ts` (relative to
/// `now_ms`) and keeps at most `max_values` values. Sorted: `None` first, then by time.
pub fn merge_samples(
    samples: impl IntoIterator<Item = CustomSample>,
    now_ms: i64,
    max_values: usize,
) -> (Vec<CustomSample>, Vec<String>) {
    let mut by_ts: BTreeMap<Option<i64>, BTreeMap<String, f64>> = BTreeMap::new();
    let mut warnings = Vec::new();
    let mut count = 0usize;
    let mut over = 0usize;
    for s in samples {
        if let Some(ts) = s.ts
            && (ts < now_ms.saturating_sub(MAX_TS_PAST_MS)
                || ts > now_ms.saturating_add(MAX_TS_FUTURE_MS))
        {
            warnings.push(format!(
                "{} values at ts {ts} dropped: more than 30 days old or 5 minutes ahead",
                s.values.len()
            ));
            continue;
        }
        let slot = by_ts.entry(s.ts).or_default();
        for (name, v) in s.values {
            if let Some(old) = slot.get_mut(&name) {
                *old = v;
            } else if count < max_values {
                slot.insert(name, v);
                count += 1;
            } else {
                over += 1;
            }
        }
    }
    if over > 0 {
        warnings.push(format!(
            "{over} values dropped: more than {max_values} custom values in one interval"
        ));
    }
    let merged = by_ts
        .into_iter()
        .filter(|(_, values)| !values.is_empty())
        .map(|(ts, values)| CustomSample { ts, values })
        .collect();
    (merged, warnings)
}

/// Everything the collectors print and the spool directory holds this tick (see the module
/// documentation), merged and within the limits. Problems are logged.
pub async fn collect_custom(opts: &CustomOptions) -> Vec<CustomSample> {
    let mut gathered = Vec::new();
    let mut count = 0usize;
    if let Some(dir) = &opts.collectors_dir {
        for (path, output) in run_dir(dir, opts.timeout, "metrics collector").await {
            let (values, warnings) = parse_metric_lines(&output);
            log_warnings("metrics collector", &path, &warnings);
            count += values.len();
            gathered.push(CustomSample { ts: None, values });
        }
    }
    if let Some(dir) = &opts.spool_dir {
        let dir = dir.clone();
        let budget = opts.max_values.saturating_sub(count);
        // Plain file reads, off the async threads.
        let spooled = tokio::task::spawn_blocking(move || drain_spool(&dir, budget))
            .await
            .unwrap_or_default();
        gathered.extend(spooled);
    }
    let (merged, warnings) = merge_samples(gathered, crate::telemetry::now_ms(), opts.max_values);
    for w in warnings {
        tracing::warn!("custom metrics: {w}");
    }
    merged
}

/// Reads and deletes the spool files of `dir` (name order, at most [`MAX_FILES_PER_TICK`]),
/// stopping once `max_values` values are in hand: the rest wait for the next call. Files that
/// cannot be used are renamed to `<name>.bad`. A missing directory holds nothing.
pub fn drain_spool(dir: &Path, max_values: usize) -> Vec<CustomSample> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot list the metrics spool directory");
            return Vec::new();
        }
    };
    let mut files: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let wanted =
                !name.starts_with('.') && (name.ends_with(".json") || name.ends_with(".metrics"));
            wanted.then(|| (name, e.path()))
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    let mut count = 0usize;
    for (name, path) in files.into_iter().take(MAX_FILES_PER_TICK) {
        if count >= max_values {
            break;
        }
        if let Some(samples) = take_spool_file(&name, &path) {
            count += samples.iter().map(|s| s.values.len()).sum::<usize>();
            out.extend(samples);
        }
    }
    out
}

/// One spool file's samples, the file deleted; `None` if it vanished, was set aside as bad,
/// or could not be deleted (then its values are dropped, so that they are never sent twice).
fn take_spool_file(name: &str, path: &Path) -> Option<Vec<CustomSample>> {
    let bytes = match read_spool_file(path) {
        Ok(b) => b,
        Err(None) => return None,
        Err(Some(e)) => {
            set_aside(path, &e);
            return None;
        }
    };
    match parse_spool_file(name, &bytes) {
        Err(e) => {
            set_aside(path, &e);
            None
        }
        Ok((samples, warnings)) => {
            log_warnings("metrics spool file", path, &warnings);
            match std::fs::remove_file(path) {
                Ok(()) => Some(samples),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot delete a metrics spool file; its values are dropped");
                    None
                }
            }
        }
    }
}

/// The bytes of a regular, singly linked file of at most [`MAX_SPOOL_FILE_BYTES`]; `Err(None)`
/// if it is gone. The file opened is checked to be the one looked at, so that a symbolic link
/// swapped in meanwhile is not followed.
fn read_spool_file(path: &Path) -> Result<Vec<u8>, Option<SpoolError>> {
    let gone_or = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => None,
        _ => Some(SpoolError::Read(e.to_string())),
    };
    let before = std::fs::symlink_metadata(path).map_err(gone_or)?;
    if !before.file_type().is_file() {
        return Err(Some(SpoolError::NotRegular));
    }
    if before.len() > MAX_SPOOL_FILE_BYTES {
        return Err(Some(SpoolError::TooLarge));
    }
    let file = std::fs::File::open(path).map_err(gone_or)?;
    let opened = file.metadata().map_err(gone_or)?;
    if (opened.dev(), opened.ino()) != (before.dev(), before.ino()) || opened.nlink() != 1 {
        return Err(Some(SpoolError::NotRegular));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SPOOL_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(gone_or)?;
    if bytes.len() as u64 > MAX_SPOOL_FILE_BYTES {
        return Err(Some(SpoolError::TooLarge));
    }
    Ok(bytes)
}

/// Renames a spool file to `<name>.bad` (deletes it if that fails), logging why.
fn set_aside(path: &Path, reason: &SpoolError) {
    let mut bad = path.as_os_str().to_owned();
    bad.push(".bad");
    let bad = PathBuf::from(bad);
    match std::fs::rename(path, &bad) {
        Ok(()) => {
            tracing::warn!(file = %path.display(), reason = %reason, "metrics spool file not usable; renamed to .bad");
        }
        Err(e) => {
            let removed = std::fs::remove_file(path).is_ok();
            tracing::warn!(file = %path.display(), reason = %reason, error = %e, removed, "metrics spool file not usable and cannot be renamed to .bad");
        }
    }
}

fn log_warnings(what: &str, path: &Path, warnings: &[String]) {
    for w in warnings.iter().take(MAX_LOGGED_WARNINGS) {
        tracing::warn!(file = %path.display(), "{what}: {w}");
    }
    if warnings.len() > MAX_LOGGED_WARNINGS {
        tracing::warn!(
            file = %path.display(),
            "{what}: {} more problems",
            warnings.len() - MAX_LOGGED_WARNINGS
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn values(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn metric_names_follow_the_server() {
        for name in [
            "cpu.usage",
            "app/queue:depth-1_x",
            "9lives",
            "",
            "_x",
            ".x",
            "a b",
            "a=b",
            "é",
            "x{label=\"1\"}",
            &"m".repeat(128),
            &"m".repeat(129),
        ] {
            assert_eq!(
                is_valid_metric_name(name),
                tender_core::telemetry::MetricName::parse(name).is_ok(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn metric_lines_in_both_forms() {
        let (v, w) = parse_metric_lines(
            "# comment\n\napp.queue.depth 17\napp.temp.celsius=41.5\n  spaced  =  -3e2 \nbad name 1\n_hidden 1\napp.nan NaN\napp.inf inf\napp.text hello\nthree words here\napp.queue.depth\t18\n",
        );
        assert_eq!(
            v,
            values(&[
                ("app.queue.depth", 18.0),
                ("app.temp.celsius", 41.5),
                ("spaced", -300.0)
            ])
        );
        let w = w.join("\n");
        for expected in [
            "line 6: expected",
            "line 7: invalid metric name \"_hidden\"",
            "line 8: app.nan: \"NaN\" is not a finite number",
            "line 9: app.inf",
            "line 10: app.text",
            "line 11: expected",
            "line 12: app.queue.depth given again",
        ] {
            assert!(w.contains(expected), "{expected}\n{w}");
        }
        let (v, w) = parse_metric_lines(&"?\n".repeat(50));
        assert!(v.is_empty());
        assert_eq!(w.len(), MAX_WARNINGS + 1);
        assert_eq!(w[MAX_WARNINGS], "and 30 more problems");
    }

    #[test]
    fn json_flat_structured_and_batch() {
        let (s, w) =
            parse_metric_json(r#"{"app.a": 1, "app.b": 2.5, "bad name": 1, "app.c": "x"}"#)
                .unwrap();
        assert_eq!(
            s,
            vec![CustomSample {
                ts: None,
                values: values(&[("app.a", 1.0), ("app.b", 2.5)])
            }]
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w.iter()
                .any(|w| w == "app.c must be a number, not a string"),
            "{w:?}"
        );

        let (s, w) = parse_metric_json(r#"{"ts": 1790000000123, "values": {"app.a": 1}}"#).unwrap();
        assert_eq!(s[0].ts, Some(1_790_000_000_123));
        assert!(w.is_empty());

        let (s, _) = parse_metric_json(
            r#"[{"ts": "2026-09-21T14:13:20.123Z", "values": {"app.a": 1}}, {"app.b": 2}, {"values": {}}]"#,
        )
        .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].ts, Some(1_790_000_000_123));
        assert_eq!(
            s[1],
            CustomSample {
                ts: None,
                values: values(&[("app.b", 2.0)])
            }
        );
        assert_eq!(s[2], CustomSample::default());

        let err = |t: &str| parse_metric_json(t).unwrap_err().to_string();
        assert!(err("{").starts_with("not valid JSON"));
        assert_eq!(
            err("3"),
            "expected an object or an array of objects, not a number"
        );
        assert_eq!(err("[1]"), "[0]: expected an object, not a number");
        assert_eq!(
            err(r#"{"ts": 1, "app.a": 1}"#),
            "\"ts\" needs a \"values\" object beside it"
        );
        assert_eq!(
            err(r#"[{"values": {}, "extra": 1}]"#),
            "[0] \"extra\" beside \"values\": only \"ts\" is allowed"
        );
        assert_eq!(
            err(r#"{"values": [1]}"#),
            "\"values\" must be an object, not an array"
        );
        for bad_ts in ["1.5", "\"yesterday\"", "null", "99999999999999999999"] {
            let e = err(&format!(r#"{{"ts": {bad_ts}, "values": {{}}}}"#));
            assert!(e.starts_with("\"ts\" must be"), "{bad_ts}: {e}");
        }
    }

    #[test]
    fn spool_files_by_extension() {
        let (s, _) = parse_spool_file("a.metrics", b"app.x 1\n").unwrap();
        assert_eq!(s[0].values, values(&[("app.x", 1.0)]));
        let (s, _) = parse_spool_file("a.json", b"{\"app.x\": 2}").unwrap();
        assert_eq!(s[0].values, values(&[("app.x", 2.0)]));
        assert_eq!(
            parse_spool_file("a.json", b"\xff"),
            Err(SpoolError::NotUtf8)
        );
        assert_eq!(
            parse_spool_file("a.metrics", b"garbage\n"),
            Err(SpoolError::NothingUsable)
        );
        assert_eq!(
            parse_spool_file("a.json", b"{\"x y\": 1}"),
            Err(SpoolError::NothingUsable)
        );
        // Empty is fine: nothing to send, nothing wrong.
        let (s, w) = parse_spool_file("a.metrics", b"").unwrap();
        assert!(s[0].values.is_empty() && w.is_empty());
    }

    #[test]
    fn merging_windows_and_caps() {
        let now = 1_790_000_000_000;
        let day = 24 * 60 * 60 * 1000;
        let s = |ts: Option<i64>, pairs: &[(&str, f64)]| CustomSample {
            ts,
            values: values(pairs),
        };
        let (m, w) = merge_samples(
            [
                s(None, &[("a", 1.0), ("b", 1.0)]),
                s(Some(now - 1000), &[("a", 5.0)]),
                s(None, &[("b", 2.0), ("c", 3.0)]),
                s(Some(now - 31 * day), &[("old", 1.0)]),
                s(Some(now + 10 * 60 * 1000), &[("future", 1.0)]),
                s(Some(now - 30 * day), &[("edge", 1.0)]),
                s(Some(now - 1000), &[("d", 4.0)]),
                s(None, &[]),
            ],
            now,
            100,
        );
        assert_eq!(
            m,
            vec![
                s(None, &[("a", 1.0), ("b", 2.0), ("c", 3.0)]),
                s(Some(now - 30 * day), &[("edge", 1.0)]),
                s(Some(now - 1000), &[("a", 5.0), ("d", 4.0)]),
            ]
        );
        assert_eq!(w.len(), 2, "{w:?}");

        let (m, w) = merge_samples(
            [
                s(None, &[("a", 1.0), ("b", 1.0), ("c", 1.0)]),
                s(None, &[("a", 2.0), ("d", 1.0)]),
            ],
            now,
            2,
        );
        assert_eq!(m, vec![s(None, &[("a", 2.0), ("b", 1.0)])]);
        assert_eq!(
            w,
            ["2 values dropped: more than 2 custom values in one interval"]
        );
    }

    fn write_script(dir: &Path, name: &str, body: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_spool_is_drained_and_bad_files_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("01.json"), r#"{"app.a": 1}"#).unwrap();
        std::fs::write(d.join("02.metrics"), "app.b 2\nbad line here\n").unwrap();
        std::fs::write(d.join("03.json"), "{not json").unwrap();
        std::fs::write(d.join("04.json.tmp"), r#"{"app.tmp": 1}"#).unwrap();
        std::fs::write(d.join(".05.json"), r#"{"app.hidden": 1}"#).unwrap();
        std::fs::write(d.join("06.txt"), "app.c 3\n").unwrap();
        std::os::unix::fs::symlink(d.join("01.json"), d.join("07.json")).unwrap();
        std::fs::write(d.join("08.json"), r#"{"app.linked": 1}"#).unwrap();
        std::fs::hard_link(d.join("08.json"), d.join("08-link.txt")).unwrap();
        std::fs::create_dir(d.join("09.json")).unwrap();
        std::fs::write(
            d.join("10.json"),
            vec![b' '; MAX_SPOOL_FILE_BYTES as usize + 1],
        )
        .unwrap();
        std::fs::write(d.join("11.json.bad"), "old").unwrap();

        let got = drain_spool(d, 100);
        assert_eq!(
            got,
            vec![
                CustomSample {
                    ts: None,
                    values: values(&[("app.a", 1.0)])
                },
                CustomSample {
                    ts: None,
                    values: values(&[("app.b", 2.0)])
                },
            ]
        );
        assert_eq!(
            names_in(d),
            [
                ".05.json",
                "03.json.bad",
                "04.json.tmp",
                "06.txt",
                "07.json.bad",
                "08-link.txt",
                "08.json.bad",
                "09.json.bad",
                "10.json.bad",
                "11.json.bad"
            ]
        );
        // Nothing is read twice.
        assert!(drain_spool(d, 100).is_empty());
        assert!(drain_spool(&d.join("missing"), 100).is_empty());
    }

    #[test]
    fn the_spool_stops_at_the_value_budget() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("1.metrics"), "a 1\nb 2\n").unwrap();
        std::fs::write(d.join("2.metrics"), "c 3\n").unwrap();
        std::fs::write(d.join("3.metrics"), "d 4\n").unwrap();
        assert_eq!(drain_spool(d, 2).len(), 1);
        assert_eq!(
            names_in(d),
            ["2.metrics", "3.metrics"],
            "left for the next tick"
        );
        assert_eq!(drain_spool(d, 0).len(), 0);
        assert_eq!(drain_spool(d, 5).len(), 2);
        assert!(names_in(d).is_empty());
    }

    #[tokio::test]
    async fn collect_custom_combines_collectors_and_spool() {
        let collectors = tempfile::tempdir().unwrap();
        let spool = tempfile::tempdir().unwrap();
        write_script(
            collectors.path(),
            "a",
            "echo app.queue.depth 17\necho 'app.temp=41.5'\necho 'bad name 1'",
        );
        write_script(collectors.path(), "b", "echo app.never 1\nexit 1");
        write_script(collectors.path(), "c", "echo app.queue.depth 18");
        let now = crate::telemetry::now_ms();
        std::fs::write(
            spool.path().join("x.json"),
            format!(
                r#"[{{"ts": {}, "values": {{"app.batch": 1}}}}, {{"app.flat": 2}}]"#,
                now - 60_000
            ),
        )
        .unwrap();
        std::fs::write(
            spool.path().join("y.json"),
            format!(
                r#"{{"ts": {}, "values": {{"app.ancient": 1}}}}"#,
                now - 40 * 86_400_000
            ),
        )
        .unwrap();
        let opts = CustomOptions {
            collectors_dir: Some(collectors.path().to_owned()),
            spool_dir: Some(spool.path().to_owned()),
            timeout: Duration::from_secs(10),
            max_values: DEFAULT_MAX_VALUES,
        };
        let got = collect_custom(&opts).await;
        assert_eq!(
            got,
            vec![
                CustomSample {
                    ts: None,
                    values: values(&[
                        ("app.flat", 2.0),
                        ("app.queue.depth", 18.0),
                        ("app.temp", 41.5)
                    ])
                },
                CustomSample {
                    ts: Some(now - 60_000),
                    values: values(&[("app.batch", 1.0)])
                },
            ]
        );
        assert!(names_in(spool.path()).is_empty(), "read and deleted");
        assert!(collect_custom(&CustomOptions::default()).await.is_empty());

        let defaults = CustomOptions::for_data_dir(Path::new("/var/lib/tender-agent"));
        assert_eq!(
            defaults.spool_dir.unwrap(),
            Path::new("/var/lib/tender-agent/metrics.d")
        );
        assert_eq!(
            defaults.collectors_dir.unwrap(),
            Path::new(DEFAULT_COLLECTORS_DIR)
        );
    }
}
