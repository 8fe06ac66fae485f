//! The certificate authority that signs device certificates.
//!
//! By default Tender creates its own at first start (ECDSA P-256, 10 years, path length 0) in
//! `<data_dir>/ca/`, key readable only by the server's user. An operator may configure their own
//! CA certificate and key instead (`[ca]` in the config); Tender then never writes a CA.
//! It signs device certificates from verified CSRs (only the key is taken from a CSR) and the
//! device listener's TLS server certificate.

use std::fs;
use std::path::{Path, PathBuf};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use sha2::{Digest, Sha256};
use tender_core::tenant::TenantSlug;
use tender_core::{DeviceId, Timestamp};
use x509_parser::prelude::FromDer;

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
    issuer: Issuer<'static, KeyPair>,
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
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|_| CaError::BadCert {
        path: cert_path.to_owned(),
    })?;
    Ok(Ca {
        cert_pem,
        issuer,
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
    let issuer = Issuer::new(params, key);
    Ok(Ca {
        cert_pem,
        issuer,
        cert_path: cert_path.to_owned(),
        created: true,
    })
}

/// Largest CSR accepted, PEM.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Why a certificate signing request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is larger than {MAX_CSR_BYTES} bytes")]
    TooLarge,
    #[error("not the expected PEM block (`CERTIFICATE REQUEST` for a CSR, `PUBLIC KEY` for a key)")]
    NotPem,
    #[error("the CSR cannot be parsed: {0}")]
    Malformed(String),
    #[error("the CSR's signature does not verify: it must be signed with the key it carries")]
    BadSignature,
    #[error("the key type is not accepted: use ECDSA P-256 (CSR signed with SHA-256) or Ed25519")]
    KeyType,
}

/// A verified CSR: its signature checks out, so the requester holds the key.
pub struct ParsedCsr {
    params: CertificateSigningRequestParams,
    /// SHA-256 (hex) of the SubjectPublicKeyInfo: the device's identity key.
    pub key_fingerprint: String,
}

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_ED25519: &str = "1.3.101.112";

/// Parses and verifies a PEM CSR. Only the public key is ever taken from it.
pub fn parse_csr(pem: &str) -> Result<ParsedCsr, CsrError> {
    let block = pem_block(pem, &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"])?;
    let der = block.contents();
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    let spki = &req.certification_request_info.subject_pki;
    check_key_type(spki)?;
    let key_fingerprint = hex(&Sha256::digest(spki.raw));
    let params =
        CertificateSigningRequestParams::from_der(&der.to_vec().into()).map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => CsrError::BadSignature,
            other => CsrError::Malformed(other.to_string()),
        })?;
    // rcgen takes the key's algorithm from the CSR's signature algorithm and re-encodes the key
    // from it; the certificate must carry exactly the key that was fingerprinted (a P-256 key
    // signed with SHA-384 would otherwise come back labelled as P-384).
    if rcgen::PublicKeyData::subject_public_key_info(&params.public_key) != spki.raw {
        return Err(CsrError::KeyType);
    }
    Ok(ParsedCsr {
        params,
        key_fingerprint,
    })
}

/// SHA-256 (hex) of a PEM public key (`PUBLIC KEY`, SubjectPublicKeyInfo): how an operator
/// preauthorizes a device by its key. Only ECDSA P-256 and Ed25519 keys are accepted.
pub fn public_key_fingerprint(pem: &str) -> Result<String, CsrError> {
    let block = pem_block(pem, &["PUBLIC KEY"])?;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(block.contents())
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    check_key_type(&spki)?;
    Ok(hex(&Sha256::digest(spki.raw)))
}

/// The one PEM block in `pem`, if its label is one of `labels` and the text is within
/// [`MAX_CSR_BYTES`].
fn pem_block(pem: &str, labels: &[&str]) -> Result<::pem::Pem, CsrError> {
    if pem.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge);
    }
    let block = ::pem::parse(pem).map_err(|_| CsrError::NotPem)?;
    if labels.contains(&block.tag()) {
        Ok(block)
    } else {
        Err(CsrError::NotPem)
    }
}

fn check_key_type(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(), CsrError> {
    let alg = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    if (alg == OID_EC_PUBLIC_KEY && curve.as_deref() == Some(OID_P256)) || alg == OID_ED25519 {
        Ok(())
    } else {
        Err(CsrError::KeyType)
    }
}

/// SHA-256 (hex) of a DER certificate's SubjectPublicKeyInfo, and its serial (hex): how a
/// connection's client certificate is matched to its record.
pub fn certificate_identity(der: &[u8]) -> Option<(String, String)> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some((
        hex(cert.raw_serial()),
        hex(&Sha256::digest(cert.tbs_certificate.subject_pki.raw)),
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A certificate Tender issued.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub pem: String,
    /// Hex, as [`certificate_identity`] reads it back.
    pub serial: String,
    pub key_fingerprint: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

/// A random positive serial of 16 bytes whose first byte is non-zero (so DER keeps all 16).
fn random_serial() -> Vec<u8> {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[0] = (b[0] & 0x7f).max(1);
    b.to_vec()
}

impl Ca {
    /// Signs a device certificate for the key in `csr`. Subject, validity, key usage and
    /// extended key usage are the server's choice; nothing but the public key comes from the
    /// CSR.
    pub fn sign_device(
        &self,
        csr: &ParsedCsr,
        device: DeviceId,
        tenant: &TenantSlug,
        now: Timestamp,
        validity_days: u32,
    ) -> Result<IssuedCertificate, CaError> {
        let mut req = CertificateSigningRequestParams {
            params: CertificateParams::default(),
            public_key: csr.params.public_key.clone(),
        };
        let p = &mut req.params;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, device.to_string());
        dn.push(DnType::OrganizationName, tenant.as_str());
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let start = now.to_datetime() - time::Duration::minutes(5);
        let end = now.to_datetime() + time::Duration::days(i64::from(validity_days));
        p.not_before = start;
        p.not_after = end;
        let serial = random_serial();
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        p.use_authority_key_identifier_extension = true;
        let cert = req
            .signed_by(&self.issuer)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        Ok(IssuedCertificate {
            pem: cert.pem(),
            serial: hex(&serial),
            key_fingerprint: csr.key_fingerprint.clone(),
            not_before: Timestamp::from_datetime(start),
            not_after: Timestamp::from_datetime(end),
        })
    }

    /// A fresh TLS server certificate and key for the device listener, valid for `names`
    /// (DNS names or IP addresses). Devices trust it through the CA, so it is made anew at every
    /// start and never stored.
    pub fn issue_server_certificate(
        &self,
        names: &[String],
        now: Timestamp,
    ) -> Result<(String, String), CaError> {
        let gen_err = |e: rcgen::Error| CaError::Generate(e.to_string());
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut p = CertificateParams::new(names.to_vec()).map_err(gen_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("tender"),
        );
        dn.push(DnType::OrganizationName, "Tender");
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.not_before = now.to_datetime() - time::Duration::minutes(5);
        p.not_after = now.to_datetime() + time::Duration::days(365);
        p.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
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
        assert_eq!(
            again.issuer.key().serialize_pem(),
            first.issuer.key().serialize_pem()
        );
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

    fn csr_for(key: &KeyPair, cn: &str) -> String {
        let mut p = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.serialize_request(key).unwrap().pem().unwrap()
    }

    #[test]
    fn device_certificates_take_only_the_key_from_the_csr() {
        let (_t, dd) = setup();
        let ca = load_or_create(&CaConfig::default(), &dd, NOW).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = parse_csr(&csr_for(&key, "i-want-to-be-admin")).unwrap();
        let device = DeviceId::from_uuid(uuid::Uuid::now_v7());
        let issued = ca
            .sign_device(&csr, device, &TenantSlug::default_tenant(), NOW, 90)
            .unwrap();
        let der = ::pem::parse(&issued.pem).unwrap().into_contents();
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(cn, device.to_string());
        assert!(!cert.is_ca());
        assert!(
            cert.subject_alternative_name().unwrap().is_none(),
            "no SAN copied"
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / 86_400;
        assert_eq!(days, 90);
        // The serial and key read back from the certificate match what was recorded.
        let (serial, fp) = certificate_identity(&der).unwrap();
        assert_eq!(serial, issued.serial);
        assert_eq!(fp, csr.key_fingerprint);
        assert_eq!(issued.serial.len(), 32);
    }

    #[test]
    fn bad_csrs_are_refused() {
        assert_eq!(parse_csr("hello").err(), Some(CsrError::NotPem));
        assert_eq!(
            parse_csr(&"x".repeat(MAX_CSR_BYTES + 1)).err(),
            Some(CsrError::TooLarge)
        );
        let not_csr =
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
        assert!(matches!(parse_csr(not_csr), Err(CsrError::Malformed(_))));
        // A certificate is not a CSR.
        let (_t, dd) = setup();
        let ca = load_or_create(&CaConfig::default(), &dd, NOW).unwrap();
        assert_eq!(parse_csr(&ca.cert_pem).err(), Some(CsrError::NotPem));
        // Keys other than P-256 and Ed25519 are refused.
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert_eq!(
            parse_csr(&csr_for(&p384, "x")).err(),
            Some(CsrError::KeyType)
        );
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert!(parse_csr(&csr_for(&ed, "x")).is_ok());
    }

    /// A P-256 key in a CSR signed with SHA-384 would come back from rcgen labelled P-384: such
    /// CSRs are refused rather than issued a certificate the device cannot use.
    #[test]
    fn a_p256_csr_signed_with_sha384_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let csr = dir.path().join("r.pem");
        let openssl = |args: &str| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("openssl {args} 2>/dev/null"))
                .status()
                .is_ok_and(|s| s.success())
        };
        let (k, c) = (key.display(), csr.display());
        // CI installs openssl; the test needs it to build a CSR rcgen cannot make.
        assert!(openssl(&format!(
            "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {k}"
        )));
        assert!(openssl(&format!(
            "req -new -sha384 -key {k} -subj /CN=x -out {c}"
        )));
        assert_eq!(
            parse_csr(&fs::read_to_string(&csr).unwrap()).err(),
            Some(CsrError::KeyType)
        );
        // The same key signed with SHA-256 is fine, and its certificate carries that key.
        assert!(openssl(&format!(
            "req -new -sha256 -key {k} -subj /CN=x -out {c}"
        )));
        let parsed = parse_csr(&fs::read_to_string(&csr).unwrap()).unwrap();
        let (_t, dd) = setup();
        let ca = load_or_create(&CaConfig::default(), &dd, NOW).unwrap();
        let device = DeviceId::from_uuid(uuid::Uuid::now_v7());
        let issued = ca
            .sign_device(&parsed, device, &TenantSlug::default_tenant(), NOW, 30)
            .unwrap();
        let der = ::pem::parse(&issued.pem).unwrap().into_contents();
        assert_eq!(
            certificate_identity(&der).unwrap().1,
            parsed.key_fingerprint
        );
    }

    #[test]
    fn a_tampered_csr_fails_its_signature() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let pem = csr_for(&key, "device");
        let mut der = ::pem::parse(&pem).unwrap().into_contents();
        // Flip a byte inside the subject (well before the signature).
        let at = der.windows(6).position(|w| w == b"device").unwrap();
        der[at] ^= 0x01;
        let tampered = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der));
        assert_eq!(parse_csr(&tampered).err(), Some(CsrError::BadSignature));
    }

    /// A small deterministic mutation fuzzer (the coverage-guided targets are in `fuzz/`):
    /// bit flips, truncations and splices of a valid CSR and public key, through the PEM and
    /// DER layers. Nothing may panic; anything that is not a valid request must be refused.
    #[test]
    fn mutated_csrs_and_keys_never_panic() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr_der = ::pem::parse(csr_for(&key, "device"))
            .unwrap()
            .into_contents();
        let pub_der = ::pem::parse(key.public_key_pem()).unwrap().into_contents();
        // xorshift64*: deterministic, no dependency.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut accepted = 0;
        for i in 0..20_000u32 {
            let (base, tag) = if i % 2 == 0 {
                (&csr_der, "CERTIFICATE REQUEST")
            } else {
                (&pub_der, "PUBLIC KEY")
            };
            let mut d = base.clone();
            match next() % 4 {
                0 => {
                    for _ in 0..=(next() % 4) {
                        let at = (next() as usize) % d.len();
                        d[at] ^= 1 << (next() % 8);
                    }
                }
                1 => d.truncate((next() as usize) % d.len()),
                2 => {
                    let at = (next() as usize) % d.len();
                    let len = (next() as usize) % 64;
                    d.splice(at..at, (0..len).map(|_| next() as u8));
                }
                _ => {
                    let at = (next() as usize) % d.len();
                    d[at] = [0x00, 0x7f, 0x80, 0xff][(next() % 4) as usize];
                }
            }
            let pem = ::pem::encode(&::pem::Pem::new(tag, d));
            let ok = if tag == "PUBLIC KEY" {
                public_key_fingerprint(&pem).is_ok()
            } else {
                parse_csr(&pem).is_ok()
            };
            accepted += usize::from(ok);
        }
        // Some mutations land in places that do not matter (e.g. the CN's text is covered by
        // the signature, so those must fail; padding bytes may not): most must be refused.
        assert!(
            accepted < 10_000,
            "{accepted} of 20000 mutated inputs accepted"
        );
    }

    #[test]
    fn server_certificates_name_the_hosts() {
        let (_t, dd) = setup();
        let ca = load_or_create(&CaConfig::default(), &dd, NOW).unwrap();
        let (cert, key) = ca
            .issue_server_certificate(&["localhost".into(), "127.0.0.1".into()], NOW)
            .unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let der = ::pem::parse(&cert).unwrap().into_contents();
        let (_, c) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
        let san = c.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(san.general_names.len(), 2);
    }

    #[test]
    fn operator_ca_garbage_is_refused() {
        let (t, dd) = setup();
        load_or_create(&CaConfig::default(), &dd, NOW).unwrap();
        let own = CaConfig {
            cert_file: Some(t.path().join("ca/ca.crt")),
            key_file: Some(t.path().join("ca/ca.key")),
        };
        let other_dir = setup();
        fs::write(t.path().join("ca/ca.key"), "garbage").unwrap();
        assert!(matches!(
            load_or_create(&own, &other_dir.1, NOW),
            Err(CaError::BadKey { .. })
        ));
    }
}
