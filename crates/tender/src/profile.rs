//! Saved connection profiles (`tender login`).
//!
//! The file is `$TENDER_CLI_CONFIG`, else `$XDG_CONFIG_HOME/tender/cli.toml`, else
//! `~/.config/tender/cli.toml`; it holds tokens, so it is written with mode 0600.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};

pub const DEFAULT_PROFILE: &str = "default";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    /// The profile used when none is named.
    pub current: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub server: String,
    pub token: String,
}

pub fn path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TENDER_CLI_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => PathBuf::from(std::env::var_os("HOME").ok_or_else(|| {
            anyhow!("neither HOME nor TENDER_CLI_CONFIG is set: cannot find the profile file")
        })?)
        .join(".config"),
    };
    Ok(base.join("tender").join("cli.toml"))
}

pub fn load() -> Result<ProfileFile> {
    let p = path()?;
    match std::fs::read_to_string(&p) {
        Ok(text) => toml::from_str(&text).with_context(|| {
            format!(
                "profile file {} is invalid; fix it or run `tender login` again after removing it",
                p.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProfileFile::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read profile file {}", p.display())),
    }
}

pub fn save(file: &ProfileFile) -> Result<PathBuf> {
    let p = path()?;
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = toml::to_string_pretty(file).context("cannot encode the profile file")?;
    let tmp = p.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, &p))
        .with_context(|| format!("cannot write profile file {}", p.display()))?;
    Ok(p)
}
