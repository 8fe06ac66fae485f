//! The device's identity: its key (generated on first start, kept 0600 in the data directory),
//! enrollment through the HTTPS device API, and certificate renewal.
//!
//! Files in the data directory: `device.key` (PKCS#8 PEM, 0600), `device.crt` (the issued
//! certificate), `ca.crt` (the CA that issued it, as returned at enrollment) and
//! `identity.json` (device id and validity). Every file is written atomically (temporary file,
//! then rename), so a crash never leaves half a certificate.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Errors from identity handling and enrollment.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("device key: {0}")]
    Key(#[from] rcgen::Error),
    #[error("CA certificate: {0}")]
    Ca(String),
    #[error("identity file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    /// The server refused (4xx other than 409): retrying will not help without a change.
    #[error("enrollment refused ({status}): {kind}: {detail}")]
    Refused {
        status: u16,
        kind: String,
        detail: String,
    },
    #[error("unexpected answer from the server ({status}): {body}")]
    Unexpected { status: u16, body: String },
    #[error("no enrolled identity in {0}: run the agent to enroll first")]
    NotEnrolled(PathBuf),
}

type Result<T> = std::result::Result<T, IdentityError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `contents` to `path` atomically, with `mode` on Unix.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{file_name}.tmp"));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
        f.write_all(contents).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// The device key: loaded from `<data_dir>/device.key`, or generated (ECDSA P-256) and stored
/// there with mode 0600 when absent.
pub fn load_or_create_key(data_dir: &Path) -> Result<KeyPair> {
    std::fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
    let path = data_dir.join("device.key");
    match std::fs::read_to_string(&path) {
        Ok(pem) => Ok(KeyPair::from_pem(&pem)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            write_atomic(&path, key.serialize_pem().as_bytes(), 0o600)?;
            tracing::info!(path = %path.display(), "generated a new device key");
            Ok(key)
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// A PEM certificate signing request for `key` (the server ignores the subject).
pub fn csr_pem(key: &KeyPair) -> Result<String> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name
        .push(DnType::CommonName, "tender-device");
    Ok(p.serialize_request(key)?.pem()?)
}

/// What is recorded next to the certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    pub device_id: String,
    /// RFC 3339.
    pub not_after: String,
    /// RFC 3339.
    pub renew_after: String,
}

/// An enrolled device: its key, certificate and the CA that issued it.
pub struct Identity {
    pub record: IdentityRecord,
    pub key: KeyPair,
    pub cert_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

impl Identity {
    pub fn device_id(&self) -> &str {
        &self.record.device_id
    }

    pub fn not_after(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(&self.record.not_after, &Rfc3339).ok()
    }

    pub fn renew_after(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(&self.record.renew_after, &Rfc3339).ok()
    }

    /// True when `now` is past `renew_after` (or the date cannot be read).
    pub fn needs_renewal(&self, now: OffsetDateTime) -> bool {
        self.renew_after().is_none_or(|r| now >= r)
    }

    /// Loads the identity stored in `data_dir`; `Ok(None)` when the device has not enrolled.
    pub fn load(data_dir: &Path) -> Result<Option<Identity>> {
        let record_path = data_dir.join("identity.json");
        let cert_path = data_dir.join("device.crt");
        let key_path = data_dir.join("device.key");
        if !record_path.exists() || !cert_path.exists() || !key_path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&record_path).map_err(io_err(&record_path))?;
        let record: IdentityRecord =
            serde_json::from_str(&text).map_err(|e| IdentityError::Corrupt {
                path: record_path.clone(),
                reason: e.to_string(),
            })?;
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let ca_path = data_dir.join("ca.crt");
        let ca_pem = std::fs::read_to_string(&ca_path).unwrap_or_default();
        let key_pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        Ok(Some(Identity {
            record,
            key: KeyPair::from_pem(&key_pem)?,
            cert_pem,
            ca_pem,
        }))
    }

    /// Stores certificate, CA and record (the key is already there).
    pub fn store(&self, data_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(data_dir).map_err(io_err(data_dir))?;
        if !self.ca_pem.is_empty() {
            write_atomic(&data_dir.join("ca.crt"), self.ca_pem.as_bytes(), 0o644)?;
        }
        write_atomic(
            &data_dir.join("device.crt"),
            self.cert_pem.as_bytes(),
            0o644,
        )?;
        let record = serde_json::to_vec_pretty(&self.record).unwrap_or_default();
        write_atomic(&data_dir.join("identity.json"), &record, 0o644)
    }
}

/// The server's answer to enroll/renew.
#[derive(Debug, Deserialize)]
struct Answer {
    device_id: String,
    status: String,
    certificate: Option<String>,
    ca_certificate: Option<String>,
    not_after: Option<String>,
    renew_after: Option<String>,
    retry_after_secs: Option<u64>,
}

/// The outcome of one enrollment request.
#[derive(Debug)]
pub enum Enrollment {
    Issued(Box<Identity>),
    /// Waiting for an operator; ask again after this long.
    Pending {
        device_id: String,
        retry_after: Duration,
    },
    /// A conflicting request landed at the same time: ask again.
    Conflict,
}

/// Where and how to enroll.
#[derive(Clone, Debug, Default)]
pub struct EnrollOptions {
    /// HTTPS base of the device API, e.g. `https://tender.example:8443`.
    pub server_url: String,
    /// PEM of the CA that the server's certificate chains to (the only trusted root).
    pub ca_pem: String,
    pub token: Option<String>,
    pub name: Option<String>,
    pub device_type: Option<String>,
}

/// Installs rustls' ring provider as the process default (harmless when one is installed).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTPS client that trusts only `ca_pem` and, given an identity, presents its certificate.
pub fn http_client(ca_pem: &str, identity: Option<&Identity>) -> Result<reqwest::Client> {
    client_builder(ca_pem, identity, Some(Duration::from_secs(60)))?
        .build()
        .map_err(Into::into)
}

/// The HTTPS client for artifact downloads: like [`http_client`], but with no bound on a
/// whole request (a large artifact takes as long as it takes); a connection that delivers
/// nothing for 60 s fails instead, and the download resumes with `Range`.
pub fn download_client(ca_pem: &str, identity: &Identity) -> Result<reqwest::Client> {
    client_builder(ca_pem, Some(identity), None)?
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(Into::into)
}

fn client_builder(
    ca_pem: &str,
    identity: Option<&Identity>,
    timeout: Option<Duration>,
) -> Result<reqwest::ClientBuilder> {
    install_crypto_provider();
    let certs = reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes())
        .map_err(|e| IdentityError::Ca(e.to_string()))?;
    if certs.is_empty() {
        return Err(IdentityError::Ca("no certificate in the CA file".into()));
    }
    let mut b = reqwest::Client::builder()
        .tls_certs_only(certs)
        .connect_timeout(Duration::from_secs(15));
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    if let Some(id) = identity {
        let pem = format!("{}\n{}", id.key.serialize_pem(), id.cert_pem);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes())?);
    }
    Ok(b)
}

fn endpoint(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

async fn interpret(resp: reqwest::Response, key: KeyPair, ca_fallback: &str) -> Result<Enrollment> {
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    match status {
        201 | 202 => {
            let a: Answer = serde_json::from_str(&text).map_err(|_| IdentityError::Unexpected {
                status,
                body: text.clone(),
            })?;
            if status == 202 || a.status == "pending" {
                return Ok(Enrollment::Pending {
                    device_id: a.device_id,
                    retry_after: Duration::from_secs(a.retry_after_secs.unwrap_or(60).max(1)),
                });
            }
            let (Some(cert), Some(not_after), Some(renew_after)) =
                (a.certificate, a.not_after, a.renew_after)
            else {
                return Err(IdentityError::Unexpected { status, body: text });
            };
            Ok(Enrollment::Issued(Box::new(Identity {
                record: IdentityRecord {
                    device_id: a.device_id,
                    not_after,
                    renew_after,
                },
                key,
                cert_pem: cert,
                ca_pem: a.ca_certificate.unwrap_or_else(|| ca_fallback.to_owned()),
            })))
        }
        409 => Ok(Enrollment::Conflict),
        400..=499 => {
            let p: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let kind = p["type"]
                .as_str()
                .map(|t| t.trim_start_matches("urn:tender:problem:").to_owned())
                .unwrap_or_else(|| "unknown".into());
            let detail = p["detail"].as_str().unwrap_or(&text).to_owned();
            Err(IdentityError::Refused {
                status,
                kind,
                detail,
            })
        }
        _ => Err(IdentityError::Unexpected { status, body: text }),
    }
}

/// One `POST /device/v1/enroll` with `key`.
pub async fn enroll_once(opts: &EnrollOptions, key: &KeyPair) -> Result<Enrollment> {
    let http = http_client(&opts.ca_pem, None)?;
    let mut body = serde_json::json!({ "csr": csr_pem(key)? });
    if let Some(t) = &opts.token {
        body["token"] = t.clone().into();
    }
    if let Some(n) = &opts.name {
        body["name"] = n.clone().into();
    }
    if let Some(d) = &opts.device_type {
        body["device_type"] = d.clone().into();
    }
    let resp = http
        .post(endpoint(&opts.server_url, "/device/v1/enroll"))
        .json(&body)
        .send()
        .await?;
    let key = KeyPair::from_pem(&key.serialize_pem())?;
    interpret(resp, key, &opts.ca_pem).await
}

/// `POST /device/v1/renew` over mTLS with the current certificate; a new certificate for the
/// same key. The caller stores it.
pub async fn renew(opts: &EnrollOptions, current: &Identity) -> Result<Identity> {
    let http = http_client(&opts.ca_pem, Some(current))?;
    let resp = http
        .post(endpoint(&opts.server_url, "/device/v1/renew"))
        .json(&serde_json::json!({ "csr": csr_pem(&current.key)? }))
        .send()
        .await?;
    let key = KeyPair::from_pem(&current.key.serialize_pem())?;
    match interpret(resp, key, &current.ca_pem).await? {
        Enrollment::Issued(id) => Ok(*id),
        other => Err(IdentityError::Unexpected {
            status: 0,
            body: format!("renewal answered {other:?}"),
        }),
    }
}

/// The wait before the next enrollment attempt while pending: at least what the server asked
/// for, doubling with each attempt, at most an hour.
pub fn pending_delay(retry_after: Duration, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
    retry_after
        .saturating_mul(factor)
        .min(Duration::from_secs(3600))
        .max(retry_after)
}

/// The device's identity: the stored one, or a new enrollment (waiting while pending, retrying
/// transport errors with back-off). Refusals are returned at once.
pub async fn ensure_identity(data_dir: &Path, opts: &EnrollOptions) -> Result<Identity> {
    if let Some(id) = Identity::load(data_dir)? {
        tracing::info!(device_id = id.device_id(), "loaded the stored identity");
        return Ok(id);
    }
    let key = load_or_create_key(data_dir)?;
    let backoff = crate::backoff::Backoff::default();
    let mut pending_attempt = 0u32;
    let mut error_attempt = 0u32;
    loop {
        match enroll_once(opts, &key).await {
            Ok(Enrollment::Issued(id)) => {
                id.store(data_dir)?;
                tracing::info!(device_id = id.device_id(), "enrolled");
                return Ok(*id);
            }
            Ok(Enrollment::Pending {
                device_id,
                retry_after,
            }) => {
                let wait = pending_delay(retry_after, pending_attempt);
                pending_attempt = pending_attempt.saturating_add(1);
                tracing::info!(%device_id, wait_secs = wait.as_secs(), "enrollment pending an operator's approval");
                tokio::time::sleep(wait).await;
            }
            Ok(Enrollment::Conflict) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e @ (IdentityError::Http(_) | IdentityError::Unexpected { .. })) => {
                let wait = backoff.delay(error_attempt, &mut rand::rng());
                error_attempt = error_attempt.saturating_add(1);
                tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "enrollment failed; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_key(dir.path()).unwrap();
        let b = load_or_create_key(dir.path()).unwrap();
        assert_eq!(a.serialize_pem(), b.serialize_pem());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("device.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(csr_pem(&a).unwrap().contains("BEGIN CERTIFICATE REQUEST"));
    }

    #[test]
    fn nothing_stored_means_not_enrolled() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Identity::load(dir.path()).unwrap().is_none());
    }

    #[test]
    fn pending_waits_honour_the_server_and_grow() {
        let r = Duration::from_secs(60);
        assert_eq!(pending_delay(r, 0), r);
        assert_eq!(pending_delay(r, 1), Duration::from_secs(120));
        assert_eq!(pending_delay(r, 10), Duration::from_secs(3600));
        assert_eq!(
            pending_delay(Duration::from_secs(7200), 0),
            Duration::from_secs(7200),
            "never shorter than asked"
        );
    }

    #[test]
    fn renewal_is_due_after_renew_after() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_create_key(dir.path()).unwrap();
        let id = Identity {
            record: IdentityRecord {
                device_id: "d".into(),
                not_after: "2027-01-01T00:00:00Z".into(),
                renew_after: "2026-12-01T00:00:00Z".into(),
            },
            key,
            cert_pem: "CERT".into(),
            ca_pem: "CA".into(),
        };
        let before = OffsetDateTime::parse("2026-11-30T00:00:00Z", &Rfc3339).unwrap();
        let after = OffsetDateTime::parse("2026-12-02T00:00:00Z", &Rfc3339).unwrap();
        assert!(!id.needs_renewal(before));
        assert!(id.needs_renewal(after));
        id.store(dir.path()).unwrap();
        let back = Identity::load(dir.path()).unwrap().unwrap();
        assert_eq!(back.record, id.record);
        assert_eq!(back.cert_pem, "CERT");
    }
}
