//! First-start bootstrap: the default tenant and its first admin.
//!
//! Idempotent and safe when several servers start at once on one PostgreSQL database: each step
//! treats "already exists" as done, and only the server that created the admin gets its token.

use tender_core::auth::Role;
use tender_core::tenant::{Tenant, TenantSlug};
use tender_core::user::{ApiToken, User};
use tender_core::{Clock, TenantId, UserId};
use tender_store::{Store, StoreError};
use uuid::Uuid;

use crate::auth::{TokenKey, mint_token};

pub const BOOTSTRAP_ADMIN: &str = "admin";

pub struct Bootstrap {
    pub tenant: Tenant,
    /// The new admin's API token: `Some` only on the start that created the admin.
    pub admin_token: Option<String>,
}

/// Makes sure the default tenant exists, returning it.
pub async fn default_tenant(store: &dyn Store, clock: &dyn Clock) -> Result<Tenant, StoreError> {
    let slug = TenantSlug::default_tenant();
    if let Some(t) = store.tenant_by_slug(&slug).await? {
        return Ok(t);
    }
    let t = Tenant {
        id: TenantId::from_uuid(Uuid::now_v7()),
        slug: slug.clone(),
        name: "Default".into(),
        enrollment_open: true,
        created_at: clock.now(),
    };
    match store.create_tenant(&t).await {
        Ok(()) => Ok(t),
        Err(StoreError::Conflict(_)) => store
            .tenant_by_slug(&slug)
            .await?
            .ok_or_else(|| StoreError::Internal("default tenant vanished".into())),
        Err(e) => Err(e),
    }
}

/// Creates the default tenant and, if the tenant has no users yet, the `admin` user with an API
/// token that is returned once.
pub async fn run(
    store: &dyn Store,
    key: &TokenKey,
    clock: &dyn Clock,
) -> Result<Bootstrap, StoreError> {
    let tenant = default_tenant(store, clock).await?;
    if store.count_users(tenant.id).await? > 0 {
        return Ok(Bootstrap {
            tenant,
            admin_token: None,
        });
    }
    let admin = User {
        id: UserId::from_uuid(Uuid::now_v7()),
        tenant_id: tenant.id,
        username: BOOTSTRAP_ADMIN.into(),
        roles: vec![Role::Admin],
        disabled: false,
        created_at: clock.now(),
    };
    match store.create_user(&admin).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => {
            return Ok(Bootstrap {
                tenant,
                admin_token: None,
            });
        }
        Err(e) => return Err(e),
    }
    let token = issue_token(store, key, clock, &admin, "bootstrap").await?;
    Ok(Bootstrap {
        tenant,
        admin_token: Some(token),
    })
}

/// Issues a new non-expiring API token for `user`, returning its plaintext.
pub async fn issue_token(
    store: &dyn Store,
    key: &TokenKey,
    clock: &dyn Clock,
    user: &User,
    name: &str,
) -> Result<String, StoreError> {
    let minted = mint_token(key);
    store
        .create_api_token(&ApiToken {
            id: minted.id,
            tenant_id: user.tenant_id,
            user_id: user.id,
            name: name.into(),
            secret_hash: minted.secret_hash,
            created_at: clock.now(),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        })
        .await?;
    Ok(minted.plaintext)
}
