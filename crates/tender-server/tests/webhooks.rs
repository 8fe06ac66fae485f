//! Webhooks end to end: a real server, a real endpoint (axum on an ephemeral loopback port)
//! that checks every signature with `tender_core::webhook::verify`, on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tender_core::auth::Role;
use tender_core::device::DeviceState;
use tender_core::webhook::verify;

mod common;
use common::*;

on_both_backends!(
    device_events_reach_the_endpoint_signed_and_filtered,
    a_failing_endpoint_gets_retries_until_it_succeeds,
    dead_deliveries_can_be_redelivered,
    a_slow_endpoint_holds_up_no_other,
    the_api_checks_input_permission_and_shows_the_secret_once,
);

/// One request the endpoint received.
#[derive(Debug, Clone)]
struct Received {
    event: String,
    delivery: String,
    body: Value,
    signature_valid: bool,
}

struct Endpoint {
    secret: Mutex<String>,
    /// Answer 500 to this many more requests.
    fail_next: AtomicUsize,
    received: Mutex<Vec<Received>>,
    /// While true, requests are recorded but not answered.
    hold: tokio::sync::watch::Sender<bool>,
}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint {
            secret: Mutex::default(),
            fail_next: AtomicUsize::new(0),
            received: Mutex::default(),
            hold: tokio::sync::watch::channel(false).0,
        }
    }
}

async fn receive(State(ep): State<Arc<Endpoint>>, headers: HeaderMap, body: Bytes) -> AxumStatus {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let secret = ep.secret.lock().unwrap().clone();
    let signature_valid = verify(&secret, &header("tender-signature"), &body, now(), 300).is_ok();
    ep.received.lock().unwrap().push(Received {
        event: header("tender-event"),
        delivery: header("tender-delivery"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        signature_valid,
    });
    let mut hold = ep.hold.subscribe();
    let _ = hold.wait_for(|held| !*held).await;
    let failing = ep
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        AxumStatus::INTERNAL_SERVER_ERROR
    } else {
        AxumStatus::NO_CONTENT
    }
}

/// Starts an endpoint; returns it and its URL.
async fn endpoint() -> (Arc<Endpoint>, String) {
    endpoint_at("127.0.0.1:0").await
}

/// Starts an endpoint listening on `addr`.
async fn endpoint_at(addr: &str) -> (Arc<Endpoint>, String) {
    let ep = Arc::new(Endpoint::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(ep.clone());
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (ep, format!("http://{addr}/hook"))
}

/// A loopback URL where nothing listens.
async fn closed_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/hook")
}

async fn start_fast(b: Backend, max_attempts: u32) -> TestServer {
    start_with(b, |c| {
        c.webhooks.tick_ms = 50;
        c.webhooks.retry_base_ms = 50;
        c.webhooks.retry_cap_ms = 200;
        c.webhooks.max_attempts = max_attempts;
        c.webhooks.request_timeout_ms = 2000;
    })
    .await
}

async fn create(s: &TestServer, url: &str, events: Value) -> (String, String) {
    let (st, w) = admin(
        s,
        Method::POST,
        "/api/v1/webhooks",
        Some(json!({"name": "test hook", "url": url, "events": events})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{w}");
    (
        w["id"].as_str().unwrap().to_owned(),
        w["secret"].as_str().unwrap().to_owned(),
    )
}

/// A pending device accepted through the API: one `device.state_changed` event.
async fn accept_a_device(s: &TestServer) -> String {
    let t = s.default_tenant().await;
    let id = s.add_devices(t.id, 1, DeviceState::Pending).await[0];
    let (st, body) = admin(
        s,
        Method::POST,
        &format!("/api/v1/devices/{id}/accept"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    id.to_string()
}

/// Polls the webhook's delivery log until `done` holds (at most 30 s).
async fn deliveries_until(
    s: &TestServer,
    webhook: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (st, page) = s
            .admin_get(&format!("/api/v1/webhooks/{webhook}/deliveries"))
            .await;
        assert_eq!(st, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap().clone();
        if done(&items) {
            return items;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {items:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn device_events_reach_the_endpoint_signed_and_filtered(b: Backend) {
    let mut s = start_fast(b, 3).await;
    let (ep, url) = endpoint().await;
    let (hook, secret) = create(&s, &url, json!(["device.state_changed", "alert.*"])).await;
    *ep.secret.lock().unwrap() = secret;

    // First an event the filter excludes (a device joins a static group), then one it selects.
    let t = s.default_tenant().await;
    let member = s.add_devices(t.id, 1, DeviceState::Accepted).await[0];
    let (st, g) = admin(
        &s,
        Method::POST,
        "/api/v1/groups",
        Some(json!({"name": "lab"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{g}");
    let (st, body) = admin(
        &s,
        Method::POST,
        &format!("/api/v1/groups/{}/members", g["id"].as_str().unwrap()),
        Some(json!({"device_ids": [member.to_string()]})),
    )
    .await;
    assert!(st.is_success(), "{st} {body}");
    let device = accept_a_device(&s).await;

    let log = deliveries_until(&s, &hook, "the delivery to succeed", |items| {
        items.len() == 1 && items[0]["state"] == "succeeded"
    })
    .await;
    // Deliveries follow event order, so the group event was passed over before this one.
    assert_eq!(log[0]["kind"], "device.state_changed");
    assert_eq!(log[0]["attempts"], 1);
    assert_eq!(log[0]["last_status"], 204);
    let got = ep.received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:#?}");
    let r = &got[0];
    assert!(r.signature_valid, "{r:?}");
    assert_eq!(r.event, "device.state_changed");
    assert_eq!(r.delivery, log[0]["id"].as_str().unwrap());
    assert_eq!(r.body["kind"], "device.state_changed");
    assert_eq!(r.body["device"], device);
    assert_eq!(r.body["tenant"], t.id.to_string());
    assert_eq!(r.body["data"]["state"], "accepted");
    assert!(r.body["id"].as_u64().is_some());
    assert!(r.body["at"].is_string());
    assert_eq!(r.body["group"], Value::Null);

    // A test ping goes out whatever the filter, signed the same way.
    let (st, ping) = admin(
        &s,
        Method::POST,
        &format!("/api/v1/webhooks/{hook}/test"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{ping}");
    assert_eq!(ping["kind"], "webhook.test");
    let ping_id = ping["id"].as_str().unwrap().to_owned();
    deliveries_until(&s, &hook, "the ping", |items| {
        items
            .iter()
            .any(|d| d["id"] == ping_id.as_str() && d["state"] == "succeeded")
    })
    .await;
    let got = ep.received.lock().unwrap().clone();
    let last = got.last().unwrap();
    assert_eq!(last.event, "webhook.test");
    assert!(last.signature_valid);
    assert_eq!(last.body["id"], Value::Null);
    assert_eq!(last.body["data"]["webhook"], hook.as_str());
    s.stop().await;
}

async fn a_failing_endpoint_gets_retries_until_it_succeeds(b: Backend) {
    // Enough attempts (every 25-200 ms) that the endpoint which is down can come up in time.
    let mut s = start_fast(b, 100).await;
    let (ep, url) = endpoint().await;
    ep.fail_next.store(2, Ordering::SeqCst);
    let (hook, secret) = create(&s, &url, json!(["device.*"])).await;
    *ep.secret.lock().unwrap() = secret;
    // A second endpoint that is not listening at first: its failures hold up nobody else.
    let down = closed_url().await;
    let (down_hook, down_secret) = create(&s, &down, json!(["*"])).await;

    accept_a_device(&s).await;
    let log = deliveries_until(&s, &hook, "success after two failures", |items| {
        items.len() == 1 && items[0]["state"] == "succeeded"
    })
    .await;
    assert_eq!(log[0]["attempts"], 3, "{log:#?}");
    assert_eq!(log[0]["last_status"], 204);
    assert_eq!(log[0]["last_error"], Value::Null);
    let got = ep.received.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "{got:#?}");
    // Every attempt is the same delivery, the same body, validly signed.
    assert!(got.iter().all(|r| r.signature_valid));
    assert!(got.iter().all(|r| r.delivery == got[0].delivery));
    assert!(got.iter().all(|r| r.body == got[0].body));

    // The endpoint that does not answer shows its failures in the log.
    let failed = deliveries_until(&s, &down_hook, "a failed attempt", |items| {
        items
            .first()
            .is_some_and(|d| d["attempts"].as_u64() >= Some(1))
    })
    .await;
    assert_eq!(failed[0]["last_status"], Value::Null);
    assert!(
        failed[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("connect"),
        "{failed:#?}"
    );
    // It comes up on that address: a retry gets through.
    let addr = down
        .trim_start_matches("http://")
        .trim_end_matches("/hook")
        .to_owned();
    let (late, _) = endpoint_at(&addr).await;
    *late.secret.lock().unwrap() = down_secret;
    let log = deliveries_until(
        &s,
        &down_hook,
        "the retry to the endpoint now up",
        |items| items.len() == 1 && items[0]["state"] == "succeeded",
    )
    .await;
    assert!(log[0]["attempts"].as_u64().unwrap() >= 2, "{log:#?}");
    let got = late.received.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert!(got[0].signature_valid);
    assert_eq!(got[0].event, "device.state_changed");
    s.stop().await;
}

async fn a_slow_endpoint_holds_up_no_other(b: Backend) {
    // A long request time-out: the slow endpoint's attempt stays in flight throughout.
    let mut s = start_with(b, |c| {
        c.webhooks.tick_ms = 50;
        c.webhooks.request_timeout_ms = 60_000;
    })
    .await;
    let (slow, slow_url) = endpoint().await;
    slow.hold.send_replace(true);
    let (fast, fast_url) = endpoint().await;
    let (slow_hook, slow_secret) = create(&s, &slow_url, json!(["*"])).await;
    let (fast_hook, fast_secret) = create(&s, &fast_url, json!(["*"])).await;
    *slow.secret.lock().unwrap() = slow_secret;
    *fast.secret.lock().unwrap() = fast_secret;

    accept_a_device(&s).await;
    accept_a_device(&s).await;
    // Both events reach the fast endpoint, in order, while the slow one has not answered its
    // first request.
    let fast_log = deliveries_until(&s, &fast_hook, "both fast deliveries", |items| {
        items.len() == 2 && items.iter().all(|d| d["state"] == "succeeded")
    })
    .await;
    let slow_log = s
        .admin_get(&format!("/api/v1/webhooks/{slow_hook}/deliveries"))
        .await
        .1;
    let slow_items = slow_log["items"].as_array().unwrap();
    assert_eq!(slow_items.len(), 2, "{slow_log}");
    assert!(
        slow_items.iter().all(|d| d["state"] == "pending"),
        "{slow_log}"
    );
    let received = slow.received.lock().unwrap().clone();
    assert!(received.len() <= 1, "one request at a time: {received:#?}");
    let fast_got = fast.received.lock().unwrap().clone();
    let ids: Vec<u64> = fast_got
        .iter()
        .map(|r| r.body["id"].as_u64().unwrap())
        .collect();
    assert!(ids[0] < ids[1], "event order: {ids:?}");
    assert_eq!(
        fast_log[0]["id"],
        fast_got[1].delivery.as_str(),
        "newest first"
    );

    // Released, the slow endpoint gets both, in event order.
    slow.hold.send_replace(false);
    deliveries_until(&s, &slow_hook, "both slow deliveries", |items| {
        items.len() == 2 && items.iter().all(|d| d["state"] == "succeeded")
    })
    .await;
    let got = slow.received.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got.iter()
            .map(|r| r.body["id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        ids
    );
    s.stop().await;
}

async fn dead_deliveries_can_be_redelivered(b: Backend) {
    let mut s = start_fast(b, 3).await;
    let (ep, url) = endpoint().await;
    ep.fail_next.store(usize::MAX, Ordering::SeqCst);
    let (hook, secret) = create(&s, &url, json!(["*"])).await;
    *ep.secret.lock().unwrap() = secret;

    accept_a_device(&s).await;
    let log = deliveries_until(&s, &hook, "the delivery to die", |items| {
        items.len() == 1 && items[0]["state"] == "dead"
    })
    .await;
    assert_eq!(log[0]["attempts"], 3);
    assert_eq!(log[0]["last_status"], 500);
    assert_eq!(log[0]["next_attempt_at"], Value::Null);
    assert_eq!(ep.received.lock().unwrap().len(), 3);
    let (_, _, metrics) = s.get("/metrics", None).await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains("tender_webhook_deliveries_total{outcome=\"dead\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tender_webhook_deliveries_total{outcome=\"failed\"} 2"),
        "{metrics}"
    );

    // The endpoint recovers; the operator sends the dead delivery again.
    ep.fail_next.store(0, Ordering::SeqCst);
    let id = log[0]["id"].as_str().unwrap().to_owned();
    let (st, again) = admin(
        &s,
        Method::POST,
        &format!("/api/v1/webhooks/{hook}/deliveries/{id}/redeliver"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["attempts"], 0);
    let log = deliveries_until(&s, &hook, "the redelivery", |items| {
        items[0]["state"] == "succeeded"
    })
    .await;
    assert_eq!(log[0]["attempts"], 1);
    let got = ep.received.lock().unwrap().clone();
    assert_eq!(got.len(), 4);
    assert_eq!(got[3].delivery, id);
    assert!(got[3].signature_valid);
    // An unknown delivery is a 404.
    let (st, body) = admin(
        &s,
        Method::POST,
        &format!(
            "/api/v1/webhooks/{hook}/deliveries/{}/redeliver",
            uuid::Uuid::now_v7()
        ),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
    s.stop().await;
}

async fn the_api_checks_input_permission_and_shows_the_secret_once(b: Backend) {
    let mut s = start_fast(b, 3).await;
    for (body, field) in [
        (json!({"name": "x", "url": "ftp://example.com/"}), "url"),
        (
            json!({"name": "x", "url": "https://u:p@example.com/"}),
            "url",
        ),
        (json!({"name": "x", "url": "/relative"}), "url"),
        (
            json!({"name": "x", "url": "https://example.com/", "events": ["Device"]}),
            "events",
        ),
        (
            json!({"name": "x", "url": "https://example.com/", "events": []}),
            "events",
        ),
        (json!({"name": "", "url": "https://example.com/"}), "name"),
    ] {
        let (st, p) = admin(&s, Method::POST, "/api/v1/webhooks", Some(body.clone())).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {p}");
        assert!(
            p["detail"].as_str().unwrap().starts_with(field),
            "{body} -> {p}"
        );
    }
    let (st, w) = admin(
        &s,
        Method::POST,
        "/api/v1/webhooks",
        Some(json!({"name": "ops", "url": "https://example.com/in"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{w}");
    let id = w["id"].as_str().unwrap();
    let secret = w["secret"].as_str().unwrap().to_owned();
    assert!(
        secret.starts_with("whsec_") && secret.len() >= 6 + 64,
        "{w}"
    );
    assert_eq!(w["events"], json!(["*"]));
    // Reads never show the secret.
    let (_, got) = s.admin_get(&format!("/api/v1/webhooks/{id}")).await;
    assert!(got.get("secret").is_none(), "{got}");
    let (_, list) = s.admin_get("/api/v1/webhooks").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert!(list["items"][0].get("secret").is_none());
    // Rotation answers a new one.
    let (st, rotated) = admin(
        &s,
        Method::POST,
        &format!("/api/v1/webhooks/{id}/rotate-secret"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_ne!(rotated["secret"].as_str().unwrap(), secret);
    // Update and disable; a disabled webhook takes no test ping.
    let (st, changed) = admin(
        &s,
        Method::PATCH,
        &format!("/api/v1/webhooks/{id}"),
        Some(json!({"events": ["alert.*"], "enabled": false})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{changed}");
    assert_eq!(changed["events"], json!(["alert.*"]));
    assert_eq!(changed["enabled"], false);
    let (st, _) = admin(
        &s,
        Method::POST,
        &format!("/api/v1/webhooks/{id}/test"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT);
    // A viewer may not read or manage webhooks; an operator may.
    let t = s.default_tenant().await;
    let (_, viewer, _) = s
        .user_with_token(t.id, "viewer", vec![Role::Viewer], None)
        .await;
    let (st, _, p) = s.get("/api/v1/webhooks", Some(&viewer)).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{p}");
    let (_, operator, _) = s
        .user_with_token(t.id, "operator", vec![Role::Operator], None)
        .await;
    let (st, _, _) = s.get("/api/v1/webhooks", Some(&operator)).await;
    assert_eq!(st, StatusCode::OK);
    // Delete; then it is gone.
    let (st, _) = admin(&s, Method::DELETE, &format!("/api/v1/webhooks/{id}"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = s.admin_get(&format!("/api/v1/webhooks/{id}")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s.admin_get("/api/v1/webhooks/not-a-uuid").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    s.stop().await;
}
