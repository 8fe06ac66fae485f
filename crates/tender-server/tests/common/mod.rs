//! Shared by the integration tests: a server started in-process on ephemeral loopback ports,
//! on SQLite or on a fresh PostgreSQL database.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use reqwest::StatusCode;
use serde_json::Value;
use tender_core::auth::Role;
use tender_core::device::{Device, DeviceState};
use tender_core::tenant::{Tenant, TenantSlug};
use tender_core::user::{ApiToken, User};
use tender_core::{DeviceId, TenantId, Timestamp, UserId};
use tender_server::auth::{TokenKey, mint_token};
use tender_server::{Config, RunningServer};
use tender_store::conformance::PgTestDatabase;
use uuid::Uuid;

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
    pub config: Config,
    pub _dir: tempfile::TempDir,
    pub _db: Option<PgTestDatabase>,
}

pub async fn start(backend: Backend) -> TestServer {
    start_with(backend, |_| {}).await
}

/// [`start`] with the configuration adjusted by `tweak` first.
pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let db = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(PgTestDatabase::create().await),
    };
    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.devices.listen = "127.0.0.1:0".parse().unwrap();
    config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    config.http.body_limit_bytes = 64 * 1024;
    config.database.url = db.as_ref().map(|d| d.url.clone());
    config.database.max_connections = 4;
    tweak(&mut config);
    let server = tender_server::start(config.clone())
        .await
        .expect("server starts");
    let token = server
        .bootstrap_token
        .clone()
        .expect("a fresh server prints a bootstrap token");
    TestServer {
        base: format!("http://{}", server.http_addr),
        server: Some(server),
        token,
        http: reqwest::Client::new(),
        config,
        _dir: dir,
        _db: db,
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, body)
    }

    pub async fn admin_get(&self, path: &str) -> (StatusCode, Value) {
        let (s, _, b) = self.get(path, Some(&self.token)).await;
        (s, b)
    }

    pub fn store(&self) -> &dyn tender_store::Store {
        &*self.server.as_ref().unwrap().store
    }

    /// The key the server hashes tokens with (read from its data directory).
    pub fn token_key(&self) -> TokenKey {
        let hex =
            std::fs::read_to_string(self.config.data_dir.join("secrets/token-hmac.key")).unwrap();
        let hex = hex.trim();
        let mut b = [0u8; 32];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        TokenKey::from_bytes(b)
    }

    pub async fn default_tenant(&self) -> Tenant {
        self.store()
            .tenant_by_slug(&TenantSlug::default_tenant())
            .await
            .unwrap()
            .unwrap()
    }

    /// A user with `roles` in `tenant` and a token for it.
    pub async fn user_with_token(
        &self,
        tenant: TenantId,
        name: &str,
        roles: Vec<Role>,
        expires: Option<Timestamp>,
    ) -> (User, String, ApiToken) {
        let user = User {
            id: UserId::from_uuid(Uuid::now_v7()),
            tenant_id: tenant,
            username: name.into(),
            roles,
            disabled: false,
            created_at: now(),
        };
        self.store().create_user(&user).await.unwrap();
        let minted = mint_token(&self.token_key());
        let record = ApiToken {
            id: minted.id,
            tenant_id: tenant,
            user_id: user.id,
            name: "test".into(),
            secret_hash: minted.secret_hash,
            created_at: now(),
            expires_at: expires,
            revoked_at: None,
            last_used_at: None,
        };
        self.store().create_api_token(&record).await.unwrap();
        (user, minted.plaintext, record)
    }

    pub async fn add_devices(
        &self,
        tenant: TenantId,
        n: usize,
        state: DeviceState,
    ) -> Vec<DeviceId> {
        let mut ids = Vec::new();
        for i in 0..n {
            let d = Device::new(
                DeviceId::from_uuid(Uuid::now_v7()),
                tenant,
                format!("dev-{i}"),
                Some("rpi4".into()),
                state,
                now(),
            )
            .unwrap();
            self.store().insert_device(&d).await.unwrap();
            ids.push(d.id);
        }
        ids
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            assert!(s.shutdown().await, "drained within the grace period");
        }
    }
}

/// Calls the operator API as the bootstrap admin; the body as JSON (`Null` when not JSON).
pub async fn admin(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = s.http.request(method, s.url(path)).bearer_auth(&s.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let st = resp.status();
    let text = resp.text().await.unwrap();
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The device CA certificate devices trust (PEM).
pub fn ca_pem(s: &TestServer) -> String {
    std::fs::read_to_string(s.config.data_dir.join("ca/ca.crt")).unwrap()
}

pub fn now() -> Timestamp {
    Timestamp::from_datetime(time::OffsetDateTime::now_utc())
}

pub fn assert_problem(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &Value,
    expect: StatusCode,
) {
    assert_eq!(status, expect, "{body}");
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/problem+json"),
        "{body}"
    );
    assert_eq!(body["status"], expect.as_u16(), "{body}");
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:tender:problem:"),
        "{body}"
    );
    assert!(body["title"].is_string(), "{body}");
    assert!(!body["detail"].as_str().unwrap().is_empty(), "{body}");
}

#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test] async fn $name() { super::$name(super::Backend::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test] async fn $name() { super::$name(super::Backend::Postgres).await } )*
        }
    };
}
