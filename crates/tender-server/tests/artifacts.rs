//! Artifacts through the operator API: trusted keys, uploads checked completely (signature,
//! layout, hashes), listing, downloads with ranges, deletion. Every case runs on SQLite and on
//! PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Read};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tender_artifact::{Compression, FORMAT, Manifest, Payload, Signatures, SigningKey};

mod common;
use common::*;

on_both_backends!(
    signed_artifacts_are_uploaded_listed_downloaded_and_deleted,
    bad_artifacts_are_refused_with_the_reason,
    trusted_keys_are_checked_and_per_tenant,
    uploads_larger_than_the_limit_get_413,
);

fn signing_key(n: u8) -> SigningKey {
    SigningKey::from_seed(&[n; 32])
}

/// An artifact with one payload of `content`, signed by `signer` when given.
fn artifact(name: &str, version: &str, content: &[u8], signer: Option<&SigningKey>) -> Vec<u8> {
    let d = tender_artifact::describe(content, Compression::None, None).unwrap();
    let manifest = Manifest {
        format: FORMAT.into(),
        name: name.into(),
        version: version.into(),
        compatible: vec!["gw".into()],
        depends: Default::default(),
        provides: [(format!("{name}.version"), version.to_string())].into(),
        payload_type: "file".into(),
        payloads: vec![Payload {
            name: "app.bin".into(),
            size: d.size,
            sha256: d.sha256,
            compression: Compression::None,
            stored_size: None,
            meta: [("path".to_string(), json!("/opt/app/app.bin"))]
                .into_iter()
                .collect(),
        }],
        scripts: vec![],
        meta: Default::default(),
        created_at: None,
    };
    let mut sigs = Signatures::default();
    if let Some(k) = signer {
        sigs.add(k, &manifest.to_bytes());
    }
    let content = content.to_vec();
    tender_artifact::write(Vec::new(), &manifest, &sigs, move |_| {
        Ok(Box::new(io::Cursor::new(content.clone())) as Box<dyn Read>)
    })
    .unwrap()
}

async fn trust(s: &TestServer, key: &SigningKey, name: &str) -> (StatusCode, Value) {
    admin(
        s,
        reqwest::Method::POST,
        "/api/v1/signing-keys",
        Some(json!({"name": name, "public_key_pem": key.public_key().to_pem().unwrap()})),
    )
    .await
}

async fn upload(s: &TestServer, token: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
    let resp = s
        .http
        .post(s.url("/api/v1/artifacts"))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let st = resp.status();
    (st, resp.json().await.unwrap_or(Value::Null))
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

async fn signed_artifacts_are_uploaded_listed_downloaded_and_deleted(b: Backend) {
    let mut s = start(b).await;
    let key = signing_key(1);
    assert_eq!(trust(&s, &key, "release").await.0, StatusCode::CREATED);
    // Larger than the API's body limit (64 KiB in tests): artifact uploads stream past it.
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let file = artifact("app", "1.0", &content, Some(&key));
    let (st, a) = upload(&s, &s.token, file.clone()).await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    assert_eq!(a["name"], "app");
    assert_eq!(a["version"], "1.0");
    assert_eq!(a["payload_type"], "file");
    assert_eq!(a["compatible"], json!(["gw"]));
    assert_eq!(a["size"], file.len());
    assert_eq!(a["sha256"], sha256_hex(&file));
    assert_eq!(a["payload_bytes"], content.len());
    assert_eq!(a["signed_by"], json!([key.public_key().key_id()]));
    assert_eq!(
        a["manifest"]["payloads"][0]["meta"]["path"],
        "/opt/app/app.bin"
    );
    let id = a["id"].as_str().unwrap().to_owned();

    // The same name and version again is a conflict; another version is fine.
    let (st, body) = upload(&s, &s.token, file.clone()).await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    assert!(body["detail"].as_str().unwrap().contains(&id), "{body}");
    let (st, _) = upload(&s, &s.token, artifact("app", "1.1", b"x", Some(&key))).await;
    assert_eq!(st, StatusCode::CREATED);

    let (st, page) = s.admin_get("/api/v1/artifacts").await;
    assert_eq!(st, StatusCode::OK);
    let versions: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, vec!["1.1", "1.0"]);
    let (_, page) = s.admin_get("/api/v1/artifacts?name=other").await;
    assert_eq!(page["items"], json!([]));
    let (st, one) = s.admin_get(&format!("/api/v1/artifacts/{id}")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(one["sha256"], a["sha256"]);

    // Whole download, then a resumed one from an offset.
    let url = s.url(&format!("/api/v1/artifacts/{id}/download"));
    let resp = s.http.get(&url).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-disposition"],
        "attachment; filename=\"app-1.0.tender\""
    );
    assert!(resp.headers().contains_key("repr-digest"));
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &file[..]);
    let from = 100_000;
    let resp = s
        .http
        .get(&url)
        .bearer_auth(&s.token)
        .header("range", format!("bytes={from}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &file[from..]);
    let resp = s
        .http
        .get(&url)
        .bearer_auth(&s.token)
        .header("range", format!("bytes={}-", file.len() + 10))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // Deleting removes record and file.
    let (st, _) = admin(
        &s,
        reqwest::Method::DELETE,
        &format!("/api/v1/artifacts/{id}"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(
        s.admin_get(&format!("/api/v1/artifacts/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
    let resp = s.http.get(&url).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let tenant = s.default_tenant().await;
    let stored = s
        .config
        .data_dir
        .join("artifacts")
        .join(tenant.id.to_string())
        .join(format!("{id}.tender"));
    assert!(!stored.exists());
    s.stop().await;
}

async fn bad_artifacts_are_refused_with_the_reason(b: Backend) {
    let mut s = start(b).await;
    let content = b"the payload".to_vec();
    // No trusted key yet: signing is required, so nothing can be uploaded, and the answer says
    // what to do.
    let (st, body) = upload(
        &s,
        &s.token,
        artifact("app", "1", &content, Some(&signing_key(1))),
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("tender keys trust"),
        "{body}"
    );

    trust(&s, &signing_key(1), "release").await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "unsigned",
            artifact("app", "1", &content, None),
            "not signed by a trusted key",
        ),
        (
            "foreign key",
            artifact("app", "1", &content, Some(&signing_key(9))),
            "unknown keys",
        ),
        (
            "tampered payload",
            {
                let mut f = artifact("app", "1", &content, Some(&signing_key(1)));
                let at = f
                    .windows(content.len())
                    .position(|w| w == &content[..])
                    .unwrap();
                f[at] ^= 0xff;
                f
            },
            "SHA-256",
        ),
        (
            "tampered manifest",
            {
                let mut f = artifact("app", "1", &content, Some(&signing_key(1)));
                let at = f
                    .windows(7)
                    .position(|w| w == b"\"gw\"\n  ")
                    .unwrap_or_else(|| f.windows(4).position(|w| w == b"\"gw\"").unwrap());
                f[at + 1] = b'x';
                f
            },
            "altered",
        ),
        (
            "not an artifact",
            b"hello".repeat(300),
            "not a valid Tender artifact",
        ),
        ("empty", vec![], "not a valid Tender artifact"),
    ];
    for (what, bytes, says) in cases {
        let resp = s
            .http
            .post(s.url("/api/v1/artifacts"))
            .bearer_auth(&s.token)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let (st, h) = (resp.status(), resp.headers().clone());
        let body: Value = resp.json().await.unwrap();
        assert_problem(st, &h, &body, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            body["detail"].as_str().unwrap().contains(says),
            "{what}: {body}"
        );
    }
    // Nothing was recorded, nothing left in staging.
    let (_, page) = s.admin_get("/api/v1/artifacts").await;
    assert_eq!(page["items"], json!([]));
    let staging = s.config.data_dir.join("artifacts/.staging");
    assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0);

    // A viewer may read but not upload.
    let t = s.default_tenant().await;
    let (_, viewer, _) = s
        .user_with_token(t.id, "viewer", vec![tender_core::auth::Role::Viewer], None)
        .await;
    let (st, body) = upload(
        &s,
        &viewer,
        artifact("app", "1", &content, Some(&signing_key(1))),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        s.get("/api/v1/artifacts", Some(&viewer)).await.0,
        StatusCode::OK
    );
    s.stop().await;
}

async fn trusted_keys_are_checked_and_per_tenant(b: Backend) {
    let mut s = start(b).await;
    let key = signing_key(3);
    let (st, k) = trust(&s, &key, "release 2026").await;
    assert_eq!(st, StatusCode::CREATED, "{k}");
    assert_eq!(k["key_id"], key.public_key().key_id());
    assert_eq!(trust(&s, &key, "again").await.0, StatusCode::CONFLICT);
    let (st, body) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/signing-keys",
        Some(json!({"name": "bad", "public_key_pem": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"})),
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (st, body) = admin(
        &s,
        reqwest::Method::POST,
        "/api/v1/signing-keys",
        Some(json!({"name": "", "public_key_pem": signing_key(4).public_key().to_pem().unwrap()})),
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (_, list) = s.admin_get("/api/v1/signing-keys").await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Another tenant neither sees nor uses this tenant's keys.
    let t2 = tender_core::tenant::Tenant {
        id: tender_core::TenantId::from_uuid(uuid::Uuid::now_v7()),
        slug: tender_core::tenant::TenantSlug::parse("acme").unwrap(),
        name: "Acme".into(),
        enrollment_open: true,
        created_at: now(),
    };
    s.store().create_tenant(&t2).await.unwrap();
    let (_, their_admin, _) = s
        .user_with_token(t2.id, "admin", vec![tender_core::auth::Role::Admin], None)
        .await;
    let (_, _, theirs) = s.get("/api/v1/signing-keys", Some(&their_admin)).await;
    assert_eq!(theirs, json!([]));
    let (st, body) = upload(&s, &their_admin, artifact("app", "1", b"x", Some(&key))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Removing the key stops new uploads signed by it.
    let (st, _) = admin(
        &s,
        reqwest::Method::DELETE,
        &format!("/api/v1/signing-keys/{}", key.public_key().key_id()),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = admin(
        &s,
        reqwest::Method::DELETE,
        &format!("/api/v1/signing-keys/{}", key.public_key().key_id()),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    s.stop().await;
}

async fn uploads_larger_than_the_limit_get_413(b: Backend) {
    let mut s = start_with(b, |c| c.artifacts.max_bytes = 10_000).await;
    trust(&s, &signing_key(1), "release").await;
    let big = artifact("app", "1", &vec![1u8; 20_000], Some(&signing_key(1)));
    let (st, body) = upload(&s, &s.token, big).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let small = artifact("app", "1", &[1u8; 100], Some(&signing_key(1)));
    assert_eq!(upload(&s, &s.token, small).await.0, StatusCode::CREATED);
    s.stop().await;
}
