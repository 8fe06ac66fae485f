//! `tender alerts ...`: alerts (list, show, acknowledge) and alert rules (list, create, delete).

use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::cli::{GlobalArgs, OutputFormat};
use crate::commands::connect;
use crate::output;

#[derive(Subcommand, Debug)]
pub enum AlertsCommand {
    /// Alerts, newest first
    List {
        /// firing, acknowledged, resolved, or open (firing or acknowledged)
        #[arg(long)]
        state: Option<String>,
        /// info, warning or critical
        #[arg(long)]
        severity: Option<String>,
        /// Only this device's alerts (id)
        #[arg(long)]
        device: Option<String>,
        /// Only this rule's alerts (id)
        #[arg(long)]
        rule: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One alert, with its acknowledgement and resolution
    Show { id: String },
    /// Acknowledge a firing alert: it stays open until its condition clears
    Ack {
        id: String,
        /// What is being done about it
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Alert rules
    #[command(subcommand)]
    Rules(RulesCommand),
}

#[derive(Subcommand, Debug)]
pub enum RulesCommand {
    /// Rules, newest first
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Create a rule, e.g. `tender alerts rules create hot 'temperature > 80 for 5m'`
    Create {
        /// Unique in the tenant
        name: String,
        /// 'METRIC > VALUE [for DURATION] [clear < VALUE]' (also >=, <, <=), 'offline for
        /// DURATION', 'update failed' or 'reported.PATH = VALUE' (also !=, >, >=, <, <=);
        /// durations like 30s, 5m, 2h
        condition: String,
        /// info, warning or critical
        #[arg(long, default_value = "warning")]
        severity: String,
        /// Only members of this group (name or id)
        #[arg(long, conflicts_with = "query")]
        group: Option<String>,
        /// Only devices matching this query, e.g. 'tag.site = "north"'
        #[arg(long, short = 'q')]
        query: Option<String>,
        /// Create it disabled
        #[arg(long)]
        disabled: bool,
    },
    /// Enable a rule
    Enable { id: String },
    /// Disable a rule (its open alerts resolve)
    Disable { id: String },
    /// Delete a rule: its open alerts resolve, its alert history stays
    Delete { id: String },
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn check_id(id: &str, what: &str, hint: &str) -> Result<()> {
    crate::commands::uuid_like(id)
        .map(|_| ())
        .ok_or_else(|| anyhow!("{id:?} is not {what} id (a UUID, as `{hint}` shows)"))
}

fn alert_rows(items: &Value) -> Vec<Vec<String>> {
    items
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            vec![
                s(&a["id"]),
                s(&a["state"]),
                s(&a["severity"]),
                s(&a["rule_name"]),
                s(&a["device_id"]),
                s(&a["fired_at"]),
                s(&a["reason"]),
            ]
        })
        .collect()
}

fn print_alert(a: &Value) {
    println!("{}  {}  {}", s(&a["id"]), s(&a["state"]), s(&a["severity"]));
    println!("rule:    {} ({})", s(&a["rule_name"]), s(&a["rule_id"]));
    println!("device:  {}", s(&a["device_id"]));
    println!("fired:   {}  {}", s(&a["fired_at"]), s(&a["reason"]));
    if !a["acknowledged_at"].is_null() {
        println!(
            "acked:   {} by {}: {}",
            s(&a["acknowledged_at"]),
            s(&a["acknowledged_by"]),
            s(&a["ack_note"])
        );
    }
    if !a["resolved_at"].is_null() {
        println!(
            "resolved: {}  {}",
            s(&a["resolved_at"]),
            s(&a["resolve_reason"])
        );
    }
}

pub async fn run(g: &GlobalArgs, cmd: &AlertsCommand) -> Result<ExitCode> {
    let client = connect(g)?;
    match cmd {
        AlertsCommand::List {
            state,
            severity,
            device,
            rule,
            limit,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            for (k, v) in [
                ("state", state),
                ("severity", severity),
                ("device", device),
                ("rule", rule),
            ] {
                if let Some(v) = v {
                    q.push((k, v.clone()));
                }
            }
            let r: Value = client.get("alerts", &q).await?;
            if g.output == OutputFormat::Json {
                output::json(&r)?;
            } else {
                output::table(
                    &[
                        "ID", "STATE", "SEVERITY", "RULE", "DEVICE", "FIRED", "REASON",
                    ],
                    &alert_rows(&r["items"]),
                )?;
            }
        }
        AlertsCommand::Show { id } => {
            check_id(id, "an alert", "tender alerts list")?;
            let a: Value = client.get(&format!("alerts/{id}"), &[]).await?;
            if g.output == OutputFormat::Json {
                output::json(&a)?;
            } else {
                print_alert(&a);
            }
        }
        AlertsCommand::Ack { id, note } => {
            check_id(id, "an alert", "tender alerts list")?;
            let a: Value = client
                .send(
                    reqwest::Method::POST,
                    &format!("alerts/{id}/ack"),
                    &json!({"note": note}),
                )
                .await?;
            if g.output == OutputFormat::Json {
                output::json(&a)?;
            } else {
                print_alert(&a);
            }
        }
        AlertsCommand::Rules(cmd) => rules(g, &client, cmd).await?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_rules(g: &GlobalArgs, r: &Value) -> Result<()> {
    if g.output == OutputFormat::Json {
        return output::json(r);
    }
    let one = [r.clone()];
    let items: Vec<Value> = match r["items"].as_array() {
        Some(items) => items.clone(),
        None => one.to_vec(),
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|x| {
            vec![
                s(&x["id"]),
                s(&x["name"]),
                s(&x["severity"]),
                if x["enabled"] == json!(true) {
                    "yes".into()
                } else {
                    "no".into()
                },
                s(&x["condition"]),
                s(&x["scope"]),
            ]
        })
        .collect();
    output::table(
        &["ID", "NAME", "SEVERITY", "ENABLED", "CONDITION", "SCOPE"],
        &rows,
    )
}

async fn rules(
    g: &GlobalArgs,
    client: &crate::client::ApiClient,
    cmd: &RulesCommand,
) -> Result<()> {
    match cmd {
        RulesCommand::List { limit } => {
            let r: Value = client
                .get("alert-rules", &[("limit", limit.to_string())])
                .await?;
            print_rules(g, &r)
        }
        RulesCommand::Create {
            name,
            condition,
            severity,
            group,
            query,
            disabled,
        } => {
            let r: Value = client
                .send(
                    reqwest::Method::POST,
                    "alert-rules",
                    &json!({
                        "name": name,
                        "condition": condition,
                        "severity": severity,
                        "group": group,
                        "query": query,
                        "enabled": !disabled,
                    }),
                )
                .await?;
            print_rules(g, &r)
        }
        RulesCommand::Enable { id } | RulesCommand::Disable { id } => {
            check_id(id, "an alert rule", "tender alerts rules list")?;
            let enabled = matches!(cmd, RulesCommand::Enable { .. });
            let r: Value = client
                .send(
                    reqwest::Method::PATCH,
                    &format!("alert-rules/{id}"),
                    &json!({"enabled": enabled}),
                )
                .await?;
            print_rules(g, &r)
        }
        RulesCommand::Delete { id } => {
            check_id(id, "an alert rule", "tender alerts rules list")?;
            client.delete(&format!("alert-rules/{id}")).await?;
            if g.output != OutputFormat::Json {
                eprintln!("deleted alert rule {id}; its open alerts are resolved");
            }
            Ok(())
        }
    }
}
