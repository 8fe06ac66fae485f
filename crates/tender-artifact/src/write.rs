//! Writing artifacts: describing payloads, laying out the archive, replacing signatures.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::keys::Signatures;
use crate::manifest::{Compression, Manifest};
use crate::read::{ArtifactError, read_header_parts};
use crate::{MANIFEST_PATH, SIGNATURES_PATH};

/// Size and hash of some content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// Uncompressed size.
    pub size: u64,
    /// SHA-256 of the uncompressed bytes, hex.
    pub sha256: String,
    /// Size once compressed (when compressing).
    pub stored_size: Option<u64>,
}

struct Counting<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads `src` to its end, hashing it; with `Compression::Gzip`, also writes it compressed to
/// `compressed` (which then holds what goes in the archive).
pub fn describe(
    mut src: impl Read,
    compression: Compression,
    compressed: Option<&mut dyn Write>,
) -> io::Result<Described> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut encoder = match (compression, compressed) {
        (Compression::Gzip, Some(out)) => Some(flate2::write::GzEncoder::new(
            Counting {
                inner: out,
                count: 0,
            },
            flate2::Compression::default(),
        )),
        (Compression::Gzip, None) => {
            return Err(io::Error::other("compressing needs somewhere to write to"));
        }
        (Compression::None, _) => None,
    };
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
        if let Some(enc) = encoder.as_mut() {
            enc.write_all(&buf[..n])?;
        }
    }
    let stored_size = match encoder {
        Some(enc) => Some(enc.finish()?.count),
        None => None,
    };
    Ok(Described {
        size,
        sha256: hex(&hasher.finalize()),
        stored_size,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn header(path: &str, size: u64) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// Refuses to end before `remaining` bytes: a source that shrank would corrupt the archive.
struct Exact<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the content ended {} bytes early", self.remaining),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Writes an artifact: `manifest`, its `signatures` (none when empty), then every script and
/// payload the manifest lists, in order, each read from what `open` returns for its entry path
/// (`scripts/NAME`, `payloads/NAME`; compressed payloads as stored).
pub fn write<W: Write>(
    out: W,
    manifest: &Manifest,
    signatures: &Signatures,
    mut open: impl FnMut(&str) -> io::Result<Box<dyn Read>>,
) -> Result<W, ArtifactError> {
    manifest.validate()?;
    let manifest_bytes = manifest.to_bytes();
    let mut builder = tar::Builder::new(out);
    builder.append(
        &header(MANIFEST_PATH, manifest_bytes.len() as u64)?,
        &manifest_bytes[..],
    )?;
    if !signatures.signatures.is_empty() {
        let bytes = signatures.to_bytes();
        builder.append(&header(SIGNATURES_PATH, bytes.len() as u64)?, &bytes[..])?;
    }
    let entries = manifest
        .scripts
        .iter()
        .map(|s| (s.entry_path(), s.size))
        .chain(
            manifest
                .payloads
                .iter()
                .map(|p| (p.entry_path(), p.stored_size())),
        );
    for (path, size) in entries {
        let src = open(&path)?;
        builder.append(
            &header(&path, size)?,
            Exact {
                inner: src,
                remaining: size,
            },
        )?;
    }
    Ok(builder.into_inner()?)
}

/// Copies an artifact from `src` to `out`, replacing its signatures with what `change` makes of
/// them (given the manifest's bytes). Content is copied as a stream, unchecked: signing vouches
/// for the manifest, and the manifest holds every content hash.
pub fn rewrite_signatures<R: Read, W: Write>(
    src: R,
    out: W,
    change: impl FnOnce(&Manifest, &[u8], Signatures) -> Result<Signatures, ArtifactError>,
) -> Result<W, ArtifactError> {
    let mut archive = tar::Archive::new(src);
    let mut entries = archive.entries()?;
    let (manifest, manifest_bytes, signatures, mut next) = read_header_parts(&mut entries)?;
    let signatures = change(&manifest, &manifest_bytes, signatures)?;
    let mut builder = tar::Builder::new(out);
    builder.append(
        &header(MANIFEST_PATH, manifest_bytes.len() as u64)?,
        &manifest_bytes[..],
    )?;
    if !signatures.signatures.is_empty() {
        let bytes = signatures.to_bytes();
        builder.append(&header(SIGNATURES_PATH, bytes.len() as u64)?, &bytes[..])?;
    }
    while let Some(entry) = next {
        let path: String = entry.path_bytes().iter().map(|b| char::from(*b)).collect();
        let size = entry.header().size()?;
        builder.append(
            &header(&path, size)?,
            Exact {
                inner: entry,
                remaining: size,
            },
        )?;
        next = entries.next().transpose()?;
    }
    Ok(builder.into_inner()?)
}
