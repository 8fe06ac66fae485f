//! `tender command ...`: send commands to devices and follow them.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::cli::{GlobalArgs, OutputFormat, parse_duration_secs};
use crate::commands::connect;
use crate::output;

#[derive(Subcommand, Debug)]
pub enum CommandCommand {
    /// Send a command: reboot, restart-agent, ping, or a custom command the devices allow
    #[command(group(clap::ArgGroup::new("target").required(true)
        .args(["device", "devices", "group", "query"])))]
    Send {
        /// The command's name
        name: String,
        /// Arguments (for custom commands that allow them)
        args: Vec<String>,
        /// One device (id)
        #[arg(long)]
        device: Option<String>,
        /// Several devices: ids separated by commas
        #[arg(long, value_delimiter = ',')]
        devices: Option<Vec<String>>,
        /// A static or dynamic group, by name
        #[arg(long)]
        group: Option<String>,
        /// A device query, e.g. 'inventory.os.id = "debian"'
        #[arg(long, short = 'q')]
        query: Option<String>,
        /// Time to live: not sent after, unfinished devices expire (e.g. 1h) [default: 24h]
        #[arg(long, value_parser = parse_duration_secs, value_name = "DURATION")]
        ttl: Option<u64>,
        /// Time one attempt may take on a device (e.g. 5m) [default: 5m]
        #[arg(long, value_parser = parse_duration_secs, value_name = "DURATION")]
        timeout: Option<u64>,
        /// Attempts per device [default: 3]
        #[arg(long)]
        attempts: Option<u32>,
        /// Wait until every device finished, showing progress; exit 1 when any did not succeed
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (the command goes on) [default: the TTL, at most 24h]
        #[arg(long, value_parser = parse_duration_secs, value_name = "DURATION", requires = "wait")]
        wait_timeout: Option<u64>,
    },
    /// Commands sent, newest first, with their progress
    List {
        /// Commands per page (1-1000)
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// A command, its summary and each device's status and result
    Show { id: String },
    /// Cancel a command on every device that has not finished it
    Cancel { id: String },
}

pub async fn run(g: &GlobalArgs, cmd: &CommandCommand) -> Result<ExitCode> {
    match cmd {
        CommandCommand::Send {
            name,
            args,
            device,
            devices,
            group,
            query,
            ttl,
            timeout,
            attempts,
            wait,
            wait_timeout,
        } => {
            let target = if let Some(d) = device {
                json!({"device": d})
            } else if let Some(ds) = devices {
                json!({"devices": ds})
            } else if let Some(gr) = group {
                json!({"group": gr})
            } else {
                json!({"query": query})
            };
            let body = json!({
                "name": name, "args": args, "target": target,
                "ttl_secs": ttl, "timeout_secs": timeout, "max_attempts": attempts,
            });
            let client = connect(g)?;
            let c: Value = client
                .send(reqwest::Method::POST, "commands", &body)
                .await?;
            let id = c["id"].as_str().unwrap_or_default().to_owned();
            if !wait {
                match g.output {
                    OutputFormat::Json => output::json(&c)?,
                    OutputFormat::Table => {
                        println!("{id}");
                        eprintln!("{}", progress(&c["summary"]));
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            let limit = wait_timeout.or(*ttl).unwrap_or(86_400).min(86_400);
            eprintln!("command {id}: {name} to {}", str_of(&c["target"]));
            follow(g, &id, Duration::from_secs(limit)).await
        }
        CommandCommand::List { limit } => {
            let r: Value = connect(g)?
                .get("commands", &[("limit", limit.to_string())])
                .await?;
            match g.output {
                OutputFormat::Json => output::json(&r)?,
                OutputFormat::Table => {
                    let rows: Vec<Vec<String>> = r["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            vec![
                                str_of(&c["id"]),
                                str_of(&c["name"]),
                                str_of(&c["target"]),
                                str_of(&c["created_at"]),
                                progress(&c["summary"]),
                            ]
                        })
                        .collect();
                    output::table(&["id", "name", "target", "sent", "progress"], &rows)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CommandCommand::Show { id } => {
            check_id(id)?;
            let client = connect(g)?;
            let c: Value = client.get(&format!("commands/{id}"), &[]).await?;
            let targets = all_targets(&client, id).await?;
            match g.output {
                OutputFormat::Json => output::json(&json!({"command": c, "devices": targets}))?,
                OutputFormat::Table => {
                    println!(
                        "{} {} to {}",
                        str_of(&c["name"]),
                        c["args"]
                            .as_array()
                            .map(|a| a.iter().map(str_of).collect::<Vec<_>>().join(" "))
                            .unwrap_or_default(),
                        str_of(&c["target"])
                    );
                    println!("{}", progress(&c["summary"]));
                    print_targets(&targets)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CommandCommand::Cancel { id } => {
            check_id(id)?;
            let c: Value = connect(g)?
                .send(
                    reqwest::Method::POST,
                    &format!("commands/{id}/cancel"),
                    &Value::Null,
                )
                .await?;
            match g.output {
                OutputFormat::Json => output::json(&c)?,
                OutputFormat::Table => println!("{}", progress(&c["summary"])),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check_id(id: &str) -> Result<()> {
    crate::commands::uuid_like(id).map(|_| ()).ok_or_else(|| {
        anyhow!("{id:?} is not a command id (a UUID, as `tender command list` shows)")
    })
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn n(s: &Value, k: &str) -> u64 {
    s[k].as_u64().unwrap_or(0)
}

/// `succeeded 950/1000, queued 50, failed 0` (and any other state that has devices).
pub fn progress(s: &Value) -> String {
    let mut line = format!(
        "succeeded {}/{}, queued {}, failed {}",
        n(s, "succeeded"),
        n(s, "total"),
        n(s, "queued"),
        n(s, "failed")
    );
    for k in ["sent", "delivered", "timed_out", "expired", "canceled"] {
        if n(s, k) > 0 {
            line.push_str(&format!(", {} {}", k.replace('_', " "), n(s, k)));
        }
    }
    line
}

async fn all_targets(client: &crate::client::ApiClient, id: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![("limit", "1000".to_owned())];
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let page: Value = client.get(&format!("commands/{id}/devices"), &q).await?;
        out.extend(page["items"].as_array().into_iter().flatten().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(out),
        }
    }
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.trim().replace('\n', " | ");
    let mut cut: String = flat.chars().take(max).collect();
    if cut.len() < flat.len() {
        cut.push('…');
    }
    cut
}

fn print_targets(targets: &[Value]) -> Result<()> {
    let rows: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            let result = match (&t["error"], &t["output"], &t["stdout"]) {
                (Value::String(e), _, _) => one_line(e, 80),
                (_, o @ Value::Object(_), _) => one_line(&o.to_string(), 80),
                (_, _, Value::String(s)) if !s.is_empty() => one_line(s, 80),
                _ => String::new(),
            };
            vec![
                str_of(&t["device_id"]),
                str_of(&t["state"]),
                str_of(&t["attempts"]),
                str_of(&t["exit_code"]),
                result,
            ]
        })
        .collect();
    output::table(&["device", "state", "attempts", "exit", "result"], &rows)
}

/// Follows a command until no device is pending or `limit` passes; a progress line on stderr
/// whenever it moves; the per-device table at the end for small targets.
async fn follow(g: &GlobalArgs, id: &str, limit: Duration) -> Result<ExitCode> {
    let client = connect(g)?;
    let start = Instant::now();
    let mut last = String::new();
    let c = loop {
        let c: Value = client.get(&format!("commands/{id}"), &[]).await?;
        let line = progress(&c["summary"]);
        if line != last {
            eprintln!("{line}");
            last = line;
        }
        if c["summary"]["done"] == true {
            break c;
        }
        if start.elapsed() >= limit {
            return Err(anyhow!(
                "gave up waiting after {} s with {} device(s) still pending; the command goes on (`tender command show {id}`)",
                limit.as_secs(),
                n(&c["summary"], "pending")
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let s = &c["summary"];
    let targets = if n(s, "total") <= 50 || matches!(g.output, OutputFormat::Json) {
        all_targets(&client, id).await?
    } else {
        Vec::new()
    };
    match g.output {
        OutputFormat::Json => output::json(&json!({"command": c, "devices": targets}))?,
        OutputFormat::Table if !targets.is_empty() => print_targets(&targets)?,
        OutputFormat::Table => {}
    }
    let bad = n(s, "failed") + n(s, "timed_out") + n(s, "expired") + n(s, "canceled");
    if bad > 0 {
        eprintln!(
            "error: {bad} of {} device(s) did not succeed (`tender command show {id}`)",
            n(s, "total")
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
