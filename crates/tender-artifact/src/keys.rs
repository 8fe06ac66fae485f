//! Ed25519 signing keys and the signatures over a manifest.
//!
//! Keys are stored as PEM: PKCS#8 (`BEGIN PRIVATE KEY`) for signing keys and SubjectPublicKeyInfo
//! (`BEGIN PUBLIC KEY`) for public keys, the files `openssl genpkey -algorithm ed25519` and
//! `openssl pkey -pubout` write. A signature covers the exact bytes of `manifest.json`, so a
//! manifest can also be signed with `openssl pkeyutl -sign -rawin` on an offline machine.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer as _, Verifier as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest `manifest.sig` accepted, in bytes.
pub const MAX_SIGNATURES_BYTES: usize = 64 << 10;
/// Most signatures on one manifest.
pub const MAX_SIGNATURES: usize = 16;

/// A key problem.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not a PEM Ed25519 key of the expected kind.
    #[error("not an Ed25519 {kind} in PEM ({detail})")]
    Pem {
        /// "private key" or "public key".
        kind: &'static str,
        /// The decoder's message.
        detail: String,
    },
}

/// The short name of a public key: the first 8 bytes of the SHA-256 of its 32 raw bytes, hex.
pub fn key_id_of(raw: &[u8; 32]) -> String {
    let digest = Sha256::digest(raw);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A private signing key. Its memory is wiped when dropped.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// A key from 32 random bytes (the caller supplies the randomness).
    pub fn from_seed(seed: &[u8; 32]) -> SigningKey {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// Reads a PKCS#8 PEM private key.
    pub fn from_pem(pem: &str) -> Result<SigningKey, KeyError> {
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(SigningKey)
            .map_err(|e| KeyError::Pem {
                kind: "private key",
                detail: e.to_string(),
            })
    }

    /// The PKCS#8 PEM encoding (wiped from memory when dropped).
    pub fn to_pem(&self) -> Result<zeroize::Zeroizing<String>, KeyError> {
        self.0
            .to_pkcs8_pem(Default::default())
            .map_err(|e| KeyError::Pem {
                kind: "private key",
                detail: e.to_string(),
            })
    }

    /// Its public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs a manifest's bytes.
    pub fn sign(&self, manifest: &[u8]) -> SignatureEntry {
        let signature = self.0.sign(manifest);
        SignatureEntry {
            key_id: self.public_key().key_id(),
            algorithm: Algorithm::Ed25519,
            signature: STANDARD.encode(signature.to_bytes()),
        }
    }
}

/// A public key that verifies signatures.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl PublicKey {
    /// Reads a SubjectPublicKeyInfo PEM public key.
    pub fn from_pem(pem: &str) -> Result<PublicKey, KeyError> {
        ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
            .map(PublicKey)
            .map_err(|e| KeyError::Pem {
                kind: "public key",
                detail: e.to_string(),
            })
    }

    /// The PEM encoding.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.0
            .to_public_key_pem(Default::default())
            .map_err(|e| KeyError::Pem {
                kind: "public key",
                detail: e.to_string(),
            })
    }

    /// Its key id (see [`key_id_of`]).
    pub fn key_id(&self) -> String {
        key_id_of(self.0.as_bytes())
    }

    /// Whether `signature` (64 bytes) is this key's signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(bytes) = <[u8; 64]>::try_from(signature) else {
            return false;
        };
        self.0
            .verify(message, &ed25519_dalek::Signature::from_bytes(&bytes))
            .is_ok()
    }
}

/// A signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Ed25519 (RFC 8032).
    Ed25519,
}

/// One signature in `manifest.sig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    /// The signer's key id.
    pub key_id: String,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The signature, standard base64.
    pub signature: String,
}

/// The content of `manifest.sig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signatures {
    /// The signatures, at most one per key.
    pub signatures: Vec<SignatureEntry>,
}

/// Why signatures were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// `manifest.sig` is unreadable.
    #[error("manifest.sig is not valid: {0}")]
    Syntax(String),
    /// Signing is required and no trusted key signed.
    #[error("the artifact is not signed by a trusted key{}", if .0.is_empty() { " (it has no signature)".to_string() } else { format!(" (signed by unknown keys {})", .0.join(", ")) })]
    Untrusted(Vec<String>),
    /// A trusted key's signature does not match the manifest: the artifact was altered.
    #[error(
        "the signature by key {0} does not match the manifest: the artifact was altered after signing"
    )]
    Invalid(String),
}

impl Signatures {
    /// Parses `manifest.sig`.
    pub fn parse(bytes: &[u8]) -> Result<Signatures, SignatureError> {
        if bytes.len() > MAX_SIGNATURES_BYTES {
            return Err(SignatureError::Syntax(format!(
                "{} bytes, more than the {MAX_SIGNATURES_BYTES} allowed",
                bytes.len()
            )));
        }
        let sigs: Signatures =
            serde_json::from_slice(bytes).map_err(|e| SignatureError::Syntax(e.to_string()))?;
        if sigs.signatures.len() > MAX_SIGNATURES {
            return Err(SignatureError::Syntax(format!(
                "at most {MAX_SIGNATURES} signatures"
            )));
        }
        Ok(sigs)
    }

    /// The bytes of `manifest.sig`.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising cannot fail: plain strings only.
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Adds (or replaces) the signature of `key` over `manifest`.
    pub fn add(&mut self, key: &SigningKey, manifest: &[u8]) {
        let entry = key.sign(manifest);
        self.signatures.retain(|s| s.key_id != entry.key_id);
        self.signatures.push(entry);
    }

    /// Checks the signatures over `manifest` against `trusted` keys.
    ///
    /// A signature by a trusted key that does not verify is always an error (the manifest was
    /// altered). Signatures by keys not in `trusted` are listed, never trusted. When `required`,
    /// at least one trusted key must have signed.
    pub fn check(
        &self,
        manifest: &[u8],
        trusted: &[PublicKey],
        required: bool,
    ) -> Result<SignatureCheck, SignatureError> {
        let mut check = SignatureCheck::default();
        for entry in &self.signatures {
            match trusted.iter().find(|k| k.key_id() == entry.key_id) {
                Some(key) => {
                    let valid = STANDARD
                        .decode(&entry.signature)
                        .is_ok_and(|sig| key.verify(manifest, &sig));
                    if !valid {
                        return Err(SignatureError::Invalid(entry.key_id.clone()));
                    }
                    check.trusted.push(entry.key_id.clone());
                }
                None => check.unknown.push(entry.key_id.clone()),
            }
        }
        if required && check.trusted.is_empty() {
            return Err(SignatureError::Untrusted(check.unknown));
        }
        Ok(check)
    }
}

/// The outcome of a signature check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureCheck {
    /// Key ids of trusted keys whose signatures verified.
    pub trusted: Vec<String>,
    /// Key ids of signers that are not trusted (not verified).
    pub unknown: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_seed(&[n; 32])
    }

    #[test]
    fn pem_round_trip_and_key_id() {
        let k = key(1);
        let pem = k.to_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(back.public_key(), k.public_key());
        let public = k.public_key().to_pem().unwrap();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(PublicKey::from_pem(&public).unwrap(), k.public_key());
        assert_eq!(k.public_key().key_id().len(), 16);
        assert!(PublicKey::from_pem(&pem).is_err());
        assert!(SigningKey::from_pem("garbage").is_err());
    }

    #[test]
    fn checks_trust_and_tampering() {
        let manifest = b"{\"a\":1}\n";
        let mut sigs = Signatures::default();
        sigs.add(&key(1), manifest);
        sigs.add(&key(2), manifest);
        sigs.add(&key(1), manifest);
        assert_eq!(sigs.signatures.len(), 2);
        let sigs = Signatures::parse(&sigs.to_bytes()).unwrap();

        let trusted = [key(2).public_key()];
        let ok = sigs.check(manifest, &trusted, true).unwrap();
        assert_eq!(ok.trusted, vec![key(2).public_key().key_id()]);
        assert_eq!(ok.unknown, vec![key(1).public_key().key_id()]);

        assert_eq!(
            sigs.check(b"{\"a\":2}\n", &trusted, true),
            Err(SignatureError::Invalid(key(2).public_key().key_id()))
        );
        assert!(matches!(
            sigs.check(manifest, &[key(3).public_key()], true),
            Err(SignatureError::Untrusted(ids)) if ids.len() == 2
        ));
        assert!(sigs.check(manifest, &[key(3).public_key()], false).is_ok());
        assert!(matches!(
            Signatures::default().check(manifest, &trusted, true),
            Err(SignatureError::Untrusted(ids)) if ids.is_empty()
        ));
    }

    #[test]
    fn a_mangled_signature_is_invalid_not_a_panic() {
        let manifest = b"m";
        let mut sigs = Signatures::default();
        sigs.add(&key(1), manifest);
        sigs.signatures[0].signature = "!!".into();
        assert!(matches!(
            sigs.check(manifest, &[key(1).public_key()], false),
            Err(SignatureError::Invalid(_))
        ));
        sigs.signatures[0].signature = STANDARD.encode([0u8; 12]);
        assert!(matches!(
            sigs.check(manifest, &[key(1).public_key()], false),
            Err(SignatureError::Invalid(_))
        ));
    }
}
