//! Telemetry ingest through the real gateway, acknowledged only after it is durable.
//!
//! `cargo build --release -p tender && cargo bench -p tender-server --bench telemetry_ingest --
//! [--devices=N] [--secs=S] [--points=K,K,...] [--postgres] [--no-sqlite] [--no-mosquitto]
//! [--writers=N]`
//! (defaults: 1000 devices, 10 s, points 100,10,1; with `--postgres`, also on a fresh database
//! of the server at `TENDER_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`).
//!
//! For each store and each K (points per message):
//!
//! 1. Setup: N accepted devices with their own keys and certificates are recorded in a fresh
//!    store (SQLite in a temp dir, or a fresh PostgreSQL database), as in the `mqtt_sessions`
//!    benchmark; the server under test is the release `tender` binary in its own process (or
//!    in-process without it; see `mqtt_sessions`), so its RSS and CPU are its own.
//! 2. N MQTT 5 sessions over mTLS (TLS 1.3, client certificates) connect.
//! 3. Every session publishes QoS 1 telemetry in a closed loop (one message in flight, the
//!    next sent when the PUBACK arrives) for S seconds. A message carries K points: one
//!    timestamp with K metrics for K <= 10, else K/10 timestamps of 10 metrics (a batch, as the
//!    agent's store-and-forward buffer sends them). Timestamps are unique per device, so every
//!    point is a new row.
//! 4. Reported: acknowledged messages/s and points/s, PUBLISH->PUBACK p50/p99, PUBACK reason
//!    codes, server RSS and CPU, and the server's own count of committed points
//!    (`tender_telemetry_points_stored_total`), which must be at least the acknowledged points
//!    (a PUBACK is sent only after the commit).
//! 5. Unless `--no-mosquitto`: the same N sessions, the same payloads and the same closed loop
//!    against a private Mosquitto (plain TCP, no TLS, no storage): what the wire and this
//!    load generator allow on this machine.
//!
//! The load generator runs in this process on the same cores as the server (its TLS work
//! included). Figures only; nothing is asserted. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod mqtt_common;

use std::time::Duration;

use bytes::Bytes;
use mqtt_common::*;

const CONCURRENCY: usize = 128;
const PUBACK_TIMEOUT: Duration = Duration::from_secs(30);
const METRICS: [&str; 10] = [
    "cpu.load",
    "cpu.temp",
    "mem.used",
    "mem.free",
    "disk.used",
    "net.rx",
    "net.tx",
    "load.1",
    "uptime.secs",
    "app.queue",
];

/// One message of `points` points for a device at message number `seq`.
fn payload(points: usize, base_ms: i64, seq: u64) -> Bytes {
    let per_ts = points.min(10);
    let stamps = points.div_ceil(10).max(1);
    let mut out = String::with_capacity(32 + points * 24);
    if stamps > 1 {
        out.push('[');
    }
    let mut left = points;
    for s in 0..stamps {
        if s > 0 {
            out.push(',');
        }
        // Unique per device: message seq, entry s.
        let ts = base_ms + (seq as i64) * 16 + s as i64;
        out.push_str(&format!("{{\"ts\":{ts},\"values\":{{"));
        for (i, m) in METRICS.iter().take(per_ts.min(left)).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!("\"{m}\":{}.{}", seq % 100, i));
        }
        left -= per_ts.min(left);
        out.push_str("}}");
    }
    if stamps > 1 {
        out.push(']');
    }
    Bytes::from(out)
}

struct Row {
    label: String,
    points: usize,
    msgs_per_sec: f64,
    points_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_mib: Option<f64>,
    errors: u64,
}

fn report(label: &str, points: usize, run: &PublishRun) -> (f64, f64, u64) {
    // Success, and Mosquitto's 0x10 "no matching subscribers" (taken, nobody listening).
    let acked: u64 = run
        .reasons
        .iter()
        .filter(|(code, _)| **code < 0x80)
        .map(|(_, (_, count, _))| *count)
        .sum();
    let secs = run.elapsed.as_secs_f64();
    let msgs = acked as f64 / secs;
    println!(
        "  {label}: {acked} messages acknowledged in {secs:.1} s: {msgs:.0} msgs/s, {:.0} points/s ({points} per message); PUBLISH->PUBACK p50 {:.2} ms p99 {:.2} ms",
        msgs * points as f64,
        percentile_ms(&run.latencies_us, 0.5),
        percentile_ms(&run.latencies_us, 0.99),
    );
    for (code, (name, count, why)) in &run.reasons {
        if *code >= 0x80 {
            println!(
                "  PUBACK reason 0x{code:02x} {name}: {count}{}",
                why.as_deref()
                    .map(|w| format!(" (\"{w}\")"))
                    .unwrap_or_default()
            );
        }
    }
    print_errors("publish", &run.errors);
    (msgs, msgs * points as f64, acked)
}

async fn metric(server: &Server, name: &str) -> Option<f64> {
    let text = reqwest::Client::new()
        .get(format!("http://{}/metrics", server.http_addr()))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Messages of `points` points with timestamps unique per device, from a day ago.
fn payloads(points: usize) -> std::sync::Arc<dyn Fn(u64) -> Bytes + Send + Sync> {
    let base_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000 - 86_400_000;
    std::sync::Arc::new(move |seq| payload(points, base_ms, seq))
}

#[derive(Clone)]
struct Options {
    devices: usize,
    secs: u64,
    points: Vec<usize>,
    sqlite: bool,
    postgres: Option<String>,
    mosquitto: bool,
    /// `telemetry.writers` of the server under test (default: the server's per backend).
    writers: Option<usize>,
}

async fn run_tender(opts: &Options, postgres: Option<&str>, points: usize) -> Row {
    let n = opts.devices;
    let store = if postgres.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let db = match postgres {
        Some(_) => Some(tender_store::conformance::PgTestDatabase::create().await),
        None => None,
    };
    let mut config = tender_server::Config {
        data_dir: data_dir.clone(),
        ..Default::default()
    };
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.devices.listen = "127.0.0.1:0".parse().unwrap();
    config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    config.mqtt.max_connections = n + 1000;
    config.mqtt.messages_per_sec = 1_000_000;
    config.mqtt.burst = 1_000_000;
    config.log.level = "warn".into();
    config.database.url = db.as_ref().map(|d| d.url.clone());
    config.telemetry.writers = opts.writers;
    let server = tender_server::start(config.clone()).await.unwrap();
    let setup = create_devices(&server, n).await;
    let mut extra = match opts.writers {
        Some(w) => format!("[telemetry]\nwriters = {w}\n"),
        None => String::new(),
    };
    if let Some(d) = &db {
        extra.push_str(&format!("[database]\nurl = {:?}\n", d.url));
    }
    let server = match tender_bin() {
        Some(path) => {
            server.shutdown().await;
            match spawn_child(&path, dir.path(), &data_dir, n, &extra) {
                Ok(child) => child,
                Err(log) => {
                    println!(
                        "\n{} did not start (rebuild it: cargo build --release -p tender): {log}\nFalling back to the in-process server.",
                        path.display()
                    );
                    Server::InProcess(tender_server::start(config).await.unwrap())
                }
            }
        }
        None => Server::InProcess(server),
    };
    let pid = server.pid();
    let own = pid != std::process::id();
    println!(
        "\n== Tender on {store}, {n} devices, {points} points per message, writers {} ({}) ==",
        opts.writers.map_or("default".to_owned(), |w| w.to_string()),
        if own {
            "server in its own process"
        } else {
            "server in this process: RSS includes the load generator"
        }
    );
    if postgres.is_none() {
        println!(
            "  data dir on {} ({})",
            fs_type(dir.path()),
            dir.path().display()
        );
    }
    let addr = server.mqtt_addr();
    let ids = setup.identities.clone();
    let connect = move |i: usize| {
        let ids = ids.clone();
        async move { connect_tender(addr, &ids[i], true).await }
    };
    let run = connect_range(0..n, CONCURRENCY, connect).await;
    print_errors("connect", &run.errors);
    let clients: Vec<(String, Client<Tls>)> = run
        .clients
        .into_iter()
        .map(|(i, c)| (setup.identities[i].device_id.clone(), c))
        .collect();
    println!("  connected {}/{n}", clients.len());
    let stored_before = metric(&server, "tender_telemetry_points_stored_total")
        .await
        .unwrap_or(0.0);
    let (s0, g0) = (cpu_secs(pid), cpu_secs(std::process::id()));
    let (p, clients) = publish_loop(clients, opts.secs, PUBACK_TIMEOUT, payloads(points)).await;
    let (s1, g1) = (cpu_secs(pid), cpu_secs(std::process::id()));
    let (msgs, pts, acked) = report("tender", points, &p);
    let rss = mem(pid);
    let stored = metric(&server, "tender_telemetry_points_stored_total")
        .await
        .unwrap_or(f64::NAN)
        - stored_before;
    println!(
        "  server committed {stored:.0} points, acknowledged {} ({})",
        acked as usize * points,
        if stored >= (acked as usize * points) as f64 {
            "every acknowledged point is committed"
        } else {
            "FEWER COMMITTED THAN ACKNOWLEDGED"
        }
    );
    let batch_sum = metric(&server, "tender_telemetry_batch_points_sum").await;
    let batch_count = metric(&server, "tender_telemetry_batch_points_count").await;
    let commit_sum = metric(&server, "tender_telemetry_commit_seconds_sum").await;
    if let (Some(b), Some(c), Some(t)) = (batch_sum, batch_count, commit_sum)
        && c > 0.0
    {
        println!(
            "  {c:.0} commits, {:.0} points per commit on average, {:.1} ms per commit",
            b / c,
            1000.0 * t / c
        );
    }
    if own {
        println!(
            "  CPU: server {:.1} s, load generator {:.1} s in {:.1} s; server RSS {:.1} MiB (peak {:.1} MiB)",
            s1 - s0,
            g1 - g0,
            p.elapsed.as_secs_f64(),
            mib(rss.rss),
            mib(rss.hwm)
        );
    }
    drop(clients);
    server.stop().await;
    drop(db);
    Row {
        label: format!("tender, {store}"),
        points,
        msgs_per_sec: msgs,
        points_per_sec: pts,
        p50_ms: percentile_ms(&p.latencies_us, 0.5),
        p99_ms: percentile_ms(&p.latencies_us, 0.99),
        rss_mib: own.then(|| mib(rss.rss)),
        errors: p.errors.values().sum(),
    }
}

async fn run_mosquitto(opts: &Options, points: usize) -> Option<Row> {
    let broker = mosquitto().await?;
    let n = opts.devices;
    println!(
        "\n== Mosquitto on {} (plain TCP, no TLS, nothing stored), {n} sessions, {points} points per message ==",
        broker.addr
    );
    let addr = broker.addr;
    let connect = move |i: usize| connect_plain(addr, format!("tender-ingest-{i}"));
    let run = connect_range(0..n, CONCURRENCY, connect).await;
    print_errors("connect", &run.errors);
    // Topics as Tender's (Mosquitto does not care whose they are).
    let clients: Vec<(String, Client<tokio::net::TcpStream>)> = run
        .clients
        .into_iter()
        .map(|(i, c)| (format!("bench-{i}"), c))
        .collect();
    let (p, clients) = publish_loop(clients, opts.secs, PUBACK_TIMEOUT, payloads(points)).await;
    let (msgs, pts, _) = report("mosquitto", points, &p);
    let rss = mem(broker.pid);
    drop(clients);
    broker.stop().await;
    Some(Row {
        label: "mosquitto (no TLS, no storage)".into(),
        points,
        msgs_per_sec: msgs,
        points_per_sec: pts,
        p50_ms: percentile_ms(&p.latencies_us, 0.5),
        p99_ms: percentile_ms(&p.latencies_us, 0.99),
        rss_mib: Some(mib(rss.rss)),
        errors: p.errors.values().sum(),
    })
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut opts = Options {
        devices: 1000,
        secs: 10,
        points: vec![100, 10, 1],
        sqlite: true,
        postgres: None,
        mosquitto: true,
        writers: None,
    };
    for arg in std::env::args().skip(1) {
        let (key, value) = arg.split_once('=').unwrap_or((arg.as_str(), ""));
        match key {
            "--devices" => opts.devices = value.parse().expect("--devices=N"),
            "--secs" => opts.secs = value.parse().expect("--secs=S"),
            "--points" => {
                opts.points = value
                    .split(',')
                    .map(|k| k.parse().expect("--points=K,K,..."))
                    .filter(|k| *k > 0)
                    .collect()
            }
            "--postgres" => {
                opts.postgres = Some(
                    std::env::var("TENDER_TEST_POSTGRES_URL").unwrap_or_else(|_| {
                        "postgres://postgres@127.0.0.1:5432/postgres".to_owned()
                    }),
                )
            }
            "--no-sqlite" => opts.sqlite = false,
            "--writers" => opts.writers = Some(value.parse().expect("--writers=N")),
            "--no-mosquitto" => opts.mosquitto = false,
            "--bench" => {}
            other => println!("ignoring argument {other:?}"),
        }
    }
    println!("Telemetry ingest benchmark");
    println!("machine: {}", machine());
    if tender_bin().is_none() {
        println!(
            "no release `tender` binary next to this benchmark (cargo build --release -p tender, or TENDER_BIN): the server runs in-process"
        );
    }
    let mut rows = Vec::new();
    for &points in &opts.points {
        if opts.sqlite {
            rows.push(run_tender(&opts, None, points).await);
        }
        if let Some(url) = opts.postgres.clone() {
            rows.push(run_tender(&opts, Some(&url), points).await);
        }
        if opts.mosquitto
            && let Some(row) = run_mosquitto(&opts, points).await
        {
            rows.push(row);
        }
        tokio::time::sleep(SETTLE).await;
    }
    println!(
        "\nSummary ({} sessions, one QoS 1 message in flight each, {} s per run)",
        opts.devices, opts.secs
    );
    println!(
        "| server | points/message | msgs/s | points/s | PUBLISH->PUBACK p50 / p99 | RSS | errors |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} / {:.2} ms | {} | {} |",
            r.label,
            r.points,
            r.msgs_per_sec,
            r.points_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.rss_mib.map_or("-".into(), |m| format!("{m:.1} MiB")),
            r.errors
        );
    }
}
