//! `tender sim`: many simulated devices in one process, each one the real agent
//! ([`tender_agent::agent::run_with`]) with its own key, certificate, buffer and MQTT
//! connection, reading from a simulated [`Source`] instead of `/proc`.
//!
//! Devices are started at `--ramp` per second so that enrolling a thousand does not arrive as
//! one burst; each keeps its identity in `--data-dir/<name>/`, so a second run reconnects the
//! same devices without enrolling again. With `--offline-fraction`, that share of the fleet is
//! flaky: each such device runs for a few minutes, goes away (its agent stops and disconnects)
//! and comes back later with its stored identity.
//!
//! Devices take part in deployments without installing anything
//! ([`tender_agent::deploy::Simulation`]): one in `--download-every` downloads the whole
//! artifact over HTTPS and checks it, the others fetch its manifest with a `Range` request;
//! then each reports `downloaded` → `installing` → `rebooting` → `verifying` → `succeeded` and
//! records the version (inventory `provides.<name>.version`), or `failed` when the artifact's
//! manifest `meta.sim_fail_fraction` (e.g. `0.1`) covers the device (a hash of its id and the
//! version: the same devices fail the same version every time).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tender_agent::agent::{Counters, RunOptions, Source};
use tender_agent::config::RawConfig;
use tender_agent::deploy::{Mode, Simulation};
use tender_agent::inventory::{Attributes, Value as Attr};
use tender_agent::telemetry::Payload;
use tokio::sync::watch;

use crate::cli::{GlobalArgs, SimArgs};

/// A kind of simulated device: what it reports and how its numbers move.
struct Kind {
    device_type: &'static str,
    hardware: &'static str,
    cpu: &'static str,
    cpus: u32,
    memory_mib: u64,
    os: &'static [(&'static str, &'static str, &'static str)],
    arch: &'static str,
    base_temp: f64,
}

const KINDS: &[Kind] = &[
    Kind {
        device_type: "kiosk",
        hardware: "Raspberry Pi 4 Model B Rev 1.5",
        cpu: "Cortex-A72",
        cpus: 4,
        memory_mib: 4096,
        os: &[
            ("debian", "12", "Debian GNU/Linux 12 (bookworm)"),
            ("debian", "11", "Debian GNU/Linux 11 (bullseye)"),
        ],
        arch: "aarch64",
        base_temp: 48.0,
    },
    Kind {
        device_type: "gateway",
        hardware: "Advantech UNO-2271G",
        cpu: "Intel(R) Atom(TM) x5-E3940",
        cpus: 4,
        memory_mib: 8192,
        os: &[
            ("ubuntu", "22.04", "Ubuntu 22.04.5 LTS"),
            ("ubuntu", "24.04", "Ubuntu 24.04.1 LTS"),
        ],
        arch: "x86_64",
        base_temp: 41.0,
    },
    Kind {
        device_type: "sensor-hub",
        hardware: "STM32MP157F-DK2",
        cpu: "Cortex-A7",
        cpus: 2,
        memory_mib: 512,
        os: &[
            (
                "poky",
                "4.0.21",
                "Poky (Yocto Project Reference Distro) 4.0.21",
            ),
            (
                "poky",
                "5.0.4",
                "Poky (Yocto Project Reference Distro) 5.0.4",
            ),
        ],
        arch: "armv7l",
        base_temp: 39.0,
    },
    Kind {
        device_type: "industrial-pc",
        hardware: "Siemens SIMATIC IPC427E",
        cpu: "Intel(R) Xeon(R) CPU E3-1505L v6",
        cpus: 8,
        memory_mib: 16384,
        os: &[("debian", "12", "Debian GNU/Linux 12 (bookworm)")],
        arch: "x86_64",
        base_temp: 52.0,
    },
];

const SITES: &[&str] = &[
    "berlin-1",
    "berlin-2",
    "hamburg",
    "munich",
    "lyon",
    "rotterdam",
    "warsaw",
    "vienna",
];

const ARTIFACTS: &[&str] = &[
    "release-2026.09.1",
    "release-2026.10.2",
    "release-2026.11.0",
];

/// One simulated device's readings.
pub struct SimSource {
    inventory: Attributes,
    rng: StdRng,
    cpu: f64,
    temp: f64,
    base_temp: f64,
    memory_total: f64,
    memory_used: f64,
    rx: f64,
    tx: f64,
    started_ms: i64,
}

impl SimSource {
    /// The device number `index` of a fleet seeded with `seed`: the same pair gives the same
    /// device every run.
    pub fn new(index: usize, name: &str, seed: u64) -> (SimSource, &'static str) {
        let mut rng =
            StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let kind = &KINDS[rng.random_range(0..KINDS.len())];
        let (os_id, os_version, os_name) = kind.os[rng.random_range(0..kind.os.len())];
        let site_index = rng.random_range(0..SITES.len());
        let artifact = ARTIFACTS[rng.random_range(0..ARTIFACTS.len())];
        let memory_total = (kind.memory_mib << 20) as f64;
        let text = |s: &str| Attr::Str(s.to_owned());
        let inventory: Attributes = [
            ("device_type", text(kind.device_type)),
            ("hostname", text(name)),
            ("hardware.model", text(kind.hardware)),
            (
                "hardware.serial",
                text(&format!("SIM{:08X}", rng.random::<u32>())),
            ),
            ("cpu.model", text(kind.cpu)),
            ("cpu.count", Attr::Num(f64::from(kind.cpus))),
            ("memory.total_bytes", Attr::Num(memory_total)),
            ("arch", text(kind.arch)),
            ("os.id", text(os_id)),
            ("os.version", text(os_version)),
            ("os.name", text(os_name)),
            (
                "kernel",
                text(if kind.arch == "x86_64" {
                    "6.1.0-27-amd64"
                } else {
                    "6.1.0-27-arm64"
                }),
            ),
            ("artifact.name", text(artifact)),
            ("agent.version", text(env!("CARGO_PKG_VERSION"))),
            ("location.site", text(SITES[site_index])),
            (
                "net.eth0.ipv4",
                Attr::List(vec![format!(
                    "10.{}.{}.{}",
                    10 + site_index,
                    (index / 250) % 250,
                    2 + index % 250
                )]),
            ),
            (
                "net.eth0.mac",
                text(&format!(
                    "02:00:{:02x}:{:02x}:{:02x}:{:02x}",
                    (index >> 24) & 0xff,
                    (index >> 16) & 0xff,
                    (index >> 8) & 0xff,
                    index & 0xff
                )),
            ),
            ("simulated", Attr::Bool(true)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let source = SimSource {
            inventory,
            cpu: rng.random_range(5.0..40.0),
            temp: kind.base_temp,
            base_temp: kind.base_temp,
            memory_total,
            memory_used: memory_total * rng.random_range(0.2..0.6),
            rx: 0.0,
            tx: 0.0,
            started_ms: tender_agent::telemetry::now_ms()
                - rng.random_range(60_000..30 * 86_400_000),
            rng,
        };
        (source, kind.device_type)
    }

    /// A step of a bounded random walk.
    fn walk(rng: &mut StdRng, v: f64, step: f64, lo: f64, hi: f64) -> f64 {
        (v + rng.random_range(-step..=step)).clamp(lo, hi)
    }
}

impl Source for SimSource {
    async fn telemetry(&mut self, now_ms: i64) -> Vec<Payload> {
        let r = &mut self.rng;
        self.cpu = Self::walk(r, self.cpu, 8.0, 0.5, 100.0);
        self.temp = Self::walk(
            r,
            self.temp,
            0.8,
            self.base_temp - 8.0,
            self.base_temp + 30.0,
        );
        self.memory_used = Self::walk(
            r,
            self.memory_used,
            self.memory_total * 0.02,
            self.memory_total * 0.1,
            self.memory_total * 0.95,
        );
        self.rx += r.random_range(1_000.0..200_000.0);
        self.tx += r.random_range(500.0..50_000.0);
        let values = [
            ("cpu.usage", self.cpu),
            ("temp.cpu.celsius", self.temp),
            ("mem.total_bytes", self.memory_total),
            ("mem.used_bytes", self.memory_used.round()),
            (
                "mem.available_bytes",
                (self.memory_total - self.memory_used).round(),
            ),
            ("load.1m", self.cpu / 25.0),
            ("net.eth0.rx_bytes", self.rx.round()),
            ("net.eth0.tx_bytes", self.tx.round()),
            ("uptime.secs", ((now_ms - self.started_ms) / 1000) as f64),
        ];
        vec![Payload {
            ts: now_ms,
            values: values.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        }]
    }

    async fn inventory(&mut self) -> Attributes {
        self.inventory.clone()
    }
}

/// Creates an enrollment token for the fleet through the operator API.
async fn fleet_token(g: &GlobalArgs, devices: usize) -> Result<String> {
    let client = crate::commands::connect(g)
        .context("no --token given for the devices, and no operator login to create one with")?;
    let body = serde_json::json!({
        "name": format!("tender sim ({devices} devices)"),
        "max_uses": u32::try_from(devices).unwrap_or(u32::MAX),
        "expires_in_secs": 86_400,
    });
    let t: Value = client
        .send(reqwest::Method::POST, "enrollment-tokens", &body)
        .await?;
    t["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("the server answered without a token: {t}"))
}

fn device_name(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:05}")
}

pub async fn run(g: &GlobalArgs, args: &SimArgs) -> Result<ExitCode> {
    if args.devices == 0 {
        return Err(anyhow!("--devices must be at least 1"));
    }
    if !(0.0..=1.0).contains(&args.offline_fraction) {
        return Err(anyhow!(
            "--offline-fraction is a share of the fleet, from 0 to 1"
        ));
    }
    if args.ramp == 0 {
        return Err(anyhow!("--ramp must be at least 1 device per second"));
    }
    // The agents' own log lines (reconnects, refusals) at RUST_LOG, errors only by default:
    // a thousand devices retrying would drown the progress lines.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .try_init();
    let ca = std::fs::canonicalize(&args.ca).with_context(|| {
        format!(
            "the server's CA certificate {} (pass --ca; the server writes it to <data dir>/ca/ca.crt)",
            args.ca.display()
        )
    })?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let needs_token = (0..args.devices).any(|i| {
        !args
            .data_dir
            .join(device_name(&args.prefix, i))
            .join("device.crt")
            .exists()
    });
    let token = match (&args.token, needs_token) {
        (Some(t), _) => Some(t.clone()),
        (None, true) => Some(fleet_token(g, args.devices).await?),
        (None, false) => None,
    };
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    eprintln!(
        "simulating {} devices against {} (data in {})",
        args.devices,
        args.server_url,
        args.data_dir.display()
    );
    let started = tokio::time::Instant::now();
    let mut report = tokio::time::interval(Duration::from_secs(args.report_secs.max(1)));
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0usize;
    let mut ramp = tokio::time::interval(Duration::from_secs(1) / args.ramp.max(1));
    let mut flaky_rng = StdRng::seed_from_u64(args.seed);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut errors_shown = 0;
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = ramp.tick(), if next < args.devices => {
                let i = next;
                next += 1;
                let name = device_name(&args.prefix, i);
                let flaky = flaky_rng.random_bool(args.offline_fraction);
                let device = Device {
                    full_download: i.is_multiple_of(args.download_every.max(1)),
                    index: i,
                    config: device_config(args, &ca, &name, token.clone(), i)?,
                    seed: args.seed,
                    name,
                    flaky,
                    interval: Duration::from_millis(args.interval_ms.max(100)),
                    counters: counters.clone(),
                    stop: stop_rx.clone(),
                };
                tasks.spawn(device.run());
            }
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(Err(e)) = done {
                    errors_shown += 1;
                    if errors_shown <= 10 {
                        eprintln!("a simulated device stopped: {e:#}");
                    }
                }
            }
            _ = report.tick() => {
                let c = &counters;
                eprintln!(
                    "[{:>5}s] started {}/{}  running {}  connected {}  messages queued {}  acknowledged {}  refused {}  failed {}",
                    started.elapsed().as_secs(),
                    next,
                    args.devices,
                    c.running.load(Ordering::Relaxed),
                    c.connected.load(Ordering::Relaxed),
                    c.appended.load(Ordering::Relaxed),
                    c.delivered.load(Ordering::Relaxed),
                    c.rejected.load(Ordering::Relaxed),
                    c.failed.load(Ordering::Relaxed),
                );
                if let Some(limit) = args.duration_secs
                    && started.elapsed() >= Duration::from_secs(limit)
                {
                    break;
                }
            }
        }
    }
    eprintln!("stopping the simulated devices");
    let _ = stop_tx.send(true);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(20), drain)
        .await
        .is_err()
    {
        eprintln!("some devices did not stop within 20 s; leaving them");
    }
    Ok(ExitCode::SUCCESS)
}

fn device_config(
    args: &SimArgs,
    ca: &Path,
    name: &str,
    token: Option<String>,
    index: usize,
) -> Result<tender_agent::config::AgentConfig> {
    let (_, device_type) = SimSource::new(index, name, args.seed);
    let data_dir: PathBuf = args.data_dir.join(name);
    RawConfig {
        server_url: Some(args.server_url.clone()),
        mqtt_url: args.mqtt_url.clone(),
        ca_file: Some(ca.to_owned()),
        data_dir: Some(data_dir),
        enrollment_token: token,
        device_name: Some(name.to_owned()),
        device_type: Some(device_type.to_owned()),
        telemetry_interval_secs: Some(args.interval_ms.div_ceil(1000).max(1)),
        max_backoff_secs: Some(args.max_backoff_secs),
        keepalive_secs: Some(args.keepalive_secs),
        collectors: Some(Vec::new()),
        inventory_interval_secs: Some(3600),
        // A simulator needs no power-loss safety: no fsync (a killed process loses nothing).
        buffer_fsync_every: Some(0),
        buffer_max_mib: Some(1),
        ..RawConfig::default()
    }
    .validate()
    .map(|mut c| {
        // `restart-agent` must not stop the simulator: a simulated device reports it and goes on.
        c.commands.restart_exits = false;
        c
    })
    .map_err(|e| anyhow!("simulated device {name}: {e}"))
}

struct Device {
    index: usize,
    /// Downloads whole artifacts in deployments (else only their manifests).
    full_download: bool,
    name: String,
    seed: u64,
    config: tender_agent::config::AgentConfig,
    flaky: bool,
    interval: Duration,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
}

impl Device {
    async fn run(mut self) -> Result<()> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0xF1A4 ^ self.index as u64);
        loop {
            let (source, _) = SimSource::new(self.index, &self.name, self.seed);
            let options = RunOptions {
                no_status_file: true,
                telemetry_interval: Some(self.interval),
                counters: Some(self.counters.clone()),
                deployments: Mode::Simulate(Simulation {
                    full_download: self.full_download,
                }),
                ..RunOptions::default()
            };
            // A flaky device stays up for 1 to 5 minutes, then goes away for 10 s to 2 min.
            let up = self
                .flaky
                .then(|| Duration::from_secs(rng.random_range(60..300)));
            let mut stop = self.stop.clone();
            let shutdown = async move {
                let stopped = stop.wait_for(|s| *s);
                match up {
                    Some(d) => {
                        let _ = tokio::time::timeout(d, stopped).await;
                    }
                    None => {
                        let _ = stopped.await;
                    }
                }
            };
            tender_agent::agent::run_with(&self.config, options, source, shutdown)
                .await
                .with_context(|| format!("device {}", self.name))?;
            if *self.stop.borrow() || !self.flaky {
                return Ok(());
            }
            let away = Duration::from_secs(rng.random_range(10..120));
            let mut stop = self.stop.clone();
            if tokio::time::timeout(away, stop.wait_for(|s| *s))
                .await
                .is_ok()
            {
                return Ok(());
            }
            // Once enrolled the identity is on disk: no token needed to come back.
            self.config.enrollment_token = None;
        }
    }
}
