//! Device search over a generated registry: filter + first page, a page deep in the listing,
//! and counts, on SQLite and PostgreSQL.
//!
//! ```sh
//! cargo bench -p tender-store --bench search -- 100000            # SQLite, 100k devices
//! cargo bench -p tender-store --bench search -- 1000000 postgres  # PostgreSQL, 1M devices
//! ```
//!
//! Each device has 8 indexed attributes (os.id of 4 values, os.version of 6, device_type of 4,
//! cpu.count, a unique serial, a unique address, agent.version, and a `site` tag of 8 values).
//! Rows are written with plain SQL in large transactions (the store's API writes one device at
//! a time; PostgreSQL generates them server-side with `generate_series`, then vacuums and
//! analyses the tables); the queries go through the store. Prints p50/p99 of 30 runs per case, after one
//! warm-up run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tender_core::device::DeviceState;
use tender_core::page::{PageLimit, PageRequest};
use tender_core::tenant::{Tenant, TenantSlug};
use tender_core::{DeviceId, TenantId, Timestamp};
use tender_store::filter::{Column, Cond, Filter, Op, Scope, Test};
use tender_store::{DeviceFilter, OpenOptions, Store};
use uuid::Uuid;

const OS: [&str; 4] = ["debian", "ubuntu", "poky", "alpine"];
const VERSIONS: [&str; 6] = ["11", "12", "22.04", "24.04", "4.0", "5.0"];
const TYPES: [&str; 4] = ["kiosk", "gateway", "sensor-hub", "industrial-pc"];
const SITES: [&str; 8] = [
    "berlin",
    "hamburg",
    "munich",
    "lyon",
    "rotterdam",
    "warsaw",
    "vienna",
    "oslo",
];

fn device_id(i: usize) -> Uuid {
    // v7-like: time-ordered ids so that pages walk in creation order.
    Uuid::from_u128((0x0190_0000_0000_7000_8000_0000_0000_0000u128) + i as u128)
}

async fn generate(url: &str, tenant: TenantId, n: usize) {
    use sqlx::Connection;
    let sqlite = url.starts_with("sqlite:");
    let start = Instant::now();
    macro_rules! fill {
        ($conn:expr) => {{
            let conn = $conn;
            let chunk = 500;
            let mut i = 0;
            while i < n {
                let end = (i + chunk).min(n);
                let mut tx = conn.begin().await.unwrap();
                let mut sql = String::from(
                    "INSERT INTO devices (tenant_id, id, name, device_type, state, key_fingerprint, created_at, updated_at, state_changed_at) VALUES ",
                );
                for j in i..end {
                    if j > i {
                        sql.push(',');
                    }
                    sql.push_str(&format!(
                        "($1, {}, 'dev-{j:07}', '{}', 'accepted', NULL, {j}, {j}, {j})",
                        lit(sqlite, device_id(j)),
                        TYPES[j % 4]
                    ));
                }
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(tenant.as_uuid())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                let mut sql = String::from(
                    "INSERT INTO device_attributes (tenant_id, device_id, scope, name, seq, text_value, num_value) VALUES ",
                );
                let mut first = true;
                for j in i..end {
                    let id = lit(sqlite, device_id(j));
                    let cpu = [2, 4, 8][j % 3];
                    let rows: [(&str, &str, String, String); 8] = [
                        ("inventory", "os.id", OS[j % 4].into(), "NULL".into()),
                        (
                            "inventory",
                            "os.version",
                            VERSIONS[j % 6].into(),
                            VERSIONS[j % 6].parse::<f64>().map_or("NULL".into(), |v| v.to_string()),
                        ),
                        ("inventory", "device_type", TYPES[j % 4].into(), "NULL".into()),
                        ("inventory", "cpu.count", cpu.to_string(), cpu.to_string()),
                        ("inventory", "hardware.serial", format!("SIM{j:08}"), "NULL".into()),
                        ("inventory", "net.eth0.ipv4", format!("10.{}.{}.{}", j >> 16 & 255, j >> 8 & 255, j & 255), "NULL".into()),
                        ("inventory", "agent.version", "0.1.0".into(), "NULL".into()),
                        ("tag", "site", SITES[j % 8].into(), "NULL".into()),
                    ];
                    for (scope, name, text, num) in rows {
                        if !first {
                            sql.push(',');
                        }
                        first = false;
                        sql.push_str(&format!(
                            "($1, {id}, '{scope}', '{name}', 0, '{text}', {num})"
                        ));
                    }
                }
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(tenant.as_uuid())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                i = end;
                if i % 100_000 == 0 {
                    eprintln!("  {i} devices written ({:.0} s)", start.elapsed().as_secs_f64());
                }
            }
        }};
    }
    if sqlite {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query("PRAGMA synchronous = OFF")
            .execute(&mut c)
            .await
            .unwrap();
        fill!(&mut c);
        sqlx::query("ANALYZE").execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        fill_postgres(&mut c, tenant, n, start).await;
        // What autovacuum does to a table of this size in production: statistics, and the
        // visibility map that index-only scans read (without it every entry visits the heap).
        sqlx::query("VACUUM (ANALYZE) devices, device_attributes")
            .execute(&mut c)
            .await
            .unwrap();
        // Write the generated pages out now, not during the timed queries (the checkpoint
        // that 2 GB of WAL triggers otherwise overlaps them). It needs a superuser or
        // pg_checkpoint: without, the queries may share the machine with it.
        if let Err(e) = sqlx::query("CHECKPOINT").execute(&mut c).await {
            eprintln!("CHECKPOINT refused ({e}): timings may overlap a checkpoint");
        }
    }
    eprintln!(
        "generated {n} devices in {:.1} s",
        start.elapsed().as_secs_f64()
    );
}

/// The same rows as `fill!`, generated by the server (`generate_series`) in transactions of
/// 100k devices: each device's 8 attribute rows follow one another, as in `fill!`.
async fn fill_postgres(c: &mut sqlx::PgConnection, tenant: TenantId, n: usize, start: Instant) {
    use sqlx::Connection;
    let base = device_id(0);
    assert_eq!(
        base.as_u128() & 0xffff_ffff_ffff,
        0,
        "device ids add i to the last 48 bits"
    );
    let prefix = &base.hyphenated().to_string()[..24];
    let versions_num: Vec<Option<f64>> = VERSIONS.iter().map(|v| v.parse().ok()).collect();
    // `{i:07}` / `{i:08}`: zero-padded to at least that width.
    let devices = format!(
        "INSERT INTO devices (tenant_id, id, name, device_type, state, key_fingerprint, \
         created_at, updated_at, state_changed_at) \
         SELECT $1, ('{prefix}' || lpad(to_hex(i), 12, '0'))::uuid, \
         'dev-' || lpad(i::text, greatest(7, length(i::text)), '0'), \
         ($4::text[])[i % 4 + 1], 'accepted', NULL, i, i, i \
         FROM generate_series($2::bigint, $3::bigint - 1) g(i) ORDER BY i"
    );
    let attributes = format!(
        "INSERT INTO device_attributes (tenant_id, device_id, scope, name, seq, text_value, \
         num_value) \
         SELECT $1, ('{prefix}' || lpad(to_hex(i), 12, '0'))::uuid, v.scope, v.name, 0, \
         v.text_value, v.num_value \
         FROM generate_series($2::bigint, $3::bigint - 1) g(i) \
         CROSS JOIN LATERAL (SELECT (ARRAY[2, 4, 8])[i % 3 + 1] AS cpu) c \
         CROSS JOIN LATERAL (VALUES \
           (1, 'inventory', 'os.id', ($5::text[])[i % 4 + 1], NULL::float8), \
           (2, 'inventory', 'os.version', ($6::text[])[i % 6 + 1], ($7::float8[])[i % 6 + 1]), \
           (3, 'inventory', 'device_type', ($4::text[])[i % 4 + 1], NULL), \
           (4, 'inventory', 'cpu.count', c.cpu::text, c.cpu::float8), \
           (5, 'inventory', 'hardware.serial', \
            'SIM' || lpad(i::text, greatest(8, length(i::text)), '0'), NULL), \
           (6, 'inventory', 'net.eth0.ipv4', \
            format('10.%s.%s.%s', (i >> 16) & 255, (i >> 8) & 255, i & 255), NULL), \
           (7, 'inventory', 'agent.version', '0.1.0', NULL), \
           (8, 'tag', 'site', ($8::text[])[i % 8 + 1], NULL) \
         ) v(k, scope, name, text_value, num_value) \
         ORDER BY i, v.k"
    );
    let chunk = 100_000;
    let mut i = 0;
    while i < n {
        let end = (i + chunk).min(n);
        let mut tx = c.begin().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(devices.clone()))
            .bind(tenant.as_uuid())
            .bind(i as i64)
            .bind(end as i64)
            .bind(&TYPES[..])
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(attributes.clone()))
            .bind(tenant.as_uuid())
            .bind(i as i64)
            .bind(end as i64)
            .bind(&TYPES[..])
            .bind(&OS[..])
            .bind(&VERSIONS[..])
            .bind(&versions_num)
            .bind(&SITES[..])
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        i = end;
        eprintln!(
            "  {i} devices written ({:.0} s)",
            start.elapsed().as_secs_f64()
        );
    }
}

fn lit(sqlite: bool, id: Uuid) -> String {
    if sqlite {
        format!("X'{}'", id.simple())
    } else {
        format!("'{id}'::uuid")
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn measure<F, Fut>(label: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let found = f().await;
    let mut times = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        f().await;
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "{label:<58} result {found:>8}   p50 {:>8.2} ms   p99 {:>8.2} ms",
        percentile(&times, 0.5).as_secs_f64() * 1000.0,
        percentile(&times, 0.99).as_secs_f64() * 1000.0,
    );
}

fn text(scope: Scope, name: &str, v: &str) -> Filter {
    Filter::Cond(Cond::Attr {
        scope,
        name: name.into(),
        test: Test::Text(Op::Eq, v.into()),
    })
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let postgres = args.get(1).is_some_and(|a| a == "postgres");
    let dir = tempfile::tempdir().unwrap();
    let pg = if postgres {
        Some(tender_store::conformance::PgTestDatabase::create().await)
    } else {
        None
    };
    let url = match &pg {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", dir.path().join("bench.db").display()),
    };
    let store = tender_store::open(&OpenOptions {
        url: url.clone(),
        max_connections: 4,
        connect_timeout: Duration::from_secs(10),
    })
    .await
    .unwrap();
    let tenant = Tenant {
        id: TenantId::from_uuid(Uuid::now_v7()),
        slug: TenantSlug::parse("bench").unwrap(),
        name: "bench".into(),
        enrollment_open: false,
        created_at: Timestamp::from_unix_millis(0),
    };
    store.create_tenant(&tenant).await.unwrap();
    println!(
        "device search, {} devices, {}",
        n,
        if postgres { "PostgreSQL" } else { "SQLite" }
    );
    generate(&url, tenant.id, n).await;
    let store: &dyn Store = &*store;
    let t = tenant.id;
    let limit = PageLimit::new(100).unwrap();
    let cases: Vec<(&str, Filter)> = vec![
        (
            "os.id = debian (25%)",
            text(Scope::Inventory, "os.id", "debian"),
        ),
        (
            "os.version = 12 and tag site = lyon (4%)",
            Filter::And(vec![
                text(Scope::Inventory, "os.version", "12"),
                text(Scope::Tag, "site", "lyon"),
            ]),
        ),
        (
            "serial = one device (rare)",
            text(
                Scope::Inventory,
                "hardware.serial",
                &format!("SIM{:08}", n / 2),
            ),
        ),
        (
            "cpu.count >= 8 (33%, numeric)",
            Filter::Cond(Cond::Attr {
                scope: Scope::Inventory,
                name: "cpu.count".into(),
                test: Test::Number(Op::Ge, 8.0),
            }),
        ),
        (
            "name glob dev-00012* (prefix)",
            Filter::Cond(Cond::Column {
                column: Column::Name,
                test: Test::Glob {
                    like: "dev-00012%".into(),
                    glob: "dev-00012*".into(),
                },
            }),
        ),
        (
            "not tag site = oslo (88%)",
            Filter::Not(Box::new(text(Scope::Tag, "site", "oslo"))),
        ),
    ];
    for (label, f) in &cases {
        let filter = DeviceFilter {
            state: Some(DeviceState::Accepted),
            matching: Some(f.clone()),
        };
        measure(&format!("page of 100: {label}"), || {
            let filter = filter.clone();
            async move {
                store
                    .list_devices(t, &filter, &PageRequest { after: None, limit })
                    .await
                    .unwrap()
                    .items
                    .len()
            }
        })
        .await;
    }
    let middle = DeviceId::from_uuid(device_id(n / 2));
    let debian = DeviceFilter {
        state: None,
        matching: Some(text(Scope::Inventory, "os.id", "debian")),
    };
    measure("page of 100 from the middle: os.id = debian", || {
        let filter = debian.clone();
        async move {
            store
                .list_devices(
                    t,
                    &filter,
                    &PageRequest {
                        after: Some(middle),
                        limit,
                    },
                )
                .await
                .unwrap()
                .items
                .len()
        }
    })
    .await;
    for (label, f) in &cases {
        let filter = DeviceFilter {
            state: None,
            matching: Some(f.clone()),
        };
        measure(&format!("count: {label}"), || {
            let filter = filter.clone();
            async move { store.count_devices(t, &filter).await.unwrap() as usize }
        })
        .await;
    }
}
