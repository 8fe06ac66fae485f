//! The remote-logs part of the port: [`LogStore`](crate::LogStore)'s SQL, rows and the shared
//! implementation for both adapters (`0021_logs.sql`).
//!
//! Every change to a request is a conditional `UPDATE` on the state and `updated_at` it was read
//! with, so two paths racing (an upload, the device's error report, the expiry sweep) cannot
//! both move it, and a finished request never moves again: the rules are the core's
//! ([`tender_core::logs::LogRequest`]); `EXPIRE` is `on_expire` written as SQL. The upload is
//! stored in the same transaction as the move to `ready`.

use tender_core::logs::{LogRequest, LogState, SourceName};
use tender_core::{DeviceId, LogRequestId, TenantId, Timestamp};
use uuid::Uuid;

use crate::StoreError;

macro_rules! log_columns {
    () => {
        "tenant_id, id, device_id, sources, since, until, lines, max_bytes, follow, created_by, \
         created_at, expires_at, state, sent_at, finished_at, updated_at, error, size"
    };
}

pub(crate) const INSERT: &str = concat!(
    "INSERT INTO log_requests (",
    log_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
);
pub(crate) const GET: &str = concat!(
    "SELECT ",
    log_columns!(),
    " FROM log_requests WHERE tenant_id = $1 AND id = $2"
);
/// Newest first: $1 tenant, $2 device, $3 before this id (or NULL), $4 limit.
pub(crate) const DEVICE_REQUESTS: &str = concat!(
    "SELECT ",
    log_columns!(),
    " FROM log_requests WHERE tenant_id = $1 AND device_id = $2 \
     AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
);
/// Open, unexpired, oldest first: $1 tenant, $2 device, $3 now.
pub(crate) const PENDING: &str = concat!(
    "SELECT ",
    log_columns!(),
    " FROM log_requests WHERE tenant_id = $1 AND device_id = $2 \
     AND state IN ('pending', 'sent', 'uploading') AND expires_at > $3 ORDER BY id"
);
/// Compare-and-set: $1 tenant, $2 id, $3 expected state, $4 expected updated_at, then $5 state,
/// $6 sent_at, $7 finished_at, $8 updated_at, $9 error, $10 size.
pub(crate) const UPDATE: &str = "UPDATE log_requests SET state = $5, sent_at = $6, \
     finished_at = $7, updated_at = $8, error = $9, size = $10 \
     WHERE tenant_id = $1 AND id = $2 AND state = $3 AND updated_at = $4";
pub(crate) const INSERT_CONTENT: &str =
    "INSERT INTO log_contents (tenant_id, request_id, gzip) VALUES ($1, $2, $3)";
pub(crate) const CONTENT: &str =
    "SELECT gzip FROM log_contents WHERE tenant_id = $1 AND request_id = $2";
/// `on_expire` for every open request past its TTL, every tenant: $1 now.
pub(crate) const EXPIRE: &str = "UPDATE log_requests SET state = 'expired', finished_at = $1, \
     updated_at = $1 WHERE state IN ('pending', 'sent', 'uploading') AND expires_at <= $1";
/// Finished requests (with their content) that finished before $1, every tenant.
pub(crate) const PRUNE: &str = "DELETE FROM log_requests \
     WHERE state IN ('ready', 'failed', 'expired') AND finished_at < $1";

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
}

pub(crate) fn sources_json(sources: &[SourceName]) -> String {
    // A list of strings always serialises.
    serde_json::to_string(sources).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn size_column(size: Option<u64>) -> Option<i64> {
    size.map(|s| i64::try_from(s).unwrap_or(i64::MAX))
}

#[derive(sqlx::FromRow)]
pub(crate) struct LogRow {
    tenant_id: Uuid,
    id: Uuid,
    device_id: Uuid,
    sources: String,
    since: Option<i64>,
    until: Option<i64>,
    lines: i64,
    max_bytes: i64,
    follow: i64,
    created_by: Option<String>,
    created_at: i64,
    expires_at: i64,
    state: String,
    sent_at: Option<i64>,
    finished_at: Option<i64>,
    updated_at: i64,
    error: Option<String>,
    size: Option<i64>,
}

impl TryFrom<LogRow> for LogRequest {
    type Error = StoreError;
    fn try_from(r: LogRow) -> Result<LogRequest, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("log request {}: {what}", r.id));
        Ok(LogRequest {
            id: LogRequestId::from_uuid(r.id),
            tenant_id: TenantId::from_uuid(r.tenant_id),
            device_id: DeviceId::from_uuid(r.device_id),
            sources: serde_json::from_str(&r.sources).map_err(|e| corrupt(&e.to_string()))?,
            since: r.since.map(ts),
            until: r.until.map(ts),
            lines: u32::try_from(r.lines).map_err(|_| corrupt("lines"))?,
            max_bytes: u64::try_from(r.max_bytes).map_err(|_| corrupt("max_bytes"))?,
            follow: r.follow != 0,
            created_by: r.created_by,
            created_at: ts(r.created_at),
            expires_at: ts(r.expires_at),
            state: LogState::parse(&r.state).ok_or_else(|| corrupt("state"))?,
            sent_at: r.sent_at.map(ts),
            finished_at: r.finished_at.map(ts),
            updated_at: ts(r.updated_at),
            error: r.error,
            size: r
                .size
                .map(u64::try_from)
                .transpose()
                .map_err(|_| corrupt("size"))?,
        })
    }
}

macro_rules! impl_log_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::LogStore for $store {
            async fn create_log_request(
                &self,
                r: &tender_core::logs::LogRequest,
            ) -> $crate::Result<()> {
                sqlx::query($crate::logs::INSERT)
                    .bind(r.tenant_id.as_uuid())
                    .bind(r.id.as_uuid())
                    .bind(r.device_id.as_uuid())
                    .bind($crate::logs::sources_json(&r.sources))
                    .bind(r.since.map(|t| t.unix_millis()))
                    .bind(r.until.map(|t| t.unix_millis()))
                    .bind(i64::from(r.lines))
                    .bind(i64::try_from(r.max_bytes).unwrap_or(i64::MAX))
                    .bind(i64::from(r.follow))
                    .bind(r.created_by.as_deref())
                    .bind(r.created_at.unix_millis())
                    .bind(r.expires_at.unix_millis())
                    .bind(r.state.as_str())
                    .bind(r.sent_at.map(|t| t.unix_millis()))
                    .bind(r.finished_at.map(|t| t.unix_millis()))
                    .bind(r.updated_at.unix_millis())
                    .bind(r.error.as_deref())
                    .bind($crate::logs::size_column(r.size))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx(&format!("log request {}", r.id), e))?;
                Ok(())
            }

            async fn log_request(
                &self,
                tenant: tender_core::TenantId,
                id: tender_core::LogRequestId,
            ) -> $crate::Result<Option<tender_core::logs::LogRequest>> {
                sqlx::query_as::<_, $crate::logs::LogRow>($crate::logs::GET)
                    .bind(tenant.as_uuid())
                    .bind(id.as_uuid())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("log request", e))?
                    .map(TryInto::try_into)
                    .transpose()
            }

            async fn device_log_requests(
                &self,
                tenant: tender_core::TenantId,
                device: tender_core::DeviceId,
                page: &tender_core::page::PageRequest<tender_core::LogRequestId>,
            ) -> $crate::Result<
                tender_core::page::Page<tender_core::logs::LogRequest, tender_core::LogRequestId>,
            > {
                let rows = sqlx::query_as::<_, $crate::logs::LogRow>($crate::logs::DEVICE_REQUESTS)
                    .bind(tenant.as_uuid())
                    .bind(device.as_uuid())
                    .bind(page.after.map(|a| *a.as_uuid()))
                    .bind(i64::from(page.limit.get()) + 1)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("device log requests", e))?;
                let items = rows
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<$crate::Result<Vec<tender_core::logs::LogRequest>>>()?;
                Ok(tender_core::page::Page::from_overfetch(
                    items,
                    page.limit,
                    |r| r.id,
                ))
            }

            async fn pending_log_requests(
                &self,
                tenant: tender_core::TenantId,
                device: tender_core::DeviceId,
                now: tender_core::Timestamp,
            ) -> $crate::Result<Vec<tender_core::logs::LogRequest>> {
                sqlx::query_as::<_, $crate::logs::LogRow>($crate::logs::PENDING)
                    .bind(tenant.as_uuid())
                    .bind(device.as_uuid())
                    .bind(now.unix_millis())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("pending log requests", e))?
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect()
            }

            async fn update_log_request(
                &self,
                expected: &tender_core::logs::LogRequest,
                new: &tender_core::logs::LogRequest,
            ) -> $crate::Result<bool> {
                let done = $crate::logs::update_query!(expected, new)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("log request", e))?;
                Ok(done.rows_affected() == 1)
            }

            async fn store_log_content(
                &self,
                expected: &tender_core::logs::LogRequest,
                ready: &tender_core::logs::LogRequest,
                gzip: &[u8],
            ) -> $crate::Result<bool> {
                let map = |e| $crate::map_sqlx(&format!("log content {}", expected.id), e);
                let mut tx = self.pool.begin().await.map_err(map)?;
                let done = $crate::logs::update_query!(expected, ready)
                    .execute(&mut *tx)
                    .await
                    .map_err(map)?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                sqlx::query($crate::logs::INSERT_CONTENT)
                    .bind(expected.tenant_id.as_uuid())
                    .bind(expected.id.as_uuid())
                    .bind(gzip)
                    .execute(&mut *tx)
                    .await
                    .map_err(map)?;
                tx.commit().await.map_err(map)?;
                Ok(true)
            }

            async fn log_content(
                &self,
                tenant: tender_core::TenantId,
                id: tender_core::LogRequestId,
            ) -> $crate::Result<Option<Vec<u8>>> {
                sqlx::query_scalar::<_, Vec<u8>>($crate::logs::CONTENT)
                    .bind(tenant.as_uuid())
                    .bind(id.as_uuid())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("log content", e))
            }

            async fn expire_log_requests(
                &self,
                now: tender_core::Timestamp,
            ) -> $crate::Result<u64> {
                Ok(sqlx::query($crate::logs::EXPIRE)
                    .bind(now.unix_millis())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("expire log requests", e))?
                    .rows_affected())
            }

            async fn prune_log_requests(
                &self,
                finished_before: tender_core::Timestamp,
            ) -> $crate::Result<u64> {
                Ok(sqlx::query($crate::logs::PRUNE)
                    .bind(finished_before.unix_millis())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("prune log requests", e))?
                    .rows_affected())
            }
        }
    };
}

pub(crate) use impl_log_store;

/// The compare-and-set of [`UPDATE`], bound (a macro: the query's type is the adapter's).
macro_rules! update_query {
    ($expected:expr, $new:expr) => {
        sqlx::query($crate::logs::UPDATE)
            .bind($expected.tenant_id.as_uuid())
            .bind($expected.id.as_uuid())
            .bind($expected.state.as_str())
            .bind($expected.updated_at.unix_millis())
            .bind($new.state.as_str())
            .bind($new.sent_at.map(|t| t.unix_millis()))
            .bind($new.finished_at.map(|t| t.unix_millis()))
            .bind($new.updated_at.unix_millis())
            .bind($new.error.as_deref())
            .bind($crate::logs::size_column($new.size))
    };
}

pub(crate) use update_query;
