//! Device enrollment and the HTTPS device API over real mTLS, with the three ways in (token,
//! pending approval, preauthorized), renewal, revocation and decommissioning, and the abuse
//! cases of this listener. Every case runs on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

mod common;
use common::*;

/// A device: its key, and once enrolled its certificate.
struct Dev {
    key: KeyPair,
    cert: Option<String>,
}

impl Dev {
    fn new() -> Self {
        Dev {
            key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
            cert: None,
        }
    }

    fn csr(&self) -> String {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "whatever-the-device-says");
        p.serialize_request(&self.key).unwrap().pem().unwrap()
    }

    fn public_key_pem(&self) -> String {
        self.key.public_key_pem()
    }
}

fn device_base(s: &TestServer) -> String {
    format!(
        "https://127.0.0.1:{}",
        s.server.as_ref().unwrap().device_addr.port()
    )
}

/// An HTTPS client that trusts only Tender's CA, presenting `dev`'s certificate if it has one.
fn client(s: &TestServer, dev: Option<&Dev>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem(s).as_bytes()).unwrap();
    let mut b = reqwest::Client::builder().tls_certs_only([ca]);
    if let Some(Dev {
        key,
        cert: Some(cert),
    }) = dev
    {
        let pem = format!("{cert}{}", key.serialize_pem());
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

async fn enroll(s: &TestServer, body: Value) -> (StatusCode, Value) {
    let resp = client(s, None)
        .post(format!("{}/device/v1/enroll", device_base(s)))
        .json(&body)
        .send()
        .await
        .unwrap();
    let st = resp.status();
    (st, resp.json().await.unwrap())
}

async fn device_whoami(s: &TestServer, dev: &Dev) -> (StatusCode, Value) {
    let resp = client(s, Some(dev))
        .get(format!("{}/device/v1/whoami", device_base(s)))
        .send()
        .await
        .unwrap();
    let st = resp.status();
    (st, resp.json().await.unwrap())
}

async fn new_token(s: &TestServer, body: Value) -> String {
    let (st, t) = admin(
        s,
        reqwest::Method::POST,
        "/api/v1/enrollment-tokens",
        Some(body),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    assert!(t["token"].as_str().unwrap().starts_with("tne_"));
    t["token"].as_str().unwrap().to_owned()
}

/// Enrolls `dev` with `token`, expecting a certificate.
async fn enroll_with_token(s: &TestServer, dev: &mut Dev, token: &str) -> String {
    let (st, a) = enroll(
        s,
        json!({"csr": dev.csr(), "token": token, "name": "kiosk-1"}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    assert_eq!(a["status"], "accepted");
    dev.cert = Some(a["certificate"].as_str().unwrap().to_owned());
    a["device_id"].as_str().unwrap().to_owned()
}

on_both_backends!(
    a_token_admits_a_device_that_then_authenticates_by_certificate,
    token_limits_and_bad_tokens_are_refused,
    without_a_token_a_device_waits_for_an_operator,
    a_closed_tenant_refuses_devices_without_tokens,
    a_preauthorized_key_enrolls_without_a_token,
    rejected_and_decommissioned_devices_stay_out,
    revoking_certificates_locks_the_device_out_until_it_enrolls_again,
    renewal_over_the_authenticated_connection,
    bad_csrs_and_bodies_are_400s,
    a_device_downloads_artifacts_of_its_tenant_with_ranges,
);

async fn a_token_admits_a_device_that_then_authenticates_by_certificate(b: Backend) {
    let mut s = start(b).await;
    let token = new_token(
        &s,
        json!({"name": "factory", "max_uses": 5, "device_type": "kiosk"}),
    )
    .await;
    let mut dev = Dev::new();
    let id = enroll_with_token(&s, &mut dev, &token).await;

    let (_, d) = s.admin_get(&format!("/api/v1/devices/{id}")).await;
    assert!(
        d["last_seen_at"].is_null(),
        "not heard from over mTLS yet: {d}"
    );
    let (st, me) = device_whoami(&s, &dev).await;
    assert_eq!(st, StatusCode::OK, "{me}");
    assert_eq!(me["device_id"], id.as_str());
    assert_eq!(me["state"], "accepted");
    let (_, d) = s.admin_get(&format!("/api/v1/devices/{id}")).await;
    assert!(
        d["last_seen_at"].is_string(),
        "an authenticated request counts as seen: {d}"
    );

    // The registry shows it, with the token's device type and the key's fingerprint.
    let (_, d) = s.admin_get(&format!("/api/v1/devices/{id}")).await;
    assert_eq!(d["state"], "accepted");
    assert_eq!(d["device_type"], "kiosk");
    assert_eq!(d["name"], "kiosk-1");
    assert_eq!(d["key_fingerprint"].as_str().unwrap().len(), 64);
    let (_, tokens) = s.admin_get("/api/v1/enrollment-tokens").await;
    assert_eq!(tokens["items"][0]["uses"], 1);
    assert!(
        tokens["items"][0].get("token").is_none(),
        "secrets are never listed"
    );

    // Without a certificate the device API says so.
    let resp = client(&s, None)
        .get(format!("{}/device/v1/whoami", device_base(&s)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    s.stop().await;
}

async fn token_limits_and_bad_tokens_are_refused(b: Backend) {
    let mut s = start(b).await;
    let once = new_token(&s, json!({"name": "one", "max_uses": 1})).await;
    enroll_with_token(&s, &mut Dev::new(), &once).await;
    let (st, p) = enroll(&s, json!({"csr": Dev::new().csr(), "token": once})).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{p}");
    assert_eq!(p["type"], "urn:tender:problem:enrollment-token-exhausted");

    let revoked = new_token(&s, json!({"name": "gone"})).await;
    let (_, list) = s.admin_get("/api/v1/enrollment-tokens").await;
    let id = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "gone")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (st, _) = admin(
        &s,
        reqwest::Method::DELETE,
        &format!("/api/v1/enrollment-tokens/{id}"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, p) = enroll(&s, json!({"csr": Dev::new().csr(), "token": revoked})).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(p["type"], "urn:tender:problem:enrollment-token-revoked");

    let (st, p) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/enrollment-tokens",
        Some(json!({"name": "never", "max_uses": 0})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{p}");
    for bad in [
        "tne_garbage",
        "",
        &once.replace("tne_", "tnd_"),
        &format!("{}x", &once[..once.len() - 1]),
    ] {
        let (st, p) = enroll(&s, json!({"csr": Dev::new().csr(), "token": bad})).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{bad}: {p}");
        assert_eq!(p["type"], "urn:tender:problem:invalid-enrollment-token");
    }
    // Nothing was registered by the refused attempts.
    let (_, page) = s.admin_get("/api/v1/devices").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    s.stop().await;
}

async fn without_a_token_a_device_waits_for_an_operator(b: Backend) {
    let mut s = start(b).await;
    let mut dev = Dev::new();
    let (st, a) = enroll(&s, json!({"csr": dev.csr(), "name": "gw-7"})).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{a}");
    assert_eq!(a["status"], "pending");
    assert!(a.get("certificate").is_none());
    let id = a["device_id"].as_str().unwrap().to_owned();
    // Asking again is the same device, still waiting.
    let (st, again) = enroll(&s, json!({"csr": dev.csr()})).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    assert_eq!(again["device_id"], id.as_str());

    let (_, pending) = s.admin_get("/api/v1/devices?state=pending").await;
    assert_eq!(pending["items"][0]["id"], id.as_str());
    let (st, d) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/devices/{id}/accept"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{d}");
    assert_eq!(d["state"], "accepted");

    let (st, a) = enroll(&s, json!({"csr": dev.csr()})).await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    assert_eq!(a["device_id"], id.as_str());
    dev.cert = Some(a["certificate"].as_str().unwrap().to_owned());
    assert_eq!(device_whoami(&s, &dev).await.0, StatusCode::OK);

    // Bulk: every pending device at once.
    for _ in 0..3 {
        let (st, _) = enroll(&s, json!({"csr": Dev::new().csr()})).await;
        assert_eq!(st, StatusCode::ACCEPTED);
    }
    let (st, r) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/devices/accept-pending",
        Some(json!({"all": true})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["accepted"].as_array().unwrap().len(), 3);
    let (_, pending) = s.admin_get("/api/v1/devices?state=pending").await;
    assert!(pending["items"].as_array().unwrap().is_empty());
    let (st, _) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/devices/accept-pending",
        Some(json!({})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // Accepting an accepted device is a conflict that names the states.
    let (st, p) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/devices/{id}/accept"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{p}");
    s.stop().await;
}

async fn a_closed_tenant_refuses_devices_without_tokens(b: Backend) {
    let mut s = start(b).await;
    let (st, _) = admin(
        &s,
        reqwest::Method::PUT,
        "/api/v1/tenant/enrollment",
        Some(json!({"open": false})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, p) = enroll(&s, json!({"csr": Dev::new().csr()})).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{p}");
    assert_eq!(p["type"], "urn:tender:problem:enrollment-closed");
    let (_, page) = s.admin_get("/api/v1/devices").await;
    assert!(
        page["items"].as_array().unwrap().is_empty(),
        "nothing registered"
    );
    // Tokens still work.
    let token = new_token(&s, json!({"name": "t"})).await;
    enroll_with_token(&s, &mut Dev::new(), &token).await;
    // An unknown tenant is named.
    let (st, p) = enroll(&s, json!({"csr": Dev::new().csr(), "tenant": "nope"})).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{p}");
    s.stop().await;
}

async fn a_preauthorized_key_enrolls_without_a_token(b: Backend) {
    let mut s = start(b).await;
    admin(
        &s,
        reqwest::Method::PUT,
        "/api/v1/tenant/enrollment",
        Some(json!({"open": false})),
    )
    .await;
    let mut dev = Dev::new();
    let (st, d) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/devices",
        Some(json!({"name": "line-3-plc", "public_key": dev.public_key_pem()})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    assert_eq!(d["state"], "preauthorized");
    let (st, p) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/devices",
        Some(json!({"name": "again", "public_key": dev.public_key_pem()})),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{p}");
    let (st, p) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/devices",
        Some(json!({"name": "x", "public_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{p}");

    let (st, a) = enroll(&s, json!({"csr": dev.csr()})).await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    assert_eq!(a["device_id"], d["id"]);
    dev.cert = Some(a["certificate"].as_str().unwrap().to_owned());
    let (_, me) = device_whoami(&s, &dev).await;
    assert_eq!(me["state"], "accepted");
    assert_eq!(me["name"], "line-3-plc");
    s.stop().await;
}

async fn rejected_and_decommissioned_devices_stay_out(b: Backend) {
    let mut s = start(b).await;
    let token = new_token(&s, json!({"name": "t"})).await;
    // Rejected: even a valid token does not bring it back.
    let pending = Dev::new();
    let (_, a) = enroll(&s, json!({"csr": pending.csr()})).await;
    let id = a["device_id"].as_str().unwrap();
    let (st, _) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/devices/{id}/reject"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (st, p) = enroll(&s, json!({"csr": pending.csr(), "token": token})).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(p["type"], "urn:tender:problem:device-rejected");

    // Decommissioned: its certificate stops working at once and it can never enroll again.
    let mut dev = Dev::new();
    let id = enroll_with_token(&s, &mut dev, &token).await;
    assert_eq!(device_whoami(&s, &dev).await.0, StatusCode::OK);
    let (st, d) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/devices/{id}/decommission"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{d}");
    assert_eq!(d["state"], "decommissioned");
    let (st, p) = device_whoami(&s, &dev).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{p}");
    let (st, p) = enroll(&s, json!({"csr": dev.csr(), "token": token})).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(p["type"], "urn:tender:problem:device-decommissioned");
    // Its history is kept: it is still in the registry.
    let (st, d) = s.admin_get(&format!("/api/v1/devices/{id}")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(d["state"], "decommissioned");
    s.stop().await;
}

async fn revoking_certificates_locks_the_device_out_until_it_enrolls_again(b: Backend) {
    let mut s = start(b).await;
    let token = new_token(&s, json!({"name": "t"})).await;
    let mut dev = Dev::new();
    let id = enroll_with_token(&s, &mut dev, &token).await;
    let (st, r) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/devices/{id}/revoke-certificates"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(r["revoked"], 1);
    assert_eq!(device_whoami(&s, &dev).await.0, StatusCode::FORBIDDEN);
    // Still accepted, so the same key gets a new certificate, and that one works.
    let (st, a) = enroll(&s, json!({"csr": dev.csr()})).await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    dev.cert = Some(a["certificate"].as_str().unwrap().to_owned());
    assert_eq!(device_whoami(&s, &dev).await.0, StatusCode::OK);
    s.stop().await;
}

async fn renewal_over_the_authenticated_connection(b: Backend) {
    let mut s = start(b).await;
    let token = new_token(&s, json!({"name": "t"})).await;
    let mut dev = Dev::new();
    enroll_with_token(&s, &mut dev, &token).await;
    let (_, before) = device_whoami(&s, &dev).await;
    let resp = client(&s, Some(&dev))
        .post(format!("{}/device/v1/renew", device_base(&s)))
        .json(&json!({"csr": dev.csr()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let a: Value = resp.json().await.unwrap();
    dev.cert = Some(a["certificate"].as_str().unwrap().to_owned());
    let (st, after) = device_whoami(&s, &dev).await;
    assert_eq!(st, StatusCode::OK);
    assert_ne!(before["certificate_serial"], after["certificate_serial"]);
    // A CSR for some other key is refused.
    let resp = client(&s, Some(&dev))
        .post(format!("{}/device/v1/renew", device_base(&s)))
        .json(&json!({"csr": Dev::new().csr()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Renewal needs a certificate.
    let resp = client(&s, None)
        .post(format!("{}/device/v1/renew", device_base(&s)))
        .json(&json!({"csr": dev.csr()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    s.stop().await;
}

async fn bad_csrs_and_bodies_are_400s(b: Backend) {
    let mut s = start(b).await;
    for body in [
        json!({"csr": "not a csr"}),
        json!({"csr": ""}),
        json!({"csr": Dev::new().csr(), "name": ""}),
        json!({"csr": Dev::new().csr(), "surprise": 1}),
        json!({"token": "x"}),
    ] {
        let (st, p) = enroll(&s, body.clone()).await;
        assert!(
            st == StatusCode::BAD_REQUEST || st == StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {st} {p}"
        );
        assert!(
            p["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:tender:problem:"),
            "{p}"
        );
    }
    let huge = "x".repeat(200 * 1024);
    let resp = client(&s, None)
        .post(format!("{}/device/v1/enroll", device_base(&s)))
        .header("content-type", "application/json")
        .body(format!("{{\"csr\": \"{huge}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    s.stop().await;
}

/// A certificate from a CA other than Tender's is refused in the handshake.
#[tokio::test]
async fn a_foreign_ca_certificate_cannot_connect() {
    let mut s = start(Backend::Sqlite).await;
    let foreign_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "impostor");
    let cert = p.self_signed(&foreign_key).unwrap();
    let dev = Dev {
        key: foreign_key,
        cert: Some(cert.pem()),
    };
    let result = client(&s, Some(&dev))
        .get(format!("{}/device/v1/whoami", device_base(&s)))
        .send()
        .await;
    assert!(result.is_err(), "the handshake must fail: {result:?}");
    // The listener keeps serving everyone else.
    let token = new_token(&s, json!({"name": "t"})).await;
    let mut good = Dev::new();
    enroll_with_token(&s, &mut good, &token).await;
    assert_eq!(device_whoami(&s, &good).await.0, StatusCode::OK);
    s.stop().await;
}

/// An expired certificate from Tender's own CA is refused in the handshake.
#[tokio::test]
async fn an_expired_certificate_cannot_connect() {
    let mut s = start(Backend::Sqlite).await;
    let token = new_token(&s, json!({"name": "t"})).await;
    let mut dev = Dev::new();
    let id = enroll_with_token(&s, &mut dev, &token).await;
    // Sign a certificate for the same device and key that expired yesterday.
    let dd = tender_server::datadir::DataDir::prepare(&s.config.data_dir).unwrap();
    let ca = tender_server::ca::load_or_create(&Default::default(), &dd, now()).unwrap();
    let csr = tender_server::ca::parse_csr(&dev.csr()).unwrap();
    let long_ago = tender_core::Timestamp::from_unix_millis(now().unix_millis() - 3 * 86_400_000);
    let old = ca
        .sign_device(
            &csr,
            id.parse().unwrap(),
            &tender_core::tenant::TenantSlug::default_tenant(),
            long_ago,
            1,
        )
        .unwrap();
    let expired = Dev {
        key: dev.key,
        cert: Some(old.pem),
    };
    let result = client(&s, Some(&expired))
        .get(format!("{}/device/v1/whoami", device_base(&s)))
        .send()
        .await;
    assert!(result.is_err(), "the handshake must fail: {result:?}");
    s.stop().await;
}

/// A client that connects and never starts TLS is dropped after the handshake timeout.
#[tokio::test]
async fn a_silent_connection_is_dropped() {
    let mut s = start_with(Backend::Sqlite, |c| c.devices.handshake_timeout_secs = 1).await;
    let addr = s.server.as_ref().unwrap().device_addr;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    // Wait for the server to close (EOF), bounded well above the configured timeout.
    let n = tokio::time::timeout(std::time::Duration::from_secs(30), tcp.read(&mut buf))
        .await
        .expect("the server closes a silent connection")
        .unwrap_or(0);
    assert_eq!(n, 0);
    s.stop().await;
}

/// A client that finishes TLS (no certificate needed for enrollment) and then says nothing is
/// dropped too.
#[tokio::test]
async fn silence_after_the_handshake_is_dropped() {
    let mut s = start_with(Backend::Sqlite, |c| c.devices.handshake_timeout_secs = 1).await;
    let addr = s.server.as_ref().unwrap().device_addr;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem(&s).as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("the handshake completes");
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(std::time::Duration::from_secs(30), tls.read(&mut buf))
        .await
        .expect("the server closes a silent connection");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    s.stop().await;
}

/// Beyond `devices.max_connections` new connections are closed at once, and the listener serves
/// again when connections go away.
#[tokio::test]
async fn the_connection_limit_refuses_cleanly() {
    let mut s = start_with(Backend::Sqlite, |c| {
        c.devices.max_connections = 2;
        // Long, so that only the limit can explain the third connection closing.
        c.devices.handshake_timeout_secs = 120;
    })
    .await;
    let addr = s.server.as_ref().unwrap().device_addr;
    let hold1 = tokio::net::TcpStream::connect(addr).await.unwrap();
    let hold2 = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The listener takes connections in order; this one finds both permits in use.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(std::time::Duration::from_secs(30), third.read(&mut buf))
        .await
        .expect("a connection over the limit is closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
    drop((hold1, hold2));
    // Once the held connections' tasks end, enrollment works again (bounded retries, each
    // waiting on a real answer).
    let token = new_token(&s, json!({"name": "t"})).await;
    let mut enrolled = false;
    for _ in 0..50 {
        let r = client(&s, None)
            .post(format!("{}/device/v1/enroll", device_base(&s)))
            .json(&json!({"csr": Dev::new().csr(), "token": token}))
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == StatusCode::CREATED) {
            enrolled = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(enrolled, "the listener serves again below the limit");
    s.stop().await;
}

/// The device listener's outcomes are visible in `/metrics`.
#[tokio::test]
async fn device_listener_outcomes_are_counted() {
    let mut s = start(Backend::Sqlite).await;
    let token = new_token(&s, json!({"name": "t"})).await;
    enroll_with_token(&s, &mut Dev::new(), &token).await;
    let (st, _) = enroll(&s, json!({"csr": Dev::new().csr()})).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let (st, _) = enroll(&s, json!({"csr": Dev::new().csr(), "token": "tne_forged"})).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = enroll(&s, json!({"csr": "nope"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // A certificate from another CA fails the handshake.
    let foreign_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let foreign = CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .self_signed(&foreign_key)
        .unwrap();
    let impostor = Dev {
        key: foreign_key,
        cert: Some(foreign.pem()),
    };
    let _ = client(&s, Some(&impostor))
        .get(format!("{}/device/v1/whoami", device_base(&s)))
        .send()
        .await;
    let text = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"tender_device_enrollments_total{outcome="issued"} 1"#,
        r#"tender_device_enrollments_total{outcome="pending"} 1"#,
        r#"tender_device_enrollments_total{outcome="refused"} 1"#,
        r#"tender_device_enrollments_total{outcome="invalid"} 1"#,
        r#"tender_device_connections_total{outcome="handshake_failed"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line}:\n{text}");
    }
    assert!(
        text.contains(r#"tender_device_connections_total{outcome="accepted"}"#),
        "{text}"
    );
    s.stop().await;
}

async fn a_device_downloads_artifacts_of_its_tenant_with_ranges(b: Backend) {
    let mut s = start_with(b, |c| c.artifacts.require_signature = false).await;
    let content: Vec<u8> = (0..50_000u32).map(|i| (i % 13) as u8).collect();
    let d =
        tender_artifact::describe(&content[..], tender_artifact::Compression::None, None).unwrap();
    let manifest = tender_artifact::Manifest {
        format: tender_artifact::FORMAT.into(),
        name: "app".into(),
        version: "1".into(),
        compatible: vec!["kiosk".into()],
        depends: Default::default(),
        provides: Default::default(),
        payload_type: "file".into(),
        payloads: vec![tender_artifact::Payload {
            name: "p".into(),
            size: d.size,
            sha256: d.sha256,
            compression: tender_artifact::Compression::None,
            stored_size: None,
            meta: Default::default(),
        }],
        scripts: vec![],
        meta: Default::default(),
        created_at: None,
    };
    let c2 = content.clone();
    let file = tender_artifact::write(
        Vec::new(),
        &manifest,
        &tender_artifact::Signatures::default(),
        move |_| Ok(Box::new(std::io::Cursor::new(c2.clone())) as Box<dyn std::io::Read>),
    )
    .unwrap();
    let resp = s
        .http
        .post(s.url("/api/v1/artifacts"))
        .bearer_auth(&s.token)
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let a: Value = resp.json().await.unwrap();
    let id = a["id"].as_str().unwrap();

    let token = new_token(&s, json!({"name": "factory"})).await;
    let mut dev = Dev::new();
    enroll_with_token(&s, &mut dev, &token).await;
    let url = format!("{}/device/v1/artifacts/{id}", device_base(&s));
    let resp = client(&s, Some(&dev)).get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &file[..]);
    // Resuming after 10,000 bytes.
    let resp = client(&s, Some(&dev))
        .get(&url)
        .header("range", "bytes=10000-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &file[10_000..]);
    // Without a certificate, or for an unknown artifact: refused.
    let resp = client(&s, None).get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = client(&s, Some(&dev))
        .get(format!(
            "{}/device/v1/artifacts/{}",
            device_base(&s),
            uuid::Uuid::now_v7()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    s.stop().await;
}
