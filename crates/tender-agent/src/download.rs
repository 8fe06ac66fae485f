//! Artifact downloads for deployments: an HTTPS `GET` (with the device certificate) streamed
//! into a blocking [`Read`], so that the update engine installs from the download without the
//! artifact being stored twice.
//!
//! [`start`] spawns a task that fetches the file chunk by chunk into a bounded channel and
//! returns a [`ChannelReader`] over that channel, for a blocking thread. When the connection
//! drops, the task asks again with `Range: bytes=N-` (the server answers `206`) and carries on
//! where it stopped, after a back-off with full jitter; the reader sees one continuous stream.
//! It gives up after [`DownloadOptions::max_failures`] tries in a row without progress or past
//! [`DownloadOptions::max_time`], and the reader then fails.
//!
//! **Invariant:** the reader ends (`Ok(0)`) only after exactly `size` bytes whose SHA-256 is
//! the announced one (and the server's `Repr-Digest`, when it sends one, agrees); anything
//! else ends it with an error. The channel holds at most [`CHANNEL_CHUNKS`] chunks, so a slow
//! installer slows the download down instead of filling memory.

use std::io::{self, Read};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// Chunks buffered between the download and the installer.
pub const CHANNEL_CHUNKS: usize = 16;

/// What to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadSpec {
    /// The whole URL.
    pub url: String,
    /// The file's size in bytes.
    pub size: u64,
    /// The file's SHA-256, lowercase hex.
    pub sha256: String,
}

/// Retries and bounds.
#[derive(Debug, Clone, Copy)]
pub struct DownloadOptions {
    /// Between tries after a failure.
    pub backoff: Backoff,
    /// Tries in a row that brought no new byte before the download fails.
    pub max_failures: u32,
    /// The whole download, retries included.
    pub max_time: Duration,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            backoff: Backoff {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(60),
            },
            max_failures: 10,
            max_time: Duration::from_secs(6 * 3600),
        }
    }
}

/// Called with the share downloaded (0-100) each time it passes another tenth.
pub type OnProgress = Box<dyn FnMut(u8) + Send>;

/// A blocking reader over the chunks of a download (use it off the async threads).
pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    /// Once the stream failed, every further read fails the same way.
    failed: Option<String>,
    ended: bool,
}

impl ChannelReader {
    /// A reader over `rx` (what [`start`] uses; public for other producers).
    pub fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
            failed: None,
            ended: false,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            if let Some(e) = &self.failed {
                return Err(io::Error::other(e.clone()));
            }
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => {
                    self.failed = Some(e.to_string());
                    return Err(e);
                }
                None => self.ended = true,
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Starts downloading `spec` with `client` (must be called within a tokio runtime) and returns
/// the reader. Canceling `cancel` fails the reader with "canceled"; dropping the reader stops
/// the download.
pub fn start(
    client: reqwest::Client,
    spec: DownloadSpec,
    options: DownloadOptions,
    cancel: CancellationToken,
    on_progress: Option<OnProgress>,
) -> ChannelReader {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::spawn(produce(client, spec, options, cancel, on_progress, tx));
    ChannelReader::new(rx)
}

/// Why one request ended early.
enum Stop {
    /// Try again (connection lost, server busy).
    Retry(String),
    /// Trying again cannot help (not found, forbidden, the file is not the announced one).
    Fatal(String),
    /// The reader was dropped: nobody wants the rest.
    ReaderGone,
}

struct State {
    offset: u64,
    hasher: Sha256,
    last_tenth: u8,
    on_progress: Option<OnProgress>,
}

impl State {
    fn progressed(&mut self, size: u64) {
        let Some(cb) = self.on_progress.as_mut() else {
            return;
        };
        let percent = self
            .offset
            .saturating_mul(100)
            .checked_div(size)
            .map_or(100, |p| u8::try_from(p).unwrap_or(100));
        let tenth = percent / 10;
        if tenth > self.last_tenth {
            self.last_tenth = tenth;
            cb(tenth * 10);
        }
    }
}

async fn produce(
    client: reqwest::Client,
    spec: DownloadSpec,
    options: DownloadOptions,
    cancel: CancellationToken,
    on_progress: Option<OnProgress>,
    tx: mpsc::Sender<io::Result<Bytes>>,
) {
    let deadline = Instant::now() + options.max_time;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    let mut st = State {
        offset: 0,
        hasher: Sha256::new(),
        last_tenth: 0,
        on_progress,
    };
    let mut failures = 0u32;
    let fail = |msg: String| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Err(io::Error::other(msg))).await;
        }
    };
    loop {
        let before = st.offset;
        let result = tokio::select! {
            _ = cancel.cancelled() => Err(Stop::Fatal("the download was canceled".into())),
            r = tokio::time::timeout_at(deadline, fetch(&client, &spec, &mut st, &tx)) => match r {
                Ok(r) => r,
                Err(_) => Err(Stop::Fatal(format!(
                    "the download did not finish within {} s ({} of {} bytes)",
                    options.max_time.as_secs(), st.offset, spec.size
                ))),
            },
        };
        match result {
            Ok(()) => break,
            Err(Stop::ReaderGone) => return,
            Err(Stop::Fatal(msg)) => return fail(msg).await,
            Err(Stop::Retry(msg)) => {
                if st.offset > before {
                    failures = 0;
                }
                failures += 1;
                if failures >= options.max_failures {
                    return fail(format!(
                        "the download failed {failures} times in a row ({} of {} bytes): {msg}",
                        st.offset, spec.size
                    ))
                    .await;
                }
                let wait = options.backoff.delay(failures - 1, &mut rng);
                tracing::info!(url = %spec.url, offset = st.offset, wait_ms = wait.as_millis() as u64, error = %msg, "the download broke off; resuming");
                tokio::select! {
                    _ = cancel.cancelled() => return fail("the download was canceled".into()).await,
                    _ = tokio::time::sleep_until((Instant::now() + wait).min(deadline)) => {}
                }
            }
        }
    }
    let got = hex(&std::mem::take(&mut st.hasher).finalize());
    if got != spec.sha256 {
        fail(format!(
            "the downloaded file's SHA-256 is {got}, not the announced {}",
            spec.sha256
        ))
        .await;
    }
    // Dropping `tx` ends the reader.
}

/// One request from `st.offset` on; `Ok` once the file is complete.
async fn fetch(
    client: &reqwest::Client,
    spec: &DownloadSpec,
    st: &mut State,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> Result<(), Stop> {
    if st.offset == spec.size && spec.size > 0 {
        return Ok(());
    }
    let mut request = client.get(&spec.url);
    if st.offset > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={}-", st.offset));
    }
    let mut resp = request
        .send()
        .await
        .map_err(|e| Stop::Retry(error_chain(&e)))?;
    let status = resp.status().as_u16();
    // Bytes at the start of the body to drop: a server that ignored the range sends it all.
    let mut skip = 0u64;
    match status {
        200 => skip = st.offset,
        206 => {
            let range = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !range.starts_with(&format!("bytes {}-", st.offset)) {
                return Err(Stop::Retry(format!(
                    "asked for bytes {}- and got the range {range:?}",
                    st.offset
                )));
            }
        }
        401 | 403 | 404 | 410 | 416 => {
            return Err(Stop::Fatal(format!(
                "the server answered {} for {}",
                resp.status(),
                spec.url
            )));
        }
        _ => {
            return Err(Stop::Retry(format!(
                "the server answered {}",
                resp.status()
            )));
        }
    }
    if let Some(digest) = resp
        .headers()
        .get("repr-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(repr_digest_sha256)
        && digest != spec.sha256
    {
        return Err(Stop::Fatal(format!(
            "the server's file has SHA-256 {digest}, not the announced {}",
            spec.sha256
        )));
    }
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Err(Stop::Retry(error_chain(&e))),
        };
        let mut chunk = chunk;
        if skip > 0 {
            let n = usize::try_from(skip).unwrap_or(usize::MAX).min(chunk.len());
            let _ = chunk.split_to(n);
            skip -= n as u64;
            if chunk.is_empty() {
                continue;
            }
        }
        let len = chunk.len() as u64;
        if st.offset + len > spec.size {
            return Err(Stop::Fatal(format!(
                "the file is longer than the announced {} bytes",
                spec.size
            )));
        }
        st.hasher.update(&chunk);
        st.offset += len;
        tx.send(Ok(chunk)).await.map_err(|_| Stop::ReaderGone)?;
        st.progressed(spec.size);
    }
    if st.offset < spec.size {
        return Err(Stop::Retry(format!(
            "the response ended at byte {} of {}",
            st.offset, spec.size
        )));
    }
    Ok(())
}

/// The hex SHA-256 of a `Repr-Digest` header (`sha-256=:<base64>:`), if it carries one.
pub fn repr_digest_sha256(header: &str) -> Option<String> {
    header.split(',').find_map(|item| {
        let b64 = item.trim().strip_prefix("sha-256=:")?.strip_suffix(':')?;
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        (raw.len() == 32).then(|| hex(&raw))
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An error with its sources ("error sending request: connection closed ...").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A plain HTTP/1.1 server for one file that answers `Range: bytes=N-` with `206`, and
    /// breaks off the first `drops` responses after `cut` bytes of their body (the connection
    /// is closed mid-body). Records every request's range start.
    struct TestServer {
        url: String,
        ranges: Arc<Mutex<Vec<u64>>>,
    }

    async fn serve(
        data: Vec<u8>,
        drops: usize,
        cut: usize,
        status_override: Option<u16>,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/file", listener.local_addr().unwrap());
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let seen = ranges.clone();
        let data = Arc::new(data);
        tokio::spawn(async move {
            let mut served = 0usize;
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if sock.read(&mut byte).await.unwrap_or(0) == 0 {
                        break;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                let start: u64 = head
                    .lines()
                    .find_map(|l| l.strip_prefix("range: bytes="))
                    .and_then(|r| r.trim().trim_end_matches('-').parse().ok())
                    .unwrap_or(0);
                seen.lock().unwrap().push(start);
                if let Some(code) = status_override {
                    let _ = sock
                        .write_all(format!("HTTP/1.1 {code} No\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
                        .await;
                    continue;
                }
                let body = &data[start as usize..];
                let status = if start > 0 {
                    format!(
                        "206 Partial Content\r\ncontent-range: bytes {start}-{}/{}",
                        data.len() - 1,
                        data.len()
                    )
                } else {
                    "200 OK".to_string()
                };
                let header = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                sock.write_all(header.as_bytes()).await.unwrap();
                if served < drops {
                    served += 1;
                    let _ = sock.write_all(&body[..cut.min(body.len())]).await;
                    let _ = sock.flush().await;
                    // Closed here, mid-body.
                    continue;
                }
                let _ = sock.write_all(body).await;
                let _ = sock.shutdown().await;
            }
        });
        TestServer { url, ranges }
    }

    fn data() -> Vec<u8> {
        (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect()
    }

    fn fast() -> DownloadOptions {
        DownloadOptions {
            backoff: Backoff {
                base: Duration::from_millis(1),
                cap: Duration::from_millis(5),
            },
            max_failures: 5,
            max_time: Duration::from_secs(60),
        }
    }

    fn client() -> reqwest::Client {
        crate::identity::install_crypto_provider();
        reqwest::Client::builder().build().unwrap()
    }

    fn sha(d: &[u8]) -> String {
        hex(&Sha256::digest(d))
    }

    async fn read_all(reader: ChannelReader) -> io::Result<Vec<u8>> {
        tokio::task::spawn_blocking(move || {
            let mut reader = reader;
            let mut out = Vec::new();
            reader.read_to_end(&mut out).map(|_| out)
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_dropped_connection_is_resumed_with_range() {
        let d = data();
        let s = serve(d.clone(), 2, 70_000, None).await;
        let progress = Arc::new(Mutex::new(Vec::new()));
        let p = progress.clone();
        let reader = start(
            client(),
            DownloadSpec {
                url: s.url.clone(),
                size: d.len() as u64,
                sha256: sha(&d),
            },
            fast(),
            CancellationToken::new(),
            Some(Box::new(move |pc| p.lock().unwrap().push(pc))),
        );
        let got = read_all(reader).await.unwrap();
        assert!(got == d, "the bytes read are the file");
        let ranges = s.ranges.lock().unwrap().clone();
        assert_eq!(ranges.len(), 3, "{ranges:?}");
        assert_eq!(ranges[0], 0);
        assert!(ranges[1] > 0 && ranges[2] > ranges[1], "{ranges:?}");
        let progress = progress.lock().unwrap().clone();
        assert_eq!(progress.last(), Some(&100), "{progress:?}");
        assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    }

    #[tokio::test]
    async fn a_wrong_digest_fails_the_reader() {
        let d = data();
        let s = serve(d.clone(), 1, 1000, None).await;
        let reader = start(
            client(),
            DownloadSpec {
                url: s.url,
                size: d.len() as u64,
                sha256: sha(b"something else"),
            },
            fast(),
            CancellationToken::new(),
            None,
        );
        let e = read_all(reader).await.unwrap_err();
        assert!(e.to_string().contains("SHA-256"), "{e}");
    }

    #[tokio::test]
    async fn not_found_fails_at_once_and_endless_drops_give_up() {
        let d = data();
        let s = serve(d.clone(), 0, 0, Some(404)).await;
        let spec = DownloadSpec {
            url: s.url.clone(),
            size: d.len() as u64,
            sha256: sha(&d),
        };
        let e = read_all(start(
            client(),
            spec,
            fast(),
            CancellationToken::new(),
            None,
        ))
        .await
        .unwrap_err();
        assert!(e.to_string().contains("404"), "{e}");
        assert_eq!(s.ranges.lock().unwrap().len(), 1, "not retried");

        // Every response breaks off before any byte: bounded tries, then an error.
        let s = serve(d.clone(), usize::MAX, 0, None).await;
        let spec = DownloadSpec {
            url: s.url.clone(),
            size: d.len() as u64,
            sha256: sha(&d),
        };
        let e = read_all(start(
            client(),
            spec,
            fast(),
            CancellationToken::new(),
            None,
        ))
        .await
        .unwrap_err();
        assert!(e.to_string().contains("5 times in a row"), "{e}");
        assert_eq!(s.ranges.lock().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn cancel_fails_the_reader() {
        let d = data();
        // Never completes: every response is cut, and the back-off is long.
        let s = serve(d.clone(), usize::MAX, 10, None).await;
        let cancel = CancellationToken::new();
        let options = DownloadOptions {
            backoff: Backoff {
                base: Duration::from_secs(3600),
                cap: Duration::from_secs(3600),
            },
            ..fast()
        };
        let reader = start(
            client(),
            DownloadSpec {
                url: s.url,
                size: d.len() as u64,
                sha256: sha(&d),
            },
            options,
            cancel.clone(),
            None,
        );
        cancel.cancel();
        let e = read_all(reader).await.unwrap_err();
        assert!(e.to_string().contains("canceled"), "{e}");
    }

    #[test]
    fn repr_digest_is_read() {
        let raw = Sha256::digest(b"abc");
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(
            repr_digest_sha256(&format!("sha-512=:xx:, sha-256=:{b64}:")),
            Some(hex(&raw))
        );
        assert_eq!(repr_digest_sha256("sha-256=:notbase64:"), None);
    }
}
