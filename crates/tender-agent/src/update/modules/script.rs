//! `script`: runs each payload as a program, in manifest order, with the update's script
//! timeout (`update.script_timeout_secs`). The payloads were checked against the signed
//! manifest's hashes before they run. No rollback, no reboot.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;

use tender_artifact::Payload;

use super::{Ctx, Module, ModuleError, store_synced};
use crate::update::journal::Journal;
use crate::update::process;

pub struct ScriptModule;

impl Module for ScriptModule {
    fn prepare(&mut self, ctx: &Ctx<'_>, _: &mut Journal) -> Result<(), ModuleError> {
        if ctx.manifest.payloads.is_empty() {
            return Err(ModuleError::new(
                "a `script` artifact needs at least one payload",
            ));
        }
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
        for p in &ctx.manifest.payloads {
            let path = ctx.payload_file(&p.name);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
            let ran = process::run(
                &path,
                &[],
                &super::super::script_env(ctx, j, "install"),
                ctx.config.script_timeout,
            )
            .map_err(ModuleError)?;
            if !ran.success() {
                return Err(ModuleError(ran.failure(&format!("script {}", p.name))));
            }
        }
        Ok(())
    }

    fn needs_reboot(&mut self, _: &Ctx<'_>) -> Result<bool, ModuleError> {
        Ok(false)
    }

    fn supports_rollback(&mut self, _: &Ctx<'_>) -> Result<bool, ModuleError> {
        Ok(false)
    }

    fn verify(&mut self, _: &Ctx<'_>, _: &Journal) -> Result<(), ModuleError> {
        Ok(())
    }

    fn commit(&mut self, _: &Ctx<'_>, _: &Journal) -> Result<(), ModuleError> {
        Ok(())
    }

    fn rollback(&mut self, _: &Ctx<'_>, _: &Journal) -> Result<bool, ModuleError> {
        Err(ModuleError::new("the script module cannot roll back"))
    }
}
