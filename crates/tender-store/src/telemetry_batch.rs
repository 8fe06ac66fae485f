//! Writing the telemetry of many devices in one transaction: what the server's telemetry
//! writer commits per batch (group commit). Each backend writes the rows its own fastest way:
//! SQLite with multi-row `VALUES` statements of a fixed size (prepared once), PostgreSQL with
//! one `UNNEST` statement of arrays per batch (one round trip whatever the size).

use std::collections::BTreeMap;

use tender_core::telemetry::Sample;
use tender_core::{DeviceId, TenantId};
use uuid::Uuid;

use crate::{Result, StoreError};

/// The samples of one device, as one message brought them.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSamples {
    pub tenant: TenantId,
    pub device: DeviceId,
    pub samples: Vec<Sample>,
}

/// One row of `telemetry_samples`.
pub(crate) struct Row<'a> {
    pub tenant: Uuid,
    pub device: Uuid,
    pub metric: &'a str,
    pub at: i64,
    pub value: f64,
}

/// The rows to write: one per (tenant, device, metric, at), the last value given for a key
/// winning, in key order (so that concurrent writers take row locks in the same order, and an
/// upsert never meets one key twice in a statement). Refuses a value that is not finite.
pub(crate) fn rows(batches: &[DeviceSamples]) -> Result<Vec<Row<'_>>> {
    let mut keyed = BTreeMap::new();
    for b in batches {
        for s in &b.samples {
            if !s.value.is_finite() {
                return Err(StoreError::Internal(format!(
                    "sample {} at {} of device {}: {} is not a finite number",
                    s.metric, s.at, b.device, s.value
                )));
            }
            keyed.insert(
                (
                    *b.tenant.as_uuid(),
                    *b.device.as_uuid(),
                    s.metric.as_str(),
                    s.at.unix_millis(),
                ),
                s.value,
            );
        }
    }
    Ok(keyed
        .into_iter()
        .map(|((tenant, device, metric, at), value)| Row {
            tenant,
            device,
            metric,
            at,
            value,
        })
        .collect())
}

/// How many rows one SQLite statement writes (5 parameters each).
pub(crate) const SQLITE_CHUNK: usize = 200;

/// The SQLite statement for [`SQLITE_CHUNK`] rows. A short chunk is padded by repeating its
/// last row: SQLite applies the rows of a statement one after the other, so a repeat only
/// writes the same value again (the count returned is that of distinct rows, not the
/// statement's). The rows arrive sorted and distinct from [`rows`], so the statement needs
/// no `DISTINCT` or `ORDER BY` (each costs a temporary b-tree per statement).
pub(crate) static SQLITE_INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let values: Vec<String> = (0..SQLITE_CHUNK)
        .map(|r| {
            let p = 1 + 5 * r;
            format!("(${}, ${}, ${}, ${}, ${})", p, p + 1, p + 2, p + 3, p + 4)
        })
        .collect();
    format!(
        "INSERT INTO telemetry_samples (tenant_id, device_id, metric, at, value) VALUES {} \
         ON CONFLICT (tenant_id, device_id, metric, at) DO UPDATE SET value = excluded.value",
        values.join(", ")
    )
});

/// The PostgreSQL statement: every row of a batch in one statement, as five arrays.
pub(crate) const PG_INSERT: &str = "INSERT INTO telemetry_samples \
    (tenant_id, device_id, metric, at, value) \
    SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int8[], $5::float8[]) \
    ON CONFLICT (tenant_id, device_id, metric, at) DO UPDATE SET value = excluded.value";

impl crate::sqlite::SqliteStore {
    pub(crate) async fn write_sample_rows(&self, rows: &[Row<'_>]) -> Result<u64> {
        let what = || format!("telemetry of {} samples", rows.len());
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| crate::map_sqlx(&what(), e))?;
        for chunk in rows.chunks(SQLITE_CHUNK) {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(SQLITE_INSERT.as_str()));
            let last = &chunk[chunk.len() - 1];
            for i in 0..SQLITE_CHUNK {
                let r = chunk.get(i).unwrap_or(last);
                query = query
                    .bind(r.tenant)
                    .bind(r.device)
                    .bind(r.metric)
                    .bind(r.at)
                    .bind(r.value);
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(|e| crate::map_sqlx(&what(), e))?;
        }
        tx.commit().await.map_err(|e| crate::map_sqlx(&what(), e))?;
        Ok(rows.len() as u64)
    }
}

impl crate::postgres::PgStore {
    pub(crate) async fn write_sample_rows(&self, rows: &[Row<'_>]) -> Result<u64> {
        let what = || format!("telemetry of {} samples", rows.len());
        let tenants: Vec<Uuid> = rows.iter().map(|r| r.tenant).collect();
        let devices: Vec<Uuid> = rows.iter().map(|r| r.device).collect();
        let metrics: Vec<&str> = rows.iter().map(|r| r.metric).collect();
        let ats: Vec<i64> = rows.iter().map(|r| r.at).collect();
        let values: Vec<f64> = rows.iter().map(|r| r.value).collect();
        // One statement is one implicit transaction: all rows or none.
        let done = sqlx::query(PG_INSERT)
            .bind(&tenants)
            .bind(&devices)
            .bind(&metrics)
            .bind(&ats)
            .bind(&values)
            .execute(&self.pool)
            .await
            .map_err(|e| crate::map_sqlx(&what(), e))?;
        Ok(done.rows_affected())
    }
}

/// Devices per statement of [`SERIES`] (the list is padded by repeating the last id).
pub(crate) const SERIES_CHUNK: usize = 100;

/// The buckets of one metric over up to [`SERIES_CHUNK`] devices: $1 tenant, $2 metric, $3 from,
/// $4 step (ms), $5 to, $6.. the devices. `last` is the value of the newest sample (ties: the
/// greater value, as `Bucket::merge` decides). Both dialects divide integers exactly.
pub(crate) static SERIES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let ids: Vec<String> = (0..SERIES_CHUNK).map(|i| format!("${}", 6 + i)).collect();
    format!(
        "SELECT b, count(*), min(value), max(value), sum(value), max(at), \
         max(CASE WHEN rn = 1 THEN value END) \
         FROM (SELECT (at - $3) / $4 AS b, at, value, \
               row_number() OVER (PARTITION BY (at - $3) / $4 ORDER BY at DESC, value DESC) AS rn \
               FROM telemetry_samples \
               WHERE tenant_id = $1 AND device_id IN ({}) AND metric = $2 \
               AND at >= $3 AND at < $5) s \
         GROUP BY b ORDER BY b",
        ids.join(", ")
    )
});

/// Deletes one device's samples older than $3, every metric: the metrics are found by hopping
/// the key from one metric to the next (as `LATEST_SAMPLES` does), so each metric's expired
/// rows are one range of the primary key and nothing else is read.
pub(crate) const PRUNE_DEVICE_SAMPLES: &str = "WITH RECURSIVE metrics (metric) AS ( \
     SELECT MIN(metric) FROM telemetry_samples WHERE tenant_id = $1 AND device_id = $2 \
     UNION ALL \
     SELECT (SELECT MIN(n.metric) FROM telemetry_samples n \
     WHERE n.tenant_id = $1 AND n.device_id = $2 AND n.metric > metrics.metric) \
     FROM metrics WHERE metrics.metric IS NOT NULL) \
     DELETE FROM telemetry_samples WHERE tenant_id = $1 AND device_id = $2 \
     AND metric IN (SELECT metric FROM metrics WHERE metric IS NOT NULL) AND at < $3";

/// The next devices (of every tenant) after ($1, $2) in key order, at most $3; with $1 NULL,
/// from the first.
pub(crate) const NEXT_DEVICES: &str = "SELECT tenant_id, id FROM devices \
     WHERE $1 IS NULL OR (tenant_id, id) > ($1, $2) ORDER BY tenant_id, id LIMIT $3";
