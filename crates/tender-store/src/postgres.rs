//! The PostgreSQL adapter, for installations that outgrow one node.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;

use crate::adapter::impl_sql_store;
use crate::commands::impl_command_store;
use crate::{Backend, OpenOptions, Result, StoreError, redact_url};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PgStore {
    pub(crate) pool: sqlx::PgPool,
}

impl PgStore {
    /// Connects to `opts.url` (`postgres://...`) and migrates the database. Migrations take an
    /// advisory lock, so several servers starting at once apply them exactly once.
    pub async fn open(opts: &OpenOptions) -> Result<Self> {
        let connect = PgConnectOptions::from_str(&opts.url).map_err(|e| {
            StoreError::Unavailable(format!(
                "invalid PostgreSQL URL {}: {e}",
                redact_url(&opts.url)
            ))
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.connect_timeout)
            .connect_with(connect)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot connect to PostgreSQL at {}: {e}",
                    redact_url(&opts.url)
                ))
            })?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(PgStore { pool })
    }
}

impl_sql_store!(PgStore, Backend::Postgres);
crate::adapter_twin::impl_twin_store!(PgStore);
crate::adapter_events::impl_event_store!(PgStore);
impl_command_store!(PgStore);
crate::artifacts::impl_artifact_catalog!(PgStore);
crate::deployments::impl_deployment_store!(PgStore);
crate::webhooks::impl_webhook_store!(PgStore);
crate::alerts::impl_alert_store!(PgStore);
crate::logs::impl_log_store!(PgStore);
