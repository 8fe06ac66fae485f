//! SQL shared by both adapters (`$N` placeholders work on SQLite and PostgreSQL alike).
//! Every statement on tenant data has `tenant_id = $1` in its WHERE clause, except the unscoped
//! calls listed in the crate's invariants (lookups before the tenant is known, start-up recovery).

pub(crate) const PING: &str = "SELECT 1";

pub(crate) const INSERT_TENANT: &str =
    "INSERT INTO tenants (id, slug, name, enrollment_open, created_at) VALUES ($1, $2, $3, $4, $5)";
pub(crate) const TENANT_BY_ID: &str =
    "SELECT id, slug, name, enrollment_open, created_at FROM tenants WHERE id = $1";
pub(crate) const TENANT_BY_SLUG: &str =
    "SELECT id, slug, name, enrollment_open, created_at FROM tenants WHERE slug = $1";
pub(crate) const SET_ENROLLMENT_OPEN: &str =
    "UPDATE tenants SET enrollment_open = $2 WHERE id = $1";

macro_rules! user_columns {
    () => {
        "tenant_id, id, username, roles, disabled, created_at"
    };
}
pub(crate) const INSERT_USER: &str = "INSERT INTO users (tenant_id, id, username, roles, disabled, created_at) VALUES ($1, $2, $3, $4, $5, $6)";
pub(crate) const USER_BY_ID: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users WHERE tenant_id = $1 AND id = $2"
);
pub(crate) const USER_BY_NAME: &str = concat!(
    "SELECT ",
    user_columns!(),
    " FROM users WHERE tenant_id = $1 AND username = $2"
);
pub(crate) const COUNT_USERS: &str = "SELECT COUNT(*) FROM users WHERE tenant_id = $1";

pub(crate) const INSERT_TOKEN: &str = "INSERT INTO api_tokens (id, tenant_id, user_id, name, secret_hash, created_at, expires_at, revoked_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
pub(crate) const TOKEN_BY_ID: &str = "SELECT id, tenant_id, user_id, name, secret_hash, created_at, expires_at, revoked_at, last_used_at FROM api_tokens WHERE id = $1";
pub(crate) const TOUCH_TOKEN: &str =
    "UPDATE api_tokens SET last_used_at = $3 WHERE tenant_id = $1 AND id = $2";
pub(crate) const REVOKE_TOKEN: &str =
    "UPDATE api_tokens SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL";

macro_rules! device_columns {
    () => {
        "tenant_id, id, name, device_type, state, key_fingerprint, last_seen_at, created_at, updated_at, state_changed_at"
    };
}
pub(crate) use device_columns;
/// [`device_columns!`] qualified by the `d` alias, for statements that join another table.
macro_rules! device_columns_qualified {
    () => {
        "d.tenant_id, d.id, d.name, d.device_type, d.state, d.key_fingerprint, d.last_seen_at, d.created_at, d.updated_at, d.state_changed_at"
    };
}
pub(crate) use device_columns_qualified;
pub(crate) const INSERT_DEVICE: &str = "INSERT INTO devices (tenant_id, id, name, device_type, state, key_fingerprint, created_at, updated_at, state_changed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
pub(crate) const DEVICE_BY_KEY: &str = concat!(
    "SELECT ",
    device_columns!(),
    " FROM devices WHERE tenant_id = $1 AND key_fingerprint = $2"
);
pub(crate) const DEVICE_BY_ID: &str = concat!(
    "SELECT ",
    device_columns!(),
    " FROM devices WHERE tenant_id = $1 AND id = $2"
);
/// $1 tenant, $2 state or NULL, $3 after-id or NULL, $4 limit.
pub(crate) const LIST_DEVICES: &str = concat!(
    "SELECT ",
    device_columns!(),
    " FROM devices WHERE tenant_id = $1 AND ($2 IS NULL OR state = $2) \
     AND ($3 IS NULL OR id > $3) ORDER BY id LIMIT $4"
);
pub(crate) const COUNT_DEVICES: &str =
    "SELECT COUNT(*) FROM devices WHERE tenant_id = $1 AND ($2 IS NULL OR state = $2)";
/// $1 tenant, $2 id, $3 expected state, $4 new state, $5 at.
pub(crate) const SET_DEVICE_STATE: &str = concat!(
    "UPDATE devices SET state = $4, updated_at = $5, state_changed_at = $5 \
     WHERE tenant_id = $1 AND id = $2 AND state = $3 RETURNING ",
    device_columns!()
);

macro_rules! enrollment_token_columns {
    () => {
        "id, tenant_id, name, secret_hash, created_at, expires_at, max_uses, uses, revoked_at, device_type"
    };
}
pub(crate) const INSERT_ENROLLMENT_TOKEN: &str = concat!(
    "INSERT INTO enrollment_tokens (",
    enrollment_token_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
);
pub(crate) const ENROLLMENT_TOKEN_BY_ID: &str = concat!(
    "SELECT ",
    enrollment_token_columns!(),
    " FROM enrollment_tokens WHERE id = $1"
);
/// $1 tenant, $2 after-id or NULL, $3 limit.
pub(crate) const LIST_ENROLLMENT_TOKENS: &str = concat!(
    "SELECT ",
    enrollment_token_columns!(),
    " FROM enrollment_tokens WHERE tenant_id = $1 AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3"
);
pub(crate) const REVOKE_ENROLLMENT_TOKEN: &str = "UPDATE enrollment_tokens SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL";
/// Takes one use if the token is still usable at $3: the whole check is one atomic statement.
pub(crate) const CONSUME_ENROLLMENT_TOKEN: &str = concat!(
    "UPDATE enrollment_tokens SET uses = uses + 1 WHERE tenant_id = $1 AND id = $2 \
     AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $3) \
     AND (max_uses IS NULL OR uses < max_uses) RETURNING ",
    enrollment_token_columns!()
);

macro_rules! certificate_columns {
    () => {
        "serial, tenant_id, device_id, key_fingerprint, not_before, not_after, issued_at, revoked_at"
    };
}
pub(crate) const INSERT_CERTIFICATE: &str = concat!(
    "INSERT INTO device_certificates (",
    certificate_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
);
pub(crate) const CERTIFICATE_BY_SERIAL: &str = concat!(
    "SELECT ",
    certificate_columns!(),
    " FROM device_certificates WHERE serial = $1"
);
pub(crate) const DEVICE_CERTIFICATES: &str = concat!(
    "SELECT ",
    certificate_columns!(),
    " FROM device_certificates WHERE tenant_id = $1 AND device_id = $2 ORDER BY issued_at, serial"
);
pub(crate) const REVOKE_DEVICE_CERTIFICATES: &str = "UPDATE device_certificates SET revoked_at = $3 WHERE tenant_id = $1 AND device_id = $2 AND revoked_at IS NULL";
/// Moves last-seen forward only: $1 tenant, $2 id, $3 at.
pub(crate) const RECORD_DEVICE_SEEN: &str = "UPDATE devices SET last_seen_at = $3 WHERE tenant_id = $1 AND id = $2 AND (last_seen_at IS NULL OR last_seen_at < $3)";

macro_rules! connection_columns {
    () => {
        "id, tenant_id, device_id, transport, protocol, remote_addr, client_id, connected_at, disconnected_at, disconnect_reason"
    };
}
pub(crate) const INSERT_CONNECTION: &str = concat!(
    "INSERT INTO device_connections (",
    connection_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
);
/// Closes a connection once: $1 tenant, $2 id, $3 at, $4 reason. Matches the row whether or not
/// it is still open (so zero rows affected means "no such connection in the tenant"), but only
/// an open one changes: the right-hand sides read the row as it was before the update.
pub(crate) const CLOSE_CONNECTION: &str = "UPDATE device_connections \
     SET disconnected_at = COALESCE(disconnected_at, $3), \
     disconnect_reason = CASE WHEN disconnected_at IS NULL THEN $4 ELSE disconnect_reason END \
     WHERE tenant_id = $1 AND id = $2";
/// Unscoped on purpose (crash recovery at start-up): $1 at, $2 reason.
pub(crate) const CLOSE_OPEN_CONNECTIONS: &str = "UPDATE device_connections \
     SET disconnected_at = $1, disconnect_reason = $2 WHERE disconnected_at IS NULL";
/// Newest first: $1 tenant, $2 device, $3 before-id (the previous page's last) or NULL, $4 limit.
pub(crate) const DEVICE_CONNECTIONS: &str = concat!(
    "SELECT ",
    connection_columns!(),
    " FROM device_connections WHERE tenant_id = $1 AND device_id = $2 \
     AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
);
/// How many device ids [`ONLINE_DEVICES`] takes at once.
pub(crate) const ONLINE_DEVICES_CHUNK: usize = 64;
/// Which of up to [`ONLINE_DEVICES_CHUNK`] devices have an open connection: $1 tenant, $2 to
/// $65 device ids. The IN-list has a fixed length so that the statement is static (and
/// prepared once) on both dialects; callers pad a short chunk by repeating its ids.
pub(crate) const ONLINE_DEVICES: &str = concat!(
    "SELECT DISTINCT device_id FROM device_connections \
     WHERE tenant_id = $1 AND disconnected_at IS NULL AND device_id IN (",
    "$2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, ",
    "$19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, ",
    "$35, $36, $37, $38, $39, $40, $41, $42, $43, $44, $45, $46, $47, $48, $49, $50, ",
    "$51, $52, $53, $54, $55, $56, $57, $58, $59, $60, $61, $62, $63, $64, $65",
    ")"
);

/// Replaces a device's inventory: $1 tenant, $2 device, $3 attributes (canonical JSON), $4 at.
/// `updated_at` moves only when the attributes differ; `reported_at` always. Returns the row's
/// `updated_at`. A device of another tenant fails the foreign key.
pub(crate) const PUT_INVENTORY: &str = "INSERT INTO device_inventory \
     (tenant_id, device_id, attributes, updated_at, reported_at) VALUES ($1, $2, $3, $4, $4) \
     ON CONFLICT (tenant_id, device_id) DO UPDATE SET \
     updated_at = CASE WHEN device_inventory.attributes = excluded.attributes \
     THEN device_inventory.updated_at ELSE excluded.updated_at END, \
     reported_at = excluded.reported_at, attributes = excluded.attributes \
     RETURNING updated_at";
/// Searchable attributes (see `0008_device_attributes.sql`).
pub(crate) const DELETE_ATTRIBUTES: &str =
    "DELETE FROM device_attributes WHERE tenant_id = $1 AND device_id = $2 AND scope = $3";
pub(crate) const INSERT_ATTRIBUTE: &str = "INSERT INTO device_attributes \
     (tenant_id, device_id, scope, name, seq, text_value, num_value) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
/// Sets a tag unless the device has $6 other tags: $1 tenant, $2 device, $3 key, $4 value,
/// $5 number or NULL. One statement, so that it is atomic without a read-then-write
/// transaction (which SQLite's WAL mode may refuse outright when another writer got in
/// between). No row written means the limit was reached.
pub(crate) const UPSERT_TAG: &str = "INSERT INTO device_attributes \
     (tenant_id, device_id, scope, name, seq, text_value, num_value) \
     SELECT $1, $2, 'tag', $3, 0, $4, $5 \
     WHERE (SELECT COUNT(*) FROM device_attributes \
     WHERE tenant_id = $1 AND device_id = $2 AND scope = 'tag' AND name <> $3) < $6 \
     ON CONFLICT (tenant_id, device_id, scope, name, seq) \
     DO UPDATE SET text_value = excluded.text_value, num_value = excluded.num_value";
pub(crate) const DELETE_TAG: &str = "DELETE FROM device_attributes \
     WHERE tenant_id = $1 AND device_id = $2 AND scope = 'tag' AND name = $3";
/// The tags of up to [`ONLINE_DEVICES_CHUNK`] devices: $1 tenant, $2 to $65 ids (padded).
pub(crate) const DEVICE_TAGS: &str = concat!(
    "SELECT device_id, name, text_value FROM device_attributes \
     WHERE tenant_id = $1 AND scope = 'tag' AND device_id IN (",
    "$2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, ",
    "$19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, ",
    "$35, $36, $37, $38, $39, $40, $41, $42, $43, $44, $45, $46, $47, $48, $49, $50, ",
    "$51, $52, $53, $54, $55, $56, $57, $58, $59, $60, $61, $62, $63, $64, $65",
    ") ORDER BY name"
);

macro_rules! group_columns {
    () => {
        "tenant_id, id, name, parent_id, kind, query, created_at, updated_at"
    };
}
pub(crate) const INSERT_GROUP: &str = concat!(
    "INSERT INTO device_groups (",
    group_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
);
pub(crate) const GROUPS: &str = concat!(
    "SELECT ",
    group_columns!(),
    " FROM device_groups WHERE tenant_id = $1 ORDER BY name"
);
pub(crate) const GROUP_BY_ID: &str = concat!(
    "SELECT ",
    group_columns!(),
    " FROM device_groups WHERE tenant_id = $1 AND id = $2"
);
/// $1 tenant, $2 id, $3 name, $4 parent, $5 query, $6 updated_at (the kind never changes).
pub(crate) const UPDATE_GROUP: &str = "UPDATE device_groups \
     SET name = $3, parent_id = $4, query = $5, updated_at = $6 WHERE tenant_id = $1 AND id = $2";
pub(crate) const GROUP_HAS_CHILDREN: &str =
    "SELECT COUNT(*) FROM device_groups WHERE tenant_id = $1 AND parent_id = $2";
pub(crate) const DELETE_GROUP: &str = "DELETE FROM device_groups WHERE tenant_id = $1 AND id = $2";
pub(crate) const ADD_MEMBER: &str = "INSERT INTO group_members (tenant_id, group_id, device_id, added_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, group_id, device_id) DO NOTHING";
pub(crate) const REMOVE_MEMBER: &str =
    "DELETE FROM group_members WHERE tenant_id = $1 AND group_id = $2 AND device_id = $3";
pub(crate) const DEVICE_GROUPS: &str = "SELECT group_id FROM group_members \
     WHERE tenant_id = $1 AND device_id = $2 ORDER BY group_id";

macro_rules! inventory_columns {
    () => {
        "device_id, attributes, updated_at, reported_at"
    };
}
pub(crate) const DEVICE_INVENTORY: &str = concat!(
    "SELECT ",
    inventory_columns!(),
    " FROM device_inventory WHERE tenant_id = $1 AND device_id = $2"
);
/// The inventories of up to [`ONLINE_DEVICES_CHUNK`] devices: $1 tenant, $2 to $65 ids (padded
/// like [`ONLINE_DEVICES`]).
pub(crate) const DEVICE_INVENTORIES: &str = concat!(
    "SELECT ",
    inventory_columns!(),
    " FROM device_inventory WHERE tenant_id = $1 AND device_id IN (",
    "$2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, ",
    "$19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, ",
    "$35, $36, $37, $38, $39, $40, $41, $42, $43, $44, $45, $46, $47, $48, $49, $50, ",
    "$51, $52, $53, $54, $55, $56, $57, $58, $59, $60, $61, $62, $63, $64, $65",
    ")"
);

pub(crate) const UPSERT_CREDENTIAL: &str = "INSERT INTO device_credentials \
     (device_id, tenant_id, secret_hash, created_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (device_id) DO UPDATE SET secret_hash = excluded.secret_hash, \
     created_at = excluded.created_at WHERE device_credentials.tenant_id = excluded.tenant_id";
/// Unscoped: the lookup before the device's tenant is known.
pub(crate) const CREDENTIAL_BY_DEVICE: &str = "SELECT device_id, tenant_id, secret_hash, created_at FROM device_credentials WHERE device_id = $1";
pub(crate) const DELETE_CREDENTIAL: &str =
    "DELETE FROM device_credentials WHERE tenant_id = $1 AND device_id = $2";

/// How many samples one [`INSERT_SAMPLES`] statement writes.
pub(crate) const INSERT_SAMPLES_CHUNK: usize = 100;
/// Writes up to [`INSERT_SAMPLES_CHUNK`] samples of one device: $1 tenant, $2 device, then
/// (metric, at, value) per sample in $3 to $302. The statement has a fixed number of rows so
/// that it is static (and prepared once) on both dialects; callers pad a short chunk by
/// repeating its rows, which `DISTINCT` removes again (an upsert must not meet one key twice
/// in a statement on PostgreSQL). The rows go in key order, so that concurrent writers to one
/// device take row locks in the same order. The tenant is part of the key: a device of another
/// tenant fails the foreign key, whether or not the device has samples at those times.
/// (`WHERE true` keeps SQLite from reading `ON CONFLICT` as a join constraint.)
pub(crate) static INSERT_SAMPLES: &str = match std::str::from_utf8(&INSERT_SAMPLES_SQL) {
    Ok(sql) => sql,
    Err(_) => panic!("INSERT_SAMPLES is ASCII"),
};
const INSERT_SAMPLES_HEAD: &[u8] =
    b"INSERT INTO telemetry_samples (tenant_id, device_id, metric, at, value) \
    SELECT DISTINCT $1, $2, column1, column2, column3 FROM (VALUES ";
const INSERT_SAMPLES_TAIL: &[u8] = b") AS v WHERE true ORDER BY column1, column2 \
    ON CONFLICT (tenant_id, device_id, metric, at) DO UPDATE SET value = excluded.value";
const INSERT_SAMPLES_LEN: usize = write_insert_samples(&mut []);
static INSERT_SAMPLES_SQL: [u8; INSERT_SAMPLES_LEN] = {
    let mut sql = [0; INSERT_SAMPLES_LEN];
    write_insert_samples(&mut sql);
    sql
};

/// Writes the statement into `out` (as much as fits) and returns its full length.
const fn write_insert_samples(out: &mut [u8]) -> usize {
    let mut end = put(out, 0, INSERT_SAMPLES_HEAD);
    let mut row = 0;
    while row < INSERT_SAMPLES_CHUNK {
        if row > 0 {
            end = put(out, end, b", ");
        }
        let first = 3 + 3 * row;
        end = put(out, end, b"($");
        end = put_number(out, end, first);
        end = put(out, end, b", $");
        end = put_number(out, end, first + 1);
        end = put(out, end, b", $");
        end = put_number(out, end, first + 2);
        end = put(out, end, b")");
        row += 1;
    }
    put(out, end, INSERT_SAMPLES_TAIL)
}

const fn put(out: &mut [u8], mut end: usize, bytes: &[u8]) -> usize {
    let mut i = 0;
    while i < bytes.len() {
        if end < out.len() {
            out[end] = bytes[i];
        }
        end += 1;
        i += 1;
    }
    end
}

const fn put_number(out: &mut [u8], end: usize, n: usize) -> usize {
    let mut digits = [0; 20];
    let mut len = 0;
    let mut rest = n;
    loop {
        digits[digits.len() - 1 - len] = b'0' + (rest % 10) as u8;
        len += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let (_, used) = digits.split_at(digits.len() - len);
    put(out, end, used)
}

/// A metric's samples with $4 <= at < $5, oldest first: $1 tenant, $2 device, $3 metric,
/// $6 limit. One range scan of the primary key.
pub(crate) const QUERY_SAMPLES: &str = "SELECT metric, at, value FROM telemetry_samples \
     WHERE tenant_id = $1 AND device_id = $2 AND metric = $3 AND at >= $4 AND at < $5 \
     ORDER BY at LIMIT $6";
/// The newest sample of each metric of a device: $1 tenant, $2 device. A `GROUP BY metric`
/// would read every sample the device ever sent; instead the recursive part hops from one
/// metric to the next through the primary key (a loose index scan, which neither database
/// does by itself), and each metric's newest sample is one more index lookup: the cost grows
/// with the number of metrics, not of samples. Metric names are ASCII and compared bytewise on both backends (PostgreSQL: `COLLATE "C"` on
/// the column).
pub(crate) const LATEST_SAMPLES: &str = "WITH RECURSIVE metrics (metric) AS ( \
     SELECT MIN(metric) FROM telemetry_samples WHERE tenant_id = $1 AND device_id = $2 \
     UNION ALL \
     SELECT (SELECT MIN(n.metric) FROM telemetry_samples n \
     WHERE n.tenant_id = $1 AND n.device_id = $2 AND n.metric > metrics.metric) \
     FROM metrics WHERE metrics.metric IS NOT NULL) \
     SELECT s.metric, s.at, s.value FROM metrics \
     JOIN telemetry_samples s ON s.tenant_id = $1 AND s.device_id = $2 \
     AND s.metric = metrics.metric \
     AND s.at = (SELECT MAX(l.at) FROM telemetry_samples l \
     WHERE l.tenant_id = $1 AND l.device_id = $2 AND l.metric = metrics.metric) \
     ORDER BY s.metric";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_online_devices_in_list_has_one_placeholder_per_chunk_slot() {
        let list = ONLINE_DEVICES
            .split_once("IN (")
            .and_then(|(_, rest)| rest.strip_suffix(')'))
            .map(|l| l.split(", ").collect::<Vec<_>>());
        let expected: Vec<String> = (2..ONLINE_DEVICES_CHUNK + 2)
            .map(|i| format!("${i}"))
            .collect();
        assert_eq!(list, Some(expected.iter().map(String::as_str).collect()));
    }

    #[test]
    fn the_insert_samples_statement_has_three_placeholders_per_chunk_slot() {
        let rows = INSERT_SAMPLES
            .split_once("(VALUES ")
            .and_then(|(_, rest)| rest.split_once(") AS v"))
            .map(|(rows, _)| rows.to_owned());
        let expected: Vec<String> = (0..INSERT_SAMPLES_CHUNK)
            .map(|r| format!("(${}, ${}, ${})", 3 + 3 * r, 4 + 3 * r, 5 + 3 * r))
            .collect();
        assert_eq!(rows, Some(expected.join(", ")));
        assert!(INSERT_SAMPLES.starts_with("INSERT INTO telemetry_samples "));
        assert!(INSERT_SAMPLES.contains("($3, $4, $5), ($6, $7, $8)"));
        assert!(INSERT_SAMPLES.contains("($300, $301, $302)) AS v WHERE true"));
        assert!(INSERT_SAMPLES.ends_with("SET value = excluded.value"));
    }
}
