//! Over-the-air updates through the real `tender-agent` binary: `install`, `update-resume`
//! and `update-status` on a device made of temporary files (A/B slots, a boot environment, a
//! kernel command line), with the boot loader simulated between runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{Value, json};
use tender_agent::update::bootenv::{self, BootEnv};
use tender_artifact::{
    Compression, FORMAT, Manifest, Payload, Script, ScriptState, Signatures, SigningKey, describe,
    write,
};

fn key() -> SigningKey {
    SigningKey::from_seed(&[7; 32])
}

/// An artifact to build.
struct Art {
    name: &'static str,
    version: &'static str,
    payload_type: &'static str,
    compatible: Vec<&'static str>,
    depends: BTreeMap<String, String>,
    meta: Value,
    payloads: Vec<(&'static str, Vec<u8>, Value)>,
    scripts: Vec<(&'static str, ScriptState, String)>,
}

impl Art {
    fn new(name: &'static str, version: &'static str, payload_type: &'static str) -> Art {
        Art {
            name,
            version,
            payload_type,
            compatible: vec!["gw"],
            depends: BTreeMap::new(),
            meta: json!({}),
            payloads: vec![],
            scripts: vec![],
        }
    }

    fn build(&self, signer: Option<&SigningKey>) -> Vec<u8> {
        let mut stored = BTreeMap::new();
        let mut payloads = vec![];
        for (name, data, meta) in &self.payloads {
            let d = describe(&data[..], Compression::None, None).unwrap();
            stored.insert(format!("payloads/{name}"), data.clone());
            payloads.push(Payload {
                name: (*name).into(),
                size: d.size,
                sha256: d.sha256,
                compression: Compression::None,
                stored_size: None,
                meta: meta.as_object().cloned().unwrap_or_default(),
            });
        }
        let mut scripts = vec![];
        for (name, state, body) in &self.scripts {
            let d = describe(body.as_bytes(), Compression::None, None).unwrap();
            stored.insert(format!("scripts/{name}"), body.as_bytes().to_vec());
            scripts.push(Script {
                name: (*name).into(),
                state: *state,
                size: d.size,
                sha256: d.sha256,
            });
        }
        let manifest = Manifest {
            format: FORMAT.into(),
            name: self.name.into(),
            version: self.version.into(),
            compatible: self.compatible.iter().map(|s| (*s).into()).collect(),
            depends: self.depends.clone(),
            provides: BTreeMap::new(),
            payload_type: self.payload_type.into(),
            payloads,
            scripts,
            meta: self.meta.as_object().cloned().unwrap_or_default(),
            created_at: None,
        };
        let mut sigs = Signatures::default();
        if let Some(k) = signer {
            sigs.add(k, &manifest.to_bytes());
        }
        write(Vec::new(), &manifest, &sigs, |path| {
            Ok(Box::new(io::Cursor::new(stored[path].clone())))
        })
        .unwrap()
    }
}

const OLD_IMAGE: &[u8] = b"the old root file system, slot a";

/// The new image: 3 MiB, so that `slot-half-written` falls between two writes.
fn new_image() -> Vec<u8> {
    (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

struct Device {
    dir: tempfile::TempDir,
    config: PathBuf,
    data: PathBuf,
    target: PathBuf,
    slots: BTreeMap<String, PathBuf>,
    env: PathBuf,
    cmdline: PathBuf,
}

impl Device {
    /// A device on slot a; `update_extra` goes into `[update]`.
    fn new(update_extra: &str) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let data = p.join("data");
        let target = p.join("opt");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(p.join("release.pem"), key().public_key().to_pem().unwrap()).unwrap();
        let slots = BTreeMap::from([
            ("a".to_string(), p.join("slot-a")),
            ("b".to_string(), p.join("slot-b")),
        ]);
        std::fs::write(&slots["a"], OLD_IMAGE).unwrap();
        std::fs::write(&slots["b"], b"whatever was in b").unwrap();
        let env = p.join("bootenv");
        std::fs::write(
            &env,
            "boot_part=a\nupgrade_available=0\nbootcount=0\nbootlimit=3\n",
        )
        .unwrap();
        let cmdline = p.join("cmdline");
        let config = p.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                r#"server_url = "https://localhost:1"
ca_file = "{p}/ca.pem"
data_dir = "{data}"
device_type = "gw"

[update]
trusted_keys = ["{p}/release.pem"]
reboot_command = ["/bin/true"]
verify_connection = false
{update_extra}

[update.rootfs]
slots = {{ a = "{a}", b = "{b}" }}
bootenv = "{env}"
cmdline = "{cmdline}"
"#,
                p = p.display(),
                data = data.display(),
                a = slots["a"].display(),
                b = slots["b"].display(),
                env = env.display(),
                cmdline = cmdline.display(),
            ),
        )
        .unwrap();
        let d = Device {
            dir,
            config,
            data,
            target,
            slots,
            env,
            cmdline,
        };
        assert_eq!(d.boot(), "a");
        d
    }

    fn agent(&self, args: &[&str], crash_at: Option<&str>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tender-agent"));
        cmd.args(args)
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .env_remove("TENDER_AGENT_CRASH_AT");
        if let Some(point) = crash_at {
            cmd.env("TENDER_AGENT_CRASH_AT", point);
        }
        cmd.output().unwrap()
    }

    fn install(&self, artifact: &[u8], crash_at: Option<&str>) -> Output {
        let path = self.dir.path().join("artifact.tender");
        std::fs::write(&path, artifact).unwrap();
        self.agent(&["install", path.to_str().unwrap()], crash_at)
    }

    fn resume(&self, crash_at: Option<&str>) -> Output {
        self.agent(&["update-resume"], crash_at)
    }

    /// What the boot loader does at power-on.
    fn boot(&self) -> String {
        bootenv::simulate_boot(&self.env, &self.slots, &self.cmdline).unwrap()
    }

    fn bootenv(&self) -> BootEnv {
        BootEnv::read(&self.env).unwrap()
    }

    fn journal(&self) -> Option<Value> {
        std::fs::read(self.data.join("update.json"))
            .ok()
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    fn state(&self) -> String {
        self.journal()
            .map(|j| j["state"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    fn installed(&self) -> Value {
        std::fs::read(self.data.join("installed.json"))
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap_or(Value::Null)
    }

    /// Every file under the target directory, with content and mode.
    fn target_files(&self) -> BTreeMap<String, (Vec<u8>, u32)> {
        std::fs::read_dir(&self.target)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let mode = e.metadata().unwrap().permissions().mode() & 0o7777;
                (
                    e.file_name().to_string_lossy().into_owned(),
                    (std::fs::read(e.path()).unwrap(), mode),
                )
            })
            .collect()
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn file_artifact(d: &Device, version: &'static str, after_install: &str) -> Vec<u8> {
    let mut a = Art::new("app", version, "file");
    a.meta = json!({"dest_dir": d.target.to_str().unwrap()});
    a.payloads = vec![
        (
            "app.conf",
            format!("new {version}\n").into_bytes(),
            json!({"mode": "0600"}),
        ),
        (
            "tool",
            b"#!/bin/sh\necho tool\n".to_vec(),
            json!({"mode": "0755"}),
        ),
    ];
    a.scripts = vec![
        (
            "check",
            ScriptState::AfterInstall,
            format!("#!/bin/sh\n{after_install}\n"),
        ),
        (
            "note",
            ScriptState::AfterCommit,
            format!(
                "#!/bin/sh\necho \"$TENDER_UPDATE_NAME $TENDER_UPDATE_VERSION\" > {}/committed\n",
                d.dir.path().display()
            ),
        ),
    ];
    a.build(Some(&key()))
}

#[test]
fn the_file_module_installs_and_rolls_back_on_a_failing_script() {
    let d = Device::new("");
    std::fs::write(d.target.join("app.conf"), "old\n").unwrap();
    std::fs::set_permissions(
        d.target.join("app.conf"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let before = d.target_files();

    // after_install fails: everything is put back, the new file removed.
    let out = d.install(
        &file_artifact(&d, "1.0", "echo not today >&2; exit 3"),
        None,
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("rolled back"), "{}", text(&out));
    assert!(text(&out).contains("not today"), "{}", text(&out));
    assert_eq!(d.target_files(), before, "no file changed, no backup left");
    assert_eq!(d.state(), "rolled_back");
    assert_eq!(d.installed(), Value::Null);
    assert!(
        !d.data.join("update").exists(),
        "the work directory is removed"
    );

    // A good one.
    let out = d.install(&file_artifact(&d, "1.0", "true"), None);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for status in [
        "downloading",
        "downloaded",
        "installing",
        "verifying",
        "succeeded",
    ] {
        assert!(stdout.contains(status), "{status}: {stdout}");
    }
    let files = d.target_files();
    assert_eq!(files.len(), 2, "{:?}", files.keys());
    assert_eq!(files["app.conf"], (b"new 1.0\n".to_vec(), 0o600));
    assert_eq!(files["tool"].1, 0o755);
    assert_eq!(d.state(), "succeeded");
    assert_eq!(d.installed()["provides"]["app.version"], "1.0");
    assert_eq!(
        std::fs::read_to_string(d.dir.path().join("committed")).unwrap(),
        "app 1.0\n"
    );
    let status = d.agent(&["update-status"], None);
    assert!(String::from_utf8_lossy(&status.stdout).contains("state:      succeeded"));

    // The same version again is skipped; an older one refused; nothing changes.
    let out = d.install(&file_artifact(&d, "1.0", "true"), None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("installed already"), "{}", text(&out));
    let out = d.install(&file_artifact(&d, "0.9", "true"), None);
    assert!(!out.status.success());
    assert!(text(&out).contains("older"), "{}", text(&out));
    assert_eq!(d.target_files(), files);
    assert_eq!(d.state(), "succeeded");
}

#[test]
fn refused_artifacts_change_nothing() {
    let d = Device::new("");
    std::fs::write(d.target.join("app.conf"), "old\n").unwrap();
    let good = file_artifact(&d, "1.0", "true");

    let mut tampered = good.clone();
    let at = tampered.windows(8).position(|w| w == b"new 1.0\n").unwrap();
    tampered[at] ^= 1;
    let unsigned = {
        let mut a = Art::new("app", "1.0", "file");
        a.meta = json!({"dest_dir": d.target.to_str().unwrap()});
        a.payloads = vec![("app.conf", b"evil\n".to_vec(), json!({}))];
        a
    };
    let foreign = unsigned.build(Some(&SigningKey::from_seed(&[9; 32])));
    let mut incompatible = Art::new("app", "1.0", "file");
    incompatible.compatible = vec!["other-board"];
    incompatible.meta = unsigned.meta.clone();
    incompatible.payloads = vec![("app.conf", b"evil\n".to_vec(), json!({}))];
    let mut depends = Art::new("app", "1.0", "file");
    depends.depends = BTreeMap::from([("rootfs.version".to_string(), "7".to_string())]);
    depends.meta = unsigned.meta.clone();
    depends.payloads = vec![("app.conf", b"evil\n".to_vec(), json!({}))];
    let mut escape = Art::new("app", "1.0", "file");
    escape.payloads = vec![("x", b"evil\n".to_vec(), json!({"path": "/tmp/../etc/x"}))];
    let mut no_module = Art::new("app", "1.0", "no-such-module");
    no_module.payloads = vec![("x", b"evil\n".to_vec(), json!({}))];

    let before = d.target_files();
    let cases: [(&str, Vec<u8>, &str); 7] = [
        ("tampered", tampered, "altered"),
        ("unsigned", unsigned.build(None), "not signed"),
        ("foreign key", foreign, "unknown keys"),
        (
            "incompatible",
            incompatible.build(Some(&key())),
            "not for this device",
        ),
        (
            "unmet depends",
            depends.build(Some(&key())),
            "rootfs.version",
        ),
        ("path escape", escape.build(Some(&key())), ".."),
        (
            "no module",
            no_module.build(Some(&key())),
            "no update module",
        ),
    ];
    for (what, artifact, says) in cases {
        let out = d.install(&artifact, None);
        assert!(!out.status.success(), "{what}: {}", text(&out));
        assert!(text(&out).contains(says), "{what}: {}", text(&out));
        assert_eq!(d.target_files(), before, "{what}");
        assert_eq!(d.installed(), Value::Null, "{what}");
        assert!(
            !d.data.join("update").exists(),
            "{what}: work directory left"
        );
        assert!(
            d.state().is_empty() || d.state() == "failed",
            "{what}: {}",
            d.state()
        );
    }
    // Nothing was left in progress: a good artifact installs.
    let out = d.install(&good, None);
    assert!(out.status.success(), "{}", text(&out));
}

fn rootfs_artifact(version: &'static str) -> Vec<u8> {
    let mut a = Art::new("rootfs", version, "rootfs-ab");
    a.payloads = vec![("rootfs.img", new_image(), json!({}))];
    a.scripts = vec![(
        "back",
        ScriptState::AfterRollback,
        "#!/bin/sh\necho rolled back from \"$TENDER_UPDATE_TO_SLOT\" >&2\n".to_string(),
    )];
    a.build(Some(&key()))
}

/// The device runs a complete image: the old one on a, or the whole new one on b.
fn assert_runs_a_whole_image(d: &Device, booted: &str, context: &str) {
    let content = std::fs::read(&d.slots[booted]).unwrap();
    match booted {
        "a" => assert_eq!(content, OLD_IMAGE, "{context}: slot a changed"),
        _ => assert!(content == new_image(), "{context}: booted a partial slot b"),
    }
}

/// The journal never says committed unless the boot environment is committed on b.
fn assert_consistent(d: &Device, context: &str) {
    let env = d.bootenv();
    if d.state() == "succeeded" {
        assert_eq!(env.boot_part(), Some("b"), "{context}");
        assert!(!env.upgrade_available(), "{context}");
    }
}

#[test]
fn rootfs_ab_healthy_update_commits_the_new_slot() {
    let d = Device::new("");
    let out = d.install(&rootfs_artifact("2"), None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("after the reboot"), "{}", text(&out));
    assert_eq!(d.state(), "rebooting");
    let env = d.bootenv();
    assert_eq!(
        (
            env.boot_part(),
            env.upgrade_available(),
            env.bootcount(),
            env.bootlimit()
        ),
        (Some("b"), true, 0, 3)
    );
    assert_eq!(std::fs::read(&d.slots["a"]).unwrap(), OLD_IMAGE);

    // A second install waits for this one.
    let out = d.install(&rootfs_artifact("3"), None);
    assert!(text(&out).contains("in progress"), "{}", text(&out));

    assert_eq!(d.boot(), "b");
    let out = d.resume(None);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(d.state(), "succeeded");
    let env = d.bootenv();
    assert_eq!(
        (env.boot_part(), env.upgrade_available(), env.bootcount()),
        (Some("b"), false, 0)
    );
    assert_runs_a_whole_image(&d, "b", "after commit");
    assert_eq!(d.installed()["provides"]["rootfs.version"], "2");
    // And it stays there.
    assert_eq!(d.boot(), "b");
    let out = d.resume(None);
    assert!(
        text(&out).contains("no update in progress"),
        "{}",
        text(&out)
    );
}

#[test]
fn rootfs_ab_failing_health_check_rolls_back_to_the_old_slot() {
    let d = Device::new(r#"health_check = ["/bin/sh", "-c", "echo unwell >&2; exit 1"]"#);
    let out = d.install(&rootfs_artifact("2"), None);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(d.boot(), "b");
    // Verify fails: the environment goes back to a, and a reboot is asked for.
    let out = d.resume(None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("unwell"), "{}", text(&out));
    assert_eq!(d.state(), "rollback_rebooting");
    assert_eq!(d.bootenv().boot_part(), Some("a"));
    assert_eq!(d.boot(), "a");
    let out = d.resume(None);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("after_rollback script back succeeded"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("rolled back: the health check failed"),
        "{}",
        text(&out)
    );
    assert_eq!(d.state(), "rolled_back");
    assert_runs_a_whole_image(&d, "a", "after rollback");
    assert_eq!(d.installed(), Value::Null);
}

#[test]
fn rootfs_ab_the_boot_loader_falls_back_when_the_agent_never_commits() {
    let d = Device::new("");
    let out = d.install(&rootfs_artifact("2"), None);
    assert!(out.status.success(), "{}", text(&out));
    // The new system dies before the agent verifies, every time.
    let mut booted = d.boot();
    let mut boots = 1;
    while booted == "b" {
        let out = d.resume(Some("verifying"));
        assert!(!out.status.success());
        booted = d.boot();
        boots += 1;
        assert!(boots <= 10, "the boot loader never fell back");
    }
    let out = d.resume(None);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(d.state(), "rolled_back");
    assert_runs_a_whole_image(&d, "a", "after fallback");
    let env = d.bootenv();
    assert_eq!(
        (env.boot_part(), env.upgrade_available()),
        (Some("a"), false)
    );
}

/// Kill the agent at every point of the A/B flow, then power-cycle (the boot loader's step)
/// and start it again until the update is over: the device always boots a whole image, the
/// journal never claims a commit that is not, and it ends committed on b or back on a.
#[test]
fn rootfs_ab_survives_a_kill_at_every_state() {
    // (crash point, the health check fails, which run crashes: install or the first resume)
    let points = [
        ("downloading", false, "install"),
        ("slot-half-written", false, "install"),
        ("installing", false, "install"),
        ("boot-switched", false, "install"),
        ("rebooting", false, "install"),
        ("verifying", false, "resume"),
        ("committing", false, "resume"),
        ("succeeded", false, "resume"),
        ("rolling_back", true, "resume"),
        ("rollback_rebooting", true, "resume"),
        ("rolled_back", true, "resume"),
    ];
    for (point, unhealthy, run) in points {
        let extra = if unhealthy {
            r#"health_check = ["/bin/sh", "-c", "exit 1"]"#
        } else {
            ""
        };
        let d = Device::new(extra);
        let crash = (run == "install").then_some(point);
        let out = d.install(&rootfs_artifact("2"), crash);
        if run == "install" {
            assert!(
                !out.status.success(),
                "{point}: install did not crash: {}",
                text(&out)
            );
            assert!(
                text(&out).contains(&format!("crashing at {point}")),
                "{point}: {}",
                text(&out)
            );
        } else {
            assert!(out.status.success(), "{point}: {}", text(&out));
        }
        assert_consistent(&d, point);
        let mut crash_next = (run == "resume").then_some(point);
        let mut boots = 0;
        loop {
            let booted = d.boot();
            boots += 1;
            assert!(
                boots <= 8,
                "{point}: no end after {boots} boots ({})",
                d.state()
            );
            assert_runs_a_whole_image(&d, &booted, point);
            let out = d.resume(crash_next.take());
            assert_consistent(&d, point);
            let state = d.state();
            if ["succeeded", "rolled_back", "failed"].contains(&state.as_str())
                && !text(&out).contains("crashing at")
            {
                break;
            }
        }
        // One more power cycle: stable, on a whole image.
        let booted = d.boot();
        assert_runs_a_whole_image(&d, &booted, point);
        let out = d.resume(None);
        assert!(
            text(&out).contains("no update in progress"),
            "{point}: {}",
            text(&out)
        );
        let env = d.bootenv();
        assert!(!env.upgrade_available(), "{point}: left on trial");
        let state = d.state();
        match state.as_str() {
            "succeeded" => {
                assert_eq!(booted, "b", "{point}");
                assert_eq!(d.installed()["provides"]["rootfs.version"], "2", "{point}");
                assert!(!unhealthy, "{point}: an unhealthy update was committed");
            }
            "rolled_back" | "failed" => {
                assert_eq!(booted, "a", "{point}");
                assert_eq!(env.boot_part(), Some("a"), "{point}");
                assert_eq!(d.installed(), Value::Null, "{point}");
            }
            other => panic!("{point}: ended {other}"),
        }
        eprintln!("{point}: ended {state} on slot {booted}");
    }
}

/// An external module is called per state with the work directory; a failing verify rolls it
/// back. A `script` payload runs once.
#[test]
fn external_modules_and_the_script_module() {
    let d = Device::new("");
    let modules = d.dir.path().join("modules");
    std::fs::create_dir_all(&modules).unwrap();
    // Rewrite the configuration with a modules directory.
    let config = std::fs::read_to_string(&d.config).unwrap().replace(
        "verify_connection = false",
        &format!(
            "verify_connection = false\nmodules_dir = \"{}\"",
            modules.display()
        ),
    );
    std::fs::write(&d.config, config).unwrap();
    let calls = d.dir.path().join("calls");
    let module = modules.join("app-bundle");
    std::fs::write(
        &module,
        format!(
            "#!/bin/sh\necho \"$1 $TENDER_UPDATE_VERSION $(cat \"$2/files/bundle\")\" >> {calls}\n\
             case $1 in\n  NeedsReboot) echo no ;;\n  SupportsRollback) echo yes ;;\n\
             Verify) [ \"$TENDER_UPDATE_VERSION\" != bad ] ;;\nesac\n",
            calls = calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&module, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bundle = |version: &'static str| {
        let mut a = Art::new("bundle", version, "app-bundle");
        a.payloads = vec![("bundle", b"B".to_vec(), json!({}))];
        a.build(Some(&key()))
    };
    let out = d.install(&bundle("1"), None);
    assert!(out.status.success(), "{}", text(&out));
    let states = |expected: &[&str]| {
        let got: Vec<String> = std::fs::read_to_string(&calls)
            .unwrap()
            .lines()
            .map(|l| l.split(' ').next().unwrap().to_owned())
            .collect();
        assert_eq!(got, expected);
        std::fs::remove_file(&calls).unwrap();
    };
    states(&[
        "SupportsRollback",
        "Download",
        "Install",
        "NeedsReboot",
        "Verify",
        "Commit",
        "Cleanup",
    ]);
    let out = d.install(&bundle("bad"), None);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(d.state(), "rolled_back");
    states(&[
        "SupportsRollback",
        "Download",
        "Install",
        "NeedsReboot",
        "Verify",
        "Rollback",
        "NeedsReboot",
        "Cleanup",
    ]);

    let marker = d.dir.path().join("script-ran");
    let mut s = Art::new("fix-perms", "1", "script");
    s.payloads = vec![(
        "run.sh",
        format!("#!/bin/sh\necho ran >> {}\n", marker.display()).into_bytes(),
        json!({}),
    )];
    let out = d.install(&s.build(Some(&key())), None);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");
    let mut f = Art::new("fix-perms", "2", "script");
    f.payloads = vec![("run.sh", b"#!/bin/sh\nexit 4\n".to_vec(), json!({}))];
    let out = d.install(&f.build(Some(&key())), None);
    assert!(text(&out).contains("exit status 4"), "{}", text(&out));
    assert_eq!(d.state(), "failed");
    assert_eq!(d.installed()["provides"]["fix-perms.version"], "1");
}
