//! The commands part of the port: [`CommandStore`](crate::CommandStore)'s SQL, rows and the
//! shared implementation for both adapters (`0011_commands.sql`).
//!
//! Every change to a target is a conditional `UPDATE` on the state (and attempt count) it was
//! read in, so two paths racing (a device's result, the timeout sweep, a cancel) cannot both
//! move it, and a finished target is never moved again: the rules are the core's
//! ([`tender_core::command::Target`]); the bulk statements (`MARK_SENT`, `EXPIRE_TARGETS`,
//! `CANCEL_TARGETS`) are those rules written as SQL.

use tender_core::command::{Command, CommandName, CommandState, Outcome, Target};
use tender_core::{CommandId, DeviceId, TenantId, Timestamp};
use uuid::Uuid;

use crate::StoreError;

macro_rules! target_columns {
    () => {
        "tenant_id, command_id, device_id, state, attempts, deadline_at, expires_at, sent_at, \
         delivered_at, finished_at, updated_at, exit_code, stdout, stderr, output, error"
    };
}
macro_rules! command_columns {
    () => {
        "tenant_id, id, name, args, target, created_by, created_at, expires_at, timeout_secs, \
         max_attempts"
    };
}

pub(crate) const INSERT_COMMAND: &str = concat!(
    "INSERT INTO commands (",
    command_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
);
/// $1 tenant, $2 command, $3 device, $4 expires_at, $5 updated_at.
pub(crate) const INSERT_TARGET: &str = "INSERT INTO command_targets (tenant_id, command_id, \
     device_id, state, attempts, expires_at, updated_at) VALUES ($1, $2, $3, 'queued', 0, $4, $5)";
pub(crate) const COMMAND: &str = concat!(
    "SELECT ",
    command_columns!(),
    " FROM commands WHERE tenant_id = $1 AND id = $2"
);
/// Newest first: $1 tenant, $2 before this id (or NULL), $3 limit.
pub(crate) const LIST_COMMANDS: &str = concat!(
    "SELECT ",
    command_columns!(),
    " FROM commands WHERE tenant_id = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
);
pub(crate) const SUMMARY: &str = "SELECT state, COUNT(*) FROM command_targets \
     WHERE tenant_id = $1 AND command_id = $2 GROUP BY state";
/// $1 tenant, $2 command, $3 state or NULL, $4 after this device or NULL, $5 limit.
pub(crate) const TARGETS: &str = concat!(
    "SELECT ",
    target_columns!(),
    " FROM command_targets WHERE tenant_id = $1 AND command_id = $2 \
     AND ($3 IS NULL OR state = $3) AND ($4 IS NULL OR device_id > $4) ORDER BY device_id LIMIT $5"
);
pub(crate) const TARGET: &str = concat!(
    "SELECT ",
    target_columns!(),
    " FROM command_targets WHERE tenant_id = $1 AND command_id = $2 AND device_id = $3"
);
/// A device's commands, newest first: $1 tenant, $2 device, $3 before this command, $4 limit.
pub(crate) const DEVICE_TARGETS: &str = concat!(
    "SELECT ",
    target_columns!(),
    " FROM command_targets WHERE tenant_id = $1 AND device_id = $2 \
     AND ($3 IS NULL OR command_id < $3) ORDER BY command_id DESC LIMIT $4"
);
/// A device's unfinished, unexpired targets, oldest command first: $1 tenant, $2 device, $3 now.
pub(crate) const PENDING_FOR_DEVICE: &str = concat!(
    "SELECT ",
    target_columns!(),
    " FROM command_targets WHERE tenant_id = $1 AND device_id = $2 \
     AND state IN ('queued', 'sent', 'delivered') AND expires_at > $3 ORDER BY command_id"
);
/// Compare-and-set of one target: $1 tenant, $2 command, $3 device, $4 expected state,
/// $5 expected attempts, then the new values $6.. in `target_columns` order from `state`.
pub(crate) const UPDATE_TARGET: &str = "UPDATE command_targets SET state = $6, attempts = $7, \
     deadline_at = $8, sent_at = $9, delivered_at = $10, finished_at = $11, updated_at = $12, \
     exit_code = $13, stdout = $14, stderr = $15, output = $16, error = $17 \
     WHERE tenant_id = $1 AND command_id = $2 AND device_id = $3 AND state = $4 AND attempts = $5";
/// How many device ids [`MARK_SENT`] takes at once.
pub(crate) const MARK_SENT_CHUNK: usize = 64;
/// `Target::on_sent` for queued targets of one command: $1 tenant, $2 command, $3 now,
/// $4 deadline, $5 max attempts, $6..$69 device ids (a short chunk padded by repetition).
pub(crate) const MARK_SENT: &str = concat!(
    "UPDATE command_targets SET state = 'sent', attempts = attempts + 1, sent_at = $3, \
     deadline_at = $4, updated_at = $3 \
     WHERE tenant_id = $1 AND command_id = $2 AND state = 'queued' AND expires_at > $3 \
     AND attempts < $5 AND device_id IN (",
    "$6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, ",
    "$22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, $35, $36, $37, ",
    "$38, $39, $40, $41, $42, $43, $44, $45, $46, $47, $48, $49, $50, $51, $52, $53, ",
    "$54, $55, $56, $57, $58, $59, $60, $61, $62, $63, $64, $65, $66, $67, $68, $69",
    ") RETURNING device_id"
);
/// Attempts past their deadline, every tenant, oldest deadline first: $1 now, $2 limit.
pub(crate) const DUE_TIMEOUTS: &str = concat!(
    "SELECT ",
    target_columns!(),
    " FROM command_targets WHERE deadline_at IS NOT NULL AND deadline_at <= $1 \
     AND state IN ('sent', 'delivered') ORDER BY deadline_at LIMIT $2"
);
/// `Target::on_expire` for every unfinished target past its TTL, every tenant: $1 now.
pub(crate) const EXPIRE_TARGETS: &str = "UPDATE command_targets SET state = 'expired', \
     deadline_at = NULL, finished_at = $1, updated_at = $1 \
     WHERE state IN ('queued', 'sent', 'delivered') AND expires_at <= $1";
/// `Target::cancel` for every unfinished target of a command: $1 tenant, $2 command, $3 now.
pub(crate) const CANCEL_TARGETS: &str = "UPDATE command_targets SET state = 'canceled', \
     deadline_at = NULL, finished_at = $3, updated_at = $3 \
     WHERE tenant_id = $1 AND command_id = $2 AND state IN ('queued', 'sent', 'delivered')";

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms)
}

#[derive(sqlx::FromRow)]
pub(crate) struct CommandRow {
    tenant_id: Uuid,
    id: Uuid,
    name: String,
    args: String,
    target: String,
    created_by: Option<String>,
    created_at: i64,
    expires_at: i64,
    timeout_secs: i64,
    max_attempts: i64,
}

impl TryFrom<CommandRow> for Command {
    type Error = StoreError;
    fn try_from(r: CommandRow) -> Result<Command, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("command {}: {what}", r.id));
        Ok(Command {
            id: CommandId::from_uuid(r.id),
            tenant_id: TenantId::from_uuid(r.tenant_id),
            name: CommandName::parse(&r.name).map_err(|e| corrupt(&e.to_string()))?,
            args: serde_json::from_str(&r.args).map_err(|e| corrupt(&e.to_string()))?,
            target: r.target,
            created_by: r.created_by,
            created_at: ts(r.created_at),
            expires_at: ts(r.expires_at),
            timeout_secs: u64::try_from(r.timeout_secs).map_err(|_| corrupt("timeout"))?,
            max_attempts: u32::try_from(r.max_attempts).map_err(|_| corrupt("attempts"))?,
        })
    }
}

pub(crate) fn args_json(args: &[String]) -> String {
    // A list of strings always serialises.
    serde_json::to_string(args).unwrap_or_else(|_| "[]".into())
}

#[derive(sqlx::FromRow)]
pub(crate) struct TargetRow {
    tenant_id: Uuid,
    command_id: Uuid,
    device_id: Uuid,
    state: String,
    attempts: i64,
    deadline_at: Option<i64>,
    expires_at: i64,
    sent_at: Option<i64>,
    delivered_at: Option<i64>,
    finished_at: Option<i64>,
    updated_at: i64,
    exit_code: Option<i64>,
    stdout: Option<String>,
    stderr: Option<String>,
    output: Option<String>,
    error: Option<String>,
}

impl TryFrom<TargetRow> for Target {
    type Error = StoreError;
    fn try_from(r: TargetRow) -> Result<Target, StoreError> {
        let corrupt = |what: &str| {
            StoreError::Corrupt(format!(
                "command {} target {}: {what}",
                r.command_id, r.device_id
            ))
        };
        let outcome = match r.stdout {
            None => None,
            Some(stdout) => Some(Outcome {
                exit_code: r
                    .exit_code
                    .map(i32::try_from)
                    .transpose()
                    .map_err(|_| corrupt("exit code"))?,
                stdout,
                stderr: r.stderr.unwrap_or_default(),
                output: r.output,
                error: r.error,
            }),
        };
        Ok(Target {
            tenant_id: TenantId::from_uuid(r.tenant_id),
            command_id: CommandId::from_uuid(r.command_id),
            device_id: DeviceId::from_uuid(r.device_id),
            state: CommandState::parse(&r.state).ok_or_else(|| corrupt("state"))?,
            attempts: u32::try_from(r.attempts).map_err(|_| corrupt("attempts"))?,
            deadline_at: r.deadline_at.map(ts),
            expires_at: ts(r.expires_at),
            sent_at: r.sent_at.map(ts),
            delivered_at: r.delivered_at.map(ts),
            finished_at: r.finished_at.map(ts),
            updated_at: ts(r.updated_at),
            outcome,
        })
    }
}

macro_rules! impl_command_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::CommandStore for $store {
            async fn create_command(
                &self,
                c: &tender_core::command::Command,
                devices: &[tender_core::DeviceId],
            ) -> $crate::Result<()> {
                let map = |e| $crate::map_sqlx(&format!("command {}", c.id), e);
                let mut tx = self.pool.begin().await.map_err(map)?;
                sqlx::query($crate::commands::INSERT_COMMAND)
                    .bind(c.tenant_id.as_uuid())
                    .bind(c.id.as_uuid())
                    .bind(c.name.as_str())
                    .bind($crate::commands::args_json(&c.args))
                    .bind(c.target.as_str())
                    .bind(c.created_by.as_deref())
                    .bind(c.created_at.unix_millis())
                    .bind(c.expires_at.unix_millis())
                    .bind(i64::try_from(c.timeout_secs).unwrap_or(i64::MAX))
                    .bind(i64::from(c.max_attempts))
                    .execute(&mut *tx)
                    .await
                    .map_err(map)?;
                let unique: std::collections::BTreeSet<_> = devices.iter().collect();
                for d in unique {
                    sqlx::query($crate::commands::INSERT_TARGET)
                        .bind(c.tenant_id.as_uuid())
                        .bind(c.id.as_uuid())
                        .bind(d.as_uuid())
                        .bind(c.expires_at.unix_millis())
                        .bind(c.created_at.unix_millis())
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| $crate::map_sqlx(&format!("command target {d}"), e))?;
                }
                tx.commit().await.map_err(map)?;
                Ok(())
            }

            async fn command(
                &self,
                tenant: tender_core::TenantId,
                id: tender_core::CommandId,
            ) -> $crate::Result<Option<tender_core::command::Command>> {
                sqlx::query_as::<_, $crate::commands::CommandRow>($crate::commands::COMMAND)
                    .bind(tenant.as_uuid())
                    .bind(id.as_uuid())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("command", e))?
                    .map(TryInto::try_into)
                    .transpose()
            }

            async fn list_commands(
                &self,
                tenant: tender_core::TenantId,
                page: &tender_core::page::PageRequest<tender_core::CommandId>,
            ) -> $crate::Result<
                tender_core::page::Page<tender_core::command::Command, tender_core::CommandId>,
            > {
                let rows = sqlx::query_as::<_, $crate::commands::CommandRow>(
                    $crate::commands::LIST_COMMANDS,
                )
                .bind(tenant.as_uuid())
                .bind(page.after.map(|a| *a.as_uuid()))
                .bind(i64::from(page.limit.get()) + 1)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("commands", e))?;
                let items = rows
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<$crate::Result<Vec<tender_core::command::Command>>>()?;
                Ok(tender_core::page::Page::from_overfetch(
                    items,
                    page.limit,
                    |c| c.id,
                ))
            }

            async fn command_summary(
                &self,
                tenant: tender_core::TenantId,
                id: tender_core::CommandId,
            ) -> $crate::Result<tender_core::command::Summary> {
                let rows = sqlx::query_as::<_, (String, i64)>($crate::commands::SUMMARY)
                    .bind(tenant.as_uuid())
                    .bind(id.as_uuid())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("command summary", e))?;
                let mut s = tender_core::command::Summary::default();
                for (state, n) in rows {
                    let state =
                        tender_core::command::CommandState::parse(&state).ok_or_else(|| {
                            $crate::StoreError::Corrupt(format!("command {id}: state {state:?}"))
                        })?;
                    s.add(state, n.unsigned_abs());
                }
                Ok(s)
            }

            async fn command_targets(
                &self,
                tenant: tender_core::TenantId,
                id: tender_core::CommandId,
                state: Option<tender_core::command::CommandState>,
                page: &tender_core::page::PageRequest<tender_core::DeviceId>,
            ) -> $crate::Result<
                tender_core::page::Page<tender_core::command::Target, tender_core::DeviceId>,
            > {
                let rows =
                    sqlx::query_as::<_, $crate::commands::TargetRow>($crate::commands::TARGETS)
                        .bind(tenant.as_uuid())
                        .bind(id.as_uuid())
                        .bind(state.map(|s| s.as_str()))
                        .bind(page.after.map(|a| *a.as_uuid()))
                        .bind(i64::from(page.limit.get()) + 1)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(|e| $crate::map_sqlx("command targets", e))?;
                let items = rows
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<$crate::Result<Vec<tender_core::command::Target>>>()?;
                Ok(tender_core::page::Page::from_overfetch(
                    items,
                    page.limit,
                    |t| t.device_id,
                ))
            }

            async fn command_target(
                &self,
                tenant: tender_core::TenantId,
                id: tender_core::CommandId,
                device: tender_core::DeviceId,
            ) -> $crate::Result<Option<tender_core::command::Target>> {
                sqlx::query_as::<_, $crate::commands::TargetRow>($crate::commands::TARGET)
                    .bind(tenant.as_uuid())
                    .bind(id.as_uuid())
                    .bind(device.as_uuid())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("command target", e))?
                    .map(TryInto::try_into)
                    .transpose()
            }

            async fn device_command_targets(
                &self,
                tenant: tender_core::TenantId,
                device: tender_core::DeviceId,
                page: &tender_core::page::PageRequest<tender_core::CommandId>,
            ) -> $crate::Result<
                tender_core::page::Page<tender_core::command::Target, tender_core::CommandId>,
            > {
                let rows = sqlx::query_as::<_, $crate::commands::TargetRow>(
                    $crate::commands::DEVICE_TARGETS,
                )
                .bind(tenant.as_uuid())
                .bind(device.as_uuid())
                .bind(page.after.map(|a| *a.as_uuid()))
                .bind(i64::from(page.limit.get()) + 1)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("device commands", e))?;
                let items = rows
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<$crate::Result<Vec<tender_core::command::Target>>>()?;
                Ok(tender_core::page::Page::from_overfetch(
                    items,
                    page.limit,
                    |t| t.command_id,
                ))
            }

            async fn pending_for_device(
                &self,
                tenant: tender_core::TenantId,
                device: tender_core::DeviceId,
                now: tender_core::Timestamp,
            ) -> $crate::Result<Vec<tender_core::command::Target>> {
                sqlx::query_as::<_, $crate::commands::TargetRow>(
                    $crate::commands::PENDING_FOR_DEVICE,
                )
                .bind(tenant.as_uuid())
                .bind(device.as_uuid())
                .bind(now.unix_millis())
                .fetch_all(&self.pool)
                .await
                .map_err(|e| $crate::map_sqlx("pending commands", e))?
                .into_iter()
                .map(TryInto::try_into)
                .collect()
            }

            async fn update_target(
                &self,
                expected: &tender_core::command::Target,
                new: &tender_core::command::Target,
            ) -> $crate::Result<bool> {
                let o = new.outcome.as_ref();
                let done = sqlx::query($crate::commands::UPDATE_TARGET)
                    .bind(expected.tenant_id.as_uuid())
                    .bind(expected.command_id.as_uuid())
                    .bind(expected.device_id.as_uuid())
                    .bind(expected.state.as_str())
                    .bind(i64::from(expected.attempts))
                    .bind(new.state.as_str())
                    .bind(i64::from(new.attempts))
                    .bind(new.deadline_at.map(|t| t.unix_millis()))
                    .bind(new.sent_at.map(|t| t.unix_millis()))
                    .bind(new.delivered_at.map(|t| t.unix_millis()))
                    .bind(new.finished_at.map(|t| t.unix_millis()))
                    .bind(new.updated_at.unix_millis())
                    .bind(o.and_then(|o| o.exit_code).map(i64::from))
                    .bind(o.map(|o| o.stdout.as_str()))
                    .bind(o.map(|o| o.stderr.as_str()))
                    .bind(o.and_then(|o| o.output.as_deref()))
                    .bind(o.and_then(|o| o.error.as_deref()))
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("command target", e))?;
                Ok(done.rows_affected() == 1)
            }

            async fn mark_sent(
                &self,
                c: &tender_core::command::Command,
                devices: &[tender_core::DeviceId],
                now: tender_core::Timestamp,
            ) -> $crate::Result<Vec<tender_core::DeviceId>> {
                let timeout_ms =
                    i64::try_from(c.timeout_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
                let mut sent = Vec::new();
                let map = |e| $crate::map_sqlx("command targets sent", e);
                let mut tx = self.pool.begin().await.map_err(map)?;
                for chunk in devices.chunks($crate::commands::MARK_SENT_CHUNK) {
                    let mut q = sqlx::query_scalar::<_, uuid::Uuid>($crate::commands::MARK_SENT)
                        .bind(c.tenant_id.as_uuid())
                        .bind(c.id.as_uuid())
                        .bind(now.unix_millis())
                        .bind(now.plus_millis(timeout_ms).unix_millis())
                        .bind(i64::from(c.max_attempts));
                    for d in chunk.iter().cycle().take($crate::commands::MARK_SENT_CHUNK) {
                        q = q.bind(d.as_uuid());
                    }
                    let ids = q.fetch_all(&mut *tx).await.map_err(map)?;
                    sent.extend(ids.into_iter().map(tender_core::DeviceId::from_uuid));
                }
                tx.commit().await.map_err(map)?;
                Ok(sent)
            }

            async fn due_timeouts(
                &self,
                now: tender_core::Timestamp,
                limit: u32,
            ) -> $crate::Result<Vec<tender_core::command::Target>> {
                sqlx::query_as::<_, $crate::commands::TargetRow>($crate::commands::DUE_TIMEOUTS)
                    .bind(now.unix_millis())
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("due command timeouts", e))?
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect()
            }

            async fn expire_targets(&self, now: tender_core::Timestamp) -> $crate::Result<u64> {
                Ok(sqlx::query($crate::commands::EXPIRE_TARGETS)
                    .bind(now.unix_millis())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("expire command targets", e))?
                    .rows_affected())
            }

            async fn cancel_command(
                &self,
                tenant: tender_core::TenantId,
                id: tender_core::CommandId,
                now: tender_core::Timestamp,
            ) -> $crate::Result<u64> {
                Ok(sqlx::query($crate::commands::CANCEL_TARGETS)
                    .bind(tenant.as_uuid())
                    .bind(id.as_uuid())
                    .bind(now.unix_millis())
                    .execute(&self.pool)
                    .await
                    .map_err(|e| $crate::map_sqlx("cancel command", e))?
                    .rows_affected())
            }
        }
    };
}

pub(crate) use impl_command_store;
