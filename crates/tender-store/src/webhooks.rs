//! The webhooks part of the port: [`WebhookStore`](crate::WebhookStore)'s SQL, rows and the
//! shared implementation for both adapters (`0019_webhooks.sql`).
//!
//! Invariants: a webhook's event cursor only moves by compare-and-set, in the same transaction
//! that inserts the deliveries for the events it passes over (the transaction starts with that
//! write); a delivery's outcome is recorded by compare-and-set on the state and attempts read;
//! only the oldest queued delivery of an enabled webhook is ever claimed, so one endpoint gets
//! its deliveries in order.

use tender_core::page::{Page, PageRequest};
use tender_core::webhook::{
    Delivery, DeliveryState, KindFilter, LogEvent, Webhook, WebhookSecret, WebhookUrl,
};
use tender_core::{DeliveryId, DeviceId, GroupId, TenantId, Timestamp, WebhookId};
use uuid::Uuid;

use crate::StoreError;

/// The webhooks part of the port (`0019_webhooks.sql`): endpoints with their event cursor, and
/// the deliveries to them.
#[async_trait::async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Inserts into `webhook.tenant_id`, with the cursor at the tenant's latest event (a new
    /// webhook receives what happens from now on). Conflict when the id is taken.
    async fn create_webhook(&self, webhook: &Webhook) -> crate::Result<()>;
    async fn webhook(&self, tenant: TenantId, id: WebhookId) -> crate::Result<Option<Webhook>>;
    /// Oldest first.
    async fn list_webhooks(
        &self,
        tenant: TenantId,
        page: &PageRequest<WebhookId>,
    ) -> crate::Result<Page<Webhook, WebhookId>>;
    /// Replaces name, URL, filter, enabled, secret and `updated_at`. NotFound when missing.
    async fn update_webhook(&self, webhook: &Webhook) -> crate::Result<()>;
    /// Deletes the webhook and its deliveries. NotFound when missing.
    async fn delete_webhook(&self, tenant: TenantId, id: WebhookId) -> crate::Result<()>;
    /// Every enabled webhook of every tenant with its event cursor (for the dispatcher).
    async fn enabled_webhooks(&self) -> crate::Result<Vec<(Webhook, u64)>>;
    /// The tenant's events after id `after`, oldest first, at most `limit`, with their kinds as
    /// stored (also kinds this build does not know).
    async fn webhook_events(
        &self,
        tenant: TenantId,
        after: u64,
        limit: u32,
    ) -> crate::Result<Vec<LogEvent>>;
    /// Moves the webhook's cursor from `cursor_from` to `cursor_to` and inserts `deliveries`, in
    /// one transaction. `Ok(false)` (nothing written) when the cursor is no longer
    /// `cursor_from` or the webhook is gone.
    async fn enqueue_deliveries(
        &self,
        tenant: TenantId,
        webhook: WebhookId,
        cursor_from: u64,
        cursor_to: u64,
        deliveries: &[Delivery],
    ) -> crate::Result<bool>;
    /// Inserts one delivery (a test ping). NotFound when the webhook does not exist.
    async fn insert_delivery(&self, delivery: &Delivery) -> crate::Result<()>;
    /// Every tenant: the oldest queued delivery of each enabled webhook, if due at `now`, at
    /// most `limit`, each leased until `lease_until` (its next attempt moves there, so no
    /// other claim takes it while it is being sent). Returned as read, before the lease.
    async fn claim_due_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> crate::Result<Vec<Delivery>>;
    /// Writes the delivery's state, attempts, next attempt, last status and error if it is
    /// still in `read_state` with `read_attempts` (compare-and-set); returns whether it was.
    async fn record_delivery(
        &self,
        delivery: &Delivery,
        read_state: DeliveryState,
        read_attempts: u32,
    ) -> crate::Result<bool>;
    async fn delivery(
        &self,
        tenant: TenantId,
        webhook: WebhookId,
        id: DeliveryId,
    ) -> crate::Result<Option<Delivery>>;
    /// Newest first.
    async fn list_deliveries(
        &self,
        tenant: TenantId,
        webhook: WebhookId,
        page: &PageRequest<DeliveryId>,
    ) -> crate::Result<Page<Delivery, DeliveryId>>;
    /// Pending and failed deliveries of every tenant (a gauge).
    async fn count_queued_deliveries(&self) -> crate::Result<u64>;
}

/// Queues a delivery again (the core's [`Delivery::redeliver`], then a compare-and-set).
/// NotFound when missing; Conflict when it is already pending or changed meanwhile.
pub async fn redeliver(
    store: &dyn WebhookStore,
    tenant: TenantId,
    webhook: WebhookId,
    id: DeliveryId,
    now: Timestamp,
) -> crate::Result<Delivery> {
    let mut d = store
        .delivery(tenant, webhook, id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("delivery {id}")))?;
    let (state, attempts) = (d.state, d.attempts);
    d.redeliver(now)
        .map_err(|e| StoreError::Conflict(e.to_string()))?;
    if !store.record_delivery(&d, state, attempts).await? {
        return Err(StoreError::Conflict(format!(
            "delivery {id} changed meanwhile; try again"
        )));
    }
    Ok(d)
}

pub(crate) const INSERT_WEBHOOK: &str = "INSERT INTO webhooks (tenant_id, id, name, url, filter, \
     enabled, secret, event_cursor, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, \
     (SELECT COALESCE(MAX(id), 0) FROM events WHERE tenant_id = $1), $8, $9)";
pub(crate) const WEBHOOK: &str = "SELECT tenant_id, id, name, url, filter, enabled, secret, \
     event_cursor, created_at, updated_at FROM webhooks WHERE tenant_id = $1 AND id = $2";
pub(crate) const LIST_WEBHOOKS: &str = "SELECT tenant_id, id, name, url, filter, enabled, secret, \
     event_cursor, created_at, updated_at FROM webhooks WHERE tenant_id = $1 \
     AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3";
pub(crate) const ENABLED_WEBHOOKS: &str = "SELECT tenant_id, id, name, url, filter, enabled, \
     secret, event_cursor, created_at, updated_at FROM webhooks WHERE enabled ORDER BY tenant_id, id";
pub(crate) const UPDATE_WEBHOOK: &str = "UPDATE webhooks SET name = $3, url = $4, filter = $5, \
     enabled = $6, secret = $7, updated_at = $8 WHERE tenant_id = $1 AND id = $2";
pub(crate) const DELETE_WEBHOOK: &str = "DELETE FROM webhooks WHERE tenant_id = $1 AND id = $2";
pub(crate) const MOVE_CURSOR: &str = "UPDATE webhooks SET event_cursor = $4 \
     WHERE tenant_id = $1 AND id = $2 AND event_cursor = $3";
pub(crate) const EVENTS_AFTER: &str = "SELECT id, tenant_id, at, kind, device_id, group_id, data \
     FROM events WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3";

macro_rules! delivery_columns {
    () => {
        "id, tenant_id, webhook_id, event_id, kind, body, state, attempts, next_attempt_at, \
         last_status, last_error, created_at, updated_at"
    };
}

pub(crate) const INSERT_DELIVERY: &str = concat!(
    "INSERT INTO webhook_deliveries (",
    delivery_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
);
pub(crate) const DELIVERY: &str = concat!(
    "SELECT ",
    delivery_columns!(),
    " FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2 AND id = $3"
);
/// Newest first: $1 tenant, $2 webhook, $3 before this delivery or NULL, $4 limit.
pub(crate) const LIST_DELIVERIES: &str = concat!(
    "SELECT ",
    delivery_columns!(),
    " FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2 \
     AND ($3 IS NULL OR seq < (SELECT seq FROM webhook_deliveries WHERE id = $3)) \
     ORDER BY seq DESC LIMIT $4"
);
/// The oldest queued delivery of each enabled webhook, when it is due at $1.
pub(crate) const DUE_DELIVERIES: &str = "SELECT d.id, d.tenant_id, d.webhook_id, d.event_id, \
     d.kind, d.body, d.state, d.attempts, d.next_attempt_at, d.last_status, d.last_error, \
     d.created_at, d.updated_at FROM webhook_deliveries d JOIN webhooks w \
     ON w.tenant_id = d.tenant_id AND w.id = d.webhook_id \
     WHERE w.enabled AND d.state IN ('pending', 'failed') AND d.next_attempt_at <= $1 \
     AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE e.tenant_id = d.tenant_id \
     AND e.webhook_id = d.webhook_id AND e.state IN ('pending', 'failed') AND e.seq < d.seq) \
     ORDER BY d.seq LIMIT $2";
pub(crate) const LEASE: &str = "UPDATE webhook_deliveries SET next_attempt_at = $2 \
     WHERE id = $1 AND state = $3 AND attempts = $4 AND next_attempt_at = $5";
pub(crate) const RECORD: &str = "UPDATE webhook_deliveries SET state = $2, attempts = $3, \
     next_attempt_at = $4, last_status = $5, last_error = $6, updated_at = $7 \
     WHERE id = $1 AND state = $8 AND attempts = $9";
pub(crate) const COUNT_QUEUED: &str =
    "SELECT COUNT(*) FROM webhook_deliveries WHERE state IN ('pending', 'failed')";

#[derive(sqlx::FromRow)]
pub(crate) struct WebhookRow {
    tenant_id: Uuid,
    id: Uuid,
    name: String,
    url: String,
    filter: String,
    enabled: bool,
    secret: String,
    event_cursor: i64,
    created_at: i64,
    updated_at: i64,
}

impl WebhookRow {
    pub(crate) fn into_webhook(self) -> crate::Result<(Webhook, u64)> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("webhook {}: {what}", self.id));
        let webhook = Webhook {
            id: WebhookId::from_uuid(self.id),
            tenant_id: TenantId::from_uuid(self.tenant_id),
            url: WebhookUrl::parse(&self.url).map_err(|_| corrupt("url"))?,
            filter: KindFilter::parse(&self.filter).map_err(|_| corrupt("filter"))?,
            enabled: self.enabled,
            secret: WebhookSecret::from_stored(&self.secret).map_err(|_| corrupt("secret"))?,
            created_at: Timestamp::from_unix_millis(self.created_at),
            updated_at: Timestamp::from_unix_millis(self.updated_at),
            name: self.name.clone(),
        };
        let cursor = u64::try_from(self.event_cursor).map_err(|_| corrupt("event_cursor"))?;
        Ok((webhook, cursor))
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct DeliveryRow {
    id: Uuid,
    tenant_id: Uuid,
    webhook_id: Uuid,
    event_id: Option<i64>,
    kind: String,
    body: String,
    state: String,
    attempts: i64,
    next_attempt_at: Option<i64>,
    last_status: Option<i64>,
    last_error: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<DeliveryRow> for Delivery {
    type Error = StoreError;

    fn try_from(r: DeliveryRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("delivery {}: {what}", r.id));
        Ok(Delivery {
            id: DeliveryId::from_uuid(r.id),
            tenant_id: TenantId::from_uuid(r.tenant_id),
            webhook_id: WebhookId::from_uuid(r.webhook_id),
            event_id: r
                .event_id
                .map(u64::try_from)
                .transpose()
                .map_err(|_| corrupt("event_id"))?,
            state: DeliveryState::parse(&r.state).ok_or_else(|| corrupt("state"))?,
            attempts: u32::try_from(r.attempts).map_err(|_| corrupt("attempts"))?,
            next_attempt_at: r.next_attempt_at.map(Timestamp::from_unix_millis),
            last_status: r
                .last_status
                .map(u16::try_from)
                .transpose()
                .map_err(|_| corrupt("last_status"))?,
            last_error: r.last_error,
            created_at: Timestamp::from_unix_millis(r.created_at),
            updated_at: Timestamp::from_unix_millis(r.updated_at),
            kind: r.kind,
            body: r.body,
        })
    }
}

pub(crate) type EventRow = (i64, Uuid, i64, String, Option<Uuid>, Option<Uuid>, String);

pub(crate) fn log_event(row: EventRow) -> crate::Result<LogEvent> {
    let (id, tenant, at, kind, device, group, data) = row;
    Ok(LogEvent {
        id: u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("event {id}")))?,
        tenant_id: TenantId::from_uuid(tenant),
        at: Timestamp::from_unix_millis(at),
        kind,
        device_id: device.map(DeviceId::from_uuid),
        group_id: group.map(GroupId::from_uuid),
        data: tender_core::twin::from_text(&data)
            .map_err(|e| StoreError::Corrupt(format!("event {id}: {e}")))?,
    })
}

pub(crate) fn db_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

macro_rules! bind_delivery {
    ($q:expr, $d:expr) => {
        $q.bind($d.id.as_uuid())
            .bind($d.tenant_id.as_uuid())
            .bind($d.webhook_id.as_uuid())
            .bind($d.event_id.map($crate::webhooks::db_u64))
            .bind(&$d.kind)
            .bind(&$d.body)
            .bind($d.state.as_str())
            .bind(i64::from($d.attempts))
            .bind($d.next_attempt_at.map(|t| t.unix_millis()))
            .bind($d.last_status.map(i64::from))
            .bind($d.last_error.as_deref())
            .bind($d.created_at.unix_millis())
            .bind($d.updated_at.unix_millis())
    };
}
pub(crate) use bind_delivery;

macro_rules! impl_webhook_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::WebhookStore for $store {
            async fn create_webhook(
                &self,
                w: &tender_core::webhook::Webhook,
            ) -> $crate::Result<()> {
                sqlx::query($crate::webhooks::INSERT_WEBHOOK)
                    .bind(w.tenant_id.as_uuid())
                    .bind(w.id.as_uuid())
                    .bind(&w.name)
                    .bind(w.url.as_str())
                    .bind(w.filter.to_string())
                    .bind(w.enabled)
                    .bind(w.secret.as_str())
                    .bind(w.created_at.unix_millis())
                    .bind(w.updated_at.unix_millis())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx(&format!("webhook {}", w.id), e))?;
                Ok(())
            }

            async fn webhook(
                &self,
                tenant: tender_core::TenantId,
                id: tender_core::WebhookId,
            ) -> $crate::Result<Option<tender_core::webhook::Webhook>> {
                sqlx::query_as::<_, $crate::webhooks::WebhookRow>($crate::webhooks::WEBHOOK)
                    .bind(tenant.as_uuid())
                    .bind(id.as_uuid())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("webhook", e))?
                    .map(|r| r.into_webhook().map(|(w, _)| w))
                    .transpose()
            }

            async fn list_webhooks(
                &self,
                tenant: tender_core::TenantId,
                page: &tender_core::page::PageRequest<tender_core::WebhookId>,
            ) -> $crate::Result<
                tender_core::page::Page<tender_core::webhook::Webhook, tender_core::WebhookId>,
            > {
                let rows = sqlx::query_as::<_, $crate::webhooks::WebhookRow>(
                    $crate::webhooks::LIST_WEBHOOKS,
                )
                .bind(tenant.as_uuid())
                .bind(page.after.map(|a| *a.as_uuid()))
                .bind(i64::from(page.limit.get()) + 1)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("webhooks", e))?;
                let items = rows
                    .into_iter()
                    .map(|r| r.into_webhook().map(|(w, _)| w))
                    .collect::<$crate::Result<Vec<_>>>()?;
                Ok(tender_core::page::Page::from_overfetch(
                    items,
                    page.limit,
                    |w| w.id,
                ))
            }

            async fn update_webhook(
                &self,
                w: &tender_core::webhook::Webhook,
            ) -> $crate::Result<()> {
                let done = sqlx::query($crate::webhooks::UPDATE_WEBHOOK)
                    .bind(w.tenant_id.as_uuid())
                    .bind(w.id.as_uuid())
                    .bind(&w.name)
                    .bind(w.url.as_str())
                    .bind(w.filter.to_string())
                    .bind(w.enabled)
                    .bind(w.secret.as_str())
                    .bind(w.updated_at.unix_millis())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("webhook", e))?;
                if done.rows_affected() == 0 {
                    return Err($crate::StoreError::NotFound(format!("webhook {}", w.id)));
                }
                Ok(())
            }

            async fn delete_webhook(
                &self,
                tenant: tender_core::TenantId,
                id: tender_core::WebhookId,
            ) -> $crate::Result<()> {
                let done = sqlx::query($crate::webhooks::DELETE_WEBHOOK)
                    .bind(tenant.as_uuid())
                    .bind(id.as_uuid())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("webhook", e))?;
                if done.rows_affected() == 0 {
                    return Err($crate::StoreError::NotFound(format!("webhook {id}")));
                }
                Ok(())
            }

            async fn enabled_webhooks(
                &self,
            ) -> $crate::Result<Vec<(tender_core::webhook::Webhook, u64)>> {
                sqlx::query_as::<_, $crate::webhooks::WebhookRow>(
                    $crate::webhooks::ENABLED_WEBHOOKS,
                )
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("enabled webhooks", e))?
                .into_iter()
                .map($crate::webhooks::WebhookRow::into_webhook)
                .collect()
            }

            async fn webhook_events(
                &self,
                tenant: tender_core::TenantId,
                after: u64,
                limit: u32,
            ) -> $crate::Result<Vec<tender_core::webhook::LogEvent>> {
                let rows: Vec<$crate::webhooks::EventRow> =
                    sqlx::query_as($crate::webhooks::EVENTS_AFTER)
                        .bind(tenant.as_uuid())
                        .bind($crate::webhooks::db_u64(after))
                        .bind(i64::from(limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(|e| $crate::map_sqlx("events", e))?;
                rows.into_iter().map($crate::webhooks::log_event).collect()
            }

            async fn enqueue_deliveries(
                &self,
                tenant: tender_core::TenantId,
                webhook: tender_core::WebhookId,
                cursor_from: u64,
                cursor_to: u64,
                deliveries: &[tender_core::webhook::Delivery],
            ) -> $crate::Result<bool> {
                let map = |e| $crate::map_sqlx("webhook deliveries", e);
                let mut tx = self.pool.begin().await.map_err(map)?;
                let moved = sqlx::query($crate::webhooks::MOVE_CURSOR)
                    .bind(tenant.as_uuid())
                    .bind(webhook.as_uuid())
                    .bind($crate::webhooks::db_u64(cursor_from))
                    .bind($crate::webhooks::db_u64(cursor_to))
                    .execute(&mut *tx)
                    .await
                    .map_err(map)?;
                if moved.rows_affected() == 0 {
                    tx.rollback().await.map_err(map)?;
                    return Ok(false);
                }
                for d in deliveries {
                    if d.tenant_id != tenant || d.webhook_id != webhook {
                        tx.rollback().await.map_err(map)?;
                        return Err($crate::StoreError::Internal(format!(
                            "delivery {} is not for webhook {webhook}",
                            d.id
                        )));
                    }
                    $crate::webhooks::bind_delivery!(
                        sqlx::query($crate::webhooks::INSERT_DELIVERY),
                        d
                    )
                    .execute(&mut *tx)
                    .await
                    .map_err(map)?;
                }
                tx.commit().await.map_err(map)?;
                Ok(true)
            }

            async fn insert_delivery(
                &self,
                d: &tender_core::webhook::Delivery,
            ) -> $crate::Result<()> {
                $crate::webhooks::bind_delivery!(sqlx::query($crate::webhooks::INSERT_DELIVERY), d)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx(&format!("delivery {}", d.id), e))?;
                Ok(())
            }

            async fn claim_due_deliveries(
                &self,
                now: tender_core::Timestamp,
                lease_until: tender_core::Timestamp,
                limit: u32,
            ) -> $crate::Result<Vec<tender_core::webhook::Delivery>> {
                let rows = sqlx::query_as::<_, $crate::webhooks::DeliveryRow>(
                    $crate::webhooks::DUE_DELIVERIES,
                )
                .bind(now.unix_millis())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("due deliveries", e))?;
                let mut claimed = Vec::with_capacity(rows.len());
                for row in rows {
                    let d: tender_core::webhook::Delivery = row.try_into()?;
                    let done = sqlx::query($crate::webhooks::LEASE)
                        .bind(d.id.as_uuid())
                        .bind(lease_until.unix_millis())
                        .bind(d.state.as_str())
                        .bind(i64::from(d.attempts))
                        .bind(d.next_attempt_at.map(|t| t.unix_millis()))
                        .execute(&self.pool)
                        .await
                        .map_err(|e| $crate::map_sqlx("claiming a delivery", e))?;
                    if done.rows_affected() == 1 {
                        claimed.push(d);
                    }
                }
                Ok(claimed)
            }

            async fn record_delivery(
                &self,
                d: &tender_core::webhook::Delivery,
                read_state: tender_core::webhook::DeliveryState,
                read_attempts: u32,
            ) -> $crate::Result<bool> {
                let done = sqlx::query($crate::webhooks::RECORD)
                    .bind(d.id.as_uuid())
                    .bind(d.state.as_str())
                    .bind(i64::from(d.attempts))
                    .bind(d.next_attempt_at.map(|t| t.unix_millis()))
                    .bind(d.last_status.map(i64::from))
                    .bind(d.last_error.as_deref())
                    .bind(d.updated_at.unix_millis())
                    .bind(read_state.as_str())
                    .bind(i64::from(read_attempts))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("delivery", e))?;
                Ok(done.rows_affected() == 1)
            }

            async fn delivery(
                &self,
                tenant: tender_core::TenantId,
                webhook: tender_core::WebhookId,
                id: tender_core::DeliveryId,
            ) -> $crate::Result<Option<tender_core::webhook::Delivery>> {
                sqlx::query_as::<_, $crate::webhooks::DeliveryRow>($crate::webhooks::DELIVERY)
                    .bind(tenant.as_uuid())
                    .bind(webhook.as_uuid())
                    .bind(id.as_uuid())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("delivery", e))?
                    .map(TryInto::try_into)
                    .transpose()
            }

            async fn list_deliveries(
                &self,
                tenant: tender_core::TenantId,
                webhook: tender_core::WebhookId,
                page: &tender_core::page::PageRequest<tender_core::DeliveryId>,
            ) -> $crate::Result<
                tender_core::page::Page<tender_core::webhook::Delivery, tender_core::DeliveryId>,
            > {
                let rows = sqlx::query_as::<_, $crate::webhooks::DeliveryRow>(
                    $crate::webhooks::LIST_DELIVERIES,
                )
                .bind(tenant.as_uuid())
                .bind(webhook.as_uuid())
                .bind(page.after.map(|a| *a.as_uuid()))
                .bind(i64::from(page.limit.get()) + 1)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("deliveries", e))?;
                let items = rows
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<$crate::Result<Vec<tender_core::webhook::Delivery>>>()?;
                Ok(tender_core::page::Page::from_overfetch(
                    items,
                    page.limit,
                    |d| d.id,
                ))
            }

            async fn count_queued_deliveries(&self) -> $crate::Result<u64> {
                let n: i64 = sqlx::query_scalar($crate::webhooks::COUNT_QUEUED)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("queued deliveries", e))?;
                Ok(u64::try_from(n).unwrap_or(0))
            }
        }
    };
}
pub(crate) use impl_webhook_store;
