//! The alerts part of the port: [`AlertStore`](crate::AlertStore)'s SQL, rows and the shared
//! implementation for both adapters (`0020_alerts.sql`). A rule's scope and condition are kept
//! as their canonical text and parsed back by the core when read.

use tender_core::alert::{
    Alert, AlertRule, AlertState, Condition, Scope, Severity, parse_condition,
};
use tender_core::{AlertId, AlertRuleId, DeviceId, TenantId, Timestamp};
use uuid::Uuid;

use crate::StoreError;

/// Which alerts a listing covers (every field optional).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertFilter {
    pub state: Option<AlertState>,
    /// Only open alerts (firing or acknowledged); combines with `state`.
    pub open: bool,
    pub severity: Option<Severity>,
    pub device: Option<DeviceId>,
    pub rule: Option<AlertRuleId>,
}

macro_rules! rule_columns {
    () => {
        "tenant_id, id, name, severity, scope, condition, enabled, created_at, updated_at, \
         created_by"
    };
}
macro_rules! alert_columns {
    () => {
        "tenant_id, id, rule_id, device_id, rule_name, severity, state, fired_at, value, reason, \
         acknowledged_at, acknowledged_by, ack_note, resolved_at, resolve_reason"
    };
}

pub(crate) const INSERT_RULE: &str = concat!(
    "INSERT INTO alert_rules (",
    rule_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
);
pub(crate) const RULE: &str = concat!(
    "SELECT ",
    rule_columns!(),
    " FROM alert_rules WHERE tenant_id = $1 AND id = $2"
);
/// Newest first: $1 tenant, $2 before this id or NULL, $3 limit.
pub(crate) const LIST_RULES: &str = concat!(
    "SELECT ",
    rule_columns!(),
    " FROM alert_rules WHERE tenant_id = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
);
pub(crate) const ENABLED_RULES: &str = concat!(
    "SELECT ",
    rule_columns!(),
    " FROM alert_rules WHERE enabled ORDER BY tenant_id, id"
);
pub(crate) const UPDATE_RULE: &str = "UPDATE alert_rules SET name = $3, severity = $4, \
     enabled = $5, updated_at = $6 WHERE tenant_id = $1 AND id = $2";
pub(crate) const DELETE_RULE: &str = "DELETE FROM alert_rules WHERE tenant_id = $1 AND id = $2";
/// Resolves the open alerts of a rule: $1 tenant, $2 rule, $3 at, $4 reason.
pub(crate) const RESOLVE_RULE_ALERTS: &str = concat!(
    "UPDATE alerts SET state = 'resolved', resolved_at = $3, resolve_reason = $4 \
     WHERE tenant_id = $1 AND rule_id = $2 AND state <> 'resolved' RETURNING ",
    alert_columns!()
);
pub(crate) const INSERT_ALERT: &str = concat!(
    "INSERT INTO alerts (",
    alert_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
);
pub(crate) const ALERT: &str = concat!(
    "SELECT ",
    alert_columns!(),
    " FROM alerts WHERE tenant_id = $1 AND id = $2"
);
/// Compare-and-set on the state read: the lifecycle fields only.
pub(crate) const UPDATE_ALERT: &str = "UPDATE alerts SET state = $3, acknowledged_at = $4, \
     acknowledged_by = $5, ack_note = $6, resolved_at = $7, resolve_reason = $8 \
     WHERE tenant_id = $1 AND id = $2 AND state = $9";
/// Newest first: $1 tenant, $2 state, $3 open only, $4 severity, $5 device, $6 rule, $7 before
/// this id, $8 limit.
pub(crate) const LIST_ALERTS: &str = concat!(
    "SELECT ",
    alert_columns!(),
    " FROM alerts WHERE tenant_id = $1 AND ($2 IS NULL OR state = $2) \
     AND ($3 = 0 OR state <> 'resolved') AND ($4 IS NULL OR severity = $4) \
     AND ($5 IS NULL OR device_id = $5) AND ($6 IS NULL OR rule_id = $6) \
     AND ($7 IS NULL OR id < $7) ORDER BY id DESC LIMIT $8"
);
pub(crate) const OPEN_ALERTS: &str = concat!(
    "SELECT ",
    alert_columns!(),
    " FROM alerts WHERE state <> 'resolved' ORDER BY tenant_id, id"
);

#[derive(sqlx::FromRow)]
pub(crate) struct RuleRow {
    tenant_id: Uuid,
    id: Uuid,
    name: String,
    severity: String,
    scope: String,
    condition: String,
    enabled: bool,
    created_at: i64,
    updated_at: i64,
    created_by: Option<String>,
}

impl TryFrom<RuleRow> for AlertRule {
    type Error = StoreError;

    fn try_from(r: RuleRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("alert rule {}: {what}", r.id));
        let condition: Condition =
            parse_condition(&r.condition).map_err(|e| corrupt(&format!("condition {e}")))?;
        let scope = Scope::from_text(&r.scope).map_err(|e| corrupt(&format!("scope: {e}")))?;
        Ok(AlertRule {
            id: AlertRuleId::from_uuid(r.id),
            tenant_id: TenantId::from_uuid(r.tenant_id),
            severity: Severity::parse(&r.severity).ok_or_else(|| corrupt("severity"))?,
            name: r.name,
            scope,
            condition,
            enabled: r.enabled,
            created_at: Timestamp::from_unix_millis(r.created_at),
            updated_at: Timestamp::from_unix_millis(r.updated_at),
            created_by: r.created_by,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AlertRow {
    tenant_id: Uuid,
    id: Uuid,
    rule_id: Uuid,
    device_id: Uuid,
    rule_name: String,
    severity: String,
    state: String,
    fired_at: i64,
    value: Option<f64>,
    reason: String,
    acknowledged_at: Option<i64>,
    acknowledged_by: Option<String>,
    ack_note: Option<String>,
    resolved_at: Option<i64>,
    resolve_reason: Option<String>,
}

impl TryFrom<AlertRow> for Alert {
    type Error = StoreError;

    fn try_from(r: AlertRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("alert {}: {what}", r.id));
        Ok(Alert {
            id: AlertId::from_uuid(r.id),
            tenant_id: TenantId::from_uuid(r.tenant_id),
            rule_id: AlertRuleId::from_uuid(r.rule_id),
            device_id: DeviceId::from_uuid(r.device_id),
            severity: Severity::parse(&r.severity).ok_or_else(|| corrupt("severity"))?,
            state: AlertState::parse(&r.state).ok_or_else(|| corrupt("state"))?,
            rule_name: r.rule_name,
            fired_at: Timestamp::from_unix_millis(r.fired_at),
            value: r.value,
            reason: r.reason,
            acknowledged_at: r.acknowledged_at.map(Timestamp::from_unix_millis),
            acknowledged_by: r.acknowledged_by,
            ack_note: r.ack_note,
            resolved_at: r.resolved_at.map(Timestamp::from_unix_millis),
            resolve_reason: r.resolve_reason,
        })
    }
}

pub(crate) fn alerts_of(rows: Vec<AlertRow>) -> crate::Result<Vec<Alert>> {
    rows.into_iter().map(TryInto::try_into).collect()
}

macro_rules! impl_alert_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::AlertStore for $store {
            async fn create_alert_rule(
                &self,
                r: &tender_core::alert::AlertRule,
            ) -> $crate::Result<()> {
                sqlx::query($crate::alerts::INSERT_RULE)
                    .bind(r.tenant_id.as_uuid())
                    .bind(r.id.as_uuid())
                    .bind(&r.name)
                    .bind(r.severity.as_str())
                    .bind(r.scope.to_text())
                    .bind(r.condition.to_string())
                    .bind(r.enabled)
                    .bind(r.created_at.unix_millis())
                    .bind(r.updated_at.unix_millis())
                    .bind(r.created_by.as_deref())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx(&format!("alert rule {:?}", r.name), e))?;
                Ok(())
            }

            async fn alert_rule(
                &self,
                tenant: tender_core::TenantId,
                id: tender_core::AlertRuleId,
            ) -> $crate::Result<Option<tender_core::alert::AlertRule>> {
                sqlx::query_as::<_, $crate::alerts::RuleRow>($crate::alerts::RULE)
                    .bind(tenant.as_uuid())
                    .bind(id.as_uuid())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("alert rule", e))?
                    .map(TryInto::try_into)
                    .transpose()
            }

            async fn list_alert_rules(
                &self,
                tenant: tender_core::TenantId,
                page: &tender_core::page::PageRequest<tender_core::AlertRuleId>,
            ) -> $crate::Result<
                tender_core::page::Page<tender_core::alert::AlertRule, tender_core::AlertRuleId>,
            > {
                let rows = sqlx::query_as::<_, $crate::alerts::RuleRow>($crate::alerts::LIST_RULES)
                    .bind(tenant.as_uuid())
                    .bind(page.after.map(|a| *a.as_uuid()))
                    .bind(i64::from(page.limit.get()) + 1)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("alert rules", e))?;
                let items = rows
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<$crate::Result<Vec<tender_core::alert::AlertRule>>>()?;
                Ok(tender_core::page::Page::from_overfetch(
                    items,
                    page.limit,
                    |r| r.id,
                ))
            }

            async fn enabled_alert_rules(
                &self,
            ) -> $crate::Result<Vec<tender_core::alert::AlertRule>> {
                sqlx::query_as::<_, $crate::alerts::RuleRow>($crate::alerts::ENABLED_RULES)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("alert rules", e))?
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect()
            }

            async fn update_alert_rule(
                &self,
                r: &tender_core::alert::AlertRule,
            ) -> $crate::Result<()> {
                let done = sqlx::query($crate::alerts::UPDATE_RULE)
                    .bind(r.tenant_id.as_uuid())
                    .bind(r.id.as_uuid())
                    .bind(&r.name)
                    .bind(r.severity.as_str())
                    .bind(r.enabled)
                    .bind(r.updated_at.unix_millis())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx(&format!("alert rule {:?}", r.name), e))?;
                if done.rows_affected() == 0 {
                    return Err($crate::StoreError::NotFound(format!("alert rule {}", r.id)));
                }
                Ok(())
            }

            async fn delete_alert_rule(
                &self,
                tenant: tender_core::TenantId,
                id: tender_core::AlertRuleId,
                at: tender_core::Timestamp,
                reason: &str,
            ) -> $crate::Result<Vec<tender_core::alert::Alert>> {
                let map = |e| $crate::map_sqlx(&format!("alert rule {id}"), e);
                // Starts with a write (see the SQLite invariant in lib.rs).
                let mut tx = self.pool.begin().await.map_err(map)?;
                let rows = sqlx::query_as::<_, $crate::alerts::AlertRow>(
                    $crate::alerts::RESOLVE_RULE_ALERTS,
                )
                .bind(tenant.as_uuid())
                .bind(id.as_uuid())
                .bind(at.unix_millis())
                .bind(reason)
                .fetch_all(&mut *tx)
                .await
                .map_err(map)?;
                let done = sqlx::query($crate::alerts::DELETE_RULE)
                    .bind(tenant.as_uuid())
                    .bind(id.as_uuid())
                    .execute(&mut *tx)
                    .await
                    .map_err(map)?;
                if done.rows_affected() == 0 {
                    tx.rollback().await.map_err(map)?;
                    return Err($crate::StoreError::NotFound(format!("alert rule {id}")));
                }
                tx.commit().await.map_err(map)?;
                $crate::alerts::alerts_of(rows)
            }

            async fn insert_alert(&self, a: &tender_core::alert::Alert) -> $crate::Result<()> {
                sqlx::query($crate::alerts::INSERT_ALERT)
                    .bind(a.tenant_id.as_uuid())
                    .bind(a.id.as_uuid())
                    .bind(a.rule_id.as_uuid())
                    .bind(a.device_id.as_uuid())
                    .bind(&a.rule_name)
                    .bind(a.severity.as_str())
                    .bind(a.state.as_str())
                    .bind(a.fired_at.unix_millis())
                    .bind(a.value)
                    .bind(&a.reason)
                    .bind(a.acknowledged_at.map(|t| t.unix_millis()))
                    .bind(a.acknowledged_by.as_deref())
                    .bind(a.ack_note.as_deref())
                    .bind(a.resolved_at.map(|t| t.unix_millis()))
                    .bind(a.resolve_reason.as_deref())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| {
                        $crate::map_sqlx(
                            &format!(
                                "an open alert of rule {} for device {}",
                                a.rule_id, a.device_id
                            ),
                            e,
                        )
                    })?;
                Ok(())
            }

            async fn alert(
                &self,
                tenant: tender_core::TenantId,
                id: tender_core::AlertId,
            ) -> $crate::Result<Option<tender_core::alert::Alert>> {
                sqlx::query_as::<_, $crate::alerts::AlertRow>($crate::alerts::ALERT)
                    .bind(tenant.as_uuid())
                    .bind(id.as_uuid())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("alert", e))?
                    .map(TryInto::try_into)
                    .transpose()
            }

            async fn update_alert(
                &self,
                a: &tender_core::alert::Alert,
                from: tender_core::alert::AlertState,
            ) -> $crate::Result<bool> {
                let done = sqlx::query($crate::alerts::UPDATE_ALERT)
                    .bind(a.tenant_id.as_uuid())
                    .bind(a.id.as_uuid())
                    .bind(a.state.as_str())
                    .bind(a.acknowledged_at.map(|t| t.unix_millis()))
                    .bind(a.acknowledged_by.as_deref())
                    .bind(a.ack_note.as_deref())
                    .bind(a.resolved_at.map(|t| t.unix_millis()))
                    .bind(a.resolve_reason.as_deref())
                    .bind(from.as_str())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("alert", e))?;
                Ok(done.rows_affected() == 1)
            }

            async fn list_alerts(
                &self,
                tenant: tender_core::TenantId,
                filter: &$crate::alerts::AlertFilter,
                page: &tender_core::page::PageRequest<tender_core::AlertId>,
            ) -> $crate::Result<
                tender_core::page::Page<tender_core::alert::Alert, tender_core::AlertId>,
            > {
                let rows =
                    sqlx::query_as::<_, $crate::alerts::AlertRow>($crate::alerts::LIST_ALERTS)
                        .bind(tenant.as_uuid())
                        .bind(filter.state.map(|s| s.as_str()))
                        .bind(i64::from(filter.open))
                        .bind(filter.severity.map(|s| s.as_str()))
                        .bind(filter.device.map(|d| *d.as_uuid()))
                        .bind(filter.rule.map(|r| *r.as_uuid()))
                        .bind(page.after.map(|a| *a.as_uuid()))
                        .bind(i64::from(page.limit.get()) + 1)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(|e| $crate::map_sqlx("alerts", e))?;
                let items = $crate::alerts::alerts_of(rows)?;
                Ok(tender_core::page::Page::from_overfetch(
                    items,
                    page.limit,
                    |a| a.id,
                ))
            }

            async fn open_alerts(&self) -> $crate::Result<Vec<tender_core::alert::Alert>> {
                let rows =
                    sqlx::query_as::<_, $crate::alerts::AlertRow>($crate::alerts::OPEN_ALERTS)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(|e| $crate::map_sqlx("open alerts", e))?;
                $crate::alerts::alerts_of(rows)
            }
        }
    };
}
pub(crate) use impl_alert_store;
