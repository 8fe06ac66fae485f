//! Commands end to end: the real server in-process, the real agent loop, the operator API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{WAIT, poll_until, start};
use serde_json::{Value, json};
use tender_agent::commands::RawCustomCommand;

async fn send(s: &common::Server, body: Value) -> Value {
    let (st, c) = s
        .admin(reqwest::Method::POST, "/api/v1/commands", Some(body))
        .await;
    assert_eq!(st, 201, "{c}");
    c
}

/// Waits until the command's device reached a finished state; returns its status.
async fn finished(s: &common::Server, command: &str) -> Value {
    poll_until("the command's result", async || {
        let (st, page) = s
            .admin(
                reqwest::Method::GET,
                &format!("/api/v1/commands/{command}/devices"),
                None,
            )
            .await;
        assert_eq!(st, 200, "{page}");
        let t = page["items"][0].clone();
        matches!(
            t["state"].as_str(),
            Some("succeeded" | "failed" | "timed_out" | "expired" | "canceled")
        )
        .then_some(t)
    })
    .await
}

#[tokio::test]
async fn the_agent_runs_allowed_commands_and_reports_their_results() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let mut config = s.config(&data, Some(s.enrollment_token().await));
    let script = dir.path().join("hello.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"hello $*\"\necho warn >&2\nexit 0\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let custom: BTreeMap<String, RawCustomCommand> = [
        (
            "hello".to_owned(),
            RawCustomCommand {
                exec: vec![script.display().to_string(), "fixed".into()],
                allow_args: Some(true),
            },
        ),
        (
            "no-args".to_owned(),
            RawCustomCommand {
                exec: vec![script.display().to_string()],
                allow_args: None,
            },
        ),
    ]
    .into();
    config.commands = tender_agent::commands::CommandsConfig::from_raw(None, Some(custom)).unwrap();
    let options = tender_agent::agent::RunOptions {
        backoff_base: Some(Duration::from_millis(50)),
        ..Default::default()
    };
    let (stop, agent) = common::spawn_agent(
        config.clone(),
        options.clone(),
        tender_agent::agent::SystemSource::new(&config, Some(common::fake_proc(dir.path()))),
    );
    let id = common::wait_enrolled(&data).await;
    let device = id.device_id().to_owned();
    common::wait_connected(&data).await;

    // A custom, allow-listed command with arguments.
    let c = send(
        &s,
        json!({"name": "hello", "args": ["a b"], "target": {"device": device}}),
    )
    .await;
    assert_eq!(c["summary"]["total"], 1);
    let t = finished(&s, c["id"].as_str().unwrap()).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["exit_code"], 0);
    assert_eq!(t["stdout"], "hello fixed a b\n");
    assert_eq!(t["stderr"], "warn\n");
    assert_eq!(t["attempts"], 1);

    // Ping: diagnostics as structured output.
    let c = send(&s, json!({"name": "ping", "target": {"devices": [device]}})).await;
    let t = finished(&s, c["id"].as_str().unwrap()).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["output"]["server_reachable"], true);
    assert!(t["output"]["clock_skew_ms"].is_i64(), "{t}");
    assert!(t["output"]["data_dir_free_bytes"].is_u64(), "{t}");
    assert!(t["output"]["agent_version"].is_string());

    // Not on the allow-list, or arguments where none are allowed: failed, with the reason.
    for (name, args, why) in [
        ("rm-rf", json!([]), "not allowed"),
        ("no-args", json!(["x"]), "takes no arguments"),
    ] {
        let c = send(
            &s,
            json!({"name": name, "args": args, "target": {"device": device}}),
        )
        .await;
        let t = finished(&s, c["id"].as_str().unwrap()).await;
        assert_eq!(t["state"], "failed", "{t}");
        assert!(t["error"].as_str().unwrap().contains(why), "{t}");
    }

    // The device's command list, newest first.
    let (_, list) = s
        .admin(
            reqwest::Method::GET,
            &format!("/api/v1/devices/{device}/commands"),
            None,
        )
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 4);

    // A command sent while the agent is stopped stays queued, and runs once it is back.
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, agent)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
    poll_until("the device offline", async || {
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
    let c = send(&s, json!({"name": "hello", "target": {"device": device}})).await;
    let cid = c["id"].as_str().unwrap().to_owned();
    assert_eq!(c["summary"]["queued"], 1, "{c}");
    let (stop, agent) = common::spawn_agent(
        config.clone(),
        options,
        tender_agent::agent::SystemSource::new(&config, Some(common::fake_proc(dir.path()))),
    );
    let t = finished(&s, &cid).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["stdout"], "hello fixed\n");
    let (_, c) = s
        .admin(
            reqwest::Method::GET,
            &format!("/api/v1/commands/{cid}"),
            None,
        )
        .await;
    assert_eq!(c["summary"]["succeeded"], 1);
    assert_eq!(c["summary"]["done"], true);
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, agent)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
}
