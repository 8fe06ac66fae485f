//! Remote logs on the device HTTPS API: devices enrolled over mTLS upload gzip for log
//! requests made through the operator API. The agent's side is tested in the agent's tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};

use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;
use common::*;

on_both_backends!(
    an_upload_over_the_cap_is_refused_with_413_and_fails_the_request,
    a_device_cannot_upload_another_devices_request,
    uploaded_logs_are_served_as_text_or_gzip,
    log_requests_are_validated_and_need_logs_read,
);

struct Dev {
    id: String,
    http: reqwest::Client,
}

/// Enrolls a device and returns an mTLS client with its certificate.
async fn enroll(s: &TestServer) -> Dev {
    let (st, t) = admin(
        s,
        reqwest::Method::POST,
        "/api/v1/enrollment-tokens",
        Some(json!({"name": "t"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{t}");
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "device");
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    let ca = reqwest::Certificate::from_pem(ca_pem(s).as_bytes()).unwrap();
    let anonymous = reqwest::Client::builder()
        .tls_certs_only([ca.clone()])
        .build()
        .unwrap();
    let resp = anonymous
        .post(device_url(s, "/device/v1/enroll"))
        .json(&json!({"csr": csr, "token": t["token"], "name": "d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let a: Value = resp.json().await.unwrap();
    let pem = format!(
        "{}\n{}",
        key.serialize_pem(),
        a["certificate"].as_str().unwrap()
    );
    let http = reqwest::Client::builder()
        .tls_certs_only([ca])
        .identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    Dev {
        id: a["device_id"].as_str().unwrap().to_owned(),
        http,
    }
}

fn device_url(s: &TestServer, path: &str) -> String {
    let addr = s.server.as_ref().unwrap().device_addr;
    format!("https://127.0.0.1:{}{path}", addr.port())
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

async fn request_logs(s: &TestServer, device: &str) -> Value {
    let (st, r) = admin(
        s,
        reqwest::Method::POST,
        &format!("/api/v1/devices/{device}/logs"),
        Some(json!({"sources": ["app"], "lines": 10})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    r
}

async fn upload(d: &Dev, s: &TestServer, request: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let resp = d
        .http
        .put(device_url(s, &format!("/device/v1/logs/{request}")))
        .header("content-type", "application/gzip")
        .body(body)
        .send()
        .await
        .unwrap();
    let st = resp.status();
    (st, resp.json().await.unwrap_or(Value::Null))
}

async fn status(s: &TestServer, request: &str) -> Value {
    let (st, r) = admin(
        s,
        reqwest::Method::GET,
        &format!("/api/v1/logs/{request}"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    r
}

async fn an_upload_over_the_cap_is_refused_with_413_and_fails_the_request(b: Backend) {
    let mut s = start_with(b, |c| c.logs.max_upload_bytes = 4096).await;
    let d = enroll(&s).await;
    let r = request_logs(&s, &d.id).await;
    assert_eq!(
        r["state"], "pending",
        "the device is not connected over MQTT"
    );
    assert_eq!(r["max_bytes"], 4096, "the default follows the server's cap");
    let id = r["id"].as_str().unwrap();

    // Random bytes do not compress: well over the cap once gzipped.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let body = gz(&noise);
    assert!(body.len() > 4096);
    let (st, p) = upload(&d, &s, id, body).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{p}");
    assert_eq!(p["status"], 413);
    assert!(p["detail"].as_str().unwrap().contains("4096"), "{p}");
    let r = status(&s, id).await;
    assert_eq!(r["state"], "failed", "{r}");
    assert!(r["error"].as_str().unwrap().contains("cap"), "{r}");

    // Also when the size is not declared up front (chunked): counted while streaming.
    let r2 = request_logs(&s, &d.id).await;
    let id2 = r2["id"].as_str().unwrap();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        gz(&noise).chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let resp = d
        .http
        .put(device_url(&s, &format!("/device/v1/logs/{id2}")))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(status(&s, id2).await["state"], "failed");

    // A failed request takes no further upload.
    let (st, p) = upload(&d, &s, id, gz(b"small\n")).await;
    assert_eq!(st, StatusCode::CONFLICT, "{p}");
    s.stop().await;
}

async fn a_device_cannot_upload_another_devices_request(b: Backend) {
    let mut s = start(b).await;
    let owner = enroll(&s).await;
    let other = enroll(&s).await;
    let r = request_logs(&s, &owner.id).await;
    let id = r["id"].as_str().unwrap();
    let (st, p) = upload(&other, &s, id, gz(b"forged\n")).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{p}");
    assert_eq!(status(&s, id).await["state"], "pending", "untouched");
    // Without a certificate at all.
    let ca = reqwest::Certificate::from_pem(ca_pem(&s).as_bytes()).unwrap();
    let anonymous = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let resp = anonymous
        .put(device_url(&s, &format!("/device/v1/logs/{id}")))
        .body(gz(b"x\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // The owner can.
    let (st, p) = upload(&owner, &s, id, gz(b"mine\n")).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{p}");
    s.stop().await;
}

async fn uploaded_logs_are_served_as_text_or_gzip(b: Backend) {
    let mut s = start(b).await;
    let d = enroll(&s).await;
    let r = request_logs(&s, &d.id).await;
    let id = r["id"].as_str().unwrap();
    // Not ready yet: a problem saying so.
    let (st, p) = admin(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/logs/{id}/content"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT, "{p}");
    // Not gzip: refused, the request stays open.
    let (st, p) = upload(&d, &s, id, b"plain text".to_vec()).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{p}");
    let text = "2026-01-01T00:00:00Z one\n2026-01-01T00:00:01Z two ünïcode\n";
    let body = gz(text.as_bytes());
    let (st, p) = upload(&d, &s, id, body.clone()).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{p}");
    let r = status(&s, id).await;
    assert_eq!(r["state"], "ready");
    assert_eq!(r["size"], body.len());

    let resp = s
        .http
        .get(s.url(&format!("/api/v1/logs/{id}/content")))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(resp.text().await.unwrap(), text);

    let resp = s
        .http
        .get(s.url(&format!("/api/v1/logs/{id}/content")))
        .bearer_auth(&s.token)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let raw = resp.bytes().await.unwrap();
    assert_eq!(raw.as_ref(), body.as_slice());
    let mut back = String::new();
    flate2::read::GzDecoder::new(raw.as_ref())
        .read_to_string(&mut back)
        .unwrap();
    assert_eq!(back, text);

    // A second upload for a ready request is refused.
    let (st, _) = upload(&d, &s, id, gz(b"again\n")).await;
    assert_eq!(st, StatusCode::CONFLICT);

    // The device's requests, newest first.
    let second = request_logs(&s, &d.id).await;
    let (st, page) = admin(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/devices/{}/logs", d.id),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{page}");
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![second["id"].as_str().unwrap(), id]);
    s.stop().await;
}

async fn log_requests_are_validated_and_need_logs_read(b: Backend) {
    let mut s = start(b).await;
    let d = enroll(&s).await;
    let path = format!("/api/v1/devices/{}/logs", d.id);
    for (body, code) in [
        (json!({"sources": []}), "invalid-log-request"),
        (json!({"sources": ["../etc/passwd"]}), "invalid-log-request"),
        (
            json!({"sources": ["app"], "lines": 0}),
            "invalid-log-request",
        ),
        (
            json!({"sources": ["app"], "since": "yesterday"}),
            "invalid-field",
        ),
        (
            json!({"sources": ["app"], "since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}),
            "invalid-log-request",
        ),
        (
            json!({"sources": ["app"], "max_bytes": 1_000_000_000u64}),
            "invalid-log-request",
        ),
    ] {
        let (st, p) = admin(&s, reqwest::Method::POST, &path, Some(body.clone())).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {p}");
        assert!(p["type"].as_str().unwrap().ends_with(code), "{body}: {p}");
    }
    let (st, _) = admin(
        &s,
        reqwest::Method::POST,
        &format!("/api/v1/devices/{}/logs", uuid::Uuid::now_v7()),
        Some(json!({"sources": ["app"]})),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // A viewer may read devices, not their logs.
    let t = s.default_tenant().await;
    let (_, viewer, _) = s
        .user_with_token(t.id, "vera", vec![tender_core::auth::Role::Viewer], None)
        .await;
    let resp = s
        .http
        .post(s.url(&path))
        .bearer_auth(&viewer)
        .json(&json!({"sources": ["app"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = s
        .http
        .get(s.url(&path))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    s.stop().await;
}
