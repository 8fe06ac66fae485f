//! Server start-up time and idle memory.
//!
//! `cargo bench -p tender --bench cold_start` builds the release binary, then starts it
//! repeatedly and prints, for a first start (empty data directory: creates the CA, the secrets,
//! the database and runs migrations) and for a restart (existing data), the time from spawn to
//! the banner line printed once the listener is bound and the store is migrated, plus the
//! server's RSS once started. Figures only; nothing is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tender");
const RUNS: usize = 15;

/// Starts the server in `data`, returns (time to ready, RSS in KiB), then stops it.
fn one_start(data: &Path) -> (Duration, u64) {
    let t0 = Instant::now();
    let mut child = Command::new(BIN)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--device-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--log-level",
            "warn",
            "--data-dir",
        ])
        .arg(data)
        .env_remove("TENDER_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tender server");
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let mut ready = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("Tender ") && ready.is_none() {
            ready = Some(t0.elapsed());
        }
        if line == "Press Ctrl-C to stop." {
            break;
        }
    }
    let ready = ready.expect("server printed its banner");
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    (ready, rss_kib)
}

fn summary(name: &str, mut xs: Vec<(Duration, u64)>) {
    xs.sort_by_key(|x| x.0);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p = |q: f64| xs[((xs.len() - 1) as f64 * q).round() as usize].0;
    let rss: Vec<u64> = xs.iter().map(|x| x.1).collect();
    println!(
        "{name:<28} runs={:<3} min={:>7.1} ms  p50={:>7.1} ms  max={:>7.1} ms  RSS after start: {:.1}-{:.1} MiB",
        xs.len(),
        ms(xs[0].0),
        ms(p(0.5)),
        ms(xs[xs.len() - 1].0),
        *rss.iter().min().unwrap() as f64 / 1024.0,
        *rss.iter().max().unwrap() as f64 / 1024.0,
    );
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let root = std::env::temp_dir().join(format!("tender-bench-{}", std::process::id()));
    let mut first = Vec::new();
    for i in 0..RUNS {
        first.push(one_start(&root.join(format!("fresh-{i}"))));
    }
    let reused = root.join("fresh-0");
    let mut again = Vec::new();
    for _ in 0..RUNS {
        again.push(one_start(&reused));
    }
    println!("tender server start-up (SQLite, release build, binary {BIN})");
    summary("first start (empty dir)", first);
    summary("restart (existing data)", again);
    let _ = std::fs::remove_dir_all(&root);
}
