//! `rootfs-ab`: a root file system image written to the slot the device does not run, then
//! tried through the boot loader (see [`crate::update::bootenv`] for the environment and who
//! writes what).
//!
//! - prepare: the running slot comes from the kernel command line; the other one is the
//!   target. Refused when the boot environment has an update on trial or points elsewhere
//!   than the running slot (a pending rollback or commit: reboot first).
//! - download: the image goes straight into the inactive slot (it is not bootable until the
//!   environment says so), then is synced.
//! - install: the slot is read back and hashed against the manifest, then the environment is
//!   switched in one atomic write: `boot_part=<new>`, `upgrade_available=1`, `bootcount=0`,
//!   `bootlimit=N`.
//! - after the reboot: the new slot must be the one running (verify); commit writes
//!   `upgrade_available=0`, `bootcount=0`. Rollback writes `boot_part=<old>`,
//!   `upgrade_available=0`, `bootcount=0`, and asks for a reboot when the new slot runs.
//!
//! The running slot is never written, and the environment never points at a slot whose image
//! was not read back whole: a power cut at any point leaves a bootable device.

use std::io::{Read, Write};

use sha2::{Digest, Sha256};
use tender_artifact::Payload;

use super::{Ctx, Module, ModuleError};
use crate::update::RootfsConfig;
use crate::update::bootenv::{self, BootEnv};
use crate::update::journal::{Journal, Slots, crash_point};
use crate::update::state::{Boot, State};

pub struct RootfsAb;

fn config<'a>(ctx: &'a Ctx<'_>) -> Result<&'a RootfsConfig, ModuleError> {
    ctx.config.rootfs.as_ref().ok_or_else(|| {
        ModuleError::new("this device has no A/B slots configured ([update.rootfs])")
    })
}

fn running_slot(c: &RootfsConfig) -> Result<String, ModuleError> {
    let cmdline = std::fs::read_to_string(&c.cmdline)
        .map_err(|e| ModuleError(format!("reading {}: {e}", c.cmdline.display())))?;
    bootenv::booted_slot(&cmdline, &c.slots).ok_or_else(|| {
        ModuleError(format!(
            "the kernel command line ({}) names none of the slots {:?}",
            c.cmdline.display(),
            c.slots.keys().collect::<Vec<_>>()
        ))
    })
}

fn slots(j: &Journal) -> Result<&Slots, ModuleError> {
    j.slots
        .as_ref()
        .ok_or_else(|| ModuleError::new("the journal lacks the slots of this update"))
}

fn err(e: std::io::Error) -> ModuleError {
    ModuleError(e.to_string())
}

impl Module for RootfsAb {
    fn prepare(&mut self, ctx: &Ctx<'_>, journal: &mut Journal) -> Result<(), ModuleError> {
        let c = config(ctx)?;
        if ctx.manifest.payloads.len() != 1 {
            return Err(ModuleError::new(
                "a `rootfs-ab` artifact carries exactly one payload, the image",
            ));
        }
        let from = running_slot(c)?;
        let env = BootEnv::read(&c.bootenv).map_err(err)?;
        if env.upgrade_available() {
            return Err(ModuleError::new(
                "the boot environment has an update on trial (upgrade_available=1): commit or roll it back first",
            ));
        }
        if env.boot_part() != Some(from.as_str()) {
            return Err(ModuleError(format!(
                "slot {from} runs but the boot environment boots {:?}: reboot first",
                env.boot_part()
            )));
        }
        let to = bootenv::other_slot(&c.slots, &from)
            .ok_or_else(|| ModuleError::new("there is no other slot"))?;
        journal.slots = Some(Slots { from, to });
        Ok(())
    }

    fn download(
        &mut self,
        ctx: &Ctx<'_>,
        j: &Journal,
        payload: &Payload,
        data: &mut dyn Read,
    ) -> Result<(), ModuleError> {
        let c = config(ctx)?;
        let s = slots(j)?;
        let device = &c.slots[&s.to];
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .open(device)
            .map_err(|e| {
                ModuleError(format!("opening slot {} ({}): {e}", s.to, device.display()))
            })?;
        let half = payload.size / 2;
        let mut written = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(err(e)),
            };
            out.write_all(&buf[..n])
                .map_err(|e| ModuleError(format!("writing slot {}: {e}", s.to)))?;
            let before = written;
            written += n as u64;
            if before <= half && written > half {
                out.sync_all().map_err(err)?;
                crash_point("slot-half-written");
            }
        }
        // A file-backed slot (tests, images) is cut to the image; a device keeps its size.
        if out.metadata().is_ok_and(|m| m.is_file()) {
            out.set_len(written).map_err(err)?;
        }
        out.sync_all()
            .map_err(|e| ModuleError(format!("syncing slot {}: {e}", s.to)))?;
        Ok(())
    }

    fn install(&mut self, ctx: &Ctx<'_>, j: &Journal) -> Result<(), ModuleError> {
        let c = config(ctx)?;
        let s = slots(j)?;
        let payload = ctx
            .manifest
            .payloads
            .first()
            .ok_or_else(|| ModuleError::new("no image"))?;
        // Read the slot back: what the boot loader will load is what was signed.
        let device = &c.slots[&s.to];
        let f = std::fs::File::open(device).map_err(err)?;
        let mut hasher = Sha256::new();
        let copied =
            std::io::copy(&mut f.take(payload.size), &mut HashWriter(&mut hasher)).map_err(err)?;
        let actual: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if copied != payload.size || actual != payload.sha256 {
            return Err(ModuleError(format!(
                "slot {} does not read back as the image ({copied} bytes, SHA-256 {actual})",
                s.to
            )));
        }
        let mut env = BootEnv::read(&c.bootenv).map_err(err)?;
        env.set("boot_part", &s.to);
        env.set("upgrade_available", 1);
        env.set("bootcount", 0);
        env.set("bootlimit", c.bootlimit);
        env.write(&c.bootenv).map_err(err)?;
        crash_point("boot-switched");
        Ok(())
    }

    fn needs_reboot(&mut self, _: &Ctx<'_>) -> Result<bool, ModuleError> {
        Ok(true)
    }

    fn supports_rollback(&mut self, _: &Ctx<'_>) -> Result<bool, ModuleError> {
        Ok(true)
    }

    fn boot(&mut self, ctx: &Ctx<'_>, j: &Journal, _: State) -> Boot {
        let (Ok(c), Ok(s)) = (config(ctx), slots(j)) else {
            return Boot {
                on_new: false,
                armed: false,
            };
        };
        // Unknown is treated as the old slot: the update is then rolled back, never committed.
        let on_new = running_slot(c).is_ok_and(|r| r == s.to);
        let armed = BootEnv::read(&c.bootenv)
            .is_ok_and(|env| env.upgrade_available() && env.boot_part() == Some(s.to.as_str()));
        Boot { on_new, armed }
    }

    fn verify(&mut self, ctx: &Ctx<'_>, j: &Journal) -> Result<(), ModuleError> {
        let c = config(ctx)?;
        let s = slots(j)?;
        let running = running_slot(c)?;
        if running != s.to {
            return Err(ModuleError(format!(
                "slot {running} runs, not the new slot {}",
                s.to
            )));
        }
        Ok(())
    }

    fn commit(&mut self, ctx: &Ctx<'_>, j: &Journal) -> Result<(), ModuleError> {
        let c = config(ctx)?;
        let s = slots(j)?;
        let mut env = BootEnv::read(&c.bootenv).map_err(err)?;
        if env.boot_part() != Some(s.to.as_str()) {
            return Err(ModuleError(format!(
                "the boot environment boots {:?}, not the new slot {}",
                env.boot_part(),
                s.to
            )));
        }
        env.set("upgrade_available", 0);
        env.set("bootcount", 0);
        env.write(&c.bootenv).map_err(err)
    }

    fn rollback(&mut self, ctx: &Ctx<'_>, j: &Journal) -> Result<bool, ModuleError> {
        let c = config(ctx)?;
        let s = slots(j)?;
        let mut env = BootEnv::read(&c.bootenv).map_err(err)?;
        env.set("boot_part", &s.from);
        env.set("upgrade_available", 0);
        env.set("bootcount", 0);
        env.write(&c.bootenv).map_err(err)?;
        // Unknown counts as "not on the old slot": one reboot too many is harmless.
        Ok(running_slot(c).map_or(true, |r| r != s.from))
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
