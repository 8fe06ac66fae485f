//! Artifact files: the artifact store port, its file-system adapter, and the check every upload
//! goes through before it is stored.
//!
//! Invariants: an artifact is in the store only after it was read completely and matched its
//! manifest (layout, sizes, hashes) and, when signing is required, a trusted key's signature;
//! uploads are staged on the same file system as the store, so storing is a rename and a
//! crash never leaves half a file under an artifact's name.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Deserialize;
use tender_core::{ArtifactId, TenantId};

/// Where a client gets an artifact's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local file the server streams (with `Range` support).
    File(PathBuf),
    /// A URL the client is redirected to (e.g. a presigned object-storage URL).
    Redirect(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactStoreError {
    #[error("artifact store: {0}")]
    Io(#[from] std::io::Error),
    #[error("artifact file {0} is missing from the store")]
    Missing(String),
}

/// The artifact store port: where artifact files live.
#[async_trait]
pub trait ArtifactStore: Send + Sync + 'static {
    /// A short name for logs (`filesystem`, `s3`).
    fn kind(&self) -> &'static str;
    /// A new, empty staging file for an upload.
    async fn stage(&self) -> Result<tempfile::NamedTempFile, ArtifactStoreError>;
    /// Stores a checked staging file as the artifact `key`.
    async fn put(
        &self,
        key: &str,
        staged: tempfile::NamedTempFile,
    ) -> Result<(), ArtifactStoreError>;
    /// Where to fetch `key` from.
    async fn locate(&self, key: &str) -> Result<Location, ArtifactStoreError>;
    /// Removes `key`; removing what is not there is not an error.
    async fn delete(&self, key: &str) -> Result<(), ArtifactStoreError>;
}

/// The key of an artifact's file.
pub fn key(tenant: TenantId, id: ArtifactId) -> String {
    format!("{tenant}/{id}.tender")
}

/// Artifact files in a directory: `<dir>/<tenant>/<artifact>.tender`, staged in `<dir>/.staging`.
pub struct FsArtifactStore {
    root: PathBuf,
    staging: PathBuf,
}

impl FsArtifactStore {
    /// Creates the directories (0700) if needed.
    pub fn open(root: &Path) -> std::io::Result<FsArtifactStore> {
        use std::os::unix::fs::DirBuilderExt;
        let staging = root.join(".staging");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&staging)?;
        // Leftovers of uploads interrupted by a crash.
        if let Ok(entries) = std::fs::read_dir(&staging) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(FsArtifactStore {
            root: root.to_owned(),
            staging,
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

#[async_trait]
impl ArtifactStore for FsArtifactStore {
    fn kind(&self) -> &'static str {
        "filesystem"
    }

    async fn stage(&self) -> Result<tempfile::NamedTempFile, ArtifactStoreError> {
        let dir = self.staging.clone();
        Ok(
            tokio::task::spawn_blocking(move || tempfile::NamedTempFile::new_in(dir))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))??,
        )
    }

    async fn put(
        &self,
        key: &str,
        staged: tempfile::NamedTempFile,
    ) -> Result<(), ArtifactStoreError> {
        let path = self.path(key);
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::os::unix::fs::DirBuilderExt;
            let dir = path
                .parent()
                .ok_or_else(|| std::io::Error::other("an artifact key has a directory"))?;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            staged.as_file().sync_all()?;
            staged.persist(&path).map_err(|e| e.error)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(())
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
        Ok(())
    }

    async fn locate(&self, key: &str) -> Result<Location, ArtifactStoreError> {
        let path = self.path(key);
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Location::File(path)),
            Ok(_) => Err(ArtifactStoreError::Missing(key.to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ArtifactStoreError::Missing(key.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), ArtifactStoreError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The `[artifacts]` section of the server configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactsConfig {
    /// Where artifact files go [default: `<data_dir>/artifacts`].
    pub dir: Option<PathBuf>,
    /// Largest artifact accepted, in bytes (default 8 GiB).
    pub max_bytes: u64,
    /// Refuse artifacts that no key the tenant trusts has signed (default true).
    pub require_signature: bool,
    /// An upload that sends nothing for this long is cut (default 60 s).
    pub upload_idle_timeout_secs: u64,
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        ArtifactsConfig {
            dir: None,
            max_bytes: 8 << 30,
            require_signature: true,
            upload_idle_timeout_secs: 60,
        }
    }
}

/// Reads a staged upload completely and checks it (blocking: run it on a blocking thread).
pub fn check_upload(
    path: &Path,
    keys: &[tender_artifact::PublicKey],
    require_signature: bool,
) -> Result<tender_artifact::Header, tender_artifact::ArtifactError> {
    let file = std::fs::File::open(path)?;
    tender_artifact::read(
        BufReader::with_capacity(256 * 1024, file),
        tender_artifact::Trust {
            keys,
            require_signature,
        },
        &mut tender_artifact::Discard,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn files_are_staged_stored_located_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsArtifactStore::open(dir.path()).unwrap();
        let key = key(
            TenantId::from_uuid(uuid::Uuid::now_v7()),
            ArtifactId::from_uuid(uuid::Uuid::now_v7()),
        );
        assert!(matches!(
            store.locate(&key).await,
            Err(ArtifactStoreError::Missing(_))
        ));
        let staged = store.stage().await.unwrap();
        std::fs::write(staged.path(), b"bytes").unwrap();
        store.put(&key, staged).await.unwrap();
        let Location::File(path) = store.locate(&key).await.unwrap() else {
            panic!("a file store gives files");
        };
        assert_eq!(std::fs::read(&path).unwrap(), b"bytes");
        assert_eq!(
            std::fs::read_dir(dir.path().join(".staging"))
                .unwrap()
                .count(),
            0
        );
        store.delete(&key).await.unwrap();
        store.delete(&key).await.unwrap();
        assert!(store.locate(&key).await.is_err());
    }
}
