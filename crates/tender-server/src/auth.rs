//! Operator authentication and the one place permissions are checked.
//!
//! API tokens look like `tnd_<token id, 32 hex>_<secret, 43 base64url>` (enrollment tokens the
//! same with `tne_`). The token id finds the
//! record; the secret is checked against an HMAC-SHA256 of it, keyed with the server's token key
//! (`<data_dir>/secrets/token-hmac.key`), in constant time. The secret itself is never stored.
//!
//! Every API handler takes an [`Authorized<R>`] argument, where `R` names the permission the
//! handler needs (or [`AnyOperator`]). The extractor authenticates the caller and asks the core
//! ([`Principal::authorize`]) before the handler runs, so a handler cannot forget either step,
//! and roles or group scopes can change here without touching handlers.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tender_core::auth::{Permission, Principal};
use tender_core::user::ApiToken;
use tender_core::{Timestamp, TokenId};
use uuid::Uuid;

use crate::problem::Problem;
use crate::state::AppState;

/// Prefix of operator API tokens.
pub const API_TOKEN_PREFIX: &str = "tnd_";
/// Prefix of device enrollment tokens.
pub const ENROLLMENT_TOKEN_PREFIX: &str = "tne_";
const SECRET_BYTES: usize = 32;
/// A token's last use is written at most this often (ms), not on every request.
const LAST_USED_GRANULARITY_MS: i64 = 60_000;

/// The key that turns token secrets into stored hashes.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    pub fn from_bytes(b: [u8; 32]) -> Self {
        TokenKey(b)
    }

    pub fn hash(&self, secret: &str) -> Vec<u8> {
        // HMAC takes keys of any length: new_from_slice cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts any key length"),
        };
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

/// A freshly minted token: the string to hand out once, and the record to store.
pub struct NewToken {
    pub plaintext: String,
    pub id: TokenId,
    pub secret_hash: Vec<u8>,
}

/// Mints an operator API token.
pub fn mint_token(key: &TokenKey) -> NewToken {
    mint(API_TOKEN_PREFIX, key)
}

/// Mints a token with `prefix`: a fresh v7 id and 256 random bits of secret.
pub fn mint(prefix: &str, key: &TokenKey) -> NewToken {
    let id = TokenId::from_uuid(Uuid::now_v7());
    let mut secret = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    NewToken {
        plaintext: format!("{prefix}{}_{secret}", id.as_uuid().simple()),
        id,
        secret_hash: key.hash(&secret),
    }
}

/// Splits a presented API token into its id and secret, or says it is malformed.
pub fn parse_token(s: &str) -> Option<(TokenId, &str)> {
    parse(API_TOKEN_PREFIX, s)
}

/// Splits a token with `prefix` into its id and secret, or says it is malformed.
pub fn parse<'a>(prefix: &str, s: &'a str) -> Option<(TokenId, &'a str)> {
    let rest = s.strip_prefix(prefix)?;
    let (id, secret) = rest.split_at_checked(32)?;
    let secret = secret.strip_prefix('_')?;
    if secret.len() != 43
        || !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    let id = Uuid::try_parse(id).ok()?;
    Some((TokenId::from_uuid(id), secret))
}

/// Turns a bearer token into a principal, or a 401 saying why not.
pub async fn authenticate(state: &AppState, bearer: &str) -> Result<Principal, Problem> {
    let invalid = || Problem::unauthorized("the bearer token is not valid");
    let (id, secret) = parse_token(bearer).ok_or_else(invalid)?;
    let token: ApiToken = state
        .store
        .api_token_for_authentication(id)
        .await?
        .ok_or_else(invalid)?;
    let presented = state.token_key.hash(secret);
    if !bool::from(presented.ct_eq(&token.secret_hash)) {
        return Err(invalid());
    }
    // From here on the caller holds a genuine token, so saying why it fails leaks nothing.
    let now = state.clock.now();
    if token.revoked_at.is_some() {
        return Err(Problem::unauthorized("the bearer token has been revoked"));
    }
    if !token.is_usable(now) {
        return Err(Problem::unauthorized(
            "the bearer token has expired; create a new one",
        ));
    }
    let user = state
        .store
        .user(token.tenant_id, token.user_id)
        .await?
        .ok_or_else(invalid)?;
    if user.disabled {
        return Err(Problem::unauthorized("the account is disabled"));
    }
    if token
        .last_used_at
        .is_none_or(|t| now.unix_millis() - t.unix_millis() >= LAST_USED_GRANULARITY_MS)
    {
        record_use(state, &token, now).await;
    }
    Ok(Principal {
        tenant_id: user.tenant_id,
        user_id: user.id,
        username: user.username,
        token_id: Some(token.id),
        roles: user.roles,
    })
}

async fn record_use(state: &AppState, token: &ApiToken, now: Timestamp) {
    // Bookkeeping only: a failure here must not fail the request.
    if let Err(e) = state
        .store
        .record_token_use(token.tenant_id, token.id, now)
        .await
    {
        tracing::warn!(token = %token.id, error = %e, "could not record token use");
    }
}

/// What a handler requires of its caller.
pub trait Requirement: Send + Sync + 'static {
    /// `None`: any authenticated operator.
    const PERMISSION: Option<Permission>;
}

/// Any authenticated operator, whatever their permissions.
pub struct AnyOperator;
impl Requirement for AnyOperator {
    const PERMISSION: Option<Permission> = None;
}

macro_rules! requirements {
    ($($name:ident => $perm:ident),* $(,)?) => {
        /// Marker types naming one permission each, for [`Authorized`].
        pub mod need {
            use super::*;
            $(
                pub struct $name;
                impl Requirement for $name {
                    const PERMISSION: Option<Permission> = Some(Permission::$perm);
                }
            )*
        }
    };
}

requirements! {
    DevicesRead => DevicesRead,
    DevicesManage => DevicesManage,
    DevicesEnroll => DevicesEnroll,
    DevicesDecommission => DevicesDecommission,
    TenantManage => TenantManage,
    WebhooksManage => WebhooksManage,
    UsersManage => UsersManage,
    TwinWrite => TwinWrite,
    CommandsSend => CommandsSend,
    ArtifactsRead => ArtifactsRead,
    ArtifactsUpload => ArtifactsUpload,
    ArtifactsManage => ArtifactsManage,
    DeploymentsCreate => DeploymentsCreate,
    DeploymentsControl => DeploymentsControl,
    AlertsManage => AlertsManage,
    LogsRead => LogsRead,
}

/// An authenticated caller who holds the permission `R` names.
pub struct Authorized<R: Requirement> {
    pub principal: Principal,
    _requirement: PhantomData<R>,
}

impl<R: Requirement> FromRequestParts<AppState> for Authorized<R> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| {
                Problem::unauthorized(
                    "missing Authorization header: send `Authorization: Bearer <token>`",
                )
            })?
            .to_str()
            .map_err(|_| Problem::unauthorized("the Authorization header is not valid text"))?;
        let bearer = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                Problem::unauthorized("the Authorization header must use the Bearer scheme")
            })?
            .trim();
        let principal = authenticate(state, bearer).await?;
        if let Some(p) = R::PERMISSION {
            principal
                .authorize(p)
                .map_err(|e| Problem::forbidden(e.to_string()))?;
        }
        Ok(Authorized {
            principal,
            _requirement: PhantomData,
        })
    }
}

/// Prefix of device passwords (MQTT username/password for devices without a certificate).
pub const DEVICE_SECRET_PREFIX: &str = "tnp_";

fn device_secret_input(device: tender_core::DeviceId, secret: &str) -> String {
    // Bound to the device: a hash copied to another device's record does not verify there.
    format!("device:{device}:{secret}")
}

/// Mints a device password: the plaintext to hand out once and the hash to store.
pub fn mint_device_secret(key: &TokenKey, device: tender_core::DeviceId) -> (String, Vec<u8>) {
    let mut secret = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut secret);
    let plaintext = format!("{DEVICE_SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
    let hash = key.hash(&device_secret_input(device, &plaintext));
    (plaintext, hash)
}

/// Checks a password a device presented against its stored credential, in constant time.
pub fn verify_device_secret(
    key: &TokenKey,
    device: tender_core::DeviceId,
    password: &[u8],
    credential: &tender_core::certificate::DeviceCredential,
) -> bool {
    let Ok(password) = std::str::from_utf8(password) else {
        return false;
    };
    if credential.device_id != device || !password.starts_with(DEVICE_SECRET_PREFIX) {
        return false;
    }
    let hash = key.hash(&device_secret_input(device, password));
    bool::from(hash.ct_eq(&credential.secret_hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_back() {
        let key = TokenKey::from_bytes([1; 32]);
        let t = mint_token(&key);
        let (id, secret) = parse_token(&t.plaintext).unwrap();
        assert_eq!(id, t.id);
        assert_eq!(key.hash(secret), t.secret_hash);
        assert_eq!(t.plaintext.len(), 4 + 32 + 1 + 43);
    }

    #[test]
    fn hashes_depend_on_the_key() {
        let a = TokenKey::from_bytes([1; 32]).hash("s");
        let b = TokenKey::from_bytes([2; 32]).hash("s");
        assert_ne!(a, b);
    }

    #[test]
    fn malformed_tokens_are_refused_without_panicking() {
        let good = mint_token(&TokenKey::from_bytes([0; 32])).plaintext;
        let cut = &good[..good.len() - 1];
        for bad in [
            "",
            "tnd_",
            "tnd_x",
            "abc",
            cut,
            &good.replace("tnd_", "tok_"),
            &format!("{good}x"),
            "tnd_0123456789abcdef0123456789abcdeg_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "tnd_ééééééééééééééééé_x",
        ] {
            assert!(parse_token(bad).is_none(), "{bad}");
        }
    }
}
