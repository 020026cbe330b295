//! `agentfed wg …`: the WireGuard mesh's offline tools.
//!
//! Today: `wg mesh-ip`, which prints the mesh addresses a set of node ids
//! gets in a subnet, exactly as the mesh assigns them (the derivation of
//! `docs/protocol.md` §4.3, each id avoiding the addresses the ids before
//! it took). The reconciled mesh itself (`wg status`, `plan`, `attest`,
//! `rotate`, the witness chain) is not built yet; see `docs/mesh.md`.

use anyhow::anyhow;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{CliError, CliResult};
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
pub fn run(command: WgCommand) -> CliResult {
    match command {
        WgCommand::MeshIp(args) => mesh_ip(&args),
    }
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
