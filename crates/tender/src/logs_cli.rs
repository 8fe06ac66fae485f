//! `tender logs DEVICE`: ask a device for its logs, wait for them and print them; or follow
//! new lines live until Ctrl-C.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use clap::Args;
use serde_json::{Value, json};

use crate::cli::{GlobalArgs, OutputFormat, parse_duration_secs};
use crate::commands::connect;
use crate::output;

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The device, by id or by name
    pub device: String,
    /// A log source, as named in the device agent's `[logs]` configuration (repeat for several)
    #[arg(long = "source", short = 's', value_name = "NAME", required = true)]
    pub sources: Vec<String>,
    /// Only lines since this long ago (`15m`, `2h`, `1d`) or since this time (RFC 3339)
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,
    /// Only lines before this time (RFC 3339) or this long ago
    #[arg(long, value_name = "DURATION|TIME")]
    pub until: Option<String>,
    /// The last N lines of each source (the server's default is 1000)
    #[arg(long, short = 'n', value_name = "N")]
    pub lines: Option<u32>,
    /// Stream new lines as they are written, until Ctrl-C
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Write the logs to FILE instead of standard output
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// How long to wait for the device (an offline device gets the request when it connects)
    #[arg(long, value_parser = parse_duration_secs, value_name = "DURATION", default_value = "2m")]
    pub wait_timeout: u64,
}

/// A duration ago (`15m`) or an RFC 3339 time, as RFC 3339.
fn time_arg(flag: &str, value: &str) -> Result<String> {
    if let Ok(secs) = parse_duration_secs(value) {
        let at = time::OffsetDateTime::now_utc()
            - time::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX));
        return at
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| anyhow!("{flag}: {e}"));
    }
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map(|_| value.to_owned())
        .map_err(|_| {
            anyhow!(
                "{flag} {value:?} is neither a duration (15m, 2h, 1d) nor an RFC 3339 time (2026-01-31T12:00:00Z)"
            )
        })
}

pub async fn run(g: &GlobalArgs, args: &LogsArgs) -> Result<ExitCode> {
    let client = connect(g)?;
    let device = crate::twin_cli::resolve_device(&client, &args.device).await?;
    let body = json!({
        "sources": args.sources,
        "since": args.since.as_deref().map(|s| time_arg("--since", s)).transpose()?,
        "until": args.until.as_deref().map(|s| time_arg("--until", s)).transpose()?,
        "lines": args.lines,
        "follow": args.follow,
    });
    let r: Value = client
        .send(
            reqwest::Method::POST,
            &format!("devices/{device}/logs"),
            &body,
        )
        .await?;
    let id = r["id"].as_str().unwrap_or_default().to_owned();
    if args.follow {
        return follow(&client, &id, args).await;
    }
    eprintln!("log request {id}: {}", describe(&r));
    let deadline = Instant::now() + Duration::from_secs(args.wait_timeout);
    let mut last = r["state"].as_str().unwrap_or_default().to_owned();
    let r = loop {
        let r: Value = client.get(&format!("logs/{id}"), &[]).await?;
        let state = r["state"].as_str().unwrap_or_default().to_owned();
        if state != last {
            eprintln!("log request {id}: {}", describe(&r));
            last = state.clone();
        }
        if matches!(state.as_str(), "ready" | "failed" | "expired") {
            break r;
        }
        if Instant::now() >= deadline {
            return Err(anyhow!(
                "the device did not send its logs within {}s (request {id} is {state}); it gets the request when it connects: check later with `tender logs` or GET /api/v1/logs/{id}, or pass a longer --wait-timeout",
                args.wait_timeout
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    match r["state"].as_str() {
        Some("ready") => {}
        Some("failed") => {
            return Err(anyhow!(
                "the device could not send its logs: {}",
                r["error"].as_str().unwrap_or("no reason given")
            ));
        }
        _ => {
            return Err(anyhow!(
                "log request {id} expired before the device answered"
            ));
        }
    }
    let text = client
        .get_response(&format!("logs/{id}/content"), Duration::from_secs(600))
        .await?
        .text()
        .await
        .map_err(|e| anyhow!("reading the logs: {e}"))?;
    if let Some(path) = &args.save {
        std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {} bytes to {}", text.len(), path.display());
    } else if g.output == OutputFormat::Json {
        output::json(&json!({"request": r, "text": text}))?;
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(r: &Value) -> String {
    match r["state"].as_str().unwrap_or_default() {
        "pending" => "pending (the device is offline: it gets the request when it connects)".into(),
        "sent" => "sent to the device".into(),
        "uploading" => "the device is reading and uploading".into(),
        "ready" => format!(
            "ready ({} compressed bytes)",
            r["size"].as_u64().unwrap_or_default()
        ),
        other => other.to_owned(),
    }
}

/// Reads the server-sent events of a follow request and prints the lines, until Ctrl-C or the
/// request ends.
async fn follow(client: &crate::client::ApiClient, id: &str, args: &LogsArgs) -> Result<ExitCode> {
    use futures_util::StreamExt;
    let resp = client
        .get_response(
            &format!("logs/{id}/follow"),
            Duration::from_secs(7 * 24 * 3600),
        )
        .await?;
    eprintln!("following log request {id} (Ctrl-C to stop)");
    let mut out: Box<dyn Write> = match &args.save {
        Some(p) => Box::new(
            std::fs::File::create(p).with_context(|| format!("cannot write {}", p.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let several = args.sources.len() > 1;
    let mut stream = resp.bytes_stream();
    let mut pending = String::new();
    let mut event = String::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let chunk = tokio::select! {
            _ = &mut ctrl_c => {
                eprintln!("stopped");
                return Ok(ExitCode::SUCCESS);
            }
            c = stream.next() => c,
        };
        let Some(chunk) = chunk else {
            eprintln!("the follow ended (the request expired)");
            return Ok(ExitCode::SUCCESS);
        };
        let chunk = chunk.map_err(|e| anyhow!("the follow stream broke off: {e}"))?;
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = pending.find('\n') {
            let line: String = pending.drain(..=i).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                let v: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                match event.as_str() {
                    "lines" => {
                        let source = v["source"].as_str().unwrap_or_default();
                        for l in v["lines"].as_array().into_iter().flatten() {
                            let l = l.as_str().unwrap_or_default();
                            if several {
                                writeln!(out, "{source}: {l}")?;
                            } else {
                                writeln!(out, "{l}")?;
                            }
                        }
                        out.flush()?;
                    }
                    "dropped" => eprintln!(
                        "warning: {} batches of lines were dropped (this client fell behind)",
                        v["batches"]
                    ),
                    _ => {}
                }
            } else if line.is_empty() {
                event.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_arguments() {
        assert!(time_arg("--since", "15m").is_ok());
        assert_eq!(
            time_arg("--since", "2026-01-31T12:00:00Z").ok().as_deref(),
            Some("2026-01-31T12:00:00Z")
        );
        assert!(time_arg("--since", "yesterday").is_err());
    }
}
