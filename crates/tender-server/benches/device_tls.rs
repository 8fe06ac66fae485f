//! Full mTLS handshakes per second on the device listener, beside nginx.
//!
//! `cargo bench -p tender-server --bench device_tls` starts a server in-process (SQLite, temp
//! dir), enrolls one device through the real API, then opens fresh TLS connections (session
//! resumption off, so each is a full TLS 1.3 handshake with a client certificate) from
//! CONCURRENCY tasks for SECONDS, each sending one `GET /device/v1/whoami` (which also checks the
//! certificate and device against the database) and reading the answer. If `nginx` is on PATH,
//! the same load runs against nginx configured with the same CA, a server certificate from the
//! same CA, `ssl_verify_client on` and a static 200. The load generator shares the machine's
//! cores with the server under test, for both. Figures only; nothing is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONCURRENCY: usize = 64;
const SECONDS: u64 = 8;

struct Result {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u64>,
    elapsed: Duration,
}

async fn hammer(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Result {
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            let connector = tokio_rustls::TlsConnector::from(cfg);
            let name = ServerName::try_from("localhost").unwrap();
            let (mut ok, mut errors, mut lat) = (0u64, 0u64, Vec::new());
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let attempt = async {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    let mut tls = connector.connect(name.clone(), tcp).await?;
                    tls.write_all(b"GET /device/v1/whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
                    let mut buf = Vec::with_capacity(1024);
                    tls.read_to_end(&mut buf).await.or_else(|e| {
                        // Some servers close without close_notify after Connection: close.
                        if e.kind() == std::io::ErrorKind::UnexpectedEof { Ok(0) } else { Err(e) }
                    })?;
                    Ok::<bool, std::io::Error>(buf.starts_with(b"HTTP/1.1 200"))
                };
                // A stuck connection counts as an error instead of stalling the run.
                let r = tokio::time::timeout(Duration::from_secs(5), attempt).await;
                match r {
                    Ok(Ok(true)) => {
                        ok += 1;
                        lat.push(t0.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
            }
            (ok, errors, lat)
        }));
    }
    let mut res = Result {
        ok: 0,
        errors: 0,
        latencies_us: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        let (ok, errors, lat) = t.await.unwrap();
        res.ok += ok;
        res.errors += errors;
        res.latencies_us.extend(lat);
    }
    res.elapsed = start.elapsed();
    res.latencies_us.sort_unstable();
    res
}

fn report(name: &str, r: &Result) {
    let p = |q: f64| {
        if r.latencies_us.is_empty() {
            0.0
        } else {
            r.latencies_us[((r.latencies_us.len() - 1) as f64 * q) as usize] as f64 / 1000.0
        }
    };
    println!(
        "{name:<34} {:>8.0} connects/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ok {}  errors {}",
        r.ok as f64 / r.elapsed.as_secs_f64(),
        p(0.5),
        p(0.99),
        r.ok,
        r.errors
    );
}

fn client_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let mut config = tender_server::Config {
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.devices.listen = "127.0.0.1:0".parse().unwrap();
    let server = tender_server::start(config.clone()).await.unwrap();
    let admin = server.bootstrap_token.clone().unwrap();
    let api = format!("http://{}", server.http_addr);
    let ca_pem = std::fs::read_to_string(&server.ca_cert_path).unwrap();

    // Enroll one device through the real API.
    let http = reqwest::Client::new();
    let t: serde_json::Value = http
        .post(format!("{api}/api/v1/enrollment-tokens"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"name": "bench"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let tls_http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let enrolled: serde_json::Value = tls_http
        .post(format!(
            "https://127.0.0.1:{}/device/v1/enroll",
            server.device_addr.port()
        ))
        .json(&serde_json::json!({"csr": csr, "token": t["token"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cert_pem = enrolled["certificate"].as_str().unwrap().to_owned();
    let cfg = client_config(&ca_pem, &cert_pem, &key.serialize_pem());

    println!(
        "device listener: fresh mTLS connection (TLS 1.3, ECDSA P-256, no resumption) + one request each; {CONCURRENCY} concurrent clients, {SECONDS} s"
    );
    let r = hammer(server.device_addr, cfg.clone()).await;
    report("tender (rustls, whoami + DB check)", &r);

    // nginx with the same CA and a server certificate from it.
    if let Ok(nginx) = which_nginx() {
        let nd = dir.path().join("nginx");
        std::fs::create_dir_all(nd.join("logs")).unwrap();
        let dd = tender_server::datadir::DataDir::prepare(&config.data_dir).unwrap();
        let ca = tender_server::ca::load_or_create(
            &Default::default(),
            &dd,
            tender_core::Timestamp::from_datetime(time::OffsetDateTime::now_utc()),
        )
        .unwrap();
        let (scert, skey) = ca
            .issue_server_certificate(
                &["localhost".into(), "127.0.0.1".into()],
                tender_core::Timestamp::from_datetime(time::OffsetDateTime::now_utc()),
            )
            .unwrap();
        std::fs::write(nd.join("server.crt"), scert).unwrap();
        std::fs::write(nd.join("server.key"), skey).unwrap();
        std::fs::write(nd.join("ca.crt"), &ca_pem).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = format!(
            "daemon off; master_process on; worker_processes 2; user root; pid {d}/nginx.pid; error_log {d}/logs/error.log crit;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; ssl_session_cache off; ssl_session_tickets off;\n\
               server {{ listen 127.0.0.1:{port} ssl; ssl_protocols TLSv1.3;\n\
                 ssl_certificate {d}/server.crt; ssl_certificate_key {d}/server.key;\n\
                 ssl_client_certificate {d}/ca.crt; ssl_verify_client on;\n\
                 location / {{ default_type application/json; return 200 '{{\"ok\":true}}'; }} }} }}\n",
            d = nd.display()
        );
        std::fs::write(nd.join("nginx.conf"), conf).unwrap();
        let mut child = std::process::Command::new(nginx)
            .args([
                "-p",
                &nd.display().to_string(),
                "-c",
                &nd.join("nginx.conf").display().to_string(),
            ])
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Wait (bounded) until nginx accepts connections.
        let t0 = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err()
            && t0.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = hammer(addr, cfg).await;
        report("nginx (OpenSSL, static 200)", &r);
        let _ = child.kill();
        let _ = child.wait();
    } else {
        println!("nginx not on PATH: no comparison (apt-get install nginx)");
    }
    server.shutdown().await;
}

fn which_nginx() -> std::io::Result<String> {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if std::path::Path::new(p).exists() {
            return Ok(p.to_owned());
        }
    }
    Err(std::io::Error::other("nginx not found"))
}
