//! `tender telemetry ...`: metrics as series (one device, a group, a query or the fleet) and
//! raw samples exported as CSV or JSON lines.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Subcommand, ValueEnum};
use serde_json::Value;

use crate::cli::{GlobalArgs, OutputFormat};
use crate::commands::connect;
use crate::output;

#[derive(Subcommand, Debug)]
pub enum TelemetryCommand {
    /// A metric in buckets of a step, reduced by an aggregation: for one device, a group, a
    /// query or (with none of them) every accepted device
    Show {
        /// The metric, e.g. temperature or cpu.load
        metric: String,
        /// One device (id)
        #[arg(long, conflicts_with_all = ["group", "query"])]
        device: Option<String>,
        /// The devices of a static or dynamic group (name)
        #[arg(long, conflicts_with = "query")]
        group: Option<String>,
        /// The devices matching a query (see docs/queries.md)
        #[arg(long)]
        query: Option<String>,
        /// Start: RFC 3339, or a time ago such as 6h or 7d [default: 24h]
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive: RFC 3339, or a time ago [default: now]
        #[arg(long)]
        to: Option<String>,
        /// Bucket width such as 30s, 5m, 1h, 1d [default: at most 500 buckets]
        #[arg(long)]
        step: Option<String>,
        /// avg, min, max, sum, count or last
        #[arg(long, default_value = "avg")]
        agg: String,
    },
    /// Every raw sample of a device's metrics in a time range, oldest first
    Export {
        /// Device id
        device: String,
        /// A metric to export (repeat for several)
        #[arg(long = "metric", required = true)]
        metrics: Vec<String>,
        /// Start: RFC 3339, or a time ago such as 6h or 7d [default: 24h]
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive: RFC 3339, or a time ago [default: now]
        #[arg(long)]
        to: Option<String>,
        /// csv (device,metric,at,value with a header) or json (one object per line)
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
        /// Write to this file instead of standard output
        #[arg(long, value_name = "FILE")]
        file: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Json,
}

/// RFC 3339 as given, or a time ago (`90s`, `15m`, `6h`, `7d`) turned into RFC 3339 now.
fn time_arg(flag: &str, v: &str) -> Result<String> {
    let v = v.trim();
    if v.contains('T') {
        return Ok(v.to_owned());
    }
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let secs: i64 = match (digits.parse::<i64>(), unit) {
        (Ok(n), "s") => n,
        (Ok(n), "m") => n.saturating_mul(60),
        (Ok(n), "h") => n.saturating_mul(3600),
        (Ok(n), "d") => n.saturating_mul(86_400),
        _ => bail!(
            "--{flag} {v:?} is neither an RFC 3339 time (2026-12-01T10:00:00Z) nor a time ago (90s, 15m, 6h, 7d)"
        ),
    };
    let at = time::OffsetDateTime::now_utc() - time::Duration::seconds(secs);
    at.format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| anyhow!("--{flag} {v:?}: {e}"))
}

/// A metric name as one path segment (names may hold `/`).
fn segment(metric: &str) -> String {
    metric.replace('/', "%2F")
}

pub async fn run(g: &GlobalArgs, cmd: &TelemetryCommand) -> Result<ExitCode> {
    match cmd {
        TelemetryCommand::Show {
            metric,
            device,
            group,
            query,
            from,
            to,
            step,
            agg,
        } => {
            let client = connect(g)?;
            let mut q = vec![("agg", agg.clone())];
            if let Some(f) = from {
                q.push(("from", time_arg("from", f)?));
            }
            if let Some(t) = to {
                q.push(("to", time_arg("to", t)?));
            }
            if let Some(s) = step {
                q.push(("step", s.clone()));
            }
            let r: Value = match device {
                Some(d) => {
                    client
                        .get(
                            &format!("devices/{d}/telemetry/{}/series", segment(metric)),
                            &q,
                        )
                        .await?
                }
                None => {
                    q.push(("metric", metric.clone()));
                    if let Some(gr) = group {
                        q.push(("group", gr.clone()));
                    }
                    if let Some(qu) = query {
                        q.push(("query", qu.clone()));
                    }
                    client.get("telemetry/series", &q).await?
                }
            };
            match g.output {
                OutputFormat::Json => output::json(&r)?,
                OutputFormat::Table => {
                    let rows: Vec<Vec<String>> = r["points"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| {
                            vec![
                                p["at"].as_str().unwrap_or("-").to_owned(),
                                p["value"].to_string(),
                                p["count"].to_string(),
                            ]
                        })
                        .collect();
                    let value = format!("{}({})", r["agg"].as_str().unwrap_or("value"), metric);
                    output::table(&["at", &value, "samples"], &rows)?;
                    eprintln!(
                        "{} bucket(s) of {} over {} device(s), {} to {}",
                        rows.len(),
                        r["step"].as_str().unwrap_or("?"),
                        r["devices"],
                        r["from"].as_str().unwrap_or("?"),
                        r["to"].as_str().unwrap_or("?"),
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TelemetryCommand::Export {
            device,
            metrics,
            from,
            to,
            format,
            file,
        } => {
            let client = connect(g)?;
            let mut base = vec![("limit", "1000".to_owned())];
            if let Some(f) = from {
                base.push(("from", time_arg("from", f)?));
            }
            if let Some(t) = to {
                base.push(("to", time_arg("to", t)?));
            }
            let mut out: Box<dyn Write> = match file {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            if matches!(format, ExportFormat::Csv) {
                writeln!(out, "device,metric,at,value")?;
            }
            let mut total = 0u64;
            for metric in metrics {
                let mut cursor: Option<String> = None;
                loop {
                    let mut q = base.clone();
                    if let Some(c) = &cursor {
                        q.push(("cursor", c.clone()));
                    }
                    let page: Value = client
                        .get(
                            &format!("devices/{device}/telemetry/{}", segment(metric)),
                            &q,
                        )
                        .await?;
                    for s in page["items"].as_array().into_iter().flatten() {
                        let at = s["at"].as_str().unwrap_or_default();
                        let value = &s["value"];
                        match format {
                            // Metric names and times hold no comma or quote: no CSV quoting.
                            ExportFormat::Csv => writeln!(out, "{device},{metric},{at},{value}")?,
                            ExportFormat::Json => writeln!(
                                out,
                                "{}",
                                serde_json::json!({
                                    "device": device, "metric": metric, "at": at, "value": value,
                                })
                            )?,
                        }
                        total += 1;
                    }
                    match page["next_cursor"].as_str() {
                        Some(c) => cursor = Some(c.to_owned()),
                        None => break,
                    }
                }
            }
            out.flush()?;
            if file.is_some() {
                eprintln!("exported {total} samples");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
