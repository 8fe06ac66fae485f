//! The certificate authority that signs device certificates.
//!
//! By default Tender creates its own at first start (ECDSA P-256, 10 years, path length 0) in
//! `<data_dir>/ca/`, key readable only by the server's user. An operator may configure their own
//! CA certificate and key instead (`[ca]` in the config); Tender then never writes a CA.
//! Issuing device certificates is the device identity issue's work; this module guarantees a CA
//! exists and is loadable from the first start on.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use tender_core::Timestamp;

use crate::config::CaConfig;
use crate::datadir::{DataDir, DataDirError, write_atomic, write_secret};

/// Validity of a CA Tender creates.
const CA_VALIDITY_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Files(#[from] DataDirError),
    #[error(
        "the CA in {dir} is incomplete: {present} exists but {missing} does not; restore it from backup or remove both to create a new CA (devices enrolled with the old one will need to enroll again)"
    )]
    Incomplete {
        dir: PathBuf,
        present: &'static str,
        missing: &'static str,
    },
    #[error("CA key {path} is not a valid PEM private key: {why}")]
    BadKey { path: PathBuf, why: String },
    #[error("CA certificate {path} is not a PEM certificate")]
    BadCert { path: PathBuf },
    #[error("cannot create the CA: {0}")]
    Generate(String),
}

/// A loaded CA.
pub struct Ca {
    pub cert_pem: String,
    pub key: KeyPair,
    /// Where the certificate lives, for operators (devices need it as their trust anchor).
    pub cert_path: PathBuf,
    /// True when this start created the CA.
    pub created: bool,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert_path", &self.cert_path)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// Loads the configured CA, or the built-in one, creating it if this is the first start.
pub fn load_or_create(cfg: &CaConfig, data: &DataDir, now: Timestamp) -> Result<Ca, CaError> {
    if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
        return load(cert, key);
    }
    let dir = data.subdir("ca")?;
    let cert_path = dir.join("ca.crt");
    let key_path = dir.join("ca.key");
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => load(&cert_path, &key_path),
        (false, false) => create(&cert_path, &key_path, now),
        (true, false) => Err(CaError::Incomplete {
            dir,
            present: "ca.crt",
            missing: "ca.key",
        }),
        (false, true) => Err(CaError::Incomplete {
            dir,
            present: "ca.key",
            missing: "ca.crt",
        }),
    }
}

fn load(cert_path: &Path, key_path: &Path) -> Result<Ca, CaError> {
    let read = |p: &Path| {
        fs::read_to_string(p).map_err(|source| DataDirError::Read {
            path: p.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert_path)?;
    if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(CaError::BadCert {
            path: cert_path.to_owned(),
        });
    }
    let key = KeyPair::from_pem(&read(key_path)?).map_err(|e| CaError::BadKey {
        path: key_path.to_owned(),
        why: e.to_string(),
    })?;
    Ok(Ca {
        cert_pem,
        key,
        cert_path: cert_path.to_owned(),
        created: false,
    })
}

fn create(cert_path: &Path, key_path: &Path, now: Timestamp) -> Result<Ca, CaError> {
    let gen_err = |e: rcgen::Error| CaError::Generate(e.to_string());
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tender");
    dn.push(DnType::CommonName, "Tender device CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let start = now.to_datetime();
    params.not_before = start - time::Duration::minutes(5);
    params.not_after = start + time::Duration::days(CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key).map_err(gen_err)?;
    let cert_pem = cert.pem();
    // Key first: a crash between the two leaves "key without cert", reported as incomplete.
    write_secret(key_path, key.serialize_pem().as_bytes())?;
    write_atomic(cert_path, cert_pem.as_bytes(), 0o644)?;
    Ok(Ca {
        cert_pem,
        key,
        cert_path: cert_path.to_owned(),
        created: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn setup() -> (tempfile::TempDir, DataDir) {
        let t = tempfile::tempdir().unwrap();
        let dd = DataDir::prepare(t.path()).unwrap();
        (t, dd)
    }

    const NOW: Timestamp = Timestamp::from_unix_millis(1_790_000_000_000);

    #[test]
    fn created_once_then_loaded() {
        let (t, dd) = setup();
        let first = load_or_create(&CaConfig::default(), &dd, NOW).unwrap();
        assert!(first.created);
        let key_mode = fs::metadata(t.path().join("ca/ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(key_mode, 0o600);
        let again = load_or_create(&CaConfig::default(), &dd, NOW).unwrap();
        assert!(!again.created);
        assert_eq!(again.cert_pem, first.cert_pem);
        assert_eq!(again.key.serialize_pem(), first.key.serialize_pem());
    }

    #[test]
    fn half_a_ca_is_reported() {
        let (t, dd) = setup();
        load_or_create(&CaConfig::default(), &dd, NOW).unwrap();
        fs::remove_file(t.path().join("ca/ca.crt")).unwrap();
        let err = load_or_create(&CaConfig::default(), &dd, NOW).unwrap_err();
        assert!(matches!(err, CaError::Incomplete { .. }), "{err}");
    }

    #[test]
    fn an_operator_ca_is_used_as_is() {
        let (t, dd) = setup();
        let made = load_or_create(&CaConfig::default(), &dd, NOW).unwrap();
        let own = CaConfig {
            cert_file: Some(t.path().join("ca/ca.crt")),
            key_file: Some(t.path().join("ca/ca.key")),
        };
        let other_dir = setup();
        let loaded = load_or_create(&own, &other_dir.1, NOW).unwrap();
        assert!(!loaded.created);
        assert_eq!(loaded.cert_pem, made.cert_pem);
        assert!(
            !other_dir.0.path().join("ca").exists(),
            "no built-in CA is made"
        );
        fs::write(t.path().join("ca/ca.key"), "garbage").unwrap();
        assert!(matches!(
            load_or_create(&own, &other_dir.1, NOW),
            Err(CaError::BadKey { .. })
        ));
    }
}
