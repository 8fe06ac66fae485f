//! Runs a parsed command.

use std::process::ExitCode;

use anyhow::{Result, anyhow};
use serde_json::Value;

use crate::cli::{
    Cli, Command, CredentialsCommand, DevicesCommand, EnrollmentPolicy, GlobalArgs, GroupsCommand,
    ListDevicesArgs, OutputFormat, TenantCommand, TokensCommand,
};
use crate::client::ApiClient;
use crate::{output, profile, serve};

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match &cli.command {
        Command::Server(args) => serve::run(args).await,
        Command::AdminToken(args) => serve::admin_token(args).await,
        Command::Login => login(g).await,
        Command::Sim(args) => crate::sim::run(g, args).await,
        Command::Groups(cmd) => groups(g, cmd).await,
        Command::Twin(cmd) => crate::twin_cli::twin(g, cmd).await,
        Command::Config(cmd) => crate::twin_cli::config(g, cmd).await,
        Command::Commands(cmd) => crate::device_commands::run(g, cmd).await,
        Command::Deploy(cmd) => crate::deploy_cli::run(g, cmd).await,
        Command::Alerts(cmd) => crate::alerts_cli::run(g, cmd).await,
        Command::Telemetry(cmd) => crate::telemetry_cli::run(g, cmd).await,
        Command::Webhooks(cmd) => crate::webhook_cli::run(g, cmd).await,
        Command::Logs(args) => crate::logs_cli::run(g, args).await,
        Command::Keys(cmd) => match crate::artifact_cli::keys_local(g, cmd)? {
            Some(code) => Ok(code),
            None => crate::artifact_cli::keys_remote(g, cmd).await,
        },
        Command::Artifact(cmd) => match crate::artifact_cli::artifact_local(g, cmd)? {
            Some(code) => Ok(code),
            None => crate::artifact_cli::artifact_remote(g, cmd).await,
        },
        Command::Whoami => whoami(g).await,
        Command::Devices(DevicesCommand::List(args)) => list_devices(g, args).await,
        Command::Devices(DevicesCommand::Show { id }) => show_device(g, id).await,
        Command::Devices(DevicesCommand::Accept { ids, all_pending }) => {
            let body = if *all_pending {
                serde_json::json!({"all": true})
            } else if ids.is_empty() {
                return Err(anyhow!("name the devices to accept, or pass --all-pending"));
            } else {
                serde_json::json!({"device_ids": ids})
            };
            let client = connect(g)?;
            let r: Value = client
                .send(reqwest::Method::POST, "devices/accept-pending", &body)
                .await?;
            let failed = r["failed"].as_array().map(Vec::len).unwrap_or(0);
            match g.output {
                OutputFormat::Json => output::json(&r)?,
                OutputFormat::Table => {
                    let accepted = r["accepted"].as_array().map(Vec::len).unwrap_or(0);
                    println!("accepted {accepted} device(s)");
                    for f in r["failed"].as_array().into_iter().flatten() {
                        eprintln!(
                            "not accepted {}: {}",
                            str_at(f, "/device_id"),
                            str_at(f, "/reason")
                        );
                    }
                }
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Devices(DevicesCommand::Tag { id, tags }) => tag_device(g, id, tags).await,
        Command::Devices(DevicesCommand::Untag { id, keys }) => untag_device(g, id, keys).await,
        Command::Devices(DevicesCommand::Set { id, owner, notes }) => {
            check_device_id(id)?;
            if owner.is_none() && notes.is_none() {
                return Err(anyhow!("nothing to change: give --owner and/or --notes"));
            }
            let mut body = serde_json::Map::new();
            for (k, v) in [("owner", owner), ("notes", notes)] {
                if let Some(v) = v {
                    let value = if v.is_empty() {
                        Value::Null
                    } else {
                        Value::String(v.clone())
                    };
                    body.insert(k.to_owned(), value);
                }
            }
            let d: Value = connect(g)?
                .send(
                    reqwest::Method::PATCH,
                    &format!("devices/{id}"),
                    &Value::Object(body),
                )
                .await?;
            print_device(g, &d)
        }
        Command::Devices(DevicesCommand::Reject { id }) => device_action(g, id, "reject").await,
        Command::Devices(DevicesCommand::Decommission { id }) => {
            device_action(g, id, "decommission").await
        }
        Command::Devices(DevicesCommand::RevokeCertificates { id }) => {
            check_device_id(id)?;
            let r: Value = connect(g)?
                .send(
                    reqwest::Method::POST,
                    &format!("devices/{id}/revoke-certificates"),
                    &Value::Null,
                )
                .await?;
            match g.output {
                OutputFormat::Json => output::json(&r)?,
                OutputFormat::Table => println!("revoked {} certificate(s)", r["revoked"]),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Devices(DevicesCommand::Preauthorize {
            name,
            public_key,
            device_type,
        }) => {
            let pem = match public_key {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?,
                ),
                None => None,
            };
            let d: Value = connect(g)?
                .send(
                    reqwest::Method::POST,
                    "devices",
                    &serde_json::json!({"name": name, "public_key": pem, "device_type": device_type}),
                )
                .await?;
            print_device(g, &d)
        }
        Command::Devices(DevicesCommand::Connections { id, limit }) => {
            check_device_id(id)?;
            let r: Value = connect(g)?
                .get(
                    &format!("devices/{id}/connections"),
                    &[("limit", limit.to_string())],
                )
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
                                str_at(c, "/connected_at"),
                                str_at(c, "/disconnected_at"),
                                str_at(c, "/protocol"),
                                str_at(c, "/remote_addr"),
                                str_at(c, "/disconnect_reason"),
                            ]
                        })
                        .collect();
                    output::table(
                        &["connected", "disconnected", "protocol", "from", "reason"],
                        &rows,
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Devices(DevicesCommand::Telemetry {
            id,
            metric,
            from,
            to,
            limit,
        }) => {
            check_device_id(id)?;
            let client = connect(g)?;
            let r: Value = match metric {
                None => client.get(&format!("devices/{id}/telemetry"), &[]).await?,
                Some(m) => {
                    let mut q = vec![("limit", limit.to_string())];
                    if let Some(f) = from {
                        q.push(("from", f.clone()));
                    }
                    if let Some(t) = to {
                        q.push(("to", t.clone()));
                    }
                    client
                        .get(&format!("devices/{id}/telemetry/{m}"), &q)
                        .await?
                }
            };
            match g.output {
                OutputFormat::Json => output::json(&r)?,
                OutputFormat::Table => {
                    let rows: Vec<Vec<String>> = r["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|x| vec![str_at(x, "/metric"), str_at(x, "/at"), str_at(x, "/value")])
                        .collect();
                    output::table(&["metric", "at", "value"], &rows)?;
                    if r["next_cursor"].is_string() {
                        eprintln!("more samples follow: narrow --from/--to or raise --limit");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Devices(DevicesCommand::Credentials(CredentialsCommand::Issue { id })) => {
            check_device_id(id)?;
            let r: Value = connect(g)?
                .send(
                    reqwest::Method::POST,
                    &format!("devices/{id}/credentials"),
                    &Value::Null,
                )
                .await?;
            match g.output {
                OutputFormat::Json => output::json(&r)?,
                OutputFormat::Table => {
                    println!("username {}", str_at(&r, "/username"));
                    println!("password {}", str_at(&r, "/password"));
                    eprintln!("Store the password now: Tender keeps only a hash of it.");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Devices(DevicesCommand::Credentials(CredentialsCommand::Delete { id })) => {
            check_device_id(id)?;
            connect(g)?
                .delete(&format!("devices/{id}/credentials"))
                .await?;
            eprintln!("deleted the password of device {id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::EnrollmentTokens(cmd) => tokens(g, cmd).await,
        Command::Tenant(TenantCommand::Enrollment { policy }) => {
            let open = matches!(policy, EnrollmentPolicy::Open);
            let r: Value = connect(g)?
                .send(
                    reqwest::Method::PUT,
                    "tenant/enrollment",
                    &serde_json::json!({"open": open}),
                )
                .await?;
            match g.output {
                OutputFormat::Json => output::json(&r)?,
                OutputFormat::Table => println!(
                    "enrollment without a token is now {}",
                    if open {
                        "open (devices wait as pending)"
                    } else {
                        "closed"
                    }
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check_device_id(id: &str) -> Result<()> {
    if uuid_like(id).is_none() {
        return Err(anyhow!(
            "{id:?} is not a device id; device ids are UUIDs, see `tender devices list`"
        ));
    }
    Ok(())
}

async fn device_action(g: &GlobalArgs, id: &str, action: &str) -> Result<ExitCode> {
    check_device_id(id)?;
    let d: Value = connect(g)?
        .send(
            reqwest::Method::POST,
            &format!("devices/{id}/{action}"),
            &Value::Null,
        )
        .await?;
    print_device(g, &d)
}

async fn tokens(g: &GlobalArgs, cmd: &TokensCommand) -> Result<ExitCode> {
    let client = connect(g)?;
    match cmd {
        TokensCommand::Create {
            name,
            expires_in,
            max_uses,
            device_type,
        } => {
            let t: Value = client
                .send(
                    reqwest::Method::POST,
                    "enrollment-tokens",
                    &serde_json::json!({
                        "name": name,
                        "expires_in_secs": expires_in,
                        "max_uses": max_uses,
                        "device_type": device_type,
                    }),
                )
                .await?;
            match g.output {
                OutputFormat::Json => output::json(&t)?,
                OutputFormat::Table => {
                    println!("{}", str_at(&t, "/token"));
                    eprintln!(
                        "enrollment token {} created (id {}); it is shown only this once",
                        str_at(&t, "/name"),
                        str_at(&t, "/id")
                    );
                }
            }
        }
        TokensCommand::List => {
            let mut items: Vec<Value> = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut q = vec![("limit", "1000".to_owned())];
                if let Some(c) = &cursor {
                    q.push(("cursor", c.clone()));
                }
                let page: Value = client.get("enrollment-tokens", &q).await?;
                items.extend(page["items"].as_array().cloned().unwrap_or_default());
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
            match g.output {
                OutputFormat::Json => output::json(&serde_json::json!({"items": items}))?,
                OutputFormat::Table => {
                    let rows: Vec<Vec<String>> = items
                        .iter()
                        .map(|t| {
                            vec![
                                str_at(t, "/id"),
                                str_at(t, "/name"),
                                format!(
                                    "{}/{}",
                                    str_at(t, "/uses"),
                                    str_at(t, "/max_uses").replace('-', "∞")
                                ),
                                str_at(t, "/expires_at"),
                                if t["usable"] == true {
                                    "usable".into()
                                } else {
                                    "unusable".into()
                                },
                            ]
                        })
                        .collect();
                    output::table(&["id", "name", "uses", "expires", "status"], &rows)?;
                }
            }
        }
        TokensCommand::Revoke { id } => {
            client.delete(&format!("enrollment-tokens/{id}")).await?;
            if g.output == OutputFormat::Table {
                println!("revoked enrollment token {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The client for this invocation: flags and environment first, then the profile.
pub(crate) fn connect(g: &GlobalArgs) -> Result<ApiClient> {
    let file = profile::load()?;
    let name = g
        .profile
        .clone()
        .or_else(|| file.current.clone())
        .unwrap_or_else(|| profile::DEFAULT_PROFILE.to_owned());
    let saved = file.profiles.get(&name);
    if g.profile.is_some() && saved.is_none() {
        return Err(anyhow!(
            "no profile named {name:?}; create it with `tender login --profile {name} --server URL --token TOKEN`"
        ));
    }
    let server = g
        .server
        .clone()
        .or_else(|| saved.map(|p| p.server.clone()))
        .ok_or_else(|| {
            anyhow!("no server configured: run `tender login --server URL --token TOKEN`, or set --server/TENDER_SERVER")
        })?;
    let token = g
        .token
        .clone()
        .or_else(|| saved.map(|p| p.token.clone()))
        .ok_or_else(|| {
            anyhow!("no API token configured: run `tender login --server URL --token TOKEN`, or set --token/TENDER_TOKEN")
        })?;
    ApiClient::new(&server, &token)
}

async fn login(g: &GlobalArgs) -> Result<ExitCode> {
    let (Some(server), Some(token)) = (&g.server, &g.token) else {
        return Err(anyhow!(
            "login needs --server URL and --token TOKEN (the token `tender server` printed at first start, or one from `tender admin-token`)"
        ));
    };
    let client = ApiClient::new(server, token)?;
    let me: Value = client.get("whoami", &[]).await?;
    let name = g
        .profile
        .clone()
        .unwrap_or_else(|| profile::DEFAULT_PROFILE.to_owned());
    let mut file = profile::load()?;
    file.profiles.insert(
        name.clone(),
        profile::Profile {
            server: server.clone(),
            token: token.clone(),
        },
    );
    file.current = Some(name.clone());
    let path = profile::save(&file)?;
    match g.output {
        OutputFormat::Json => output::json(&me)?,
        OutputFormat::Table => println!(
            "Logged in to {} as {} (tenant {}); saved as profile {name:?} in {}",
            client.server(),
            str_at(&me, "/username"),
            str_at(&me, "/tenant/slug"),
            path.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

async fn whoami(g: &GlobalArgs) -> Result<ExitCode> {
    let client = connect(g)?;
    let me: Value = client.get("whoami", &[]).await?;
    match g.output {
        OutputFormat::Json => output::json(&me)?,
        OutputFormat::Table => {
            let list = |ptr: &str| {
                me.pointer(ptr)
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default()
            };
            output::table(
                &["field", "value"],
                &[
                    vec!["server".into(), client.server().to_string()],
                    vec!["user".into(), str_at(&me, "/username")],
                    vec!["tenant".into(), str_at(&me, "/tenant/slug")],
                    vec!["roles".into(), list("/roles")],
                    vec!["permissions".into(), list("/permissions")],
                ],
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list_devices(g: &GlobalArgs, args: &ListDevicesArgs) -> Result<ExitCode> {
    let client = connect(g)?;
    let mut items: Vec<Value> = Vec::new();
    let mut cursor = args.cursor.clone();
    let next = loop {
        let mut q = vec![
            ("limit", args.limit.to_string()),
            ("include", "inventory".to_owned()),
        ];
        if let Some(s) = args.state {
            q.push(("state", s.as_str().to_owned()));
        }
        if let Some(query) = &args.query {
            q.push(("q", query.clone()));
        }
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let page: Value = client.get("devices", &q).await?;
        if let Some(a) = page.get("items").and_then(Value::as_array) {
            items.extend(a.iter().cloned());
        }
        let next = page
            .get("next_cursor")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match next {
            Some(n) if args.all => cursor = Some(n),
            other => break other,
        }
    };
    match g.output {
        OutputFormat::Json => output::json(&serde_json::json!({
            "items": items,
            "next_cursor": next,
        }))?,
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|d| {
                    vec![
                        str_at(d, "/id"),
                        str_at(d, "/name"),
                        str_at(d, "/device_type"),
                        str_at(d, "/state"),
                        if d["online"] == Value::Bool(true) {
                            "online".to_owned()
                        } else {
                            "offline".to_owned()
                        },
                        os_of(d),
                        attribute(d, "agent.version"),
                        str_at(d, "/last_seen_at"),
                    ]
                })
                .collect();
            output::table(
                &[
                    "id",
                    "name",
                    "type",
                    "state",
                    "presence",
                    "os",
                    "agent",
                    "last seen",
                ],
                &rows,
            )?;
            let online = items
                .iter()
                .filter(|d| d["online"] == Value::Bool(true))
                .count();
            match next {
                Some(n) => eprintln!(
                    "{} devices shown ({online} online); more follow: add --all, or --cursor {n}",
                    items.len()
                ),
                None => eprintln!("{} devices ({online} online)", items.len()),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn show_device(g: &GlobalArgs, id: &str) -> Result<ExitCode> {
    let client = connect(g)?;
    if uuid_like(id).is_none() {
        return Err(anyhow!(
            "{id:?} is not a device id; device ids are UUIDs, see `tender devices list`"
        ));
    }
    let d: Value = client.get(&format!("devices/{id}"), &[]).await?;
    print_device(g, &d)
}

fn print_device(g: &GlobalArgs, d: &Value) -> Result<ExitCode> {
    match g.output {
        OutputFormat::Json => output::json(d)?,
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = [
                "id",
                "name",
                "device_type",
                "state",
                "online",
                "owner",
                "notes",
                "key_fingerprint",
                "last_seen_at",
                "created_at",
                "updated_at",
                "state_changed_at",
            ]
            .iter()
            .map(|k| vec![(*k).to_owned(), str_at(d, &format!("/{k}"))])
            .chain(
                [
                    ("inventory.updated_at", "updated_at"),
                    ("inventory.reported_at", "reported_at"),
                ]
                .iter()
                .filter(|(_, k)| d.pointer(&format!("/inventory/{k}")).is_some())
                .map(|(label, k)| vec![(*label).to_owned(), str_at(d, &format!("/inventory/{k}"))]),
            )
            .chain(
                d.pointer("/tags")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| vec![format!("tag: {k}"), attribute_text(v)]),
            )
            .chain(
                d.pointer("/inventory/attributes")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| vec![format!("inventory: {k}"), attribute_text(v)]),
            )
            .collect();
            output::table(&["field", "value"], &rows)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A group by name or id.
async fn find_group(client: &ApiClient, name_or_id: &str) -> Result<Value> {
    let list: Value = client.get("groups", &[]).await?;
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["name"] == name_or_id || g["id"] == name_or_id)
        .cloned()
        .ok_or_else(|| anyhow!("no group named {name_or_id:?}; see `tender groups list`"))
}

/// `PATCH /groups/{id}` of the group named (or with the id) `group`.
async fn patch_group(client: &ApiClient, group: &str, body: Value) -> Result<Value> {
    let found = find_group(client, group).await?;
    client
        .send(
            reqwest::Method::PATCH,
            &format!("groups/{}", str_at(&found, "/id")),
            &body,
        )
        .await
}

fn group_rows(items: &[Value]) -> Vec<Vec<String>> {
    let name_of = |id: &Value| {
        items
            .iter()
            .find(|g| &g["id"] == id)
            .map(|g| str_at(g, "/name"))
            .unwrap_or_else(|| "-".to_owned())
    };
    items
        .iter()
        .map(|g| {
            vec![
                str_at(g, "/name"),
                str_at(g, "/kind"),
                name_of(&g["parent_id"]),
                str_at(g, "/query"),
                str_at(g, "/id"),
            ]
        })
        .collect()
}

async fn groups(g: &GlobalArgs, cmd: &GroupsCommand) -> Result<ExitCode> {
    let client = connect(g)?;
    let show = |v: &Value| -> Result<()> {
        match g.output {
            OutputFormat::Json => output::json(v),
            OutputFormat::Table => output::table(
                &["name", "kind", "parent", "query", "id"],
                &group_rows(std::slice::from_ref(v)),
            ),
        }
    };
    match cmd {
        GroupsCommand::List => {
            let list: Value = client.get("groups", &[]).await?;
            match g.output {
                OutputFormat::Json => output::json(&list)?,
                OutputFormat::Table => {
                    let items = list["items"].as_array().cloned().unwrap_or_default();
                    output::table(
                        &["name", "kind", "parent", "query", "id"],
                        &group_rows(&items),
                    )?;
                }
            }
        }
        GroupsCommand::Create {
            name,
            parent,
            query,
        } => {
            let mut body = serde_json::json!({ "name": name });
            if let Some(p) = parent {
                body["parent_id"] = find_group(&client, p).await?["id"].clone();
            }
            if let Some(q) = query {
                body["query"] = q.clone().into();
            }
            let created: Value = client.send(reqwest::Method::POST, "groups", &body).await?;
            show(&created)?;
        }
        GroupsCommand::Show { group } => {
            let found = find_group(&client, group).await?;
            let name = str_at(&found, "/name");
            let count: Value = client
                .get("devices/count", &[("q", format!("group = \"{name}\""))])
                .await?;
            match g.output {
                OutputFormat::Json => {
                    let mut v = found.clone();
                    v["devices"] = count["count"].clone();
                    output::json(&v)?;
                }
                OutputFormat::Table => {
                    show(&found)?;
                    println!("{} device(s)", count["count"]);
                }
            }
        }
        GroupsCommand::Rename { group, new_name } => {
            show(&patch_group(&client, group, serde_json::json!({ "name": new_name })).await?)?;
        }
        GroupsCommand::Move { group, parent, top } => {
            let parent_id = match (parent, top) {
                (_, true) => Value::from(""),
                (Some(p), false) => find_group(&client, p).await?["id"].clone(),
                (None, false) => return Err(anyhow!("name the new parent, or pass --top")),
            };
            let body = serde_json::json!({ "parent_id": parent_id });
            show(&patch_group(&client, group, body).await?)?;
        }
        GroupsCommand::SetQuery { group, query } => {
            show(&patch_group(&client, group, serde_json::json!({ "query": query })).await?)?;
        }
        GroupsCommand::Delete { group } => {
            let found = find_group(&client, group).await?;
            client
                .delete(&format!("groups/{}", str_at(&found, "/id")))
                .await?;
            eprintln!("deleted group {}", str_at(&found, "/name"));
        }
        GroupsCommand::Add { group, devices } | GroupsCommand::Remove { group, devices } => {
            let found = find_group(&client, group).await?;
            let path = match cmd {
                GroupsCommand::Add { .. } => format!("groups/{}/members", str_at(&found, "/id")),
                _ => format!("groups/{}/members/remove", str_at(&found, "/id")),
            };
            let r: Value = client
                .send(
                    reqwest::Method::POST,
                    &path,
                    &serde_json::json!({ "device_ids": devices }),
                )
                .await?;
            let verb = if matches!(cmd, GroupsCommand::Add { .. }) {
                "added"
            } else {
                "removed"
            };
            eprintln!("{verb} {} device(s)", r["changed"]);
        }
        GroupsCommand::Devices { group, limit, all } => {
            let found = find_group(&client, group).await?;
            let args = ListDevicesArgs {
                state: None,
                limit: *limit,
                all: *all,
                cursor: None,
                query: Some(format!("group = \"{}\"", str_at(&found, "/name"))),
            };
            return list_devices(g, &args).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn tag_device(g: &GlobalArgs, id: &str, tags: &[String]) -> Result<ExitCode> {
    check_device_id(id)?;
    let pairs = tags
        .iter()
        .map(|t| {
            t.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| anyhow!("{t:?} is not KEY=VALUE, e.g. site=north"))
        })
        .collect::<Result<Vec<_>>>()?;
    let client = connect(g)?;
    let mut last = Value::Null;
    for (key, value) in pairs {
        last = client
            .send(
                reqwest::Method::PUT,
                &format!("devices/{id}/tags/{key}"),
                &serde_json::json!({ "value": value }),
            )
            .await?;
    }
    match g.output {
        OutputFormat::Json => output::json(&last)?,
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = last["tags"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| vec![k.clone(), attribute_text(v)])
                .collect();
            output::table(&["tag", "value"], &rows)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn untag_device(g: &GlobalArgs, id: &str, keys: &[String]) -> Result<ExitCode> {
    check_device_id(id)?;
    let client = connect(g)?;
    for key in keys {
        client.delete(&format!("devices/{id}/tags/{key}")).await?;
    }
    eprintln!("removed {} tag(s)", keys.len());
    Ok(ExitCode::SUCCESS)
}

/// An inventory attribute as one line: lists joined with ", ", "-" when absent.
fn attribute_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| i.to_string())
            })
            .collect::<Vec<_>>()
            .join(", "),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn attribute(d: &Value, name: &str) -> String {
    d.pointer("/inventory/attributes")
        .and_then(|a| a.get(name))
        .map(attribute_text)
        .unwrap_or_else(|| "-".to_owned())
}

/// The OS as operators name it: `os.name` (PRETTY_NAME), else `os.id os.version`.
fn os_of(d: &Value) -> String {
    let name = attribute(d, "os.name");
    if name != "-" {
        return name;
    }
    match (attribute(d, "os.id"), attribute(d, "os.version")) {
        (id, _) if id == "-" => "-".to_owned(),
        (id, v) if v == "-" => id,
        (id, v) => format!("{id} {v}"),
    }
}

pub(crate) fn uuid_like(s: &str) -> Option<()> {
    (s.len() == 36 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(())
}

/// The string at a JSON pointer, or "-" when absent or null.
fn str_at(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}
