//! Device inventory: what the device is (OS, hardware, network, installed software), as the
//! documented inventory document.
//!
//! # The inventory document (device protocol)
//!
//! One JSON object of attribute names to values, always the whole set (the server replaces
//! what it had):
//!
//! ```json
//! {"arch": "aarch64", "cpu.count": 4, "disks": ["mmcblk0 31914983424"],
//!  "hostname": "kiosk-17", "net.eth0.ipv4": ["192.168.1.20/24"], "os.id": "debian"}
//! ```
//!
//! - Names are 1 to [`MAX_NAME_LEN`] (128) characters of `A-Z a-z 0-9 _ . - :`, starting
//!   with a letter or a digit.
//! - A value is a string, a number, `true`/`false`, or an array of at most [`MAX_LIST_LEN`]
//!   (256) strings.
//! - Strings (each element of an array too) are at most [`MAX_STRING_LEN`] (4096) bytes.
//! - At most [`MAX_ATTRIBUTES`] (512) attributes, and at most [`MAX_JSON_BYTES`] (64 KiB) of
//!   JSON in all.
//!
//! [`to_json`] writes the canonical form (names in byte order, no spaces, whole numbers
//! without a fraction), so two equal sets give the same bytes and the same [`digest`]. The
//! agent sends the document at start and then only when its digest differs from the last one
//! the server acknowledged ([`ChangeTracker`]).
//!
//! # Attributes
//!
//! Built in ([`Collector`], reading files under a root that is `/` on a device):
//!
//! | name | from |
//! |---|---|
//! | `hostname` | `/proc/sys/kernel/hostname` |
//! | `kernel` | `/proc/sys/kernel/osrelease` |
//! | `arch` | the architecture the agent was built for (`x86_64`, `aarch64`, `arm`, ...) |
//! | `os.id`, `os.version`, `os.name` | `ID`, `VERSION_ID`, `PRETTY_NAME` (or `NAME`) of `/etc/os-release` (or `/usr/lib/os-release`) |
//! | `cpu.model` | `/proc/cpuinfo`: `model name`, else the ARM core from `CPU part` and/or `Hardware` (e.g. `BCM2835 (Cortex-A72)`) |
//! | `cpu.count` | number of `processor` entries of `/proc/cpuinfo` |
//! | `memory.total_bytes` | `MemTotal` of `/proc/meminfo` |
//! | `hardware.model` | `/sys/firmware/devicetree/base/model`, else DMI `sys_vendor` + `product_name`, else `Model` of `/proc/cpuinfo` |
//! | `hardware.serial` | devicetree `serial-number`, else DMI `product_serial` (root only; skipped when unreadable), else `Serial` of `/proc/cpuinfo` |
//! | `disks` | `["<name> <bytes>", ...]` from `/sys/block` (no `loop*`, `ram*`, `zram*`, `dm-*`, nor empty drives) |
//! | `net.<if>.mac` | `/sys/class/net/<if>/address` |
//! | `net.<if>.ipv4`, `net.<if>.ipv6` | `["addr/prefix", ...]` from `/proc/net/fib_trie` + `/proc/net/route`, and `/proc/net/if_inet6` |
//! | `agent.version` | this agent's version |
//!
//! Network attributes cover every interface but the loopback and `veth*` (container ends that
//! come and go), with characters other than `A-Z a-z 0-9 _ - :` of the interface name made `_`
//! as in telemetry names (`eth0.100` gives `net.eth0_100.mac`). IPv6 temporary (privacy),
//! deprecated, tentative and failed addresses are left out so that the document does not
//! change every few hours. Placeholder firmware strings (`To be filled by O.E.M.`, `Default
//! string`, ...) are left out.
//!
//! The caller adds `device_type`, `location.lat`, `location.lon`, `location.site` and any
//! further attributes (`software.*`, `artifact.name`, ...) through [`InventoryOptions`].
//!
//! # Inventory scripts
//!
//! Every executable regular file of the scripts directory ([`DEFAULT_SCRIPTS_DIR`] on a
//! device; names starting with `.` are ignored) is run, with no input and the agent's
//! environment minus `TENDER_AGENT_*`. It prints `name=value` lines; blank lines and lines
//! starting with `#` are skipped; a name printed twice (by one script or two) becomes an array.
//! Values are strings. A script that exits non-zero, runs longer than the timeout (10 s by
//! default; it is then killed with its process group) or prints more than 64 KiB is logged
//! and its output ignored. World-writable scripts are not run.
//!
//! Precedence, lowest first: built-in attributes, script attributes, the caller's attributes
//! (`device_type`, `location.*`, `extra`), and `agent.version`.
//!
//! Attributes breaking the limits are dropped (and logged) rather than failing the whole
//! document: see [`enforce_limits`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use tokio::io::AsyncReadExt;

use crate::telemetry::metric_component;

/// Most attributes one document may carry.
pub const MAX_ATTRIBUTES: usize = 512;
/// Longest attribute name, in characters (names are ASCII).
pub const MAX_NAME_LEN: usize = 128;
/// Longest string value (and array element), in bytes.
pub const MAX_STRING_LEN: usize = 4096;
/// Most strings in an array value.
pub const MAX_LIST_LEN: usize = 256;
/// Largest document, in bytes of JSON.
pub const MAX_JSON_BYTES: usize = 64 * 1024;
/// Where inventory scripts live on a device.
pub const DEFAULT_SCRIPTS_DIR: &str = "/etc/tender/inventory.d";
/// How long a script may run before it is killed.
pub const DEFAULT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes a script may print on its standard output.
pub const MAX_SCRIPT_OUTPUT: usize = 64 * 1024;

/// How much of a failing script's standard error is kept for the log.
const MAX_SCRIPT_STDERR: u64 = 4096;
/// Scripts run at the same time.
const SCRIPT_CONCURRENCY: usize = 4;
/// Most bytes read from one `/proc` or `/sys` file.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most warnings kept from one script's output.
const MAX_WARNINGS: usize = 20;

/// The inventory: attribute name to value, in canonical (byte) order.
pub type Attributes = BTreeMap<String, Value>;

/// One attribute value.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Str(String),
    Num(f64),
    Bool(bool),
    List(Vec<String>),
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Str(v) => s.serialize_str(v),
            // Whole numbers are written without a fraction (`4`, not `4.0`).
            Value::Num(n) if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 => {
                s.serialize_i64(*n as i64)
            }
            Value::Num(n) => s.serialize_f64(*n),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::List(l) => l.serialize(s),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Self {
        Value::Num(n)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Num(n as f64)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<Vec<String>> for Value {
    fn from(l: Vec<String>) -> Self {
        Value::List(l)
    }
}

/// The canonical JSON of `attrs`: names in byte order, no whitespace.
pub fn to_json(attrs: &Attributes) -> Vec<u8> {
    // A map with string keys and these values cannot fail to serialise.
    serde_json::to_vec(attrs).unwrap_or_default()
}

/// A 64-bit FNV-1a hash of the canonical JSON: equal documents have equal digests.
pub fn digest(attrs: &Attributes) -> u64 {
    fnv1a(&to_json(attrs))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Remembers the digest of the last document the server acknowledged, to send only changes.
#[derive(Clone, Debug, Default)]
pub struct ChangeTracker {
    acked: Option<u64>,
}

impl ChangeTracker {
    /// Whether `attrs` differs from the last acknowledged document (always true at first).
    pub fn is_new(&self, attrs: &Attributes) -> bool {
        self.acked != Some(digest(attrs))
    }

    /// Records that the server acknowledged the document with this [`digest`].
    pub fn acknowledged(&mut self, digest: u64) {
        self.acked = Some(digest);
    }

    /// Forgets the last acknowledgement (e.g. on a new session), so the next document is sent.
    pub fn reset(&mut self) {
        self.acked = None;
    }
}

/// Whether `name` is a valid attribute name: 1 to 128 of `A-Z a-z 0-9 _ . - :`, starting with
/// a letter or a digit.
pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'))
}

/// What is wrong with a document or one of its attributes.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum InventoryError {
    #[error(
        "invalid attribute name {}: use 1-128 characters of A-Z a-z 0-9 _ . - : starting with a letter or digit",
        clip(.0, 80)
    )]
    InvalidName(String),
    #[error("attribute {0}: the number is not finite")]
    NotFinite(String),
    #[error("attribute {name}: a string of {len} bytes; at most {MAX_STRING_LEN}")]
    ValueTooLong { name: String, len: usize },
    #[error("attribute {name}: a list of {len} strings; at most {MAX_LIST_LEN}")]
    ListTooLong { name: String, len: usize },
    #[error("{count} attributes; at most {MAX_ATTRIBUTES}")]
    TooManyAttributes { count: usize },
    #[error("{bytes} bytes of JSON; at most {MAX_JSON_BYTES}")]
    TooLarge { bytes: usize },
}

/// An attribute [`enforce_limits`] took out, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Dropped {
    pub name: String,
    pub reason: InventoryError,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "attribute {} dropped: {}",
            clip(&self.name, 80),
            self.reason
        )
    }
}

fn attribute_error(name: &str, value: &Value) -> Option<InventoryError> {
    if !is_valid_name(name) {
        return Some(InventoryError::InvalidName(name.to_owned()));
    }
    let too_long = |len: usize| InventoryError::ValueTooLong {
        name: name.to_owned(),
        len,
    };
    match value {
        Value::Num(n) if !n.is_finite() => Some(InventoryError::NotFinite(name.to_owned())),
        Value::Str(s) if s.len() > MAX_STRING_LEN => Some(too_long(s.len())),
        Value::List(l) if l.len() > MAX_LIST_LEN => Some(InventoryError::ListTooLong {
            name: name.to_owned(),
            len: l.len(),
        }),
        Value::List(l) => l
            .iter()
            .find(|s| s.len() > MAX_STRING_LEN)
            .map(|s| too_long(s.len())),
        _ => None,
    }
}

/// Bytes of `"name":value` in the canonical JSON.
fn entry_size(name: &str, value: &Value) -> usize {
    let name_len = serde_json::to_vec(name).map(|v| v.len()).unwrap_or(0);
    let value_len = serde_json::to_vec(value).map(|v| v.len()).unwrap_or(0);
    name_len + 1 + value_len
}

/// Bytes of `{` entries joined by `,` `}`.
fn document_size(entries: usize, entry_bytes: usize) -> usize {
    2 + entry_bytes + entries.saturating_sub(1)
}

/// Checks `attrs` against the limits; the first problem found.
pub fn validate(attrs: &Attributes) -> Result<(), InventoryError> {
    if let Some(e) = attrs.iter().find_map(|(k, v)| attribute_error(k, v)) {
        return Err(e);
    }
    if attrs.len() > MAX_ATTRIBUTES {
        return Err(InventoryError::TooManyAttributes { count: attrs.len() });
    }
    let bytes = to_json(attrs).len();
    if bytes > MAX_JSON_BYTES {
        return Err(InventoryError::TooLarge { bytes });
    }
    Ok(())
}

/// Makes `attrs` valid by dropping attributes, and says which and why: first those that are
/// invalid themselves, then those past the 512th name (in name order), then the largest ones
/// until the JSON fits in 64 KiB. Afterwards [`validate`] passes.
pub fn enforce_limits(attrs: &mut Attributes) -> Vec<Dropped> {
    let mut dropped = Vec::new();
    attrs.retain(|name, value| match attribute_error(name, value) {
        Some(reason) => {
            dropped.push(Dropped {
                name: name.clone(),
                reason,
            });
            false
        }
        None => true,
    });
    let count = attrs.len();
    if count > MAX_ATTRIBUTES {
        let excess: Vec<String> = attrs.keys().skip(MAX_ATTRIBUTES).cloned().collect();
        for name in excess {
            attrs.remove(&name);
            dropped.push(Dropped {
                name,
                reason: InventoryError::TooManyAttributes { count },
            });
        }
    }
    let mut sizes: Vec<(usize, String)> = attrs
        .iter()
        .map(|(k, v)| (entry_size(k, v), k.clone()))
        .collect();
    let mut entry_bytes: usize = sizes.iter().map(|(s, _)| s).sum();
    let mut entries = sizes.len();
    let bytes = document_size(entries, entry_bytes);
    if bytes > MAX_JSON_BYTES {
        // Largest first; among equals, the last name first.
        sizes.sort();
        while document_size(entries, entry_bytes) > MAX_JSON_BYTES {
            let Some((size, name)) = sizes.pop() else {
                break;
            };
            attrs.remove(&name);
            entry_bytes -= size;
            entries -= 1;
            dropped.push(Dropped {
                name,
                reason: InventoryError::TooLarge { bytes },
            });
        }
    }
    dropped
}

/// The caller's part of the inventory and where to find scripts.
#[derive(Clone, Debug)]
pub struct InventoryOptions {
    /// The root of the file tree to read (`/` on a device; a fake tree in tests).
    pub root: PathBuf,
    /// `device_type`, from the configuration.
    pub device_type: Option<String>,
    pub location: Location,
    /// Further attributes (installed software, the running artifact, ...); they override
    /// built-in and script attributes.
    pub extra: Attributes,
    /// The inventory scripts directory ([`DEFAULT_SCRIPTS_DIR`] on a device); `None` runs none.
    pub scripts_dir: Option<PathBuf>,
    pub script_timeout: Duration,
}

impl Default for InventoryOptions {
    fn default() -> Self {
        InventoryOptions {
            root: PathBuf::from("/"),
            device_type: None,
            location: Location::default(),
            extra: Attributes::new(),
            scripts_dir: None,
            script_timeout: DEFAULT_SCRIPT_TIMEOUT,
        }
    }
}

/// Where the device is, as configured: `location.lat`, `location.lon` (degrees, WGS 84) and
/// `location.site`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Location {
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub site: Option<String>,
}

/// The whole inventory: built-in attributes, scripts, the caller's attributes, within the
/// limits (what had to be dropped is logged).
pub async fn collect(opts: &InventoryOptions) -> Attributes {
    let root = opts.root.clone();
    // Plain file reads, but off the async threads so that a slow sysfs does not stall them.
    let mut attrs = tokio::task::spawn_blocking(move || Collector::new(root).collect())
        .await
        .unwrap_or_default();
    if let Some(dir) = &opts.scripts_dir {
        attrs.extend(run_scripts(dir, opts.script_timeout).await);
    }
    if let Some(t) = &opts.device_type {
        attrs.insert("device_type".into(), Value::Str(t.clone()));
    }
    let Location { lat, lon, site } = &opts.location;
    for (name, v, max) in [("location.lat", lat, 90.0), ("location.lon", lon, 180.0)] {
        match v {
            Some(v) if v.is_finite() && v.abs() <= max => {
                attrs.insert(name.into(), Value::Num(*v));
            }
            Some(v) => tracing::warn!(value = v, "{name} out of range; left out"),
            None => {}
        }
    }
    if let Some(site) = site {
        attrs.insert("location.site".into(), Value::Str(site.clone()));
    }
    attrs.extend(opts.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    attrs.insert(
        "agent.version".into(),
        Value::Str(env!("CARGO_PKG_VERSION").into()),
    );
    for d in enforce_limits(&mut attrs) {
        tracing::warn!("inventory {d}");
    }
    attrs
}

// ---------------------------------------------------------------------------------------------
// Built-in attributes
// ---------------------------------------------------------------------------------------------

/// Reads the built-in attributes from files under a root (`/` on a device).
#[derive(Clone, Debug)]
pub struct Collector {
    root: PathBuf,
}

impl Default for Collector {
    fn default() -> Self {
        Collector::new("/")
    }
}

impl Collector {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Collector { root: root.into() }
    }

    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// A file's text (lossy UTF-8, at most 1 MiB), `None` on any error.
    fn read(&self, abs: &str) -> Option<String> {
        let file = std::fs::File::open(self.path(abs)).ok()?;
        let mut buf = Vec::new();
        file.take(MAX_FILE_BYTES).read_to_end(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf).into_owned())
    }

    /// A one-line value: up to the first NUL (devicetree strings), trimmed; `None` if empty or
    /// a firmware placeholder.
    fn read_value(&self, abs: &str) -> Option<String> {
        clean_value(&self.read(abs)?)
    }

    /// Directory entry names, sorted; empty on any error.
    fn list(&self, abs: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(abs))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The built-in attributes (see the module documentation). Never fails: what cannot be
    /// read is left out.
    pub fn collect(&self) -> Attributes {
        let mut a = Attributes::new();
        let mut put = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                a.insert(name.to_owned(), Value::Str(v));
            }
        };
        put("hostname", self.read_value("/proc/sys/kernel/hostname"));
        put("kernel", self.read_value("/proc/sys/kernel/osrelease"));
        put("arch", Some(std::env::consts::ARCH.to_owned()));
        put("agent.version", Some(env!("CARGO_PKG_VERSION").to_owned()));

        let os = self
            .read("/etc/os-release")
            .or_else(|| self.read("/usr/lib/os-release"))
            .map(|t| parse_os_release(&t))
            .unwrap_or_default();
        let os_value = |key: &str| os.get(key).and_then(|v| clean_value(v));
        put("os.id", os_value("ID"));
        put("os.version", os_value("VERSION_ID"));
        put(
            "os.name",
            os_value("PRETTY_NAME").or_else(|| os_value("NAME")),
        );

        let cpu = self
            .read("/proc/cpuinfo")
            .map(|t| parse_cpuinfo(&t))
            .unwrap_or_default();
        put("cpu.model", cpu.model.clone());

        let dmi_model = || {
            let vendor = self.read_value("/sys/class/dmi/id/sys_vendor");
            let product = self.read_value("/sys/class/dmi/id/product_name");
            match (vendor, product) {
                (Some(v), Some(p)) if p.starts_with(&v) => Some(p),
                (Some(v), Some(p)) => Some(format!("{v} {p}")),
                (v, p) => p.or(v),
            }
        };
        put(
            "hardware.model",
            self.read_value("/sys/firmware/devicetree/base/model")
                .or_else(dmi_model)
                .or(cpu.board_model),
        );
        // product_serial is readable by root only: without the right, no serial.
        put(
            "hardware.serial",
            self.read_value("/sys/firmware/devicetree/base/serial-number")
                .or_else(|| self.read_value("/sys/class/dmi/id/product_serial"))
                .or(cpu.serial),
        );

        if cpu.count > 0 {
            a.insert("cpu.count".into(), Value::from(cpu.count as u64));
        }
        if let Some(total) = self.read("/proc/meminfo").and_then(|t| parse_mem_total(&t)) {
            a.insert("memory.total_bytes".into(), Value::from(total));
        }
        let disks = self.disks();
        if !disks.is_empty() {
            a.insert("disks".into(), Value::List(disks));
        }
        self.network(&mut a);
        a
    }

    fn disks(&self) -> Vec<String> {
        self.list("/sys/block")
            .into_iter()
            .filter(|n| {
                !["loop", "ram", "zram", "dm-"]
                    .iter()
                    .any(|p| n.starts_with(p))
            })
            .filter_map(|n| {
                let sectors: u64 = self
                    .read(&format!("/sys/block/{n}/size"))?
                    .trim()
                    .parse()
                    .ok()?;
                let bytes = sectors.checked_mul(512).filter(|b| *b > 0)?;
                Some(format!("{n} {bytes}"))
            })
            .collect()
    }

    fn network(&self, a: &mut Attributes) {
        let ipv4 = match (
            self.read("/proc/net/fib_trie"),
            self.read("/proc/net/route"),
        ) {
            (Some(fib), Some(route)) => {
                ipv4_by_interface(&parse_fib_trie_local(&fib), &parse_route(&route))
            }
            _ => BTreeMap::new(),
        };
        let mut ipv6: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (iface, addr) in self
            .read("/proc/net/if_inet6")
            .map(|t| parse_if_inet6(&t))
            .unwrap_or_default()
        {
            ipv6.entry(iface).or_default().push(addr);
        }
        let mut interfaces: BTreeSet<String> = self.list("/sys/class/net").into_iter().collect();
        interfaces.extend(ipv4.keys().cloned());
        interfaces.extend(ipv6.keys().cloned());
        for iface in interfaces {
            let is_loopback = iface == "lo"
                || self
                    .read_value(&format!("/sys/class/net/{iface}/type"))
                    .as_deref()
                    == Some("772");
            if is_loopback || iface.starts_with("veth") {
                continue;
            }
            let prefix = format!("net.{}", metric_component(&iface));
            if let Some(mac) = self
                .read_value(&format!("/sys/class/net/{iface}/address"))
                .filter(|m| m.chars().any(|c| c.is_ascii_hexdigit() && c != '0'))
            {
                a.insert(format!("{prefix}.mac"), Value::Str(mac));
            }
            for (family, map) in [("ipv4", &ipv4), ("ipv6", &ipv6)] {
                if let Some(list) = map.get(&iface).filter(|l| !l.is_empty()) {
                    let mut list = list.clone();
                    list.sort();
                    list.dedup();
                    a.insert(format!("{prefix}.{family}"), Value::List(list));
                }
            }
        }
    }
}

/// Firmware strings that mean "nothing here".
const PLACEHOLDERS: &[&str] = &[
    "to be filled by o.e.m.",
    "to be filled by oem",
    "default string",
    "system product name",
    "system manufacturer",
    "system serial number",
    "not specified",
    "not applicable",
    "none",
    "n/a",
    "unknown",
    "o.e.m.",
    "oem",
    "0",
    "0123456789",
];

/// Up to the first NUL, trimmed; `None` if that is empty or a placeholder.
fn clean_value(s: &str) -> Option<String> {
    let v = s.split('\0').next().unwrap_or("").trim();
    let placeholder = PLACEHOLDERS.iter().any(|p| v.eq_ignore_ascii_case(p));
    (!v.is_empty() && !placeholder).then(|| v.to_owned())
}

/// `KEY=value` pairs of an os-release file, with the shell quoting (`"..."` with `\` escapes,
/// `'...'`) removed. Malformed lines are skipped.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        if let Some(value) = unquote_shell(raw.trim()) {
            out.insert(key.to_owned(), value);
        }
    }
    out
}

/// One shell word: `"..."` (where `\` escapes `" \ $ ` and a backquote), `'...'`, or bare
/// characters (where `\` escapes the next one), possibly concatenated. `None` if a quote is
/// left open.
fn unquote_shell(raw: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        e @ ('"' | '\\' | '$' | '`') => out.push(e),
                        '\n' => {}
                        e => {
                            out.push('\\');
                            out.push(e);
                        }
                    },
                    e => out.push(e),
                }
            },
            '\'' => loop {
                match chars.next()? {
                    '\'' => break,
                    e => out.push(e),
                }
            },
            '\\' => out.push(chars.next()?),
            c if c.is_whitespace() => break,
            c => out.push(c),
        }
    }
    Some(out)
}

/// What `/proc/cpuinfo` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuInfo {
    /// `model name`, else the SoC (`Hardware`) and/or the ARM core (`CPU part`).
    pub model: Option<String>,
    /// Number of `processor : N` entries.
    pub count: usize,
    /// The board (`Model`, e.g. `Raspberry Pi 4 Model B Rev 1.4`).
    pub board_model: Option<String>,
    /// `Serial` (Raspberry Pi), unless all zeros.
    pub serial: Option<String>,
}

pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut model_name = None;
    let mut hardware = None;
    let mut implementer = None;
    let mut part = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let first = |slot: &mut Option<String>| {
            if slot.is_none() && !value.is_empty() {
                *slot = Some(value.to_owned());
            }
        };
        match key.trim() {
            "processor" if value.parse::<u32>().is_ok() => info.count += 1,
            "model name" => first(&mut model_name),
            "Hardware" => first(&mut hardware),
            "Model" => first(&mut info.board_model),
            "Serial" if value.chars().any(|c| c != '0') => first(&mut info.serial),
            "CPU implementer" => first(&mut implementer),
            "CPU part" => first(&mut part),
            _ => {}
        }
    }
    let core = part.map(
        |p| match implementer.as_deref().and_then(|i| arm_core_name(i, &p)) {
            Some(name) => name.to_owned(),
            None => match &implementer {
                Some(i) => format!("implementer {i} part {p}"),
                None => format!("part {p}"),
            },
        },
    );
    info.model = match (model_name, hardware, core) {
        (Some(m), _, _) => Some(m),
        (None, Some(h), Some(c)) => Some(format!("{h} ({c})")),
        (None, h, c) => h.or(c),
    };
    info
}

/// The name of an ARM Ltd. core from `CPU implementer` and `CPU part` (as `/proc/cpuinfo`
/// writes them, `0x41` and `0xd08`).
pub fn arm_core_name(implementer: &str, part: &str) -> Option<&'static str> {
    let hex = |s: &str| u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok();
    if hex(implementer)? != 0x41 {
        return None;
    }
    Some(match hex(part)? {
        0xb76 => "ARM1176",
        0xc05 => "Cortex-A5",
        0xc07 => "Cortex-A7",
        0xc08 => "Cortex-A8",
        0xc09 => "Cortex-A9",
        0xc0d => "Cortex-A12",
        0xc0e => "Cortex-A17",
        0xc0f => "Cortex-A15",
        0xd01 => "Cortex-A32",
        0xd03 => "Cortex-A53",
        0xd04 => "Cortex-A35",
        0xd05 => "Cortex-A55",
        0xd07 => "Cortex-A57",
        0xd08 => "Cortex-A72",
        0xd09 => "Cortex-A73",
        0xd0a => "Cortex-A75",
        0xd0b => "Cortex-A76",
        0xd0c => "Neoverse-N1",
        0xd0d => "Cortex-A77",
        0xd40 => "Neoverse-V1",
        0xd41 => "Cortex-A78",
        0xd44 => "Cortex-X1",
        0xd46 => "Cortex-A510",
        0xd47 => "Cortex-A710",
        0xd48 => "Cortex-X2",
        0xd49 => "Neoverse-N2",
        0xd4b => "Cortex-A78C",
        0xd4f => "Neoverse-V2",
        0xd80 => "Cortex-A520",
        0xd81 => "Cortex-A720",
        0xd82 => "Cortex-X4",
        _ => return None,
    })
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn parse_mem_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// The local (`/32 host LOCAL`) IPv4 addresses of `/proc/net/fib_trie`, loopback excepted.
pub fn parse_fib_trie_local(text: &str) -> Vec<Ipv4Addr> {
    let mut out = BTreeSet::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(addr) = t.strip_prefix("|-- ") {
            leaf = addr.trim().parse().ok();
        } else if t.starts_with('/') {
            let mut words = t.split_whitespace();
            let is_local_host = words.next() == Some("/32") && words.last() == Some("LOCAL");
            if let Some(addr) = leaf.filter(|a| is_local_host && !a.is_loopback()) {
                out.insert(addr);
            }
        } else {
            leaf = None;
        }
    }
    out.into_iter().collect()
}

/// One line of `/proc/net/route`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub iface: String,
    pub destination: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub flags: u32,
    pub mask: Ipv4Addr,
}

/// The routes of `/proc/net/route` (malformed lines skipped).
pub fn parse_route(text: &str) -> Vec<Route> {
    // The kernel prints each address (network byte order in memory) as a native-endian hex
    // number, so the number's native bytes are the address bytes.
    let addr = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|n| Ipv4Addr::from(n.to_ne_bytes()))
    };
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || f[0] == "Iface" {
                return None;
            }
            Some(Route {
                iface: f[0].to_owned(),
                destination: addr(f[1])?,
                gateway: addr(f[2])?,
                flags: u32::from_str_radix(f[3], 16).ok()?,
                mask: addr(f[7])?,
            })
        })
        .collect()
}

/// Local IPv4 addresses as `addr/prefix` per interface: each address goes to the interface of
/// the most specific directly connected (no gateway) route that contains it. Addresses no such
/// route covers are left out.
pub fn ipv4_by_interface(local: &[Ipv4Addr], routes: &[Route]) -> BTreeMap<String, Vec<String>> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for addr in local {
        let a = u32::from(*addr);
        let best = routes
            .iter()
            .filter(|r| r.flags & RTF_UP != 0 && r.flags & RTF_GATEWAY == 0)
            .filter(|r| {
                let m = u32::from(r.mask);
                m != 0 && a & m == u32::from(r.destination) & m
            })
            .max_by_key(|r| u32::from(r.mask).count_ones());
        if let Some(r) = best {
            let prefix = u32::from(r.mask).count_ones();
            out.entry(r.iface.clone())
                .or_default()
                .push(format!("{addr}/{prefix}"));
        }
    }
    out
}

/// `(interface, "addr/prefix")` from `/proc/net/if_inet6`, without host-scope (loopback),
/// temporary, deprecated, tentative or duplicate-address-failed addresses.
pub fn parse_if_inet6(text: &str) -> Vec<(String, String)> {
    const SKIP_FLAGS: u32 = 0x01 | 0x08 | 0x20 | 0x40; // temporary, dadfailed, deprecated, tentative
    const SCOPE_HOST: u32 = 0x10;
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 || f[0].len() != 32 {
                return None;
            }
            let addr = Ipv6Addr::from(u128::from_str_radix(f[0], 16).ok()?);
            let prefix = u8::from_str_radix(f[2], 16).ok()?;
            let scope = u32::from_str_radix(f[3], 16).ok()?;
            let flags = u32::from_str_radix(f[4], 16).ok()?;
            if flags & SKIP_FLAGS != 0 || scope == SCOPE_HOST || addr.is_loopback() {
                return None;
            }
            Some((f[5].to_owned(), format!("{addr}/{prefix}")))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Scripts
// ---------------------------------------------------------------------------------------------

/// The attributes a script printed, and one warning per line that was not understood.
pub fn parse_script_output(text: &str) -> (Attributes, Vec<String>) {
    let mut attrs = Attributes::new();
    let mut warnings = Vec::new();
    let mut skipped = 0usize;
    let mut warn = |w: String| {
        if warnings.len() < MAX_WARNINGS {
            warnings.push(w);
        } else {
            skipped += 1;
        }
    };
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            warn(format!(
                "line {}: expected name=value, got {}",
                i + 1,
                clip(line, 80)
            ));
            continue;
        };
        let name = name.trim();
        if !is_valid_name(name) {
            warn(format!(
                "line {}: invalid attribute name {}",
                i + 1,
                clip(name, 80)
            ));
            continue;
        }
        push_value(&mut attrs, name, value.trim().to_owned());
    }
    if skipped > 0 {
        warnings.push(format!("and {skipped} more lines not understood"));
    }
    (attrs, warnings)
}

/// Adds a script value: a name seen before becomes (or grows) a list.
fn push_value(attrs: &mut Attributes, name: &str, value: String) {
    match attrs.get_mut(name) {
        None => {
            attrs.insert(name.to_owned(), Value::Str(value));
        }
        Some(Value::List(l)) => l.push(value),
        Some(slot) => {
            let first = match std::mem::replace(slot, Value::Bool(false)) {
                Value::Str(s) => s,
                Value::Num(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::List(_) => String::new(), // handled above
            };
            *slot = Value::List(vec![first, value]);
        }
    }
}

/// Runs every inventory script of `dir` (see the module documentation) and merges what they
/// print, in name order; a name printed twice becomes a list. A missing directory gives
/// nothing.
pub async fn run_scripts(dir: &Path, timeout: Duration) -> Attributes {
    let mut attrs = Attributes::new();
    for (script, output) in run_dir(dir, timeout, "inventory script").await {
        let (found, warnings) = parse_script_output(&output);
        for w in warnings {
            tracing::warn!(script = %script.display(), "inventory script output: {w}");
        }
        for (name, value) in found {
            match value {
                Value::List(l) => l.into_iter().for_each(|v| push_value(&mut attrs, &name, v)),
                Value::Str(s) => push_value(&mut attrs, &name, s),
                other => {
                    attrs.insert(name, other);
                }
            }
        }
    }
    attrs
}

/// Why a script's output was not used.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("could not start it: {0}")]
    Spawn(std::io::Error),
    #[error("still running after {0:?}; killed")]
    Timeout(Duration),
    #[error("printed more than {MAX_SCRIPT_OUTPUT} bytes; killed")]
    OutputTooLarge,
    #[error("{status}{}", stderr_suffix(.stderr))]
    Failed { status: ExitStatus, stderr: String },
    #[error("reading its output: {0}")]
    Io(std::io::Error),
}

fn stderr_suffix(stderr: &str) -> String {
    match stderr.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => format!(" (stderr: {})", clip(line, 160)),
        None => String::new(),
    }
}

/// The executable regular files of `dir` (symbolic links followed), sorted; names starting
/// with `.` and world-writable files (warned about) are left out. A missing directory is
/// empty.
pub(crate) fn executables_in(dir: &Path, what: &str) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot list the {what} directory");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        if entry.file_name().as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if !meta.is_file() || mode & 0o111 == 0 {
            continue;
        }
        if mode & 0o002 != 0 {
            tracing::warn!(script = %path.display(), "{what} is world-writable; not run");
            continue;
        }
        out.push(path);
    }
    out.sort();
    out
}

/// Runs every executable of `dir` (a few at a time) and returns the standard output of those
/// that succeeded, in name order; failures are logged naming the program.
pub(crate) async fn run_dir(dir: &Path, timeout: Duration, what: &str) -> Vec<(PathBuf, String)> {
    let programs = executables_in(dir, what);
    if programs.is_empty() {
        return Vec::new();
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(SCRIPT_CONCURRENCY));
    let mut set = tokio::task::JoinSet::new();
    for path in programs {
        let permits = Arc::clone(&permits);
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let result = run_program(&path, timeout).await;
            (path, result)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((path, Ok(out))) => results.push((path, out)),
            Ok((path, Err(e))) => {
                tracing::warn!(script = %path.display(), error = %e, "{what} failed; its output is ignored");
            }
            Err(e) => tracing::warn!(error = %e, "{what} task failed"),
        }
    }
    results.sort_by(|a, b| a.0.cmp(&b.0));
    results
}

/// Runs one program with no input and the agent's environment minus `TENDER_AGENT_*`, in a
/// process group of its own. Its standard output (lossy UTF-8) if it exits 0 within `timeout`
/// having printed at most [`MAX_SCRIPT_OUTPUT`] bytes; otherwise the whole group is killed.
pub async fn run_program(path: &Path, timeout: Duration) -> Result<String, ScriptError> {
    // A bare name would be looked up in PATH.
    let path = if path.components().count() == 1 {
        Path::new(".").join(path)
    } else {
        path.to_owned()
    };
    let mut cmd = tokio::process::Command::new(&path);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"TENDER_AGENT_") {
            cmd.env_remove(key);
        }
    }
    let mut child = spawn_retrying_busy(&mut cmd)
        .await
        .map_err(ScriptError::Spawn)?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let run = async {
        let read_stderr = async move {
            let mut buf = Vec::new();
            if let Some(e) = stderr {
                let _ = e.take(MAX_SCRIPT_STDERR).read_to_end(&mut buf).await;
            }
            buf
        };
        let read_stdout_and_wait = async {
            let mut out = Vec::new();
            if let Some(o) = stdout {
                o.take(MAX_SCRIPT_OUTPUT as u64 + 1)
                    .read_to_end(&mut out)
                    .await
                    .map_err(ScriptError::Io)?;
            }
            if out.len() > MAX_SCRIPT_OUTPUT {
                return Err(ScriptError::OutputTooLarge);
            }
            let status = child.wait().await.map_err(ScriptError::Io)?;
            Ok((status, out))
        };
        tokio::pin!(read_stderr, read_stdout_and_wait);
        let mut err_buf = None;
        let done = loop {
            tokio::select! {
                r = &mut read_stdout_and_wait => break r,
                b = &mut read_stderr, if err_buf.is_none() => err_buf = Some(b),
            }
        };
        let (status, out) = done?;
        let err_buf = match err_buf {
            Some(b) => b,
            None => read_stderr.await,
        };
        Ok((status, out, err_buf))
    };
    let result = match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => Err(ScriptError::Timeout(timeout)),
    };
    match result {
        Ok((status, out, err)) if status.success() => {
            let _ = err;
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
        Ok((status, _, err)) => Err(ScriptError::Failed {
            status,
            stderr: String::from_utf8_lossy(&err).into_owned(),
        }),
        Err(e) => {
            if let Some(pid) = child.id() {
                kill_process_group(pid).await;
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            Err(e)
        }
    }
}

/// Spawns, retrying a few times on "text file busy" (a script being written, or another
/// thread of this process forking while it held the file open for writing).
pub(crate) async fn spawn_retrying_busy(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<tokio::process::Child> {
    let mut attempt = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
            }
            other => return other,
        }
    }
}

/// Sends SIGKILL to the process group `pgid`, so that what a script started dies with it.
/// (Through `kill` in `/bin/sh`: the agent has no unsafe code to call kill(2) itself.)
pub(crate) async fn kill_process_group(pgid: u32) {
    let status = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg("kill -s KILL -- \"-$1\" 2>/dev/null")
        .arg("sh")
        .arg(pgid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(2), status).await;
}

/// At most `n` characters of `s`, escaped, for a log line.
pub(crate) fn clip(s: &str, n: usize) -> String {
    let head: String = s.chars().take(n).collect();
    let more = if s.chars().nth(n).is_some() {
        "…"
    } else {
        ""
    };
    format!("\"{}{more}\"", head.escape_debug())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const OS_RELEASE: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
ID=debian
# a comment
HOME_URL='https://www.debian.org/'
ESCAPED="a \"quoted\" \$word \\ end"
JOINED="ab"'cd'ef
 BAD LINE
UNTERMINATED="oops
"#;

    const CPUINFO_X86: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Celeron(R) J4125 CPU @ 2.00GHz\nflags\t\t: fpu vme\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Celeron(R) J4125 CPU @ 2.00GHz\n\n";
    const CPUINFO_RPI4: &str = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\nprocessor\t: 1\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\nprocessor\t: 2\n\nprocessor\t: 3\n\nHardware\t: BCM2835\nRevision\t: c03114\nSerial\t\t: 10000000a1b2c3d4\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n";
    const CPUINFO_ARMV7: &str = "Processor\t: ARMv7 Processor rev 10 (v7l)\nprocessor\t: 0\nBogoMIPS\t: 996.14\n\nprocessor\t: 1\nmodel name\t: ARMv7 Processor rev 10 (v7l)\nHardware\t: Freescale i.MX6 Quad/DualLite (Device Tree)\nSerial\t\t: 0000000000000000\n";

    const FIB_TRIE: &str = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 127.0.0.0/8 2 0 2\n        +-- 127.0.0.0/31 1 0 0\n           |-- 127.0.0.0\n              /8 host LOCAL\n           |-- 127.0.0.1\n              /32 host LOCAL\n        |-- 127.255.255.255\n           /32 link BROADCAST\n     +-- 192.168.1.0/24 2 0 2\n        +-- 192.168.1.0/28 2 0 2\n           |-- 192.168.1.0\n              /24 link UNICAST\n           |-- 192.168.1.10\n              /32 host LOCAL\n        |-- 192.168.1.255\n           /32 link BROADCAST\n     |-- 10.8.0.2\n        /32 host LOCAL\n     |-- 172.17.0.1\n        /32 host LOCAL\nLocal:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 192.168.1.10\n        /32 host LOCAL\n     |-- 192.168.1.255\n        /32 link BROADCAST\n";
    // Native-endian hex as the kernel prints it (these fixtures are little-endian).
    const ROUTE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\neth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\neth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\nwg0\t0000080A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\ndocker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\ngarbage line\n";
    const IF_INET6: &str = "fe80000000000000020c29fffe123456 02 40 20 80     eth0\n20010db8000000000000000000000010 02 40 00 80     eth0\n20010db8000000001111222233334444 02 40 00 01     eth0\n00000000000000000000000000000001 01 80 10 80       lo\nfe80000000000000aaaaaaaaaaaaaaaa 05 40 20 80 veth12ab\nnot a line\n";

    #[test]
    fn os_release_quoting() {
        let m = parse_os_release(OS_RELEASE);
        assert_eq!(m["PRETTY_NAME"], "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(m["VERSION_ID"], "12");
        assert_eq!(m["ID"], "debian");
        assert_eq!(m["HOME_URL"], "https://www.debian.org/");
        assert_eq!(m["ESCAPED"], r#"a "quoted" $word \ end"#);
        assert_eq!(m["JOINED"], "abcdef");
        assert!(!m.contains_key("UNTERMINATED"));
        assert!(!m.keys().any(|k| k.contains(' ')));
    }

    #[test]
    fn cpuinfo_x86_and_arm() {
        let x86 = parse_cpuinfo(CPUINFO_X86);
        assert_eq!(x86.count, 2);
        assert_eq!(
            x86.model.as_deref(),
            Some("Intel(R) Celeron(R) J4125 CPU @ 2.00GHz")
        );
        assert_eq!(x86.serial, None);

        let rpi = parse_cpuinfo(CPUINFO_RPI4);
        assert_eq!(rpi.count, 4);
        assert_eq!(rpi.model.as_deref(), Some("BCM2835 (Cortex-A72)"));
        assert_eq!(
            rpi.board_model.as_deref(),
            Some("Raspberry Pi 4 Model B Rev 1.4")
        );
        assert_eq!(rpi.serial.as_deref(), Some("10000000a1b2c3d4"));

        let v7 = parse_cpuinfo(CPUINFO_ARMV7);
        assert_eq!(
            v7.count, 2,
            "`Processor : ARMv7...` is not a processor entry"
        );
        assert_eq!(v7.model.as_deref(), Some("ARMv7 Processor rev 10 (v7l)"));
        assert_eq!(v7.serial, None, "all-zero serial");

        let unknown = parse_cpuinfo("processor : 0\nCPU implementer : 0x51\nCPU part : 0x801\n");
        assert_eq!(
            unknown.model.as_deref(),
            Some("implementer 0x51 part 0x801")
        );
        assert_eq!(
            parse_cpuinfo("\u{0}\u{ff}garbage::\n: :\n"),
            CpuInfo::default()
        );
    }

    #[test]
    fn mem_total() {
        assert_eq!(
            parse_mem_total("MemTotal:        3884740 kB\nMemFree: 1 kB\n"),
            Some(3_884_740 * 1024)
        );
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: 99999999999999999 kB\n"), None);
    }

    #[test]
    fn ipv4_addresses_map_to_interfaces_through_routes() {
        let local = parse_fib_trie_local(FIB_TRIE);
        assert_eq!(
            local,
            vec![
                "10.8.0.2".parse::<Ipv4Addr>().unwrap(),
                "172.17.0.1".parse().unwrap(),
                "192.168.1.10".parse().unwrap()
            ]
        );
        let routes = parse_route(ROUTE);
        assert_eq!(routes.len(), 4);
        if cfg!(target_endian = "little") {
            assert_eq!(routes[1].destination, Ipv4Addr::new(192, 168, 1, 0));
            assert_eq!(routes[1].mask, Ipv4Addr::new(255, 255, 255, 0));
            let by_if = ipv4_by_interface(&local, &routes);
            assert_eq!(by_if["eth0"], vec!["192.168.1.10/24"]);
            assert_eq!(by_if["wg0"], vec!["10.8.0.2/16"]);
            assert_eq!(by_if["docker0"], vec!["172.17.0.1/16"]);
            assert_eq!(by_if.len(), 3);
        }
        // An address no connected route covers is left out; the default route never counts.
        let lonely = ["203.0.113.5".parse().unwrap()];
        assert!(ipv4_by_interface(&lonely, &routes).is_empty());
    }

    #[test]
    fn ipv6_addresses_skip_loopback_and_temporary() {
        let v6 = parse_if_inet6(IF_INET6);
        assert_eq!(
            v6,
            vec![
                ("eth0".to_owned(), "fe80::20c:29ff:fe12:3456/64".to_owned()),
                ("eth0".to_owned(), "2001:db8::10/64".to_owned()),
                (
                    "veth12ab".to_owned(),
                    "fe80::aaaa:aaaa:aaaa:aaaa/64".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn canonical_json_and_digest() {
        let mut a = Attributes::new();
        a.insert("z".into(), Value::from("last"));
        a.insert("cpu.count".into(), Value::Num(4.0));
        a.insert("location.lat".into(), Value::Num(52.5));
        a.insert("flag".into(), Value::Bool(true));
        a.insert("disks".into(), Value::List(vec!["sda 512".into()]));
        let json = String::from_utf8(to_json(&a)).unwrap();
        assert_eq!(
            json,
            r#"{"cpu.count":4,"disks":["sda 512"],"flag":true,"location.lat":52.5,"z":"last"}"#
        );
        let back: Attributes = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);

        let mut b = a.clone();
        assert_eq!(digest(&a), digest(&b));
        b.insert("z".into(), Value::from("changed"));
        assert_ne!(digest(&a), digest(&b));
        // Known FNV-1a vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);

        let mut t = ChangeTracker::default();
        assert!(t.is_new(&a));
        t.acknowledged(digest(&a));
        assert!(!t.is_new(&a));
        assert!(t.is_new(&b));
        t.reset();
        assert!(t.is_new(&a));
    }

    #[test]
    fn attribute_names() {
        for ok in ["hostname", "net.eth0.mac", "a:b-c_d.9", &"x".repeat(128)] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "é",
            "a=b",
            "_a",
            ".a",
            "-a",
            &"x".repeat(129),
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        // The server agrees.
        for name in ["hostname", "a:b-c_d.9", "", "_a", "a/b", &"x".repeat(129)] {
            let json = serde_json::json!({ name: 1 }).to_string();
            assert_eq!(
                is_valid_name(name),
                tender_core::inventory::parse_inventory(json.as_bytes()).is_ok(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn limits_drop_offending_attributes() {
        let mut a = Attributes::new();
        a.insert("ok".into(), Value::from("fine"));
        a.insert("bad name".into(), Value::from("x"));
        a.insert("nan".into(), Value::Num(f64::NAN));
        a.insert("long".into(), Value::Str("x".repeat(MAX_STRING_LEN + 1)));
        a.insert(
            "long.list".into(),
            Value::List(vec!["ok".into(), "y".repeat(MAX_STRING_LEN + 1)]),
        );
        a.insert("edge".into(), Value::Str("x".repeat(MAX_STRING_LEN)));
        a.insert(
            "many".into(),
            Value::List(vec![String::new(); MAX_LIST_LEN + 1]),
        );
        a.insert(
            "enough".into(),
            Value::List(vec![String::new(); MAX_LIST_LEN]),
        );
        assert!(matches!(validate(&a), Err(InventoryError::InvalidName(_))));
        let dropped = enforce_limits(&mut a);
        let names: Vec<&str> = dropped.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["bad name", "long", "long.list", "many", "nan"]);
        assert_eq!(
            dropped[1].to_string(),
            "attribute \"long\" dropped: attribute long: a string of 4097 bytes; at most 4096"
        );
        assert_eq!(a.keys().collect::<Vec<_>>(), ["edge", "enough", "ok"]);
        assert_eq!(validate(&a), Ok(()));
        tender_core::inventory::parse_inventory(&to_json(&a)).unwrap();
    }

    #[test]
    fn limits_on_count_and_size() {
        let mut a = Attributes::new();
        for i in 0..600 {
            a.insert(format!("a{i:04}"), Value::Num(i as f64));
        }
        assert_eq!(
            validate(&a),
            Err(InventoryError::TooManyAttributes { count: 600 })
        );
        let dropped = enforce_limits(&mut a);
        assert_eq!(dropped.len(), 88);
        assert_eq!(dropped[0].name, "a0512");
        assert_eq!(a.len(), 512);
        assert!(a.contains_key("a0511"));

        // 20 values of 4000 bytes: ~80 KB; the largest go first until it fits.
        let mut b = Attributes::new();
        for i in 0..20 {
            b.insert(format!("big{i:02}"), Value::Str("x".repeat(3990 + i)));
        }
        b.insert("small".into(), Value::from("s"));
        assert!(matches!(validate(&b), Err(InventoryError::TooLarge { .. })));
        let dropped = enforce_limits(&mut b);
        let names: Vec<&str> = dropped.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["big19", "big18", "big17", "big16"]);
        assert!(to_json(&b).len() <= MAX_JSON_BYTES);
        assert_eq!(validate(&b), Ok(()));
        tender_core::inventory::parse_inventory(&to_json(&b)).unwrap();
        assert!(b.contains_key("small"));
    }

    #[test]
    fn script_output_lines() {
        let (a, w) = parse_script_output(
            "# comment\n\nos.flavour = lite\nipv4=1.2.3.4\nipv4=5.6.7.8\n ipv4 = 9.9.9.9 \nbad name=1\nno equals sign\nurl=http://x/?a=b\nempty=\n",
        );
        assert_eq!(a["os.flavour"], Value::from("lite"));
        assert_eq!(
            a["ipv4"],
            Value::List(vec!["1.2.3.4".into(), "5.6.7.8".into(), "9.9.9.9".into()])
        );
        assert_eq!(a["url"], Value::from("http://x/?a=b"));
        assert_eq!(a["empty"], Value::from(""));
        assert_eq!(a.len(), 4);
        assert_eq!(w.len(), 2);
        assert!(w[0].starts_with("line 7: invalid attribute name"), "{w:?}");
        assert!(w[1].starts_with("line 8: expected name=value"), "{w:?}");

        let junk = "junk\n".repeat(100);
        let (a, w) = parse_script_output(&junk);
        assert!(a.is_empty());
        assert_eq!(w.len(), MAX_WARNINGS + 1);
        assert_eq!(w[MAX_WARNINGS], "and 80 more lines not understood");
    }

    fn write_file(path: &Path, content: &[u8]) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, content).unwrap();
    }

    fn write_script(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        write_file(&path, format!("#!/bin/sh\n{body}\n").as_bytes());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn fake_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let f = |p: &str, c: &str| write_file(&r.join(p), c.as_bytes());
        f("proc/sys/kernel/hostname", "kiosk-17\n");
        f("proc/sys/kernel/osrelease", "6.6.31+rpt-rpi-v8\n");
        f("usr/lib/os-release", OS_RELEASE);
        f("proc/cpuinfo", CPUINFO_RPI4);
        f(
            "proc/meminfo",
            "MemTotal:        3884740 kB\nMemFree: 1 kB\n",
        );
        f(
            "sys/firmware/devicetree/base/model",
            "Raspberry Pi 4 Model B Rev 1.4\0",
        );
        f(
            "sys/firmware/devicetree/base/serial-number",
            "10000000a1b2c3d4\0",
        );
        for (disk, size) in [
            ("mmcblk0", "62333952"),
            ("sda", "0"),
            ("loop0", "1000"),
            ("ram0", "8192"),
            ("zram0", "100"),
            ("dm-0", "100"),
            ("nvme0n1", "garbage"),
        ] {
            f(&format!("sys/block/{disk}/size"), &format!("{size}\n"));
        }
        for (iface, ty, mac) in [
            ("lo", "772", "00:00:00:00:00:00"),
            ("eth0", "1", "dc:a6:32:01:02:03"),
            ("wlan0", "1", "dc:a6:32:04:05:06"),
            ("wg0", "65534", ""),
            ("veth12ab", "1", "02:42:ac:11:00:02"),
            ("eth0.100", "1", "dc:a6:32:01:02:03"),
        ] {
            f(&format!("sys/class/net/{iface}/type"), &format!("{ty}\n"));
            f(
                &format!("sys/class/net/{iface}/address"),
                &format!("{mac}\n"),
            );
        }
        f("proc/net/fib_trie", FIB_TRIE);
        f("proc/net/route", ROUTE);
        f("proc/net/if_inet6", IF_INET6);
        root
    }

    #[test]
    fn collector_reads_a_fake_tree() {
        let root = fake_root();
        let a = Collector::new(root.path()).collect();
        let s = |k: &str| match &a[k] {
            Value::Str(s) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(s("hostname"), "kiosk-17");
        assert_eq!(s("kernel"), "6.6.31+rpt-rpi-v8");
        assert_eq!(s("arch"), std::env::consts::ARCH);
        assert_eq!(s("agent.version"), env!("CARGO_PKG_VERSION"));
        assert_eq!(s("os.id"), "debian");
        assert_eq!(s("os.version"), "12");
        assert_eq!(s("os.name"), "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(s("cpu.model"), "BCM2835 (Cortex-A72)");
        assert_eq!(a["cpu.count"], Value::Num(4.0));
        assert_eq!(a["memory.total_bytes"], Value::Num(3_884_740.0 * 1024.0));
        assert_eq!(s("hardware.model"), "Raspberry Pi 4 Model B Rev 1.4");
        assert_eq!(s("hardware.serial"), "10000000a1b2c3d4");
        assert_eq!(a["disks"], Value::List(vec!["mmcblk0 31914983424".into()]));
        assert_eq!(s("net.eth0.mac"), "dc:a6:32:01:02:03");
        assert_eq!(s("net.wlan0.mac"), "dc:a6:32:04:05:06");
        assert_eq!(s("net.eth0_100.mac"), "dc:a6:32:01:02:03");
        assert_eq!(
            a["net.eth0.ipv6"],
            Value::List(vec![
                "2001:db8::10/64".into(),
                "fe80::20c:29ff:fe12:3456/64".into()
            ])
        );
        if cfg!(target_endian = "little") {
            assert_eq!(
                a["net.eth0.ipv4"],
                Value::List(vec!["192.168.1.10/24".into()])
            );
            assert_eq!(a["net.wg0.ipv4"], Value::List(vec!["10.8.0.2/16".into()]));
            // docker0 has an address but no /sys entry: still listed, no MAC.
            assert!(a.contains_key("net.docker0.ipv4"));
            assert!(!a.contains_key("net.docker0.mac"));
        }
        assert!(!a.contains_key("net.wg0.mac"), "empty address");
        assert!(!a.keys().any(|k| k.starts_with("net.lo.")));
        assert!(!a.keys().any(|k| k.contains("veth")));
        assert_eq!(validate(&a), Ok(()));
    }

    #[test]
    fn collector_fallbacks_and_missing_files() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let f = |p: &str, c: &str| write_file(&r.join(p), c.as_bytes());
        f("sys/class/dmi/id/sys_vendor", "LENOVO\n");
        f("sys/class/dmi/id/product_name", "20HRCTO1WW\n");
        // Unreadable (here: a directory where a file is expected): skipped silently.
        std::fs::create_dir_all(r.join("sys/class/dmi/id/product_serial")).unwrap();
        f(
            "etc/os-release",
            "ID=alpine\nVERSION_ID=3.20.1\nNAME=\"Alpine Linux\"\n",
        );
        f("proc/cpuinfo", CPUINFO_X86);
        let a = Collector::new(r).collect();
        assert_eq!(a["hardware.model"], Value::from("LENOVO 20HRCTO1WW"));
        assert!(!a.contains_key("hardware.serial"));
        assert_eq!(a["os.name"], Value::from("Alpine Linux"));
        assert_eq!(a["os.version"], Value::from("3.20.1"));

        // Placeholders are not models.
        f("sys/class/dmi/id/sys_vendor", "To Be Filled By O.E.M.\n");
        f("sys/class/dmi/id/product_name", "Default string\n");
        let a = Collector::new(r).collect();
        assert!(!a.contains_key("hardware.model"));

        let empty = Collector::new("/nonexistent-inventory-root").collect();
        assert_eq!(empty.keys().collect::<Vec<_>>(), ["agent.version", "arch"]);
    }

    #[tokio::test]
    async fn scripts_run_in_order_and_merge() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_script(
            d,
            "10-os",
            "echo os.flavour=lite\necho tag=a\necho 'bad name=1'",
            0o755,
        );
        write_script(d, "20-more", "echo tag=b\necho hostname=from-script", 0o755);
        write_script(d, "30-fails", "echo tag=never\nexit 3", 0o755);
        write_script(d, "40-not-executable", "echo tag=never", 0o644);
        write_script(d, ".hidden", "echo tag=never", 0o755);
        write_script(d, "50-world-writable", "echo tag=never", 0o777);
        std::fs::create_dir(d.join("60-a-directory")).unwrap();
        write_script(
            d,
            "70-env",
            "echo \"token=${TENDER_AGENT_ENROLLMENT_TOKEN:-unset}\"",
            0o755,
        );
        let a = run_scripts(d, Duration::from_secs(10)).await;
        assert_eq!(a["os.flavour"], Value::from("lite"));
        assert_eq!(a["tag"], Value::List(vec!["a".into(), "b".into()]));
        assert_eq!(a["hostname"], Value::from("from-script"));
        assert_eq!(a.len(), 4, "{a:?}");
        // The environment does not leak TENDER_AGENT_* (checked only if it is set).
        if std::env::var_os("TENDER_AGENT_ENROLLMENT_TOKEN").is_none() {
            assert_eq!(a["token"], Value::from("unset"));
        }

        assert!(
            run_scripts(&d.join("missing"), Duration::from_secs(1))
                .await
                .is_empty()
        );
    }

    #[tokio::test]
    async fn failing_scripts_report_why() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fails = write_script(d, "fails", "echo 'no network' >&2\nexit 3", 0o755);
        let e = run_program(&fails, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e, ScriptError::Failed { .. }));
        assert_eq!(e.to_string(), "exit status: 3 (stderr: \"no network\")");

        let chatty = write_script(d, "chatty", "yes 'x=yyyyyyyyyyyyyyyyyyyy'", 0o755);
        let e = run_program(&chatty, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e, ScriptError::OutputTooLarge), "{e}");

        let e = run_program(&d.join("missing"), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, ScriptError::Spawn(_)), "{e}");

        let ok = write_script(d, "ok", "printf 'a=1\\n'", 0o755);
        assert_eq!(
            run_program(&ok, Duration::from_secs(10)).await.unwrap(),
            "a=1\n"
        );
    }

    /// Whether a process is gone (or a zombie nobody reaps: dead all the same). Waits up to
    /// 10 s for a SIGKILL that has been sent to be acted on.
    async fn process_is_dead(pid: &str) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let dead = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => true,
                Ok(stat) => stat
                    .rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
            };
            if dead || tokio::time::Instant::now() >= deadline {
                return dead;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn hanging_scripts_are_killed_with_their_children() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pids = d.join("pids");
        let hang = write_script(
            d,
            "hang",
            &format!(
                "echo partial=1\nsleep 600 &\necho \"$$ $!\" > {}\nwait",
                pids.display()
            ),
            0o755,
        );
        // Long enough for the script to write its pids first, short enough to be a timeout.
        let e = run_program(&hang, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, ScriptError::Timeout(_)), "{e}");
        let text = std::fs::read_to_string(&pids).unwrap();
        let (shell, sleeper) = text.trim().split_once(' ').unwrap();
        assert!(
            process_is_dead(shell).await,
            "the script {shell} was killed"
        );
        assert!(
            process_is_dead(sleeper).await,
            "its child {sleeper} was killed"
        );

        // Through run_scripts: logged and skipped, the others still count.
        write_script(d, "ok", "echo a=1", 0o755);
        std::fs::remove_file(&pids).unwrap();
        let a = run_scripts(d, Duration::from_millis(300)).await;
        assert_eq!(a.keys().collect::<Vec<_>>(), ["a"]);
    }

    #[tokio::test]
    async fn collect_layers_everything() {
        let root = fake_root();
        let scripts = tempfile::tempdir().unwrap();
        write_script(
            scripts.path(),
            "inv",
            "echo hostname=renamed\necho device_type=from-script\necho agent.version=9\necho software.app=1.0",
            0o755,
        );
        let mut extra = Attributes::new();
        extra.insert("artifact.name".into(), Value::from("release-42"));
        extra.insert("software.app".into(), Value::from("1.1"));
        extra.insert("bad name".into(), Value::from("x"));
        let opts = InventoryOptions {
            root: root.path().to_owned(),
            device_type: Some("rpi4-kiosk".into()),
            location: Location {
                lat: Some(52.52),
                lon: Some(500.0),
                site: Some("Berlin HQ".into()),
            },
            extra,
            scripts_dir: Some(scripts.path().to_owned()),
            script_timeout: Duration::from_secs(10),
        };
        let a = collect(&opts).await;
        assert_eq!(
            a["hostname"],
            Value::from("renamed"),
            "scripts beat built-ins"
        );
        assert_eq!(
            a["device_type"],
            Value::from("rpi4-kiosk"),
            "the caller beats scripts"
        );
        assert_eq!(a["software.app"], Value::from("1.1"));
        assert_eq!(a["artifact.name"], Value::from("release-42"));
        assert_eq!(a["agent.version"], Value::from(env!("CARGO_PKG_VERSION")));
        assert_eq!(a["location.lat"], Value::Num(52.52));
        assert!(!a.contains_key("location.lon"), "out of range");
        assert_eq!(a["location.site"], Value::from("Berlin HQ"));
        assert!(!a.contains_key("bad name"));
        assert_eq!(a["os.id"], Value::from("debian"));
        assert_eq!(validate(&a), Ok(()));
        let on_server = tender_core::inventory::parse_inventory(&to_json(&a)).unwrap();
        assert_eq!(on_server.len(), a.len());
        assert_eq!(digest(&a), digest(&collect(&opts).await), "stable");
    }
}
