//! Remote logs on the device: the `[logs]` sources the agent may read, a request from the
//! server (`logs/{id}`) read, gzipped and uploaded over the device HTTPS API with the device
//! certificate, and follow requests that publish new lines (`logs/{id}/lines`) until their
//! lease runs out.
//!
//! ```toml
//! [logs.sources.app]
//! file = "/var/log/app.log"
//! [logs.sources.nginx]
//! journal = "nginx.service"
//! ```
//!
//! Invariants: only configured sources are read (the server names a source, never a path); a
//! file is scanned from at most its last [`MAX_SCAN_BYTES`]; `journalctl` runs with a time
//! limit and its output is bounded; a request id is handled once; a follow stops
//! [`FOLLOW_LEASE_SECS`] after the last copy of the request arrived (each copy renews it).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tender_core::logs::{
    FOLLOW_LEASE_SECS, LogDownlink, MAX_BATCH_LINES, MAX_LINE_BYTES, SourceName, parse_downlink,
};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::agent::Uplink;
use crate::identity::Identity;

/// Most bytes of a file (from its end) a request looks at.
pub const MAX_SCAN_BYTES: u64 = 64 * 1024 * 1024;
/// Most bytes of `journalctl` output read.
pub const MAX_JOURNAL_BYTES: usize = 64 * 1024 * 1024;
/// How long `journalctl` may run for one request.
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a followed file is looked at, and how long lines are gathered into one batch.
const FOLLOW_POLL: Duration = Duration::from_millis(300);
/// A follow batch is sent once its lines reach this many bytes (well under the server's
/// per-message and MQTT packet limits).
const BATCH_SEND_BYTES: usize = 64 * 1024;

/// `[logs.sources.NAME]` as written: exactly one of `file` and `journal`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub file: Option<PathBuf>,
    pub journal: Option<String>,
}

/// `[logs]` as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogsConfig {
    #[serde(default)]
    pub sources: BTreeMap<String, RawSource>,
}

/// Where a source's lines come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A plain text file (lines may start with an RFC 3339 time, used by `since`/`until`).
    File(PathBuf),
    /// A systemd unit's journal, read with `journalctl -u UNIT`.
    Journal(String),
}

/// The validated `[logs]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogsConfig {
    pub sources: BTreeMap<SourceName, Source>,
}

impl LogsConfig {
    pub fn from_raw(raw: Option<RawLogsConfig>) -> Result<Self, String> {
        let mut sources = BTreeMap::new();
        for (name, s) in raw.unwrap_or_default().sources {
            let n = SourceName::parse(&name).map_err(|e| format!("logs.sources: {e}"))?;
            let source = match (s.file, s.journal) {
                (Some(f), None) if f.is_absolute() => Source::File(f),
                (Some(f), None) => {
                    return Err(format!(
                        "logs.sources.{name}: file must be an absolute path, not {}",
                        f.display()
                    ));
                }
                (None, Some(u))
                    if !u.is_empty()
                        && u.len() <= 256
                        && !u.starts_with('-')
                        && u.bytes().all(|b| b.is_ascii_graphic()) =>
                {
                    Source::Journal(u)
                }
                (None, Some(u)) => {
                    return Err(format!(
                        "logs.sources.{name}: {u:?} is not a systemd unit name"
                    ));
                }
                _ => {
                    return Err(format!(
                        "logs.sources.{name}: give exactly one of file = \"/path\" or journal = \"unit\""
                    ));
                }
            };
            sources.insert(n, source);
        }
        Ok(LogsConfig { sources })
    }
}

/// What a read covers: a time range (Unix milliseconds) and the last N lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub lines: u32,
}

/// The time at the start of a log line: an RFC 3339 time as the first word, or
/// `YYYY-MM-DD HH:MM:SS` (UTC) as the first two.
pub fn line_time(line: &str) -> Option<i64> {
    let mut words = line.split_whitespace();
    let first = words.next()?;
    if !first.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let parse = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
    };
    parse(first).or_else(|| {
        let second = words.next()?;
        parse(&format!("{first}T{second}Z"))
    })
}

/// The lines of `text` in the range, the last `range.lines` of them. A line without a time of
/// its own (a continuation) goes with the line before it; with a range given, lines before the
/// first timed line are left out.
pub fn select_lines(text: &str, range: Range) -> Vec<String> {
    let limit = usize::try_from(range.lines).unwrap_or(usize::MAX);
    let mut out: VecDeque<String> = VecDeque::new();
    let mut current: Option<i64> = None;
    let ranged = range.since.is_some() || range.until.is_some();
    for line in text.lines() {
        if let Some(t) = line_time(line) {
            current = Some(t);
        }
        if ranged {
            let Some(t) = current else { continue };
            if range.since.is_some_and(|s| t < s) || range.until.is_some_and(|u| t >= u) {
                continue;
            }
        }
        out.push_back(cut_line(line));
        if out.len() > limit {
            out.pop_front();
        }
    }
    out.into()
}

fn cut_line(line: &str) -> String {
    tender_core::command::truncate_utf8(line, MAX_LINE_BYTES).to_owned()
}

/// Reads a file source: the end of the file (at most [`MAX_SCAN_BYTES`]), filtered.
pub fn read_file(path: &Path, range: Range) -> Result<Vec<String>, String> {
    let mut f =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let len = f
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    let start = len.saturating_sub(MAX_SCAN_BYTES);
    f.seek(SeekFrom::Start(start))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(MAX_SCAN_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let text = if start > 0 {
        // The first line was cut by the scan limit.
        text.split_once('\n').map(|(_, rest)| rest).unwrap_or("")
    } else {
        &text
    };
    Ok(select_lines(text, range))
}

/// `journalctl` arguments for a unit and range.
pub fn journal_args(unit: &str, range: Range, follow: bool) -> Vec<String> {
    let mut args = vec![
        "-u".to_owned(),
        unit.to_owned(),
        "-n".to_owned(),
        range.lines.to_string(),
        "-o".to_owned(),
        "short-iso".to_owned(),
        "--no-pager".to_owned(),
    ];
    if let Some(s) = range.since {
        args.push(format!("--since=@{}", s.div_euclid(1000)));
    }
    if let Some(u) = range.until {
        args.push(format!("--until=@{}", u.div_euclid(1000)));
    }
    if follow {
        args.push("-f".to_owned());
    }
    args
}

async fn read_journal(unit: &str, range: Range) -> Result<Vec<String>, String> {
    let mut cmd = tokio::process::Command::new("journalctl");
    cmd.args(journal_args(unit, range, false))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run journalctl: {e}"))?;
    let out = tokio::time::timeout(JOURNAL_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("journalctl did not finish within {JOURNAL_TIMEOUT:?}"))?
        .map_err(|e| format!("journalctl failed: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "journalctl -u {unit} failed ({}): {}",
            out.status,
            tender_core::command::truncate_utf8(err.trim(), 512)
        ));
    }
    let stdout = &out.stdout[..out.stdout.len().min(MAX_JOURNAL_BYTES)];
    Ok(String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.starts_with("-- "))
        .map(cut_line)
        .collect())
}

/// Reads every source of a request into one text (sections headed `==> NAME <==` when there
/// are several).
pub async fn collect(config: &LogsConfig, request: &LogDownlink) -> Result<String, String> {
    let range = Range {
        since: request.since,
        until: request.until,
        lines: request.lines,
    };
    let mut text = String::new();
    for name in &request.sources {
        let source = config.sources.get(name).ok_or_else(|| {
            format!(
                "this device has no log source \"{name}\" (configured: {})",
                names(config)
            )
        })?;
        let lines = match source {
            Source::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_file(&path, range))
                    .await
                    .map_err(|e| format!("reading {name}: {e}"))??
            }
            Source::Journal(unit) => read_journal(unit, range).await?,
        };
        if request.sources.len() > 1 {
            text.push_str(&format!("==> {name} <==\n"));
        }
        for l in lines {
            text.push_str(&l);
            text.push('\n');
        }
    }
    Ok(text)
}

fn names(config: &LogsConfig) -> String {
    if config.sources.is_empty() {
        return "none".into();
    }
    config
        .sources
        .keys()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn gzip(text: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = e.write_all(text.as_bytes());
    e.finish().unwrap_or_default()
}

/// Gzips `text`, leaving out the oldest lines until it fits in `max_bytes` (with a note at the
/// top saying how many were left out).
pub fn compress_within(text: &str, max_bytes: u64) -> Vec<u8> {
    let z = gzip(text);
    if z.len() as u64 <= max_bytes {
        return z;
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut skip = lines.len() / 2;
    loop {
        let kept = lines[skip..].join("\n");
        let z = gzip(&format!(
            "[tender: {skip} older lines left out to fit {max_bytes} compressed bytes]\n{kept}\n"
        ));
        if z.len() as u64 <= max_bytes || skip >= lines.len() {
            return z;
        }
        skip += (lines.len() - skip).div_ceil(2);
    }
}

/// Runs log requests from the server.
pub struct LogRunner {
    shared: Arc<Shared>,
    /// Requests handled (and follow leases), by id.
    seen: HashMap<String, Option<watch::Sender<Instant>>>,
    order: VecDeque<String>,
}

struct Shared {
    config: LogsConfig,
    uplinks: mpsc::Sender<Uplink>,
    server_url: String,
    ca_pem: String,
    identity: watch::Receiver<Arc<Identity>>,
    follows: AtomicUsize,
}

/// How many request ids are remembered (a repeat of one of them is a lease renewal or ignored).
const REMEMBERED: usize = 256;
/// Most follows running at once.
const MAX_FOLLOWS: usize = 4;

impl LogRunner {
    pub fn new(
        config: &crate::config::AgentConfig,
        uplinks: mpsc::Sender<Uplink>,
        ca_pem: String,
        identity: watch::Receiver<Arc<Identity>>,
    ) -> Self {
        LogRunner {
            shared: Arc::new(Shared {
                config: config.logs.clone(),
                uplinks,
                server_url: config.server_url.trim_end_matches('/').to_owned(),
                ca_pem,
                identity,
                follows: AtomicUsize::new(0),
            }),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// A request arrived on `logs/{id}`. Returns at once; the work happens in a task.
    pub fn on_request(&mut self, id: &str, payload: &[u8]) {
        let request = match parse_downlink(payload) {
            Ok(r) if r.id.to_string() == id => r,
            Ok(_) => {
                tracing::warn!(
                    request = id,
                    "a log request whose id does not match its topic; ignored"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(request = id, error = %e, "an invalid log request");
                let shared = self.shared.clone();
                let id = id.to_owned();
                let why = e.to_string();
                tokio::spawn(async move { shared.failed(&id, &why).await });
                return;
            }
        };
        let lease = Instant::now() + Duration::from_secs(FOLLOW_LEASE_SECS);
        match self.seen.get(id) {
            // A renewal of a running follow.
            Some(Some(tx)) if tx.send(lease).is_ok() => return,
            // A follow that ended (its lease ran out) and is wanted again: it starts anew.
            Some(Some(_)) => {}
            // A fetch is done once.
            Some(None) => return,
            None => {}
        }
        let follow = if request.follow {
            let (tx, rx) = watch::channel(lease);
            Some((tx, rx))
        } else {
            None
        };
        self.remember(id, follow.as_ref().map(|(tx, _)| tx.clone()));
        let shared = self.shared.clone();
        match follow {
            Some((_, rx)) => {
                tokio::spawn(async move { shared.follow(request, rx).await });
            }
            None => {
                tokio::spawn(async move { shared.fetch(request).await });
            }
        }
    }

    fn remember(&mut self, id: &str, lease: Option<watch::Sender<Instant>>) {
        if self.seen.insert(id.to_owned(), lease).is_none() {
            self.order.push_back(id.to_owned());
        }
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }
}

impl Shared {
    async fn publish(&self, suffix: String, payload: Vec<u8>) {
        if self
            .uplinks
            .send(Uplink::new(suffix, payload))
            .await
            .is_err()
        {
            tracing::debug!("the agent is stopping; a log message is not queued");
        }
    }

    async fn status(&self, id: &str, body: serde_json::Value) {
        self.publish(format!("logs/{id}/status"), body.to_string().into_bytes())
            .await;
    }

    async fn failed(&self, id: &str, why: &str) {
        tracing::warn!(
            request = id,
            error = why,
            "cannot provide the logs asked for"
        );
        self.status(id, serde_json::json!({"status": "failed", "error": why}))
            .await;
    }

    async fn fetch(&self, request: LogDownlink) {
        let id = request.id.to_string();
        self.status(&id, serde_json::json!({"status": "uploading"}))
            .await;
        let text = match collect(&self.config, &request).await {
            Ok(t) => t,
            Err(why) => return self.failed(&id, &why).await,
        };
        let max = request.max_bytes;
        let body = match tokio::task::spawn_blocking(move || compress_within(&text, max)).await {
            Ok(b) => b,
            Err(e) => return self.failed(&id, &format!("cannot compress: {e}")).await,
        };
        if let Err(why) = self.upload(&request, body).await {
            self.failed(&id, &why).await;
        }
    }

    async fn upload(&self, request: &LogDownlink, body: Vec<u8>) -> Result<(), String> {
        if !request.upload_path.starts_with("/device/v1/logs/") {
            return Err(format!("unexpected upload path {:?}", request.upload_path));
        }
        let identity = self.identity.borrow().clone();
        let client = crate::identity::http_client(&self.ca_pem, Some(&identity))
            .map_err(|e| format!("cannot build the HTTPS client: {e}"))?;
        let url = format!("{}{}", self.server_url, request.upload_path);
        let bytes = body.len();
        let mut last = String::new();
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(2 << attempt)).await;
            }
            match client
                .put(&url)
                .header("content-type", "application/gzip")
                .body(body.clone())
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    tracing::info!(request = %request.id, bytes, "logs uploaded");
                    return Ok(());
                }
                Ok(r) if r.status().is_client_error() => {
                    // The server decided (too large, finished, not ours): nothing to retry;
                    // it recorded the failure itself where it applies.
                    let status = r.status();
                    let detail = r.text().await.unwrap_or_default();
                    tracing::warn!(request = %request.id, %status, detail = %detail, "the server refused the log upload");
                    return Ok(());
                }
                Ok(r) => last = format!("the server answered {}", r.status()),
                Err(e) => last = format!("upload failed: {e}"),
            }
        }
        Err(last)
    }

    async fn follow(&self, request: LogDownlink, lease: watch::Receiver<Instant>) {
        let id = request.id.to_string();
        let running = self.follows.fetch_add(1, Ordering::SeqCst);
        if running >= MAX_FOLLOWS {
            self.follows.fetch_sub(1, Ordering::SeqCst);
            return self
                .failed(
                    &id,
                    &format!("this device already follows {MAX_FOLLOWS} logs"),
                )
                .await;
        }
        let range = Range {
            since: None,
            until: None,
            lines: request.lines,
        };
        let mut tasks = tokio::task::JoinSet::new();
        for name in &request.sources {
            let Some(source) = self.config.sources.get(name).cloned() else {
                self.failed(
                    &id,
                    &format!(
                        "this device has no log source \"{name}\" (configured: {})",
                        names(&self.config)
                    ),
                )
                .await;
                tasks.abort_all();
                break;
            };
            let (tx, rx) = mpsc::channel::<String>(1024);
            let name = name.clone();
            match source {
                Source::File(path) => {
                    tasks.spawn(tail_file(path, range, tx));
                }
                Source::Journal(unit) => {
                    tasks.spawn(tail_journal(unit, range, tx));
                }
            }
            tasks.spawn(batch_lines(
                self.uplinks.clone(),
                format!("logs/{id}/lines"),
                name,
                rx,
            ));
        }
        // Until the lease runs out without renewal (or every reader ended).
        let mut lease = lease;
        loop {
            let until = *lease.borrow_and_update();
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {
                    if *lease.borrow() <= Instant::now() {
                        break;
                    }
                }
                changed = lease.changed() => if changed.is_err() { break },
                done = tasks.join_next() => if done.is_none() { break },
            }
        }
        tasks.abort_all();
        tracing::info!(request = %id, "log follow ended");
        self.follows.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Sends the last lines of a file, then new lines as they are written (a truncated or
/// replaced file is read again from its start).
async fn tail_file(path: PathBuf, range: Range, tx: mpsc::Sender<String>) {
    let p = path.clone();
    let first = tokio::task::spawn_blocking(move || -> Result<(Vec<String>, u64), String> {
        let lines = read_file(&p, range)?;
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        Ok((lines, len))
    })
    .await;
    let mut pos = match first {
        Ok(Ok((lines, len))) => {
            for l in lines {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            len
        }
        Ok(Err(e)) => {
            let _ = tx.send(format!("[tender: {e}]")).await;
            0
        }
        Err(_) => return,
    };
    let mut partial = String::new();
    loop {
        tokio::time::sleep(FOLLOW_POLL).await;
        let p = path.clone();
        let start = pos;
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<u8>, u64)> {
            let mut f = std::fs::File::open(&p)?;
            let len = f.metadata()?.len();
            let from = if len < start { 0 } else { start };
            f.seek(SeekFrom::Start(from))?;
            let mut buf = Vec::new();
            f.take(1024 * 1024).read_to_end(&mut buf)?;
            Ok((buf, from))
        })
        .await;
        let Ok(Ok((buf, from))) = read else { continue };
        if from < pos {
            partial.clear();
        }
        pos = from + buf.len() as u64;
        partial.push_str(&String::from_utf8_lossy(&buf));
        while let Some(i) = partial.find('\n') {
            let line: String = partial.drain(..=i).collect();
            if tx
                .send(cut_line(line.trim_end_matches(['\n', '\r'])))
                .await
                .is_err()
            {
                return;
            }
        }
        if partial.len() > MAX_LINE_BYTES {
            let line = std::mem::take(&mut partial);
            if tx.send(cut_line(&line)).await.is_err() {
                return;
            }
        }
    }
}

/// Runs `journalctl -f` for the unit and sends its lines.
async fn tail_journal(unit: String, range: Range, tx: mpsc::Sender<String>) {
    let mut cmd = tokio::process::Command::new("journalctl");
    cmd.args(journal_args(&unit, range, true))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = tx
                .send(format!("[tender: cannot run journalctl: {e}]"))
                .await;
            return;
        }
    };
    let Some(out) = child.stdout.take() else {
        return;
    };
    let mut lines = tokio::io::BufReader::new(out).lines();
    while let Ok(Some(l)) = lines.next_line().await {
        if tx.send(cut_line(&l)).await.is_err() {
            break;
        }
    }
    let _ = child.kill().await;
}

/// Gathers lines into batches of at most [`MAX_BATCH_LINES`] (or what came within
/// [`FOLLOW_POLL`]) and queues each for `suffix`.
async fn batch_lines(
    uplinks: mpsc::Sender<Uplink>,
    suffix: String,
    source: SourceName,
    mut rx: mpsc::Receiver<String>,
) {
    let mut batch: Vec<String> = Vec::new();
    let mut bytes = 0usize;
    loop {
        let got = if batch.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(FOLLOW_POLL, rx.recv()).await {
                Ok(l) => l,
                Err(_) => {
                    flush(&uplinks, &suffix, &source, &mut batch).await;
                    bytes = 0;
                    continue;
                }
            }
        };
        let Some(line) = got else {
            flush(&uplinks, &suffix, &source, &mut batch).await;
            return;
        };
        bytes += line.len() + 8;
        batch.push(line);
        if batch.len() >= MAX_BATCH_LINES || bytes >= BATCH_SEND_BYTES {
            flush(&uplinks, &suffix, &source, &mut batch).await;
            bytes = 0;
        }
    }
}

async fn flush(
    uplinks: &mpsc::Sender<Uplink>,
    suffix: &str,
    source: &SourceName,
    batch: &mut Vec<String>,
) {
    if batch.is_empty() {
        return;
    }
    let payload = serde_json::json!({"source": source, "lines": std::mem::take(batch)});
    let _ = uplinks
        .send(Uplink::new(suffix, payload.to_string().into_bytes()))
        .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ms(s: &str) -> i64 {
        line_time(s).unwrap()
    }

    fn all(lines: u32) -> Range {
        Range {
            since: None,
            until: None,
            lines,
        }
    }

    #[test]
    fn line_times() {
        assert_eq!(ms("2026-01-01T00:00:00Z boot"), 1_767_225_600_000);
        assert_eq!(ms("2026-01-01T01:00:00+01:00 x"), 1_767_225_600_000);
        assert_eq!(ms("2026-01-01 00:00:01 x"), 1_767_225_601_000);
        assert_eq!(line_time("just text"), None);
        assert_eq!(line_time("  "), None);
        assert_eq!(line_time("12 apples"), None);
    }

    #[test]
    fn last_lines_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.log");
        let text: String = (1..=100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&p, text).unwrap();
        let got = read_file(&p, all(3)).unwrap();
        assert_eq!(got, vec!["line 98", "line 99", "line 100"]);
        assert_eq!(read_file(&p, all(1000)).unwrap().len(), 100);
        assert!(read_file(&dir.path().join("missing.log"), all(3)).is_err());
    }

    #[test]
    fn since_and_until_use_line_times_and_keep_continuations() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.log");
        std::fs::write(
            &p,
            "preamble without time\n\
             2026-01-01T00:00:00Z one\n\
             2026-01-01T00:01:00Z two\n  continued\n\
             2026-01-01T00:02:00Z three\n",
        )
        .unwrap();
        let since = ms("2026-01-01T00:01:00Z");
        let got = read_file(
            &p,
            Range {
                since: Some(since),
                until: None,
                lines: 100,
            },
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                "2026-01-01T00:01:00Z two",
                "  continued",
                "2026-01-01T00:02:00Z three"
            ]
        );
        let got = read_file(
            &p,
            Range {
                since: None,
                until: Some(since),
                lines: 100,
            },
        )
        .unwrap();
        assert_eq!(got, vec!["2026-01-01T00:00:00Z one"]);
    }

    #[test]
    fn long_lines_are_cut() {
        let got = select_lines(&format!("{}\n", "é".repeat(MAX_LINE_BYTES)), all(10));
        assert!(got[0].len() <= MAX_LINE_BYTES);
    }

    #[test]
    fn journal_arguments() {
        let a = journal_args(
            "nginx.service",
            Range {
                since: Some(1_767_225_600_500),
                until: None,
                lines: 50,
            },
            false,
        );
        assert_eq!(
            a,
            vec![
                "-u",
                "nginx.service",
                "-n",
                "50",
                "-o",
                "short-iso",
                "--no-pager",
                "--since=@1767225600"
            ]
        );
    }

    #[test]
    fn config_names_sources_exactly_once() {
        let mut raw = RawLogsConfig::default();
        raw.sources.insert(
            "app".into(),
            RawSource {
                file: Some("/var/log/app.log".into()),
                journal: None,
            },
        );
        raw.sources.insert(
            "web".into(),
            RawSource {
                file: None,
                journal: Some("nginx.service".into()),
            },
        );
        let c = LogsConfig::from_raw(Some(raw.clone())).unwrap();
        assert_eq!(c.sources.len(), 2);
        for bad in [
            RawSource::default(),
            RawSource {
                file: Some("relative.log".into()),
                journal: None,
            },
            RawSource {
                file: Some("/a".into()),
                journal: Some("b".into()),
            },
            RawSource {
                file: None,
                journal: Some("--all".into()),
            },
        ] {
            let mut r = raw.clone();
            r.sources.insert("x".into(), bad);
            assert!(LogsConfig::from_raw(Some(r)).is_err());
        }
        let mut r = raw;
        r.sources.insert("Bad Name".into(), RawSource::default());
        assert!(LogsConfig::from_raw(Some(r)).is_err());
    }

    fn runner(config: LogsConfig) -> (LogRunner, mpsc::Receiver<Uplink>) {
        let (tx, rx) = mpsc::channel(100);
        let identity = Identity {
            record: crate::identity::IdentityRecord {
                device_id: "d".into(),
                not_after: String::new(),
                renew_after: String::new(),
            },
            key: rcgen::KeyPair::generate().unwrap(),
            cert_pem: String::new(),
            ca_pem: String::new(),
        };
        let runner = LogRunner {
            shared: Arc::new(Shared {
                config,
                uplinks: tx,
                server_url: "https://127.0.0.1:1".into(),
                ca_pem: String::new(),
                identity: watch::channel(Arc::new(identity)).1,
                follows: AtomicUsize::new(0),
            }),
            seen: HashMap::new(),
            order: VecDeque::new(),
        };
        (runner, rx)
    }

    fn follow_request(id: u128) -> (String, Vec<u8>) {
        use tender_core::logs::{LogQuery, LogRequest};
        let spec = LogQuery {
            sources: vec!["app".into()],
            lines: Some(1),
            follow: true,
            ..LogQuery::default()
        }
        .validate(1 << 20)
        .unwrap();
        let now = tender_core::Timestamp::from_unix_millis(1_800_000_000_000);
        let r = LogRequest::new(
            format!("00000000-0000-7000-8000-{id:012}").parse().unwrap(),
            "00000000-0000-7000-8000-000000000001".parse().unwrap(),
            "00000000-0000-7000-8000-000000000002".parse().unwrap(),
            spec,
            None,
            now,
        );
        (r.id.to_string(), r.downlink_payload(now, Some(now)))
    }

    async fn next_lines(rx: &mut mpsc::Receiver<Uplink>) -> Vec<String> {
        let up = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("a batch of lines")
            .unwrap();
        tender_core::logs::parse_lines(&up.payload).unwrap().lines
    }

    #[tokio::test]
    async fn a_follow_sends_the_last_lines_then_new_ones_and_a_repeat_only_renews_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.log");
        std::fs::write(&p, "old 1\nold 2\n").unwrap();
        let mut raw = RawLogsConfig::default();
        raw.sources.insert(
            "app".into(),
            RawSource {
                file: Some(p.clone()),
                journal: None,
            },
        );
        let (mut runner, mut rx) = runner(LogsConfig::from_raw(Some(raw)).unwrap());
        let (id, payload) = follow_request(7);
        runner.on_request(&id, &payload);
        assert_eq!(next_lines(&mut rx).await, vec!["old 2"]);
        runner.on_request(&id, &payload);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        writeln!(f, "new 3").unwrap();
        assert_eq!(next_lines(&mut rx).await, vec!["new 3"]);
        assert_eq!(
            runner.shared.follows.load(Ordering::SeqCst),
            1,
            "the repeat renewed the lease, it did not start a second follow"
        );
        // Another id for an unknown source: a failure report, no follow.
        let (other, mut payload) = follow_request(8);
        payload = String::from_utf8(payload)
            .unwrap()
            .replace("\"app\"", "\"nope\"")
            .into_bytes();
        runner.on_request(&other, &payload);
        let up = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(up.suffix, format!("logs/{other}/status"));
        let v: serde_json::Value = serde_json::from_slice(&up.payload).unwrap();
        assert_eq!(v["status"], "failed");
        assert!(v["error"].as_str().unwrap().contains("\"nope\""), "{v}");
    }

    #[tokio::test]
    async fn follow_batches_fit_what_the_server_accepts() {
        let (up_tx, mut up_rx) = mpsc::channel(1000);
        let (tx, rx) = mpsc::channel(1000);
        let task = tokio::spawn(batch_lines(
            up_tx,
            "logs/x/lines".into(),
            SourceName::parse("app").unwrap(),
            rx,
        ));
        for i in 0..300 {
            tx.send(format!("{i} {}", "x".repeat(4000))).await.unwrap();
        }
        drop(tx);
        task.await.unwrap();
        let mut lines = 0;
        while let Ok(up) = up_rx.try_recv() {
            assert_eq!(up.suffix, "logs/x/lines");
            let b = tender_core::logs::parse_lines(&up.payload).unwrap();
            lines += b.lines.len();
        }
        assert_eq!(
            lines, 300,
            "every line is sent, in batches the server accepts"
        );
    }

    #[test]
    fn compression_keeps_the_newest_lines_within_the_cap() {
        // Incompressible-ish lines.
        let text: String = (0..5000)
            .map(|i| format!("{i} {:x}\n", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .collect();
        let z = compress_within(&text, 4096);
        assert!(z.len() <= 4096);
        let mut out = String::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_string(&mut out)
            .unwrap();
        assert!(out.starts_with("[tender: "));
        assert!(out.trim_end().ends_with(&format!(
            "4999 {:x}",
            4999u64.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        )));
        assert_eq!(compress_within("small\n", 4096), gzip("small\n"));
    }
}
