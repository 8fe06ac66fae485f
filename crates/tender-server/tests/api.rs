//! The HTTP API over real HTTP: a server started in-process on an ephemeral loopback port,
//! driven with reqwest. Every test runs against SQLite and against PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::Value;
use tender_core::auth::Role;
use tender_core::device::DeviceState;
use tender_core::tenant::{Tenant, TenantSlug};
use tender_core::user::{ApiToken, User};
use tender_core::{DeviceId, TenantId, Timestamp, UserId};
use tender_server::auth::{TokenKey, mint_token};
use uuid::Uuid;

mod common;
use common::*;

on_both_backends!(
    health_and_readiness,
    bootstrap_admin_can_use_the_api,
    bad_credentials_get_401_problems,
    revoked_expired_and_disabled_credentials_are_refused,
    permissions_are_checked,
    device_pages_cover_the_registry_exactly_once,
    invalid_listing_parameters_are_400s,
    other_tenants_devices_are_invisible,
    oversized_bodies_get_413,
    unknown_routes_and_methods_are_problems,
    metrics_count_requests_by_route,
    openapi_documents_every_api_route,
    restart_keeps_data_and_never_reprints_the_token,
    tags_are_set_shown_and_removed,
    owner_and_notes_are_kept_per_device,
);

async fn health_and_readiness(b: Backend) {
    let mut s = start(b).await;
    let (st, _, body) = s.get("/healthz", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    let (st, _, body) = s.get("/readyz", None).await;
    assert_eq!(st, StatusCode::OK);
    let expect = match b {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    assert_eq!(body["database"], expect);
    s.stop().await;
}

async fn bootstrap_admin_can_use_the_api(b: Backend) {
    let mut s = start(b).await;
    let (st, body) = s.admin_get("/api/v1/devices").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body, serde_json::json!({"items": [], "next_cursor": null}));
    let (st, me) = s.admin_get("/api/v1/whoami").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(me["username"], "admin");
    assert_eq!(me["tenant"]["slug"], "default");
    assert_eq!(me["roles"], serde_json::json!(["admin"]));
    assert!(me["permissions"].as_array().unwrap().len() >= 10);
    s.stop().await;
}

async fn bad_credentials_get_401_problems(b: Backend) {
    let mut s = start(b).await;
    let mut tampered = s.token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let unknown_id = {
        let t = mint_token(&TokenKey::from_bytes([9; 32]));
        t.plaintext
    };
    for token in [
        None,
        Some("garbage"),
        Some(tampered.as_str()),
        Some(unknown_id.as_str()),
        Some(""),
    ] {
        let (st, h, body) = s.get("/api/v1/devices", token).await;
        assert_problem(st, &h, &body, StatusCode::UNAUTHORIZED);
        assert!(h.get("www-authenticate").is_some(), "401 names the scheme");
    }
    // Not a bearer scheme at all.
    let resp = s
        .http
        .get(s.url("/api/v1/devices"))
        .basic_auth("admin", Some("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    s.stop().await;
}

async fn revoked_expired_and_disabled_credentials_are_refused(b: Backend) {
    let mut s = start(b).await;
    let t = s.default_tenant().await;
    let past = Timestamp::from_unix_millis(now().unix_millis() - 1000);
    let (_, expired, _) = s
        .user_with_token(t.id, "old", vec![Role::Admin], Some(past))
        .await;
    let (st, h, body) = s.get("/api/v1/devices", Some(&expired)).await;
    assert_problem(st, &h, &body, StatusCode::UNAUTHORIZED);
    assert!(
        body["detail"].as_str().unwrap().contains("expired"),
        "{body}"
    );

    let (_, live, record) = s
        .user_with_token(t.id, "ops", vec![Role::Operator], None)
        .await;
    assert_eq!(
        s.get("/api/v1/devices", Some(&live)).await.0,
        StatusCode::OK
    );
    s.store()
        .revoke_api_token(t.id, record.id, now())
        .await
        .unwrap();
    let (st, h, body) = s.get("/api/v1/devices", Some(&live)).await;
    assert_problem(st, &h, &body, StatusCode::UNAUTHORIZED);
    assert!(
        body["detail"].as_str().unwrap().contains("revoked"),
        "{body}"
    );

    // A valid token of a disabled account.
    let disabled = User {
        id: UserId::from_uuid(Uuid::now_v7()),
        tenant_id: t.id,
        username: "gone".into(),
        roles: vec![Role::Admin],
        disabled: true,
        created_at: now(),
    };
    s.store().create_user(&disabled).await.unwrap();
    let minted = mint_token(&s.token_key());
    s.store()
        .create_api_token(&ApiToken {
            id: minted.id,
            tenant_id: t.id,
            user_id: disabled.id,
            name: "t".into(),
            secret_hash: minted.secret_hash,
            created_at: now(),
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
        })
        .await
        .unwrap();
    let (st, h, body) = s.get("/api/v1/devices", Some(&minted.plaintext)).await;
    assert_problem(st, &h, &body, StatusCode::UNAUTHORIZED);
    assert!(
        body["detail"].as_str().unwrap().contains("disabled"),
        "{body}"
    );
    s.stop().await;
}

async fn permissions_are_checked(b: Backend) {
    let mut s = start(b).await;
    let t = s.default_tenant().await;
    let (_, nobody, _) = s.user_with_token(t.id, "nobody", vec![], None).await;
    let (st, h, body) = s.get("/api/v1/devices", Some(&nobody)).await;
    assert_problem(st, &h, &body, StatusCode::FORBIDDEN);
    assert!(
        body["detail"].as_str().unwrap().contains("devices_read"),
        "{body}"
    );
    // Any authenticated operator may ask who they are.
    assert_eq!(
        s.get("/api/v1/whoami", Some(&nobody)).await.0,
        StatusCode::OK
    );
    let (_, viewer, _) = s
        .user_with_token(t.id, "viewer", vec![Role::Viewer], None)
        .await;
    assert_eq!(
        s.get("/api/v1/devices", Some(&viewer)).await.0,
        StatusCode::OK
    );
    s.stop().await;
}

async fn device_pages_cover_the_registry_exactly_once(b: Backend) {
    let mut s = start(b).await;
    let t = s.default_tenant().await;
    let expected: BTreeSet<String> = s
        .add_devices(t.id, 250, DeviceState::Accepted)
        .await
        .into_iter()
        .map(|d| d.to_string())
        .collect();
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/api/v1/devices?limit=100".to_owned(),
            Some(c) => format!("/api/v1/devices?limit=100&cursor={c}"),
        };
        let (st, page) = s.admin_get(&path).await;
        assert_eq!(st, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap();
        sizes.push(items.len());
        seen.extend(items.iter().map(|d| d["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(sizes, vec![100, 100, 50]);
    assert_eq!(seen.len(), 250);
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected);
    // Default page size is 100, and it says more follow rather than capping.
    let (_, page) = s.admin_get("/api/v1/devices").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 100);
    assert!(page["next_cursor"].is_string());
    // The state filter.
    s.add_devices(t.id, 3, DeviceState::Pending).await;
    let (_, page) = s.admin_get("/api/v1/devices?state=pending").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|d| d["state"] == "pending"));
    // One device by id.
    let id = seen[7].clone();
    let (st, d) = s.admin_get(&format!("/api/v1/devices/{id}")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(d["id"], id.as_str());
    assert_eq!(d["state"], "accepted");
    s.stop().await;
}

async fn invalid_listing_parameters_are_400s(b: Backend) {
    let mut s = start(b).await;
    for q in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "cursor=not-a-cursor",
        "cursor=ZDE6eA",
        "state=sleeping",
        "limt=5",
    ] {
        let (st, h, body) = s.get(&format!("/api/v1/devices?{q}"), Some(&s.token)).await;
        assert_problem(st, &h, &body, StatusCode::BAD_REQUEST);
    }
    let (st, h, body) = s.get("/api/v1/devices/not-a-uuid", Some(&s.token)).await;
    assert_problem(st, &h, &body, StatusCode::BAD_REQUEST);
    let missing = Uuid::now_v7();
    let (st, h, body) = s
        .get(&format!("/api/v1/devices/{missing}"), Some(&s.token))
        .await;
    assert_problem(st, &h, &body, StatusCode::NOT_FOUND);
    s.stop().await;
}

async fn other_tenants_devices_are_invisible(b: Backend) {
    let mut s = start(b).await;
    let other = Tenant {
        id: TenantId::from_uuid(Uuid::now_v7()),
        slug: TenantSlug::parse("other").unwrap(),
        name: "Other".into(),
        enrollment_open: true,
        created_at: now(),
    };
    s.store().create_tenant(&other).await.unwrap();
    let theirs = s.add_devices(other.id, 3, DeviceState::Accepted).await;
    let (_, page) = s.admin_get("/api/v1/devices").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0);
    let (st, h, body) = s
        .get(&format!("/api/v1/devices/{}", theirs[0]), Some(&s.token))
        .await;
    assert_problem(st, &h, &body, StatusCode::NOT_FOUND);
    // And their admin sees only theirs.
    let (_, their_admin, _) = s
        .user_with_token(other.id, "admin", vec![Role::Admin], None)
        .await;
    let (_, _, page) = s.get("/api/v1/devices", Some(&their_admin)).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    s.stop().await;
}

async fn oversized_bodies_get_413(b: Backend) {
    let mut s = start(b).await;
    let resp = s
        .http
        .get(s.url("/api/v1/devices"))
        .bearer_auth(&s.token)
        .body(vec![b'x'; 65 * 1024])
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let h = resp.headers().clone();
    let body: Value = resp.json().await.unwrap();
    assert_problem(status, &h, &body, StatusCode::PAYLOAD_TOO_LARGE);
    // The server is still fine.
    assert_eq!(s.admin_get("/api/v1/devices").await.0, StatusCode::OK);
    s.stop().await;
}

async fn unknown_routes_and_methods_are_problems(b: Backend) {
    let mut s = start(b).await;
    let (st, h, body) = s.get("/api/v1/nothing-here", Some(&s.token)).await;
    assert_problem(st, &h, &body, StatusCode::NOT_FOUND);
    let resp = s
        .http
        .delete(s.url("/api/v1/devices"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let h = resp.headers().clone();
    assert!(h.get("allow").is_some(), "405 keeps its Allow header");
    let body: Value = resp.json().await.unwrap();
    assert_problem(status, &h, &body, StatusCode::METHOD_NOT_ALLOWED);
    s.stop().await;
}

async fn metrics_count_requests_by_route(b: Backend) {
    let mut s = start(b).await;
    s.admin_get("/api/v1/devices").await;
    s.get("/api/v1/devices", None).await;
    let text = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            r#"tender_http_requests_total{method="GET",route="/api/v1/devices",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"tender_http_requests_total{method="GET",route="/api/v1/devices",status="401"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("tender_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("tender_build_info"), "{text}");
    s.stop().await;
}

async fn openapi_documents_every_api_route(b: Backend) {
    let mut s = start(b).await;
    let (st, _, doc) = s.get("/api/v1/openapi.json", None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = [
        "/api/v1/devices",
        "/api/v1/devices/accept-pending",
        "/api/v1/devices/count",
        "/api/v1/groups",
        "/api/v1/groups/{id}",
        "/api/v1/groups/{id}/members",
        "/api/v1/groups/{id}/members/remove",
        "/api/v1/devices/{id}",
        "/api/v1/devices/{id}/accept",
        "/api/v1/devices/{id}/reject",
        "/api/v1/devices/{id}/decommission",
        "/api/v1/devices/{id}/revoke-certificates",
        "/api/v1/devices/{id}/connections",
        "/api/v1/devices/{id}/credentials",
        "/api/v1/devices/{id}/inventory",
        "/api/v1/devices/{id}/tags/{key}",
        "/api/v1/devices/{id}/twin",
        "/api/v1/devices/{id}/twin/desired",
        "/api/v1/devices/{id}/config",
        "/api/v1/config",
        "/api/v1/config/fleet",
        "/api/v1/config/groups/{id}",
        "/api/v1/devices/{id}/telemetry",
        "/api/v1/devices/{id}/telemetry/{metric}",
        "/api/v1/enrollment-tokens",
        "/api/v1/enrollment-tokens/{id}",
        "/api/v1/tenant/enrollment",
        "/api/v1/events",
        "/api/v1/events/stream",
        "/api/v1/whoami",
        "/api/v1/commands",
        "/api/v1/commands/{id}",
        "/api/v1/commands/{id}/devices",
        "/api/v1/commands/{id}/cancel",
        "/api/v1/devices/{id}/commands",
        "/api/v1/artifacts",
        "/api/v1/artifacts/{id}",
        "/api/v1/artifacts/{id}/download",
        "/api/v1/signing-keys",
        "/api/v1/signing-keys/{key_id}",
        "/api/v1/deployments",
        "/api/v1/deployments/preview",
        "/api/v1/deployments/{id}",
        "/api/v1/deployments/{id}/devices",
        "/api/v1/deployments/{id}/pause",
        "/api/v1/deployments/{id}/resume",
        "/api/v1/deployments/{id}/cancel",
        "/api/v1/deployments/{id}/approve",
        "/api/v1/devices/{id}/deployments",
        "/api/v1/devices/{id}/logs",
        "/api/v1/logs/{id}",
        "/api/v1/logs/{id}/content",
        "/api/v1/logs/{id}/follow",
    ]
    .into();
    assert_eq!(paths, expected);
    // Every documented operation is reachable and authenticated.
    for (p, item) in doc["paths"].as_object().unwrap() {
        let concrete = p.replace("{id}", &Uuid::now_v7().to_string());
        for method in item.as_object().unwrap().keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let st = s
                .http
                .request(m, s.url(&concrete))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(st, StatusCode::UNAUTHORIZED, "{method} {p}");
        }
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    s.stop().await;
}

async fn restart_keeps_data_and_never_reprints_the_token(b: Backend) {
    let mut s = start(b).await;
    let t = s.default_tenant().await;
    let ids = s.add_devices(t.id, 2, DeviceState::Accepted).await;
    s.stop().await;
    let again = tender_server::start(s.config.clone()).await.unwrap();
    assert!(
        again.bootstrap_token.is_none(),
        "the admin token is shown once only"
    );
    let base = format!("http://{}", again.http_addr);
    let page: Value = s
        .http
        .get(format!("{base}/api/v1/devices"))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let got: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    let want: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    assert_eq!(got, want);
    assert!(again.shutdown().await);
}

#[tokio::test]
async fn readiness_fails_when_the_database_goes_away() {
    let mut s = start(Backend::Postgres).await;
    assert_eq!(s.get("/readyz", None).await.0, StatusCode::OK);
    // Drop the database under the running server.
    let db = s._db.take().unwrap();
    drop(db);
    let (st, h, body) = s.get("/readyz", None).await;
    assert_problem(st, &h, &body, StatusCode::SERVICE_UNAVAILABLE);
    // Liveness is unaffected.
    assert_eq!(s.get("/healthz", None).await.0, StatusCode::OK);
    s.stop().await;
}

async fn owner_and_notes_are_kept_per_device(b: Backend) {
    use serde_json::json;
    let mut s = start(b).await;
    let tenant = s.default_tenant().await;
    let ids = s.add_devices(tenant.id, 1, DeviceState::Accepted).await;
    let path = format!("/api/v1/devices/{}", ids[0]);
    let (st, d) = admin(
        &s,
        reqwest::Method::PATCH,
        &path,
        Some(json!({"owner": "ops", "notes": "rack 3\nshelf 2"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{d}");
    assert_eq!(d["owner"], "ops");
    assert_eq!(d["notes"], "rack 3\nshelf 2");
    // A field left out stays; null clears.
    let (_, d) = admin(
        &s,
        reqwest::Method::PATCH,
        &path,
        Some(json!({"notes": null})),
    )
    .await;
    assert_eq!(d["owner"], "ops");
    assert!(d.get("notes").is_none(), "{d}");
    let (_, d) = s.admin_get(&path).await;
    assert_eq!(d["owner"], "ops");
    // Bad values and fields are clear errors.
    for body in [
        json!({"owner": ""}),
        json!({"notes": "\u{7}"}),
        json!({"color": "red"}),
        json!({"owner": 5}),
    ] {
        let (st, p) = admin(&s, reqwest::Method::PATCH, &path, Some(body.clone())).await;
        assert!(
            st == StatusCode::BAD_REQUEST || st == StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {st} {p}"
        );
    }
    let (st, _) = admin(
        &s,
        reqwest::Method::PATCH,
        "/api/v1/devices/0191c1d2-0000-7000-8000-000000000000",
        Some(json!({"owner": "x"})),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    s.stop().await;
}

async fn tags_are_set_shown_and_removed(b: Backend) {
    let mut s = start(b).await;
    let tenant = s.default_tenant().await;
    let ids = s.add_devices(tenant.id, 2, DeviceState::Accepted).await;
    let path = |id: &DeviceId, key: &str| format!("/api/v1/devices/{id}/tags/{key}");
    let (st, t) = admin(
        &s,
        reqwest::Method::PUT,
        &path(&ids[0], "site"),
        Some(serde_json::json!({"value": "north"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{t}");
    assert_eq!(t["tags"], serde_json::json!({"site": "north"}));
    let (_, t) = admin(
        &s,
        reqwest::Method::PUT,
        &path(&ids[0], "owner"),
        Some(serde_json::json!({"value": "ops"})),
    )
    .await;
    assert_eq!(
        t["tags"],
        serde_json::json!({"owner": "ops", "site": "north"})
    );
    // On the device; on a listing only when asked.
    let (_, d) = admin(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/devices/{}", ids[0]),
        None,
    )
    .await;
    assert_eq!(d["tags"]["site"], "north");
    let (_, page) = admin(&s, reqwest::Method::GET, "/api/v1/devices", None).await;
    assert!(page["items"][0].get("tags").is_none());
    let (st, page) = admin(
        &s,
        reqwest::Method::GET,
        "/api/v1/devices?include=tags,inventory",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{page}");
    assert_eq!(page["items"][0]["tags"]["owner"], "ops");
    assert_eq!(page["items"][1]["tags"], serde_json::json!({}));
    // Bad keys and values are 400 problems naming the tag; unknown devices 404.
    for (key, body) in [
        ("-bad", serde_json::json!({"value": "x"})),
        ("ok", serde_json::json!({"value": "line\nbreak"})),
        ("ok", serde_json::json!({"value": "x".repeat(257)})),
    ] {
        let (st, p) = admin(&s, reqwest::Method::PUT, &path(&ids[1], key), Some(body)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{p}");
        assert!(p["detail"].as_str().unwrap().contains("tag"), "{p}");
    }
    let ghost = DeviceId::from_uuid(Uuid::now_v7());
    let (st, _) = admin(
        &s,
        reqwest::Method::PUT,
        &path(&ghost, "site"),
        Some(serde_json::json!({"value": "x"})),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Removing: 204 once, then 404.
    let (st, _) = admin(&s, reqwest::Method::DELETE, &path(&ids[0], "site"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = admin(&s, reqwest::Method::DELETE, &path(&ids[0], "site"), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    s.stop().await;
}
