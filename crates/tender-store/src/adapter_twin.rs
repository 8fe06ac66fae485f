//! [`TwinStore`](crate::TwinStore) for both SQL adapters: the statements agree across the
//! dialects, so this is written once, like `adapter.rs`.
//!
//! Invariants: versions only grow; every write is a compare-and-set on the version read, as
//! one statement (or a transaction that starts with that write); the `reported.*` index rows
//! change in the same transaction as the reported document.

/// Canonical JSON text of a document (keys in order, so equal documents are equal text).
pub(crate) fn document_text(doc: &tender_core::twin::Document) -> String {
    tender_core::twin::to_text(doc)
}

pub(crate) fn parse_document(what: &str, text: &str) -> crate::Result<tender_core::twin::Document> {
    tender_core::twin::from_text(text)
        .map_err(|e| crate::StoreError::Corrupt(format!("{what}: {e}")))
}

pub(crate) fn version(what: &str, v: i64) -> crate::Result<u64> {
    u64::try_from(v).map_err(|_| crate::StoreError::Corrupt(format!("{what}: version {v}")))
}

pub(crate) fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) const ENSURE_TWIN: &str = "INSERT INTO device_twins (tenant_id, device_id) \
     SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM devices WHERE tenant_id = $1 AND id = $2) \
     ON CONFLICT (tenant_id, device_id) DO NOTHING";

macro_rules! impl_twin_store {
    ($store:ty) => {
        impl $store {
            /// Makes sure the device's twin row exists; NotFound when the device does not.
            async fn ensure_twin(
                &self,
                tenant: tender_core::TenantId,
                device: tender_core::DeviceId,
            ) -> $crate::Result<()> {
                let what = || format!("twin of device {device}");
                sqlx::query($crate::adapter_twin::ENSURE_TWIN)
                    .bind(tenant.as_uuid())
                    .bind(device.as_uuid())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx(&what(), e))?;
                let exists: Option<i64> = sqlx::query_scalar(
                    "SELECT desired_version FROM device_twins WHERE tenant_id = $1 AND device_id = $2",
                )
                .bind(tenant.as_uuid())
                .bind(device.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx(&what(), e))?;
                match exists {
                    Some(_) => Ok(()),
                    None => Err($crate::StoreError::NotFound(format!("device {device}"))),
                }
            }
        }

        #[async_trait::async_trait]
        impl $crate::MetadataStore for $store {
            async fn device_metadata(
                &self,
                tenant: tender_core::TenantId,
                device: tender_core::DeviceId,
            ) -> $crate::Result<tender_core::device::DeviceMetadata> {
                let row: Option<(Option<String>, Option<String>, i64)> = sqlx::query_as(
                    "SELECT owner, notes, updated_at FROM device_metadata \
                     WHERE tenant_id = $1 AND device_id = $2",
                )
                .bind(tenant.as_uuid())
                .bind(device.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx(&format!("metadata of device {device}"), e))?;
                Ok(match row {
                    Some((owner, notes, at)) => tender_core::device::DeviceMetadata {
                        owner,
                        notes,
                        updated_at: Some(tender_core::Timestamp::from_unix_millis(at)),
                    },
                    None => tender_core::device::DeviceMetadata::default(),
                })
            }

            async fn set_device_metadata(
                &self,
                tenant: tender_core::TenantId,
                device: tender_core::DeviceId,
                owner: Option<&str>,
                notes: Option<&str>,
                at: tender_core::Timestamp,
            ) -> $crate::Result<()> {
                sqlx::query(
                    "INSERT INTO device_metadata (tenant_id, device_id, owner, notes, updated_at) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (tenant_id, device_id) DO UPDATE SET owner = excluded.owner, \
                     notes = excluded.notes, updated_at = excluded.updated_at",
                )
                .bind(tenant.as_uuid())
                .bind(device.as_uuid())
                .bind(owner)
                .bind(notes)
                .bind(at.unix_millis())
                .execute(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx(&format!("metadata of device {device}"), e))?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::TwinStore for $store {
            async fn twin(
                &self,
                tenant: tender_core::TenantId,
                device: tender_core::DeviceId,
            ) -> $crate::Result<tender_core::twin::Twin> {
                let what = format!("twin of device {device}");
                type Row = (
                    String,
                    i64,
                    Option<i64>,
                    String,
                    i64,
                    Option<i64>,
                    i64,
                );
                let row: Option<Row> = sqlx::query_as(
                    "SELECT desired, desired_version, desired_at, reported, reported_version, \
                     reported_at, rendered_version FROM device_twins \
                     WHERE tenant_id = $1 AND device_id = $2",
                )
                .bind(tenant.as_uuid())
                .bind(device.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx(&what, e))?;
                let Some((desired, dv, dat, reported, rv, rat, renv)) = row else {
                    return Ok(tender_core::twin::Twin::default());
                };
                Ok(tender_core::twin::Twin {
                    desired: $crate::adapter_twin::parse_document(&what, &desired)?,
                    desired_version: $crate::adapter_twin::version(&what, dv)?,
                    desired_at: dat.map(tender_core::Timestamp::from_unix_millis),
                    reported: $crate::adapter_twin::parse_document(&what, &reported)?,
                    reported_version: $crate::adapter_twin::version(&what, rv)?,
                    reported_at: rat.map(tender_core::Timestamp::from_unix_millis),
                    rendered_version: $crate::adapter_twin::version(&what, renv)?,
                })
            }

            async fn write_desired(
                &self,
                tenant: tender_core::TenantId,
                device: tender_core::DeviceId,
                expected: u64,
                doc: &tender_core::twin::Document,
                at: tender_core::Timestamp,
            ) -> $crate::Result<Option<u64>> {
                let what = || format!("desired state of device {device}");
                self.ensure_twin(tenant, device).await?;
                let v: Option<i64> = sqlx::query_scalar(
                    "UPDATE device_twins SET desired = $3, desired_version = desired_version + 1, \
                     desired_at = $5 \
                     WHERE tenant_id = $1 AND device_id = $2 AND desired_version = $4 \
                     RETURNING desired_version",
                )
                .bind(tenant.as_uuid())
                .bind(device.as_uuid())
                .bind($crate::adapter_twin::document_text(doc))
                .bind($crate::adapter_twin::as_i64(expected))
                .bind(at.unix_millis())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx(&what(), e))?;
                v.map(|v| $crate::adapter_twin::version(&what(), v))
                    .transpose()
            }

            async fn write_reported(
                &self,
                tenant: tender_core::TenantId,
                device: tender_core::DeviceId,
                expected: u64,
                doc: &tender_core::twin::Document,
                at: tender_core::Timestamp,
            ) -> $crate::Result<Option<u64>> {
                let what = || format!("reported state of device {device}");
                self.ensure_twin(tenant, device).await?;
                let mut tx = self
                    .pool
                    .begin()
                    .await
                    .map_err(|e| $crate::map_sqlx(&what(), e))?;
                // The transaction starts with its write (see the store's invariants).
                let v: Option<i64> = sqlx::query_scalar(
                    "UPDATE device_twins SET reported = $3, \
                     reported_version = reported_version + 1, reported_at = $5 \
                     WHERE tenant_id = $1 AND device_id = $2 AND reported_version = $4 \
                     RETURNING reported_version",
                )
                .bind(tenant.as_uuid())
                .bind(device.as_uuid())
                .bind($crate::adapter_twin::document_text(doc))
                .bind($crate::adapter_twin::as_i64(expected))
                .bind(at.unix_millis())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| $crate::map_sqlx(&what(), e))?;
                let Some(v) = v else {
                    return Ok(None);
                };
                sqlx::query(
                    "DELETE FROM device_attributes WHERE tenant_id = $1 AND device_id = $2 \
                     AND scope IN ('reported.s', 'reported.n', 'reported.b', 'reported.o')",
                )
                .bind(tenant.as_uuid())
                .bind(device.as_uuid())
                .execute(&mut *tx)
                .await
                .map_err(|e| $crate::map_sqlx(&what(), e))?;
                for row in tender_core::twin::index_rows(doc) {
                    sqlx::query($crate::sql::INSERT_ATTRIBUTE)
                        .bind(tenant.as_uuid())
                        .bind(device.as_uuid())
                        .bind(row.kind.scope())
                        .bind(row.path)
                        .bind(row.seq)
                        .bind(row.text)
                        .bind(row.number)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| $crate::map_sqlx(&what(), e))?;
                }
                tx.commit()
                    .await
                    .map_err(|e| $crate::map_sqlx(&what(), e))?;
                Ok(Some($crate::adapter_twin::version(&what(), v)?))
            }

            async fn record_rendered(
                &self,
                tenant: tender_core::TenantId,
                device: tender_core::DeviceId,
                doc: &tender_core::twin::Document,
                at: tender_core::Timestamp,
            ) -> $crate::Result<u64> {
                let what = || format!("rendered configuration of device {device}");
                self.ensure_twin(tenant, device).await?;
                let text = $crate::adapter_twin::document_text(doc);
                let bumped: Option<i64> = sqlx::query_scalar(
                    "UPDATE device_twins SET rendered = $3, \
                     rendered_version = rendered_version + 1, rendered_at = $4 \
                     WHERE tenant_id = $1 AND device_id = $2 AND rendered <> $3 \
                     RETURNING rendered_version",
                )
                .bind(tenant.as_uuid())
                .bind(device.as_uuid())
                .bind(&text)
                .bind(at.unix_millis())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx(&what(), e))?;
                let v = match bumped {
                    Some(v) => v,
                    None => sqlx::query_scalar(
                        "SELECT rendered_version FROM device_twins \
                         WHERE tenant_id = $1 AND device_id = $2",
                    )
                    .bind(tenant.as_uuid())
                    .bind(device.as_uuid())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx(&what(), e))?,
                };
                $crate::adapter_twin::version(&what(), v)
            }

            async fn config_layers(
                &self,
                tenant: tender_core::TenantId,
            ) -> $crate::Result<Vec<tender_core::config::StoredLayer>> {
                let what = "configuration layers";
                let rows: Vec<(Option<uuid::Uuid>, i64, String, i64, i64)> = sqlx::query_as(
                    "SELECT group_id, priority, document, version, updated_at \
                     FROM config_layers WHERE tenant_id = $1 ORDER BY layer_key",
                )
                .bind(tenant.as_uuid())
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx(what, e))?;
                rows.into_iter()
                    .map(|(group, priority, doc, v, at)| {
                        Ok(tender_core::config::StoredLayer {
                            group_id: group.map(tender_core::GroupId::from_uuid),
                            priority: i32::try_from(priority).map_err(|_| {
                                $crate::StoreError::Corrupt(format!("{what}: priority {priority}"))
                            })?,
                            document: $crate::adapter_twin::parse_document(what, &doc)?,
                            version: $crate::adapter_twin::version(what, v)?,
                            updated_at: tender_core::Timestamp::from_unix_millis(at),
                        })
                    })
                    .collect()
            }

            async fn write_config_layer(
                &self,
                tenant: tender_core::TenantId,
                group: Option<tender_core::GroupId>,
                expected: u64,
                priority: i32,
                doc: &tender_core::twin::Document,
                at: tender_core::Timestamp,
            ) -> $crate::Result<Option<u64>> {
                let key = match group {
                    Some(g) => format!("group:{g}"),
                    None => "fleet".to_owned(),
                };
                let what = || format!("configuration layer {key}");
                let text = $crate::adapter_twin::document_text(doc);
                let v: Option<i64> = if expected == 0 {
                    sqlx::query_scalar(
                        "INSERT INTO config_layers \
                         (tenant_id, layer_key, group_id, priority, document, version, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, 1, $6) \
                         ON CONFLICT (tenant_id, layer_key) DO NOTHING RETURNING version",
                    )
                    .bind(tenant.as_uuid())
                    .bind(&key)
                    .bind(group.map(|g| *g.as_uuid()))
                    .bind(i64::from(priority))
                    .bind(&text)
                    .bind(at.unix_millis())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx(&what(), e))?
                } else {
                    sqlx::query_scalar(
                        "UPDATE config_layers SET priority = $3, document = $4, \
                         version = version + 1, updated_at = $6 \
                         WHERE tenant_id = $1 AND layer_key = $2 AND version = $5 \
                         RETURNING version",
                    )
                    .bind(tenant.as_uuid())
                    .bind(&key)
                    .bind(i64::from(priority))
                    .bind(&text)
                    .bind($crate::adapter_twin::as_i64(expected))
                    .bind(at.unix_millis())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx(&what(), e))?
                };
                v.map(|v| $crate::adapter_twin::version(&what(), v))
                    .transpose()
            }

            async fn delete_config_layer(
                &self,
                tenant: tender_core::TenantId,
                group: Option<tender_core::GroupId>,
            ) -> $crate::Result<bool> {
                let key = match group {
                    Some(g) => format!("group:{g}"),
                    None => "fleet".to_owned(),
                };
                let done = sqlx::query(
                    "DELETE FROM config_layers WHERE tenant_id = $1 AND layer_key = $2",
                )
                .bind(tenant.as_uuid())
                .bind(&key)
                .execute(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx(&format!("configuration layer {key}"), e))?;
                Ok(done.rows_affected() > 0)
            }
        }
    };
}

pub(crate) use impl_twin_store;
