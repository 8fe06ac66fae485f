//! Reading an artifact as a stream: the header is checked before any content is read, and
//! every byte of content is counted and hashed on its way to the installer.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use crate::keys::{PublicKey, SignatureCheck, SignatureError, Signatures};
use crate::manifest::{Compression, MAX_MANIFEST_BYTES, Manifest, ManifestError, Payload, Script};
use crate::{MANIFEST_PATH, SIGNATURES_PATH};

/// What went wrong with an artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Reading the artifact itself failed (a file or network error).
    #[error("reading the artifact failed: {0}")]
    Io(#[from] io::Error),
    /// The archive is not laid out as an artifact.
    #[error("not a valid Tender artifact: {0}")]
    Layout(String),
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The signatures are missing, untrusted or do not verify.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A payload or script does not match the manifest.
    #[error("{kind} {name:?}: {problem}")]
    Content {
        /// "payload" or "script".
        kind: &'static str,
        /// Its name.
        name: String,
        /// What does not match.
        problem: ContentProblem,
    },
    /// The reader's [`Sink`] refused the artifact after seeing its manifest.
    #[error("refused: {0}")]
    Refused(io::Error),
    /// The reader's [`Sink`] failed while taking in content (e.g. a full disk).
    #[error("installing {kind} {name:?} failed: {source}")]
    Sink {
        /// "payload" or "script".
        kind: &'static str,
        /// Its name.
        name: String,
        /// The sink's error.
        source: io::Error,
    },
}

/// A mismatch between content and manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentProblem {
    /// More bytes than the manifest declares.
    #[error("longer than the {0} bytes the manifest declares")]
    TooLong(u64),
    /// Fewer bytes than the manifest declares.
    #[error("{actual} bytes, the manifest declares {expected}")]
    TooShort {
        /// Declared.
        expected: u64,
        /// Found.
        actual: u64,
    },
    /// The SHA-256 differs.
    #[error("SHA-256 is {actual}, the manifest says {expected}: the content was altered")]
    Hash {
        /// Declared.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// The compressed stream is corrupt.
    #[error("cannot be decompressed: {0}")]
    Decompress(String),
}

/// A checked artifact header.
#[derive(Debug, Clone)]
pub struct Header {
    /// The parsed manifest.
    pub manifest: Manifest,
    /// Its exact bytes (what the signatures cover).
    pub manifest_bytes: Vec<u8>,
    /// The signatures (empty when the artifact has none).
    pub signatures: Signatures,
    /// Which of them verified against trusted keys.
    pub check: SignatureCheck,
}

/// Whose signatures to trust.
#[derive(Debug, Clone, Copy)]
pub struct Trust<'a> {
    /// Trusted public keys.
    pub keys: &'a [PublicKey],
    /// Whether at least one of them must have signed.
    pub require_signature: bool,
}

/// Receives an artifact's content while it is read.
///
/// Content handed to a sink is unverified until [`read`] returns `Ok`: a sink writes it where
/// it does no harm (a temporary file, the inactive slot) and makes it live only afterwards.
pub trait Sink {
    /// Called once the manifest is valid and its signatures checked, before any content.
    /// An error refuses the artifact (e.g. it is not compatible with this device).
    fn manifest(&mut self, header: &Header) -> io::Result<()>;
    /// Takes one script. Whatever it leaves unread is read and checked after it returns.
    fn script(&mut self, script: &Script, data: &mut dyn Read) -> io::Result<()>;
    /// Takes one payload, uncompressed. Whatever it leaves unread is read and checked after.
    fn payload(&mut self, payload: &Payload, data: &mut dyn Read) -> io::Result<()>;
}

/// A sink that keeps nothing: reading into it checks the whole artifact.
#[derive(Debug, Default)]
pub struct Discard;

impl Sink for Discard {
    fn manifest(&mut self, _: &Header) -> io::Result<()> {
        Ok(())
    }
    fn script(&mut self, _: &Script, _: &mut dyn Read) -> io::Result<()> {
        Ok(())
    }
    fn payload(&mut self, _: &Payload, _: &mut dyn Read) -> io::Result<()> {
        Ok(())
    }
}

fn layout(msg: impl Into<String>) -> ArtifactError {
    ArtifactError::Layout(msg.into())
}

/// An error from walking the archive: a damaged or truncated archive is a layout problem; any
/// other kind is the source's own (a file or network error).
fn archive_err(e: io::Error) -> ArtifactError {
    match e.kind() {
        io::ErrorKind::Other | io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
            layout(format!("the archive is damaged ({e})"))
        }
        io::ErrorKind::UnexpectedEof => layout("the archive ends early: it is truncated"),
        _ => ArtifactError::Io(e),
    }
}

fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, ArtifactError> {
    let kind = entry.header().entry_type();
    let path = entry
        .path_bytes()
        .into_owned()
        .into_iter()
        .map(char::from)
        .collect::<String>();
    if kind != tar::EntryType::Regular {
        return Err(layout(format!(
            "entry {path:?} is not a regular file ({kind:?})"
        )));
    }
    Ok(path)
}

fn read_small<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    path: &str,
    max: usize,
) -> Result<Vec<u8>, ArtifactError> {
    let size = entry.header().size()?;
    if size > max as u64 {
        return Err(layout(format!(
            "{path} is {size} bytes, more than the {max} allowed"
        )));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    entry.read_to_end(&mut bytes).map_err(archive_err)?;
    Ok(bytes)
}

/// The manifest's bytes, the signatures' bytes, and the entry after them.
type RawHeader<'a, R> = (Vec<u8>, Option<Vec<u8>>, Option<tar::Entry<'a, R>>);

/// Reads the unchecked header (manifest and signatures) from the start of an archive's entries.
/// Returns the first entry after it, if any.
fn header_entries<'a, R: Read + 'a>(
    entries: &mut tar::Entries<'a, R>,
) -> Result<RawHeader<'a, R>, ArtifactError> {
    let mut first = entries
        .next()
        .ok_or_else(|| layout("the archive is empty"))?
        .map_err(archive_err)?;
    let path = entry_path(&first)?;
    if path != MANIFEST_PATH {
        return Err(layout(format!(
            "the first entry is {path:?}, expected {MANIFEST_PATH}"
        )));
    }
    let manifest = read_small(&mut first, MANIFEST_PATH, MAX_MANIFEST_BYTES)?;
    drop(first);
    let mut next = entries.next().transpose().map_err(archive_err)?;
    let mut signatures = None;
    if let Some(entry) = next.as_mut()
        && entry_path(entry)? == SIGNATURES_PATH
    {
        signatures = Some(read_small(
            entry,
            SIGNATURES_PATH,
            crate::keys::MAX_SIGNATURES_BYTES,
        )?);
        next = entries.next().transpose().map_err(archive_err)?;
    }
    Ok((manifest, signatures, next))
}

/// The parsed but unchecked header, and the entry after it.
pub(crate) type HeaderParts<'a, R> = (Manifest, Vec<u8>, Signatures, Option<tar::Entry<'a, R>>);

pub(crate) fn read_header_parts<'a, R: Read + 'a>(
    entries: &mut tar::Entries<'a, R>,
) -> Result<HeaderParts<'a, R>, ArtifactError> {
    let (manifest_bytes, signatures, next) = header_entries(entries)?;
    let signatures = match signatures {
        Some(bytes) => Signatures::parse(&bytes)?,
        None => Signatures::default(),
    };
    let manifest = Manifest::parse(&manifest_bytes)?;
    Ok((manifest, manifest_bytes, signatures, next))
}

/// Reads only the manifest and signatures, without checking signatures or content: for
/// inspecting and signing.
pub fn read_header<R: Read>(src: R) -> Result<(Manifest, Vec<u8>, Signatures), ArtifactError> {
    let mut archive = tar::Archive::new(src);
    let mut entries = archive.entries().map_err(archive_err)?;
    let (manifest, bytes, signatures, _) = read_header_parts(&mut entries)?;
    Ok((manifest, bytes, signatures))
}

/// Counts, bounds and hashes content on its way to a sink.
struct Checked<'r> {
    inner: Box<dyn Read + 'r>,
    compressed: bool,
    expected: u64,
    count: u64,
    hasher: Sha256,
    problem: Option<ContentProblem>,
    /// The archive itself failed to read (damaged, truncated, or a file or network error).
    source_failed: Option<(io::ErrorKind, String)>,
}

impl Read for Checked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(p) = &self.problem {
            return Err(io::Error::new(io::ErrorKind::InvalidData, p.to_string()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        // Never ask for more than one byte past the declared size: a decompression bomb is
        // stopped at the first byte too many.
        let room = self.expected.saturating_sub(self.count).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e)
                if self.compressed
                    && matches!(
                        e.kind(),
                        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
                    ) =>
            {
                let problem = ContentProblem::Decompress(e.to_string());
                self.problem = Some(problem);
                return Err(e);
            }
            Err(e) => {
                self.source_failed = Some((e.kind(), e.to_string()));
                return Err(e);
            }
        };
        if n == 0 {
            if self.count < self.expected {
                let problem = ContentProblem::TooShort {
                    expected: self.expected,
                    actual: self.count,
                };
                self.problem = Some(problem.clone());
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    problem.to_string(),
                ));
            }
            return Ok(0);
        }
        if self.count + n as u64 > self.expected {
            let problem = ContentProblem::TooLong(self.expected);
            self.problem = Some(problem.clone());
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                problem.to_string(),
            ));
        }
        self.count += n as u64;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs one content entry through `Checked` into the sink, then verifies it.
fn take_content<'r>(
    kind: &'static str,
    name: &str,
    inner: Box<dyn Read + 'r>,
    compressed: bool,
    size: u64,
    sha256: &str,
    deliver: impl FnOnce(&mut dyn Read) -> io::Result<()>,
) -> Result<(), ArtifactError> {
    let mut checked = Checked {
        inner,
        compressed,
        expected: size,
        count: 0,
        hasher: Sha256::new(),
        problem: None,
        source_failed: None,
    };
    let content = |problem| ArtifactError::Content {
        kind,
        name: name.to_owned(),
        problem,
    };
    if let Err(source) = deliver(&mut checked) {
        return Err(
            match (checked.problem.take(), checked.source_failed.take()) {
                (Some(problem), _) => content(problem),
                (None, Some((kind, msg))) => archive_err(io::Error::new(kind, msg)),
                (None, None) => ArtifactError::Sink {
                    kind,
                    name: name.to_owned(),
                    source,
                },
            },
        );
    }
    if let Err(e) = io::copy(&mut checked, &mut io::sink()) {
        return Err(match checked.problem.take() {
            Some(problem) => content(problem),
            None => archive_err(e),
        });
    }
    let actual = hex(&checked.hasher.finalize());
    if actual != sha256 {
        return Err(content(ContentProblem::Hash {
            expected: sha256.to_owned(),
            actual,
        }));
    }
    Ok(())
}

/// Reads a whole artifact from `src`: checks the layout, the manifest and the signatures,
/// hands the manifest and then every script and payload to `sink`, and checks every byte's
/// count and hash. Returns the header once everything matched.
pub fn read<R: Read>(
    src: R,
    trust: Trust<'_>,
    sink: &mut dyn Sink,
) -> Result<Header, ArtifactError> {
    let mut archive = tar::Archive::new(src);
    let mut entries = archive.entries().map_err(archive_err)?;
    let (manifest_bytes, signatures, mut next) = header_entries(&mut entries)?;
    // Signatures first: nothing from an unsigned manifest is interpreted when signing is required.
    let signatures = match signatures {
        Some(bytes) => Signatures::parse(&bytes)?,
        None => Signatures::default(),
    };
    let check = signatures.check(&manifest_bytes, trust.keys, trust.require_signature)?;
    let manifest = Manifest::parse(&manifest_bytes)?;
    let header = Header {
        manifest,
        manifest_bytes,
        signatures,
        check,
    };
    sink.manifest(&header).map_err(ArtifactError::Refused)?;

    let expected = header
        .manifest
        .scripts
        .iter()
        .map(|s| (s.entry_path(), s.size))
        .chain(
            header
                .manifest
                .payloads
                .iter()
                .map(|p| (p.entry_path(), p.stored_size())),
        );
    let scripts = header.manifest.scripts.len();
    for (i, (path, stored)) in expected.enumerate() {
        let Some(mut entry) = next.take() else {
            return Err(layout(format!("{path} is missing")));
        };
        let found = entry_path(&entry)?;
        if found != path {
            return Err(layout(format!("found {found:?} where {path} belongs")));
        }
        let size = entry.header().size()?;
        if size != stored {
            return Err(layout(format!(
                "{path} is {size} bytes in the archive, the manifest says {stored}"
            )));
        }
        if i < scripts {
            let script = &header.manifest.scripts[i];
            take_content(
                "script",
                &script.name,
                Box::new(&mut entry),
                false,
                script.size,
                &script.sha256,
                |data| sink.script(script, data),
            )?;
        } else {
            let payload = &header.manifest.payloads[i - scripts];
            let (inner, compressed): (Box<dyn Read + '_>, bool) = match payload.compression {
                Compression::None => (Box::new(&mut entry), false),
                Compression::Gzip => (Box::new(flate2::read::GzDecoder::new(&mut entry)), true),
            };
            take_content(
                "payload",
                &payload.name,
                inner,
                compressed,
                payload.size,
                &payload.sha256,
                |data| sink.payload(payload, data),
            )?;
        }
        drop(entry);
        next = entries.next().transpose().map_err(archive_err)?;
    }
    if let Some(entry) = next {
        let path = entry_path(&entry)?;
        return Err(layout(format!(
            "unexpected entry {path:?} after the last one the manifest lists"
        )));
    }
    Ok(header)
}
