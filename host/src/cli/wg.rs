//! `agentfed wg …`: the WireGuard mesh (docs/mesh.md).
//!
//! `status`, `plan`, `attest` and `rotate` ask the daemon's reconciler; `witness
//! export` reads the chain through the daemon or, with it stopped, from
//! the home; `witness verify` and `mesh-ip` need no node at all.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{CliError, CliResult};
use crate::control::client::{self, CallError};
use crate::identity::{MeshSubnet, NodeId, derive_mesh_ip};

/// `agentfed wg` subcommands.
#[derive(Debug, Subcommand)]
pub enum WgCommand {
    /// Print each node id's mesh IP in SUBNET, in order: each id avoids
    /// the addresses taken by the ids before it, as a mesh assigns them.
    /// A subnet too small for all of them is an error naming the first id
    /// that found no address.
    #[command(
        after_help = "Example:\n  agentfed wg mesh-ip --subnet 198.18.0.0/29 alpha beta gamma"
    )]
    MeshIp(MeshIpArgs),
    /// The mesh as the device has it: each peer's key, trust level,
    /// breaker state, allowed IPs, endpoint, last handshake and traffic,
    /// plus peers kept out for a bad field. Needs the daemon, with [mesh]
    /// enabled.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// What a reconcile would change now, printed as the commands that
    /// would run (`wg set …`, `nft -j -f …`). Changes nothing.
    Plan {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Record an operator's note in the witness chain (signed, like every
    /// mesh change), e.g. after checking the peers by hand.
    #[command(after_help = "Example:
  agentfed wg attest --note \"checked beta's key with its operator by phone\"")]
    Attest {
        /// The note: 1-1024 characters, no control characters.
        #[arg(long)]
        note: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace this node's WireGuard key: the new key is written 0600,
    /// the manifest re-signed and every session opened again so that
    /// connected peers adopt it at once (the tunnel to each peer pauses
    /// until it has). The old key is kept for `[mesh] rotate_grace_secs`
    /// (10 minutes by default), then destroyed. Every step is a witness
    /// entry. Needs the daemon, with [mesh] enabled.
    #[command(after_help = "Example:\n  agentfed wg rotate --confirm")]
    Rotate {
        /// Required: the old key stops working on this node at once.
        #[arg(long)]
        confirm: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the files an operator needs to bring the mesh up by hand
    /// (the user guide's Phase 7 bundle): the WireGuard key (0600), a
    /// wg-quick configuration, the nftables and pf firewall files and
    /// APPLY.txt with the commands. From the node's current peers (through
    /// the daemon, or from the home when it is stopped), or for one peer
    /// given with --peer and its fields. The mesh need not be enabled.
    /// Every peer field is checked as the daemon's mesh checks it; a peer
    /// given here that fails a check is an error and nothing is written.
    #[command(after_help = "Examples:
  agentfed wg stage --out /tmp/agentfed-stage
  agentfed wg stage --out /tmp/agentfed-stage --peer beta \\
      --peer-key 'BETA_WG_KEY_BASE64' --peer-mesh-ip 10.50.9.1 \\
      --peer-endpoint 192.0.2.2:51820 --peer-level attested")]
    Stage(StageArgs),
    /// The witness chain: every mesh change, signed and hash-linked.
    #[command(subcommand)]
    Witness(WitnessCommand),
}

/// `wg stage` arguments.
#[derive(Debug, Args)]
pub struct StageArgs {
    /// The directory to write into (created 0700 if missing; files in it
    /// with the bundle's names are replaced).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Stage for this one peer instead of the node's peers.
    #[arg(long, value_name = "NODE_ID", requires_all = ["peer_key", "peer_mesh_ip"])]
    pub peer: Option<String>,
    /// The peer's WireGuard public key (standard base64).
    #[arg(long, value_name = "KEY", requires = "peer")]
    pub peer_key: Option<String>,
    /// The peer's mesh IP (inside this node's [node] mesh_subnet).
    #[arg(long, value_name = "IP", requires = "peer")]
    pub peer_mesh_ip: Option<String>,
    /// The peer's WireGuard endpoint, host:port (optional).
    #[arg(long, value_name = "HOST:PORT", requires = "peer")]
    pub peer_endpoint: Option<String>,
    /// The peer's trust level, which sets what it may reach.
    #[arg(
        long,
        value_name = "LEVEL",
        default_value = "verified",
        requires = "peer"
    )]
    pub peer_level: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `agentfed wg witness` subcommands.
#[derive(Debug, Subcommand)]
pub enum WitnessCommand {
    /// Write this node's witness chain (JSON Lines: a header, then one
    /// entry per line). Through the daemon, or from the home when it is
    /// stopped.
    Export {
        /// Write to FILE instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Check an exported chain with nothing but the node's Ed25519 public
    /// key (from its manifest): exit 0 if every entry checks, 1 naming the
    /// first bad entry, 2 if the file or key cannot be read.
    #[command(
        after_help = "Example:\n  agentfed wg witness verify beta.witness.jsonl --public-key 'BETA_KEY_BASE64'"
    )]
    Verify {
        /// The export (`-` for stdin).
        file: PathBuf,
        /// The node's Ed25519 public key, standard base64.
        #[arg(long, value_name = "KEY")]
        public_key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch PEER's witness chain over the federation session and verify
    /// it with the key of PEER's manifest on record here (both nodes must
    /// see each other at TRUSTED or above): what PEER did to its mesh.
    /// Exit 1 naming the first bad entry if it does not verify.
    #[command(after_help = "Example:\n  agentfed wg witness fetch beta --out beta.witness.jsonl")]
    Fetch {
        /// The peer's node id.
        peer: String,
        /// Also write the verified chain (export format) to FILE.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// How long to wait for each page, ms.
        #[arg(long, value_name = "MS")]
        timeout_ms: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `wg mesh-ip` arguments.
#[derive(Debug, Args)]
pub struct MeshIpArgs {
    /// The mesh subnet, a.b.c.d/prefix (prefix 0..=30).
    #[arg(long, default_value = crate::identity::DEFAULT_MESH_SUBNET)]
    pub subnet: String,
    /// Print JSON: [{"node_id": …, "mesh_ip": …}, …].
    #[arg(long)]
    pub json: bool,
    /// Node ids, in the order the mesh saw them.
    #[arg(required = true, value_name = "NODE_ID")]
    pub node_ids: Vec<String>,
}

/// Runs `agentfed wg …`.
pub fn run(home: &Path, command: WgCommand) -> CliResult {
    match command {
        WgCommand::MeshIp(args) => mesh_ip(&args),
        WgCommand::Status { json } => status(home, json),
        WgCommand::Plan { json } => plan(home, json),
        WgCommand::Attest { note, json } => attest(home, &note, json),
        WgCommand::Rotate { confirm, json } => rotate(home, confirm, json),
        WgCommand::Stage(args) => stage(home, &args),
        WgCommand::Witness(WitnessCommand::Export { out }) => export(home, out.as_deref()),
        WgCommand::Witness(WitnessCommand::Verify {
            file,
            public_key,
            json,
        }) => verify(&file, &public_key, json),
        WgCommand::Witness(WitnessCommand::Fetch {
            peer,
            out,
            timeout_ms,
            json,
        }) => fetch(home, &peer, out.as_deref(), timeout_ms, json),
    }
}

use super::ops::{call, print_json};

fn status(home: &Path, as_json: bool) -> CliResult {
    let s = call(home, "wg.status", json!({}))?;
    if as_json {
        print_json(&s);
        return Ok(());
    }
    let text = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => super::printable(s).into_owned(),
        other => other.to_string(),
    };
    println!(
        "interface: {} ({})",
        text(&s["interface"]),
        text(&s["backend"])
    );
    println!("  public key: {}", text(&s["public_key"]));
    println!("  listening port: {}", text(&s["listen_port"]));
    println!(
        "  mesh ip: {} in {}",
        text(&s["mesh_ip"]),
        text(&s["subnet"])
    );
    println!("  witness entries: {}", text(&s["witness_entries"]));
    for p in s["peers"].as_array().into_iter().flatten() {
        println!();
        println!("peer: {} ({})", text(&p["public_key"]), text(&p["node_id"]));
        println!(
            "  trust: {}  breaker: {}",
            text(&p["trust_level"]),
            text(&p["breaker"])
        );
        let ips = p["allowed_ips"]
            .as_array()
            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(", "))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "(none)".into());
        println!("  allowed ips: {ips}");
        println!("  endpoint: {}", text(&p["endpoint"]));
        let handshake = match p["latest_handshake_secs"].as_u64() {
            None | Some(0) => "never".to_string(),
            Some(secs) => crate::clock::rfc3339(secs * 1000).unwrap_or_else(|| secs.to_string()),
        };
        println!("  latest handshake: {handshake}");
        println!(
            "  transfer: {} B received, {} B sent",
            text(&p["rx_bytes"]),
            text(&p["tx_bytes"])
        );
    }
    for e in s["excluded"].as_array().into_iter().flatten() {
        println!();
        println!(
            "excluded: {} ({} {})",
            text(&e["node_id"]),
            text(&e["field"]),
            text(&e["reason"])
        );
    }
    for k in s["unknown_peers"].as_array().into_iter().flatten() {
        println!();
        println!(
            "unknown peer on the device (removed at the next reconcile): {}",
            text(k)
        );
    }
    Ok(())
}

fn plan(home: &Path, as_json: bool) -> CliResult {
    let p = call(home, "wg.plan", json!({}))?;
    if as_json {
        print_json(&p);
        return Ok(());
    }
    let commands = p["commands"].as_array().cloned().unwrap_or_default();
    if commands.is_empty() {
        println!("the mesh matches: nothing to change");
    }
    for c in commands {
        println!(
            "{}",
            c.as_str()
                .map(|s| super::printable(s).into_owned())
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn attest(home: &Path, note: &str, as_json: bool) -> CliResult {
    crate::mesh::witness::check_note(note).map_err(CliError::usage)?;
    let entry = call(home, "wg.attest", json!({"note": note}))?;
    if as_json {
        print_json(&entry);
    } else {
        println!(
            "witness entry {} recorded (hash {})",
            entry["seq"],
            entry["hash"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

fn rotate(home: &Path, confirm: bool, as_json: bool) -> CliResult {
    if !confirm {
        return Err(CliError::usage(anyhow!(
            "wg rotate replaces this node's WireGuard key; the mesh to each peer pauses until it has the new manifest. Run it again with --confirm"
        )));
    }
    let r = call(home, "wg.rotate", json!({"confirm": true}))?;
    if as_json {
        print_json(&r);
        return Ok(());
    }
    let text = |v: &Value| {
        v.as_str()
            .map(|s| super::printable(s).into_owned())
            .unwrap_or_default()
    };
    println!("new WireGuard public key: {}", text(&r["new_public_key"]));
    println!(
        "old key {} is destroyed at {}",
        text(&r["old_public_key"]),
        r["destroy_at_ms"]
            .as_u64()
            .and_then(crate::clock::rfc3339)
            .unwrap_or_default()
    );
    println!(
        "witness entry {}; {} session(s) reopened with the new manifest",
        r["witness_seq"], r["sessions_reopened"]
    );
    Ok(())
}

fn export(home: &Path, out: Option<&Path>) -> CliResult {
    let text = match client::call(home, "wg.witness.export", json!({})) {
        Ok(result) => result["export"].as_str().unwrap_or_default().to_string(),
        Err(CallError::NotRunning { .. }) => export_offline(home)?,
        Err(e) => return Err(e.into()),
    };
    match out {
        None => print!("{text}"),
        Some(path) => crate::home::write_private(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
            .map_err(CliError::failed)?,
    }
    Ok(())
}

/// The chain read from the home with the daemon stopped (under the home
/// lock, so a daemon starting meanwhile waits).
fn export_offline(home: &Path) -> Result<String, CliError> {
    super::check_home(home)?;
    let _lock = crate::store::HomeLock::acquire(home).map_err(CliError::failed)?;
    let identity = crate::identity::Identity::load(home).map_err(CliError::failed)?;
    crate::mesh::witness::export_offline(
        home,
        identity.node_id().as_str(),
        &identity.public_key_b64(),
    )
    .map_err(CliError::failed)
}

fn verify(file: &Path, public_key: &str, as_json: bool) -> CliResult {
    let key = crate::identity::decode_key32("public_key", public_key.trim())
        .map_err(|e| CliError::usage(anyhow!("--public-key: {}", e.reason)))?;
    let text = if file == Path::new("-") {
        let mut buf = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf)
            .map_err(|e| CliError::usage(anyhow!("cannot read stdin: {e}")))?;
        buf
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| CliError::usage(anyhow!("cannot read {}: {e}", file.display())))?
    };
    match crate::mesh::witness::verify_export(&text, &key) {
        Ok(v) => {
            if as_json {
                print_json(
                    &json!({"ok": true, "node_id": v.node_id, "entries": v.entries, "head": v.head}),
                );
            } else {
                println!(
                    "valid witness chain of {}: {} entries{}",
                    super::printable(&v.node_id),
                    v.entries,
                    v.head.map(|h| format!(", head {h}")).unwrap_or_default()
                );
            }
            Ok(())
        }
        Err(crate::mesh::witness::WitnessError::Invalid(reason)) => {
            Err(CliError::usage(anyhow!("{}: {reason}", file.display())))
        }
        Err(e) => Err(CliError::failed(anyhow!("INVALID_WITNESS: {e}"))),
    }
}

fn fetch(
    home: &Path,
    peer: &str,
    out: Option<&Path>,
    timeout_ms: Option<u64>,
    as_json: bool,
) -> CliResult {
    let mut params = json!({"peer": peer});
    if let Some(ms) = timeout_ms {
        params["timeout_ms"] = json!(ms);
    }
    let r = call(home, "wg.witness.fetch", params)?;
    if let Some(path) = out {
        crate::home::write_private(path, r["export"].as_str().unwrap_or_default().as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
            .map_err(CliError::failed)?;
    }
    if as_json {
        print_json(&r);
        return Ok(());
    }
    println!(
        "valid witness chain of {}: {} entries{} (verified with its manifest key {})",
        super::printable(r["peer"].as_str().unwrap_or_default()),
        r["entries"],
        r["head"]
            .as_str()
            .map(|h| format!(", head {h}"))
            .unwrap_or_default(),
        super::printable(r["public_key"].as_str().unwrap_or_default())
    );
    Ok(())
}

fn stage(home: &Path, args: &StageArgs) -> CliResult {
    use crate::mesh::desired::{LocalNode, PeerFields, desired_from_fields};
    use crate::mesh::stage::{StageInput, bundle, write_bundle};
    super::check_home(home)?;
    let config = crate::config::NodeConfig::load(home).map_err(CliError::failed)?;
    let identity = crate::identity::Identity::load(home).map_err(CliError::failed)?;
    let subnet = config
        .mesh_subnet()
        .map_err(|e| CliError::failed(anyhow!("[node] mesh_subnet: {e}")))?;
    let mesh_ip = identity
        .mesh_ip(&subnet, &|_| false)
        .map_err(CliError::failed)?;
    let (private_key, public_key) = identity.wg_key_bytes();
    let local = LocalNode {
        subnet,
        mesh_ip,
        public_key,
        keepalive_secs: config.mesh.keepalive_secs,
    };
    let fields = match &args.peer {
        Some(peer) => vec![PeerFields {
            node_id: peer.clone(),
            wg_public_key: args.peer_key.clone().unwrap_or_default(),
            mesh_ip: args.peer_mesh_ip.clone().unwrap_or_default(),
            wg_endpoint: args.peer_endpoint.clone(),
            level: args
                .peer_level
                .parse()
                .map_err(|e| CliError::usage(anyhow!("--peer-level {}: {e}", args.peer_level)))?,
            suspended: false,
        }],
        None => node_peer_fields(home)?,
    };
    let mesh = desired_from_fields(&local, &fields, &crate::mesh::runtime::resolve);
    if args.peer.is_some()
        && let Some(bad) = mesh.excluded.first()
    {
        let flag = match bad.field {
            "node_id" => "--peer",
            "wg_public_key" => "--peer-key",
            "mesh_ip" => "--peer-mesh-ip",
            _ => "--peer-endpoint",
        };
        return Err(CliError::usage(anyhow!(
            "{flag}: {}; nothing written",
            bad.reason
        )));
    }
    let files = bundle(&StageInput {
        node_id: identity.node_id().as_str(),
        interface: &config.mesh.interface,
        listen_port: config.mesh.listen_port,
        local: &local,
        private_key: &private_key,
        mesh: &mesh,
    });
    let paths = write_bundle(&args.out, &files)
        .with_context(|| format!("cannot write the bundle into {}", args.out.display()))
        .map_err(CliError::failed)?;
    let excluded: Vec<Value> = mesh
        .excluded
        .iter()
        .map(|e| json!({"node_id": e.node_id, "field": e.field, "reason": e.reason}))
        .collect();
    if args.json {
        print_json(&json!({
            "dir": args.out.display().to_string(),
            "files": paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "peers": mesh.peers.len(),
            "excluded": excluded,
        }));
        return Ok(());
    }
    println!(
        "staged {} peer(s) in {} (review, then apply as APPLY.txt says):",
        mesh.peers.len(),
        args.out.display()
    );
    for path in &paths {
        println!("  {}", path.display());
    }
    for e in &mesh.excluded {
        println!(
            "left out: {} ({} {})",
            super::printable(&e.node_id),
            e.field,
            e.reason
        );
    }
    Ok(())
}

/// The mesh fields of the node's peers: through the daemon, or from the
/// home's state file when it is stopped.
fn node_peer_fields(home: &Path) -> Result<Vec<crate::mesh::desired::PeerFields>, CliError> {
    use crate::mesh::desired::PeerFields;
    let rows = match client::call(home, "wg.peers", json!({})) {
        Ok(result) => result["peers"].as_array().cloned().unwrap_or_default(),
        Err(CallError::NotRunning { .. }) => {
            let state = home.join(crate::store::STATE_FILE);
            if !state.exists() {
                return Ok(Vec::new());
            }
            let _lock = crate::store::HomeLock::acquire(home).map_err(CliError::failed)?;
            let store = crate::store::Store::open(&state).map_err(CliError::failed)?;
            let peers = store.list_peers().map_err(CliError::failed)?;
            return Ok(crate::mesh::desired::mesh_fields(&peers));
        }
        Err(e) => return Err(e.into()),
    };
    rows.iter()
        .map(|row| {
            PeerFields::from_json(row)
                .ok_or_else(|| CliError::failed(anyhow!("the daemon sent a malformed peer row")))
        })
        .collect()
}

fn mesh_ip(args: &MeshIpArgs) -> CliResult {
    let subnet: MeshSubnet = args
        .subnet
        .parse()
        .map_err(|e| CliError::usage(anyhow!("--subnet {}: {e}", args.subnet)))?;
    let mut ids = Vec::with_capacity(args.node_ids.len());
    for raw in &args.node_ids {
        let id = NodeId::parse(raw).map_err(|e| CliError::usage(anyhow!("node id: {e}")))?;
        if ids
            .iter()
            .any(|known: &NodeId| known.as_str() == id.as_str())
        {
            return Err(CliError::usage(anyhow!(
                "node id {} is given twice",
                id.as_str()
            )));
        }
        ids.push(id);
    }
    let mut taken = Vec::with_capacity(ids.len());
    for id in &ids {
        let ip = derive_mesh_ip(id, &subnet, &|ip| taken.contains(&ip))
            .map_err(|e| CliError::failed(anyhow!("{}: {e}", id.as_str())))?;
        taken.push(ip);
    }
    if args.json {
        let rows: Vec<_> = ids
            .iter()
            .zip(&taken)
            .map(|(id, ip)| json!({"node_id": id.as_str(), "mesh_ip": ip.to_string()}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        for (id, ip) in ids.iter().zip(&taken) {
            println!("{}\t{ip}", id.as_str());
        }
    }
    Ok(())
}
