//! External update modules: an executable `<update.modules_dir>/<payload_type>`, called once
//! per state as `MODULE STATE WORK_DIR` (protocol in `docs/update-modules.md`).

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use tender_artifact::Payload;

use super::{Ctx, Module, ModuleError, store_synced};
use crate::update::journal::Journal;
use crate::update::state::{Boot, State};
use crate::update::{UpdateConfig, process};

pub struct External {
    program: PathBuf,
}

/// The kernel's id of this boot, if readable.
pub fn boot_id(config: &UpdateConfig) -> Option<String> {
    std::fs::read_to_string(&config.boot_id_file)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

impl External {
    /// The module for `payload_type`, if `modules_dir` has an executable of that name.
    pub fn find(config: &UpdateConfig, payload_type: &str) -> Result<External, ModuleError> {
        let program = config.modules_dir.join(payload_type);
        match std::fs::metadata(&program) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(External { program }),
            _ => Err(ModuleError(format!(
                "no update module for payload type {payload_type:?} (not built in, and no executable {})",
                program.display()
            ))),
        }
    }

    fn call(&self, ctx: &Ctx<'_>, j: &Journal, state: &str) -> Result<String, ModuleError> {
        let args = [OsString::from(state), ctx.work_dir.as_os_str().to_owned()];
        let ran = process::run(
            &self.program,
            &args,
            &crate::update::script_env(ctx, j, state),
            ctx.config.module_timeout,
        )
        .map_err(ModuleError)?;
        if !ran.success() {
            return Err(ModuleError(
                ran.failure(&format!("the update module's {state}")),
            ));
        }
        Ok(ran.stdout)
    }

    fn ask(&self, ctx: &Ctx<'_>, j: &Journal, query: &str) -> Result<bool, ModuleError> {
        let out = self.call(ctx, j, query)?;
        match out.trim().to_ascii_lowercase().as_str() {
            "yes" => Ok(true),
            "no" | "" => Ok(false),
            other => Err(ModuleError(format!(
                "the update module answered {query} with {other:?}, not yes or no"
            ))),
        }
    }

    /// A placeholder journal for queries outside a state (no journal fields are needed).
    fn no_journal(ctx: &Ctx<'_>) -> Journal {
        Journal {
            artifact_id: String::new(),
            name: ctx.manifest.name.clone(),
            version: ctx.manifest.version.clone(),
            payload_type: ctx.manifest.payload_type.clone(),
            state: State::Installing,
            attempts: 0,
            supports_rollback: false,
            slots: None,
            boot_id: None,
            provides: Default::default(),
            error: None,
            started_at: String::new(),
            updated_at: String::new(),
            log: vec![],
        }
    }
}

impl Module for External {
    fn prepare(&mut self, _: &Ctx<'_>, _: &mut Journal) -> Result<(), ModuleError> {
        Ok(())
    }

    fn download(
        &mut self,
        ctx: &Ctx<'_>,
        _: &Journal,
        payload: &Payload,
        data: &mut dyn Read,
    ) -> Result<(), ModuleError> {
        store_synced(&ctx.payload_file(&payload.name), data)?;
        Ok(())
    }

    fn install(&mut self, ctx: &Ctx<'_>, j: &Journal) -> Result<(), ModuleError> {
        self.call(ctx, j, "Download")?;
        self.call(ctx, j, "Install").map(drop)
    }

    fn needs_reboot(&mut self, ctx: &Ctx<'_>) -> Result<bool, ModuleError> {
        let j = Self::no_journal(ctx);
        self.ask(ctx, &j, "NeedsReboot")
    }

    fn supports_rollback(&mut self, ctx: &Ctx<'_>) -> Result<bool, ModuleError> {
        let j = Self::no_journal(ctx);
        self.ask(ctx, &j, "SupportsRollback")
    }

    /// A reboot is told by the kernel's boot id, recorded when the reboot was asked for.
    fn boot(&mut self, ctx: &Ctx<'_>, j: &Journal, state: State) -> Boot {
        let rebooted = match (&j.boot_id, boot_id(ctx.config)) {
            (Some(then), Some(now)) => *then != now,
            _ => false,
        };
        match state {
            State::Rebooting => Boot {
                on_new: rebooted,
                armed: true,
            },
            State::RollbackRebooting => Boot {
                on_new: !rebooted,
                armed: false,
            },
            _ => Boot {
                on_new: true,
                armed: false,
            },
        }
    }

    fn verify(&mut self, ctx: &Ctx<'_>, j: &Journal) -> Result<(), ModuleError> {
        self.call(ctx, j, "Verify").map(drop)
    }

    fn commit(&mut self, ctx: &Ctx<'_>, j: &Journal) -> Result<(), ModuleError> {
        self.call(ctx, j, "Commit").map(drop)
    }

    fn rollback(&mut self, ctx: &Ctx<'_>, j: &Journal) -> Result<bool, ModuleError> {
        self.call(ctx, j, "Rollback")?;
        self.needs_reboot(ctx)
    }

    fn cleanup(&mut self, ctx: &Ctx<'_>, j: &Journal) {
        if let Err(e) = self.call(ctx, j, "Cleanup") {
            tracing::warn!(error = %e, "the update module's cleanup failed");
        }
    }
}
