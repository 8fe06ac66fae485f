//! `tender webhooks ...`: HTTP endpoints that receive the server's events, and their delivery
//! logs.

use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::cli::{GlobalArgs, OutputFormat};
use crate::commands::connect;
use crate::output;

#[derive(Subcommand, Debug)]
pub enum WebhooksCommand {
    /// Register an endpoint; prints its id and its signing secret (shown this once)
    Create {
        /// A name for people
        #[arg(long)]
        name: String,
        /// Where to POST events: an absolute http:// or https:// URL
        #[arg(long)]
        url: String,
        /// Event kinds, separated by commas: names (device.created), families (alert.*) or *
        #[arg(long, value_delimiter = ',', default_value = "*")]
        events: Vec<String>,
        /// Register it disabled (nothing is sent until it is enabled)
        #[arg(long)]
        disabled: bool,
    },
    /// Registered webhooks, oldest first
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One webhook
    Show { id: String },
    /// Change a webhook's name, URL, events, or switch it on or off
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        url: Option<String>,
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<String>>,
        /// Send events again
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Stop sending (events are kept for it and sent once it is enabled again)
        #[arg(long)]
        disable: bool,
    },
    /// Delete a webhook and its delivery log
    Delete { id: String },
    /// Replace the signing secret; prints the new one (shown this once)
    RotateSecret { id: String },
    /// The delivery log, newest first: state, attempts, last HTTP status and error
    Deliveries {
        id: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Send a delivery again (e.g. a dead one, once the endpoint is fixed)
    Redeliver { id: String, delivery: String },
    /// Queue a `webhook.test` ping to the endpoint
    Test { id: String },
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn check_id(id: &str, what: &str) -> Result<()> {
    crate::commands::uuid_like(id).map(|_| ()).ok_or_else(|| {
        anyhow!("{id:?} is not a {what} id (a UUID, as `tender webhooks list` shows)")
    })
}

fn print_webhook(w: &Value) {
    println!("id:       {}", s(&w["id"]));
    println!("name:     {}", s(&w["name"]));
    println!("url:      {}", s(&w["url"]));
    let events: Vec<String> = w["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    println!("events:   {}", events.join(","));
    println!("enabled:  {}", s(&w["enabled"]));
    println!("created:  {}", s(&w["created_at"]));
    println!("updated:  {}", s(&w["updated_at"]));
}

fn print_secret(w: &Value) {
    println!("{}", s(&w["id"]));
    println!("secret: {}", s(&w["secret"]));
    eprintln!(
        "keep the secret where the endpoint can read it: it is not shown again (verify the \
         Tender-Signature header with it, see docs/webhooks.md)"
    );
}

pub async fn run(g: &GlobalArgs, cmd: &WebhooksCommand) -> Result<ExitCode> {
    let client = connect(g)?;
    let json_out = g.output == OutputFormat::Json;
    match cmd {
        WebhooksCommand::Create {
            name,
            url,
            events,
            disabled,
        } => {
            let w: Value = client
                .send(
                    reqwest::Method::POST,
                    "webhooks",
                    &json!({"name": name, "url": url, "events": events, "enabled": !disabled}),
                )
                .await?;
            if json_out {
                output::json(&w)?;
            } else {
                print_secret(&w);
            }
        }
        WebhooksCommand::List { limit } => {
            let r: Value = client
                .get("webhooks", &[("limit", limit.to_string())])
                .await?;
            if json_out {
                output::json(&r)?;
            } else {
                let rows: Vec<Vec<String>> = r["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|w| {
                        let events: Vec<String> = w["events"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(s)
                            .collect();
                        vec![
                            s(&w["id"]),
                            s(&w["name"]),
                            if w["enabled"] == true { "yes" } else { "no" }.to_owned(),
                            events.join(","),
                            s(&w["url"]),
                        ]
                    })
                    .collect();
                output::table(&["ID", "NAME", "ENABLED", "EVENTS", "URL"], &rows)?;
                if r["next_cursor"].is_string() {
                    eprintln!("more webhooks follow; raise --limit to see them");
                }
            }
        }
        WebhooksCommand::Show { id } => {
            check_id(id, "webhook")?;
            let w: Value = client.get(&format!("webhooks/{id}"), &[]).await?;
            if json_out {
                output::json(&w)?;
            } else {
                print_webhook(&w);
            }
        }
        WebhooksCommand::Update {
            id,
            name,
            url,
            events,
            enable,
            disable,
        } => {
            check_id(id, "webhook")?;
            let mut body = Map::new();
            if let Some(n) = name {
                body.insert("name".into(), json!(n));
            }
            if let Some(u) = url {
                body.insert("url".into(), json!(u));
            }
            if let Some(e) = events {
                body.insert("events".into(), json!(e));
            }
            if *enable || *disable {
                body.insert("enabled".into(), json!(*enable));
            }
            if body.is_empty() {
                bail!("nothing to change: give --name, --url, --events, --enable or --disable");
            }
            let w: Value = client
                .send(
                    reqwest::Method::PATCH,
                    &format!("webhooks/{id}"),
                    &Value::Object(body),
                )
                .await?;
            if json_out {
                output::json(&w)?;
            } else {
                print_webhook(&w);
            }
        }
        WebhooksCommand::Delete { id } => {
            check_id(id, "webhook")?;
            client.delete(&format!("webhooks/{id}")).await?;
            if !json_out {
                eprintln!("webhook {id} deleted");
            }
        }
        WebhooksCommand::RotateSecret { id } => {
            check_id(id, "webhook")?;
            let w: Value = client
                .send(
                    reqwest::Method::POST,
                    &format!("webhooks/{id}/rotate-secret"),
                    &json!({}),
                )
                .await?;
            if json_out {
                output::json(&w)?;
            } else {
                print_secret(&w);
            }
        }
        WebhooksCommand::Deliveries { id, limit } => {
            check_id(id, "webhook")?;
            let r: Value = client
                .get(
                    &format!("webhooks/{id}/deliveries"),
                    &[("limit", limit.to_string())],
                )
                .await?;
            if json_out {
                output::json(&r)?;
            } else {
                let rows: Vec<Vec<String>> = r["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| {
                        vec![
                            s(&d["id"]),
                            s(&d["kind"]),
                            s(&d["event_id"]),
                            s(&d["state"]),
                            s(&d["attempts"]),
                            s(&d["last_status"]),
                            s(&d["next_attempt_at"]),
                            d["last_error"]
                                .as_str()
                                .unwrap_or("")
                                .chars()
                                .take(80)
                                .collect(),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "ID", "KIND", "EVENT", "STATE", "ATTEMPTS", "STATUS", "NEXT", "ERROR",
                    ],
                    &rows,
                )?;
                if r["next_cursor"].is_string() {
                    eprintln!("older deliveries follow; raise --limit to see them");
                }
            }
        }
        WebhooksCommand::Redeliver { id, delivery } => {
            check_id(id, "webhook")?;
            check_id(delivery, "delivery")?;
            let d: Value = client
                .send(
                    reqwest::Method::POST,
                    &format!("webhooks/{id}/deliveries/{delivery}/redeliver"),
                    &json!({}),
                )
                .await?;
            if json_out {
                output::json(&d)?;
            } else {
                eprintln!(
                    "delivery {} queued again; follow it with `tender webhooks deliveries {id}`",
                    s(&d["id"])
                );
            }
        }
        WebhooksCommand::Test { id } => {
            check_id(id, "webhook")?;
            let d: Value = client
                .send(
                    reqwest::Method::POST,
                    &format!("webhooks/{id}/test"),
                    &json!({}),
                )
                .await?;
            if json_out {
                output::json(&d)?;
            } else {
                println!("{}", s(&d["id"]));
                eprintln!(
                    "webhook.test ping queued; follow it with `tender webhooks deliveries {id}`"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
