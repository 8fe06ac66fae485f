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
    telemetry_series_for_a_device_a_group_and_the_fleet,
    retention_deletes_samples_older_than_the_configured_days,
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
        "/api/v1/devices/{id}/telemetry/{metric}/series",
        "/api/v1/telemetry/series",
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
        "/api/v1/webhooks",
        "/api/v1/webhooks/{id}",
        "/api/v1/webhooks/{id}/rotate-secret",
        "/api/v1/webhooks/{id}/test",
        "/api/v1/webhooks/{id}/deliveries",
        "/api/v1/webhooks/{id}/deliveries/{delivery}/redeliver",
        "/api/v1/alert-rules",
        "/api/v1/alert-rules/{id}",
        "/api/v1/alerts",
        "/api/v1/alerts/{id}",
        "/api/v1/alerts/{id}/ack",
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

/// Telemetry series: one device's metric in buckets, the same over a query and the whole fleet,
/// each aggregation, and clear 400s for what cannot be answered.
async fn telemetry_series_for_a_device_a_group_and_the_fleet(b: Backend) {
    use tender_core::telemetry::{MetricName, Sample};
    let s = start(b).await;
    let tenant = s.default_tenant().await;
    let ids = s.add_devices(tenant.id, 3, DeviceState::Accepted).await;
    let pending = s.add_devices(tenant.id, 1, DeviceState::Pending).await;
    let t0 = Timestamp::parse_rfc3339("2026-12-01T10:00:00Z").unwrap();
    let temp = MetricName::parse("temp").unwrap();
    for (k, id) in ids.iter().chain(&pending).enumerate() {
        // Device k: k*10 + minute at each minute 0..5, twice a minute.
        let samples: Vec<Sample> = (0..10)
            .map(|i| Sample {
                metric: temp.clone(),
                at: t0.plus_millis(i * 30_000),
                value: (k as i64 * 10 + i / 2) as f64,
            })
            .collect();
        s.store()
            .insert_samples(tenant.id, *id, &samples)
            .await
            .unwrap();
    }
    let from = "2026-12-01T10:00:00Z";
    let to = "2026-12-01T10:05:00Z";
    let (st, v) = admin(
        &s,
        reqwest::Method::GET,
        &format!(
            "/api/v1/devices/{}/telemetry/temp/series?from={from}&to={to}&step=1m&agg=max",
            ids[1]
        ),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["step"], "1m");
    assert_eq!(v["agg"], "max");
    assert_eq!(v["devices"], 1);
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 5, "{v}");
    assert_eq!(points[0]["at"], "2026-12-01T10:00:00Z");
    assert_eq!(points[0]["value"], 10.0);
    assert_eq!(points[0]["count"], 2);
    assert_eq!(points[4]["value"], 14.0);
    // The whole fleet (accepted devices only): the average of 0+m, 10+m and 20+m is 10+m.
    let (st, v) = admin(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/telemetry/series?metric=temp&from={from}&to={to}&step=5m"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["devices"], 3);
    assert_eq!(v["agg"], "avg");
    assert_eq!(v["points"].as_array().unwrap().len(), 1);
    assert_eq!(v["points"][0]["count"], 30);
    assert_eq!(v["points"][0]["value"], 12.0);
    for (agg, want) in [("min", 0.0), ("max", 24.0), ("count", 30.0), ("last", 24.0)] {
        let (_, v) = admin(
            &s,
            reqwest::Method::GET,
            &format!("/api/v1/telemetry/series?metric=temp&from={from}&to={to}&step=5m&agg={agg}"),
            None,
        )
        .await;
        assert_eq!(v["points"][0]["value"], want, "{agg}: {v}");
    }
    // A query picks the devices.
    let q = format!("id = \"{}\"", ids[2]);
    let resp = s
        .http
        .get(s.url("/api/v1/telemetry/series"))
        .bearer_auth(&s.token)
        .query(&[
            ("metric", "temp"),
            ("query", q.as_str()),
            ("from", from),
            ("to", to),
            ("step", "5m"),
            ("agg", "min"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["devices"], 1, "{v}");
    assert_eq!(v["points"][0]["value"], 20.0, "{v}");
    // Bad requests are 400 problems that say what to change.
    for (query, needle) in [
        ("metric=temp&step=5x", "not a duration"),
        ("metric=temp&step=1m&agg=median", "aggregation"),
        (
            "metric=temp&from=2026-01-01T00:00:00Z&to=2026-12-01T00:00:00Z&step=1s",
            "buckets",
        ),
        (
            "metric=temp&from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",
            "before",
        ),
        ("metric=no%20spaces", "metric"),
    ] {
        let (st, v) = admin(
            &s,
            reqwest::Method::GET,
            &format!("/api/v1/telemetry/series?{query}"),
            None,
        )
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{query}: {v}");
        assert!(
            v["detail"].as_str().unwrap().contains(needle),
            "{query}: {v}"
        );
    }
    let (st, _) = admin(
        &s,
        reqwest::Method::GET,
        "/api/v1/telemetry/series?metric=temp&group=nosuch",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

/// Samples older than `telemetry.retention_days` are deleted in the background; newer ones stay.
async fn retention_deletes_samples_older_than_the_configured_days(b: Backend) {
    use tender_core::telemetry::{MetricName, Sample};
    let s = start_with(b, |c| {
        c.telemetry.retention_days = 1;
        c.telemetry.retention_interval_secs = 1;
    })
    .await;
    let tenant = s.default_tenant().await;
    let ids = s.add_devices(tenant.id, 2, DeviceState::Accepted).await;
    let now = Timestamp::from_datetime(time::OffsetDateTime::now_utc());
    let temp = MetricName::parse("temp").unwrap();
    for id in &ids {
        let samples: Vec<Sample> = [-3 * 86_400_000, -2 * 86_400_000, -60_000, 0]
            .into_iter()
            .map(|ago| Sample {
                metric: temp.clone(),
                at: now.plus_millis(ago),
                value: 1.0,
            })
            .collect();
        s.store()
            .insert_samples(tenant.id, *id, &samples)
            .await
            .unwrap();
    }
    let left = |id: DeviceId| {
        let s = &s;
        let temp = temp.clone();
        async move {
            s.store()
                .query_samples(
                    tenant.id,
                    id,
                    &temp,
                    now.plus_millis(-10 * 86_400_000),
                    now.plus_millis(1),
                    tender_core::page::PageLimit::new(100).unwrap(),
                )
                .await
                .unwrap()
                .items
                .len()
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while left(ids[0]).await + left(ids[1]).await > 4 {
        assert!(std::time::Instant::now() < deadline, "retention ran");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!((left(ids[0]).await, left(ids[1]).await), (2, 2));
    // Counted once the pass that deleted them has returned.
    loop {
        let (_, _, metrics) = s.get("/metrics", None).await;
        if metrics
            .as_str()
            .unwrap()
            .contains("tender_telemetry_points_pruned_total 4")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
