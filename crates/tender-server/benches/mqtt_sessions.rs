//! MQTT gateway: many concurrent mTLS sessions, server memory per idle session, and
//! PUBLISH→PUBACK latency.
//!
//! `cargo build --release -p tender && cargo bench -p tender-server --bench mqtt_sessions --
//! 1000 10000` (default: 1000 sessions). For each N, from scratch:
//!
//! 1. Setup: a server is started in-process on a fresh SQLite data directory (a temp dir; set
//!    `TMPDIR` to move it, e.g. to tmpfs), N devices are created in state `accepted`, each with
//!    its own ECDSA P-256 key and a certificate signed by the server's CA, and recorded directly
//!    in the store (the registry refuses two devices with one key, and enrolling N devices over
//!    HTTPS is not what is measured). Key generation runs on every core.
//! 2. The server under test is the release `tender` binary (next to this benchmark in the target
//!    dir, or `TENDER_BIN`), started as its own process on that data directory, so
//!    `/proc/<pid>/status` gives the server's own RSS. Build the binary from the same sources
//!    just before (a binary that does not know a migration of the benchmark's store will not
//!    start; the benchmark then says so). Without the binary, or with `--in-process`, the
//!    in-process server is kept instead and the RSS figures are those of the whole benchmark
//!    process, client state included: an upper bound.
//! 3. N MQTT 5 sessions are opened, CONCURRENCY (`--concurrency=K`) attempts in flight: TCP
//!    connect, full TLS 1.3 handshake with the device's client certificate (no resumption),
//!    CONNECT (client id = device id, keepalive 600 s, clean start), CONNACK. Half of them first,
//!    then the rest, with the server's RSS read after each half (settled), so the second half
//!    gives a marginal cost per session free of one-time warm-up. The CPU time of the server and
//!    of the load generator and the kernel's accept-queue overflow and SYN retransmission
//!    counters over the connects are printed. `--handshake-only` stops after TLS (no CONNECT):
//!    what a connection costs before it is an MQTT session.
//! 4. With all N connected, PUBLISHERS of them publish QoS 1 `{"temperature": 21.5}` to
//!    `tender/v1/{device}/telemetry` in a closed loop (one message in flight each) for
//!    PUBLISH_SECS; PUBLISH→PUBACK latency, messages/s and the PUBACK reason codes are reported
//!    (a refusal such as 0x83 still measures the round trip, and is shown as such).
//! 5. Unless `--no-deploy`: every session that did not publish subscribes to its
//!    `updates/+`, and a deployment to all N devices (an artifact record made at setup; the
//!    devices are not asked to download) is created through the API. Reported: the time the
//!    API took to create it (N targets classified and stored), and the time from that request
//!    until the last subscribed device received its notification, as devices notified per
//!    second (each notification recorded in the store before it is sent).
//! 6. Unless `--no-mosquitto`: the same N idle MQTT 5 sessions to Mosquitto over plain TCP (no
//!    TLS), for its RSS per connection: a private broker started for the run when the binary is
//!    installed, else the one on 127.0.0.1:1883 (whose heap may already hold freed memory from
//!    earlier connections, so its growth understates).
//!
//! The load generator runs in this process on the same cores as the server. Figures only;
//! nothing is asserted. Every wait is bounded, so the run ends by itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod mqtt_common;

use mqtt_common::*;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use rmqtt_codec::MqttPacket;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self};

/// Handshakes (TCP + TLS + CONNECT/CONNACK) in flight at once, unless `--concurrency=K`.
const CONCURRENCY: usize = 256;
/// Sessions that publish in the latency phase.
const PUBLISHERS: usize = 100;
const PUBLISH_SECS: u64 = 5;
/// Bound on one PUBLISH→PUBACK round trip.
const PUBACK_TIMEOUT: Duration = Duration::from_secs(10);
const PAYLOAD: &[u8] = br#"{"temperature": 21.5}"#;

/// Each client publishes QoS 1 telemetry in a closed loop for PUBLISH_SECS.
async fn publish(clients: Vec<(String, Client<Tls>)>) -> (PublishRun, Vec<Client<Tls>>) {
    publish_loop(
        clients,
        PUBLISH_SECS,
        PUBACK_TIMEOUT,
        Arc::new(|_| Bytes::from_static(PAYLOAD)),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// One run

/// What a run measured, for the final table.
struct Row {
    label: String,
    n: usize,
    setup: Option<Duration>,
    connected: usize,
    connects_per_sec: f64,
    connect_p50_ms: f64,
    connect_p99_ms: f64,
    before: Mem,
    full: Mem,
    /// Peak RSS during the run (not for a long-running server that was not started for it).
    peak: Option<u64>,
    kib_per_session: f64,
    marginal_kib: f64,
    publish_p50_ms: f64,
    publish_p99_ms: f64,
    publish_per_sec: f64,
    errors: u64,
}

/// Log lines grouped by message (what follows the level), digits folded, shortened.
async fn run_tender(n: usize, opts: Options) -> Row {
    let setup_start = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut config = tender_server::Config {
        data_dir: data_dir.clone(),
        ..Default::default()
    };
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.devices.listen = "127.0.0.1:0".parse().unwrap();
    config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    config.mqtt.max_connections = n + 1000;
    config.mqtt.connect_timeout_secs = 300;
    config.mqtt.messages_per_sec = 1_000_000;
    config.mqtt.burst = 1_000_000;
    config.log.level = "warn".into();
    let server = tender_server::start(config.clone()).await.unwrap();
    let token = server.bootstrap_token.clone().unwrap_or_default();
    let setup = create_devices(&server, n).await;
    let mut bin = if opts.in_process { None } else { tender_bin() };
    let server = match &bin {
        Some(path) => {
            server.shutdown().await;
            match spawn_child(path, dir.path(), &data_dir, n, "") {
                Ok(child) => child,
                Err(log) => {
                    // Typically a binary built from older sources than this benchmark (a
                    // migration it does not know, or one changed since).
                    println!(
                        "\n{} did not start on the benchmark's data dir; it is probably older than this benchmark (rebuild it: cargo build --release -p tender). Its log:\n  {}\nFalling back to the in-process server.",
                        path.display(),
                        log.replace('\n', "\n  ")
                    );
                    bin = None;
                    Server::InProcess(tender_server::start(config).await.unwrap())
                }
            }
        }
        None => Server::InProcess(server),
    };
    let setup_time = setup_start.elapsed();
    let mut label = match &bin {
        Some(_) => "tender (own process)".to_owned(),
        None => "tender in-process (RSS incl. clients)".to_owned(),
    };
    if opts.handshake_only {
        label.push_str(", TLS only, no CONNECT");
    }
    println!(
        "\n== Tender, N = {n}: {} ==",
        match &bin {
            Some(b) => format!(
                "server = {} (pid {}, built {} min ago), RSS of the server process",
                b.display(),
                server.pid(),
                std::fs::metadata(b)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .map_or(0, |d| d.as_secs() / 60),
            ),
            None => "server in this process: RSS figures include the load generator's \
                     client state (an upper bound)"
                .into(),
        }
    );
    println!(
        "  data dir on {} ({}); setup {:.1} s: keys and certificates {:.1} s, {n} devices and certificates recorded {:.1} s",
        fs_type(dir.path()),
        dir.path().display(),
        setup_time.as_secs_f64(),
        setup.keys.as_secs_f64(),
        setup.db.as_secs_f64(),
    );
    let need = if bin.is_some() { n } else { 2 * n };
    let limit = fd_limit(std::process::id()).unwrap_or(u64::MAX);
    if need as u64 + 200 > limit {
        println!(
            "  warning: {need} sockets in one process is at or beyond its open-file limit {limit}; expect errors"
        );
    }

    let pid = server.pid();
    let addr = server.mqtt_addr();
    tokio::time::sleep(SETTLE).await;
    let before = mem(pid);
    let ids = setup.identities.clone();
    let half_n = n / 2;
    let mqtt = !opts.handshake_only;
    let connect = move |i: usize| {
        let ids = ids.clone();
        async move { connect_tender(addr, &ids[i], mqtt).await }
    };
    let me = std::process::id();
    let (s0, g0, k0) = (cpu_secs(pid), cpu_secs(me), tcp_counters());
    let mut run = connect_range(0..half_n, opts.concurrency, connect.clone()).await;
    let (s1, g1, k1) = (cpu_secs(pid), cpu_secs(me), tcp_counters());
    tokio::time::sleep(SETTLE).await;
    let half = mem(pid);
    let half_connected = run.clients.len();
    let (s2, g2, k2) = (cpu_secs(pid), cpu_secs(me), tcp_counters());
    run.absorb(connect_range(half_n..n, opts.concurrency, connect).await);
    let (s3, g3, k3) = (cpu_secs(pid), cpu_secs(me), tcp_counters());
    let (server_cpu, generator_cpu) = (s1 - s0 + s3 - s2, g1 - g0 + g3 - g2);
    let overflows = k1.0 - k0.0 + k3.0 - k2.0;
    let syn_retransmits = k1.1 - k0.1 + k3.1 - k2.1;
    tokio::time::sleep(SETTLE).await;
    let full = mem(pid);
    run.latencies_us.sort_unstable();
    let connected = run.clients.len();
    let open = server.open_sessions().await.unwrap_or(f64::NAN);
    let connects_per_sec = connected as f64 / run.elapsed.as_secs_f64();
    let row_kib = per_session(before.rss, full.rss, connected);
    let marginal = per_session(half.rss, full.rss, connected - half_connected);
    println!(
        "  connected {connected}/{n} in {:.1} s: {connects_per_sec:.0} connects/s ({}, {} in flight), latency p50 {:.1} ms p99 {:.1} ms; server reports {open} open",
        run.elapsed.as_secs_f64(),
        if mqtt {
            "TCP + TLS 1.3 mTLS + CONNECT/CONNACK"
        } else {
            "TCP + TLS 1.3 mTLS, no CONNECT"
        },
        opts.concurrency,
        percentile_ms(&run.latencies_us, 0.5),
        percentile_ms(&run.latencies_us, 0.99),
    );
    print_errors("connect", &run.errors);
    println!(
        "  kernel (system-wide counters) while connecting: {overflows} accept-queue overflows, {syn_retransmits} SYN retransmissions"
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let wall = run.elapsed.as_secs_f64();
    if pid == me {
        println!(
            "  CPU while connecting: {server_cpu:.1} s (server and load generator together) in {wall:.1} s on {cores} cores ({:.0}% of the machine)",
            100.0 * server_cpu / (wall * cores),
        );
    } else {
        println!(
            "  CPU while connecting: server {server_cpu:.1} s ({:.2} ms per connect), load generator {generator_cpu:.1} s, in {wall:.1} s on {cores} cores ({:.0}% of the machine busy)",
            1000.0 * server_cpu / connected.max(1) as f64,
            100.0 * (server_cpu + generator_cpu) / (wall * cores),
        );
    }
    println!(
        "  server RSS: idle {:.1} MiB, {half_connected} sessions {:.1} MiB, {connected} sessions {:.1} MiB (peak {:.1} MiB); anonymous {:.1} -> {:.1} MiB",
        mib(before.rss),
        mib(half.rss),
        mib(full.rss),
        mib(full.hwm),
        mib(before.anon),
        mib(full.anon),
    );
    println!(
        "  per session: {row_kib:.1} KiB ({:.1} KiB anonymous); marginal over the second half {marginal:.1} KiB",
        per_session(before.anon, full.anon, connected),
    );

    // Publish latency on the first PUBLISHERS sessions.
    let mut clients = std::mem::take(&mut run.clients);
    let take = PUBLISHERS.min(clients.len());
    let publishers: Vec<(String, Client<Tls>)> = clients
        .drain(..take)
        .map(|(i, c)| (setup.identities[i].device_id.clone(), c))
        .collect();
    let (s0, g0) = (cpu_secs(pid), cpu_secs(me));
    let (p, publishers) = if mqtt {
        publish(publishers).await
    } else {
        (
            PublishRun::default(),
            publishers.into_iter().map(|(_, c)| c).collect(),
        )
    };
    let (publish_server_cpu, publish_generator_cpu) = (cpu_secs(pid) - s0, cpu_secs(me) - g0);
    let sent = p.latencies_us.len();
    let per_sec = if mqtt {
        sent as f64 / p.elapsed.as_secs_f64()
    } else {
        f64::NAN
    };
    if mqtt {
        println!(
            "  publish QoS 1 telemetry, {take} sessions x 1 in flight, {PUBLISH_SECS} s: {sent} acknowledged, {per_sec:.0} msgs/s, PUBLISH->PUBACK p50 {:.2} ms p99 {:.2} ms",
            percentile_ms(&p.latencies_us, 0.5),
            percentile_ms(&p.latencies_us, 0.99),
        );
        for (code, (name, count, why)) in &p.reasons {
            println!(
                "  PUBACK reason 0x{code:02x} {name}: {count}{}",
                why.as_deref()
                    .map(|w| format!(" (\"{w}\")"))
                    .unwrap_or_default()
            );
        }
        print_errors("publish", &p.errors);
    }
    if mqtt && pid != me {
        println!(
            "  CPU while publishing: server {publish_server_cpu:.1} s ({:.3} ms per message), load generator {publish_generator_cpu:.1} s, in {:.1} s",
            1000.0 * publish_server_cpu / sent.max(1) as f64,
            p.elapsed.as_secs_f64(),
        );
    }
    let after_publish = mem(pid);
    println!(
        "  server RSS after the publish phase {:.1} MiB",
        mib(after_publish.rss)
    );
    if mqtt && opts.deploy {
        let subscribers: Vec<(String, Client<Tls>)> = std::mem::take(&mut clients)
            .into_iter()
            .map(|(i, c)| (setup.identities[i].device_id.clone(), c))
            .collect();
        let (_rate, back) = deploy_notify(
            server.http_addr(),
            &token,
            setup.artifact,
            n,
            subscribers,
            pid,
        )
        .await;
        clients = back.into_iter().enumerate().collect();
    }
    let metrics = server.mqtt_metrics().await;
    println!(
        "  server metrics: {}",
        metrics
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let during_run = server.log_lines().len();
    let log = server.stop().await;
    if !log.is_empty() {
        println!(
            "  server log (level warn): {during_run} lines before shutdown, {} during shutdown",
            log.len() - during_run.min(log.len())
        );
        for (phase, lines) in [
            ("run", &log[..during_run.min(log.len())]),
            ("shutdown", &log[during_run.min(log.len())..]),
        ] {
            for (k, count) in log_summary(lines).iter().take(6) {
                println!("    {phase} x{count}: {k}");
            }
        }
    }
    drop(clients);
    drop(publishers);
    Row {
        label,
        n,
        setup: Some(setup_time),
        connected,
        connects_per_sec,
        connect_p50_ms: percentile_ms(&run.latencies_us, 0.5),
        connect_p99_ms: percentile_ms(&run.latencies_us, 0.99),
        before,
        full,
        peak: Some(full.hwm),
        kib_per_session: row_kib,
        marginal_kib: marginal,
        publish_p50_ms: percentile_ms(&p.latencies_us, 0.5),
        publish_p99_ms: percentile_ms(&p.latencies_us, 0.99),
        publish_per_sec: per_sec,
        errors: run.error_count() + p.errors.values().sum::<u64>(),
    }
}

/// The Mosquitto broker compared against.
async fn run_mosquitto(n: usize, opts: Options) -> Option<Row> {
    let broker = mosquitto().await?;
    let pid = broker.pid;
    println!(
        "\n== Mosquitto on {} (pid {pid}, {}), N = {n}: plain TCP, NOT TLS, no client certificates ==",
        broker.addr,
        if broker.child.is_some() {
            "started for this run"
        } else {
            "already running: memory freed by earlier connections is reused, so its growth understates"
        }
    );
    if let Some(limit) = fd_limit(pid)
        && n as u64 + 50 > limit
    {
        println!("  warning: Mosquitto's open-file limit is {limit}; expect errors");
    }
    let addr = broker.addr;
    let before = mem(pid);
    let connect = move |i: usize| connect_plain(addr, format!("tender-bench-{n}-{i}"));
    let mut run = connect_range(0..n / 2, opts.concurrency, connect).await;
    tokio::time::sleep(SETTLE).await;
    let half = mem(pid);
    let half_connected = run.clients.len();
    run.absorb(connect_range(n / 2..n, opts.concurrency, connect).await);
    tokio::time::sleep(SETTLE).await;
    let full = mem(pid);
    run.latencies_us.sort_unstable();
    let connected = run.clients.len();
    let row = Row {
        label: "mosquitto (plain TCP, no TLS)".into(),
        n,
        setup: None,
        connected,
        connects_per_sec: connected as f64 / run.elapsed.as_secs_f64(),
        connect_p50_ms: percentile_ms(&run.latencies_us, 0.5),
        connect_p99_ms: percentile_ms(&run.latencies_us, 0.99),
        before,
        full,
        peak: broker.child.is_some().then_some(full.hwm),
        kib_per_session: per_session(before.rss, full.rss, connected),
        marginal_kib: per_session(half.rss, full.rss, connected - half_connected),
        publish_p50_ms: f64::NAN,
        publish_p99_ms: f64::NAN,
        publish_per_sec: f64::NAN,
        errors: run.error_count(),
    };
    println!(
        "  connected {connected}/{n}: {:.0} connects/s; RSS {:.1} -> {:.1} MiB: {:.1} KiB per connection (marginal {:.1})",
        row.connects_per_sec,
        mib(before.rss),
        mib(full.rss),
        row.kib_per_session,
        row.marginal_kib,
    );
    print_errors("connect", &run.errors);
    drop(run);
    broker.stop().await;
    Some(row)
}

/// Subscribes `clients` to their `updates/+`, creates a deployment to every device through
/// the API, and waits (bounded) for every subscriber's notification. Returns devices notified
/// per second and the clients.
async fn deploy_notify(
    http: SocketAddr,
    token: &str,
    artifact: tender_core::ArtifactId,
    n: usize,
    clients: Vec<(String, Client<Tls>)>,
    pid: u32,
) -> (f64, Vec<Client<Tls>>) {
    let subscribed = Arc::new(tokio::sync::Barrier::new(clients.len() + 1));
    let mut tasks = Vec::new();
    for (device, mut c) in clients {
        let subscribed = subscribed.clone();
        tasks.push(tokio::spawn(async move {
            let filter = ByteString::from(format!("tender/v1/{device}/updates/+"));
            let sub = c
                .send(MqttPacket::V5(v5::Packet::Subscribe(v5::Subscribe {
                    packet_id: NonZeroU16::new(1).unwrap(),
                    id: None,
                    user_properties: Vec::new(),
                    topic_filters: vec![(
                        filter,
                        v5::SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            ..Default::default()
                        },
                    )],
                })))
                .await;
            let suback = match sub {
                Ok(()) => tokio::time::timeout(PUBACK_TIMEOUT, c.recv()).await,
                Err(e) => Ok(Err(e)),
            };
            let ok = matches!(suback, Ok(Ok(MqttPacket::V5(v5::Packet::SubscribeAck(_)))));
            subscribed.wait().await;
            if !ok {
                return (Err("SUBSCRIBE failed".to_owned()), c);
            }
            let got = tokio::time::timeout(Duration::from_secs(300), async {
                loop {
                    match c.recv().await {
                        Ok(MqttPacket::V5(v5::Packet::Publish(p))) => {
                            let at = Instant::now();
                            if let Some(id) = p.packet_id {
                                let _ = c
                                    .send(MqttPacket::V5(v5::Packet::PublishAck(v5::PublishAck {
                                        packet_id: id,
                                        reason_code: v5::PublishAckReason::Success,
                                        properties: Default::default(),
                                        reason_string: None,
                                    })))
                                    .await;
                            }
                            return Ok(at);
                        }
                        Ok(_) => continue,
                        Err(e) => return Err(e),
                    }
                }
            })
            .await
            .unwrap_or_else(|_| Err("no notification within 300 s".into()));
            (got, c)
        }));
    }
    subscribed.wait().await;
    let http_client = reqwest::Client::new();
    let (s0, t0) = (cpu_secs(pid), Instant::now());
    let resp = http_client
        .post(format!("http://{http}/api/v1/deployments"))
        .bearer_auth(token)
        .json(&serde_json::json!({
            "artifact": artifact.to_string(),
            "target": {"query": "name ~ \"bench-*\""},
        }))
        .send()
        .await;
    let created = t0.elapsed();
    match resp {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => {
            let st = r.status();
            println!(
                "  deployment: the API answered {st}: {}",
                r.text().await.unwrap_or_default()
            );
        }
        Err(e) => println!("  deployment: the API request failed: {e}"),
    }
    let mut last = t0;
    let mut received = 0usize;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut back = Vec::new();
    for t in tasks {
        let (got, c) = t.await.unwrap();
        match got {
            Ok(at) => {
                received += 1;
                last = last.max(at);
            }
            Err(e) => *errors.entry(e).or_default() += 1,
        }
        back.push(c);
    }
    let total = last.duration_since(t0);
    let server_cpu = cpu_secs(pid) - s0;
    // The scheduler starts notifying as soon as the deployment is stored, which is just before
    // the API answers; the notification phase is measured from the answer (a lower bound on
    // its rate's denominator is the time after it).
    let after_answer = total.saturating_sub(created);
    let rate = received as f64 / total.as_secs_f64();
    println!(
        "  deployment to all {n} devices: created (targets classified and stored) in {:.2} s; {received} subscribed devices notified by {:.2} s after the request ({:.2} s after the answer): {rate:.0} devices/s overall, {:.0} devices/s after the answer (server CPU {server_cpu:.1} s)",
        created.as_secs_f64(),
        total.as_secs_f64(),
        after_answer.as_secs_f64(),
        received as f64 / after_answer.as_secs_f64().max(0.001),
    );
    print_errors("notify", &errors);
    (rate, back)
}

#[derive(Debug, Clone, Copy)]
struct Options {
    deploy: bool,
    concurrency: usize,
    in_process: bool,
    mosquitto: bool,
    /// Stop after the TLS handshake (no CONNECT): what the TLS layer alone holds per connection.
    handshake_only: bool,
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut sizes = Vec::new();
    let mut opts = Options {
        deploy: true,
        concurrency: CONCURRENCY,
        in_process: false,
        mosquitto: true,
        handshake_only: false,
    };
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--in-process" => opts.in_process = true,
            "--no-mosquitto" => opts.mosquitto = false,
            "--no-deploy" => opts.deploy = false,
            "--handshake-only" => opts.handshake_only = true,
            "--bench" => {}
            other => {
                if let Some(k) = other.strip_prefix("--concurrency=")
                    && let Ok(k) = k.parse::<usize>()
                    && k > 0
                {
                    opts.concurrency = k;
                    continue;
                }
                match other.replace('_', "").parse::<usize>() {
                    Ok(n) if n > 0 => sizes.push(n),
                    _ => println!("ignoring argument {other:?}"),
                }
            }
        }
    }
    if sizes.is_empty() {
        sizes.push(1000);
    }
    println!("MQTT gateway sessions benchmark");
    println!("machine: {}", machine());
    println!(
        "open-file limit of this process: {}",
        fd_limit(std::process::id()).map_or("?".into(), |l| l.to_string())
    );
    if !opts.in_process && tender_bin().is_none() {
        println!(
            "no release `tender` binary next to this benchmark (build it with `cargo build --release -p tender`, or set TENDER_BIN): the server runs in-process"
        );
    }
    let mut rows = Vec::new();
    for &n in &sizes {
        rows.push(run_tender(n, opts).await);
        if opts.mosquitto
            && let Some(row) = run_mosquitto(n, opts).await
        {
            rows.push(row);
        }
        // Let the closed connections drain before the next size.
        tokio::time::sleep(SETTLE).await;
    }

    println!(
        "\nSummary (RSS of the server process; KiB/session = RSS growth / sessions; marginal = over the second half)"
    );
    println!(
        "| server | N | connected | setup | connects/s | connect p50 / p99 | RSS idle | RSS with N | peak RSS | KiB/session | marginal | publish p50 / p99 | msgs/s | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.1} / {:.1} ms | {:.1} MiB | {:.1} MiB | {} | {:.1} | {:.1} | {} | {} | {} |",
            r.label,
            r.n,
            r.connected,
            r.setup
                .map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            r.connects_per_sec,
            r.connect_p50_ms,
            r.connect_p99_ms,
            mib(r.before.rss),
            mib(r.full.rss),
            r.peak.map_or("-".into(), |k| format!("{:.1} MiB", mib(k))),
            r.kib_per_session,
            r.marginal_kib,
            if r.publish_p50_ms.is_nan() {
                "-".into()
            } else {
                format!("{:.2} / {:.2} ms", r.publish_p50_ms, r.publish_p99_ms)
            },
            if r.publish_per_sec.is_nan() {
                "-".into()
            } else {
                format!("{:.0}", r.publish_per_sec)
            },
            r.errors,
        );
    }
}
