//! Artifact downloads: one artifact served to many concurrent downloaders, Tender against
//! nginx serving the same file in the same run.
//!
//! `cargo bench -p tender-server --bench artifact_serving -- [SIZE_MIB] [CLIENTS...]`
//! (default 64 MiB, 16 and 64 clients). A server starts in-process on a fresh SQLite data
//! directory; an artifact of SIZE_MIB (random payload, so nothing compresses) is uploaded
//! through the API (checked completely, as always), then CLIENTS downloaders fetch it in a
//! closed loop for SECS seconds each over plain HTTP on loopback from
//! `GET /api/v1/artifacts/{id}/download`; the bytes received give the throughput. nginx (when
//! installed) then serves the stored file itself with `sendfile on`, 2 workers, and the same
//! load runs against it. Clients and servers share this machine's cores. Figures only;
//! nothing is asserted; every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::RngCore;

const SECS: u64 = 8;

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu})")
}

/// Downloads `url` in a closed loop from `clients` tasks for SECS; (bytes, whole files, errors).
async fn load(
    url: &str,
    token: Option<&str>,
    clients: usize,
    size: u64,
) -> (u64, u64, u64, Duration) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let bytes = Arc::new(AtomicU64::new(0));
    let files = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(SECS);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, url, token) = (http.clone(), url.to_owned(), token.map(str::to_owned));
        let (bytes, files, errors) = (bytes.clone(), files.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let mut req = http.get(&url);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let Ok(resp) = req.send().await else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if !resp.status().is_success() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let mut got = 0u64;
                let mut stream = resp.bytes_stream();
                while let Some(chunk) = stream.next().await {
                    match chunk {
                        Ok(c) => {
                            got += c.len() as u64;
                            bytes.fetch_add(c.len() as u64, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                if got == size {
                    files.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(SECS + 30), t).await;
    }
    (
        bytes.load(Ordering::Relaxed),
        files.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        start.elapsed(),
    )
}

fn gbit(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64() / 1e9
}

struct Nginx {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

fn nginx(root: &std::path::Path) -> Option<Nginx> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let dir = tempfile::tempdir().ok()?;
    let conf = format!(
        // Workers read the file as the user running the benchmark (the data directory is
        // private to it); nginx ignores `user` with a notice when not started as root.
        "daemon off;\nuser {user};\nworker_processes 2;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000;\n\
           client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;\n\
           uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;\n\
           server {{ listen 127.0.0.1:{port}; root {root}; location / {{ }} }}\n}}\n",
        dir = dir.path().display(),
        root = root.display(),
        user = std::env::var("USER").unwrap_or_else(|_| "root".into()),
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).ok()?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    // Wait (bounded) until it accepts.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(Nginx {
                child,
                port,
                _dir: dir,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut child = child;
    let _ = child.kill();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    println!("nginx did not start: {err}");
    None
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let size_mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let mut clients: Vec<usize> = args.filter_map(|a| a.parse().ok()).collect();
    if clients.is_empty() {
        clients = vec![16, 64];
    }
    println!("Artifact serving benchmark");
    println!("machine: {}", machine());

    let dir = tempfile::tempdir().unwrap();
    let mut config = tender_server::Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.devices.listen = "127.0.0.1:0".parse().unwrap();
    config.mqtt.enabled = false;
    config.artifacts.require_signature = false;
    config.log.level = "warn".into();
    let server = tender_server::start(config.clone()).await.unwrap();
    let token = server.bootstrap_token.clone().unwrap();

    // An artifact of random bytes.
    let size = size_mib << 20;
    let mut payload = vec![0u8; size as usize];
    rand::rng().fill_bytes(&mut payload);
    let d =
        tender_artifact::describe(&payload[..], tender_artifact::Compression::None, None).unwrap();
    let manifest = tender_artifact::Manifest {
        format: tender_artifact::FORMAT.into(),
        name: "bench".into(),
        version: "1".into(),
        compatible: vec!["any".into()],
        depends: Default::default(),
        provides: Default::default(),
        payload_type: "file".into(),
        payloads: vec![tender_artifact::Payload {
            name: "image.bin".into(),
            size: d.size,
            sha256: d.sha256,
            compression: tender_artifact::Compression::None,
            stored_size: None,
            meta: Default::default(),
        }],
        scripts: vec![],
        meta: Default::default(),
        created_at: None,
    };
    let payload = Arc::new(payload);
    let file = tender_artifact::write(
        Vec::new(),
        &manifest,
        &tender_artifact::Signatures::default(),
        move |_| Ok(Box::new(std::io::Cursor::new(payload.as_ref().clone())) as Box<dyn Read>),
    )
    .unwrap();
    let file_size = file.len() as u64;
    let base = format!("http://{}", server.http_addr);
    let t0 = Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/v1/artifacts"))
        .bearer_auth(&token)
        .body(file)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "upload: {}", resp.status());
    let a: serde_json::Value = resp.json().await.unwrap();
    let id = a["id"].as_str().unwrap().to_owned();
    let upload = t0.elapsed();
    println!(
        "artifact: {:.1} MiB, uploaded and checked in {:.2} s ({:.0} MiB/s)",
        file_size as f64 / 1048576.0,
        upload.as_secs_f64(),
        file_size as f64 / 1048576.0 / upload.as_secs_f64()
    );
    let tenant = server
        .store
        .tenant_by_slug(
            &tender_core::tenant::TenantSlug::parse(tender_core::tenant::DEFAULT_TENANT_SLUG)
                .unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    let stored_dir = config
        .data_dir
        .join("artifacts")
        .join(tenant.id.to_string());
    let url = format!("{base}/api/v1/artifacts/{id}/download");
    let nginx = nginx(&stored_dir);
    if nginx.is_none() {
        println!("nginx is not installed (apt-get install nginx): Tender alone");
    }

    println!("\n| server | clients | Gbit/s | MiB/s | whole files | errors |");
    println!("|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for &c in &clients {
        let (b, f, e, d) = load(&url, Some(&token), c, file_size).await;
        println!(
            "| Tender (`/api/v1/artifacts/{{id}}/download`) | {c} | {:.2} | {:.0} | {f} | {e} |",
            gbit(b, d),
            b as f64 / 1048576.0 / d.as_secs_f64()
        );
        let tender = gbit(b, d);
        if let Some(n) = &nginx {
            let nurl = format!("http://127.0.0.1:{}/{id}.tender", n.port);
            let (b, f, e, d) = load(&nurl, None, c, file_size).await;
            println!(
                "| nginx (sendfile, 2 workers) | {c} | {:.2} | {:.0} | {f} | {e} |",
                gbit(b, d),
                b as f64 / 1048576.0 / d.as_secs_f64()
            );
            results.push((c, tender, gbit(b, d)));
        }
    }
    for (c, t, n) in results {
        println!("{c} clients: Tender at {:.0}% of nginx", 100.0 * t / n);
    }
    if let Some(mut n) = nginx {
        let _ = n.child.kill();
        let _ = n.child.wait();
    }
    server.shutdown().await;
}
