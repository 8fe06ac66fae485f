//! Store-and-forward against the real server: readings taken while the server is away are
//! delivered, in full and in order, once it is back; a killed agent loses nothing it had
//! buffered; a damaged buffer file is repaired with a log line, not a crash loop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Server, WAIT, start, wait_until};
use tender_agent::agent::{RunOptions, Source};
use tender_agent::buffer::{Buffer, Limits};
use tender_agent::inventory::{Attributes, Value};
use tender_agent::telemetry::Payload;
use tender_core::telemetry::MetricName;
use tender_core::tenant::TenantSlug;
use tender_core::{DeviceId, Timestamp};

/// Emits `seq` = 1, 2, 3 ... one per tick, and a fixed inventory.
struct Counting {
    emitted: Arc<AtomicU64>,
}

impl Source for Counting {
    async fn telemetry(&mut self, now_ms: i64) -> Vec<Payload> {
        let n = self.emitted.fetch_add(1, Ordering::SeqCst) + 1;
        vec![Payload {
            ts: now_ms,
            values: [("seq".to_owned(), n as f64)].into(),
        }]
    }

    async fn inventory(&mut self) -> Attributes {
        [
            ("device_type".to_owned(), Value::Str("counter".into())),
            ("agent.version".to_owned(), Value::Str("test".into())),
        ]
        .into()
    }
}

/// Every stored sample of `metric` for `device`: (time, value), oldest first.
async fn stored(s: &Server, device: &str, metric: &str) -> Vec<(i64, f64)> {
    let store = &s.server.store;
    let tenant = store
        .tenant_by_slug(&TenantSlug::default_tenant())
        .await
        .unwrap()
        .unwrap();
    let device: DeviceId = device.parse().unwrap();
    let metric = MetricName::parse(metric).unwrap();
    let mut out = Vec::new();
    let mut from = Timestamp::from_unix_millis(0);
    loop {
        let page = store
            .query_samples(
                tenant.id,
                device,
                &metric,
                from,
                Timestamp::from_unix_millis(i64::MAX),
                tender_core::page::PageLimit::new(1000).unwrap(),
            )
            .await
            .unwrap();
        out.extend(page.items.iter().map(|x| (x.at.unix_millis(), x.value)));
        match page.next {
            Some(last) => from = last.plus_millis(1),
            None => return out,
        }
    }
}

#[tokio::test]
async fn readings_taken_while_the_server_is_away_arrive_once_it_is_back() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let config = s.config(&data, Some(s.enrollment_token().await));
    let emitted = Arc::new(AtomicU64::new(0));
    let options = RunOptions {
        backoff_base: Some(Duration::from_millis(50)),
        telemetry_interval: Some(Duration::from_millis(50)),
        ..Default::default()
    };
    let (stop, agent) = common::spawn_agent(
        config,
        options,
        Counting {
            emitted: emitted.clone(),
        },
    );
    let id = common::wait_enrolled(&data).await;
    let device = id.device_id().to_owned();
    wait_until("the first readings", async || {
        stored(&s, &device, "seq").await.len() >= 3
    })
    .await;

    // The inventory arrived, once.
    let store = s.server.store.clone();
    let tenant = store
        .tenant_by_slug(&TenantSlug::default_tenant())
        .await
        .unwrap()
        .unwrap();
    let inventory = store
        .device_inventory(tenant.id, device.parse().unwrap())
        .await
        .unwrap()
        .expect("inventory stored");
    assert_eq!(
        inventory.attributes.get("device_type").map(|v| v.display()),
        Some("counter".to_owned())
    );

    // The server goes away; the agent keeps measuring into its buffer.
    let stopped_server = s.stop().await;
    let at_stop = emitted.load(Ordering::SeqCst);
    wait_until("readings buffered while the server is down", async || {
        tender_agent::status::read(&data).is_some_and(|st| st.buffered >= 10)
            && emitted.load(Ordering::SeqCst) >= at_stop + 10
    })
    .await;
    let while_down = emitted.load(Ordering::SeqCst);

    // It comes back: everything measured meanwhile arrives, nothing is missing.
    let s = stopped_server.restart().await;
    wait_until("the buffer delivered", async || {
        stored(&s, &device, "seq")
            .await
            .iter()
            .filter(|(_, v)| *v <= while_down as f64)
            .count()
            == while_down as usize
    })
    .await;
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, agent)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
    let samples = stored(&s, &device, "seq").await;
    let values: Vec<u64> = samples.iter().map(|(_, v)| *v as u64).collect();
    let expected: Vec<u64> = (1..=values.len() as u64).collect();
    assert_eq!(values, expected, "every reading once, in order of time");
    assert!(values.len() as u64 >= while_down);
}

#[cfg(unix)]
#[tokio::test]
async fn a_killed_agent_delivers_its_buffer_after_restart_even_with_a_torn_tail() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let mqtt = s.server.mqtt_addr.unwrap();
    let config_path = dir.path().join("agent.toml");
    std::fs::write(
        &config_path,
        format!(
            "server_url = {:?}\nmqtt_url = \"127.0.0.1:{}\"\nca_file = {:?}\ndata_dir = {:?}\n\
             telemetry_interval_secs = 1\nmax_backoff_secs = 1\ncollectors = [\"system\"]\n\
             inventory_scripts_dir = {:?}\n",
            s.server_url(),
            mqtt.port(),
            s.server.ca_cert_path.display().to_string(),
            data.display().to_string(),
            dir.path().join("none").display().to_string(),
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_tender-agent");
    let spawn = |stderr: std::process::Stdio| {
        tokio::process::Command::new(bin)
            .args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let token = s.enrollment_token().await;
    let mut child = tokio::process::Command::new(bin)
        .args(["run", "--config"])
        .arg(&config_path)
        .env("TENDER_AGENT_ENROLLMENT_TOKEN", token)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let id = common::wait_enrolled(&data).await;
    let device = id.device_id().to_owned();
    wait_until("the first reading", async || {
        !stored(&s, &device, "uptime.secs").await.is_empty()
    })
    .await;

    // Server away, readings pile up in the buffer; then the agent is killed outright.
    let stopped_server = s.stop().await;
    wait_until("three readings buffered", async || {
        tender_agent::status::read(&data).is_some_and(|st| st.buffered >= 3)
    })
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    // What the buffer holds now must all arrive. Read it as the agent will.
    let buffer_dir = data.join(tender_agent::agent::BUFFER_DIR);
    let pending: BTreeSet<i64> = {
        let (mut buffer, _) = Buffer::open(&buffer_dir, Limits::default()).unwrap();
        buffer
            .peek(10_000)
            .unwrap()
            .into_iter()
            .filter(|r| r.suffix == "telemetry")
            .map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
                v["ts"].as_i64().unwrap()
            })
            .collect()
    };
    assert!(pending.len() >= 3, "{pending:?}");
    // Power loss mid-write: a torn record at the end of the newest segment.
    let newest = std::fs::read_dir(&buffer_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&newest)
            .unwrap();
        f.write_all(&[0xA7, 1, 200, 0, 0, 0, 1, 2, 3]).unwrap();
    }

    let s = stopped_server.restart().await;
    let mut child = spawn(std::process::Stdio::piped());
    let stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut text = String::new();
        let mut stderr = stderr;
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    wait_until("every buffered reading stored", async || {
        let have: BTreeSet<i64> = stored(&s, &device, "uptime.secs")
            .await
            .into_iter()
            .map(|(at, _)| at)
            .collect();
        pending.is_subset(&have)
    })
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let log = log.await.unwrap();
    assert!(
        log.contains("buffer:") && log.contains("cut"),
        "the repair is logged: {log}"
    );
}

/// MQTT unreachable (a port nobody listens on), HTTPS fallback configured: the buffer goes out
/// over the HTTPS device API instead, inventory included.
#[tokio::test]
async fn without_mqtt_the_buffer_goes_out_over_https() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let mut config = s.config(&data, Some(s.enrollment_token().await));
    // A port that was free a moment ago: connecting is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    config.mqtt_port = closed.local_addr().unwrap().port();
    drop(closed);
    config.https_fallback_after_secs = Some(0);
    let emitted = Arc::new(AtomicU64::new(0));
    let options = RunOptions {
        backoff_base: Some(Duration::from_millis(50)),
        telemetry_interval: Some(Duration::from_millis(50)),
        ..Default::default()
    };
    let (stop, agent) = common::spawn_agent(
        config,
        options,
        Counting {
            emitted: emitted.clone(),
        },
    );
    let id = common::wait_enrolled(&data).await;
    let device = id.device_id().to_owned();
    wait_until("readings over HTTPS", async || {
        stored(&s, &device, "seq").await.len() >= 5
    })
    .await;
    let store = s.server.store.clone();
    let tenant = store
        .tenant_by_slug(&TenantSlug::default_tenant())
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .device_inventory(tenant.id, device.parse().unwrap())
            .await
            .unwrap()
            .is_some(),
        "the inventory went over HTTPS too"
    );
    // MQTT never connected.
    let status = tender_agent::status::read(&data).unwrap();
    assert_ne!(status.state, "connected");
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, agent)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
    let values: Vec<u64> = stored(&s, &device, "seq")
        .await
        .iter()
        .map(|(_, v)| *v as u64)
        .collect();
    assert_eq!(values, (1..=values.len() as u64).collect::<Vec<_>>());
}

/// A server that cannot be reached: the agent says so on a log line, keeps retrying with
/// back-off, and keeps running (no exit, no crash loop).
#[tokio::test]
async fn an_unreachable_server_is_retried_not_fatal() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let ca = dir.path().join("ca.crt");
    let s = start().await;
    std::fs::copy(&s.server.ca_cert_path, &ca).unwrap();
    let config_path = dir.path().join("agent.toml");
    std::fs::write(
        &config_path,
        format!(
            "server_url = \"https://127.0.0.1:{port}\"\nca_file = {:?}\ndata_dir = {:?}\n\
             enrollment_token = \"tne_x\"\n",
            ca.display().to_string(),
            dir.path().join("agent").display().to_string(),
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tender-agent"))
        .args(["run", "--config"])
        .arg(&config_path)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut retries = 0;
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("retry") || line.contains("retrying") {
                retries += 1;
                if retries == 2 {
                    return;
                }
            }
        }
        panic!("stderr closed: the agent exited");
    })
    .await
    .expect("two retries logged");
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running after failed attempts"
    );
    child.start_kill().unwrap();
}

/// Unmounts (lazily) when dropped, so a failing test leaves no mount behind.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A full disk under the buffer: readings that cannot be written are counted and logged, the
/// agent keeps running, and once there is room again it buffers and delivers as before. The
/// data directory is a 512 KiB tmpfs (needs root, as on the CI machine).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_full_disk_loses_readings_visibly_and_the_agent_carries_on() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    std::fs::create_dir_all(&data).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&data)
        .status()
        .expect("mount(8) exists");
    assert!(
        mounted.success(),
        "this test mounts a small tmpfs and needs root (CAP_SYS_ADMIN)"
    );
    let _mount = Mount(data.clone());
    let config = s.config(&data, Some(s.enrollment_token().await));
    let emitted = Arc::new(AtomicU64::new(0));
    let counters = Arc::new(tender_agent::agent::Counters::default());
    let options = RunOptions {
        backoff_base: Some(Duration::from_millis(50)),
        telemetry_interval: Some(Duration::from_millis(20)),
        counters: Some(counters.clone()),
        ..Default::default()
    };
    let (stop, agent) = common::spawn_agent(
        config,
        options,
        Counting {
            emitted: emitted.clone(),
        },
    );
    let device = common::wait_enrolled(&data).await.device_id().to_owned();
    wait_until("the first readings", async || {
        !stored(&s, &device, "seq").await.is_empty()
    })
    .await;

    // Fill the file system.
    let filler = data.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).and_then(|_| f.sync_all()).is_ok() {}
    }
    // (The status file cannot be written either now: the shared counters tell.)
    wait_until("readings lost to the full disk", async || {
        counters.lost.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert!(!agent.is_finished(), "the agent keeps running");

    // Room again: readings are buffered and delivered again.
    std::fs::remove_file(&filler).unwrap();
    let after = emitted.load(Ordering::SeqCst) as f64;
    wait_until("readings stored after the disk has room", async || {
        stored(&s, &device, "seq")
            .await
            .iter()
            .any(|(_, v)| *v > after + 2.0)
    })
    .await;
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, agent)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
    // Written again once there was room: the status counts what was lost.
    let lost = tender_agent::status::read(&data).unwrap().lost_unbuffered;
    assert!(lost >= 3, "{lost}");
    assert_eq!(lost, counters.lost.load(Ordering::SeqCst));
}
