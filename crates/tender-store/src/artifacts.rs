//! The artifacts part of the port: [`ArtifactCatalog`](crate::ArtifactCatalog)'s SQL, rows and
//! the shared implementation for both adapters (`0016_artifacts.sql`). List columns (device
//! types, depends, provides, signers) are stored as JSON text.

use std::collections::BTreeMap;

use tender_core::artifact::{Artifact, TrustedKey};
use tender_core::{ArtifactId, TenantId, Timestamp};
use uuid::Uuid;

use crate::StoreError;

macro_rules! artifact_columns {
    () => {
        "tenant_id, id, name, version, payload_type, compatible, depends, provides, size, sha256, \
         payload_bytes, signed_by, manifest, created_at, created_by"
    };
}

pub(crate) const INSERT_ARTIFACT: &str = concat!(
    "INSERT INTO artifacts (",
    artifact_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
);
pub(crate) const ARTIFACT: &str = concat!(
    "SELECT ",
    artifact_columns!(),
    " FROM artifacts WHERE tenant_id = $1 AND id = $2"
);
pub(crate) const ARTIFACT_BY_VERSION: &str = concat!(
    "SELECT ",
    artifact_columns!(),
    " FROM artifacts WHERE tenant_id = $1 AND name = $2 AND version = $3"
);
/// Newest first: $1 tenant, $2 name or NULL, $3 before this id or NULL, $4 limit.
pub(crate) const LIST_ARTIFACTS: &str = concat!(
    "SELECT ",
    artifact_columns!(),
    " FROM artifacts WHERE tenant_id = $1 AND ($2 IS NULL OR name = $2) \
     AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
);
pub(crate) const DELETE_ARTIFACT: &str = "DELETE FROM artifacts WHERE tenant_id = $1 AND id = $2";
pub(crate) const INSERT_KEY: &str = "INSERT INTO trusted_keys (tenant_id, key_id, name, \
     public_key_pem, created_at) VALUES ($1, $2, $3, $4, $5)";
pub(crate) const KEYS: &str = "SELECT tenant_id, key_id, name, public_key_pem, created_at \
     FROM trusted_keys WHERE tenant_id = $1 ORDER BY created_at, key_id";
pub(crate) const DELETE_KEY: &str = "DELETE FROM trusted_keys WHERE tenant_id = $1 AND key_id = $2";

pub(crate) fn json<T: serde::Serialize>(value: &T) -> String {
    // Serialising lists and string maps cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

#[derive(sqlx::FromRow)]
pub(crate) struct ArtifactRow {
    tenant_id: Uuid,
    id: Uuid,
    name: String,
    version: String,
    payload_type: String,
    compatible: String,
    depends: String,
    provides: String,
    size: i64,
    sha256: String,
    payload_bytes: i64,
    signed_by: String,
    manifest: String,
    created_at: i64,
    created_by: Option<String>,
}

impl TryFrom<ArtifactRow> for Artifact {
    type Error = StoreError;

    fn try_from(r: ArtifactRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("artifact {}: {what}", r.id));
        let compatible: Vec<String> =
            serde_json::from_str(&r.compatible).map_err(|_| corrupt("compatible"))?;
        let depends: BTreeMap<String, String> =
            serde_json::from_str(&r.depends).map_err(|_| corrupt("depends"))?;
        let provides: BTreeMap<String, String> =
            serde_json::from_str(&r.provides).map_err(|_| corrupt("provides"))?;
        let signed_by: Vec<String> =
            serde_json::from_str(&r.signed_by).map_err(|_| corrupt("signed_by"))?;
        Ok(Artifact {
            id: ArtifactId::from_uuid(r.id),
            tenant_id: TenantId::from_uuid(r.tenant_id),
            size: u64::try_from(r.size).map_err(|_| corrupt("size"))?,
            payload_bytes: u64::try_from(r.payload_bytes).map_err(|_| corrupt("payload_bytes"))?,
            name: r.name,
            version: r.version,
            payload_type: r.payload_type,
            compatible,
            depends,
            provides,
            sha256: r.sha256,
            signed_by,
            manifest: r.manifest,
            created_at: Timestamp::from_unix_millis(r.created_at),
            created_by: r.created_by,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct KeyRow {
    tenant_id: Uuid,
    key_id: String,
    name: String,
    public_key_pem: String,
    created_at: i64,
}

impl From<KeyRow> for TrustedKey {
    fn from(r: KeyRow) -> Self {
        TrustedKey {
            tenant_id: TenantId::from_uuid(r.tenant_id),
            key_id: r.key_id,
            name: r.name,
            public_key_pem: r.public_key_pem,
            created_at: Timestamp::from_unix_millis(r.created_at),
        }
    }
}

macro_rules! impl_artifact_catalog {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::ArtifactCatalog for $store {
            async fn insert_artifact(
                &self,
                a: &tender_core::artifact::Artifact,
            ) -> $crate::Result<()> {
                use $crate::artifacts::json;
                sqlx::query($crate::artifacts::INSERT_ARTIFACT)
                    .bind(a.tenant_id.as_uuid())
                    .bind(a.id.as_uuid())
                    .bind(&a.name)
                    .bind(&a.version)
                    .bind(&a.payload_type)
                    .bind(json(&a.compatible))
                    .bind(json(&a.depends))
                    .bind(json(&a.provides))
                    .bind(i64::try_from(a.size).unwrap_or(i64::MAX))
                    .bind(&a.sha256)
                    .bind(i64::try_from(a.payload_bytes).unwrap_or(i64::MAX))
                    .bind(json(&a.signed_by))
                    .bind(&a.manifest)
                    .bind(a.created_at.unix_millis())
                    .bind(a.created_by.as_deref())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| {
                        $crate::map_sqlx(&format!("artifact {} {}", a.name, a.version), e)
                    })?;
                Ok(())
            }

            async fn artifact(
                &self,
                tenant: tender_core::TenantId,
                id: tender_core::ArtifactId,
            ) -> $crate::Result<Option<tender_core::artifact::Artifact>> {
                sqlx::query_as::<_, $crate::artifacts::ArtifactRow>($crate::artifacts::ARTIFACT)
                    .bind(tenant.as_uuid())
                    .bind(id.as_uuid())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("artifact", e))?
                    .map(TryInto::try_into)
                    .transpose()
            }

            async fn artifact_by_version(
                &self,
                tenant: tender_core::TenantId,
                name: &str,
                version: &str,
            ) -> $crate::Result<Option<tender_core::artifact::Artifact>> {
                sqlx::query_as::<_, $crate::artifacts::ArtifactRow>(
                    $crate::artifacts::ARTIFACT_BY_VERSION,
                )
                .bind(tenant.as_uuid())
                .bind(name)
                .bind(version)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("artifact", e))?
                .map(TryInto::try_into)
                .transpose()
            }

            async fn list_artifacts(
                &self,
                tenant: tender_core::TenantId,
                name: Option<&str>,
                page: &tender_core::page::PageRequest<tender_core::ArtifactId>,
            ) -> $crate::Result<
                tender_core::page::Page<tender_core::artifact::Artifact, tender_core::ArtifactId>,
            > {
                let rows = sqlx::query_as::<_, $crate::artifacts::ArtifactRow>(
                    $crate::artifacts::LIST_ARTIFACTS,
                )
                .bind(tenant.as_uuid())
                .bind(name)
                .bind(page.after.map(|a| *a.as_uuid()))
                .bind(i64::from(page.limit.get()) + 1)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("artifacts", e))?;
                let items = rows
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<$crate::Result<Vec<tender_core::artifact::Artifact>>>()?;
                Ok(tender_core::page::Page::from_overfetch(
                    items,
                    page.limit,
                    |a| a.id,
                ))
            }

            async fn delete_artifact(
                &self,
                tenant: tender_core::TenantId,
                id: tender_core::ArtifactId,
            ) -> $crate::Result<()> {
                let done = sqlx::query($crate::artifacts::DELETE_ARTIFACT)
                    .bind(tenant.as_uuid())
                    .bind(id.as_uuid())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| match e {
                        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                            $crate::StoreError::Conflict(format!(
                                "artifact {id} is used by deployments"
                            ))
                        }
                        e => $crate::map_sqlx("artifact", e),
                    })?;
                if done.rows_affected() == 0 {
                    return Err($crate::StoreError::NotFound(format!("artifact {id}")));
                }
                Ok(())
            }

            async fn insert_trusted_key(
                &self,
                k: &tender_core::artifact::TrustedKey,
            ) -> $crate::Result<()> {
                sqlx::query($crate::artifacts::INSERT_KEY)
                    .bind(k.tenant_id.as_uuid())
                    .bind(&k.key_id)
                    .bind(&k.name)
                    .bind(&k.public_key_pem)
                    .bind(k.created_at.unix_millis())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx(&format!("trusted key {}", k.key_id), e))?;
                Ok(())
            }

            async fn trusted_keys(
                &self,
                tenant: tender_core::TenantId,
            ) -> $crate::Result<Vec<tender_core::artifact::TrustedKey>> {
                Ok(
                    sqlx::query_as::<_, $crate::artifacts::KeyRow>($crate::artifacts::KEYS)
                        .bind(tenant.as_uuid())
                        .fetch_all(&self.pool)
                        .await
                        .map_err(|e| $crate::map_sqlx("trusted keys", e))?
                        .into_iter()
                        .map(Into::into)
                        .collect(),
                )
            }

            async fn delete_trusted_key(
                &self,
                tenant: tender_core::TenantId,
                key_id: &str,
            ) -> $crate::Result<()> {
                let done = sqlx::query($crate::artifacts::DELETE_KEY)
                    .bind(tenant.as_uuid())
                    .bind(key_id)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("trusted key", e))?;
                if done.rows_affected() == 0 {
                    return Err($crate::StoreError::NotFound(format!(
                        "trusted key {key_id}"
                    )));
                }
                Ok(())
            }
        }
    };
}
pub(crate) use impl_artifact_catalog;
