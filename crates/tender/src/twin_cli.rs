//! `tender twin ...` and `tender config ...`: the device twin and layered configuration.

use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use crate::cli::{GlobalArgs, OutputFormat};
use crate::client::ApiClient;
use crate::commands::connect;
use crate::output;

#[derive(Subcommand, Debug)]
pub enum TwinCommand {
    /// A device's desired, reported and effective state, and what it has not applied yet
    Get { device: String },
    /// Change a device's own desired values (merged over the fleet and group layers)
    Set {
        device: String,
        #[command(flatten)]
        values: Values,
        /// Only if the desired state is still at this version (its ETag); otherwise fail
        /// with a conflict instead of overwriting someone else's change
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// What the device still has to apply: effective values that differ from what it reported
    Diff { device: String },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Every configuration layer: the fleet defaults and each group's values
    List,
    /// Set values in the fleet layer (--fleet) or a group's layer (--group)
    Set {
        #[command(flatten)]
        layer: LayerArg,
        #[command(flatten)]
        values: Values,
        /// Group layers: higher priority wins where groups disagree (default 0)
        #[arg(long)]
        priority: Option<i32>,
        /// Only if the layer is still at this version; otherwise fail with a conflict
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Remove a whole layer
    Delete {
        #[command(flatten)]
        layer: LayerArg,
    },
    /// A device's effective configuration and which layer each value came from
    Show { device: String },
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct LayerArg {
    /// The fleet-wide defaults
    #[arg(long)]
    fleet: bool,
    /// A group's layer (name or id)
    #[arg(long)]
    group: Option<String>,
}

#[derive(Args, Debug)]
pub struct Values {
    /// KEY=VALUE pairs; VALUE is JSON when it parses as JSON (`5`, `true`, `{"a":1}`,
    /// `["x"]`), a string otherwise; dotted keys nest (`ntp.server=pool.ntp.org`)
    pub set: Vec<String>,
    /// Keys to remove (dotted keys nest)
    #[arg(long, value_name = "KEY")]
    pub unset: Vec<String>,
}

/// Builds a JSON merge patch from KEY=VALUE pairs and keys to remove.
pub fn merge_patch(values: &Values) -> Result<Map<String, Value>> {
    let mut patch = Map::new();
    let mut put = |key: &str, value: Value| -> Result<()> {
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            bail!("{key:?} is not a key: use names separated by dots, like ntp.server");
        }
        let mut at = &mut patch;
        for p in &parts[..parts.len() - 1] {
            let entry = at
                .entry((*p).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                bail!("{key:?} sets inside {p:?}, which this command also sets to a value");
            }
            at = entry
                .as_object_mut()
                .ok_or_else(|| anyhow!("{p:?} is not an object"))?;
        }
        at.insert(parts[parts.len() - 1].to_owned(), value);
        Ok(())
    };
    for pair in &values.set {
        let (key, raw) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("{pair:?} is not KEY=VALUE (for example log.level=debug)"))?;
        let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
        put(key, value)?;
    }
    for key in &values.unset {
        put(key, Value::Null)?;
    }
    if patch.is_empty() {
        bail!("nothing to change: give KEY=VALUE pairs or --unset KEY");
    }
    Ok(patch)
}

/// Every leaf of a document with its JSON Pointer, in order.
fn leaves(doc: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match doc {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = k.replace('~', "~0").replace('/', "~1");
                leaves(v, &format!("{prefix}/{key}"), out);
            }
        }
        other => out.push((prefix.to_owned(), other.clone())),
    }
}

fn source_text(s: &Value) -> String {
    match s["layer"].as_str() {
        Some("group") => format!("group {}", s["group"].as_str().unwrap_or("?")),
        Some(other) => other.to_owned(),
        None => "-".to_owned(),
    }
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A device by id, or by name when exactly one device has it.
pub async fn resolve_device(client: &ApiClient, device: &str) -> Result<String> {
    if device.len() == 36 && device.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Ok(device.to_owned());
    }
    let quoted = serde_json::to_string(device)?;
    let found: Value = client
        .get(
            "devices",
            &[("q", format!("name = {quoted}")), ("limit", "2".into())],
        )
        .await?;
    let items = found["items"].as_array().cloned().unwrap_or_default();
    match items.as_slice() {
        [one] => Ok(one["id"].as_str().unwrap_or_default().to_owned()),
        [] => Err(anyhow!(
            "no device named {device:?}; see `tender devices list`"
        )),
        _ => Err(anyhow!(
            "several devices are named {device:?}; give the device id instead"
        )),
    }
}

pub async fn twin(g: &GlobalArgs, cmd: &TwinCommand) -> Result<ExitCode> {
    let client = connect(g)?;
    match cmd {
        TwinCommand::Get { device } => {
            let id = resolve_device(&client, device).await?;
            let t: Value = client.get(&format!("devices/{id}/twin"), &[]).await?;
            match g.output {
                OutputFormat::Json => output::json(&t)?,
                OutputFormat::Table => {
                    let mut rows = Vec::new();
                    let mut eff = Vec::new();
                    leaves(&t["effective"]["document"], "", &mut eff);
                    for (path, value) in eff.iter().filter(|(p, _)| !p.is_empty()) {
                        let reported = t["reported"]["document"].pointer(path);
                        rows.push(vec![
                            path.clone(),
                            compact(value),
                            reported.map(compact).unwrap_or_else(|| "-".into()),
                            source_text(&t["effective"]["sources"][path]),
                        ]);
                    }
                    output::table(&["key", "desired", "reported", "from"], &rows)?;
                    println!(
                        "desired v{} (device layer), effective v{}, reported v{}; {} not applied yet",
                        t["desired"]["version"],
                        t["effective"]["version"],
                        t["reported"]["version"],
                        count_leaves(&t["delta"])
                    );
                }
            }
        }
        TwinCommand::Set {
            device,
            values,
            if_version,
        } => {
            let id = resolve_device(&client, device).await?;
            let patch = merge_patch(values)?;
            let mut query = Vec::new();
            if let Some(v) = if_version {
                query.push(("expected_version", v.to_string()));
            }
            let t: Value = client
                .send_with_query(
                    reqwest::Method::PATCH,
                    &format!("devices/{id}/twin/desired"),
                    &query,
                    &Value::Object(patch),
                )
                .await?;
            match g.output {
                OutputFormat::Json => output::json(&t)?,
                OutputFormat::Table => println!(
                    "desired state of {id} is at version {}; the device gets effective version {}",
                    t["desired"]["version"], t["effective"]["version"]
                ),
            }
        }
        TwinCommand::Diff { device } => {
            let id = resolve_device(&client, device).await?;
            let t: Value = client.get(&format!("devices/{id}/twin"), &[]).await?;
            match g.output {
                OutputFormat::Json => output::json(&t["delta"])?,
                OutputFormat::Table => {
                    let mut delta = Vec::new();
                    leaves(&t["delta"], "", &mut delta);
                    let rows: Vec<Vec<String>> = delta
                        .iter()
                        .filter(|(p, _)| !p.is_empty())
                        .map(|(path, want)| {
                            vec![
                                path.clone(),
                                compact(want),
                                t["reported"]["document"]
                                    .pointer(path)
                                    .map(compact)
                                    .unwrap_or_else(|| "-".into()),
                            ]
                        })
                        .collect();
                    if rows.is_empty() {
                        println!("in sync: the device reported every desired value");
                    } else {
                        output::table(&["key", "desired", "reported"], &rows)?;
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn count_leaves(v: &Value) -> usize {
    let mut out = Vec::new();
    leaves(v, "", &mut out);
    out.iter().filter(|(p, _)| !p.is_empty()).count()
}

async fn layer_path(client: &ApiClient, layer: &LayerArg) -> Result<String> {
    match &layer.group {
        None => Ok("config/fleet".into()),
        Some(name) => {
            let list: Value = client.get("groups", &[]).await?;
            let found = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|g| g["name"] == name.as_str() || g["id"] == name.as_str())
                .ok_or_else(|| anyhow!("no group named {name:?}; see `tender groups list`"))?;
            Ok(format!(
                "config/groups/{}",
                found["id"].as_str().unwrap_or_default()
            ))
        }
    }
}

pub async fn config(g: &GlobalArgs, cmd: &ConfigCommand) -> Result<ExitCode> {
    let client = connect(g)?;
    match cmd {
        ConfigCommand::List => {
            let list: Value = client.get("config", &[]).await?;
            match g.output {
                OutputFormat::Json => output::json(&list)?,
                OutputFormat::Table => {
                    let mut rows = Vec::new();
                    for l in list["layers"].as_array().into_iter().flatten() {
                        let name = match l["layer"].as_str() {
                            Some("group") => {
                                format!("group {}", l["group"].as_str().unwrap_or("?"))
                            }
                            _ => "fleet".into(),
                        };
                        let mut vals = Vec::new();
                        leaves(&l["document"], "", &mut vals);
                        for (path, v) in vals {
                            rows.push(vec![
                                name.clone(),
                                l["priority"].to_string(),
                                if path.is_empty() { "-".into() } else { path },
                                compact(&v),
                                format!("v{}", l["version"]),
                            ]);
                        }
                    }
                    output::table(&["layer", "priority", "key", "value", "version"], &rows)?;
                }
            }
        }
        ConfigCommand::Set {
            layer,
            values,
            priority,
            if_version,
        } => {
            let path = layer_path(&client, layer).await?;
            let mut body = serde_json::json!({ "document": Value::Object(merge_patch(values)?) });
            if let Some(p) = priority {
                body["priority"] = (*p).into();
            }
            let mut query = Vec::new();
            if let Some(v) = if_version {
                query.push(("expected_version", v.to_string()));
            }
            let l: Value = client
                .send_with_query(reqwest::Method::PATCH, &path, &query, &body)
                .await
                .with_context(|| format!("updating {path}"))?;
            match g.output {
                OutputFormat::Json => output::json(&l)?,
                OutputFormat::Table => println!(
                    "{} layer is at version {}; connected devices it applies to get it now, the rest when they connect",
                    if layer.fleet {
                        "the fleet".to_owned()
                    } else {
                        format!("group {}", l["group"].as_str().unwrap_or("?"))
                    },
                    l["version"]
                ),
            }
        }
        ConfigCommand::Delete { layer } => {
            let path = layer_path(&client, layer).await?;
            client.delete(&path).await?;
            println!("removed; devices fall back to the remaining layers");
        }
        ConfigCommand::Show { device } => {
            let id = resolve_device(&client, device).await?;
            let c: Value = client.get(&format!("devices/{id}/config"), &[]).await?;
            match g.output {
                OutputFormat::Json => output::json(&c)?,
                OutputFormat::Table => {
                    let mut vals = Vec::new();
                    leaves(&c["document"], "", &mut vals);
                    let rows: Vec<Vec<String>> = vals
                        .into_iter()
                        .filter(|(p, _)| !p.is_empty())
                        .map(|(path, v)| {
                            let from = source_text(&c["sources"][&path]);
                            vec![path, compact(&v), from]
                        })
                        .collect();
                    output::table(&["key", "value", "from"], &rows)?;
                    println!("effective version {}", c["version"]);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_pairs_make_a_merge_patch() {
        let v = Values {
            set: vec![
                "log.level=debug".into(),
                "log.keep=7".into(),
                "ntp={\"servers\":[\"a\"]}".into(),
                "name=a=b".into(),
            ],
            unset: vec!["proxy".into()],
        };
        assert_eq!(
            Value::Object(merge_patch(&v).unwrap()),
            serde_json::json!({
                "log": {"level": "debug", "keep": 7},
                "ntp": {"servers": ["a"]},
                "name": "a=b",
                "proxy": null
            })
        );
        let bad = |set: &[&str]| {
            merge_patch(&Values {
                set: set.iter().map(|s| s.to_string()).collect(),
                unset: vec![],
            })
            .unwrap_err()
            .to_string()
        };
        assert!(bad(&["novalue"]).contains("KEY=VALUE"));
        assert!(bad(&["a..b=1"]).contains("not a key"));
        assert!(bad(&["a=1", "a.b=2"]).contains("also sets"));
        assert!(bad(&[]).contains("nothing to change"));
    }
}
