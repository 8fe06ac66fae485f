//! The Tender artifact format (documented in `docs/artifacts.md`).
//!
//! An artifact is a POSIX tar archive whose entries come in a fixed order:
//!
//! 1. `manifest.json` — the [`Manifest`]: name, version, compatible device types,
//!    depends/provides, payload type, and the size and SHA-256 of every script and payload;
//! 2. `manifest.sig` (optional) — Ed25519 signatures over the exact bytes of `manifest.json`;
//! 3. `scripts/NAME` for every script, in manifest order;
//! 4. `payloads/NAME` for every payload, in manifest order (optionally gzip-compressed).
//!
//! Because the header comes first and lists every hash, a device checks the signature before
//! it reads any content and hashes the content on its way to the installer: nothing is held in
//! memory, nothing is stored twice. Every size has an explicit limit.

#![forbid(unsafe_code)]

pub mod keys;
pub mod manifest;
pub mod read;
pub mod version;
pub mod write;

pub use keys::{PublicKey, SignatureCheck, SignatureError, Signatures, SigningKey, key_id_of};
pub use manifest::{
    Compression, FORMAT, Incompatible, Manifest, ManifestError, Payload, Script, ScriptState,
};
pub use read::{ArtifactError, ContentProblem, Discard, Header, Sink, Trust, read, read_header};
pub use version::compare_versions;
pub use write::{Described, describe, rewrite_signatures, write};

/// Path of the manifest in the archive.
pub const MANIFEST_PATH: &str = "manifest.json";
/// Path of the signatures in the archive.
pub const SIGNATURES_PATH: &str = "manifest.sig";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::{self, Read};

    fn key(n: u8) -> SigningKey {
        SigningKey::from_seed(&[n; 32])
    }

    struct Content {
        payloads: Vec<(String, Vec<u8>, Compression)>,
        scripts: Vec<(String, Vec<u8>)>,
    }

    fn build(content: &Content, signer: Option<&SigningKey>) -> Vec<u8> {
        let mut stored = BTreeMap::new();
        let mut payloads = vec![];
        for (name, data, compression) in &content.payloads {
            let mut out = Vec::new();
            let d = describe(
                &data[..],
                *compression,
                Some(&mut out as &mut dyn io::Write),
            )
            .unwrap();
            if *compression == Compression::None {
                out = data.clone();
            }
            stored.insert(format!("payloads/{name}"), out);
            payloads.push(Payload {
                name: name.clone(),
                size: d.size,
                sha256: d.sha256,
                compression: *compression,
                stored_size: d.stored_size,
                meta: Default::default(),
            });
        }
        let mut scripts = vec![];
        for (name, data) in &content.scripts {
            let d = describe(&data[..], Compression::None, None).unwrap();
            stored.insert(format!("scripts/{name}"), data.clone());
            scripts.push(Script {
                name: name.clone(),
                state: ScriptState::BeforeInstall,
                size: d.size,
                sha256: d.sha256,
            });
        }
        let manifest = Manifest {
            format: FORMAT.into(),
            name: "app".into(),
            version: "2.0".into(),
            compatible: vec!["gw".into()],
            depends: BTreeMap::new(),
            provides: BTreeMap::new(),
            payload_type: "file".into(),
            payloads,
            scripts,
            meta: Default::default(),
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

    fn sample() -> Content {
        Content {
            payloads: vec![
                ("a.bin".into(), b"hello world".to_vec(), Compression::None),
                ("b.bin".into(), vec![7u8; 100_000], Compression::Gzip),
            ],
            scripts: vec![("check.sh".into(), b"#!/bin/sh\ntrue\n".to_vec())],
        }
    }

    #[derive(Default)]
    struct Collect {
        seen: Vec<(String, Vec<u8>)>,
        refuse: bool,
    }

    impl Sink for Collect {
        fn manifest(&mut self, _: &Header) -> io::Result<()> {
            if self.refuse {
                return Err(io::Error::other("incompatible"));
            }
            Ok(())
        }
        fn script(&mut self, s: &Script, data: &mut dyn Read) -> io::Result<()> {
            let mut v = vec![];
            data.read_to_end(&mut v)?;
            self.seen.push((s.name.clone(), v));
            Ok(())
        }
        fn payload(&mut self, p: &Payload, data: &mut dyn Read) -> io::Result<()> {
            // Reads only a little: the reader checks the rest itself.
            let mut v = vec![0u8; 5.min(p.size as usize)];
            data.read_exact(&mut v)?;
            self.seen.push((p.name.clone(), v));
            Ok(())
        }
    }

    fn trusted(keys: &[PublicKey]) -> Trust<'_> {
        Trust {
            keys,
            require_signature: true,
        }
    }

    #[test]
    fn round_trip_signed_with_scripts_and_gzip() {
        let bytes = build(&sample(), Some(&key(1)));
        let keys = [key(1).public_key()];
        let mut sink = Collect::default();
        let header = read(&bytes[..], trusted(&keys), &mut sink).unwrap();
        assert_eq!(header.check.trusted, vec![keys[0].key_id()]);
        assert_eq!(
            sink.seen,
            vec![
                ("check.sh".to_string(), b"#!/bin/sh\ntrue\n".to_vec()),
                ("a.bin".to_string(), b"hello".to_vec()),
                ("b.bin".to_string(), vec![7u8; 5]),
            ]
        );
        let (manifest, _, sigs) = read_header(&bytes[..]).unwrap();
        assert_eq!(manifest.payloads.len(), 2);
        assert!(manifest.payloads[1].stored_size() < 1000);
        assert_eq!(sigs.signatures.len(), 1);
    }

    #[test]
    fn signing_requirements() {
        let unsigned = build(&sample(), None);
        let keys = [key(1).public_key()];
        let err = read(&unsigned[..], trusted(&keys), &mut Discard).unwrap_err();
        assert!(matches!(
            err,
            ArtifactError::Signature(SignatureError::Untrusted(_))
        ));
        read(
            &unsigned[..],
            Trust {
                keys: &keys,
                require_signature: false,
            },
            &mut Discard,
        )
        .unwrap();
        let foreign = build(&sample(), Some(&key(2)));
        let err = read(&foreign[..], trusted(&keys), &mut Discard).unwrap_err();
        assert!(err.to_string().contains("unknown keys"), "{err}");

        // Sign afterwards, by rewriting the signatures, with a second key for rotation.
        let signed = rewrite_signatures(&unsigned[..], Vec::new(), |_, bytes, mut sigs| {
            sigs.add(&key(1), bytes);
            sigs.add(&key(3), bytes);
            Ok(sigs)
        })
        .unwrap();
        let header = read(&signed[..], trusted(&[key(3).public_key()]), &mut Discard).unwrap();
        assert_eq!(header.check.unknown, vec![keys[0].key_id()]);
    }

    fn replace(haystack: &mut [u8], needle: &[u8], with: &[u8]) {
        let at = haystack
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        haystack[at..at + with.len()].copy_from_slice(with);
    }

    #[test]
    fn tampering_is_caught() {
        let keys = [key(1).public_key()];
        let mut bytes = build(&sample(), Some(&key(1)));
        replace(&mut bytes, b"hello world", b"HELLO world");
        let err = read(&bytes[..], trusted(&keys), &mut Collect::default()).unwrap_err();
        assert!(
            matches!(&err, ArtifactError::Content { name, problem: ContentProblem::Hash { .. }, .. } if name == "a.bin"),
            "{err}"
        );

        let mut bytes = build(&sample(), Some(&key(1)));
        replace(&mut bytes, b"\"version\": \"2.0\"", b"\"version\": \"9.0\"");
        let err = read(&bytes[..], trusted(&keys), &mut Discard).unwrap_err();
        assert!(matches!(
            err,
            ArtifactError::Signature(SignatureError::Invalid(_))
        ));

        let mut bytes = build(&sample(), Some(&key(1)));
        replace(&mut bytes, b"true\n", b"rm -r");
        let err = read(&bytes[..], trusted(&keys), &mut Discard).unwrap_err();
        assert!(err.to_string().contains("script \"check.sh\""), "{err}");
    }

    #[test]
    fn truncation_anywhere_is_an_error_not_a_panic() {
        let bytes = build(&sample(), Some(&key(1)));
        let keys = [key(1).public_key()];
        // Only the end-of-archive blocks (and the last entry's padding) may go missing: all
        // content has been read and checked by then.
        let content_end = bytes.len() - 1024 - 511;
        for cut in (0..bytes.len()).step_by(97) {
            let accepted = read(&bytes[..cut], trusted(&keys), &mut Collect::default()).is_ok();
            assert!(!accepted || cut >= content_end, "accepted a cut at {cut}");
        }
    }

    #[test]
    fn the_sink_can_refuse_and_its_errors_are_its_own() {
        let bytes = build(&sample(), None);
        let open = Trust {
            keys: &[],
            require_signature: false,
        };
        let mut refuse = Collect {
            refuse: true,
            ..Default::default()
        };
        assert!(matches!(
            read(&bytes[..], open, &mut refuse).unwrap_err(),
            ArtifactError::Refused(_)
        ));
        struct Full;
        impl Sink for Full {
            fn manifest(&mut self, _: &Header) -> io::Result<()> {
                Ok(())
            }
            fn script(&mut self, _: &Script, _: &mut dyn Read) -> io::Result<()> {
                Ok(())
            }
            fn payload(&mut self, _: &Payload, _: &mut dyn Read) -> io::Result<()> {
                Err(io::Error::other("no space left"))
            }
        }
        assert!(matches!(
            read(&bytes[..], open, &mut Full).unwrap_err(),
            ArtifactError::Sink { name, .. } if name == "a.bin"
        ));
    }

    /// A gzip payload that inflates past its declared size is stopped at the first extra byte.
    #[test]
    fn a_decompression_bomb_stops_at_the_declared_size() {
        let bomb = vec![0u8; 10 << 20];
        let mut gz = Vec::new();
        let real = describe(
            &bomb[..],
            Compression::Gzip,
            Some(&mut gz as &mut dyn io::Write),
        )
        .unwrap();
        let manifest = Manifest {
            format: FORMAT.into(),
            name: "app".into(),
            version: "1".into(),
            compatible: vec!["gw".into()],
            depends: BTreeMap::new(),
            provides: BTreeMap::new(),
            payload_type: "file".into(),
            payloads: vec![Payload {
                name: "p".into(),
                size: 1000,
                sha256: real.sha256,
                compression: Compression::Gzip,
                stored_size: real.stored_size,
                meta: Default::default(),
            }],
            scripts: vec![],
            meta: Default::default(),
            created_at: None,
        };
        let bytes = write(Vec::new(), &manifest, &Signatures::default(), |_| {
            Ok(Box::new(io::Cursor::new(gz.clone())))
        })
        .unwrap();
        struct CountingSink(u64);
        impl Sink for CountingSink {
            fn manifest(&mut self, _: &Header) -> io::Result<()> {
                Ok(())
            }
            fn script(&mut self, _: &Script, _: &mut dyn Read) -> io::Result<()> {
                Ok(())
            }
            fn payload(&mut self, _: &Payload, data: &mut dyn Read) -> io::Result<()> {
                self.0 = io::copy(data, &mut io::sink())?;
                Ok(())
            }
        }
        let mut sink = CountingSink(0);
        let err = read(
            &bytes[..],
            Trust {
                keys: &[],
                require_signature: false,
            },
            &mut sink,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                ArtifactError::Content {
                    problem: ContentProblem::TooLong(1000),
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn layout_errors() {
        let open = Trust {
            keys: &[],
            require_signature: false,
        };
        // An extra entry after the last payload.
        let mut bytes = build(&sample(), None);
        let end = bytes.len() - 1024;
        bytes.truncate(end);
        let mut b = tar::Builder::new(bytes);
        let mut h = tar::Header::new_ustar();
        h.set_path("payloads/extra").unwrap();
        h.set_size(1);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let err = read(&bytes[..], open, &mut Discard).unwrap_err();
        assert!(err.to_string().contains("unexpected entry"), "{err}");

        // Not a tar at all; an empty one; one that starts with something else.
        assert!(read(&b"hello"[..], open, &mut Discard).is_err());
        assert!(read(&[0u8; 1024][..], open, &mut Discard).is_err());
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_path("../../etc/passwd").ok();
        h.set_size(1);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let err = read(&b.into_inner().unwrap()[..], open, &mut Discard).unwrap_err();
        assert!(
            matches!(err, ArtifactError::Layout(_) | ArtifactError::Io(_)),
            "{err}"
        );
    }

    /// Seeded mutations of a valid artifact: every one ends in a header or an error, and no
    /// sink is ever handed more bytes than the manifest declares. (The `artifact` fuzz target
    /// does the same with coverage guidance.)
    #[test]
    fn mutated_artifacts_never_panic() {
        struct Bounded;
        impl Sink for Bounded {
            fn manifest(&mut self, _: &Header) -> io::Result<()> {
                Ok(())
            }
            fn script(&mut self, s: &Script, data: &mut dyn Read) -> io::Result<()> {
                assert!(io::copy(data, &mut io::sink())? <= s.size);
                Ok(())
            }
            fn payload(&mut self, p: &Payload, data: &mut dyn Read) -> io::Result<()> {
                assert!(io::copy(data, &mut io::sink())? <= p.size);
                Ok(())
            }
        }
        let original = build(&sample(), Some(&key(1)));
        let keys = [key(1).public_key()];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..1000 {
            let mut bytes = original.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % bytes.len() as u64) as usize;
                match next() % 3 {
                    0 => bytes[at] = next() as u8,
                    1 => bytes[at] ^= 1 << (next() % 8),
                    _ => bytes.truncate(at),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            for require_signature in [true, false] {
                let trust = Trust {
                    keys: &keys,
                    require_signature,
                };
                let _ = read(&bytes[..], trust, &mut Bounded);
            }
            let _ = read_header(&bytes[..]);
        }
    }
}
