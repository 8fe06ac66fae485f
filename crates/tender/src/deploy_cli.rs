//! `tender deploy ...`: phased deployments of artifacts to devices.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::cli::{GlobalArgs, OutputFormat, parse_duration_secs};
use crate::commands::connect;
use crate::output;

#[derive(Subcommand, Debug)]
pub enum DeployCommand {
    /// Start a deployment (see `preview` first)
    Create(CreateArgs),
    /// What a deployment would do, per phase: devices, online, to install, up to date,
    /// incompatible, bytes. Nothing is started
    Preview(CreateArgs),
    /// Deployments, newest first
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// A deployment and its phases
    Show {
        id: String,
        /// Also list each device (state, attempts, error)
        #[arg(long)]
        devices: bool,
    },
    /// Follow a deployment live, phase by phase, until it completes (exit 0), pauses (exit 2)
    /// or is canceled or aborted (exit 1)
    Watch {
        id: String,
        /// Give up after this long (the deployment goes on)
        #[arg(long, value_parser = parse_duration_secs, value_name = "DURATION")]
        timeout: Option<u64>,
    },
    /// Stop notifying devices; those already updating finish
    Pause { id: String },
    /// Carry on after a pause; failures so far stop counting against thresholds
    Resume {
        id: String,
        /// Carry on with a fixed artifact (id or NAME@VERSION); failed devices get it
        #[arg(long)]
        artifact: Option<String>,
        /// Give failed devices fresh attempts (implied by --artifact)
        #[arg(long)]
        retry_failed: bool,
    },
    /// Cancel: devices not yet installing stop, those installing finish or roll back
    Cancel { id: String },
    /// Approve a phase that waits for approval
    Approve {
        id: String,
        /// The phase, from 1
        #[arg(long)]
        phase: u32,
    },
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true)
    .args(["device", "devices", "group", "query"])))]
pub struct CreateArgs {
    /// The artifact: id or NAME@VERSION
    #[arg(long)]
    artifact: String,
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
    /// A phase: SIZE[,success=AMOUNT][,fail=AMOUNT][,on-failure=pause|abort|continue]
    /// [,approval][,at=RFC3339]; SIZE and AMOUNT are counts (50) or shares (10%). Repeat in
    /// order; the last phase takes the rest [default: one phase]
    #[arg(long = "phase", value_name = "SPEC")]
    phases: Vec<String>,
    /// Most devices notified per minute
    #[arg(long)]
    rate: Option<u32>,
    /// Most devices downloading at once
    #[arg(long)]
    max_downloads: Option<u32>,
    /// Notifications per device before a failure is final [default: 3]
    #[arg(long)]
    attempts: Option<u32>,
    /// First retry after this long, doubling per attempt (e.g. 1m) [default: 1m]
    #[arg(long, value_parser = parse_duration_secs, value_name = "DURATION")]
    retry_backoff: Option<u64>,
    /// Install even where this version or a newer one runs
    #[arg(long)]
    force: bool,
    /// Download and verify only
    #[arg(long)]
    download_only: bool,
    /// Devices that join the group or match the query later get it too
    #[arg(long)]
    continuous: bool,
    /// Start at this time (RFC 3339) instead of now
    #[arg(long, value_name = "TIME")]
    start_at: Option<String>,
    /// A maintenance window: devices are notified only while one is open.
    /// 'CRON,DURATION[,TIME_ZONE]', e.g. '0 2 * * 1-5,3h,Europe/Berlin'; repeat for several
    #[arg(long = "window", value_name = "CRON,DURATION[,TZ]")]
    windows: Vec<String>,
    /// A name [default: the artifact's name and version]
    #[arg(long)]
    name: Option<String>,
}

/// Parses `0 2 * * 1-5,3h,Europe/Berlin`.
fn window(spec: &str) -> Result<Value> {
    let mut parts = spec.split(',').map(str::trim);
    let (Some(cron), Some(duration)) = (parts.next(), parts.next()) else {
        bail!(
            "--window {spec:?}: give CRON,DURATION[,TIME_ZONE], e.g. '0 2 * * *,3h,Europe/Berlin'"
        );
    };
    let secs = parse_duration_secs(duration).map_err(|e| anyhow!("--window {spec:?}: {e}"))?;
    let tz = parts.next();
    if parts.next().is_some() {
        bail!(
            "--window {spec:?}: too many parts; a cron list like '0,30' cannot be used here, write one window per time"
        );
    }
    Ok(json!({"cron": cron, "duration_secs": secs, "time_zone": tz}))
}

/// Parses `10%,success=90%,fail=5,on-failure=abort,approval,at=...`.
fn phase(spec: &str) -> Result<Value> {
    let mut parts = spec.split(',').map(str::trim);
    let size = parts
        .next()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow!("--phase {spec:?}: start with the size, e.g. 10% or 50"))?;
    let mut p = json!({"size": size});
    for part in parts {
        match part.split_once('=') {
            Some(("success", v)) => p["success_threshold"] = json!(v),
            Some(("fail", v)) => p["failure_threshold"] = json!(v),
            Some(("on-failure", v)) => p["on_failure"] = json!(v),
            Some(("at", v)) => p["start_at"] = json!(v),
            None if part == "approval" => p["requires_approval"] = json!(true),
            _ => bail!(
                "--phase {spec:?}: unknown part {part:?}; use success=, fail=, on-failure=, approval, at="
            ),
        }
    }
    Ok(p)
}

fn body(a: &CreateArgs) -> Result<Value> {
    let target = if let Some(d) = &a.device {
        json!({"device": d})
    } else if let Some(ds) = &a.devices {
        json!({"devices": ds})
    } else if let Some(g) = &a.group {
        json!({"group": g})
    } else {
        json!({"query": a.query})
    };
    let phases = if a.phases.is_empty() {
        Value::Null
    } else {
        Value::Array(a.phases.iter().map(|p| phase(p)).collect::<Result<_>>()?)
    };
    let windows = if a.windows.is_empty() {
        Value::Null
    } else {
        Value::Array(a.windows.iter().map(|w| window(w)).collect::<Result<_>>()?)
    };
    Ok(json!({
        "artifact": a.artifact, "target": target, "phases": phases, "name": a.name,
        "maintenance_windows": windows,
        "rate_per_minute": a.rate, "max_concurrent_downloads": a.max_downloads,
        "max_attempts": a.attempts, "retry_backoff_secs": a.retry_backoff,
        "force": a.force, "download_only": a.download_only, "continuous": a.continuous,
        "start_at": a.start_at,
    }))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        width
    } else {
        ((done.min(total) as f64 / total as f64) * width as f64) as usize
    };
    format!(
        "[{}{}]",
        "#".repeat(filled),
        ".".repeat(width - filled.min(width))
    )
}

/// One line per phase: `phase 2/3  [#####.....]  45/100 ok, 3 failed, 10 updating, 42 queued  active`.
fn phase_lines(d: &Value) -> Vec<String> {
    let count = d["phases"].as_array().map_or(0, Vec::len);
    d["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let total = n(&p["total"]);
            let ok = n(&p["succeeded"]) + n(&p["skipped"]);
            let mut line = format!(
                "phase {}/{count} ({:>4}) {} {ok}/{total} ok",
                n(&p["phase"]),
                s(&p["size"]),
                bar(
                    ok + n(&p["failed"]) + n(&p["incompatible"]) + n(&p["canceled"]),
                    total,
                    20
                ),
            );
            for (k, label) in [
                ("failed", "failed"),
                ("in_progress", "updating"),
                ("queued", "queued"),
                ("incompatible", "incompatible"),
                ("canceled", "canceled"),
            ] {
                if n(&p[k]) > 0 {
                    line.push_str(&format!(", {} {label}", n(&p[k])));
                }
            }
            line.push_str(&format!("  {}", s(&p["status"])));
            if p["requires_approval"] == true && p["approved"] != true {
                line.push_str(" (needs approval)");
            }
            line
        })
        .collect()
}

fn headline(d: &Value) -> String {
    let mut h = format!(
        "{} {}: {} to {}",
        s(&d["id"]),
        s(&d["state"]),
        s(&d["artifact"]),
        s(&d["target"])
    );
    if let Some(r) = d["status_reason"].as_str() {
        h.push_str(&format!(" — {r}"));
    }
    h
}

fn print_deployment(d: &Value) {
    println!("{}", headline(d));
    for l in phase_lines(d) {
        println!("  {l}");
    }
}

async fn all_devices(client: &crate::client::ApiClient, id: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![("limit", "1000".to_owned())];
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let page: Value = client.get(&format!("deployments/{id}/devices"), &q).await?;
        out.extend(page["items"].as_array().into_iter().flatten().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(out),
        }
    }
}

fn check_id(id: &str) -> Result<()> {
    crate::commands::uuid_like(id).map(|_| ()).ok_or_else(|| {
        anyhow!("{id:?} is not a deployment id (a UUID, as `tender deploy list` shows)")
    })
}

pub async fn run(g: &GlobalArgs, cmd: &DeployCommand) -> Result<ExitCode> {
    let client = connect(g)?;
    match cmd {
        DeployCommand::Preview(a) => {
            let p: Value = client
                .send(reqwest::Method::POST, "deployments/preview", &body(a)?)
                .await?;
            if g.output == OutputFormat::Json {
                output::json(&p)?;
            } else {
                println!(
                    "{} to {} ({} devices)",
                    s(&p["artifact"]),
                    s(&p["target"]),
                    n(&p["devices"])
                );
                let rows: Vec<Vec<String>> = p["phases"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| {
                        [
                            "phase",
                            "devices",
                            "online",
                            "to_install",
                            "up_to_date",
                            "incompatible",
                            "bytes",
                        ]
                        .iter()
                        .map(|k| s(&x[*k]))
                        .collect()
                    })
                    .collect();
                output::table(
                    &[
                        "PHASE",
                        "DEVICES",
                        "ONLINE",
                        "TO INSTALL",
                        "UP TO DATE",
                        "INCOMPATIBLE",
                        "BYTES",
                    ],
                    &rows,
                )?;
                for e in p["incompatible_examples"].as_array().into_iter().flatten() {
                    println!("incompatible: {} ({})", s(&e["device_id"]), s(&e["reason"]));
                }
            }
        }
        DeployCommand::Create(a) => {
            let d: Value = client
                .send(reqwest::Method::POST, "deployments", &body(a)?)
                .await?;
            if g.output == OutputFormat::Json {
                output::json(&d)?;
            } else {
                println!("{}", s(&d["id"]));
                eprintln!("{}", headline(&d));
                eprintln!("follow it with `tender deploy watch {}`", s(&d["id"]));
            }
        }
        DeployCommand::List { limit } => {
            let r: Value = client
                .get("deployments", &[("limit", limit.to_string())])
                .await?;
            if g.output == OutputFormat::Json {
                output::json(&r)?;
            } else {
                let rows: Vec<Vec<String>> = r["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| {
                        vec![
                            s(&d["id"]),
                            s(&d["state"]),
                            s(&d["artifact"]),
                            s(&d["target"]),
                            format!(
                                "{}/{}",
                                n(&d["current_phase"]),
                                d["phases"].as_array().map_or(0, Vec::len)
                            ),
                            format!("{}/{}", n(&d["succeeded"]), n(&d["total"])),
                            n(&d["failed"]).to_string(),
                        ]
                    })
                    .collect();
                output::table(
                    &["ID", "STATE", "ARTIFACT", "TARGET", "PHASE", "OK", "FAILED"],
                    &rows,
                )?;
            }
        }
        DeployCommand::Show { id, devices } => {
            check_id(id)?;
            let d: Value = client.get(&format!("deployments/{id}"), &[]).await?;
            let list = if *devices {
                all_devices(&client, id).await?
            } else {
                Vec::new()
            };
            if g.output == OutputFormat::Json {
                output::json(&json!({"deployment": d, "devices": list}))?;
            } else {
                print_deployment(&d);
                if *devices {
                    let rows: Vec<Vec<String>> = list
                        .iter()
                        .map(|t| {
                            vec![
                                s(&t["device_id"]),
                                s(&t["phase"]),
                                s(&t["state"]),
                                s(&t["attempts"]),
                                t["error"].as_str().unwrap_or("").chars().take(80).collect(),
                            ]
                        })
                        .collect();
                    output::table(&["DEVICE", "PHASE", "STATE", "ATTEMPTS", "ERROR"], &rows)?;
                }
            }
        }
        DeployCommand::Watch { id, timeout } => {
            check_id(id)?;
            return watch(&client, g, id, timeout.map(Duration::from_secs)).await;
        }
        DeployCommand::Pause { id } | DeployCommand::Cancel { id } => {
            check_id(id)?;
            let action = if matches!(cmd, DeployCommand::Pause { .. }) {
                "pause"
            } else {
                "cancel"
            };
            let d: Value = client
                .send(
                    reqwest::Method::POST,
                    &format!("deployments/{id}/{action}"),
                    &Value::Null,
                )
                .await?;
            if g.output == OutputFormat::Json {
                output::json(&d)?;
            } else {
                print_deployment(&d);
            }
        }
        DeployCommand::Resume {
            id,
            artifact,
            retry_failed,
        } => {
            check_id(id)?;
            let d: Value = client
                .send(
                    reqwest::Method::POST,
                    &format!("deployments/{id}/resume"),
                    &json!({"artifact": artifact, "retry_failed": retry_failed}),
                )
                .await?;
            if g.output == OutputFormat::Json {
                output::json(&d)?;
            } else {
                print_deployment(&d);
            }
        }
        DeployCommand::Approve { id, phase } => {
            check_id(id)?;
            let d: Value = client
                .send(
                    reqwest::Method::POST,
                    &format!("deployments/{id}/approve"),
                    &json!({"phase": phase}),
                )
                .await?;
            if g.output == OutputFormat::Json {
                output::json(&d)?;
            } else {
                print_deployment(&d);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the deployment whenever it changes, until it completes, pauses or stops.
async fn watch(
    client: &crate::client::ApiClient,
    g: &GlobalArgs,
    id: &str,
    timeout: Option<Duration>,
) -> Result<ExitCode> {
    let start = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let d: Value = client.get(&format!("deployments/{id}"), &[]).await?;
        let text = if g.output == OutputFormat::Json {
            d.to_string()
        } else {
            let mut t = headline(&d);
            for l in phase_lines(&d) {
                t.push_str("\n  ");
                t.push_str(&l);
            }
            t
        };
        if text != last {
            println!("{text}");
            last = text;
        }
        match d["state"].as_str() {
            Some("completed") => return Ok(ExitCode::SUCCESS),
            Some("paused") => {
                eprintln!(
                    "paused: {}; resume with `tender deploy resume {id}` (add --artifact NAME@VERSION to carry on with a fix)",
                    s(&d["status_reason"])
                );
                return Ok(ExitCode::from(2));
            }
            Some("canceled") | Some("aborted") => return Ok(ExitCode::FAILURE),
            _ => {}
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            bail!("gave up watching; the deployment goes on (`tender deploy show {id}`)");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
