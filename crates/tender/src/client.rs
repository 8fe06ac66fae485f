//! A small client for the Tender API that turns problem JSON into readable errors.

use anyhow::{Result, anyhow};
use reqwest::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

pub struct ApiClient {
    base: Url,
    token: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct ProblemBody {
    title: Option<String>,
    detail: Option<String>,
}

impl ApiClient {
    pub fn new(server: &str, token: &str) -> Result<Self> {
        let mut base = Url::parse(server).map_err(|e| {
            anyhow!(
                "invalid server URL {server:?}: {e}; expected something like http://127.0.0.1:8080"
            )
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(anyhow!(
                "invalid server URL {server:?}: use http:// or https://"
            ));
        }
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("tender-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| anyhow!("cannot build the HTTP client: {e}"))?;
        Ok(ApiClient {
            base,
            token: token.to_owned(),
            http,
        })
    }

    pub fn server(&self) -> &Url {
        &self.base
    }

    /// GETs `api/v1/<path>` with `query`, returning the JSON body.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T> {
        self.request(reqwest::Method::GET, path, query, None).await
    }

    /// Sends JSON to `api/v1/<path>` with `method`, returning the JSON body.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T> {
        self.request(method, path, &[], Some(body)).await
    }

    /// Sends JSON to `api/v1/<path>?<query>` with `method`, returning the JSON body.
    pub async fn send_with_query<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: &serde_json::Value,
    ) -> Result<T> {
        self.request(method, path, query, Some(body)).await
    }

    /// DELETEs `api/v1/<path>`.
    pub async fn delete(&self, path: &str) -> Result<()> {
        self.request::<serde_json::Value>(reqwest::Method::DELETE, path, &[], None)
            .await
            .map(|_| ())
    }

    fn api_url(&self, path: &str) -> Result<Url> {
        self.base
            .join(&format!("api/v1/{path}"))
            .map_err(|e| anyhow!("invalid path {path:?}: {e}"))
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        let why = if e.is_connect() {
            "connection failed (is `tender server` running there?)".to_owned()
        } else if e.is_timeout() {
            "timed out".to_owned()
        } else {
            e.to_string()
        };
        anyhow!("cannot reach the Tender server at {}: {why}", self.base)
    }

    /// POSTs a file to `api/v1/<path>` as a stream, calling `progress` with the bytes sent so
    /// far, and returns the JSON answer.
    pub async fn upload<T: DeserializeOwned>(
        &self,
        path: &str,
        file: tokio::fs::File,
        len: u64,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<T> {
        use futures_util::StreamExt;
        let url = self.api_url(path)?;
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stream =
            tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).inspect(move |chunk| {
                if let Ok(c) = chunk {
                    let n = sent.fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed)
                        + c.len() as u64;
                    progress(n);
                }
            });
        let resp = self
            .http
            .post(url.clone())
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .timeout(std::time::Duration::from_secs(24 * 3600))
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| anyhow!("reading the answer from {url}: {e}"))?;
        if !status.is_success() {
            return Err(problem_error(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| anyhow!("the server's answer to {url} is not what this CLI expects ({e})"))
    }

    /// GETs `api/v1/<path>` into `out`, resuming after the bytes `out` already holds.
    /// Returns the bytes fetched this time.
    pub async fn download(&self, path: &str, out: &std::path::Path) -> Result<u64> {
        use tokio::io::AsyncWriteExt;
        let url = self.api_url(path)?;
        let have = tokio::fs::metadata(out).await.map(|m| m.len()).unwrap_or(0);
        let mut req = self
            .http
            .get(url.clone())
            .bearer_auth(&self.token)
            .timeout(std::time::Duration::from_secs(24 * 3600));
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let mut resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if status == StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
            // Already complete.
            return Ok(0);
        }
        if !status.is_success() {
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(problem_error(status, &bytes));
        }
        let append = status == StatusCode::PARTIAL_CONTENT;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(out)
            .await
            .map_err(|e| anyhow!("cannot write {}: {e}", out.display()))?;
        let mut got = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| anyhow!("the download broke off after {got} bytes ({e}); run the same command again to resume"))?
        {
            file.write_all(&chunk).await?;
            got += chunk.len() as u64;
        }
        file.sync_all().await?;
        Ok(got)
    }

    /// GETs `api/v1/<path>` and returns the response once it answered with success, for
    /// bodies that are not JSON (text, server-sent events). `timeout` bounds the whole
    /// response, body included.
    pub async fn get_response(
        &self,
        path: &str,
        timeout: std::time::Duration,
    ) -> Result<reqwest::Response> {
        let url = self.api_url(path)?;
        let resp = self
            .http
            .get(url)
            .bearer_auth(&self.token)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(problem_error(status, &bytes));
        }
        Ok(resp)
    }

    async fn request<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<T> {
        let url = self
            .base
            .join(&format!("api/v1/{path}"))
            .map_err(|e| anyhow!("invalid path {path:?}: {e}"))?;
        let mut req = self
            .http
            .request(method, url.clone())
            .bearer_auth(&self.token)
            .query(query);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| {
            let why = if e.is_connect() {
                "connection failed (is `tender server` running there?)".to_owned()
            } else if e.is_timeout() {
                "timed out".to_owned()
            } else {
                e.to_string()
            };
            anyhow!("cannot reach the Tender server at {}: {why}", self.base)
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| anyhow!("reading the answer from {url}: {e}"))?;
        if !status.is_success() {
            return Err(problem_error(status, &bytes));
        }
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        serde_json::from_slice(bytes).map_err(|e| {
            anyhow!("the server's answer to {url} is not what this CLI expects ({e}); are the CLI and server versions the same?")
        })
    }
}

fn problem_error(status: StatusCode, body: &[u8]) -> anyhow::Error {
    let (title, detail) = match serde_json::from_slice::<ProblemBody>(body) {
        Ok(p) => (
            p.title.unwrap_or_else(|| status.to_string()),
            p.detail.unwrap_or_default(),
        ),
        Err(_) => (
            status.to_string(),
            String::from_utf8_lossy(body).chars().take(500).collect(),
        ),
    };
    let hint = match status {
        StatusCode::UNAUTHORIZED => {
            "\nhint: the token was refused; pass a valid one with --token or run `tender login` again"
        }
        StatusCode::FORBIDDEN => "\nhint: ask an admin for a role that grants this",
        _ => "",
    };
    anyhow!("{} {title}: {detail}{hint}", status.as_u16())
}
