//! `agentfed plugin …`: list, inspect, run and scaffold policy plugins.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::Subcommand;
use serde_json::{Value, json};

use super::{CliError, CliResult};
use crate::config::NodeConfig;
use crate::plugin::{
    HostContext, Limits, MessageView, PeerSnapshot, PluginKind, PluginRuntime, PluginSource,
    RuntimeOptions, ScanRequest, SpendRequest,
};

/// `agentfed plugin` subcommands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// List the plugin in each slot (configured file or embedded default)
    /// with its name, version and description.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Describe a component: which plugin kind and world it implements,
    /// its own metadata, hash, imports and exports.
    ///
    ///   plugin inspect FILE            a component file
    ///   plugin inspect default         the four embedded default policies
    ///   plugin inspect KIND default    one embedded default (as `plugin run KIND default`)
    ///   plugin inspect KIND FILE       a file, checked to be a KIND plugin
    #[command(verbatim_doc_comment)]
    Inspect {
        /// FILE, `default`, or KIND followed by `default` or FILE.
        #[arg(num_args = 1..=2, required = true, value_name = "[KIND] FILE|default")]
        target: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Call a plugin once with a JSON input and print its JSON answer:
    /// the quickest way to test a module.
    ///
    /// Input shapes (fields left out get sensible defaults; enum values
    /// are case-insensitive, e.g. "attested"):
    ///   trust:   {"node_id":"peer-1","level":"verified","metrics":{"interactions":60,"successes":59}}
    ///   pii:     {"peer_level":"attested","payload":{"note":"mail bob@example.com"}}
    ///            or {"peer_level":"attested","values":[{"path":"/note","value":"…"}]}
    ///   spend:   {"breaker":{"state":"active"},"last_day":{"usd":6.5}}
    ///   handler: {"message_type":"ping","payload":{}}
    #[command(verbatim_doc_comment)]
    Run {
        /// Plugin kind: trust, pii, spend or handler.
        kind: PluginKind,
        /// A component file, or `default` for the embedded default policy.
        plugin: String,
        /// The input as JSON text, or @FILE to read it from a file (@- for stdin).
        #[arg(long, value_name = "JSON|@FILE")]
        input: String,
        /// A plugin configuration value (repeatable), as the node config's
        /// [plugins.<kind>.config] would give it.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// Call deadline in milliseconds.
        #[arg(long, default_value_t = Limits::default().deadline_ms)]
        deadline_ms: u64,
        /// Memory cap in MiB.
        #[arg(long, default_value_t = Limits::default().memory_mib)]
        memory_mib: u64,
    },
    /// Ask the running daemon to reload one plugin slot (or all) from the
    /// current config; a plugin that fails to load leaves the previous one
    /// in place.
    Reload {
        /// Plugin kind: trust, pii, spend or handler (default: all four).
        kind: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Scaffold a new plugin crate that builds and passes its own test.
    New {
        /// Plugin kind: trust, pii, spend or handler.
        kind: PluginKind,
        /// Crate name (lowercase letters, digits, `-`, `_`).
        name: String,
        /// Parent directory (default: the current directory).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Runs one `plugin` subcommand.
pub fn run(home: &Path, command: PluginCommand) -> CliResult {
    match command {
        PluginCommand::List { json } => list(home, json),
        PluginCommand::Inspect { target, json } => inspect(home, &target, json),
        PluginCommand::Run {
            kind,
            plugin,
            input,
            config,
            deadline_ms,
            memory_mib,
        } => {
            let limits = Limits {
                deadline_ms,
                memory_mib,
                ..Limits::default()
            };
            run_once(home, kind, &plugin, &input, &config, limits)
        }
        PluginCommand::Reload { kind, json } => super::ops::plugin_reload(home, kind, json),
        PluginCommand::New { kind, name, dir } => {
            let parent = dir.unwrap_or_else(|| PathBuf::from("."));
            let created =
                crate::scaffold::generate(kind, &name, &parent).map_err(CliError::usage)?;
            println!("created {} plugin crate at {}", kind, created.display());
            println!("next:");
            println!("  cd {}", created.display());
            println!("  cargo test                                   # native unit tests");
            println!("  cargo build --release --target wasm32-wasip2 # the component");
            println!(
                "  agentfed plugin run {kind} target/wasm32-wasip2/release/{}.wasm --input '…'",
                name.replace('-', "_")
            );
            println!("load it (agentfed.toml), then `agentfed plugin reload {kind}`:");
            for line in crate::scaffold::load_snippet(kind, &name.replace('-', "_"))
                .lines()
                .filter(|l| !l.starts_with("```") && !l.is_empty())
            {
                println!("  {line}");
            }
            Ok(())
        }
    }
}

/// A runtime with the home's artifact cache when the home exists (and is
/// private to this user: the cache holds native code).
fn runtime(home: &Path) -> Result<PluginRuntime, CliError> {
    let cache_dir = if home.is_dir() {
        super::check_home(home)?;
        Some(crate::home::plugin_cache_dir(home))
    } else {
        None
    };
    PluginRuntime::new(RuntimeOptions { cache_dir }).map_err(CliError::failed)
}

/// What the daemon runs, by (kind, position), when one is running.
enum Running {
    /// The daemon's `plugins.list` answer.
    Daemon(Vec<Value>),
    /// No daemon runs for this home.
    NotRunning,
}

fn running_plugins(home: &Path) -> Result<Running, CliError> {
    use crate::control::client::{self, CallError};
    match client::call(home, "plugins.list", json!({})) {
        Ok(Value::Array(rows)) => Ok(Running::Daemon(rows)),
        Ok(other) => Err(CliError::failed(anyhow!(
            "the daemon answered plugins.list with {other}, not a list"
        ))),
        Err(CallError::NotRunning { .. } | CallError::NoHome { .. }) => Ok(Running::NotRunning),
        Err(err) => Err(CliError::failed(err)),
    }
}

/// The configured plugins (each loaded here to check it), side by side
/// with what the daemon runs when one is running.
fn list(home: &Path, json: bool) -> CliResult {
    let config = NodeConfig::load(home).map_err(CliError::usage)?;
    let runtime = runtime(home)?;
    let running = running_plugins(home)?;
    let mut rows = Vec::new();
    let mut failures = 0;
    let mut notes = Vec::new();
    for kind in PluginKind::ALL {
        let section = config.plugins.get(kind);
        let chain = config.plugin_chain(home, kind);
        let loaded: Vec<&Value> = match &running {
            Running::Daemon(all) => all.iter().filter(|r| r["kind"] == kind.name()).collect(),
            Running::NotRunning => Vec::new(),
        };
        for position in 0..chain.len().max(loaded.len()) {
            let mut row = match chain.get(position) {
                Some(entry) => {
                    let source = match &entry.path {
                        Some(path) => PluginSource::File(path.clone()),
                        None => PluginSource::Embedded(crate::embedded::default_name(kind)),
                    };
                    let host =
                        HostContext::standalone(&source.to_string(), entry.config.clone(), [0; 32]);
                    // As the daemon loads it: a key the default policy
                    // does not read, or a value the plugin cannot use,
                    // is this row's error.
                    let table = if position == 0 {
                        format!("[plugins.{kind}.config]")
                    } else {
                        format!("the config of [[plugins.{kind}.add]] number {position}")
                    };
                    let loaded = crate::coordinator::check_default_keys(
                        kind,
                        &source,
                        &entry.config,
                        &table,
                    )
                    .and_then(|()| runtime.load(kind, source.clone(), host, section.limits))
                    .and_then(|plugin| {
                        crate::coordinator::probe_configuration(
                            &plugin,
                            kind,
                            crate::clock::Clock::now_ms(&crate::clock::SystemClock),
                        )
                        .map(|()| plugin)
                    });
                    match loaded {
                        Ok(plugin) => json!({
                            "source": source.to_string(),
                            "embedded": matches!(source, PluginSource::Embedded(_)),
                            "name": plugin.metadata().name,
                            "version": plugin.metadata().version,
                            "description": plugin.metadata().description,
                            "sha256": plugin.sha256(),
                            "deadline_ms": section.limits.deadline_ms,
                            "memory_mib": section.limits.memory_mib,
                            "error": null,
                        }),
                        Err(err) => {
                            failures += 1;
                            json!({
                                "source": source.to_string(),
                                "embedded": matches!(source, PluginSource::Embedded(_)),
                                "error": err.to_string(),
                            })
                        }
                    }
                }
                None => json!({"configured": false, "error": null}),
            };
            row["kind"] = json!(kind);
            row["position"] = json!(position);
            row["replaces_default"] =
                json!(kind == PluginKind::Pii && position == 0 && section.replace_default);
            let running_here = loaded.get(position).map(|r| {
                json!({
                    "name": r["name"], "version": r["version"], "source": r["source"],
                    "sha256": r["sha256"],
                })
            });
            let differs = match (&running, &running_here) {
                (Running::NotRunning, _) => false,
                (Running::Daemon(_), None) => true,
                (Running::Daemon(_), Some(r)) => {
                    row["error"] != Value::Null
                        || r["sha256"] != row["sha256"]
                        || r["source"] != row["source"]
                }
            };
            if differs {
                notes.push(difference_note(kind, position, &row, running_here.as_ref()));
            }
            row["loaded"] = running_here.unwrap_or(Value::Null);
            row["differs"] = json!(differs);
            rows.push(row);
        }
        if kind == PluginKind::Pii && section.replace_default {
            notes.push(format!(
                "pii: the built-in default PII policy is REPLACED (replace_default = true): only {} {}detects PII here",
                chain_label(&rows, 0),
                if chain.len() > 1 { "and its additions " } else { "" }
            ));
        }
    }
    if matches!(running, Running::NotRunning) {
        notes.push(
            "daemon: not running; this is the configuration on disk (start the daemon to compare it with what runs)"
                .into(),
        );
    } else if !rows.iter().any(|r| r["differs"] == true) {
        notes.push("daemon: running the configured plugins".into());
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("JSON values serialise")
        );
    } else {
        print_table(&rows);
        for note in &notes {
            println!("{note}");
        }
    }
    if failures > 0 {
        return Err(CliError::failed(anyhow!(
            "{failures} configured plugin(s) failed to load{}",
            if matches!(running, Running::Daemon(_)) {
                " (the daemon keeps running what it loaded before)"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

/// The `name` (or source) of the PII row at `position`, for notes.
fn chain_label(rows: &[Value], position: usize) -> String {
    rows.iter()
        .find(|r| r["kind"] == "pii" && r["position"] == position)
        .map(|r| {
            r["name"]
                .as_str()
                .or(r["source"].as_str())
                .unwrap_or("?")
                .to_string()
        })
        .unwrap_or_else(|| "?".into())
}

/// One line saying how what runs differs from what is configured.
fn difference_note(
    kind: PluginKind,
    position: usize,
    row: &Value,
    loaded: Option<&Value>,
) -> String {
    let slot = slot_name(kind, position);
    let short = |v: &Value| {
        let sha = v["sha256"].as_str().unwrap_or("");
        format!(
            "{} {} (sha256 {})",
            v["name"].as_str().or(v["source"].as_str()).unwrap_or("?"),
            v["version"].as_str().unwrap_or(""),
            &sha[..sha.len().min(12)]
        )
    };
    let configured = if row["configured"] == false {
        "nothing".to_string()
    } else if let Some(err) = row["error"].as_str() {
        format!(
            "{} (which does not load: {err})",
            row["source"].as_str().unwrap_or("?")
        )
    } else {
        short(row)
    };
    match loaded {
        Some(l) => format!(
            "{slot}: the daemon runs {}, the configuration names {configured}; after a failed reload the previous plugin stays in force (fix it, then: agentfed plugin reload {kind})",
            short(l)
        ),
        None => format!(
            "{slot}: the daemon runs nothing here, the configuration names {configured} (apply it with: agentfed plugin reload {kind})"
        ),
    }
}

/// `pii`, or `pii+1`… for the policies a chain adds.
fn slot_name(kind: PluginKind, position: usize) -> String {
    if position == 0 {
        kind.name().to_string()
    } else {
        format!("{kind}+{position}")
    }
}

fn print_table(rows: &[Value]) {
    let text = |v: &Value, key: &str| v[key].as_str().unwrap_or("").to_string();
    let table: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let status = match r["error"].as_str() {
                Some(err) => format!("ERROR: {err}"),
                None if r["configured"] == false => {
                    "not configured (the daemon still runs it)".into()
                }
                None => text(r, "description"),
            };
            let kind = r["kind"]
                .as_str()
                .and_then(|k| k.parse::<PluginKind>().ok())
                .map(|k| slot_name(k, r["position"].as_u64().unwrap_or(0) as usize))
                .unwrap_or_default();
            let mut source = text(r, "source");
            if r["replaces_default"] == true {
                source.push_str(" (replaces default)");
            }
            if r["differs"] == true {
                source.push_str(" [daemon differs]");
            }
            [kind, text(r, "name"), text(r, "version"), source, status]
        })
        .collect();
    let headers = ["KIND", "PLUGIN", "VERSION", "SOURCE", "DESCRIPTION"];
    let mut widths = headers.map(str::len);
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers);
    for row in &table {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
}

/// One component `plugin inspect` looks at: label, bytes, and the kind it
/// must be (when the command named one).
type InspectTarget = (String, Vec<u8>, Option<PluginKind>);

fn inspect_targets(target: &[String]) -> Result<Vec<InspectTarget>, CliError> {
    let embedded = |kind: PluginKind| {
        let name = crate::embedded::default_name(kind);
        let bytes = crate::embedded::bytes(name)
            .ok_or_else(|| CliError::failed(anyhow!("the embedded {name} policy is missing")))?;
        Ok::<_, CliError>((format!("embedded:{name}"), bytes.to_vec(), Some(kind)))
    };
    let file = |path: &str, kind: Option<PluginKind>| {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read {path}"))
            .map_err(CliError::usage)?;
        Ok::<_, CliError>((path.to_string(), bytes, kind))
    };
    match target {
        [one] if one == "default" => PluginKind::ALL.into_iter().map(embedded).collect(),
        [one] => Ok(vec![file(one, None)?]),
        [kind, what] => {
            let kind: PluginKind = kind.parse().map_err(|e: String| {
                CliError::usage(anyhow!(
                    "{e} (usage: plugin inspect FILE | default | KIND default | KIND FILE)"
                ))
            })?;
            if crate::embedded::resolve(kind, what).is_some() {
                Ok(vec![embedded(kind)?])
            } else {
                Ok(vec![file(what, Some(kind))?])
            }
        }
        _ => Err(CliError::usage(anyhow!(
            "usage: plugin inspect FILE | default | KIND default | KIND FILE"
        ))),
    }
}

fn inspect(home: &Path, target: &[String], json: bool) -> CliResult {
    let targets = inspect_targets(target)?;
    let runtime = runtime(home)?;
    let mut infos = Vec::new();
    for (label, bytes, wanted) in &targets {
        let info = runtime.inspect(label, bytes).map_err(CliError::usage)?;
        if let Some(wanted) = wanted
            && info.kind != Some(*wanted)
        {
            let found = info
                .kind
                .map(|k| format!("it is a {k} plugin"))
                .unwrap_or_else(|| "it exports no agentfed plugin interface".into());
            return Err(CliError::usage(anyhow!(
                "{label} is not a {wanted} plugin: {found}"
            )));
        }
        infos.push((label.clone(), info));
    }
    if json {
        let value = if target.len() == 1 && target[0] == "default" {
            serde_json::to_value(infos.iter().map(|(_, i)| i).collect::<Vec<_>>())
        } else {
            serde_json::to_value(&infos[0].1)
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&value.expect("serialisable")).expect("serialisable")
        );
        return Ok(());
    }
    for (i, (label, info)) in infos.iter().enumerate() {
        if i > 0 {
            println!();
        }
        print_info(label, info);
    }
    Ok(())
}

fn print_info(label: &str, info: &crate::plugin::ComponentInfo) {
    println!("file:     {label}");
    match (info.kind, info.world) {
        (Some(kind), Some(world)) => println!("kind:     {kind} (world {world})"),
        _ => println!("kind:     none (exports no agentfed plugin interface)"),
    }
    if let Some(meta) = &info.metadata {
        println!(
            "plugin:   {} {} — {}",
            meta.name, meta.version, meta.description
        );
    }
    println!("sha256:   {}", info.sha256);
    println!("size:     {} bytes", info.size);
    println!("imports:  {}", info.imports.join("\n          "));
    println!("exports:  {}", info.exports.join("\n          "));
}

fn run_once(
    home: &Path,
    kind: PluginKind,
    plugin: &str,
    input: &str,
    config: &[String],
    limits: Limits,
) -> CliResult {
    let input = read_input(input).map_err(CliError::usage)?;
    let config = parse_config_pairs(config).map_err(CliError::usage)?;
    let source = match crate::embedded::resolve(kind, plugin) {
        Some(name) => PluginSource::Embedded(name),
        None => PluginSource::File(PathBuf::from(plugin)),
    };
    // Validate the input before paying for compilation.
    let call = PreparedCall::new(kind, input).map_err(CliError::usage)?;
    let runtime = runtime(home)?;
    let host = HostContext::standalone(&source.to_string(), config, ephemeral_key());
    let loaded = runtime
        .load(kind, source, host, limits)
        .map_err(|e| match e {
            crate::plugin::PluginError::Read { .. }
            | crate::plugin::PluginError::NotAComponent { .. }
            | crate::plugin::PluginError::WrongWorld { .. }
            | crate::plugin::PluginError::Link { .. } => CliError::usage(e),
            other => CliError::failed(other),
        })?;
    let output = wit_names(call.invoke(&loaded).map_err(CliError::failed)?);
    println!(
        "{}",
        serde_json::to_string_pretty(&output).expect("serialisable")
    );
    Ok(())
}

/// A random key for `host.keyed-hash` in one-off runs: hashes are stable
/// within the run only, which is all a test of a plugin needs.
fn ephemeral_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    if getrandom::fill(&mut key).is_err() {
        tracing::warn!("no OS randomness; using a fixed key for this run");
    }
    key
}

fn read_input(input: &str) -> anyhow::Result<Value> {
    let text = match input.strip_prefix('@') {
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read --input from stdin")?;
            text
        }
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --input file {path}"))?,
        None => input.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| anyhow!("--input is not valid JSON: {e}"))
}

fn parse_config_pairs(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| anyhow!("--config `{pair}` is not KEY=VALUE"))?;
            if key.trim().is_empty() {
                return Err(anyhow!("--config `{pair}` has an empty key"));
            }
            Ok((key.trim().to_string(), value.to_string()))
        })
        .collect()
}

/// A call whose input has been validated against the kind's request type.
enum PreparedCall {
    Trust(PeerSnapshot),
    Pii {
        request: ScanRequest,
        payload: Option<Value>,
    },
    Spend(SpendRequest),
    Handler(MessageView),
}

impl PreparedCall {
    fn new(kind: PluginKind, mut input: Value) -> anyhow::Result<Self> {
        if !input.is_object() {
            return Err(anyhow!("--input must be a JSON object"));
        }
        normalize_enums(&mut input);
        let now = crate::plugin::Clock::now_ms(&crate::plugin::SystemClock);
        Ok(match kind {
            PluginKind::Trust => {
                let defaults = json!({
                    "node_id": "peer", "level": "Verified", "level_since_ms": 0, "now_ms": now,
                    "metrics": {
                        "interactions": 0, "successes": 0, "failures": 0, "threats": 0,
                        "signature_failures": 0, "uptime": 1.0, "integrity": 1.0,
                        "threats_last_hour": 0, "first_seen_ms": 0, "last_seen_ms": now,
                    },
                });
                PreparedCall::Trust(decode(kind, merged(defaults, input))?)
            }
            PluginKind::Pii => {
                let payload = input.as_object_mut().and_then(|o| o.remove("payload"));
                let mut defaults =
                    json!({"direction": "Outbound", "message_type": "task-assignment"});
                if let Some(payload) = &payload {
                    defaults["values"] = serde_json::to_value(crate::pii::string_values(payload))?;
                }
                let request: ScanRequest = decode(kind, merged(defaults, input))?;
                PreparedCall::Pii { request, payload }
            }
            PluginKind::Spend => {
                let window = |ms: u64| json!({"window_ms": ms, "samples": 0, "failures": 0, "tokens": 0, "usd": 0.0});
                let defaults = json!({
                    "node_id": "peer", "now_ms": now,
                    "breaker": {"state": "Active", "since_ms": 0, "reason": null, "failures_since_suspend": 0},
                    "last_hour": window(3_600_000), "last_day": window(86_400_000),
                });
                PreparedCall::Spend(decode(kind, merged(defaults, input))?)
            }
            PluginKind::Handler => {
                if let Some(payload) = input.as_object_mut().and_then(|o| o.remove("payload")) {
                    input["payload_json"] = Value::String(payload.to_string());
                }
                let defaults = json!({
                    "id": "cli-1", "source": "cli", "message_type": "ping", "payload_json": "{}",
                    "sender_level": "Attested", "hop_count": 0, "sent_at_ms": now,
                });
                PreparedCall::Handler(decode(kind, merged(defaults, input))?)
            }
        })
    }

    fn invoke(self, plugin: &crate::plugin::LoadedPlugin) -> anyhow::Result<Value> {
        Ok(match self {
            PreparedCall::Trust(peer) => serde_json::to_value(plugin.evaluate_trust(&peer)?)?,
            PreparedCall::Pii { request, payload } => {
                let result = plugin.scan_pii(&request)?;
                let mut output = json!({"result": result});
                // Categories print by their snake_case names, as in the audit log.
                for (i, d) in result.detections.iter().enumerate() {
                    output["result"]["detections"][i]["pii_type"] = json!(d.pii_type.as_str());
                }
                if let Some(mut payload) = payload {
                    output["payload"] = if result.blocked {
                        Value::Null
                    } else {
                        crate::pii::apply_rewrites(
                            &mut payload,
                            &request.values,
                            &result.rewritten,
                        )?;
                        payload
                    };
                }
                output
            }
            PreparedCall::Spend(request) => serde_json::to_value(plugin.evaluate_spend(&request)?)?,
            PreparedCall::Handler(message) => {
                serde_json::to_value(plugin.handle_message(&message)?)?
            }
        })
    }
}

/// The plugin's answer with its enum and variant names written as the
/// rest of agentfed writes them: trust levels UPPERCASE (`ATTESTED`), other
/// cases in the WIT's kebab-case (`promote`, `recommend-privileged`,
/// `block`). Only single CamelCase words are names; text (reasons, ids)
/// is left as it is.
fn wit_names(value: Value) -> Value {
    fn rename(name: &str) -> Option<String> {
        let is_name = name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && name.chars().all(|c| c.is_ascii_alphabetic());
        if !is_name {
            return None;
        }
        if name.parse::<crate::model::TrustLevel>().is_ok() {
            return Some(name.to_ascii_uppercase());
        }
        let mut out = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        }
        Some(out)
    }
    match value {
        Value::String(s) => Value::String(rename(&s).unwrap_or(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(wit_names).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (rename(&k).unwrap_or(k), wit_names(v)))
                .collect(),
        ),
        other => other,
    }
}

fn decode<T: serde::de::DeserializeOwned>(kind: PluginKind, value: Value) -> anyhow::Result<T> {
    serde_json::from_value(value).map_err(|e| anyhow!("--input does not fit a {kind} request: {e}"))
}

/// `base` with `overlay` merged in, objects recursively.
fn merged(mut base: Value, overlay: Value) -> Value {
    merge_into(&mut base, overlay);
    base
}

fn merge_into(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                merge_into(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (slot, value) => *slot = value,
    }
}

/// Lets users write enum values in any case (`attested`, `ATTESTED`):
/// rewrites known enum fields to the variant names serde expects.
fn normalize_enums(value: &mut Value) {
    const ENUM_FIELDS: [&str; 5] = ["level", "peer_level", "sender_level", "direction", "state"];
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if ENUM_FIELDS.contains(&key.as_str()) {
                    if let Value::String(s) = item {
                        *s = pascal_case(s);
                    }
                } else {
                    normalize_enums(item);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_enums),
        _ => {}
    }
}

fn pascal_case(s: &str) -> String {
    let lower = s.trim().to_ascii_lowercase();
    let mut chars = lower.chars();
    match chars.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_values_are_case_insensitive() {
        let mut v = json!({"peer_level": "ATTESTED", "breaker": {"state": "active"}, "x": "keep"});
        normalize_enums(&mut v);
        assert_eq!(
            v,
            json!({"peer_level": "Attested", "breaker": {"state": "Active"}, "x": "keep"})
        );
    }

    #[test]
    fn merge_overrides_nested_fields() {
        let merged = merged(
            json!({"a": {"b": 1, "c": 2}, "d": 3}),
            json!({"a": {"b": 9}}),
        );
        assert_eq!(merged, json!({"a": {"b": 9, "c": 2}, "d": 3}));
    }

    #[test]
    fn config_pairs_need_an_equals_sign() {
        assert!(parse_config_pairs(&["a=b".into()]).is_ok());
        assert!(parse_config_pairs(&["novalue".into()]).is_err());
        assert!(parse_config_pairs(&["=x".into()]).is_err());
    }

    #[test]
    fn malformed_input_is_a_clear_error() {
        let err = read_input("{not json").unwrap_err().to_string();
        assert!(err.starts_with("--input is not valid JSON"), "{err}");
        let err = PreparedCall::new(PluginKind::Pii, json!({"peer_level": "nope"}))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("does not fit a pii request"), "{err}");
    }
}
