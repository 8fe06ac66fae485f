//! SQL shared by both adapters (`$N` placeholders work on SQLite and PostgreSQL alike).
//! Every statement on tenant data has `tenant_id = $1` in its WHERE clause.

pub(crate) const PING: &str = "SELECT 1";

pub(crate) const INSERT_TENANT: &str =
    "INSERT INTO tenants (id, slug, name, created_at) VALUES ($1, $2, $3, $4)";
pub(crate) const TENANT_BY_ID: &str =
    "SELECT id, slug, name, created_at FROM tenants WHERE id = $1";
pub(crate) const TENANT_BY_SLUG: &str =
    "SELECT id, slug, name, created_at FROM tenants WHERE slug = $1";

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
        "tenant_id, id, name, device_type, state, created_at, updated_at, state_changed_at"
    };
}
pub(crate) const INSERT_DEVICE: &str = "INSERT INTO devices (tenant_id, id, name, device_type, state, created_at, updated_at, state_changed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
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
