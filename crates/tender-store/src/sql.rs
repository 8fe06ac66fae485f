//! SQL shared by both adapters (`$N` placeholders work on SQLite and PostgreSQL alike).
//! Every statement on tenant data has `tenant_id = $1` in its WHERE clause.

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
