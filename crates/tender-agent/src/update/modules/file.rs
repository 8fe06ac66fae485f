//! `file`: installs each payload as a file, atomically, keeping the previous file for rollback.
//!
//! Where a payload goes: its meta `path` (absolute), or the manifest's meta `dest_dir`
//! (absolute) joined with the payload's name. `mode` (payload meta: an octal string like
//! `"0755"` or a number) sets the permissions; without it a replaced file keeps its mode and a
//! new one gets 0644. Relative paths and `..` are refused before anything is read.
//!
//! Install, per file: the new content is written next to the target (`.NAME.tender-new`,
//! synced), the current file is hard-linked to `.NAME.tender-backup`, and the new file renamed
//! over the target. Before touching any target, the plan (targets and whether each existed) is
//! written to the work directory, so that a rollback after a crash knows what to undo: a
//! backup is renamed back over its target, a target that did not exist before is removed.
//! Commit deletes the backups.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tender_artifact::{Manifest, Payload};

use super::{Ctx, Module, ModuleError, store_synced, sync_dir};
use crate::update::journal::Journal;

pub struct FileModule;

const PLAN_FILE: &str = "file-plan.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Planned {
    payload: String,
    target: PathBuf,
    existed: bool,
}

fn check_path(p: &Path, what: &str) -> Result<(), ModuleError> {
    if !p.is_absolute() {
        return Err(ModuleError(format!(
            "{what} {} is not absolute",
            p.display()
        )));
    }
    // Checked on the text too: `Path::components` drops inner `.` segments.
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || p.to_string_lossy()
            .split('/')
            .any(|s| s == "." || s == "..")
    {
        return Err(ModuleError(format!(
            "{what} {} contains `..` or `.`",
            p.display()
        )));
    }
    if p.file_name().is_none() || p.parent().is_none() {
        return Err(ModuleError(format!("{what} {} names no file", p.display())));
    }
    Ok(())
}

/// Where a payload goes.
fn target(manifest: &Manifest, p: &Payload) -> Result<PathBuf, ModuleError> {
    let path = match (p.meta.get("path"), manifest.meta.get("dest_dir")) {
        (Some(Value::String(path)), _) => PathBuf::from(path),
        (Some(_), _) => {
            return Err(ModuleError(format!(
                "payload {:?}: meta `path` must be a string",
                p.name
            )));
        }
        (None, Some(Value::String(dir))) => {
            check_path(Path::new(dir), "meta `dest_dir`")
                .or_else(|e| if dir == "/" { Ok(()) } else { Err(e) })?;
            Path::new(dir).join(&p.name)
        }
        (None, _) => {
            return Err(ModuleError(format!(
                "payload {:?} has no destination: set its meta `path` or the manifest's meta `dest_dir`",
                p.name
            )));
        }
    };
    check_path(&path, &format!("payload {:?}: destination", p.name))?;
    Ok(path)
}

/// The mode a payload asks for.
fn mode(p: &Payload) -> Result<Option<u32>, ModuleError> {
    let bad = || {
        ModuleError(format!(
            "payload {:?}: meta `mode` must be octal like \"0644\"",
            p.name
        ))
    };
    match p.meta.get("mode") {
        None => Ok(None),
        Some(Value::String(s)) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .map(Some)
            .ok_or_else(bad),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|m| u32::try_from(m).ok())
            .filter(|m| *m <= 0o7777)
            .map(Some)
            .ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

fn sibling(target: &Path, suffix: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.{suffix}"))
}

fn backup_of(target: &Path) -> PathBuf {
    sibling(target, "tender-backup")
}

fn new_of(target: &Path) -> PathBuf {
    sibling(target, "tender-new")
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ModuleError {
    move |e| ModuleError(format!("{what}: {e}"))
}

fn read_plan(ctx: &Ctx<'_>) -> Result<Option<Vec<Planned>>, ModuleError> {
    let path = ctx.work_dir.join(PLAN_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ModuleError(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ModuleError(format!("{}: {e}", path.display()))),
    }
}

fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Module for FileModule {
    fn prepare(&mut self, ctx: &Ctx<'_>, _: &mut Journal) -> Result<(), ModuleError> {
        if ctx.manifest.payloads.is_empty() {
            return Err(ModuleError::new(
                "a `file` artifact needs at least one payload",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &ctx.manifest.payloads {
            let t = target(ctx.manifest, p)?;
            mode(p)?;
            if !seen.insert(t.clone()) {
                return Err(ModuleError(format!("two payloads go to {}", t.display())));
            }
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

    fn install(&mut self, ctx: &Ctx<'_>, _: &Journal) -> Result<(), ModuleError> {
        let mut plan = Vec::new();
        for p in &ctx.manifest.payloads {
            let t = target(ctx.manifest, p)?;
            let existed = match std::fs::symlink_metadata(&t) {
                Ok(m) if m.is_file() => true,
                Ok(_) => {
                    return Err(ModuleError(format!(
                        "{} exists and is not a regular file",
                        t.display()
                    )));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(ModuleError(format!("{}: {e}", t.display()))),
            };
            plan.push(Planned {
                payload: p.name.clone(),
                target: t,
                existed,
            });
        }
        let bytes = serde_json::to_vec_pretty(&plan).map_err(|e| ModuleError(e.to_string()))?;
        crate::desired::write_atomically(&ctx.work_dir.join(PLAN_FILE), &bytes)
            .map_err(io("writing the install plan"))?;
        for (entry, p) in plan.iter().zip(&ctx.manifest.payloads) {
            let t = &entry.target;
            let dir = t.parent().unwrap_or(Path::new("/"));
            let new = new_of(t);
            let mut src = std::fs::File::open(ctx.payload_file(&p.name))
                .map_err(io(format!("payload {}", p.name)))?;
            store_synced(&new, &mut src).map_err(io(new.display()))?;
            let perms = match (mode(p)?, entry.existed) {
                (Some(m), _) => Some(m),
                (None, true) => std::fs::metadata(t)
                    .ok()
                    .map(|m| m.permissions().mode() & 0o7777),
                (None, false) => Some(0o644),
            };
            if let Some(m) = perms {
                std::fs::set_permissions(&new, std::fs::Permissions::from_mode(m))
                    .map_err(io(new.display()))?;
            }
            if entry.existed {
                let backup = backup_of(t);
                remove_if_there(&backup).map_err(io(backup.display()))?;
                std::fs::hard_link(t, &backup)
                    .map_err(io(format!("keeping {} for rollback", t.display())))?;
            }
            std::fs::rename(&new, t).map_err(io(format!("installing {}", t.display())))?;
            sync_dir(dir);
        }
        Ok(())
    }

    fn needs_reboot(&mut self, _: &Ctx<'_>) -> Result<bool, ModuleError> {
        Ok(false)
    }

    fn supports_rollback(&mut self, _: &Ctx<'_>) -> Result<bool, ModuleError> {
        Ok(true)
    }

    fn verify(&mut self, _: &Ctx<'_>, _: &Journal) -> Result<(), ModuleError> {
        Ok(())
    }

    fn commit(&mut self, ctx: &Ctx<'_>, _: &Journal) -> Result<(), ModuleError> {
        // Never fails: the new files are in place; a backup that cannot be removed is only
        // wasted space (logged).
        if let Ok(Some(plan)) = read_plan(ctx) {
            for entry in plan.iter().filter(|e| e.existed) {
                let backup = backup_of(&entry.target);
                if let Err(e) = remove_if_there(&backup) {
                    tracing::warn!(path = %backup.display(), error = %e, "cannot remove a backup");
                }
            }
        }
        Ok(())
    }

    fn rollback(&mut self, ctx: &Ctx<'_>, _: &Journal) -> Result<bool, ModuleError> {
        // No plan: install never touched a target.
        let Some(plan) = read_plan(ctx)? else {
            return Ok(false);
        };
        for entry in &plan {
            let t = &entry.target;
            let dir = t.parent().unwrap_or(Path::new("/"));
            if entry.existed {
                let backup = backup_of(t);
                // With a backup: it goes back. Without: the target was not replaced yet, or
                // was restored already.
                if backup.exists() {
                    std::fs::rename(&backup, t)
                        .map_err(io(format!("restoring {}", t.display())))?;
                }
            } else {
                remove_if_there(t).map_err(io(format!("removing {}", t.display())))?;
            }
            remove_if_there(&new_of(t)).map_err(io(new_of(t).display()))?;
            sync_dir(dir);
        }
        Ok(false)
    }

    fn cleanup(&mut self, ctx: &Ctx<'_>, _: &Journal) {
        if let Ok(Some(plan)) = read_plan(ctx) {
            for entry in &plan {
                let _ = remove_if_there(&new_of(&entry.target));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(name: &str, meta: Value) -> Payload {
        Payload {
            name: name.into(),
            size: 1,
            sha256: "0".repeat(64),
            compression: Default::default(),
            stored_size: None,
            meta: meta.as_object().cloned().unwrap_or_default(),
        }
    }

    fn manifest(meta: Value, payloads: Vec<Payload>) -> Manifest {
        Manifest {
            format: tender_artifact::FORMAT.into(),
            name: "app".into(),
            version: "1".into(),
            compatible: vec!["x".into()],
            depends: Default::default(),
            provides: Default::default(),
            payload_type: "file".into(),
            payloads,
            scripts: vec![],
            meta: meta.as_object().cloned().unwrap_or_default(),
            created_at: None,
        }
    }

    #[test]
    fn destinations_and_modes() {
        let m = manifest(json!({"dest_dir": "/opt/app"}), vec![]);
        assert_eq!(
            target(&m, &payload("app.bin", json!({}))).unwrap(),
            PathBuf::from("/opt/app/app.bin")
        );
        assert_eq!(
            target(&m, &payload("x", json!({"path": "/etc/x.conf"}))).unwrap(),
            PathBuf::from("/etc/x.conf")
        );
        for bad in ["etc/x", "/etc/../x", "/etc/./x", "/"] {
            assert!(
                target(&m, &payload("x", json!({"path": bad}))).is_err(),
                "{bad}"
            );
        }
        let m2 = manifest(json!({"dest_dir": "../opt"}), vec![]);
        assert!(target(&m2, &payload("x", json!({}))).is_err());
        let m3 = manifest(json!({}), vec![]);
        assert!(target(&m3, &payload("x", json!({}))).is_err());
        assert_eq!(
            mode(&payload("x", json!({"mode": "0755"}))).unwrap(),
            Some(0o755)
        );
        assert_eq!(
            mode(&payload("x", json!({"mode": 420}))).unwrap(),
            Some(0o644)
        );
        assert!(mode(&payload("x", json!({"mode": "rwx"}))).is_err());
        assert!(mode(&payload("x", json!({"mode": "17777"}))).is_err());
    }

    /// A crash between two files of an install: rollback (twice: it may itself be cut) puts
    /// back the replaced file, leaves the untouched one, removes the new one.
    #[test]
    fn rollback_undoes_a_partial_install() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("opt");
        std::fs::create_dir_all(&target).unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("files")).unwrap();
        let m = manifest(
            json!({"dest_dir": target.to_str().unwrap()}),
            vec![
                payload("one", json!({})),
                payload("two", json!({})),
                payload("three", json!({})),
            ],
        );
        for name in ["one", "two", "three"] {
            std::fs::write(work.join("files").join(name), format!("new {name}")).unwrap();
        }
        std::fs::write(target.join("one"), "old one").unwrap();
        std::fs::write(target.join("two"), "old two").unwrap();
        let config = crate::update::UpdateConfig::defaults(dir.path(), None, &[]);
        let ctx = Ctx {
            config: &config,
            work_dir: &work,
            manifest: &m,
        };
        let j: Journal = serde_json::from_value(json!({
            "artifact_id": "a", "name": "app", "version": "1", "payload_type": "file",
            "state": "installing", "started_at": "t", "updated_at": "t"
        }))
        .unwrap();
        let mut module = FileModule;
        module.install(&ctx, &j).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("three")).unwrap(),
            "new three"
        );
        // As if the crash came after "one" only: "two" back to its old self, no backup.
        std::fs::rename(backup_of(&target.join("two")), target.join("two")).unwrap();
        std::fs::write(target.join("two"), "old two").unwrap();
        std::fs::remove_file(target.join("three")).unwrap();
        std::fs::write(new_of(&target.join("three")), "half").unwrap();
        for _ in 0..2 {
            assert!(!module.rollback(&ctx, &j).unwrap());
            let mut names: Vec<String> = std::fs::read_dir(&target)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, ["one", "two"]);
            assert_eq!(
                std::fs::read_to_string(target.join("one")).unwrap(),
                "old one"
            );
            assert_eq!(
                std::fs::read_to_string(target.join("two")).unwrap(),
                "old two"
            );
        }
    }
}
