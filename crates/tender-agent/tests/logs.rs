//! Remote logs end to end: the real server in-process, the real agent loop with a file source,
//! the operator API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{WAIT, poll_until, start};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tender_agent::logs::{LogsConfig, RawLogsConfig, RawSource};

fn file_source(name: &str, path: &Path) -> LogsConfig {
    let mut raw = RawLogsConfig::default();
    raw.sources.insert(
        name.into(),
        RawSource {
            file: Some(path.to_owned()),
            journal: None,
        },
    );
    LogsConfig::from_raw(Some(raw)).unwrap()
}

fn options() -> tender_agent::agent::RunOptions {
    tender_agent::agent::RunOptions {
        backoff_base: Some(Duration::from_millis(50)),
        ..Default::default()
    }
}

async fn ask(s: &common::Server, device: &str, body: Value) -> String {
    let (st, r) = s
        .admin(
            reqwest::Method::POST,
            &format!("/api/v1/devices/{device}/logs"),
            Some(body),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    r["id"].as_str().unwrap().to_owned()
}

/// Waits until the request is finished; returns it.
async fn finished(s: &common::Server, id: &str) -> Value {
    poll_until("the log request to finish", async || {
        let (st, r) = s
            .admin(reqwest::Method::GET, &format!("/api/v1/logs/{id}"), None)
            .await;
        assert_eq!(st, 200, "{r}");
        matches!(r["state"].as_str(), Some("ready" | "failed" | "expired")).then_some(r)
    })
    .await
}

async fn content(s: &common::Server, id: &str) -> String {
    let resp = reqwest::Client::new()
        .get(format!(
            "http://{}/api/v1/logs/{id}/content",
            s.server.http_addr
        ))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

#[tokio::test]
async fn a_real_agent_answers_a_log_request_from_a_file_source() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let log = dir.path().join("app.log");
    let text: String = (1..=200)
        .map(|i| format!("2026-01-01T00:{:02}:{:02}Z line {i}\n", i / 60, i % 60))
        .collect();
    std::fs::write(&log, &text).unwrap();
    let mut config = s.config(&data, Some(s.enrollment_token().await));
    config.logs = file_source("app", &log);
    let (stop, agent) = common::spawn_agent(
        config.clone(),
        options(),
        tender_agent::agent::SystemSource::new(&config, Some(common::fake_proc(dir.path()))),
    );
    let device = common::wait_enrolled(&data).await.device_id().to_owned();
    common::wait_connected(&data).await;

    // The last lines.
    let id = ask(&s, &device, json!({"sources": ["app"], "lines": 3})).await;
    let r = finished(&s, &id).await;
    assert_eq!(r["state"], "ready", "{r}");
    assert_eq!(
        content(&s, &id).await,
        "2026-01-01T00:03:18Z line 198\n2026-01-01T00:03:19Z line 199\n2026-01-01T00:03:20Z line 200\n"
    );

    // A time range, read from the lines' own times.
    let id = ask(
        &s,
        &device,
        json!({"sources": ["app"], "since": "2026-01-01T00:01:00Z", "until": "2026-01-01T00:01:03Z"}),
    )
    .await;
    assert_eq!(finished(&s, &id).await["state"], "ready");
    assert_eq!(
        content(&s, &id).await,
        "2026-01-01T00:01:00Z line 60\n2026-01-01T00:01:01Z line 61\n2026-01-01T00:01:02Z line 62\n"
    );

    // A source the agent does not have: failed, with the agent's reason for the operator.
    let id = ask(&s, &device, json!({"sources": ["nope"]})).await;
    let r = finished(&s, &id).await;
    assert_eq!(r["state"], "failed", "{r}");
    let why = r["error"].as_str().unwrap();
    assert!(why.contains("nope") && why.contains("app"), "{why}");

    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_request_made_while_the_device_is_offline_is_delivered_when_it_connects() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let log = dir.path().join("app.log");
    std::fs::write(&log, "first\nsecond\n").unwrap();
    let mut config = s.config(&data, Some(s.enrollment_token().await));
    config.logs = file_source("app", &log);
    let (stop, agent) = common::spawn_agent(
        config.clone(),
        options(),
        tender_agent::agent::SystemSource::new(&config, Some(common::fake_proc(dir.path()))),
    );
    let device = common::wait_enrolled(&data).await.device_id().to_owned();
    common::wait_connected(&data).await;
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Offline (the server saw the disconnect): the request waits.
    poll_until("the device to be offline", async || {
        let (_, d) = s
            .admin(
                reqwest::Method::GET,
                &format!("/api/v1/devices/{device}"),
                None,
            )
            .await;
        (d["online"] == false).then_some(())
    })
    .await;
    let id = ask(&s, &device, json!({"sources": ["app"]})).await;
    let (_, r) = s
        .admin(reqwest::Method::GET, &format!("/api/v1/logs/{id}"), None)
        .await;
    assert_eq!(r["state"], "pending", "{r}");

    let (stop, agent) = common::spawn_agent(
        config.clone(),
        options(),
        tender_agent::agent::SystemSource::new(&config, Some(common::fake_proc(dir.path()))),
    );
    let r = finished(&s, &id).await;
    assert_eq!(r["state"], "ready", "{r}");
    assert_eq!(content(&s, &id).await, "first\nsecond\n");
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn followed_lines_reach_the_api_client_over_sse() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let log = dir.path().join("app.log");
    std::fs::write(&log, "old line\n").unwrap();
    let mut config = s.config(&data, Some(s.enrollment_token().await));
    config.logs = file_source("app", &log);
    let (stop, agent) = common::spawn_agent(
        config.clone(),
        options(),
        tender_agent::agent::SystemSource::new(&config, Some(common::fake_proc(dir.path()))),
    );
    let device = common::wait_enrolled(&data).await.device_id().to_owned();
    common::wait_connected(&data).await;

    let id = ask(
        &s,
        &device,
        json!({"sources": ["app"], "lines": 1, "follow": true}),
    )
    .await;
    let resp = reqwest::Client::new()
        .get(format!(
            "http://{}/api/v1/logs/{id}/follow",
            s.server.http_addr
        ))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut seen = String::new();
    let mut appended = false;
    tokio::time::timeout(WAIT, async {
        while let Some(chunk) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if !appended && seen.contains("old line") {
                // The last line came first; now a new one is written.
                let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
                writeln!(f, "fresh line").unwrap();
                appended = true;
            }
            if seen.contains("fresh line") {
                return;
            }
        }
        panic!("the stream ended: {seen}");
    })
    .await
    .unwrap_or_else(|_| panic!("no followed lines arrived: {seen}"));
    assert!(seen.contains("event: lines"), "{seen}");
    drop(stream);

    // A follow request has no content to download.
    let (st, p) = s
        .admin(
            reqwest::Method::GET,
            &format!("/api/v1/logs/{id}/content"),
            None,
        )
        .await;
    assert_eq!(st, 409, "{p}");
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
