//! Update modules: what installs a payload type. The built-ins (`file`, `script`, `rootfs-ab`)
//! and external executables ([`external`], the protocol of `docs/update-modules.md`) sit behind
//! one trait.
//!
//! Modules keep no state in memory between calls: after a restart the agent builds the module
//! again and calls the next state's method, so anything a module needs to remember goes into
//! the work directory (synced) or the journal (`slots`).

use std::io::Read;
use std::path::{Path, PathBuf};

use tender_artifact::{Manifest, Payload};

use super::UpdateConfig;
use super::journal::Journal;
use super::state::{Boot, State};

pub mod external;
pub mod file;
pub mod rootfs_ab;
pub mod script;

/// A module's failure, one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ModuleError(pub String);

impl ModuleError {
    pub fn new(msg: impl Into<String>) -> Self {
        ModuleError(msg.into())
    }
}

impl From<std::io::Error> for ModuleError {
    fn from(e: std::io::Error) -> Self {
        ModuleError(e.to_string())
    }
}

/// What every call gets.
pub struct Ctx<'a> {
    pub config: &'a UpdateConfig,
    /// The update's work directory: `manifest.json`, `files/` (stored payloads), `scripts/`,
    /// and `module/` for the module's own files.
    pub work_dir: &'a Path,
    pub manifest: &'a Manifest,
}

impl Ctx<'_> {
    /// Where a stored payload is.
    pub fn payload_file(&self, name: &str) -> PathBuf {
        self.work_dir.join("files").join(name)
    }

    /// The module's own directory in the work directory (created on demand).
    pub fn module_dir(&self) -> std::io::Result<PathBuf> {
        let dir = self.work_dir.join("module");
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}

/// An update module. Every method may be called again after a crash, so each must be
/// idempotent: `rollback` in particular undoes whatever part of `install` was done.
pub trait Module {
    /// Checks the manifest before any content is read (a refusal leaves everything as it was)
    /// and records what it must remember in the journal (e.g. the slots).
    fn prepare(&mut self, ctx: &Ctx<'_>, journal: &mut Journal) -> Result<(), ModuleError>;
    /// Takes one payload while the artifact is read. The content is unverified until the
    /// whole artifact was read: keep it where it does no harm (the work directory, the inactive
    /// slot).
    fn download(
        &mut self,
        ctx: &Ctx<'_>,
        journal: &Journal,
        payload: &Payload,
        data: &mut dyn Read,
    ) -> Result<(), ModuleError>;
    /// Everything is verified: install it.
    fn install(&mut self, ctx: &Ctx<'_>, journal: &Journal) -> Result<(), ModuleError>;
    /// Whether a reboot must follow the install (`NeedsReboot`).
    fn needs_reboot(&mut self, ctx: &Ctx<'_>) -> Result<bool, ModuleError>;
    /// Whether it can undo its install (`SupportsRollback`).
    fn supports_rollback(&mut self, ctx: &Ctx<'_>) -> Result<bool, ModuleError>;
    /// What runs now, when the agent starts in `state` (see [`Boot`]). Modules that do not
    /// reboot: what they installed is live and nothing is armed.
    fn boot(&mut self, _ctx: &Ctx<'_>, _journal: &Journal, _state: State) -> Boot {
        Boot {
            on_new: true,
            armed: false,
        }
    }
    /// Checks the installed software (after the reboot, if any).
    fn verify(&mut self, ctx: &Ctx<'_>, journal: &Journal) -> Result<(), ModuleError>;
    /// Makes it permanent.
    fn commit(&mut self, ctx: &Ctx<'_>, journal: &Journal) -> Result<(), ModuleError>;
    /// Undoes the install; `Ok(true)` when a reboot must follow.
    fn rollback(&mut self, ctx: &Ctx<'_>, journal: &Journal) -> Result<bool, ModuleError>;
    /// The update is over (any outcome): remove leftovers outside the work directory.
    fn cleanup(&mut self, _ctx: &Ctx<'_>, _journal: &Journal) {}
}

/// The module for a payload type: a built-in, or `<modules_dir>/<payload_type>`.
pub fn for_payload_type(
    config: &UpdateConfig,
    payload_type: &str,
) -> Result<Box<dyn Module>, ModuleError> {
    match payload_type {
        "file" => Ok(Box::new(file::FileModule)),
        "script" => Ok(Box::new(script::ScriptModule)),
        "rootfs-ab" => Ok(Box::new(rootfs_ab::RootfsAb)),
        other => external::External::find(config, other).map(|m| Box::new(m) as Box<dyn Module>),
    }
}

/// Writes `data` to `path` and syncs it; returns the bytes written.
pub(crate) fn store_synced(path: &Path, data: &mut dyn Read) -> std::io::Result<u64> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::File::create(path)?;
    let n = std::io::copy(data, &mut f)?;
    f.sync_all()?;
    Ok(n)
}

/// Syncs a directory's entries (after renames and creations in it).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
