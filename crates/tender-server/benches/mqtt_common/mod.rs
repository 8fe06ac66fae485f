//! What the MQTT benchmarks share: machine and process facts, a bare MQTT 5 client, devices
//! with certificates made directly in the store, the server under test (the release binary in
//! its own process, or in-process), connection ramps, and a private Mosquitto to compare with.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::{self, ConnectAckReason};
use rmqtt_codec::{MqttCodec, MqttPacket};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tender_core::certificate::DeviceCertificate;
use tender_core::device::{Device, DeviceState};
use tender_core::tenant::{DEFAULT_TENANT_SLUG, TenantSlug};
use tender_core::{DeviceId, Timestamp};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

pub const KEEPALIVE_SECS: u16 = 600;
/// Pause before reading RSS, so that the server has finished with the last connections.
pub const SETTLE: Duration = Duration::from_secs(2);
/// Bound on one connection attempt (including its wait in the server's accept queue).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);
pub const MOSQUITTO: &str = "127.0.0.1:1883";

pub type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

// ---------------------------------------------------------------------------------------------
// Machine and process facts

pub fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn machine() -> String {
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    format!("{cores} cores ({model}), {mem_gib:.1} GiB RAM, Linux {kernel}")
}

/// Soft limit on open files of a process.
pub fn fd_limit(pid: u32) -> Option<u64> {
    read(format!("/proc/{pid}/limits"))
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
}

/// Filesystem type of the mount holding `path`.
pub fn fs_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let mounts = read("/proc/mounts");
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, mnt, ty) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mnt).then(|| (mnt.len(), ty.to_owned()))
        })
        .max()
        .map_or_else(|| "?".into(), |(_, ty)| ty)
}

/// Memory figures of a process, KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    pub rss: u64,
    pub hwm: u64,
    pub anon: u64,
}

pub fn mem(pid: u32) -> Mem {
    let status = read(format!("/proc/{pid}/status"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Mem {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
        anon: field("RssAnon:"),
    }
}

/// Kernel TCP counters (system-wide): accept-queue overflows and SYN retransmissions.
pub fn tcp_counters() -> (u64, u64) {
    let text = read("/proc/net/netstat");
    let lines: Vec<&str> = text.lines().collect();
    let mut found = (0, 0);
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        if !names.starts_with("TcpExt:") {
            continue;
        }
        for (k, v) in names.split_whitespace().zip(values.split_whitespace()) {
            match k {
                "ListenOverflows" => found.0 = v.parse().unwrap_or(0),
                "TCPSynRetrans" => found.1 = v.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    found
}

/// CPU time (user + system, all threads) a process has used so far, seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = read(format!("/proc/{pid}/stat"));
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields 14 and 15 of stat(5) (utime, stime), in USER_HZ (100 on Linux).
    (ticks(11) + ticks(12)) as f64 / 100.0
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// KiB per session between two readings.
pub fn per_session(before: u64, after: u64, sessions: usize) -> f64 {
    if sessions == 0 {
        return 0.0;
    }
    (after as f64 - before as f64) / sessions as f64
}

pub fn percentile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    sorted_us[((sorted_us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
}

// ---------------------------------------------------------------------------------------------
// A bare MQTT 5 client

pub struct Client<S> {
    pub io: S,
    pub codec: MqttCodec,
    pub buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(io: S) -> Self {
        Client {
            io,
            codec: MqttCodec::V5(v5::Codec::new(1 << 20, 1 << 20)),
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, p: MqttPacket) -> Result<(), String> {
        let mut out = BytesMut::new();
        self.codec
            .encode(p, &mut out)
            .map_err(|e| format!("encode: {e}"))?;
        self.io
            .write_all(&out)
            .await
            .map_err(|e| format!("write: {}", e.kind()))?;
        self.io
            .flush()
            .await
            .map_err(|e| format!("write: {}", e.kind()))
    }

    pub async fn recv(&mut self) -> Result<MqttPacket, String> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some((p, _))) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(format!("malformed packet from the server: {e}")),
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) => return Err("closed by the server".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {}", e.kind())),
            }
        }
    }

    /// CONNECT with a clean start and no session expiry; Ok on a successful CONNACK.
    pub async fn connect(&mut self, client_id: &str) -> Result<(), String> {
        self.send(MqttPacket::V5(v5::Packet::Connect(Box::new(v5::Connect {
            client_id: ByteString::from(client_id),
            keep_alive: KEEPALIVE_SECS,
            clean_start: true,
            session_expiry_interval_secs: 0,
            ..Default::default()
        }))))
        .await?;
        match self.recv().await? {
            MqttPacket::V5(v5::Packet::ConnectAck(a))
                if a.reason_code == ConnectAckReason::Success =>
            {
                Ok(())
            }
            MqttPacket::V5(v5::Packet::ConnectAck(a)) => Err(format!(
                "CONNACK 0x{:02x} {:?}",
                a.reason_code as u8, a.reason_code
            )),
            other => Err(format!("expected CONNACK, got {}", packet_name(&other))),
        }
    }
}

pub fn packet_name(p: &MqttPacket) -> String {
    let s = format!("{p:?}");
    s.split(['(', ' ', '{'])
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// Setup: devices, certificates, client TLS configurations

/// A device the load generator connects as.
pub struct Identity {
    pub device_id: String,
    pub tls: Arc<rustls::ClientConfig>,
}

pub struct Setup {
    pub identities: Arc<Vec<Identity>>,
    pub keys: Duration,
    pub db: Duration,
    pub artifact: tender_core::ArtifactId,
}

pub fn client_tls(
    roots: &Arc<rustls::RootCertStore>,
    cert_pem: &str,
    key_der: Vec<u8>,
) -> Arc<rustls::ClientConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der));
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots.clone())
    .with_client_auth_cert(chain, key)
    .unwrap();
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// Creates `n` accepted devices with their own keys and CA-signed certificates in the store of
/// `server`, and the client configurations to connect as them.
pub async fn create_devices(server: &tender_server::RunningServer, n: usize) -> Setup {
    let now = Timestamp::from_datetime(time::OffsetDateTime::now_utc());
    let data = tender_server::datadir::DataDir::prepare(&server.data_dir).unwrap();
    let ca = Arc::new(tender_server::ca::load_or_create(&Default::default(), &data, now).unwrap());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let roots = Arc::new(roots);
    let tenant = server
        .store
        .tenant_by_slug(&TenantSlug::parse(DEFAULT_TENANT_SLUG).unwrap())
        .await
        .unwrap()
        .expect("the default tenant exists after the first start");

    // Keys, CSRs, certificates: CPU only, on every core.
    let t0 = Instant::now();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = n.div_ceil(workers).max(1);
    let mut tasks = Vec::new();
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let (ca, roots, slug) = (ca.clone(), roots.clone(), tenant.slug.clone());
        let tenant_id = tenant.id;
        tasks.push(tokio::task::spawn_blocking(move || {
            (start..end)
                .map(|i| {
                    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
                    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
                        .unwrap()
                        .serialize_request(&key)
                        .unwrap()
                        .pem()
                        .unwrap();
                    let csr = tender_server::ca::parse_csr(&csr).unwrap();
                    let id = DeviceId::from_uuid(uuid::Uuid::now_v7());
                    let issued = ca.sign_device(&csr, id, &slug, now, 90).unwrap();
                    let device = Device::new(
                        id,
                        tenant_id,
                        format!("bench-{i}"),
                        Some("bench".to_owned()),
                        DeviceState::Accepted,
                        now,
                    )
                    .unwrap()
                    .with_key_fingerprint(issued.key_fingerprint.clone());
                    let record = DeviceCertificate {
                        serial: issued.serial.clone(),
                        tenant_id,
                        device_id: id,
                        key_fingerprint: issued.key_fingerprint.clone(),
                        not_before: issued.not_before,
                        not_after: issued.not_after,
                        issued_at: now,
                        revoked_at: None,
                    };
                    let identity = Identity {
                        device_id: id.to_string(),
                        tls: client_tls(&roots, &issued.pem, key.serialize_der()),
                    };
                    (device, record, identity)
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut made = Vec::with_capacity(n);
    for t in tasks {
        made.extend(t.await.unwrap());
    }
    let keys = t0.elapsed();

    // Records: a few writers at once (SQLite serialises them anyway).
    let t0 = Instant::now();
    let (devices, identities): (Vec<_>, Vec<_>) =
        made.into_iter().map(|(d, c, i)| ((d, c), i)).unzip();
    let devices = Arc::new(devices);
    let next = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for _ in 0..4 {
        let (devices, next, store) = (devices.clone(), next.clone(), server.store.clone());
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((device, cert)) = devices.get(i) else {
                    break;
                };
                store.insert_device(device).await.unwrap();
                store.insert_certificate(cert).await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let artifact = tender_core::artifact::Artifact {
        id: tender_core::ArtifactId::from_uuid(uuid::Uuid::now_v7()),
        tenant_id: tenant.id,
        name: "bench-app".into(),
        version: "1.0".into(),
        payload_type: "file".into(),
        compatible: vec!["bench".into()],
        depends: Default::default(),
        provides: Default::default(),
        size: 1_000_000,
        sha256: "00".repeat(32),
        payload_bytes: 1_000_000,
        signed_by: vec![],
        manifest: "{}".into(),
        created_at: now,
        created_by: None,
    };
    server.store.insert_artifact(&artifact).await.unwrap();
    Setup {
        identities: Arc::new(identities),
        keys,
        db: t0.elapsed(),
        artifact: artifact.id,
    }
}

// ---------------------------------------------------------------------------------------------
// The server under test

pub enum Server {
    /// The release binary in its own process.
    Child {
        child: std::process::Child,
        mqtt: SocketAddr,
        http: SocketAddr,
        log: PathBuf,
    },
    /// The benchmark's own in-process server.
    InProcess(tender_server::RunningServer),
}

pub fn tender_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TENDER_BIN") {
        return Some(PathBuf::from(p));
    }
    // target/<profile>/deps/mqtt_sessions-<hash> -> target/<profile>/tender
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("tender");
    bin.exists().then_some(bin)
}

/// Starts `bin server` on `data_dir` with the benchmark's MQTT settings; waits (bounded) for
/// its banner.
/// `extra` is appended to the configuration file (more TOML sections).
pub fn spawn_child(
    bin: &Path,
    dir: &Path,
    data_dir: &Path,
    n: usize,
    extra: &str,
) -> Result<Server, String> {
    let config = dir.join("tender.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\
             [devices]\nlisten = \"127.0.0.1:0\"\n\
             [mqtt]\nlisten = \"127.0.0.1:0\"\nmax_connections = {max}\n\
             connect_timeout_secs = 300\nmessages_per_sec = 1000000\nburst = 1000000\n\
             [log]\nlevel = \"warn\"\n{extra}",
            data = data_dir.display().to_string(),
            max = n + 1000,
        ),
    )
    .unwrap();
    let log = dir.join("server.log");
    let mut cmd = Command::new(bin);
    cmd.arg("server").arg("--config").arg(&config);
    for (var, _) in tender_server::config::ENV_OVERRIDES {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .env_remove("TENDER_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn the tender server");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the banner, then keeps draining stdout until the server exits.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let after = |line: &str, scheme: &str| -> Option<SocketAddr> {
        let rest = &line[line.find(scheme)? + scheme.len()..];
        rest.split(|c: char| c == '/' || c.is_whitespace())
            .next()?
            .parse()
            .ok()
    };
    let (mut mqtt, mut http) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while mqtt.is_none() || http.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                mqtt = mqtt.or_else(|| after(&line, "mqtts://"));
                if line.contains("/api/v1") {
                    http = http.or_else(|| after(&line, "http://"));
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(read(&log).trim().to_owned());
            }
        }
    }
    Ok(Server::Child {
        child,
        mqtt: mqtt.unwrap(),
        http: http.unwrap(),
        log,
    })
}

impl Server {
    pub fn pid(&self) -> u32 {
        match self {
            Server::Child { child, .. } => child.id(),
            Server::InProcess(_) => std::process::id(),
        }
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        match self {
            Server::Child { mqtt, .. } => *mqtt,
            Server::InProcess(s) => s.mqtt_addr.expect("the MQTT gateway is enabled"),
        }
    }

    pub fn http_addr(&self) -> SocketAddr {
        match self {
            Server::Child { http, .. } => *http,
            Server::InProcess(s) => s.http_addr,
        }
    }

    /// The server's `tender_mqtt_*` metrics that are not zero.
    pub async fn mqtt_metrics(&self) -> Vec<(String, f64)> {
        let Ok(resp) = reqwest::Client::new()
            .get(format!("http://{}/metrics", self.http_addr()))
            .timeout(Duration::from_secs(30))
            .send()
            .await
        else {
            return Vec::new();
        };
        let text = resp.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("tender_mqtt_"))
            .filter_map(|l| {
                let (name, v) = l.rsplit_once(' ')?;
                let v: f64 = v.parse().ok()?;
                (v != 0.0).then(|| (name.to_owned(), v))
            })
            .collect()
    }

    pub async fn open_sessions(&self) -> Option<f64> {
        self.mqtt_metrics()
            .await
            .into_iter()
            .find(|(k, _)| k == "tender_mqtt_connections_open")
            .map(|(_, v)| v)
            .or(Some(0.0))
    }

    /// The server's log so far (empty for the in-process server).
    pub fn log_lines(&self) -> Vec<String> {
        match self {
            Server::Child { log, .. } => read(log).lines().map(str::to_owned).collect(),
            Server::InProcess(_) => Vec::new(),
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after a minute) and returns its log's warnings.
    pub async fn stop(self) -> Vec<String> {
        match self {
            Server::InProcess(s) => {
                let _ = tokio::time::timeout(Duration::from_secs(120), s.shutdown()).await;
                Vec::new()
            }
            Server::Child { mut child, log, .. } => {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(60);
                while child.try_wait().ok().flatten().is_none() {
                    if Instant::now() > deadline {
                        println!("  (the server did not stop within 60 s of SIGTERM: killed)");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                read(&log).lines().map(str::to_owned).collect()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Load

pub struct ConnectRun<S> {
    pub clients: Vec<(usize, Client<S>)>,
    pub latencies_us: Vec<u64>,
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl<S> ConnectRun<S> {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn absorb(&mut self, other: ConnectRun<S>) {
        self.clients.extend(other.clients);
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.elapsed += other.elapsed;
    }
}

/// Opens the connections `range` with `concurrency` attempts in flight.
pub async fn connect_range<S, F, Fut>(
    range: Range<usize>,
    concurrency: usize,
    connect: F,
) -> ConnectRun<S>
where
    S: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Client<S>, String>> + Send,
{
    let start = Instant::now();
    let connect = Arc::new(connect);
    let next = Arc::new(AtomicUsize::new(range.start));
    let end = range.end;
    let mut workers = Vec::new();
    for _ in 0..concurrency.min(range.len()) {
        let (connect, next) = (connect.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut run = ConnectRun {
                clients: Vec::new(),
                latencies_us: Vec::new(),
                errors: BTreeMap::new(),
                elapsed: Duration::ZERO,
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                let t0 = Instant::now();
                match tokio::time::timeout(CONNECT_TIMEOUT, connect(i)).await {
                    Ok(Ok(c)) => {
                        run.latencies_us.push(t0.elapsed().as_micros() as u64);
                        run.clients.push((i, c));
                    }
                    Ok(Err(e)) => *run.errors.entry(e).or_default() += 1,
                    Err(_) => *run.errors.entry("timeout".into()).or_default() += 1,
                }
            }
            run
        }));
    }
    let mut all = ConnectRun {
        clients: Vec::new(),
        latencies_us: Vec::new(),
        errors: BTreeMap::new(),
        elapsed: Duration::ZERO,
    };
    for w in workers {
        all.absorb(w.await.unwrap());
    }
    all.elapsed = start.elapsed();
    all
}

/// TCP, TLS with the device's certificate, then (if `mqtt`) CONNECT/CONNACK.
pub async fn connect_tender(
    addr: SocketAddr,
    who: &Identity,
    mqtt: bool,
) -> Result<Client<Tls>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("TCP connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(who.tls.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let mut c = Client::new(tls);
    if mqtt {
        c.connect(&who.device_id).await?;
    }
    Ok(c)
}

pub async fn connect_plain(
    addr: SocketAddr,
    client_id: String,
) -> Result<Client<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("TCP connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut c = Client::new(tcp);
    c.connect(&client_id).await?;
    Ok(c)
}

pub fn log_summary(lines: &[String]) -> Vec<(String, u64)> {
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for l in lines {
        let msg = l
            .split_once(" WARN ")
            .or_else(|| l.split_once(" ERROR "))
            .map_or(l.as_str(), |(_, m)| m);
        let mut short = String::new();
        for c in msg.chars().take(100) {
            if c.is_ascii_digit() {
                if !short.ends_with('#') {
                    short.push('#');
                }
            } else {
                short.push(c);
            }
        }
        *kinds.entry(short).or_default() += 1;
    }
    let mut v: Vec<_> = kinds.into_iter().collect();
    v.sort_by_key(|k| std::cmp::Reverse(k.1));
    v
}

pub fn print_errors(what: &str, errors: &BTreeMap<String, u64>) {
    for (e, count) in errors {
        println!("  {what} error x{count}: {e}");
    }
}

pub struct Mosquitto {
    pub pid: u32,
    pub addr: SocketAddr,
    /// A broker this benchmark started (fresh for each N); `None`: the one already running.
    pub child: Option<std::process::Child>,
    pub _dir: Option<tempfile::TempDir>,
}

/// A fresh private Mosquitto on a free loopback port (plain TCP, anonymous), if the binary is
/// installed; else the one already listening on 127.0.0.1:1883, if any.
pub async fn mosquitto() -> Option<Mosquitto> {
    let bin = [
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        "/usr/bin/mosquitto",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists());
    if let Some(bin) = bin {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        if let Ok(mut child) = child {
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    return Some(Mosquitto {
                        pid: child.id(),
                        addr,
                        child: Some(child),
                        _dir: Some(dir),
                    });
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    let addr: SocketAddr = MOSQUITTO.parse().unwrap();
    tokio::net::TcpStream::connect(addr).await.ok()?;
    let out = Command::new("pgrep").arg("mosquitto").output().ok()?;
    let pid = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    Some(Mosquitto {
        pid,
        addr,
        child: None,
        _dir: None,
    })
}

impl Mosquitto {
    pub async fn stop(self) {
        if let Some(mut child) = self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What a closed-loop publishing run saw.
#[derive(Default)]
pub struct PublishRun {
    pub latencies_us: Vec<u64>,
    /// PUBACK reason code -> (name, count, first reason string).
    pub reasons: BTreeMap<u8, (String, u64, Option<String>)>,
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

/// Every client publishes QoS 1 to `tender/v1/{id}/telemetry` in a closed loop (the next
/// message once the PUBACK is in) for `secs`; `payload(seq)` makes message `seq` (from 1).
pub async fn publish_loop<S>(
    clients: Vec<(String, Client<S>)>,
    secs: u64,
    puback_timeout: Duration,
    payload: Arc<dyn Fn(u64) -> Bytes + Send + Sync>,
) -> (PublishRun, Vec<Client<S>>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (device, mut c) in clients {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let topic = ByteString::from(format!("tender/v1/{device}/telemetry"));
            let mut run = PublishRun::default();
            let mut seq: u64 = 0;
            while Instant::now() < deadline {
                seq += 1;
                let id = NonZeroU16::new((seq % 65_535) as u16 + 1).unwrap();
                let body = payload(seq);
                let t0 = Instant::now();
                let round_trip = async {
                    c.send(MqttPacket::V5(v5::Packet::Publish(Box::new(
                        rmqtt_codec::types::Publish {
                            dup: false,
                            retain: false,
                            qos: QoS::AtLeastOnce,
                            topic: topic.clone(),
                            packet_id: Some(id),
                            payload: body,
                            properties: Some(Default::default()),
                        },
                    ))))
                    .await?;
                    loop {
                        match c.recv().await? {
                            MqttPacket::V5(v5::Packet::PublishAck(a)) if a.packet_id == id => {
                                return Ok(a);
                            }
                            MqttPacket::V5(v5::Packet::Disconnect(d)) => {
                                return Err(format!(
                                    "DISCONNECT 0x{:02x} {:?}",
                                    d.reason_code as u8, d.reason_code
                                ));
                            }
                            _ => {}
                        }
                    }
                };
                match tokio::time::timeout(puback_timeout, round_trip).await {
                    Ok(Ok(ack)) => {
                        run.latencies_us.push(t0.elapsed().as_micros() as u64);
                        let e = run
                            .reasons
                            .entry(ack.reason_code as u8)
                            .or_insert_with(|| (format!("{:?}", ack.reason_code), 0, None));
                        e.1 += 1;
                        if e.2.is_none() {
                            e.2 = ack.reason_string.map(|s| s.to_string());
                        }
                    }
                    Ok(Err(e)) => {
                        *run.errors.entry(e).or_default() += 1;
                        break;
                    }
                    Err(_) => {
                        *run.errors.entry("no PUBACK in time".into()).or_default() += 1;
                        break;
                    }
                }
            }
            (run, c)
        }));
    }
    let mut all = PublishRun::default();
    let mut back = Vec::new();
    for t in tasks {
        let (run, c) = t.await.unwrap();
        all.latencies_us.extend(run.latencies_us);
        for (code, (name, count, why)) in run.reasons {
            let e = all.reasons.entry(code).or_insert((name, 0, None));
            e.1 += count;
            if e.2.is_none() {
                e.2 = why;
            }
        }
        for (k, v) in run.errors {
            *all.errors.entry(k).or_default() += v;
        }
        back.push(c);
    }
    all.elapsed = start.elapsed();
    all.latencies_us.sort_unstable();
    (all, back)
}
