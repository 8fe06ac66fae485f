//! The embedded SQLite adapter: one file in the data directory, WAL journal, foreign keys on,
//! `synchronous=FULL` so that a committed write survives power loss, not just a crash.

use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::adapter::impl_sql_store;
use crate::commands::impl_command_store;
use crate::{Backend, OpenOptions, Result, StoreError, redact_url};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    pub(crate) pool: sqlx::SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `opts.url` (`sqlite://PATH` or
    /// `sqlite::memory:`) and migrates it.
    pub async fn open(opts: &OpenOptions) -> Result<Self> {
        let connect = SqliteConnectOptions::from_str(&opts.url)
            .map_err(|e| {
                StoreError::Unavailable(format!("invalid SQLite URL {:?}: {e}", opts.url))
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(opts.connect_timeout);
        let in_memory = opts.url.contains(":memory:");
        let pool = SqlitePoolOptions::new()
            // An in-memory database exists once per connection: keep exactly one.
            .max_connections(if in_memory {
                1
            } else {
                opts.max_connections.max(1)
            })
            .min_connections(if in_memory { 1 } else { 0 })
            .idle_timeout(if in_memory {
                None
            } else {
                Some(std::time::Duration::from_secs(600))
            })
            .max_lifetime(if in_memory {
                None
            } else {
                Some(std::time::Duration::from_secs(1800))
            })
            .acquire_timeout(opts.connect_timeout)
            .connect_with(connect)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot open SQLite database {}: {e}",
                    redact_url(&opts.url)
                ))
            })?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Migration(e.to_string()))?;
        Ok(SqliteStore { pool })
    }
}

impl_sql_store!(SqliteStore, Backend::Sqlite);
crate::adapter_twin::impl_twin_store!(SqliteStore);
crate::adapter_events::impl_event_store!(SqliteStore);
impl_command_store!(SqliteStore);
crate::artifacts::impl_artifact_catalog!(SqliteStore);
crate::deployments::impl_deployment_store!(SqliteStore);
crate::webhooks::impl_webhook_store!(SqliteStore);
crate::alerts::impl_alert_store!(SqliteStore);
crate::logs::impl_log_store!(SqliteStore);
