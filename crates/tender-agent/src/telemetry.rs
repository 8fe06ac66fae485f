//! System metrics from `/proc`, as the documented telemetry payload
//! `{"ts": <unix ms>, "values": {...}}`. The parsers are pure functions over the files' text.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

/// One telemetry message: a timestamp (Unix milliseconds) and named values.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Payload {
    pub ts: i64,
    pub values: BTreeMap<String, f64>,
}

impl Payload {
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a map of strings to finite f64 cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Aggregate CPU time counters (the `cpu` line of `/proc/stat`), in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTimes {
    pub total: u64,
    /// idle + iowait
    pub idle: u64,
}

/// The aggregate `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if fields.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is already
    // counted in user/nice, so only the first eight make up the total.
    let total = fields.iter().take(8).sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes { total, idle })
}

/// CPU busy percentage between two readings; `None` when no time passed.
pub fn cpu_usage(prev: CpuTimes, cur: CpuTimes) -> Option<f64> {
    let total = cur.total.checked_sub(prev.total)?;
    let idle = cur.idle.checked_sub(prev.idle)?;
    if total == 0 {
        return None;
    }
    let busy = total.saturating_sub(idle);
    Some(100.0 * busy as f64 / total as f64)
}

/// Memory from `/proc/meminfo`, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub available: u64,
}

impl MemInfo {
    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.available)
    }
}

pub fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let mut total = None;
    let mut available = None;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let key = parts.next();
        let value = parts.next().and_then(|v| v.parse::<u64>().ok());
        let unit = parts.next();
        let bytes = value.map(|v| if unit == Some("kB") { v * 1024 } else { v });
        match key {
            Some("MemTotal:") => total = bytes,
            Some("MemAvailable:") => available = bytes,
            _ => {}
        }
    }
    Some(MemInfo {
        total: total?,
        available: available?,
    })
}

/// The 1, 5 and 15 minute load averages from `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(str::parse::<f64>);
    let a = it.next()?.ok()?;
    let b = it.next()?.ok()?;
    let c = it.next()?.ok()?;
    Some([a, b, c])
}

/// Seconds since boot from `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Per-interface byte counters from `/proc/net/dev`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetDev {
    pub interface: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

pub fn parse_net_dev(text: &str) -> Vec<NetDev> {
    let mut out = Vec::new();
    // Two header lines, then `iface: rx_bytes packets errs drop fifo frame compressed multicast
    // tx_bytes ...`.
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let fields: Vec<u64> = match rest.split_whitespace().map(str::parse).collect() {
            Ok(f) => f,
            Err(_) => continue,
        };
        if fields.len() < 9 {
            continue;
        }
        out.push(NetDev {
            interface: name.trim().to_owned(),
            rx_bytes: fields[0],
            tx_bytes: fields[8],
        });
    }
    out
}

/// An interface name as a metric name component: characters outside `A-Za-z0-9_-:` become `_`.
pub fn metric_component(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The text of the `/proc` files a sample is made from (missing files are `None`).
#[derive(Clone, Debug, Default)]
pub struct ProcSnapshot {
    pub stat: Option<String>,
    pub meminfo: Option<String>,
    pub loadavg: Option<String>,
    pub uptime: Option<String>,
    pub net_dev: Option<String>,
}

/// Collects system metrics; keeps the previous CPU reading to compute usage from deltas.
#[derive(Debug)]
pub struct Collector {
    root: PathBuf,
    /// Where thermal zones are read (`/sys`); `None` reads none.
    sys_root: Option<PathBuf>,
    /// Filesystems whose usage is reported (`disk.<name>.*`).
    disks: Vec<PathBuf>,
    prev_cpu: Option<CpuTimes>,
}

/// The metric name part for a mount point: `/` is `root`, `/var/lib` is `var_lib`.
pub fn disk_name(path: &std::path::Path) -> String {
    let s = path.to_string_lossy();
    let trimmed = s.trim_matches('/');
    if trimmed.is_empty() {
        "root".to_owned()
    } else {
        metric_component(&trimmed.replace('/', "_"))
    }
}

/// `temp.<zone type>.celsius` from `/sys/class/thermal/thermal_zone*/{type,temp}` (the kernel
/// reports millidegrees). Zones that cannot be read are skipped; two zones of one type get
/// `_1`, `_2` ... after the first.
pub fn read_thermal(sys_root: &std::path::Path) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(sys_root.join("class/thermal")) else {
        return out;
    };
    let mut zones: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .map(|e| e.path())
        .collect();
    zones.sort();
    for zone in zones.into_iter().take(32) {
        let Some(milli) = std::fs::read_to_string(zone.join("temp"))
            .ok()
            .and_then(|t| t.trim().parse::<f64>().ok())
        else {
            continue;
        };
        let kind = std::fs::read_to_string(zone.join("type"))
            .map(|t| metric_component(t.trim()))
            .unwrap_or_else(|_| "zone".to_owned());
        let mut name = format!("temp.{kind}.celsius");
        let mut n = 1;
        while out.contains_key(&name) {
            name = format!("temp.{kind}_{n}.celsius");
            n += 1;
        }
        out.insert(name, milli / 1000.0);
    }
    out
}

/// Size, used and available bytes of the filesystem holding `path`.
pub fn disk_usage(path: &std::path::Path) -> Option<(u64, u64, u64)> {
    let st = rustix::fs::statvfs(path).ok()?;
    let unit = if st.f_frsize > 0 {
        st.f_frsize
    } else {
        st.f_bsize
    };
    let total = st.f_blocks.saturating_mul(unit);
    let free = st.f_bfree.saturating_mul(unit);
    let avail = st.f_bavail.saturating_mul(unit);
    Some((total, total.saturating_sub(free), avail))
}

impl Default for Collector {
    fn default() -> Self {
        Collector::new("/proc")
    }
}

impl Collector {
    /// A collector reading from `root` (normally `/proc`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Collector {
            root: root.into(),
            sys_root: Some(PathBuf::from("/sys")),
            disks: vec![PathBuf::from("/")],
            prev_cpu: None,
        }
    }

    /// Reads thermal zones under `sys_root` instead of `/sys` (`None`: none).
    pub fn with_sys_root(mut self, sys_root: Option<PathBuf>) -> Self {
        self.sys_root = sys_root;
        self
    }

    /// Reports the usage of these filesystems (default `/`).
    pub fn with_disks(mut self, disks: Vec<PathBuf>) -> Self {
        self.disks = disks;
        self
    }

    /// Reads the files now.
    pub fn read(&self) -> ProcSnapshot {
        let read = |name: &str| std::fs::read_to_string(self.root.join(name)).ok();
        ProcSnapshot {
            stat: read("stat"),
            meminfo: read("meminfo"),
            loadavg: read("loadavg"),
            uptime: read("uptime"),
            net_dev: read("net/dev"),
        }
    }

    /// A payload from `/proc` stamped `ts_ms`. `cpu.usage` appears from the second sample on.
    pub fn sample(&mut self, ts_ms: i64) -> Payload {
        let snap = self.read();
        let mut payload = self.sample_from(&snap, ts_ms);
        if let Some(sys) = &self.sys_root {
            payload.values.extend(read_thermal(sys));
        }
        for disk in &self.disks {
            if let Some((total, used, avail)) = disk_usage(disk) {
                let name = disk_name(disk);
                payload
                    .values
                    .insert(format!("disk.{name}.total_bytes"), total as f64);
                payload
                    .values
                    .insert(format!("disk.{name}.used_bytes"), used as f64);
                payload
                    .values
                    .insert(format!("disk.{name}.available_bytes"), avail as f64);
            }
        }
        payload.values.retain(|_, v| v.is_finite());
        payload
    }

    /// A payload from already-read text (pure apart from the remembered CPU reading).
    pub fn sample_from(&mut self, snap: &ProcSnapshot, ts_ms: i64) -> Payload {
        let mut values = BTreeMap::new();
        if let Some(cur) = snap.stat.as_deref().and_then(parse_proc_stat) {
            if let Some(usage) = self.prev_cpu.and_then(|prev| cpu_usage(prev, cur)) {
                values.insert("cpu.usage".to_owned(), usage);
            }
            self.prev_cpu = Some(cur);
        }
        if let Some(m) = snap.meminfo.as_deref().and_then(parse_meminfo) {
            values.insert("mem.total_bytes".to_owned(), m.total as f64);
            values.insert("mem.available_bytes".to_owned(), m.available as f64);
            values.insert("mem.used_bytes".to_owned(), m.used() as f64);
        }
        if let Some([a, b, c]) = snap.loadavg.as_deref().and_then(parse_loadavg) {
            values.insert("load.1m".to_owned(), a);
            values.insert("load.5m".to_owned(), b);
            values.insert("load.15m".to_owned(), c);
        }
        if let Some(u) = snap.uptime.as_deref().and_then(parse_uptime) {
            values.insert("uptime.secs".to_owned(), u);
        }
        for dev in snap
            .net_dev
            .as_deref()
            .map(parse_net_dev)
            .unwrap_or_default()
        {
            let name = metric_component(&dev.interface);
            values.insert(format!("net.{name}.rx_bytes"), dev.rx_bytes as f64);
            values.insert(format!("net.{name}.tx_bytes"), dev.tx_bytes as f64);
        }
        values.retain(|_, v| v.is_finite());
        Payload { ts: ts_ms, values }
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_1: &str =
        "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 50 0 50 350 50 0 0 0 0 0\nintr 1 2 3\nctxt 99\n";
    const STAT_2: &str = "cpu  150 0 150 750 150 0 0 0 0 0\ncpu0 75 0 75 375 75 0 0 0 0 0\n";
    const MEMINFO: &str = "MemTotal:        8000000 kB\nMemFree:         1000000 kB\nMemAvailable:    6000000 kB\nBuffers:          100000 kB\n";
    const LOADAVG: &str = "0.31 0.25 0.10 1/234 5678\n";
    const UPTIME: &str = "12345.67 45678.90\n";
    const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:   12345     100    0    0    0     0          0         0    12345     100    0    0    0     0       0          0\n  eth0: 987654321  5000    0    0    0     0          0        10  123456789  4000    0    0    0     0       0          0\nwlan0@x: 1 2 0 0 0 0 0 0 3 4 0 0 0 0 0 0\n";

    #[test]
    fn proc_stat_totals_and_idle() {
        let t = parse_proc_stat(STAT_1).unwrap();
        assert_eq!(
            t,
            CpuTimes {
                total: 1000,
                idle: 800
            }
        );
        assert_eq!(parse_proc_stat("intr 1 2\n"), None);
        assert_eq!(parse_proc_stat("cpu a b c d\n"), None);
    }

    #[test]
    fn cpu_usage_is_the_busy_share_of_the_delta() {
        let a = parse_proc_stat(STAT_1).unwrap();
        let b = parse_proc_stat(STAT_2).unwrap();
        // delta total 200, delta idle 100 -> 50 %
        assert_eq!(cpu_usage(a, b), Some(50.0));
        assert_eq!(cpu_usage(a, a), None);
        assert_eq!(
            cpu_usage(b, a),
            None,
            "counters going backwards give nothing"
        );
    }

    #[test]
    fn meminfo_in_bytes() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(m.total, 8_000_000 * 1024);
        assert_eq!(m.available, 6_000_000 * 1024);
        assert_eq!(m.used(), 2_000_000 * 1024);
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn loadavg_and_uptime() {
        assert_eq!(parse_loadavg(LOADAVG), Some([0.31, 0.25, 0.10]));
        assert_eq!(parse_loadavg("0.1 x"), None);
        assert_eq!(parse_uptime(UPTIME), Some(12345.67));
        assert_eq!(parse_uptime(""), None);
    }

    #[test]
    fn net_dev_counters() {
        let d = parse_net_dev(NET_DEV);
        assert_eq!(d.len(), 3);
        assert_eq!(
            d[1],
            NetDev {
                interface: "eth0".into(),
                rx_bytes: 987_654_321,
                tx_bytes: 123_456_789
            }
        );
        assert_eq!(metric_component(&d[2].interface), "wlan0_x");
    }

    #[test]
    fn payload_has_the_documented_shape_and_names() {
        let mut c = Collector::new("/nonexistent");
        let mut snap = ProcSnapshot {
            stat: Some(STAT_1.into()),
            meminfo: Some(MEMINFO.into()),
            loadavg: Some(LOADAVG.into()),
            uptime: Some(UPTIME.into()),
            net_dev: Some(NET_DEV.into()),
        };
        let first = c.sample_from(&snap, 1_795_430_400_000);
        assert!(
            !first.values.contains_key("cpu.usage"),
            "needs two readings"
        );
        snap.stat = Some(STAT_2.into());
        let p = c.sample_from(&snap, 1_795_430_460_000);
        assert_eq!(p.values["cpu.usage"], 50.0);
        assert_eq!(p.values["mem.available_bytes"], 6_000_000.0 * 1024.0);
        assert_eq!(p.values["load.1m"], 0.31);
        assert_eq!(p.values["uptime.secs"], 12345.67);
        assert_eq!(p.values["net.eth0.rx_bytes"], 987_654_321.0);
        assert_eq!(p.values["net.eth0.tx_bytes"], 123_456_789.0);
        let json: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(json["ts"], 1_795_430_460_000i64);
        assert_eq!(json["values"]["load.5m"], 0.25);
        for name in p.values.keys() {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-:/".contains(c)),
                "{name}"
            );
        }
    }

    #[test]
    fn missing_files_give_an_empty_payload() {
        let mut c = Collector::new("/nonexistent-proc-root")
            .with_sys_root(None)
            .with_disks(vec!["/nonexistent-mount".into()]);
        assert!(c.sample(1).values.is_empty());
        // The defaults add what the machine has: the root filesystem at least.
        let mut c = Collector::new("/nonexistent-proc-root");
        assert!(c.sample(1).values.contains_key("disk.root.total_bytes"));
    }

    #[test]
    fn thermal_zones_and_disk_names() {
        let dir = tempfile::tempdir().unwrap();
        for (i, (kind, temp)) in [
            ("x86_pkg_temp", "45500"),
            ("acpitz", "27800"),
            ("acpitz", "30000"),
            ("broken", "n/a"),
        ]
        .iter()
        .enumerate()
        {
            let z = dir.path().join(format!("class/thermal/thermal_zone{i}"));
            std::fs::create_dir_all(&z).unwrap();
            std::fs::write(z.join("type"), format!("{kind}\n")).unwrap();
            std::fs::write(z.join("temp"), format!("{temp}\n")).unwrap();
        }
        let t = read_thermal(dir.path());
        assert_eq!(t.get("temp.x86_pkg_temp.celsius"), Some(&45.5));
        assert_eq!(t.get("temp.acpitz.celsius"), Some(&27.8));
        assert_eq!(t.get("temp.acpitz_1.celsius"), Some(&30.0));
        assert_eq!(t.len(), 3);
        assert!(read_thermal(&dir.path().join("missing")).is_empty());
        assert_eq!(disk_name(std::path::Path::new("/")), "root");
        assert_eq!(disk_name(std::path::Path::new("/var/lib/")), "var_lib");
        let (total, used, avail) = disk_usage(dir.path()).unwrap();
        assert!(total > 0 && used <= total && avail <= total);
        assert_eq!(disk_usage(&dir.path().join("missing")), None);
    }
}
