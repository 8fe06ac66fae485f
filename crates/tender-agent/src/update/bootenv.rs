//! The boot environment of an A/B device, and what its boot loader does with it.
//!
//! The environment is a file of `key=value` lines, the format `fw_printenv` prints, replaced
//! atomically (temporary file, fsync, rename, directory fsync) so that a power cut leaves the
//! old or the new environment. The variables (U-Boot's names):
//!
//! | variable | written by | meaning |
//! |---|---|---|
//! | `boot_part` | agent (install, rollback); boot loader (fallback) | the slot to boot: `a` or `b` |
//! | `upgrade_available` | agent: `1` on install, `0` on commit and rollback; boot loader: `0` on fallback | the slot in `boot_part` is on trial |
//! | `bootcount` | **boot loader**: `+1` on each boot while `upgrade_available=1`; agent: `0` on install, commit and rollback | boots of the slot on trial |
//! | `bootlimit` | agent (install) | boots allowed on trial |
//!
//! **Who increments `bootcount`: the boot loader, never the agent.** On every boot, before
//! loading a kernel, the boot loader does what [`simulate_boot`] does: when
//! `upgrade_available=1` it adds one to `bootcount`, and when `bootcount > bootlimit` it falls
//! back (U-Boot's `altbootcmd`): `boot_part` goes back to the other slot and
//! `upgrade_available` to `0`. It then boots `boot_part`, telling the kernel which root it
//! booted (`root=<slot device>` on the command line). So a new slot that never comes up far
//! enough for the agent to commit it is abandoned after `bootlimit` tries, without the agent.
//!
//! The agent learns which slot runs from the kernel command line (`/proc/cmdline`): a
//! `tender.slot=<name>` parameter, or `root=<device>` matched against the configured slots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A boot environment: variables by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootEnv {
    pub vars: BTreeMap<String, String>,
}

impl BootEnv {
    /// Parses `key=value` lines (blank lines and `#` comments skipped).
    pub fn parse(text: &str) -> BootEnv {
        let vars = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        BootEnv { vars }
    }

    pub fn read(path: &Path) -> std::io::Result<BootEnv> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("reading the boot environment {}: {e}", path.display()),
            )
        })?;
        Ok(BootEnv::parse(&text))
    }

    pub fn to_text(&self) -> String {
        self.vars
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect()
    }

    /// Replaces the file atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        crate::desired::write_atomically(path, self.to_text().as_bytes()).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("writing the boot environment {}: {e}", path.display()),
            )
        })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    pub fn set(&mut self, key: &str, value: impl ToString) {
        self.vars.insert(key.to_owned(), value.to_string());
    }

    fn number(&self, key: &str) -> u32 {
        self.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    pub fn boot_part(&self) -> Option<&str> {
        self.get("boot_part")
    }

    pub fn upgrade_available(&self) -> bool {
        self.get("upgrade_available") == Some("1")
    }

    pub fn bootcount(&self) -> u32 {
        self.number("bootcount")
    }

    pub fn bootlimit(&self) -> u32 {
        self.number("bootlimit")
    }
}

/// The slot named on a kernel command line: `tender.slot=<name>`, or `root=<device>` equal to
/// a slot's device.
pub fn booted_slot(cmdline: &str, slots: &BTreeMap<String, PathBuf>) -> Option<String> {
    let params: Vec<&str> = cmdline.split_whitespace().collect();
    if let Some(name) = params.iter().find_map(|p| p.strip_prefix("tender.slot="))
        && slots.contains_key(name)
    {
        return Some(name.to_owned());
    }
    let root = params.iter().find_map(|p| p.strip_prefix("root="))?;
    slots
        .iter()
        .find(|(_, dev)| dev.as_os_str() == root)
        .map(|(name, _)| name.clone())
}

/// The other slot of two.
pub fn other_slot(slots: &BTreeMap<String, PathBuf>, slot: &str) -> Option<String> {
    slots.keys().find(|k| k.as_str() != slot).cloned()
}

/// What an A/B boot loader does on each boot (see the module documentation), over a boot
/// environment file; writes the kernel command line it would pass (`root=<device>`) to
/// `cmdline` and returns the slot booted. For tests and simulations: the real one is the boot
/// loader's script.
pub fn simulate_boot(
    env_path: &Path,
    slots: &BTreeMap<String, PathBuf>,
    cmdline: &Path,
) -> std::io::Result<String> {
    let mut env = BootEnv::read(env_path)?;
    if env.upgrade_available() {
        let count = env.bootcount() + 1;
        env.set("bootcount", count);
        if count > env.bootlimit() {
            let current = env.boot_part().unwrap_or_default().to_owned();
            let back = other_slot(slots, &current).unwrap_or(current);
            env.set("boot_part", back);
            env.set("upgrade_available", 0);
        }
        env.write(env_path)?;
    }
    let slot = env
        .boot_part()
        .filter(|s| slots.contains_key(*s))
        .map(str::to_owned)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "boot_part names no slot: the boot loader cannot boot",
            )
        })?;
    let device = slots[&slot].display().to_string();
    crate::desired::write_atomically(cmdline, format!("root={device} rootwait\n").as_bytes())?;
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(dir: &Path) -> BTreeMap<String, PathBuf> {
        BTreeMap::from([
            ("a".to_string(), dir.join("slot-a")),
            ("b".to_string(), dir.join("slot-b")),
        ])
    }

    #[test]
    fn parses_fw_printenv_output_and_the_command_line() {
        let env = BootEnv::parse(
            "# x\nboot_part=b\nupgrade_available=1\n\nbootcount=2\nbootlimit=3\nbad line\n",
        );
        assert_eq!(env.boot_part(), Some("b"));
        assert!(env.upgrade_available());
        assert_eq!((env.bootcount(), env.bootlimit()), (2, 3));
        assert_eq!(BootEnv::parse(&env.to_text()), env);

        let s = BTreeMap::from([
            ("a".to_string(), PathBuf::from("/dev/mmcblk0p2")),
            ("b".to_string(), PathBuf::from("/dev/mmcblk0p3")),
        ]);
        assert_eq!(
            booted_slot("console=ttyS0 root=/dev/mmcblk0p3 rootwait", &s).as_deref(),
            Some("b")
        );
        assert_eq!(
            booted_slot("root=/dev/sda1 tender.slot=a", &s).as_deref(),
            Some("a")
        );
        assert_eq!(booted_slot("root=/dev/sda1", &s), None);
        assert_eq!(other_slot(&s, "a").as_deref(), Some("b"));
    }

    #[test]
    fn the_boot_loader_falls_back_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let env_path = dir.path().join("env");
        let cmdline = dir.path().join("cmdline");
        let s = slots(dir.path());
        std::fs::write(
            &env_path,
            "boot_part=b\nupgrade_available=1\nbootcount=0\nbootlimit=2\n",
        )
        .unwrap();
        assert_eq!(simulate_boot(&env_path, &s, &cmdline).unwrap(), "b");
        assert_eq!(simulate_boot(&env_path, &s, &cmdline).unwrap(), "b");
        assert_eq!(
            std::fs::read_to_string(&cmdline).unwrap(),
            format!("root={} rootwait\n", s["b"].display())
        );
        assert_eq!(simulate_boot(&env_path, &s, &cmdline).unwrap(), "a");
        let env = BootEnv::read(&env_path).unwrap();
        assert!(!env.upgrade_available());
        assert_eq!(env.bootcount(), 3);
        // Committed (upgrade_available=0): boots the same slot, counts nothing.
        assert_eq!(simulate_boot(&env_path, &s, &cmdline).unwrap(), "a");
        assert_eq!(BootEnv::read(&env_path).unwrap().bootcount(), 3);
    }
}
