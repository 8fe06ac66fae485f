//! The deployments part of the port: [`DeploymentStore`](crate::DeploymentStore)'s SQL, rows and
//! the shared implementation for both adapters (`0017_deployments.sql`).
//!
//! A deployment changes by compare-and-set on its `revision`; a target by compare-and-set on
//! the state, attempts and update time it was read with. The rules are the core's
//! ([`tender_core::deployment`]); the store only makes them atomic.

use tender_core::deployment::{Deployment, DeploymentState, PhaseStats, Target, TargetState};
use tender_core::{ArtifactId, DeploymentId, DeviceId, TenantId, Timestamp};
use uuid::Uuid;

use crate::StoreError;

macro_rules! deployment_columns {
    () => {
        "tenant_id, id, name, artifact_id, target, query, phases, options, state, status_reason, \
         current_phase, approved_phases, accepted_failures, created_by, created_at, start_at, \
         started_at, finished_at, updated_at, revision"
    };
}
macro_rules! dtarget_columns {
    () => {
        "tenant_id, deployment_id, device_id, phase, state, attempts, retry_at, notified_at, \
         finished_at, updated_at, progress, error, log, notifications"
    };
}

pub(crate) const INSERT_DEPLOYMENT: &str = concat!(
    "INSERT INTO deployments (",
    deployment_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
     $19, $20)"
);
/// Values bound per target by [`bind_target`].
const TARGET_VALUES: usize = 14;
/// How many targets one multi-row insert takes (14 values each: far below both backends'
/// limits on bound values).
pub(crate) const INSERT_CHUNK: usize = 500;

/// A multi-row insert of `rows` targets (1 to [`INSERT_CHUNK`]); a target already there is
/// left as it is.
pub(crate) fn insert_targets_sql(rows: usize) -> String {
    use std::fmt::Write as _;
    let mut sql = String::with_capacity(64 + rows * TARGET_VALUES * 6);
    sql.push_str(concat!(
        "INSERT INTO deployment_targets (",
        dtarget_columns!(),
        ") VALUES "
    ));
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..TARGET_VALUES {
            if c > 0 {
                sql.push_str(", ");
            }
            // Writing to a String cannot fail.
            let _ = write!(sql, "${}", r * TARGET_VALUES + c + 1);
        }
        sql.push(')');
    }
    sql.push_str(" ON CONFLICT (tenant_id, deployment_id, device_id) DO NOTHING");
    sql
}
pub(crate) const DEPLOYMENT: &str = concat!(
    "SELECT ",
    deployment_columns!(),
    " FROM deployments WHERE tenant_id = $1 AND id = $2"
);
pub(crate) const LIST_DEPLOYMENTS: &str = concat!(
    "SELECT ",
    deployment_columns!(),
    " FROM deployments WHERE tenant_id = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
);
pub(crate) const ACTIVE_DEPLOYMENTS: &str = concat!(
    "SELECT ",
    deployment_columns!(),
    " FROM deployments WHERE state IN ('scheduled', 'running') ORDER BY id"
);
/// Compare-and-set on the revision: $1 tenant, $2 id, $3 expected revision, then $4.. the
/// mutable columns.
pub(crate) const UPDATE_DEPLOYMENT: &str = "UPDATE deployments SET state = $4, \
     status_reason = $5, current_phase = $6, approved_phases = $7, accepted_failures = $8, \
     started_at = $9, finished_at = $10, updated_at = $11, revision = $3 + 1, artifact_id = $12 \
     WHERE tenant_id = $1 AND id = $2 AND revision = $3";
pub(crate) const STATS: &str = "SELECT phase, state, COUNT(*) FROM deployment_targets \
     WHERE tenant_id = $1 AND deployment_id = $2 GROUP BY phase, state";
/// $1 tenant, $2 deployment, $3 state or NULL, $4 after device or NULL, $5 limit.
pub(crate) const TARGETS: &str = concat!(
    "SELECT ",
    dtarget_columns!(),
    " FROM deployment_targets WHERE tenant_id = $1 AND deployment_id = $2 \
     AND ($3 IS NULL OR state = $3) AND ($4 IS NULL OR device_id > $4) ORDER BY device_id LIMIT $5"
);
pub(crate) const TARGET: &str = concat!(
    "SELECT ",
    dtarget_columns!(),
    " FROM deployment_targets WHERE tenant_id = $1 AND deployment_id = $2 AND device_id = $3"
);
/// Queued targets that may be notified: $1 tenant, $2 deployment, $3 highest phase, $4 now,
/// $5 max attempts, $6 limit. Earlier phases first.
pub(crate) const DUE_TARGETS: &str = concat!(
    "SELECT ",
    dtarget_columns!(),
    " FROM deployment_targets WHERE tenant_id = $1 AND deployment_id = $2 AND state = 'queued' \
     AND phase <= $3 AND (retry_at IS NULL OR retry_at <= $4) AND attempts < $5 \
     ORDER BY phase, device_id LIMIT $6"
);
/// [`DUE_TARGETS`], device ids only.
pub(crate) const DUE_DEVICES: &str = "SELECT device_id FROM deployment_targets \
     WHERE tenant_id = $1 AND deployment_id = $2 AND state = 'queued' \
     AND phase <= $3 AND (retry_at IS NULL OR retry_at <= $4) AND attempts < $5 \
     ORDER BY phase, device_id LIMIT $6";
/// $1 tenant, $2 deployment, $3 since.
pub(crate) const NOTIFIED_SINCE: &str = "SELECT COUNT(*) FROM deployment_targets \
     WHERE tenant_id = $1 AND deployment_id = $2 AND notified_at >= $3";
pub(crate) const DOWNLOADING: &str = "SELECT COUNT(*) FROM deployment_targets \
     WHERE tenant_id = $1 AND deployment_id = $2 AND state IN ('notified', 'downloading')";
/// Which of up to [`crate::sql::ONLINE_DEVICES_CHUNK`] devices are targets of a deployment:
/// $1 tenant, $2 deployment, $3 to $66 ids (a short chunk padded by repetition).
pub(crate) const TARGETS_AMONG: &str = concat!(
    "SELECT device_id FROM deployment_targets WHERE tenant_id = $1 AND deployment_id = $2 \
     AND device_id IN (",
    "$3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, ",
    "$19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, ",
    "$35, $36, $37, $38, $39, $40, $41, $42, $43, $44, $45, $46, $47, $48, $49, $50, ",
    "$51, $52, $53, $54, $55, $56, $57, $58, $59, $60, $61, $62, $63, $64, $65, $66",
    ")"
);
/// A device's unfinished targets in deployments that run: $1 tenant, $2 device.
pub(crate) const ACTIVE_FOR_DEVICE: &str = "SELECT t.tenant_id, t.deployment_id, t.device_id, \
     t.phase, t.state, t.attempts, t.retry_at, t.notified_at, t.finished_at, t.updated_at, \
     t.progress, t.error, t.log, t.notifications FROM deployment_targets t JOIN deployments d \
     ON d.tenant_id = t.tenant_id AND d.id = t.deployment_id \
     WHERE t.tenant_id = $1 AND t.device_id = $2 \
     AND t.state IN ('notified', 'downloading', 'downloaded', 'installing', 'rebooting', \
     'verifying') ORDER BY t.deployment_id";
/// A device's targets, newest deployment first: $1 tenant, $2 device, $3 before, $4 limit.
pub(crate) const DEVICE_TARGETS: &str = concat!(
    "SELECT ",
    dtarget_columns!(),
    " FROM deployment_targets WHERE tenant_id = $1 AND device_id = $2 \
     AND ($3 IS NULL OR deployment_id < $3) ORDER BY deployment_id DESC LIMIT $4"
);
/// Compare-and-set of one target: $1 tenant, $2 deployment, $3 device, $4 expected state,
/// $5 expected attempts, $6 expected updated_at, then the new values.
pub(crate) const UPDATE_TARGET: &str = "UPDATE deployment_targets SET state = $7, \
     attempts = $8, retry_at = $9, notified_at = $10, finished_at = $11, updated_at = $12, \
     progress = $13, error = $14, log = $15, notifications = $16 WHERE tenant_id = $1 AND deployment_id = $2 \
     AND device_id = $3 AND state = $4 AND attempts = $5 AND updated_at = $6";
/// How many device ids [`NOTIFY_TARGETS`] takes at once.
pub(crate) const NOTIFY_CHUNK: usize = 64;
/// `Target::notify` for due queued targets of one deployment, in bulk: $1 tenant,
/// $2 deployment, $3 now, $4 max attempts, $5 highest phase, $6..$69 device ids (a short chunk
/// padded by repetition). Returns the targets as notified.
pub(crate) const NOTIFY_TARGETS: &str = concat!(
    "UPDATE deployment_targets SET state = 'notified', attempts = attempts + 1, \
     notifications = notifications + 1, notified_at = $3, retry_at = NULL, progress = NULL, updated_at = $3 \
     WHERE tenant_id = $1 AND deployment_id = $2 AND state = 'queued' AND attempts < $4 \
     AND phase <= $5 AND (retry_at IS NULL OR retry_at <= $3) AND device_id IN (",
    "$6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, $35, $36, $37, $38, $39, $40, $41, $42, $43, $44, $45, $46, $47, $48, $49, $50, $51, $52, $53, $54, $55, $56, $57, $58, $59, $60, $61, $62, $63, $64, $65, $66, $67, $68, $69",
    ") RETURNING ",
    dtarget_columns!()
);

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> String {
    // Phases, options and lists of numbers and strings always serialise.
    serde_json::to_string(v).unwrap_or_default()
}

#[derive(sqlx::FromRow)]
pub(crate) struct DeploymentRow {
    tenant_id: Uuid,
    id: Uuid,
    name: String,
    artifact_id: Uuid,
    target: String,
    query: Option<String>,
    phases: String,
    options: String,
    state: String,
    status_reason: Option<String>,
    current_phase: i64,
    approved_phases: String,
    accepted_failures: String,
    created_by: Option<String>,
    created_at: i64,
    start_at: Option<i64>,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    updated_at: i64,
    revision: i64,
}

impl TryFrom<DeploymentRow> for Deployment {
    type Error = StoreError;
    fn try_from(r: DeploymentRow) -> Result<Deployment, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("deployment {}: {what}", r.id));
        Ok(Deployment {
            id: DeploymentId::from_uuid(r.id),
            tenant_id: TenantId::from_uuid(r.tenant_id),
            name: r.name,
            artifact_id: ArtifactId::from_uuid(r.artifact_id),
            target: r.target,
            query: r.query,
            phases: serde_json::from_str(&r.phases).map_err(|e| corrupt(&e.to_string()))?,
            options: serde_json::from_str(&r.options).map_err(|e| corrupt(&e.to_string()))?,
            state: DeploymentState::parse(&r.state).ok_or_else(|| corrupt("state"))?,
            status_reason: r.status_reason,
            current_phase: u32::try_from(r.current_phase).map_err(|_| corrupt("phase"))?,
            approved_phases: serde_json::from_str(&r.approved_phases)
                .map_err(|e| corrupt(&e.to_string()))?,
            accepted_failures: serde_json::from_str(&r.accepted_failures)
                .map_err(|e| corrupt(&e.to_string()))?,
            created_by: r.created_by,
            created_at: ts(r.created_at),
            start_at: r.start_at.map(ts),
            started_at: r.started_at.map(ts),
            finished_at: r.finished_at.map(ts),
            updated_at: ts(r.updated_at),
            revision: u64::try_from(r.revision).map_err(|_| corrupt("revision"))?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct TargetRow {
    tenant_id: Uuid,
    deployment_id: Uuid,
    device_id: Uuid,
    phase: i64,
    state: String,
    attempts: i64,
    retry_at: Option<i64>,
    notified_at: Option<i64>,
    finished_at: Option<i64>,
    updated_at: i64,
    progress: Option<i64>,
    error: Option<String>,
    log: String,
    notifications: i64,
}

impl TryFrom<TargetRow> for Target {
    type Error = StoreError;
    fn try_from(r: TargetRow) -> Result<Target, StoreError> {
        let corrupt = |what: &str| {
            StoreError::Corrupt(format!(
                "deployment {} device {}: {what}",
                r.deployment_id, r.device_id
            ))
        };
        Ok(Target {
            tenant_id: TenantId::from_uuid(r.tenant_id),
            deployment_id: DeploymentId::from_uuid(r.deployment_id),
            device_id: DeviceId::from_uuid(r.device_id),
            phase: u32::try_from(r.phase).map_err(|_| corrupt("phase"))?,
            state: TargetState::parse(&r.state).ok_or_else(|| corrupt("state"))?,
            attempts: u32::try_from(r.attempts).map_err(|_| corrupt("attempts"))?,
            notifications: u32::try_from(r.notifications).map_err(|_| corrupt("notifications"))?,
            retry_at: r.retry_at.map(ts),
            notified_at: r.notified_at.map(ts),
            finished_at: r.finished_at.map(ts),
            updated_at: ts(r.updated_at),
            progress: r.progress.and_then(|p| u8::try_from(p).ok()),
            error: r.error,
            log: serde_json::from_str(&r.log).map_err(|e| corrupt(&e.to_string()))?,
        })
    }
}

/// Folds `(phase, state, count)` rows into per-phase statistics for `phases` phases.
pub(crate) fn fold_stats(
    rows: Vec<(i64, String, i64)>,
    phases: usize,
) -> Result<Vec<PhaseStats>, StoreError> {
    let mut out = vec![PhaseStats::default(); phases];
    for (phase, state, n) in rows {
        let state = TargetState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("deployment target state {state:?}")))?;
        let i = usize::try_from(phase).unwrap_or(usize::MAX);
        if i >= out.len() {
            out.resize(i + 1, PhaseStats::default());
        }
        out[i].add(state, u32::try_from(n).unwrap_or(u32::MAX));
    }
    Ok(out)
}

macro_rules! bind_target {
    ($q:expr, $t:expr) => {
        $q.bind($t.tenant_id.as_uuid())
            .bind($t.deployment_id.as_uuid())
            .bind($t.device_id.as_uuid())
            .bind(i64::from($t.phase))
            .bind($t.state.as_str())
            .bind(i64::from($t.attempts))
            .bind($t.retry_at.map(|x| x.unix_millis()))
            .bind($t.notified_at.map(|x| x.unix_millis()))
            .bind($t.finished_at.map(|x| x.unix_millis()))
            .bind($t.updated_at.unix_millis())
            .bind($t.progress.map(i64::from))
            .bind($t.error.as_deref())
            .bind($crate::deployments::json(&$t.log))
            .bind(i64::from($t.notifications))
    };
}
pub(crate) use bind_target;

macro_rules! impl_deployment_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::DeploymentStore for $store {
            async fn create_deployment(
                &self,
                d: &tender_core::deployment::Deployment,
                targets: &[tender_core::deployment::Target],
            ) -> $crate::Result<()> {
                use $crate::deployments::json;
                let map = |e| $crate::map_sqlx(&format!("deployment {}", d.id), e);
                let mut tx = self.pool.begin().await.map_err(map)?;
                sqlx::query($crate::deployments::INSERT_DEPLOYMENT)
                    .bind(d.tenant_id.as_uuid())
                    .bind(d.id.as_uuid())
                    .bind(&d.name)
                    .bind(d.artifact_id.as_uuid())
                    .bind(&d.target)
                    .bind(d.query.as_deref())
                    .bind(json(&d.phases))
                    .bind(json(&d.options))
                    .bind(d.state.as_str())
                    .bind(d.status_reason.as_deref())
                    .bind(i64::from(d.current_phase))
                    .bind(json(&d.approved_phases))
                    .bind(json(&d.accepted_failures))
                    .bind(d.created_by.as_deref())
                    .bind(d.created_at.unix_millis())
                    .bind(d.start_at.map(|x| x.unix_millis()))
                    .bind(d.started_at.map(|x| x.unix_millis()))
                    .bind(d.finished_at.map(|x| x.unix_millis()))
                    .bind(d.updated_at.unix_millis())
                    .bind(i64::try_from(d.revision).unwrap_or(0))
                    .execute(&mut *tx)
                    .await
                    .map_err(map)?;
                for chunk in targets.chunks($crate::deployments::INSERT_CHUNK) {
                    let sql = $crate::deployments::insert_targets_sql(chunk.len());
                    // Only placeholders are generated: no value is in the text.
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
                    for t in chunk {
                        q = $crate::deployments::bind_target!(q, t);
                    }
                    q.execute(&mut *tx)
                        .await
                        .map_err(|e| $crate::map_sqlx("deployment targets", e))?;
                }
                tx.commit().await.map_err(map)?;
                Ok(())
            }

            async fn add_deployment_targets(
                &self,
                targets: &[tender_core::deployment::Target],
            ) -> $crate::Result<u64> {
                let mut added = 0;
                for chunk in targets.chunks($crate::deployments::INSERT_CHUNK) {
                    let sql = $crate::deployments::insert_targets_sql(chunk.len());
                    // Only placeholders are generated: no value is in the text.
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
                    for t in chunk {
                        q = $crate::deployments::bind_target!(q, t);
                    }
                    added += q
                        .execute(&self.pool)
                        .await
                        .map_err(|e| $crate::map_sqlx("deployment targets", e))?
                        .rows_affected();
                }
                Ok(added)
            }

            async fn deployment_targets_among(
                &self,
                tenant: tender_core::TenantId,
                deployment: tender_core::DeploymentId,
                ids: &[tender_core::DeviceId],
            ) -> $crate::Result<std::collections::HashSet<tender_core::DeviceId>> {
                // One static statement in chunks, as `online_devices` does.
                let mut found = std::collections::HashSet::new();
                let unique: Vec<tender_core::DeviceId> = ids
                    .iter()
                    .copied()
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                for chunk in unique.chunks($crate::sql::ONLINE_DEVICES_CHUNK) {
                    let mut query =
                        sqlx::query_scalar::<_, uuid::Uuid>($crate::deployments::TARGETS_AMONG)
                            .bind(tenant.as_uuid())
                            .bind(deployment.as_uuid());
                    for id in chunk.iter().cycle().take($crate::sql::ONLINE_DEVICES_CHUNK) {
                        query = query.bind(id.as_uuid());
                    }
                    let rows = query
                        .fetch_all(&self.pool)
                        .await
                        .map_err(|e| $crate::map_sqlx("deployment targets", e))?;
                    found.extend(rows.into_iter().map(tender_core::DeviceId::from_uuid));
                }
                Ok(found)
            }

            async fn deployment(
                &self,
                tenant: tender_core::TenantId,
                id: tender_core::DeploymentId,
            ) -> $crate::Result<Option<tender_core::deployment::Deployment>> {
                sqlx::query_as::<_, $crate::deployments::DeploymentRow>(
                    $crate::deployments::DEPLOYMENT,
                )
                .bind(tenant.as_uuid())
                .bind(id.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("deployment", e))?
                .map(TryInto::try_into)
                .transpose()
            }

            async fn list_deployments(
                &self,
                tenant: tender_core::TenantId,
                page: &tender_core::page::PageRequest<tender_core::DeploymentId>,
            ) -> $crate::Result<
                tender_core::page::Page<
                    tender_core::deployment::Deployment,
                    tender_core::DeploymentId,
                >,
            > {
                let rows = sqlx::query_as::<_, $crate::deployments::DeploymentRow>(
                    $crate::deployments::LIST_DEPLOYMENTS,
                )
                .bind(tenant.as_uuid())
                .bind(page.after.map(|a| *a.as_uuid()))
                .bind(i64::from(page.limit.get()) + 1)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("deployments", e))?;
                let items = rows
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<$crate::Result<Vec<tender_core::deployment::Deployment>>>()?;
                Ok(tender_core::page::Page::from_overfetch(
                    items,
                    page.limit,
                    |d| d.id,
                ))
            }

            async fn active_deployments(
                &self,
            ) -> $crate::Result<Vec<tender_core::deployment::Deployment>> {
                sqlx::query_as::<_, $crate::deployments::DeploymentRow>(
                    $crate::deployments::ACTIVE_DEPLOYMENTS,
                )
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("active deployments", e))?
                .into_iter()
                .map(TryInto::try_into)
                .collect()
            }

            async fn update_deployment(
                &self,
                expected: &tender_core::deployment::Deployment,
                new: &tender_core::deployment::Deployment,
            ) -> $crate::Result<bool> {
                use $crate::deployments::json;
                let done = sqlx::query($crate::deployments::UPDATE_DEPLOYMENT)
                    .bind(expected.tenant_id.as_uuid())
                    .bind(expected.id.as_uuid())
                    .bind(i64::try_from(expected.revision).unwrap_or(-1))
                    .bind(new.state.as_str())
                    .bind(new.status_reason.as_deref())
                    .bind(i64::from(new.current_phase))
                    .bind(json(&new.approved_phases))
                    .bind(json(&new.accepted_failures))
                    .bind(new.started_at.map(|x| x.unix_millis()))
                    .bind(new.finished_at.map(|x| x.unix_millis()))
                    .bind(new.updated_at.unix_millis())
                    .bind(new.artifact_id.as_uuid())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("deployment", e))?;
                Ok(done.rows_affected() == 1)
            }

            async fn deployment_stats(
                &self,
                d: &tender_core::deployment::Deployment,
            ) -> $crate::Result<Vec<tender_core::deployment::PhaseStats>> {
                let rows = sqlx::query_as::<_, (i64, String, i64)>($crate::deployments::STATS)
                    .bind(d.tenant_id.as_uuid())
                    .bind(d.id.as_uuid())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("deployment statistics", e))?;
                $crate::deployments::fold_stats(rows, d.phases.len())
            }

            async fn deployment_targets(
                &self,
                tenant: tender_core::TenantId,
                id: tender_core::DeploymentId,
                state: Option<tender_core::deployment::TargetState>,
                page: &tender_core::page::PageRequest<tender_core::DeviceId>,
            ) -> $crate::Result<
                tender_core::page::Page<tender_core::deployment::Target, tender_core::DeviceId>,
            > {
                let rows = sqlx::query_as::<_, $crate::deployments::TargetRow>(
                    $crate::deployments::TARGETS,
                )
                .bind(tenant.as_uuid())
                .bind(id.as_uuid())
                .bind(state.map(|s| s.as_str()))
                .bind(page.after.map(|a| *a.as_uuid()))
                .bind(i64::from(page.limit.get()) + 1)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("deployment targets", e))?;
                let items = rows
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<$crate::Result<Vec<tender_core::deployment::Target>>>()?;
                Ok(tender_core::page::Page::from_overfetch(
                    items,
                    page.limit,
                    |t| t.device_id,
                ))
            }

            async fn deployment_target(
                &self,
                tenant: tender_core::TenantId,
                id: tender_core::DeploymentId,
                device: tender_core::DeviceId,
            ) -> $crate::Result<Option<tender_core::deployment::Target>> {
                sqlx::query_as::<_, $crate::deployments::TargetRow>($crate::deployments::TARGET)
                    .bind(tenant.as_uuid())
                    .bind(id.as_uuid())
                    .bind(device.as_uuid())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("deployment target", e))?
                    .map(TryInto::try_into)
                    .transpose()
            }

            async fn due_deployment_targets(
                &self,
                d: &tender_core::deployment::Deployment,
                now: tender_core::Timestamp,
                limit: u32,
            ) -> $crate::Result<Vec<tender_core::deployment::Target>> {
                sqlx::query_as::<_, $crate::deployments::TargetRow>(
                    $crate::deployments::DUE_TARGETS,
                )
                .bind(d.tenant_id.as_uuid())
                .bind(d.id.as_uuid())
                .bind(i64::from(d.current_phase))
                .bind(now.unix_millis())
                .bind(i64::from(d.options.max_attempts))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("due deployment targets", e))?
                .into_iter()
                .map(TryInto::try_into)
                .collect()
            }

            async fn due_deployment_devices(
                &self,
                d: &tender_core::deployment::Deployment,
                now: tender_core::Timestamp,
                limit: u32,
            ) -> $crate::Result<Vec<tender_core::DeviceId>> {
                let ids = sqlx::query_scalar::<_, uuid::Uuid>($crate::deployments::DUE_DEVICES)
                    .bind(d.tenant_id.as_uuid())
                    .bind(d.id.as_uuid())
                    .bind(i64::from(d.current_phase))
                    .bind(now.unix_millis())
                    .bind(i64::from(d.options.max_attempts))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("due deployment devices", e))?;
                Ok(ids
                    .into_iter()
                    .map(tender_core::DeviceId::from_uuid)
                    .collect())
            }

            async fn deployment_load(
                &self,
                d: &tender_core::deployment::Deployment,
                since: tender_core::Timestamp,
            ) -> $crate::Result<(u32, u32)> {
                let map = |e| $crate::map_sqlx("deployment load", e);
                let notified: i64 = sqlx::query_scalar($crate::deployments::NOTIFIED_SINCE)
                    .bind(d.tenant_id.as_uuid())
                    .bind(d.id.as_uuid())
                    .bind(since.unix_millis())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map)?;
                let downloading: i64 = sqlx::query_scalar($crate::deployments::DOWNLOADING)
                    .bind(d.tenant_id.as_uuid())
                    .bind(d.id.as_uuid())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map)?;
                Ok((
                    u32::try_from(notified).unwrap_or(u32::MAX),
                    u32::try_from(downloading).unwrap_or(u32::MAX),
                ))
            }

            async fn active_targets_for_device(
                &self,
                tenant: tender_core::TenantId,
                device: tender_core::DeviceId,
            ) -> $crate::Result<Vec<tender_core::deployment::Target>> {
                sqlx::query_as::<_, $crate::deployments::TargetRow>(
                    $crate::deployments::ACTIVE_FOR_DEVICE,
                )
                .bind(tenant.as_uuid())
                .bind(device.as_uuid())
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("device deployments", e))?
                .into_iter()
                .map(TryInto::try_into)
                .collect()
            }

            async fn device_deployment_targets(
                &self,
                tenant: tender_core::TenantId,
                device: tender_core::DeviceId,
                page: &tender_core::page::PageRequest<tender_core::DeploymentId>,
            ) -> $crate::Result<
                tender_core::page::Page<tender_core::deployment::Target, tender_core::DeploymentId>,
            > {
                let rows = sqlx::query_as::<_, $crate::deployments::TargetRow>(
                    $crate::deployments::DEVICE_TARGETS,
                )
                .bind(tenant.as_uuid())
                .bind(device.as_uuid())
                .bind(page.after.map(|a| *a.as_uuid()))
                .bind(i64::from(page.limit.get()) + 1)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("device deployments", e))?;
                let items = rows
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<$crate::Result<Vec<tender_core::deployment::Target>>>()?;
                Ok(tender_core::page::Page::from_overfetch(
                    items,
                    page.limit,
                    |t| t.deployment_id,
                ))
            }

            async fn notify_deployment_targets(
                &self,
                d: &tender_core::deployment::Deployment,
                devices: &[tender_core::DeviceId],
                now: tender_core::Timestamp,
            ) -> $crate::Result<Vec<tender_core::deployment::Target>> {
                let map = |e| $crate::map_sqlx("deployment targets notified", e);
                let mut out = Vec::with_capacity(devices.len());
                let mut tx = self.pool.begin().await.map_err(map)?;
                for chunk in devices.chunks($crate::deployments::NOTIFY_CHUNK) {
                    let mut q = sqlx::query_as::<_, $crate::deployments::TargetRow>(
                        $crate::deployments::NOTIFY_TARGETS,
                    )
                    .bind(d.tenant_id.as_uuid())
                    .bind(d.id.as_uuid())
                    .bind(now.unix_millis())
                    .bind(i64::from(d.options.max_attempts))
                    .bind(i64::from(d.current_phase));
                    for dev in chunk.iter().cycle().take($crate::deployments::NOTIFY_CHUNK) {
                        q = q.bind(dev.as_uuid());
                    }
                    for row in q.fetch_all(&mut *tx).await.map_err(map)? {
                        out.push(row.try_into()?);
                    }
                }
                tx.commit().await.map_err(map)?;
                Ok(out)
            }

            async fn update_deployment_target(
                &self,
                expected: &tender_core::deployment::Target,
                new: &tender_core::deployment::Target,
            ) -> $crate::Result<bool> {
                let done = sqlx::query($crate::deployments::UPDATE_TARGET)
                    .bind(expected.tenant_id.as_uuid())
                    .bind(expected.deployment_id.as_uuid())
                    .bind(expected.device_id.as_uuid())
                    .bind(expected.state.as_str())
                    .bind(i64::from(expected.attempts))
                    .bind(expected.updated_at.unix_millis())
                    .bind(new.state.as_str())
                    .bind(i64::from(new.attempts))
                    .bind(new.retry_at.map(|x| x.unix_millis()))
                    .bind(new.notified_at.map(|x| x.unix_millis()))
                    .bind(new.finished_at.map(|x| x.unix_millis()))
                    .bind(new.updated_at.unix_millis())
                    .bind(new.progress.map(i64::from))
                    .bind(new.error.as_deref())
                    .bind($crate::deployments::json(&new.log))
                    .bind(i64::from(new.notifications))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("deployment target", e))?;
                Ok(done.rows_affected() == 1)
            }
        }
    };
}
pub(crate) use impl_deployment_store;
