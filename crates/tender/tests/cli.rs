//! The `tender` binary as an operator uses it: the server started as a child process on an
//! ephemeral port, and the CLI run against it. Waits are on the server's own output lines and on
//! process exit, each bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use tender_store::conformance::PgTestDatabase;

const BIN: &str = env!("CARGO_BIN_EXE_tender");
const WAIT: Duration = Duration::from_secs(60);

/// A `tender` command with a private profile file and no ambient server settings.
fn tender(profile_dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("TENDER_CLI_CONFIG", profile_dir.join("cli.toml"))
        .env_remove("TENDER_SERVER")
        .env_remove("TENDER_TOKEN")
        .env_remove("TENDER_PROFILE")
        .env_remove("TENDER_CONFIG")
        .env_remove("TENDER_DATABASE_URL")
        .env_remove("TENDER_DATA_DIR")
        .env_remove("TENDER_HTTP_LISTEN")
        .stdin(Stdio::null());
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run tender")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The one place these tests wait: until `check` gives a value, bounded by [`WAIT`]. Other
/// processes (the server, devices, the simulator) show progress only through the API, so the
/// condition is re-checked every 100 ms; nothing asserts on time.
fn poll_until<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    poll_until_within(what, WAIT, check)
}

/// [`poll_until`] with another bound (large fleets take longer to come up).
fn poll_until_within<T>(what: &str, bound: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct ServerProc {
    child: Child,
    base: String,
    /// host:port of the HTTPS device API.
    device_addr: String,
    /// host:port of the MQTT gateway.
    mqtt_addr: String,
    token: Option<String>,
    _lines: Receiver<String>,
}

/// Starts `tender server` and reads its banner up to "Press Ctrl-C to stop.".
fn start_server(profile_dir: &Path, data_dir: &Path, extra: &[&str]) -> ServerProc {
    let mut child = tender(profile_dir)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--device-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut base = None;
    let mut device_addr = None;
    let mut mqtt_addr = None;
    let mut token = None;
    loop {
        let line = rx.recv_timeout(WAIT).expect("server banner");
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("API") {
            let url = rest.split_whitespace().next().unwrap();
            base = Some(url.trim_end_matches("/api/v1").to_owned());
        }
        if let Some(rest) = t.strip_prefix("devices") {
            let url = rest.split_whitespace().next().unwrap();
            device_addr = Some(
                url.trim_start_matches("https://")
                    .trim_end_matches("/device/v1")
                    .to_owned(),
            );
        }
        if let Some(rest) = t.strip_prefix("mqtt") {
            let url = rest.split_whitespace().next().unwrap();
            mqtt_addr = Some(url.trim_start_matches("mqtts://").to_owned());
        }
        if t.starts_with("tnd_") {
            token = Some(t.to_owned());
        }
        if t == "Press Ctrl-C to stop." {
            break;
        }
    }
    ServerProc {
        child,
        base: base.expect("banner names the API address"),
        device_addr: device_addr.expect("banner names the device API address"),
        mqtt_addr: mqtt_addr.expect("banner names the MQTT address"),
        token,
        _lines: rx,
    }
}

impl ServerProc {
    /// SIGTERM, then wait (bounded) for a clean exit.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "server exits after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "graceful shutdown exits 0, got {status}");
    }
}

/// A child process killed when dropped: a failing test leaves no simulator behind.
struct Reaped(Child);

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A test that ends (or fails) without `stop` leaves no server behind.
impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn help_shows_the_command_tree() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(tender(dir.path()).arg("--help"));
    assert!(o.status.success());
    let text = stdout(&o);
    for cmd in ["server", "admin-token", "login", "whoami", "devices"] {
        assert!(text.contains(cmd), "--help lists {cmd}:\n{text}");
    }
    let o = run(tender(dir.path()).args(["server", "--help"]));
    let text = stdout(&o);
    for flag in [
        "--config",
        "--data-dir",
        "--listen",
        "--device-listen",
        "--mqtt-listen",
        "--database-url",
        "--log-format",
        "--log-level",
    ] {
        assert!(text.contains(flag), "server --help lists {flag}:\n{text}");
    }
}

#[test]
fn the_tour_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_server(dir.path(), &data, &[]);
    let token = server
        .token
        .clone()
        .expect("first start prints the admin token");
    assert!(data.join("tender.db").exists());
    assert!(data.join("ca/ca.crt").exists());
    let mode = std::fs::metadata(data.join("ca/ca.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // Login saves a profile (0600) that later commands use.
    let o = run(tender(dir.path()).args(["login", "--server", &server.base, "--token", &token]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("as admin"), "{}", stdout(&o));
    let mode = std::fs::metadata(dir.path().join("cli.toml"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    let o = run(tender(dir.path()).arg("whoami"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("admin"));

    let o = run(tender(dir.path()).args(["devices", "list"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("ID"), "{}", stdout(&o));
    assert!(stderr(&o).contains("0 devices"));

    let o = run(tender(dir.path()).args(["devices", "list", "--all", "-o", "json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v, serde_json::json!({"items": [], "next_cursor": null}));

    // A device that does not exist, and a bad limit: clear errors, exit 1.
    let o =
        run(tender(dir.path()).args(["devices", "show", "0192f1c4-7b5e-7a1e-9c1d-2f8e4b6a0c3d"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("404"), "{}", stderr(&o));
    let o = run(tender(dir.path()).args(["devices", "list", "--limit", "5000"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("limit must be between 1 and 1000"),
        "{}",
        stderr(&o)
    );

    // Recovery: a fresh admin token from the data directory and database works.
    let o = run(tender(dir.path())
        .args(["admin-token", "--data-dir"])
        .arg(&data));
    assert!(o.status.success(), "{}", stderr(&o));
    let recovered = stdout(&o).trim().to_owned();
    assert!(recovered.starts_with("tnd_") && recovered != token);
    let o =
        run(tender(dir.path()).args(["whoami", "--server", &server.base, "--token", &recovered]));
    assert!(o.status.success(), "{}", stderr(&o));
    server.stop();

    // A restart keeps everything and does not print a token again.
    let again = start_server(dir.path(), &data, &[]);
    assert!(
        again.token.is_none(),
        "the admin token is printed on the first start only"
    );
    let o = run(tender(dir.path()).args(["whoami", "--server", &again.base]));
    assert!(
        o.status.success(),
        "the saved token still works: {}",
        stderr(&o)
    );
    again.stop();
}

#[test]
fn the_server_runs_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let db = PgTestDatabase::create_blocking();
    let server = start_server(
        dir.path(),
        &dir.path().join("data"),
        &["--database-url", &db.url],
    );
    let token = server.token.clone().unwrap();
    assert!(
        !dir.path().join("data/tender.db").exists(),
        "no SQLite file when PostgreSQL is used"
    );
    let o = run(tender(dir.path()).args([
        "devices",
        "list",
        "--server",
        &server.base,
        "--token",
        &token,
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    server.stop();
    let again = start_server(
        dir.path(),
        &dir.path().join("data"),
        &["--database-url", &db.url],
    );
    assert!(again.token.is_none());
    again.stop();
}

/// Runs `tender server` expecting it to fail at start-up; returns its stderr.
fn failing_start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = tender(dir);
    cmd.args([
        "server",
        "--device-listen",
        "127.0.0.1:0",
        "--mqtt-listen",
        "127.0.0.1:0",
    ])
    .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = run(&mut cmd);
    assert!(!o.status.success(), "start-up must fail: {}", stdout(&o));
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn a_bad_config_file_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tender.toml");
    std::fs::write(&cfg, "[http]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n").unwrap();
    let data = dir.path().join("data");
    let err = failing_start(
        dir.path(),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert!(err.contains("lisen"), "{err}");

    std::fs::write(&cfg, "[http\n").unwrap();
    let err = failing_start(dir.path(), &["--config", cfg.to_str().unwrap()], &[]);
    assert!(err.contains("tender.toml"), "{err}");

    let err = failing_start(dir.path(), &["--config", "/nonexistent/tender.toml"], &[]);
    assert!(err.contains("cannot read config file"), "{err}");

    let err = failing_start(
        dir.path(),
        &["--data-dir", data.to_str().unwrap()],
        &[("TENDER_HTTP_LISTEN", "nowhere")],
    );
    assert!(err.contains("TENDER_HTTP_LISTEN"), "{err}");
}

#[test]
fn a_port_in_use_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = dir.path().join("data");
    let err = failing_start(
        dir.path(),
        &["--listen", &addr, "--data-dir", data.to_str().unwrap()],
        &[],
    );
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

#[test]
fn an_unreachable_postgres_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let err = failing_start(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--database-url",
            "postgres://tender:hunter2@127.0.0.1:1/tender",
        ],
        &[("TENDER_DATABASE_CONNECT_TIMEOUT_SECS", "3")],
    );
    assert!(err.contains("cannot connect to PostgreSQL"), "{err}");
    assert!(!err.contains("hunter2"), "passwords are redacted: {err}");
}

#[test]
fn an_unusable_data_directory_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let data: PathBuf = file.join("data");
    let err = failing_start(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert!(err.contains("cannot create data directory"), "{err}");
}

#[test]
fn the_cli_explains_what_is_missing_or_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(tender(dir.path()).args(["devices", "list"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("tender login"), "{}", stderr(&o));

    let o = run(tender(dir.path()).args(["whoami", "--profile", "prod"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no profile named \"prod\""),
        "{}",
        stderr(&o)
    );

    let o =
        run(tender(dir.path()).args(["whoami", "--server", "http://127.0.0.1:1", "--token", "x"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot reach the Tender server"),
        "{}",
        stderr(&o)
    );

    let o = run(tender(dir.path()).args(["whoami", "--server", "not a url", "--token", "x"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("invalid server URL"), "{}", stderr(&o));

    let data = dir.path().join("data");
    let server = start_server(dir.path(), &data, &[]);
    let o =
        run(tender(dir.path()).args(["login", "--server", &server.base, "--token", "tnd_wrong"]));
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("401") && err.contains("hint:"), "{err}");
    assert!(
        !dir.path().join("cli.toml").exists(),
        "a refused login saves nothing"
    );
    server.stop();
}

/// The operator's CLI and a device that follows docs/device-protocol.md with `openssl`, `curl`
/// and Mosquitto's clients only: it enrolls, publishes telemetry over MQTT, shows online while
/// subscribed, and decommissioning cuts its session at once.
/// Runs `cmd` with bash in `dir`; its stdout (it must succeed).
fn shell(dir: &Path, cmd: &str) -> String {
    let o = Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{cmd}: {}", stderr(&o));
    stdout(&o)
}

/// A device made with openssl and enrolled with curl, as docs/device-protocol.md shows: its
/// key, certificate and the CA certificate end up in `dev` (`device.key`, `device.crt`,
/// `ca.crt`). Returns the server's answer.
fn enroll_with_openssl(
    dev: &Path,
    data: &Path,
    server: &ServerProc,
    enrollment_token: &str,
    name: &str,
) -> serde_json::Value {
    std::fs::create_dir_all(dev).unwrap();
    shell(
        dev,
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out device.key 2>/dev/null && openssl req -new -key device.key -subj /CN=anything -out device.csr",
    );
    std::fs::copy(data.join("ca/ca.crt"), dev.join("ca.crt")).unwrap();
    let csr = std::fs::read_to_string(dev.join("device.csr")).unwrap();
    let body = serde_json::json!({"csr": csr, "token": enrollment_token, "name": name});
    std::fs::write(dev.join("enroll.json"), body.to_string()).unwrap();
    let answer = shell(
        dev,
        &format!(
            "curl -sS --fail-with-body --cacert ca.crt -X POST https://{}/device/v1/enroll -H 'content-type: application/json' --data @enroll.json",
            server.device_addr
        ),
    );
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["status"], "accepted", "{answer}");
    std::fs::write(
        dev.join("device.crt"),
        answer["certificate"].as_str().unwrap(),
    )
    .unwrap();
    answer
}

#[test]
fn a_device_enrolls_with_openssl_and_curl() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_server(dir.path(), &data, &[]);
    let token = server.token.clone().unwrap();
    let op = |args: &[&str]| {
        let o =
            run(tender(dir.path())
                .args(args)
                .args(["--server", &server.base, "--token", &token]));
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        stdout(&o)
    };
    let enrollment_token = op(&[
        "enrollment-tokens",
        "create",
        "--name",
        "line 3",
        "--max-uses",
        "1",
        "--expires-in",
        "1h",
    ])
    .trim()
    .to_owned();
    assert!(enrollment_token.starts_with("tne_"));
    assert!(op(&["enrollment-tokens", "list"]).contains("line 3"));

    let dev = dir.path().join("device");
    let answer = enroll_with_openssl(&dev, &data, &server, &enrollment_token, "kiosk-17");
    let sh = |cmd: &str| shell(&dev, cmd);
    let addr = server.device_addr.clone();
    let me = sh(&format!(
        "curl -sS --fail-with-body --cacert ca.crt --cert device.crt --key device.key https://{addr}/device/v1/whoami"
    ));
    let me: serde_json::Value = serde_json::from_str(&me).unwrap();
    assert_eq!(me["device_id"], answer["device_id"]);

    // MQTT with the same identity.
    let id = answer["device_id"].as_str().unwrap();
    let (host, port) = server.mqtt_addr.rsplit_once(':').unwrap();
    let mqtt = format!(
        "-V mqttv5 -h localhost -p {port} --cafile ca.crt --cert device.crt --key device.key -i {id}"
    );
    assert_eq!(host, "127.0.0.1");
    sh(&format!(
        "mosquitto_pub {mqtt} -q 1 -t tender/v1/{id}/telemetry -m '{{\"temperature\": 21.5}}'"
    ));
    let sub = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "exec mosquitto_sub {mqtt} -q 1 -t 'tender/v1/{id}/#' -v"
        ))
        .current_dir(&dev)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The operator sees it online (once the subscriber's CONNECT is through).
    let list = poll_until("the device online", || {
        let list = op(&["devices", "list"]);
        list.contains("online").then_some(list)
    });
    assert!(
        list.contains(id)
            && list.contains("kiosk-17")
            && list.contains("accepted")
            && list.contains("online"),
        "{list}"
    );
    assert!(op(&["devices", "connections", id]).contains("mqtt/5"));
    let telemetry = op(&["devices", "telemetry", id]);
    assert!(
        telemetry.contains("temperature") && telemetry.contains("21.5"),
        "{telemetry}"
    );
    // Decommissioning cuts the live session at once and locks the device out.
    op(&["devices", "decommission", id]);
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(sub.wait_with_output());
    });
    // mosquitto_sub ends when the server disconnects it (reason 0x87).
    rx.recv_timeout(WAIT)
        .expect("mosquitto_sub is disconnected")
        .unwrap();
    assert!(op(&["devices", "connections", id]).contains("revoked"));
    let code = sh(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' --cacert ca.crt --cert device.crt --key device.key https://{addr}/device/v1/whoami"
    ));
    assert_eq!(code.trim(), "403");
    // The token was single-use.
    let o = run(tender(dir.path()).args([
        "enrollment-tokens",
        "list",
        "-o",
        "json",
        "--server",
        &server.base,
        "--token",
        &token,
    ]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["items"][0]["usable"], false);
    server.stop();
}

/// `tender sim`: the devices enroll with a token it creates through the operator login, come
/// online with varied inventory and send telemetry; a second run reuses their identities.
#[test]
fn sim_brings_a_fleet_online_with_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_server(dir.path(), &data, &[]);
    let token = server.token.clone().unwrap();
    let o = run(tender(dir.path()).args(["login", "--server", &server.base, "--token", &token]));
    assert!(o.status.success(), "{}", stderr(&o));
    let sim_dir = dir.path().join("sim");
    let sim = |extra: &[&str]| {
        tender(dir.path())
            .args([
                "sim",
                "--devices",
                "20",
                "--interval-ms",
                "200",
                "--ramp",
                "40",
            ])
            .args(["--report-secs", "1", "--data-dir"])
            .arg(&sim_dir)
            .arg("--ca")
            .arg(data.join("ca/ca.crt"))
            .args(["--server-url", &format!("https://{}", server.device_addr)])
            .args(["--mqtt-url", &server.mqtt_addr])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Reaped)
            .unwrap()
    };
    let list = || -> Vec<serde_json::Value> {
        let o = run(tender(dir.path()).args(["devices", "list", "--all", "-o", "json"]));
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["items"].as_array().unwrap().clone()
    };
    let wait_online = |want: usize| {
        poll_until("the simulated devices online with inventory", || {
            let items = list();
            let ready = items
                .iter()
                .filter(|d| {
                    d["online"] == true && d["inventory"]["attributes"]["simulated"] == true
                })
                .count();
            (ready == want).then_some(items)
        })
    };
    let mut child = sim(&[]);
    let items = wait_online(20);
    assert_eq!(items.len(), 20);
    let types: std::collections::BTreeSet<&str> = items
        .iter()
        .filter_map(|d| d["inventory"]["attributes"]["device_type"].as_str())
        .collect();
    assert!(types.len() > 1, "varied device types: {types:?}");
    assert!(
        items
            .iter()
            .all(|d| d["name"].as_str().unwrap().starts_with("sim-")),
        "named sim-NNNNN"
    );
    // Telemetry arrives too.
    let id = items[0]["id"].as_str().unwrap();
    poll_until("telemetry from the simulated device", || {
        let o = run(tender(dir.path()).args(["devices", "telemetry", id, "-o", "json"]));
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout)
            .contains("temp.cpu.celsius")
            .then_some(())
    });
    // Search and a dynamic group over the fleet's inventory, from the CLI.
    let kiosks = items
        .iter()
        .filter(|d| d["inventory"]["attributes"]["device_type"] == "kiosk")
        .count();
    let o = run(tender(dir.path()).args([
        "devices",
        "list",
        "--all",
        "-o",
        "json",
        "-q",
        r#"inventory.device_type = "kiosk" and online = true"#,
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), kiosks);
    let o = run(tender(dir.path()).args([
        "groups",
        "create",
        "kiosks",
        "--query",
        r#"inventory.device_type = "kiosk""#,
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(tender(dir.path()).args(["groups", "show", "kiosks"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("{kiosks} device(s)")),
        "{}",
        stdout(&o)
    );
    // A tag puts a device into a static group's search; a bad query says where it is wrong.
    let first = items[0]["id"].as_str().unwrap();
    let o = run(tender(dir.path()).args(["devices", "tag", first, "rack=r1"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(tender(dir.path()).args(["groups", "create", "rack-r1"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(tender(dir.path()).args(["groups", "add", "rack-r1", first]));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(tender(dir.path()).args(["groups", "devices", "rack-r1", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["items"][0]["id"], first);
    let o = run(tender(dir.path()).args(["devices", "list", "-q", "tag.rack = "]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("at "), "{}", stderr(&o));

    // The table shows presence, OS and agent columns, and counts who is online.
    let o = run(tender(dir.path()).args(["devices", "list", "--all"]));
    assert!(stdout(&o).contains("OS"), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("20 devices (20 online)"),
        "{}",
        stderr(&o)
    );

    // Layered configuration and the twin from the CLI: a fleet default and a group value
    // reach the simulated agents, which acknowledge the version they got.
    let ok = |args: &[&str]| {
        let o = run(tender(dir.path()).args(args));
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        stdout(&o)
    };
    ok(&[
        "config",
        "set",
        "--fleet",
        "log.level=info",
        "ntp.server=pool.ntp.org",
    ]);
    ok(&[
        "config",
        "set",
        "--group",
        "kiosks",
        "app.mode=kiosk",
        "--priority",
        "5",
    ]);
    let kiosk = items
        .iter()
        .find(|d| d["inventory"]["attributes"]["device_type"] == "kiosk")
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .expect("the seeded fleet has kiosks");
    let twin = poll_until("the kiosk acknowledges its configuration", || {
        let t: serde_json::Value =
            serde_json::from_str(&ok(&["twin", "get", &kiosk, "-o", "json"])).unwrap();
        (t["reported"]["document"]["tender"]["desired_version"] == t["effective"]["version"]
            && t["effective"]["document"]["app"]["mode"] == "kiosk")
            .then_some(t)
    });
    assert_eq!(twin["effective"]["document"]["log"]["level"], "info");
    let shown = ok(&["config", "show", &kiosk]);
    assert!(
        shown.contains("/app/mode") && shown.contains("group kiosks"),
        "{shown}"
    );
    assert!(
        shown.contains("/log/level") && shown.contains("fleet"),
        "{shown}"
    );
    // The device layer wins; a writer holding a stale version gets a conflict, not a
    // silent overwrite.
    ok(&[
        "twin",
        "set",
        &kiosk,
        "log.level=debug",
        "--if-version",
        "0",
    ]);
    let o = run(tender(dir.path()).args([
        "twin",
        "set",
        &kiosk,
        "log.level=warn",
        "--if-version",
        "0",
    ]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("version"), "{}", stderr(&o));
    let table = ok(&["twin", "get", &kiosk]);
    assert!(
        table.contains("debug") && table.contains("device"),
        "{table}"
    );
    let diff = ok(&["twin", "diff", &kiosk]);
    assert!(diff.contains("/log/level"), "{diff}");
    let layers = ok(&["config", "list"]);
    assert!(
        layers.contains("group kiosks") && layers.contains("fleet"),
        "{layers}"
    );
    let shown = ok(&[
        "devices", "set", &kiosk, "--owner", "ops team", "--notes", "rack 3",
    ]);
    assert!(
        shown.contains("ops team") && shown.contains("rack 3"),
        "{shown}"
    );
    let o = run(tender(dir.path()).args(["devices", "set", &kiosk]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("nothing to change"), "{}", stderr(&o));
    let o = run(tender(dir.path()).args(["twin", "set", &kiosk, "oops"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("KEY=VALUE"), "{}", stderr(&o));

    child.kill().unwrap();
    child.wait().unwrap();

    // A second run: the same 20 devices (no new enrollments), online again.
    let mut child = sim(&[]);
    let items = wait_online(20);
    assert_eq!(items.len(), 20, "no device enrolled twice");
    child.kill().unwrap();
    child.wait().unwrap();
    server.stop();
}

/// The fleet for the group-command test: `TENDER_TEST_FLEET` devices (default 1000), of which
/// one in twenty is offline when the command is sent. Set it lower on a machine that cannot
/// hold 1000 simulated devices and their connections.
/// The tests that run a whole simulated fleet take turns: two fleets of 1,000 enrolling at once
/// on 2 cores make the servers answer 503 (retry later) rather than test anything.
fn one_fleet_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static FLEET: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that failed while holding it poisons nothing the others use.
    FLEET.lock().unwrap_or_else(|e| e.into_inner())
}

fn fleet_size() -> usize {
    std::env::var("TENDER_TEST_FLEET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// `tender command send` to a group of simulated devices, some offline: it completes for the
/// online ones, stays queued for the others, and completes for them once they come online.
#[test]
fn a_group_command_reaches_online_devices_now_and_offline_ones_later() {
    let _fleet = one_fleet_at_a_time();
    let total = fleet_size();
    let offline = total / 20;
    let online = total - offline;
    let bound = Duration::from_secs(60 + total as u64 / 2);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_server(dir.path(), &data, &[]);
    let token = server.token.clone().unwrap();
    let o = run(tender(dir.path()).args(["login", "--server", &server.base, "--token", &token]));
    assert!(o.status.success(), "{}", stderr(&o));
    let sim_dir = dir.path().join("sim");
    let sim = |n: usize| {
        tender(dir.path())
            .args(["sim", "--devices", &n.to_string(), "--interval-ms", "60000"])
            .args(["--ramp", "200", "--report-secs", "5", "--data-dir"])
            .arg(&sim_dir)
            .arg("--ca")
            .arg(data.join("ca/ca.crt"))
            .args(["--server-url", &format!("https://{}", server.device_addr)])
            .args(["--mqtt-url", &server.mqtt_addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Reaped)
            .unwrap()
    };
    let count_online = || -> usize {
        let o = run(tender(dir.path()).args([
            "devices",
            "list",
            "--all",
            "-o",
            "json",
            "-q",
            "online = true and inventory.simulated = true",
        ]));
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["items"].as_array().unwrap().len()
    };
    let wait_online = |want: usize| {
        poll_until_within(&format!("{want} simulated devices online"), bound, || {
            (count_online() == want).then_some(())
        })
    };
    // Every device enrolls once; then only some of them run.
    let mut child = sim(total);
    wait_online(total);
    child.kill().unwrap();
    child.wait().unwrap();
    wait_online(0);
    let mut child = sim(online);
    wait_online(online);

    let o = run(tender(dir.path()).args([
        "groups",
        "create",
        "fleet",
        "--query",
        "inventory.simulated = true",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(tender(dir.path()).args(["command", "send", "ping", "--group", "fleet"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_owned();
    let summary = || -> serde_json::Value {
        let o = run(tender(dir.path()).args(["command", "list", "-o", "json"]));
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id.as_str())
            .unwrap()["summary"]
            .clone()
    };
    let s = poll_until_within("the online devices' results", bound, || {
        let s = summary();
        (s["succeeded"] == online).then_some(s)
    });
    assert_eq!(s["total"], total);
    assert_eq!(s["queued"], offline, "{s}");
    assert_eq!(s["done"], false);

    // The rest come online (the same identities) and get the command.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = sim(total);
    let s = poll_until_within("every device's result", bound, || {
        let s = summary();
        (s["succeeded"] == total).then_some(s)
    });
    assert_eq!(s["done"], true, "{s}");
    assert_eq!(s["failed"], 0);

    // The per-device results carry ping's diagnostics.
    let o = run(tender(dir.path()).args(["command", "show", &id, "-o", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let devices = v["devices"].as_array().unwrap();
    assert_eq!(devices.len(), total);
    assert!(
        devices
            .iter()
            .all(|d| d["output"]["server_reachable"] == true)
    );

    // --wait follows a command to the end: progress on stderr, success exit.
    wait_online(total);
    let o = run(tender(dir.path()).args(["command", "send", "ping", "--group", "fleet", "--wait"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("succeeded {total}/{total}, queued 0, failed 0")),
        "{}",
        stderr(&o)
    );
    // A command the devices do not allow fails, and --wait says so with exit code 1.
    let first = devices[0]["device_id"].as_str().unwrap();
    let o = run(tender(dir.path()).args(["command", "send", "rm-rf", "--device", first, "--wait"]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("1 of 1 device(s) did not succeed"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).contains("not allowed"), "{}", stdout(&o));
    // Bad input is one clear line.
    let o = run(tender(dir.path()).args(["command", "send", "Bad Name", "--device", first]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("invalid command name"),
        "{}",
        stderr(&o)
    );
    let o = run(tender(dir.path()).args(["command", "send", "ping", "--group", "nope"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no group named"), "{}", stderr(&o));
    child.kill().unwrap();
    child.wait().unwrap();
    server.stop();
}

/// Keys and artifacts from the command line: generate a key, create, sign, inspect and verify
/// an artifact offline; trust the key on the server, upload, list, show, download (resuming),
/// delete. A tampered copy is refused by `verify` and by the server.
#[test]
fn artifacts_are_made_signed_checked_and_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = || tender(d);
    let key = d.join("release.key");
    let o = run(t().args(["keys", "generate", "--file"]).arg(&key));
    assert!(o.status.success(), "{}", stderr(&o));
    let key_id = stdout(&o)
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("key id ")
        .to_owned();
    assert_eq!(key_id.len(), 16);
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let public = d.join("release.key.pub");
    let o = run(t().args(["keys", "show"]).arg(&public));
    assert_eq!(stdout(&o).trim(), key_id);
    // Never overwritten.
    let o = run(t().args(["keys", "generate", "--file"]).arg(&key));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("exists"), "{}", stderr(&o));

    let payload = d.join("app.bin");
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 97) as u8).collect();
    std::fs::write(&payload, &content).unwrap();
    let script = d.join("check.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let art = d.join("app-1.2.0.tender");
    let o = run(t()
        .current_dir(d)
        .args([
            "artifact",
            "create",
            "--name",
            "app",
            "--version",
            "1.2.0",
            "--device-type",
            "gw",
            "--device-type",
            "rpi4",
            "--type",
            "file",
            "--gzip",
            "--depends",
            "rootfs.version=5",
        ])
        .arg("--payload")
        .arg(format!("{}=/opt/app/app.bin", payload.display()))
        .arg("--script")
        .arg(format!("after_install={}", script.display())));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("unsigned"), "{}", stdout(&o));
    assert!(art.exists());

    // Unsigned: verify needs --allow-unsigned; with the key it says what is missing.
    let o = run(t()
        .args(["artifact", "verify", "--key"])
        .arg(&public)
        .arg(&art));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not signed by a trusted key"),
        "{}",
        stderr(&o)
    );
    let o = run(t()
        .args(["artifact", "verify", "--allow-unsigned"])
        .arg(&art));
    assert!(o.status.success(), "{}", stderr(&o));

    let o = run(t().args(["artifact", "sign", "--key"]).arg(&key).arg(&art));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(t()
        .args(["artifact", "verify", "--key"])
        .arg(&public)
        .arg(&art));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("signed by {key_id}")),
        "{}",
        stdout(&o)
    );
    let o = run(t().args(["artifact", "inspect"]).arg(&art));
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for want in [
        "name        app",
        "version     1.2.0",
        "compatible  gw, rpi4",
        "depends     rootfs.version = 5",
        "provides    app.version = 1.2.0",
        "payload     app.bin -> /opt/app/app.bin (200000 bytes",
        "script      check.sh",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }

    // A tampered copy: the signature no longer matches.
    let mut bytes = std::fs::read(&art).unwrap();
    let at = bytes.windows(5).position(|w| w == b"1.2.0").unwrap();
    bytes[at + 4] = b'9';
    let tampered = d.join("tampered.tender");
    std::fs::write(&tampered, &bytes).unwrap();
    let o = run(t()
        .args(["artifact", "verify", "--key"])
        .arg(&public)
        .arg(&tampered));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("altered"), "{}", stderr(&o));

    let data = d.join("data");
    let server = start_server(d, &data, &[]);
    let token = server.token.clone().unwrap();
    let o = run(t().args(["login", "--server", &server.base, "--token", &token]));
    assert!(o.status.success(), "{}", stderr(&o));
    // Before the key is trusted the server refuses, and says how to fix it.
    let o = run(t().args(["artifact", "upload"]).arg(&art));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("tender keys trust"), "{}", stderr(&o));
    let o = run(t().args(["keys", "trust"]).arg(&public));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(t().args(["keys", "list"]));
    assert!(stdout(&o).contains(&key_id), "{}", stdout(&o));
    let o = run(t().args(["artifact", "upload"]).arg(&tampered));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("422"), "{}", stderr(&o));
    let o = run(t().args(["artifact", "upload", "-o", "json"]).arg(&art));
    assert!(o.status.success(), "{}", stderr(&o));
    let up: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(up["signed_by"], serde_json::json!([key_id]));
    let o = run(t().args(["artifact", "list"]));
    assert!(stdout(&o).contains("1.2.0"), "{}", stdout(&o));
    let o = run(t().args(["artifact", "show", "app@1.2.0"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("script      check.sh"),
        "{}",
        stdout(&o)
    );

    // Download, resuming a partial file.
    let original = std::fs::read(&art).unwrap();
    let out = d.join("download.tender");
    std::fs::write(&out, &original[..1000]).unwrap();
    let o = run(t()
        .args(["artifact", "download", "app@1.2.0", "--out"])
        .arg(&out));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), original);

    let o = run(t().args(["artifact", "delete", "app@1.2.0"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(t().args(["artifact", "show", "app@1.2.0"]));
    assert_eq!(o.status.code(), Some(1));
    server.stop();
}

/// With the CLI profile in `dir` logged in: a signing key (`release.key`), trusted by the
/// tenant; for each `(version, meta)` a signed `file` artifact `app` for every simulated
/// device type (`--meta` when given), created and uploaded.
fn release_artifacts(dir: &Path, versions: &[(&str, Option<&str>)]) {
    let cli = |args: &[&str]| {
        let o = run(tender(dir).args(args));
        assert!(o.status.success(), "tender {args:?}: {}", stderr(&o));
    };
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let key = path("release.key");
    cli(&["keys", "generate", "--file", &key]);
    cli(&["keys", "trust", &path("release.key.pub")]);
    std::fs::write(dir.join("app.bin"), b"app\n").unwrap();
    let payload = format!("{}=/opt/app/app.bin", path("app.bin"));
    for (version, meta) in versions {
        let out = path(&format!("app-{version}.tender"));
        let mut args = vec![
            "artifact",
            "create",
            "--name",
            "app",
            "--version",
            version,
            "--type",
            "file",
            "--payload",
            &payload,
            "--key",
            &key,
            "--out",
            &out,
        ];
        for t in ["kiosk", "gateway", "sensor-hub", "industrial-pc"] {
            args.extend(["--device-type", t]);
        }
        if let Some(m) = meta {
            args.extend(["--meta", m]);
        }
        cli(&args);
        cli(&["artifact", "upload", &out]);
    }
}

/// The README's tour of a rollout, by CLI alone: a signing key, two signed artifacts (1.0 makes
/// a tenth of the simulated devices fail their install), upload, preview and create a 3-phase
/// deployment to every simulated device; `watch` stops when the failure threshold of phase 1
/// pauses it; `resume --artifact app@1.1` retries the failed devices with the fix and the
/// deployment completes, every device reporting the version it installed.
#[test]
fn a_phased_deployment_to_simulated_devices_pauses_on_failures_and_completes_with_a_fix() {
    let _fleet = one_fleet_at_a_time();
    let total = fleet_size().max(40);
    // Phase 1: 10% of a 1,000-device fleet; at least 20 devices so that, with a tenth of the
    // installs failing, reaching the threshold of 2 failures is all but certain.
    let first = (total / 10).max(20);
    let bound = Duration::from_secs(60 + total as u64 / 2);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_server(dir.path(), &data, &[]);
    let token = server.token.clone().unwrap();
    let cli = |args: &[&str]| -> Output {
        let o = run(tender(dir.path()).args(args));
        assert!(o.status.success(), "tender {args:?}: {}", stderr(&o));
        o
    };
    cli(&["login", "--server", &server.base, "--token", &token]);
    release_artifacts(
        dir.path(),
        &[("1.0", Some("sim_fail_fraction=0.1")), ("1.1", None)],
    );
    let mut child = tender(dir.path())
        .args([
            "sim",
            "--devices",
            &total.to_string(),
            "--interval-ms",
            "60000",
        ])
        .args([
            "--ramp",
            "200",
            "--report-secs",
            "5",
            "--download-every",
            "5",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("sim"))
        .arg("--ca")
        .arg(data.join("ca/ca.crt"))
        .args(["--server-url", &format!("https://{}", server.device_addr)])
        .args(["--mqtt-url", &server.mqtt_addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Reaped)
        .unwrap();
    let devices = |query: &str| -> Vec<String> {
        let o = cli(&["devices", "list", "--all", "-o", "json", "-q", query]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let ids = poll_until_within("every simulated device online", bound, || {
        let ids = devices("online = true and inventory.simulated = true");
        (ids.len() == total).then_some(ids)
    });
    let failing: std::collections::HashSet<&String> = ids
        .iter()
        .filter(|id| tender_agent::deploy::sim_share(id, "1.0") < 0.1)
        .collect();

    let first_phase = format!("{first},fail=2");
    let plan = [
        "--artifact",
        "app@1.0",
        "-q",
        "inventory.simulated = true",
        "--attempts",
        "1",
        "--phase",
        &first_phase,
        "--phase",
        "40%,fail=5%",
        "--phase",
        "100%,fail=5%",
    ];
    let o = cli(&[&["deploy", "preview", "-o", "json"][..], &plan[..]].concat());
    let preview: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let phases = preview["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 3, "{preview}");
    let to_install: u64 = phases
        .iter()
        .map(|p| p["to_install"].as_u64().unwrap())
        .sum();
    assert_eq!(to_install, total as u64, "{preview}");
    let o = cli(&[&["deploy", "create"][..], &plan[..]].concat());
    let id = stdout(&o).trim().to_owned();

    // `watch` follows it until the failures of phase 1 pause it (exit 2).
    let timeout = bound.as_secs().to_string();
    let w = run(tender(dir.path()).args(["deploy", "watch", &id, "--timeout", &timeout]));
    assert_eq!(w.status.code(), Some(2), "{}{}", stdout(&w), stderr(&w));
    assert!(stderr(&w).contains("phase 1"), "{}", stderr(&w));
    let show = || -> serde_json::Value {
        let o = cli(&["deploy", "show", &id, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["deployment"].clone()
    };
    // Nothing new starts while paused; what was under way finishes.
    let paused = poll_until_within("phase 1 settled", bound, || {
        let d = show();
        (d["in_progress"] == 0).then_some(d)
    });
    assert_eq!(paused["state"], "paused", "{paused}");
    let failed = paused["failed"].as_u64().unwrap();
    assert!(failed >= 2, "{paused}");
    assert_eq!(
        failed + paused["succeeded"].as_u64().unwrap(),
        first as u64,
        "only phase 1 ran: {paused}"
    );
    let o = cli(&["deploy", "show", &id, "--devices", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let failed_ids: Vec<String> = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "failed")
        .map(|t| t["device_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(failed_ids.len() as u64, failed, "{v}");
    assert!(
        failed_ids.iter().all(|d| failing.contains(d)),
        "{failed_ids:?}"
    );

    // Resume with the fix: the failed devices and every later phase get 1.1.
    cli(&["deploy", "resume", &id, "--artifact", "app@1.1"]);
    let w = run(tender(dir.path()).args(["deploy", "watch", &id, "--timeout", &timeout]));
    assert!(w.status.success(), "{}{}", stdout(&w), stderr(&w));
    let done = show();
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["succeeded"], total, "{done}");
    assert_eq!(done["failed"], 0, "{done}");
    let on_1_0 = first as u64 - failed;
    poll_until_within("every device reports what it installed", bound, || {
        let old = devices("inventory.provides.app.version = \"1.0\"").len() as u64;
        let new = devices("inventory.provides.app.version = \"1.1\"").len() as u64;
        (old == on_1_0 && new == total as u64 - on_1_0).then_some(())
    });
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `kill -9` of the server in the middle of a rate-limited rollout: started again on the same
/// data, it carries on where it was. Devices that had finished keep their result (not notified
/// again), those still queued are notified once, and the rollout completes.
#[test]
fn a_rollout_survives_a_killed_server() {
    let _fleet = one_fleet_at_a_time();
    let total = (fleet_size() / 10).max(40);
    let bound = Duration::from_secs(90 + total as u64);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_server(dir.path(), &data, &[]);
    let token = server.token.clone().unwrap();
    let cli = |args: &[&str]| -> Output {
        let o = run(tender(dir.path()).args(args));
        assert!(o.status.success(), "tender {args:?}: {}", stderr(&o));
        o
    };
    cli(&["login", "--server", &server.base, "--token", &token]);
    release_artifacts(dir.path(), &[("2.0", None)]);
    let sim = |server: &ServerProc| {
        tender(dir.path())
            .args([
                "sim",
                "--devices",
                &total.to_string(),
                "--interval-ms",
                "60000",
            ])
            .args(["--ramp", "200", "--report-secs", "5"])
            .arg("--data-dir")
            .arg(dir.path().join("sim"))
            .arg("--ca")
            .arg(data.join("ca/ca.crt"))
            .args(["--server-url", &format!("https://{}", server.device_addr)])
            .args(["--mqtt-url", &server.mqtt_addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Reaped)
            .unwrap()
    };
    let online = || -> usize {
        let o = cli(&[
            "devices",
            "list",
            "--all",
            "-o",
            "json",
            "-q",
            "online = true",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["items"].as_array().unwrap().len()
    };
    let mut child = sim(&server);
    poll_until_within("every simulated device online", bound, || {
        (online() == total).then_some(())
    });
    // A quarter of the fleet per 20 s: the kill comes in the middle.
    let rate = (total * 3 / 4).to_string();
    let o = cli(&[
        "deploy",
        "create",
        "--artifact",
        "app@2.0",
        "-q",
        "inventory.simulated = true",
        "--rate",
        &rate,
    ]);
    let id = stdout(&o).trim().to_owned();
    let targets = || -> std::collections::BTreeMap<String, serde_json::Value> {
        let o = cli(&["deploy", "show", &id, "--devices", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["device_id"].as_str().unwrap().to_owned(), t.clone()))
            .collect()
    };
    poll_until_within("some devices updated, most not yet", bound, || {
        let t = targets();
        (t.values().any(|x| x["state"] == "succeeded")).then_some(())
    });

    // kill -9, then the simulator goes too (its devices would only reconnect in vain).
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);
    child.kill().unwrap();
    child.wait().unwrap();

    let server = start_server(dir.path(), &data, &[]);
    cli(&["login", "--server", &server.base, "--token", &token]);
    let before = targets();
    let done_before: Vec<&String> = before
        .iter()
        .filter(|(_, t)| t["state"] == "succeeded")
        .map(|(d, _)| d)
        .collect();
    assert!(!done_before.is_empty());
    assert!(
        done_before.len() < total,
        "the kill came before the end: {} of {total} done",
        done_before.len()
    );
    let o = cli(&["deploy", "show", &id, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["deployment"]["state"], "running", "{v}");

    let _child = sim(&server);
    let w = run(tender(dir.path()).args([
        "deploy",
        "watch",
        &id,
        "--timeout",
        &bound.as_secs().to_string(),
    ]));
    assert!(w.status.success(), "{}{}", stdout(&w), stderr(&w));
    let after = targets();
    assert_eq!(after.len(), total);
    for (device, t) in &after {
        assert_eq!(t["state"], "succeeded", "{t}");
        match before[device]["state"].as_str().unwrap() {
            "succeeded" => assert_eq!(t, &before[device], "finished before the kill: unchanged"),
            "queued" => assert_eq!(t["attempts"], 1, "notified once, after the restart: {t}"),
            // Under way when the simulator died with the server: its device finishes what it
            // had, or says it was interrupted and gets its next attempt.
            _ => assert!(t["attempts"] == 1 || t["attempts"] == 2, "{t}"),
        }
    }
    server.stop();
}

#[test]
fn alert_rules_are_managed_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &dir.path().join("data"), &[]);
    let token = server.token.clone().unwrap();
    let o = run(tender(dir.path()).args(["login", "--server", &server.base, "--token", &token]));
    assert!(o.status.success(), "{}", stderr(&o));

    // A condition that does not parse: exit 1, the position and what was expected.
    let o = run(tender(dir.path()).args([
        "alerts",
        "rules",
        "create",
        "hot",
        "temperature > 80 for 5d",
    ]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("at 21") && stderr(&o).contains("30s, 5m or 2h"),
        "{}",
        stderr(&o)
    );

    let o = run(tender(dir.path()).args([
        "alerts",
        "rules",
        "create",
        "hot",
        "temperature > 80 for 5m",
        "--severity",
        "critical",
        "-o",
        "json",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let rule: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rule["condition"], "temperature > 80 for 5m clear < 76");
    assert_eq!(rule["severity"], "critical");
    let id = rule["id"].as_str().unwrap().to_owned();

    let o = run(tender(dir.path()).args(["alerts", "rules", "list"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("ID"), "{text}");
    assert!(
        text.contains("hot") && text.contains("temperature > 80 for 5m clear < 76"),
        "{text}"
    );

    let o = run(tender(dir.path()).args(["alerts", "rules", "disable", &id, "-o", "json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["enabled"], false);

    let o = run(tender(dir.path()).args(["alerts", "list", "--state", "open", "-o", "json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v, serde_json::json!({"items": [], "next_cursor": null}));
    let o = run(tender(dir.path()).args(["alerts", "list", "--state", "burning"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("burning"), "{}", stderr(&o));
    let o = run(tender(dir.path()).args(["alerts", "ack", "not-an-id"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("tender alerts list"), "{}", stderr(&o));
    let o = run(tender(dir.path()).args([
        "alerts",
        "ack",
        "0192f1c4-7b5e-7a1e-9c1d-2f8e4b6a0c3d",
        "--note",
        "x",
    ]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("404"), "{}", stderr(&o));

    let o = run(tender(dir.path()).args(["alerts", "rules", "delete", &id]));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(tender(dir.path()).args(["alerts", "rules", "list", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["items"], serde_json::json!([]));
    server.stop();
}
/// Publishes numbered telemetry at QoS 1 over MQTT 3.1.1 (where a PUBACK always means "taken")
/// until the connection drops, at most 16 messages in flight: message `m` carries `seq` =
/// `m * 20 + k` at `base + m * 20 + k` milliseconds for k in 0..20. Prints `sent <mid> <m>`
/// once a message is handed to the client and `acked <mid>` for each PUBACK (the callback may
/// run before `publish` returns, so no lock is held around it: paho calls it under its own).
const PAHO_NUMBERED_PUBLISHER: &str = r#"
import json, sys, threading
import paho.mqtt.client as mqtt
port, d, dev, base = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
done = threading.Event()
room = threading.Semaphore(16)
def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
def on_publish(c, userdata, mid):
    say("acked %d" % mid)
    room.release()
def on_disconnect(c, userdata, rc):
    done.set()
try:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, client_id=dev, protocol=mqtt.MQTTv311)
except AttributeError:
    c = mqtt.Client(client_id=dev, protocol=mqtt.MQTTv311)
c.on_publish = on_publish
c.on_disconnect = on_disconnect
c.tls_set(ca_certs=d + "/ca.crt", certfile=d + "/device.crt", keyfile=d + "/device.key")
c.connect("localhost", port, keepalive=30)
c.loop_start()
# Message ids are not reused before 65535 messages.
for m in range(50000):
    while not room.acquire(timeout=0.5):
        if done.is_set():
            break
    if done.is_set():
        break
    body = [{"ts": base + m * 20 + k, "values": {"seq": m * 20 + k}} for k in range(20)]
    info = c.publish("tender/v1/%s/telemetry" % dev, json.dumps(body), qos=1)
    if info.rc != mqtt.MQTT_ERR_SUCCESS:
        break
    say("sent %d %d" % (info.mid, m))
done.wait(60)
c.loop_stop()
"#;

/// `kill -9` of the server while a device streams QoS 1 telemetry loses no acknowledged point:
/// after a restart on the same data, every point of every acknowledged message is stored.
fn telemetry_survives_kill_9(database: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("tender.toml");
    // Let one connection publish quickly (the default limit is 50 messages a second).
    std::fs::write(&config, "[mqtt]\nmessages_per_sec = 5000\nburst = 5000\n").unwrap();
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(database);
    let server = start_server(dir.path(), &data, &args);
    let token = server.token.clone().unwrap();
    let cli = |server: &ServerProc, args: &[&str]| -> String {
        let o =
            run(tender(dir.path())
                .args(args)
                .args(["--server", &server.base, "--token", &token]));
        assert!(o.status.success(), "tender {args:?}: {}", stderr(&o));
        stdout(&o)
    };
    let enrollment_token = cli(&server, &["enrollment-tokens", "create", "--name", "k9"])
        .trim()
        .to_owned();
    let dev = dir.path().join("device");
    let answer = enroll_with_openssl(&dev, &data, &server, &enrollment_token, "streamer");
    let id = answer["device_id"].as_str().unwrap().to_owned();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Far enough in the past that 100,000 milliseconds of points stay before "now".
    let base = now_ms - 3_600_000;
    let port = server.mqtt_addr.rsplit_once(':').unwrap().1.to_owned();
    let mut publisher = Command::new("/usr/bin/python3")
        .args(["-c", PAHO_NUMBERED_PUBLISHER, &port])
        .arg(&dev)
        .args([&id, &base.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(Reaped)
        .expect("python3 runs (Debian: python3-paho-mqtt)");
    let out = publisher.stdout.take().unwrap();
    // Acknowledged message numbers, as the acknowledgements and the ids arrive in any order.
    let (tx, acks) = channel();
    let reader = std::thread::spawn(move || {
        let mut sent = std::collections::HashMap::new();
        let mut acked = std::collections::HashSet::new();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let mut f = line.split(' ');
            let (kind, mid) = (f.next(), f.next().and_then(|x| x.parse::<i64>().ok()));
            let m = match (kind, mid) {
                (Some("sent"), Some(mid)) => {
                    let m: i64 = f.next().and_then(|x| x.parse().ok()).unwrap();
                    if acked.remove(&mid) {
                        Some(m)
                    } else {
                        sent.insert(mid, m);
                        None
                    }
                }
                (Some("acked"), Some(mid)) => match sent.remove(&mid) {
                    Some(m) => Some(m),
                    None => {
                        acked.insert(mid);
                        None
                    }
                },
                _ => None,
            };
            if let Some(m) = m
                && tx.send(m).is_err()
            {
                break;
            }
        }
    });
    // Kill the server in the middle of the stream.
    let mut acked = Vec::new();
    while acked.len() < 300 {
        match acks.recv_timeout(WAIT) {
            Ok(m) => acked.push(m),
            Err(_) => {
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(publisher.stderr.as_mut().unwrap(), &mut err);
                panic!("only {} messages acknowledged: {err}", acked.len());
            }
        }
    }
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    // The publisher sees the connection drop and ends; every acknowledgement it got is counted.
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = publisher.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the publisher did not end after the server went away"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "publisher: {status}");
    reader.join().unwrap();
    acked.extend(acks.try_iter());
    acked.sort_unstable();
    let last = *acked.last().unwrap();
    drop(server);

    let server = start_server(dir.path(), &data, &args);
    // Read back every point up to the last acknowledged message with the CSV export.
    let end = base + (last + 1) * 20;
    let rfc3339 = |ms: i64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let csv = cli(
        &server,
        &[
            "telemetry",
            "export",
            &id,
            "--metric",
            "seq",
            "--from",
            &rfc3339(base),
            "--to",
            &rfc3339(end),
        ],
    );
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("device,metric,at,value"));
    let mut stored = std::collections::BTreeSet::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), 4, "{line}");
        assert_eq!((fields[0], fields[1]), (id.as_str(), "seq"), "{line}");
        stored.insert(fields[3].parse::<f64>().unwrap() as i64);
    }
    // The series of the same range: one bucket per second, counts adding up to the export.
    let series = cli(
        &server,
        &[
            "telemetry",
            "show",
            "seq",
            "--device",
            &id,
            "--from",
            &rfc3339(base),
            "--to",
            &rfc3339(end),
            "--step",
            "1m",
            "--agg",
            "count",
            "-o",
            "json",
        ],
    );
    let series: serde_json::Value = serde_json::from_str(&series).unwrap();
    let counted: u64 = series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, stored.len() as u64, "{series}");
    let lost: Vec<i64> = acked
        .iter()
        .flat_map(|m| (m * 20)..(m * 20 + 20))
        .filter(|seq| !stored.contains(seq))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged points lost, first {:?}",
        lost.len(),
        acked.len() * 20,
        &lost[..lost.len().min(10)]
    );
    eprintln!(
        "kill -9 during ingest: {} messages ({} points) acknowledged, {} points stored, none lost",
        acked.len(),
        acked.len() * 20,
        stored.len()
    );
    server.stop();
}

#[test]
fn telemetry_survives_kill_9_on_sqlite() {
    telemetry_survives_kill_9(&[]);
}

#[test]
fn telemetry_survives_kill_9_on_postgres() {
    let db = PgTestDatabase::create_blocking();
    telemetry_survives_kill_9(&["--database-url", &db.url]);
}
/// The `Tender-Signature` header and body of each request a test endpoint received.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A minimal HTTP endpoint on loopback: answers 204 to every request and keeps each request's
/// `Tender-Signature` header and body.
fn webhook_endpoint() -> (String, Received) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then as much body as Content-Length says.
            let (head_end, length) = loop {
                let n = stream.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break (None, 0);
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break (Some(i + 4), length);
                }
            };
            let Some(start) = head_end else { continue };
            while buf.len() < start + length {
                let n = stream.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let head = String::from_utf8_lossy(&buf[..start]).into_owned();
            let signature = head
                .lines()
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.eq_ignore_ascii_case("tender-signature"))
                        .map(|(_, v)| v.trim().to_owned())
                })
                .unwrap_or_default();
            let body = buf[start..(start + length).min(buf.len())].to_vec();
            keep.lock().unwrap().push((signature, body));
            let _ = stream.write_all(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (url, got)
}

#[test]
fn webhooks_are_created_listed_tested_and_their_deliveries_shown() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), &dir.path().join("data"), &[]);
    let token = server.token.clone().unwrap();
    let t = || tender(dir.path());
    let o = run(t().args(["login", "--server", &server.base, "--token", &token]));
    assert!(o.status.success(), "{}", stderr(&o));
    let (url, got) = webhook_endpoint();

    // Bad input: one clear line naming the field, exit 1.
    let o = run(t().args([
        "webhooks",
        "create",
        "--name",
        "x",
        "--url",
        "ftp://example.com/",
    ]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("url"), "{}", stderr(&o));
    let o = run(t().args([
        "webhooks", "create", "--name", "x", "--url", &url, "--events", "Device",
    ]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("events"), "{}", stderr(&o));

    let o = run(t().args([
        "webhooks",
        "create",
        "--name",
        "ops",
        "--url",
        &url,
        "--events",
        "device.*,alert.*",
    ]));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    let id = lines.next().unwrap().trim().to_owned();
    let secret = lines
        .next()
        .unwrap()
        .trim_start_matches("secret: ")
        .to_owned();
    assert!(secret.starts_with("whsec_"), "{out}");
    assert!(stderr(&o).contains("not shown again"), "{}", stderr(&o));

    let o = run(t().args(["webhooks", "list"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("ID"), "{text}");
    assert!(
        text.contains(&id) && text.contains("device.*,alert.*"),
        "{text}"
    );
    assert!(!text.contains(&secret), "lists never show the secret");
    let o = run(t().args(["webhooks", "show", &id, "-o", "json"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let w: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(w["url"], url.as_str());
    assert!(w.get("secret").is_none());

    // A test ping reaches the endpoint, signed with the secret; the log shows it delivered.
    let o = run(t().args(["webhooks", "test", &id]));
    assert!(o.status.success(), "{}", stderr(&o));
    let ping = stdout(&o).trim().to_owned();
    poll_until("the ping to be delivered", || {
        let o = run(t().args(["webhooks", "deliveries", &id, "-o", "json"]));
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (v["items"][0]["id"] == ping.as_str() && v["items"][0]["state"] == "succeeded")
            .then_some(())
    });
    let o = run(t().args(["webhooks", "deliveries", &id]));
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("ID"), "{text}");
    assert!(
        text.contains(&ping) && text.contains("webhook.test") && text.contains("succeeded"),
        "{text}"
    );
    let received = got.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    let (signature, body) = &received[0];
    let now = tender_core::Timestamp::from_datetime(time::OffsetDateTime::now_utc());
    assert_eq!(
        tender_core::webhook::verify(&secret, signature, body, now, 300),
        Ok(()),
        "{signature}"
    );

    // Switched off, then deleted.
    let o = run(t().args(["webhooks", "update", &id, "--disable"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("enabled:  false"), "{}", stdout(&o));
    let o = run(t().args(["webhooks", "delete", &id]));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(t().args(["webhooks", "show", &id]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("404"), "{}", stderr(&o));
    server.stop();
}

/// The `tender-agent` binary beside `tender`. A `cargo test --workspace` run builds it; a
/// `cargo test -p tender` run does not, so it is built here when missing or older than the
/// agent's sources.
fn agent_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let path = Path::new(BIN).with_file_name("tender-agent");
            let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tender-agent/src");
            let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            let stale = built.is_none_or(|b| newest(&sources).is_some_and(|s| s > b));
            if stale && let Ok(cargo) = std::env::var("CARGO") {
                let status = Command::new(cargo)
                    .args(["build", "-p", "tender-agent", "--bin", "tender-agent"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("run cargo build for the agent");
                assert!(status.success(), "building tender-agent failed");
            }
            assert!(path.exists(), "no agent binary at {}", path.display());
            path
        })
        .clone()
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        let t = if p.is_dir() {
            self::newest(&p)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

#[test]
fn logs_from_a_real_agent_are_fetched_with_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_server(dir.path(), &data, &[]);
    let token = server.token.clone().unwrap();
    let o = run(tender(dir.path()).args(["login", "--server", &server.base, "--token", &token]));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(tender(dir.path()).args(["enrollment-tokens", "create", "--name", "logs"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let enrollment_token = stdout(&o).trim().to_owned();

    let log = dir.path().join("app.log");
    let text: String = (1..=50)
        .map(|i| format!("2026-01-01T00:00:{:02}Z event {i}\n", i % 60))
        .collect();
    std::fs::write(&log, &text).unwrap();
    let agent_config = dir.path().join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "server_url = \"https://{}\"\nmqtt_url = \"{}\"\nca_file = \"{}\"\ndata_dir = \"{}\"\n\
             enrollment_token = \"{enrollment_token}\"\ndevice_name = \"logger\"\n\
             inventory_scripts_dir = \"{}\"\ncollectors = [\"system\"]\n\n\
             [logs.sources.app]\nfile = \"{}\"\n",
            server.device_addr,
            server.mqtt_addr,
            data.join("ca/ca.crt").display(),
            dir.path().join("agent").display(),
            dir.path().join("no-scripts").display(),
            log.display(),
        ),
    )
    .unwrap();
    let _agent = Reaped(
        Command::new(agent_binary())
            .args(["run", "--config"])
            .arg(&agent_config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    poll_until("the agent to be online", || {
        let o =
            run(tender(dir.path()).args(["devices", "list", "-o", "json", "-q", "online = true"]));
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (v["items"].as_array().unwrap().len() == 1).then_some(())
    });

    // By device name; the last lines.
    let o = run(tender(dir.path()).args(["logs", "logger", "--source", "app", "--lines", "2"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "2026-01-01T00:00:49Z event 49\n2026-01-01T00:00:50Z event 50\n"
    );
    assert!(stderr(&o).contains("ready"), "{}", stderr(&o));

    // A time range, into a file.
    let out = dir.path().join("out.log");
    let o = run(tender(dir.path())
        .args([
            "logs",
            "logger",
            "-s",
            "app",
            "--since",
            "2026-01-01T00:00:10Z",
        ])
        .args(["--until", "2026-01-01T00:00:12Z", "--save"])
        .arg(&out));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "2026-01-01T00:00:10Z event 10\n2026-01-01T00:00:11Z event 11\n"
    );

    // A source the device does not have: the device's reason, and a failing exit.
    let o = run(tender(dir.path()).args(["logs", "logger", "--source", "secrets"]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no log source \"secrets\""),
        "{}",
        stderr(&o)
    );
    // Follow: the last line, then what is written next, until Ctrl-C.
    let mut follow = Reaped(
        tender(dir.path())
            .args(["logs", "logger", "-s", "app", "--follow", "--lines", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, lines) = channel();
    let out = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || lines.recv_timeout(WAIT).expect("a followed line");
    assert_eq!(next(), "2026-01-01T00:00:50Z event 50");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        writeln!(f, "2026-01-01T00:00:51Z event 51").unwrap();
    }
    assert_eq!(next(), "2026-01-01T00:00:51Z event 51");
    let pid = follow.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = poll_until("tender logs --follow to exit", || {
        follow.try_wait().unwrap()
    });
    assert!(status.success(), "Ctrl-C ends a follow cleanly: {status}");

    // Bad input is explained before anything is sent.
    let o = run(tender(dir.path()).args(["logs", "logger", "--source", "app", "--since", "soon"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("RFC 3339"), "{}", stderr(&o));
    server.stop();
}
