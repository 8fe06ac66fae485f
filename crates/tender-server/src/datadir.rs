//! The data directory and the secrets kept in it.
//!
//! Layout:
//! ```text
//! <data_dir>/            0700
//!   tender.db            the SQLite database (when no database.url is set)
//!   secrets/token-hmac.key   32 random bytes, hex; keys the stored hashes of API tokens (0600)
//!   ca/ca.crt, ca/ca.key     the built-in device CA (key 0600)
//! ```
//! Secret files are written to a temporary name, synced, then renamed, so a crash never leaves
//! a half-written secret behind.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::auth::TokenKey;

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create data directory {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {path} is not writable: {source}")]
    NotWritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged: {why}")]
    Damaged { path: PathBuf, why: String },
}

pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates the directory (0700) if needed and proves it is writable.
    pub fn prepare(root: &Path) -> Result<DataDir, DataDirError> {
        let created = !root.exists();
        fs::create_dir_all(root).map_err(|source| DataDirError::Create {
            path: root.to_owned(),
            source,
        })?;
        if created {
            let _ = fs::set_permissions(root, fs::Permissions::from_mode(0o700));
        }
        let probe = root.join(".write-test");
        fs::write(&probe, b"ok")
            .and_then(|()| fs::remove_file(&probe))
            .map_err(|source| DataDirError::NotWritable {
                path: root.to_owned(),
                source,
            })?;
        Ok(DataDir {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn subdir(&self, name: &str) -> Result<PathBuf, DataDirError> {
        let p = self.root.join(name);
        if !p.exists() {
            fs::create_dir_all(&p).map_err(|source| DataDirError::Create {
                path: p.clone(),
                source,
            })?;
            let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o700));
        }
        Ok(p)
    }

    /// The key for API token hashes, created on first use.
    pub fn token_key(&self) -> Result<TokenKey, DataDirError> {
        let path = self.subdir("secrets")?.join("token-hmac.key");
        if path.exists() {
            let text = fs::read_to_string(&path).map_err(|source| DataDirError::Read {
                path: path.clone(),
                source,
            })?;
            let bytes = decode_hex32(text.trim()).ok_or_else(|| DataDirError::Damaged {
                path: path.clone(),
                why: "expected 64 hex digits".into(),
            })?;
            return Ok(TokenKey::from_bytes(bytes));
        }
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_secret(&path, format!("{hex}\n").as_bytes())?;
        Ok(TokenKey::from_bytes(bytes))
    }
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Writes `bytes` to `path` with mode 0600, atomically (temp file, fsync, rename).
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    write_atomic(path, bytes, 0o600)
}

/// Writes `bytes` to `path` with `mode`, atomically (temp file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DataDirError> {
    let err = |source| DataDirError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn token_key_is_created_once_with_0600() {
        let t = tmp();
        let dd = DataDir::prepare(&t.path().join("data")).unwrap();
        let k1 = dd.token_key().unwrap().hash("x");
        let k2 = dd.token_key().unwrap().hash("x");
        assert_eq!(k1, k2, "the key is read back, not regenerated");
        let p = t.path().join("data/secrets/token-hmac.key");
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(t.path().join("data"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
    }

    #[test]
    fn a_damaged_key_is_reported_not_replaced() {
        let t = tmp();
        let dd = DataDir::prepare(t.path()).unwrap();
        let p = dd.subdir("secrets").unwrap().join("token-hmac.key");
        fs::write(&p, "short").unwrap();
        assert!(matches!(dd.token_key(), Err(DataDirError::Damaged { .. })));
        assert_eq!(fs::read_to_string(&p).unwrap(), "short");
    }

    #[test]
    fn a_file_in_the_way_is_a_clear_error() {
        let t = tmp();
        fs::write(t.path().join("file"), "x").unwrap();
        let err = DataDir::prepare(&t.path().join("file/data")).err().unwrap();
        assert!(
            err.to_string().starts_with("cannot create data directory"),
            "{err}"
        );
    }
}
