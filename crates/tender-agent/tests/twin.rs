//! The agent and the device twin against the real server: configuration handlers apply the
//! desired state and report it, and a change made while the agent is offline is applied when
//! it comes back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{WAIT, fake_proc, poll_until, start};
use serde_json::{Value, json};
use tender_agent::desired::{Format, HandlerConfig};

fn run_agent(
    config: &tender_agent::config::AgentConfig,
    proc_root: std::path::PathBuf,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), tender_agent::agent::AgentError>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = config.clone();
    let options = tender_agent::agent::RunOptions {
        proc_root: Some(proc_root),
        backoff_base: Some(Duration::from_millis(50)),
        ..Default::default()
    };
    let task = tokio::spawn(async move {
        tender_agent::agent::run(&config, options, async {
            let _ = stopped.await;
        })
        .await
    });
    (stop, task)
}

#[tokio::test]
async fn desired_changes_are_applied_online_and_after_an_offline_spell() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let app_file = etc.join("app.json");
    let applied_log = etc.join("hook.log");
    let mut config = s.config(&data, Some(s.enrollment_token().await));
    let mut handlers = BTreeMap::new();
    handlers.insert(
        "app".to_owned(),
        HandlerConfig {
            path: app_file.clone(),
            hook: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("cat \"$TENDER_CONFIG_FILE\" >> {}", applied_log.display()),
            ],
            format: Format::Json,
            hook_timeout_secs: 10,
        },
    );
    config.config_handlers = handlers;
    let proc_root = fake_proc(dir.path());
    let (stop, agent) = run_agent(&config, proc_root.clone());
    let id = common::wait_enrolled(&data).await;
    let device = id.device_id().to_owned();
    common::wait_connected(&data).await;

    // A fleet default reaches the device, its handler writes the file and runs the hook, and
    // the device reports it: the delta empties.
    let (st, l) = s
        .admin(
            reqwest::Method::PUT,
            "/api/v1/config/fleet",
            Some(json!({"document": {"app": {"level": 1}}})),
        )
        .await;
    assert_eq!(st, 201, "{l}");
    let twin_path = format!("/api/v1/devices/{device}/twin");
    let twin = poll_until("the device reports the fleet default", async || {
        let (_, t) = s.admin(reqwest::Method::GET, &twin_path, None).await;
        (t["reported"]["document"]["app"] == json!({"level": 1})).then_some(t)
    })
    .await;
    assert_eq!(twin["delta"], json!({}));
    assert!(
        twin["reported"]["document"]["tender"]["desired_version"]
            .as_u64()
            .unwrap()
            >= 1
    );
    let file: Value = serde_json::from_slice(&std::fs::read(&app_file).unwrap()).unwrap();
    assert_eq!(file, json!({"level": 1}));
    assert!(
        std::fs::read_to_string(&applied_log)
            .unwrap()
            .contains("\"level\": 1")
    );

    // Offline: the change is made while the agent is stopped...
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, agent)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
    let (st, t) = s
        .admin(
            reqwest::Method::PATCH,
            &format!("{twin_path}/desired"),
            Some(json!({"app": {"level": 2}})),
        )
        .await;
    assert_eq!(st, 200, "{t}");
    assert_eq!(t["delta"], json!({"app": {"level": 2}}));
    // ...and applied when it comes back.
    let mut again = config.clone();
    again.enrollment_token = None;
    let (stop, agent) = run_agent(&again, proc_root);
    let twin = poll_until(
        "the device applies the change made while it was away",
        async || {
            let (_, t) = s.admin(reqwest::Method::GET, &twin_path, None).await;
            (t["reported"]["document"]["app"] == json!({"level": 2})).then_some(t)
        },
    )
    .await;
    assert_eq!(twin["delta"], json!({}));
    assert_eq!(
        twin["effective"]["sources"]["/app/level"]["layer"],
        "device"
    );
    let file: Value = serde_json::from_slice(&std::fs::read(&app_file).unwrap()).unwrap();
    assert_eq!(file, json!({"level": 2}));
    // The whole document is there for other programs too.
    let whole: Value =
        serde_json::from_slice(&std::fs::read(data.join("desired.json")).unwrap()).unwrap();
    assert_eq!(whole, json!({"app": {"level": 2}}));
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, agent)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
}
