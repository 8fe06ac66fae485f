//! [`EventStore`](crate::EventStore) for both SQL adapters, written once like `adapter.rs`.
//!
//! Invariants: events are only inserted (and pruned by age), never updated; ids come from the
//! database (SQLite `AUTOINCREMENT`, PostgreSQL identity), so they grow in the order written.

/// `,kind,kind,` for the `LIKE` test that filters kinds with one bound value.
pub(crate) fn kinds_param(kinds: &[tender_core::event::EventKind]) -> Option<String> {
    if kinds.is_empty() {
        return None;
    }
    let mut s = String::from(",");
    for k in kinds {
        s.push_str(k.as_str());
        s.push(',');
    }
    Some(s)
}

pub(crate) type EventRow = (
    i64,
    uuid::Uuid,
    i64,
    String,
    Option<uuid::Uuid>,
    Option<uuid::Uuid>,
    String,
);

pub(crate) fn event_from_row(row: EventRow) -> crate::Result<tender_core::event::Event> {
    let (id, tenant, at, kind, device, group, data) = row;
    let what = || format!("event {id}");
    Ok(tender_core::event::Event {
        id: u64::try_from(id).map_err(|_| crate::StoreError::Corrupt(what()))?,
        tenant_id: tender_core::TenantId::from_uuid(tenant),
        at: tender_core::Timestamp::from_unix_millis(at),
        kind: tender_core::event::EventKind::parse(&kind)
            .ok_or_else(|| crate::StoreError::Corrupt(format!("{}: kind {kind:?}", what())))?,
        device_id: device.map(tender_core::DeviceId::from_uuid),
        group_id: group.map(tender_core::GroupId::from_uuid),
        data: tender_core::twin::from_text(&data)
            .map_err(|e| crate::StoreError::Corrupt(format!("{}: {e}", what())))?,
    })
}

macro_rules! impl_event_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::EventStore for $store {
            async fn append_event(
                &self,
                event: &tender_core::event::NewEvent,
            ) -> $crate::Result<u64> {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO events (tenant_id, at, kind, device_id, group_id, data) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                )
                .bind(event.tenant_id.as_uuid())
                .bind(event.at.unix_millis())
                .bind(event.kind.as_str())
                .bind(event.device_id.map(|d| *d.as_uuid()))
                .bind(event.group_id.map(|g| *g.as_uuid()))
                .bind(tender_core::twin::to_text(&event.data))
                .fetch_one(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("event", e))?;
                u64::try_from(id).map_err(|_| $crate::StoreError::Corrupt(format!("event id {id}")))
            }

            async fn events(
                &self,
                tenant: tender_core::TenantId,
                filter: &tender_core::event::EventFilter,
                limit: u32,
            ) -> $crate::Result<Vec<tender_core::event::Event>> {
                let rows: Vec<$crate::adapter_events::EventRow> = sqlx::query_as(
                    "SELECT id, tenant_id, at, kind, device_id, group_id, data FROM events \
                     WHERE tenant_id = $1 AND id > $2 \
                     AND ($3 IS NULL OR device_id = $3) AND ($4 IS NULL OR group_id = $4) \
                     AND ($5 IS NULL OR $5 LIKE '%,' || kind || ',%') \
                     ORDER BY id LIMIT $6",
                )
                .bind(tenant.as_uuid())
                .bind(
                    filter
                        .after
                        .map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX)),
                )
                .bind(filter.device.map(|d| *d.as_uuid()))
                .bind(filter.group.map(|g| *g.as_uuid()))
                .bind($crate::adapter_events::kinds_param(&filter.kinds))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("events", e))?;
                rows.into_iter()
                    .map($crate::adapter_events::event_from_row)
                    .collect()
            }

            async fn prune_events(&self, before: tender_core::Timestamp) -> $crate::Result<u64> {
                let done = sqlx::query("DELETE FROM events WHERE at < $1")
                    .bind(before.unix_millis())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("pruning events", e))?;
                Ok(done.rows_affected())
            }

            async fn dynamic_memberships(
                &self,
                tenant: tender_core::TenantId,
                device: tender_core::DeviceId,
            ) -> $crate::Result<Vec<tender_core::GroupId>> {
                let rows: Vec<uuid::Uuid> = sqlx::query_scalar(
                    "SELECT group_id FROM dynamic_group_members \
                     WHERE tenant_id = $1 AND device_id = $2 ORDER BY group_id",
                )
                .bind(tenant.as_uuid())
                .bind(device.as_uuid())
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("dynamic group memberships", e))?;
                Ok(rows
                    .into_iter()
                    .map(tender_core::GroupId::from_uuid)
                    .collect())
            }

            async fn set_dynamic_membership(
                &self,
                tenant: tender_core::TenantId,
                group: tender_core::GroupId,
                device: tender_core::DeviceId,
                member: bool,
                at: tender_core::Timestamp,
            ) -> $crate::Result<bool> {
                let what = "dynamic group membership";
                let done = if member {
                    sqlx::query(
                        "INSERT INTO dynamic_group_members (tenant_id, group_id, device_id, since) \
                         VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (tenant_id, device_id, group_id) DO NOTHING",
                    )
                    .bind(tenant.as_uuid())
                    .bind(group.as_uuid())
                    .bind(device.as_uuid())
                    .bind(at.unix_millis())
                    .execute(&self.pool)
                    .await
                } else {
                    sqlx::query(
                        "DELETE FROM dynamic_group_members \
                         WHERE tenant_id = $1 AND group_id = $2 AND device_id = $3",
                    )
                    .bind(tenant.as_uuid())
                    .bind(group.as_uuid())
                    .bind(device.as_uuid())
                    .execute(&self.pool)
                    .await
                }
                .map_err(|e| $crate::map_sqlx(what, e))?;
                Ok(done.rows_affected() > 0)
            }
        }
    };
}

pub(crate) use impl_event_store;
