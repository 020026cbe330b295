//! `agentfed wg stage --out DIR`: the user guide's Phase 7 bundle, for an
//! operator who applies the mesh by hand instead of letting the daemon do
//! it: the WireGuard key (0600), a wg-quick configuration, the nftables
//! and pf firewall files, and the commands that apply them. The contents
//! come from the same checks and renders as the daemon's own mesh
//! ([`super::desired`], [`super::render`]).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use zeroize::Zeroizing;

use super::desired::{DesiredMesh, LocalNode};
use super::render::{PF_ANCHOR, nft_ruleset, pf_anchor, wg_quick};

/// One file of the bundle. Every file is written 0600: the key and the
/// wg-quick configuration are secret, and the firewall files name the
/// peers.
pub struct StagedFile {
    /// Its name inside the bundle directory.
    pub name: String,
    /// Its bytes (zeroised on drop: two of them hold the private key).
    pub contents: Zeroizing<Vec<u8>>,
}

/// What the bundle is made from.
pub struct StageInput<'a> {
    /// This node's id.
    pub node_id: &'a str,
    /// The interface name (`[mesh] interface`).
    pub interface: &'a str,
    /// The UDP port (`[mesh] listen_port`).
    pub listen_port: u16,
    /// This node in the mesh.
    pub local: &'a LocalNode,
    /// Its WireGuard private key.
    pub private_key: &'a [u8; 32],
    /// The peers, checked.
    pub mesh: &'a DesiredMesh,
}

/// The files of the bundle, in the order they are written.
pub fn bundle(input: &StageInput<'_>) -> Vec<StagedFile> {
    let b64 = |k: &[u8; 32]| base64::engine::general_purpose::STANDARD.encode(k);
    let file = |name: String, text: Zeroizing<String>| StagedFile {
        name,
        contents: Zeroizing::new(text.as_bytes().to_vec()),
    };
    let key = Zeroizing::new(format!(
        "{}\n",
        serde_json::json!({
            "node_id": input.node_id,
            "public_key": b64(&input.local.public_key),
            "private_key": *Zeroizing::new(b64(input.private_key)),
        })
    ));
    let conf = Zeroizing::new(wg_quick(
        input.local,
        input.private_key,
        input.listen_port,
        input.mesh,
    ));
    let nft = Zeroizing::new(format!(
        "{}\n",
        nft_ruleset(input.interface, &input.mesh.grants)
    ));
    let pf = Zeroizing::new(pf_anchor(input.interface, &input.mesh.grants));
    let i = input.interface;
    vec![
        file(format!("wg-key-{}.json", input.node_id), key),
        file(format!("{i}.conf"), conf),
        file(format!("{i}.nft.json"), nft),
        file(format!("{i}.pf"), pf),
        file("APPLY.txt".into(), Zeroizing::new(apply_text(input))),
    ]
}

/// The commands that apply the bundle, for the operator to review.
fn apply_text(input: &StageInput<'_>) -> String {
    let i = input.interface;
    let mut out = format!(
        "# agentfed mesh bundle for {node} ({peers} peer(s), {excluded} left out for a bad field).\n\
         # Review the files, then as root, from this directory:\n\
         install -m 0600 {i}.conf /etc/wireguard/{i}.conf\n\
         # Linux (replaces the table inet agentfed):\n\
         nft -j -f {i}.nft.json\n\
         # macOS:\n\
         pfctl -a {PF_ANCHOR} -f {i}.pf\n\
         wg-quick up {i}\n",
        node = input.node_id,
        peers = input.mesh.peers.len(),
        excluded = input.mesh.excluded.len(),
    );
    for e in &input.mesh.excluded {
        out.push_str(&format!(
            "# left out: {} ({} {})\n",
            e.node_id, e.field, e.reason
        ));
    }
    out
}

/// Writes `files` into `dir` (created 0700 if missing), each 0600,
/// atomically; returns their paths.
pub fn write_bundle(dir: &Path, files: &[StagedFile]) -> std::io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::DirBuilderExt as _;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut paths = Vec::with_capacity(files.len());
    for f in files {
        let path = dir.join(&f.name);
        crate::home::write_private(&path, &f.contents)?;
        paths.push(path);
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(paths)
}
