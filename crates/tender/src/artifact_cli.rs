//! `tender keys ...` and `tender artifact ...`: signing keys and artifacts, made and checked
//! locally (offline: the server never needs a signing key).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use rand::RngCore;
use tender_artifact::{
    Compression, Manifest, Payload, PublicKey, Script, ScriptState, Signatures, SigningKey, Trust,
};

use crate::cli::{GlobalArgs, OutputFormat};
use crate::output;

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make an Ed25519 signing key pair: the private key (PKCS#8 PEM, mode 0600) and its
    /// public key (PEM) beside it, for the server's and the devices' trusted keys
    Generate {
        /// Where to write the private key; the public key goes to the same path with `.pub`
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
    },
    /// Show a key file's key id (private or public)
    Show { file: PathBuf },
    /// Trust a public key for this tenant's artifacts (server)
    Trust {
        /// A public key file (PEM), e.g. from `tender keys generate`
        file: PathBuf,
        /// A name to recognise it by (default: the file name)
        #[arg(long)]
        name: Option<String>,
    },
    /// The tenant's trusted artifact signing keys (server)
    List,
    /// Stop trusting a key (server); artifacts it signed stay, new uploads need another key
    Remove { key_id: String },
}

#[derive(Subcommand, Debug)]
pub enum ArtifactCommand {
    /// Make an artifact from payload files
    Create(CreateArgs),
    /// Add a signature to an artifact (in place unless --out)
    Sign {
        artifact: PathBuf,
        /// The private key (PEM)
        #[arg(long, short = 'k', value_name = "FILE")]
        key: PathBuf,
        /// Write the signed artifact here instead of replacing the input
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Show an artifact's manifest and signers, without checking it
    Inspect { artifact: PathBuf },
    /// Check an artifact completely: layout, manifest, signatures, every size and hash
    Verify {
        artifact: PathBuf,
        /// A trusted public key (PEM); repeat for several
        #[arg(long, short = 'k', value_name = "FILE")]
        key: Vec<PathBuf>,
        /// Accept an artifact that no given key signed
        #[arg(long)]
        allow_unsigned: bool,
    },
    /// Upload an artifact to the server, which checks it the same way
    Upload { artifact: PathBuf },
    /// The artifacts on the server
    List,
    /// One artifact on the server
    Show { artifact: String },
    /// Delete an artifact from the server
    Delete { artifact: String },
    /// Download an artifact from the server (resumes a partial file)
    Download {
        artifact: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The software this installs (one installed version per name on a device)
    #[arg(long)]
    name: String,
    /// Its version (ordered like Debian versions: 1.9 < 1.10, 1.0~rc1 < 1.0)
    #[arg(long)]
    version: String,
    /// A compatible device type; repeat for several
    #[arg(long = "device-type", required = true, value_name = "TYPE")]
    device_types: Vec<String>,
    /// The update module that installs it: file, script, rootfs-ab or a device's own
    #[arg(long = "type", value_name = "MODULE")]
    payload_type: String,
    /// A payload file; for the `file` module `SRC=DEST` installs SRC at the absolute path DEST
    #[arg(long = "payload", value_name = "FILE[=DEST]")]
    payloads: Vec<String>,
    /// A state script: `STATE=FILE`, STATE one of before_install, after_install,
    /// after_commit, after_rollback
    #[arg(long = "script", value_name = "STATE=FILE")]
    scripts: Vec<String>,
    /// Something the device must already provide: KEY=VALUE; repeat
    #[arg(long = "depends", value_name = "KEY=VALUE")]
    depends: Vec<String>,
    /// Something the device provides once installed: KEY=VALUE; repeat
    /// (`NAME.version=VERSION` is always added)
    #[arg(long = "provides", value_name = "KEY=VALUE")]
    provides: Vec<String>,
    /// An argument for the update module: KEY=VALUE (VALUE parsed as JSON when it is JSON)
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
    /// Store payloads gzip-compressed
    #[arg(long)]
    gzip: bool,
    /// Sign with this private key right away
    #[arg(long, short = 'k', value_name = "FILE")]
    key: Option<PathBuf>,
    /// Where to write the artifact [default: NAME-VERSION.tender]
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

fn key_value(what: &str, text: &str) -> Result<(String, String)> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| anyhow!("{what} {text:?} is not KEY=VALUE"))?;
    Ok((k.trim().to_owned(), v.to_owned()))
}

fn read_key(path: &Path) -> Result<SigningKey> {
    let pem = fs::read_to_string(path)
        .with_context(|| format!("cannot read the signing key {}", path.display()))?;
    SigningKey::from_pem(&pem).with_context(|| {
        format!(
            "{} is not an Ed25519 private key (make one with `tender keys generate`)",
            path.display()
        )
    })
}

/// A public key from a public or a private key file.
pub fn read_public_key(path: &Path) -> Result<PublicKey> {
    let pem =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Ok(k) = PublicKey::from_pem(&pem) {
        return Ok(k);
    }
    SigningKey::from_pem(&pem)
        .map(|k| k.public_key())
        .map_err(|_| anyhow!("{} is not an Ed25519 key in PEM", path.display()))
}

/// Writes `bytes` to `path` through a temporary file in the same directory.
fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn keys_local(g: &GlobalArgs, cmd: &KeysCommand) -> Result<Option<ExitCode>> {
    match cmd {
        KeysCommand::Generate { file } => {
            if file.exists() {
                bail!(
                    "{} exists; choose another --file (a signing key is never overwritten)",
                    file.display()
                );
            }
            let mut seed = [0u8; 32];
            rand::rng().fill_bytes(&mut seed);
            let key = SigningKey::from_seed(&seed);
            seed.fill(0);
            let public = key.public_key();
            let mut pub_path = file.clone().into_os_string();
            pub_path.push(".pub");
            let pub_path = PathBuf::from(pub_path);
            write_atomic(file, key.to_pem()?.as_bytes(), true)?;
            write_atomic(&pub_path, public.to_pem()?.as_bytes(), false)?;
            if g.output == OutputFormat::Json {
                output::json(&serde_json::json!({
                    "key_id": public.key_id(),
                    "private_key": file,
                    "public_key": pub_path,
                }))?;
            } else {
                println!("key id {}", public.key_id());
                println!("private key {} (keep it offline)", file.display());
                println!("public key  {}", pub_path.display());
            }
            Ok(Some(ExitCode::SUCCESS))
        }
        KeysCommand::Show { file } => {
            let key = read_public_key(file)?;
            if g.output == OutputFormat::Json {
                output::json(&serde_json::json!({
                    "key_id": key.key_id(),
                    "public_key_pem": key.to_pem()?,
                }))?;
            } else {
                println!("{}", key.key_id());
            }
            Ok(Some(ExitCode::SUCCESS))
        }
        _ => Ok(None),
    }
}

fn script_state(text: &str) -> Result<ScriptState> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| {
        anyhow!(
            "unknown script state {text:?}: use before_install, after_install, after_commit or after_rollback"
        )
    })
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{} has no usable file name", path.display()))
}

fn create(args: &CreateArgs, g: &GlobalArgs) -> Result<ExitCode> {
    let compression = if args.gzip {
        Compression::Gzip
    } else {
        Compression::None
    };
    // What goes into the archive for each entry: the file itself, or its compressed copy.
    let mut sources: BTreeMap<String, File> = BTreeMap::new();
    let mut payloads = Vec::new();
    for spec in &args.payloads {
        let (src, dest) = match spec.split_once('=') {
            Some((s, d)) => (PathBuf::from(s), Some(d.to_owned())),
            None => (PathBuf::from(spec), None),
        };
        let name = file_name(&src)?;
        let file =
            File::open(&src).with_context(|| format!("cannot read payload {}", src.display()))?;
        let mut meta = serde_json::Map::new();
        if let Some(dest) = dest {
            if !dest.starts_with('/') {
                bail!(
                    "the destination of {} must be an absolute path, not {dest:?}",
                    src.display()
                );
            }
            meta.insert("path".into(), dest.into());
        }
        let (described, stored) = match compression {
            Compression::None => {
                let d = tender_artifact::describe(BufReader::new(&file), compression, None)?;
                (d, File::open(&src)?)
            }
            Compression::Gzip => {
                let mut tmp = tempfile::tempfile()?;
                let d = {
                    let mut w = BufWriter::new(&mut tmp);
                    let d = tender_artifact::describe(
                        BufReader::new(&file),
                        compression,
                        Some(&mut w as &mut dyn Write),
                    )?;
                    w.flush()?;
                    d
                };
                tmp.rewind()?;
                (d, tmp)
            }
        };
        let payload = Payload {
            name,
            size: described.size,
            sha256: described.sha256,
            compression,
            stored_size: described.stored_size,
            meta,
        };
        if sources.insert(payload.entry_path(), stored).is_some() {
            bail!("two payloads are named {:?}; rename one", payload.name);
        }
        payloads.push(payload);
    }
    let mut scripts = Vec::new();
    for spec in &args.scripts {
        let (state, path) = key_value("--script", spec)?;
        let path = PathBuf::from(path);
        let file =
            File::open(&path).with_context(|| format!("cannot read script {}", path.display()))?;
        let d = tender_artifact::describe(BufReader::new(&file), Compression::None, None)?;
        let script = Script {
            name: file_name(&path)?,
            state: script_state(&state)?,
            size: d.size,
            sha256: d.sha256,
        };
        sources.insert(script.entry_path(), File::open(&path)?);
        scripts.push(script);
    }
    let mut depends = BTreeMap::new();
    for kv in &args.depends {
        let (k, v) = key_value("--depends", kv)?;
        depends.insert(k, v);
    }
    let mut provides = BTreeMap::new();
    for kv in &args.provides {
        let (k, v) = key_value("--provides", kv)?;
        provides.insert(k, v);
    }
    provides
        .entry(format!("{}.version", args.name))
        .or_insert_with(|| args.version.clone());
    let mut meta = serde_json::Map::new();
    for kv in &args.meta {
        let (k, v) = key_value("--meta", kv)?;
        let value = serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v));
        meta.insert(k, value);
    }
    let manifest = Manifest {
        format: tender_artifact::FORMAT.into(),
        name: args.name.clone(),
        version: args.version.clone(),
        compatible: args.device_types.clone(),
        depends,
        provides,
        payload_type: args.payload_type.clone(),
        payloads,
        scripts,
        meta,
        created_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .ok(),
    };
    manifest
        .validate()
        .context("the artifact would not be valid")?;
    let mut signatures = Signatures::default();
    if let Some(key) = &args.key {
        signatures.add(&read_key(key)?, &manifest.to_bytes());
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}-{}.tender", args.name, args.version)));
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let writer = BufWriter::new(tmp);
    let writer = tender_artifact::write(writer, &manifest, &signatures, |path| {
        let file = sources
            .remove(path)
            .ok_or_else(|| io::Error::other(format!("no source for {path}")))?;
        Ok(Box::new(BufReader::new(file)) as Box<dyn Read>)
    })?;
    let tmp = writer.into_inner().map_err(|e| e.into_error())?;
    tmp.as_file().sync_all()?;
    tmp.persist(&out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    let size = fs::metadata(&out)?.len();
    if g.output == OutputFormat::Json {
        output::json(&serde_json::json!({
            "file": out,
            "size": size,
            "manifest": manifest,
            "signed_by": signatures.signatures.iter().map(|s| &s.key_id).collect::<Vec<_>>(),
        }))?;
    } else {
        println!(
            "{} ({} bytes, {} payload(s), {})",
            out.display(),
            size,
            manifest.payloads.len(),
            if signatures.signatures.is_empty() {
                "unsigned: sign it with `tender artifact sign`".to_string()
            } else {
                format!("signed by {}", signatures.signatures[0].key_id)
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn open(path: &Path) -> Result<BufReader<File>> {
    File::open(path)
        .map(BufReader::new)
        .with_context(|| format!("cannot read {}", path.display()))
}

fn print_manifest(manifest: &Manifest, signers: &[String]) {
    println!("name        {}", manifest.name);
    println!("version     {}", manifest.version);
    println!("type        {}", manifest.payload_type);
    println!("compatible  {}", manifest.compatible.join(", "));
    for (k, v) in &manifest.depends {
        println!("depends     {k} = {v}");
    }
    for (k, v) in &manifest.provides {
        println!("provides    {k} = {v}");
    }
    for s in &manifest.scripts {
        println!("script      {} ({:?}, {} bytes)", s.name, s.state, s.size);
    }
    for p in &manifest.payloads {
        let dest = p
            .meta
            .get("path")
            .and_then(|v| v.as_str())
            .map(|d| format!(" -> {d}"))
            .unwrap_or_default();
        println!(
            "payload     {}{dest} ({} bytes, sha256 {})",
            p.name, p.size, p.sha256
        );
    }
    if signers.is_empty() {
        println!("signatures  none");
    } else {
        println!("signed by   {}", signers.join(", "));
    }
}

pub fn artifact_local(g: &GlobalArgs, cmd: &ArtifactCommand) -> Result<Option<ExitCode>> {
    match cmd {
        ArtifactCommand::Create(args) => create(args, g).map(Some),
        ArtifactCommand::Sign { artifact, key, out } => {
            let key = read_key(key)?;
            let out = out.clone().unwrap_or_else(|| artifact.clone());
            let dir = out
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let tmp = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("cannot write in {}", dir.display()))?;
            let writer = tender_artifact::rewrite_signatures(
                open(artifact)?,
                BufWriter::new(tmp),
                |_, bytes, mut sigs| {
                    sigs.add(&key, bytes);
                    Ok(sigs)
                },
            )
            .with_context(|| format!("cannot sign {}", artifact.display()))?;
            let tmp = writer.into_inner().map_err(|e| e.into_error())?;
            tmp.as_file().sync_all()?;
            tmp.persist(&out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("{} signed by {}", out.display(), key.public_key().key_id());
            Ok(Some(ExitCode::SUCCESS))
        }
        ArtifactCommand::Inspect { artifact } => {
            let (manifest, _, sigs) = tender_artifact::read_header(open(artifact)?)
                .with_context(|| format!("cannot read {}", artifact.display()))?;
            let signers: Vec<String> = sigs.signatures.iter().map(|s| s.key_id.clone()).collect();
            if g.output == OutputFormat::Json {
                output::json(&serde_json::json!({
                    "manifest": manifest,
                    "signed_by": signers,
                }))?;
            } else {
                print_manifest(&manifest, &signers);
            }
            Ok(Some(ExitCode::SUCCESS))
        }
        ArtifactCommand::Verify {
            artifact,
            key,
            allow_unsigned,
        } => {
            let keys = key
                .iter()
                .map(|k| read_public_key(k))
                .collect::<Result<Vec<_>>>()?;
            if keys.is_empty() && !allow_unsigned {
                bail!(
                    "give the trusted public key(s) with --key, or --allow-unsigned to check everything but the signature"
                );
            }
            let header = tender_artifact::read(
                open(artifact)?,
                Trust {
                    keys: &keys,
                    require_signature: !allow_unsigned,
                },
                &mut tender_artifact::Discard,
            )
            .with_context(|| format!("{} is refused", artifact.display()))?;
            if g.output == OutputFormat::Json {
                output::json(&serde_json::json!({
                    "valid": true,
                    "manifest": header.manifest,
                    "trusted_signers": header.check.trusted,
                    "unknown_signers": header.check.unknown,
                }))?;
            } else {
                println!(
                    "{}: valid ({} {}, {} payload bytes checked){}",
                    artifact.display(),
                    header.manifest.name,
                    header.manifest.version,
                    header.manifest.payload_bytes(),
                    if header.check.trusted.is_empty() {
                        ", not signed by a given key".to_string()
                    } else {
                        format!(", signed by {}", header.check.trusted.join(", "))
                    }
                );
            }
            Ok(Some(ExitCode::SUCCESS))
        }
        _ => Ok(None),
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn artifact_row(a: &serde_json::Value) -> Vec<String> {
    let s = |k: &str| a[k].as_str().unwrap_or("").to_owned();
    vec![
        s("id"),
        s("name"),
        s("version"),
        s("payload_type"),
        a["compatible"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        human_bytes(a["size"].as_u64().unwrap_or(0)),
        a["signed_by"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unsigned".into()),
    ]
}

const ARTIFACT_HEADERS: [&str; 7] = [
    "ID",
    "NAME",
    "VERSION",
    "TYPE",
    "COMPATIBLE",
    "SIZE",
    "SIGNED BY",
];

/// An artifact named by id, or by `NAME@VERSION`.
async fn resolve_artifact(client: &crate::client::ApiClient, text: &str) -> Result<String> {
    let Some((name, version)) = text.split_once('@') else {
        return Ok(text.to_owned());
    };
    let page: serde_json::Value = client
        .get(
            "artifacts",
            &[("name", name.to_owned()), ("limit", "1000".into())],
        )
        .await?;
    page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["version"] == version)
        .and_then(|a| a["id"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no artifact {name} version {version} on the server"))
}

pub async fn keys_remote(g: &GlobalArgs, cmd: &KeysCommand) -> Result<ExitCode> {
    let client = crate::commands::connect(g)?;
    match cmd {
        KeysCommand::Trust { file, name } => {
            let key = read_public_key(file)?;
            let name = name.clone().unwrap_or_else(|| {
                file.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("signing key")
                    .to_owned()
            });
            let k: serde_json::Value = client
                .send(
                    reqwest::Method::POST,
                    "signing-keys",
                    &serde_json::json!({"name": name, "public_key_pem": key.to_pem()?}),
                )
                .await?;
            if g.output == OutputFormat::Json {
                output::json(&k)?;
            } else {
                println!(
                    "trusting key {} ({}) for this tenant's artifacts",
                    k["key_id"].as_str().unwrap_or(""),
                    k["name"].as_str().unwrap_or("")
                );
            }
        }
        KeysCommand::List => {
            let keys: serde_json::Value = client.get("signing-keys", &[]).await?;
            if g.output == OutputFormat::Json {
                output::json(&keys)?;
            } else {
                let rows: Vec<Vec<String>> = keys
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|k| {
                        ["key_id", "name", "created_at"]
                            .iter()
                            .map(|f| k[*f].as_str().unwrap_or("").to_owned())
                            .collect()
                    })
                    .collect();
                output::table(&["KEY ID", "NAME", "ADDED"], &rows)?;
            }
        }
        KeysCommand::Remove { key_id } => {
            client.delete(&format!("signing-keys/{key_id}")).await?;
            println!("key {key_id} is no longer trusted for new uploads");
        }
        KeysCommand::Generate { .. } | KeysCommand::Show { .. } => {
            bail!("`tender keys generate` and `show` work offline")
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn artifact_remote(g: &GlobalArgs, cmd: &ArtifactCommand) -> Result<ExitCode> {
    use std::io::IsTerminal;
    let client = crate::commands::connect(g)?;
    match cmd {
        ArtifactCommand::Upload { artifact } => {
            // Check locally first: a broken file is better found before a long upload.
            let path = artifact.clone();
            let (manifest, _, sigs) = tokio::task::spawn_blocking(move || {
                tender_artifact::read_header(open(&path)?)
                    .with_context(|| format!("{} is not a valid artifact", path.display()))
            })
            .await??;
            let file = tokio::fs::File::open(artifact)
                .await
                .with_context(|| format!("cannot read {}", artifact.display()))?;
            let len = file.metadata().await?.len();
            let show = std::io::stderr().is_terminal() && g.output == OutputFormat::Table;
            let total = len.max(1);
            let a: Result<serde_json::Value> = client
                .upload("artifacts", file, len, move |sent| {
                    if show {
                        eprint!(
                            "\ruploading {} {} {}  {:>3}%  {} / {}   ",
                            manifest.name,
                            manifest.version,
                            bar(sent, total, 30),
                            sent * 100 / total,
                            human_bytes(sent),
                            human_bytes(len)
                        );
                    }
                })
                .await;
            if show {
                eprintln!();
            }
            let a = a.with_context(|| {
                if sigs.signatures.is_empty() {
                    "upload refused (the artifact is unsigned: sign it with `tender artifact sign`)"
                        .to_string()
                } else {
                    "upload refused".to_string()
                }
            })?;
            if g.output == OutputFormat::Json {
                output::json(&a)?;
            } else {
                output::table(&ARTIFACT_HEADERS, &[artifact_row(&a)])?;
            }
        }
        ArtifactCommand::List => {
            let page: serde_json::Value = client.get("artifacts", &[]).await?;
            if g.output == OutputFormat::Json {
                output::json(&page)?;
            } else {
                let rows: Vec<Vec<String>> = page["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(artifact_row)
                    .collect();
                output::table(&ARTIFACT_HEADERS, &rows)?;
            }
        }
        ArtifactCommand::Show { artifact } => {
            let id = resolve_artifact(&client, artifact).await?;
            let a: serde_json::Value = client.get(&format!("artifacts/{id}"), &[]).await?;
            if g.output == OutputFormat::Json {
                output::json(&a)?;
            } else {
                let manifest: Manifest = serde_json::from_value(a["manifest"].clone())
                    .context("the server's manifest is not one this CLI reads")?;
                println!("id          {}", a["id"].as_str().unwrap_or(""));
                println!(
                    "size        {} (sha256 {})",
                    human_bytes(a["size"].as_u64().unwrap_or(0)),
                    a["sha256"].as_str().unwrap_or("")
                );
                println!(
                    "uploaded    {} by {}",
                    a["created_at"].as_str().unwrap_or(""),
                    a["created_by"].as_str().unwrap_or("?")
                );
                let signers: Vec<String> = a["signed_by"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect();
                print_manifest(&manifest, &signers);
            }
        }
        ArtifactCommand::Delete { artifact } => {
            let id = resolve_artifact(&client, artifact).await?;
            client.delete(&format!("artifacts/{id}")).await?;
            println!("deleted artifact {id}");
        }
        ArtifactCommand::Download { artifact, out } => {
            let id = resolve_artifact(&client, artifact).await?;
            let got = client
                .download(&format!("artifacts/{id}/download"), out)
                .await?;
            println!("{} ({} fetched)", out.display(), human_bytes(got));
        }
        _ => bail!("this artifact command works offline"),
    }
    Ok(ExitCode::SUCCESS)
}

fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = ((done.min(total) as f64 / total as f64) * width as f64) as usize;
    format!(
        "[{}{}]",
        "#".repeat(filled),
        ".".repeat(width - filled.min(width))
    )
}
