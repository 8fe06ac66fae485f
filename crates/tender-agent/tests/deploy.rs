//! Deployments end to end: the real server in-process (artifacts, deployments, the scheduler,
//! MQTT), the real agent loop with the `file` module, the operator API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use common::{poll_until, start, wait_connected, wait_enrolled};
use serde_json::{Value, json};
use tender_artifact::{Compression, FORMAT, Manifest, Payload, Signatures, SigningKey, describe};

fn key() -> SigningKey {
    SigningKey::from_seed(&[9; 32])
}

/// A signed artifact for the test rig: one payload `payload` of `content` for `module`.
fn signed(
    name: &str,
    version: &str,
    module: &str,
    payload: &str,
    content: &[u8],
    meta: Value,
) -> Vec<u8> {
    let d = describe(content, Compression::None, None).unwrap();
    let manifest = Manifest {
        format: FORMAT.into(),
        name: name.into(),
        version: version.into(),
        compatible: vec!["test-rig".into()],
        depends: BTreeMap::new(),
        provides: BTreeMap::new(),
        payload_type: module.into(),
        payloads: vec![Payload {
            name: payload.into(),
            size: d.size,
            sha256: d.sha256,
            compression: Compression::None,
            stored_size: None,
            meta: meta.as_object().cloned().unwrap_or_default(),
        }],
        scripts: vec![],
        meta: Default::default(),
        created_at: None,
    };
    let mut sigs = Signatures::default();
    sigs.add(&key(), &manifest.to_bytes());
    let content = content.to_vec();
    tender_artifact::write(Vec::new(), &manifest, &sigs, move |_| {
        Ok(Box::new(io::Cursor::new(content.clone())) as Box<dyn io::Read>)
    })
    .unwrap()
}

/// A signed `file` artifact for the test rig installing `content` at `path`.
fn artifact(version: &str, path: &std::path::Path, content: &[u8]) -> Vec<u8> {
    let meta = json!({"path": path.display().to_string()});
    signed("app", version, "file", "app.bin", content, meta)
}

/// Waits until the deployment's one device is in a finished state; returns its target.
async fn finished(s: &common::Server, deployment: &str) -> Value {
    poll_until("the device's deployment to finish", async || {
        let (st, page) = s
            .admin(
                reqwest::Method::GET,
                &format!("/api/v1/deployments/{deployment}/devices"),
                None,
            )
            .await;
        assert_eq!(st, 200, "{page}");
        let t = page["items"][0].clone();
        matches!(
            t["state"].as_str(),
            Some("succeeded" | "failed" | "rolled_back" | "skipped" | "incompatible" | "canceled")
        )
        .then_some(t)
    })
    .await
}

async fn deploy(s: &common::Server, artifact: &str, device: &str) -> String {
    let (st, d) = s
        .admin(
            reqwest::Method::POST,
            "/api/v1/deployments",
            Some(json!({"artifact": artifact, "target": {"device": device}, "max_attempts": 1})),
        )
        .await;
    assert_eq!(st, 201, "{d}");
    d["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_deployment_is_installed_by_the_agent_and_a_tampered_artifact_is_refused() {
    let s = start().await;
    let (st, k) = s
        .admin(
            reqwest::Method::POST,
            "/api/v1/signing-keys",
            Some(
                json!({"name": "release", "public_key_pem": key().public_key().to_pem().unwrap()}),
            ),
        )
        .await;
    assert_eq!(st, 201, "{k}");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let target = dir.path().join("opt").join("app.bin");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let pem = dir.path().join("release.pem");
    std::fs::write(&pem, key().public_key().to_pem().unwrap()).unwrap();
    let mut config = s.config(&data, Some(s.enrollment_token().await));
    config.update.trusted_keys = vec![pem];
    config.update.reboot_command = vec!["false".into()];
    let options = tender_agent::agent::RunOptions {
        backoff_base: Some(Duration::from_millis(50)),
        ..Default::default()
    };
    let (stop, task) = common::spawn_agent(
        config,
        options,
        tender_agent::agent::SystemSource::new(&s.config(&data, None), None),
    );
    let device = wait_enrolled(&data).await.device_id().to_owned();
    wait_connected(&data).await;

    // Version 1.2.0: downloaded, installed, reported, and in the inventory.
    let good: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let a1 = s.upload_artifact(artifact("1.2.0", &target, &good)).await;
    let d1 = deploy(&s, a1["id"].as_str().unwrap(), &device).await;
    let t = finished(&s, &d1).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    assert!(
        std::fs::read(&target).unwrap() == good,
        "the file is installed"
    );
    let attrs = poll_until("provides.app.version in the inventory", async || {
        let (st, inv) = s
            .admin(
                reqwest::Method::GET,
                &format!("/api/v1/devices/{device}/inventory"),
                None,
            )
            .await;
        (st == 200 && inv["attributes"]["provides.app.version"] == "1.2.0")
            .then_some(inv["attributes"].clone())
    })
    .await;
    assert_eq!(attrs["device_type"], "test-rig");
    let journal: Value =
        serde_json::from_slice(&std::fs::read(data.join("deployments.json")).unwrap()).unwrap();
    assert_eq!(journal[0]["deployment_id"], d1.as_str(), "{journal}");
    assert_eq!(journal[0]["state"], "succeeded", "{journal}");

    // Version 1.3.0, altered on the server after it was checked: the agent refuses it and
    // nothing changes on the device.
    let mut bad_content = good.clone();
    bad_content[100] ^= 0xff;
    let a2 = s
        .upload_artifact(artifact("1.3.0", &target, &bad_content))
        .await;
    let a2_id = a2["id"].as_str().unwrap();
    let stored = s
        .config
        .data_dir
        .join("artifacts")
        .join(s.tenant_id().await)
        .join(format!("{a2_id}.tender"));
    let mut file = std::fs::read(&stored).unwrap();
    let at = file
        .windows(bad_content.len())
        .position(|w| w == bad_content.as_slice())
        .expect("the payload is stored as is");
    file[at + 5000] ^= 0x01;
    std::fs::write(&stored, &file).unwrap();
    let d2 = deploy(&s, a2_id, &device).await;
    let t = finished(&s, &d2).await;
    assert_eq!(t["state"], "failed", "{t}");
    let said = format!("{} {}", t["error"], t["log"]);
    assert!(said.contains("SHA-256"), "the reason names the hash: {t}");
    assert!(
        std::fs::read(&target).unwrap() == good,
        "the installed file is unchanged"
    );
    let installed: Value =
        serde_json::from_slice(&std::fs::read(data.join("installed.json")).unwrap()).unwrap();
    assert_eq!(installed["artifacts"]["app"]["version"], "1.2.0");

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// A signed `rootfs-ab` image for the test rig.
fn rootfs_artifact(version: &str, image: &[u8]) -> Vec<u8> {
    signed(
        "rootfs",
        version,
        "rootfs-ab",
        "rootfs.img",
        image,
        json!({}),
    )
}

fn image(seed: u32) -> Vec<u8> {
    (0..300_000u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// The state of the deployment's one device, once it is `want`.
async fn target_state(s: &common::Server, deployment: &str, want: &str) -> Value {
    poll_until(&format!("the device to be {want}"), async || {
        let (st, page) = s
            .admin(
                reqwest::Method::GET,
                &format!("/api/v1/deployments/{deployment}/devices"),
                None,
            )
            .await;
        assert_eq!(st, 200, "{page}");
        let t = page["items"][0].clone();
        (t["state"] == want).then_some(t)
    })
    .await
}

/// A real agent with `rootfs-ab` on file-backed slots, driven by server deployments; a
/// "reboot" is the boot loader's step ([`bootenv::simulate_boot`]) and a new agent process
/// with a new boot id. A healthy image is committed and reported `succeeded`; an image whose
/// health check fails is rolled back to the working slot and reported `rolled_back`.
#[tokio::test]
async fn a_rootfs_ab_deployment_commits_when_healthy_and_rolls_back_when_not() {
    use tender_agent::update::bootenv::{self, BootEnv};

    let s = start().await;
    let (st, k) = s
        .admin(
            reqwest::Method::POST,
            "/api/v1/signing-keys",
            Some(
                json!({"name": "release", "public_key_pem": key().public_key().to_pem().unwrap()}),
            ),
        )
        .await;
    assert_eq!(st, 201, "{k}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let data = p.join("agent");
    let pem = p.join("release.pem");
    std::fs::write(&pem, key().public_key().to_pem().unwrap()).unwrap();
    let old = image(1);
    let slots = BTreeMap::from([
        ("a".to_string(), p.join("slot-a")),
        ("b".to_string(), p.join("slot-b")),
    ]);
    std::fs::write(&slots["a"], &old).unwrap();
    std::fs::write(&slots["b"], b"nothing yet").unwrap();
    let env = p.join("bootenv");
    std::fs::write(
        &env,
        "boot_part=a\nupgrade_available=0\nbootcount=0\nbootlimit=3\n",
    )
    .unwrap();
    let cmdline = p.join("cmdline");
    let boot_id = p.join("boot_id");
    let boots = std::cell::Cell::new(0u32);
    // Power on: the boot loader picks a slot, the kernel gets a new boot id.
    let power_on = || {
        boots.set(boots.get() + 1);
        std::fs::write(&boot_id, format!("boot-{}\n", boots.get())).unwrap();
        bootenv::simulate_boot(&env, &slots, &cmdline).unwrap()
    };
    assert_eq!(power_on(), "a");
    let token = s.enrollment_token().await;
    let agent = |health: Option<&str>| {
        let mut config = s.config(&data, Some(token.clone()));
        config.update.trusted_keys = vec![pem.clone()];
        config.update.reboot_command = vec!["true".into()];
        config.update.boot_id_file = boot_id.clone();
        config.update.provides = BTreeMap::from([("rootfs.version".into(), "1".into())]);
        config.update.health_check = health
            .map(|h| vec!["/bin/sh".into(), "-c".into(), h.into()])
            .unwrap_or_default();
        config.update.rootfs = Some(tender_agent::update::RootfsConfig {
            slots: slots.clone(),
            bootenv: env.clone(),
            cmdline: cmdline.clone(),
            bootlimit: 3,
        });
        let options = tender_agent::agent::RunOptions {
            backoff_base: Some(Duration::from_millis(50)),
            ..Default::default()
        };
        common::spawn_agent(
            config,
            options,
            tender_agent::agent::SystemSource::new(&s.config(&data, None), None),
        )
    };

    // Version 2, healthy: written to b, rebooted into, verified (connected), committed.
    let (stop, task) = agent(None);
    let device = wait_enrolled(&data).await.device_id().to_owned();
    wait_connected(&data).await;
    let new = image(2);
    let a2 = s.upload_artifact(rootfs_artifact("2", &new)).await;
    let d2 = deploy(&s, a2["id"].as_str().unwrap(), &device).await;
    target_state(&s, &d2, "rebooting").await;
    assert_eq!(
        std::fs::read(&slots["b"]).unwrap(),
        new,
        "the image is in b"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(power_on(), "b", "booted on trial into the new slot");
    let (stop, task) = agent(Some("exit 0"));
    let t = finished(&s, &d2).await;
    assert_eq!(t["state"], "succeeded", "{t}");
    let e = BootEnv::read(&env).unwrap();
    assert_eq!(e.get("boot_part"), Some("b"));
    assert_eq!(e.get("upgrade_available"), Some("0"), "committed");
    poll_until("provides.rootfs.version 2 in the inventory", async || {
        let (st, inv) = s
            .admin(
                reqwest::Method::GET,
                &format!("/api/v1/devices/{device}/inventory"),
                None,
            )
            .await;
        (st == 200 && inv["attributes"]["provides.rootfs.version"] == "2").then_some(())
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();

    // Version 3 fails its health check after the reboot: back to b, reported rolled back.
    let (stop, task) = agent(Some("echo unwell >&2; exit 1"));
    wait_connected(&data).await;
    let a3 = s.upload_artifact(rootfs_artifact("3", &image(3))).await;
    let d3 = deploy(&s, a3["id"].as_str().unwrap(), &device).await;
    target_state(&s, &d3, "rebooting").await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(power_on(), "a", "on trial in the other slot");
    let (stop, task) = agent(Some("echo unwell >&2; exit 1"));
    // Verify fails: the environment goes back to b and the agent asks for a reboot.
    poll_until("the rollback to be set up", async || {
        let e = BootEnv::read(&env).unwrap();
        (e.get("boot_part") == Some("b")).then_some(())
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(power_on(), "b", "back on the working slot");
    let (stop, task) = agent(Some("echo unwell >&2; exit 1"));
    let t = finished(&s, &d3).await;
    assert_eq!(t["state"], "rolled_back", "{t}");
    assert!(format!("{t}").contains("health check"), "{t}");
    assert_eq!(std::fs::read(&slots["b"]).unwrap(), new, "b untouched");
    let installed: Value =
        serde_json::from_slice(&std::fs::read(data.join("installed.json")).unwrap()).unwrap();
    assert_eq!(
        installed["artifacts"]["rootfs"]["version"], "2",
        "{installed}"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
