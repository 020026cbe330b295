//! `agentfed init`, `agentfed manifest [verify FILE]` and `agentfed daemon`.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use sha2::{Digest, Sha256};

use super::{CliError, CliResult};
use crate::config::{CONFIG_FILE, DEFAULT_ENDPOINT, NodeConfig};
use crate::identity::{
    HASH_KEY_FILE, IDENTITY_KEY_FILE, Identity, IdentityError, ManifestParams, NODE_FILE, NodeId,
    SignedManifest, TLS_CERT_FILE, TLS_KEY_FILE, WIREGUARD_KEY_FILE,
};
use crate::store::{HomeLock, LockError};

/// `agentfed init` arguments.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// This node's id: 1-63 chars of lowercase letters, digits, '.', '_', '-'.
    #[arg(long, value_name = "ID")]
    pub node_id: String,
    /// Federation endpoint peers connect to (ws:// or wss://host:port).
    #[arg(long, value_name = "URL", default_value = DEFAULT_ENDPOINT, conflicts_with = "no_listen")]
    pub endpoint: String,
    /// A dial-only node (a laptop behind NAT): no listener, no endpoint in
    /// the manifest. Peers never dial it; it dials them, and what they
    /// queue for it is delivered while it is connected. Its peers add its
    /// manifest (`peers add`); it joins them.
    #[arg(long)]
    pub no_listen: bool,
    /// Agent type this node offers (repeatable), e.g. --agent-type coder.
    #[arg(long = "agent-type", value_name = "TYPE")]
    pub agent_types: Vec<String>,
    /// WireGuard mesh subnet the mesh IP is derived in.
    #[arg(long, value_name = "CIDR", default_value = crate::identity::DEFAULT_MESH_SUBNET)]
    pub mesh_subnet: String,
    /// Replace existing keys and config (the old identity is lost).
    #[arg(long)]
    pub force: bool,
}

/// `agentfed manifest` arguments.
#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// Verify a manifest instead of printing this node's.
    #[command(subcommand)]
    pub command: Option<ManifestCommand>,
}

/// `agentfed manifest` subcommands.
#[derive(Debug, Subcommand)]
pub enum ManifestCommand {
    /// Check a signed manifest: field grammars, then the Ed25519 signature.
    /// Prints the node id, endpoint, public key, identity fingerprint
    /// (`sha256:…`) and TLS certificate fingerprint (`tls fingerprint`, the
    /// value `join --fingerprint` takes); exit 2 with the reason if it is
    /// not valid.
    Verify {
        /// The manifest JSON file (`-` for stdin).
        file: PathBuf,
    },
}

/// `agentfed daemon` arguments.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Run in the foreground (the default and only mode: agentfed never
    /// daemonises itself; use systemd or a supervisor).
    #[arg(long)]
    pub foreground: bool,
    /// Tests only: run on a manual clock starting at START_MS (ms since
    /// the Unix epoch) and enable the `clock.advance` control method.
    #[arg(long, hide = true, value_name = "START_MS")]
    pub fake_clock_ms: Option<u64>,
}

/// `sha256:` + lowercase hex SHA-256 of the raw Ed25519 public key: a
/// stable identity fingerprint (the manifest's timestamp and signature
/// change every time it is signed; this does not).
pub fn key_fingerprint(
    manifest: &SignedManifest,
) -> Result<String, crate::identity::ManifestError> {
    let key = manifest.manifest.verifying_key()?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(key.to_bytes()))
    ))
}

/// The manifest parameters `config` describes for `identity`.
pub fn manifest_params(identity: &Identity, config: &NodeConfig) -> anyhow::Result<ManifestParams> {
    let subnet = config
        .mesh_subnet()
        .map_err(|e| anyhow!("[node] mesh_subnet: {e}"))?;
    let mesh_ip = identity.mesh_ip(&subnet, &|_| false)?;
    Ok(ManifestParams {
        agent_types: config.node.agent_types.clone(),
        capabilities: config.node.capabilities.clone(),
        mesh_ip,
        wg_endpoint: config.node.wg_endpoint.clone(),
        protocol_version: crate::identity::PROTOCOL_VERSION,
    })
}

fn now_ms() -> u64 {
    crate::clock::Clock::now_ms(&crate::clock::SystemClock)
}

/// Maps an identity error to an exit code: bad input 2, refusal 1.
fn identity_error(e: IdentityError) -> CliError {
    match e {
        IdentityError::InvalidField(_) => CliError::usage(e),
        other => CliError::failed(other),
    }
}

/// What `init` created (and printed).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Created {
    /// The node id.
    pub node_id: String,
    /// The node home.
    pub home: PathBuf,
    /// The federation endpoint; `None` for a dial-only node.
    pub endpoint: Option<String>,
    /// The WireGuard mesh IP derived from the node id.
    pub mesh_ip: String,
    /// Ed25519 public key (standard base64).
    pub public_key: String,
    /// `sha256:` identity fingerprint.
    pub fingerprint: String,
    /// TLS certificate fingerprint (what `join --fingerprint` takes).
    pub tls_fingerprint: String,
    /// The files written: `(what, path)`.
    pub files: Vec<(String, PathBuf)>,
    /// An existing state store kept under the new identity (`--force`).
    pub kept_state: Option<PathBuf>,
}

/// Creates a node in `home` (what `agentfed init` and the MCP tool
/// `federation_init` do), printing nothing. Refuses to overwrite keys or
/// config unless `args.force`.
pub fn create(home: &Path, args: InitArgs) -> Result<Created, CliError> {
    let node_id = NodeId::parse(&args.node_id)
        .map_err(|e| CliError::usage(anyhow!("--node-id: {}", e.reason)))?;
    let mut config = NodeConfig::default();
    config.node.node_id = node_id.to_string();
    config.node.endpoint = if args.no_listen {
        crate::config::NO_ENDPOINT.to_string()
    } else {
        args.endpoint.clone()
    };
    config.node.agent_types = args.agent_types.clone();
    config.node.mesh_subnet = args.mesh_subnet.clone();
    // Validate everything before creating anything.
    config
        .validate()
        .map_err(|m| CliError::usage(anyhow!("invalid option: {m}")))?;
    // Hold the daemon lock for the whole init: never replace keys, config
    // or certificate under a running daemon, and keep one from starting
    // half-way through.
    // An existing home must already be private: refused before the lock
    // file is created in it, so a refusal changes nothing.
    if std::fs::symlink_metadata(home).is_ok() {
        super::check_home(home)?;
    }
    let _lock = lock_for_init(home)?;
    let config_path = home.join(CONFIG_FILE);
    if !args.force && config_path.exists() {
        return Err(CliError::failed(anyhow!(
            "{} already exists; refusing to overwrite the node's config (re-run init with --force to replace keys and config)",
            config_path.display()
        )));
    }
    let identity = Identity::init(home, &node_id, config.endpoint(), args.force).map_err(|e| {
        match e {
            IdentityError::AlreadyInitialized { path } => CliError::failed(anyhow!(
                "{} already exists; refusing to overwrite node keys (re-run init with --force to replace them)",
                path.display()
            )),
            other => identity_error(other),
        }
    })?;
    write_config(&config_path, &config.to_documented_toml()).map_err(CliError::failed)?;
    let params = manifest_params(&identity, &config).map_err(CliError::failed)?;
    let manifest = identity
        .signed_manifest(&params, now_ms())
        .map_err(CliError::failed)?;
    let fingerprint = key_fingerprint(&manifest).map_err(CliError::failed)?;
    let files = [
        ("identity key", IDENTITY_KEY_FILE),
        ("wireguard key", WIREGUARD_KEY_FILE),
        ("hash key", HASH_KEY_FILE),
        ("tls key", TLS_KEY_FILE),
        ("tls certificate", TLS_CERT_FILE),
        ("node file", NODE_FILE),
        ("config", CONFIG_FILE),
    ]
    .into_iter()
    .map(|(what, name)| (what.to_string(), home.join(name)))
    .collect();
    let state = home.join(crate::store::STATE_FILE);
    Ok(Created {
        node_id: node_id.to_string(),
        home: home.to_path_buf(),
        endpoint: identity.endpoint().map(str::to_string),
        mesh_ip: params.mesh_ip.to_string(),
        public_key: identity.public_key_b64(),
        fingerprint,
        tls_fingerprint: identity.tls_fingerprint().to_string(),
        files,
        kept_state: (args.force && state.exists()).then_some(state),
    })
}

/// `agentfed init`.
pub fn init(home: &Path, args: InitArgs) -> CliResult {
    let created = create(home, args)?;
    let node_id = &created.node_id;
    println!("initialised node {node_id} in {}", home.display());
    for (what, path) in &created.files {
        let private = if what.ends_with("key") { " (0600)" } else { "" };
        println!("  {what:<15} {}{private}", path.display());
    }
    println!(
        "endpoint        {}",
        created
            .endpoint
            .as_deref()
            .unwrap_or("none (dial-only: no listener; join the nodes this node talks to)")
    );
    println!("mesh ip         {}", created.mesh_ip);
    println!("public key      {}", created.public_key);
    println!("fingerprint     {}", created.fingerprint);
    println!("tls fingerprint {}", created.tls_fingerprint);
    if let Some(state) = &created.kept_state {
        // A new identity over the old state: say so, it is rarely intended.
        println!(
            "kept            {} (the old peers, trust, inbox, outbox and audit chain stay with the new identity; peers must re-add the new manifest; move it away for a fresh start)",
            state.display()
        );
    }
    println!(
        "next: agentfed --home {} daemon   (then: agentfed --home {} manifest > {node_id}.manifest.json, for peers)",
        home.display(),
        home.display()
    );
    Ok(())
}

/// Takes the home's daemon lock (`daemon.lock`) when the home exists, so
/// `init` refuses (exit 1, nothing changed) while a daemon runs there. A
/// home that does not exist yet has no daemon; nothing is created for it.
fn lock_for_init(home: &Path) -> Result<Option<HomeLock>, CliError> {
    if !home.is_dir() {
        return Ok(None);
    }
    match HomeLock::acquire(home) {
        Ok(lock) => Ok(Some(lock)),
        Err(LockError::Held { pid, .. }) => Err(CliError::failed(anyhow!(
            "the agentfed daemon for {} is running ({}); stop it before running init (init --force would replace the keys, config and TLS certificate it is using); nothing was changed",
            home.display(),
            match pid {
                Some(p) => format!("pid {p}"),
                None => "pid unknown".to_string(),
            }
        ))),
        Err(e) => Err(CliError::failed(e)),
    }
}

/// Writes the config atomically (temp file, fsync, rename), mode 0600.
fn write_config(path: &Path, text: &str) -> anyhow::Result<()> {
    crate::home::write_private(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `agentfed manifest [verify FILE]`.
pub fn manifest(home: &Path, args: ManifestArgs) -> CliResult {
    match args.command {
        None => print_own(home),
        Some(ManifestCommand::Verify { file }) => verify(&file),
    }
}

fn print_own(home: &Path) -> CliResult {
    super::check_home(home)?;
    let config = NodeConfig::load(home).map_err(CliError::usage)?;
    let identity = Identity::load(home).map_err(identity_error)?;
    let params = manifest_params(&identity, &config).map_err(CliError::usage)?;
    let manifest = identity
        .signed_manifest(&params, now_ms())
        .map_err(CliError::failed)?;
    let json: serde_json::Value =
        serde_json::from_slice(&manifest.to_json()).map_err(CliError::failed)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&json).map_err(CliError::failed)?
    );
    Ok(())
}

fn verify(file: &Path) -> CliResult {
    let bytes = if file == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::io::stdin(), 1 << 20),
            &mut buf,
        )
        .map_err(|e| CliError::usage(anyhow!("cannot read stdin: {e}")))?;
        buf
    } else {
        read_limited(file, 1 << 20).map_err(CliError::usage)?
    };
    let manifest = SignedManifest::from_json(&bytes)
        .map_err(|e| CliError::usage(anyhow!("{}: {e}", file.display())))?;
    manifest
        .verify()
        .map_err(|e| CliError::usage(anyhow!("{}: {e}", file.display())))?;
    let fingerprint = key_fingerprint(&manifest).map_err(CliError::usage)?;
    println!(
        "valid manifest: node {} fingerprint {fingerprint}",
        manifest.manifest.node_id
    );
    println!(
        "endpoint        {}",
        manifest
            .manifest
            .endpoint
            .as_deref()
            .unwrap_or("none (dial-only: add it with `agentfed peers add`; it joins you)")
    );
    println!("public key      {}", manifest.manifest.public_key);
    println!("tls fingerprint {}", manifest.manifest.tls_fingerprint);
    Ok(())
}

/// Reads at most `limit` bytes of a file (a larger one is an error).
pub fn read_limited(path: &Path, limit: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut buf = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if buf.len() as u64 > limit {
        return Err(anyhow!("{} is larger than {limit} bytes", path.display()));
    }
    Ok(buf)
}

/// `agentfed daemon`.
pub fn daemon(home: &Path, args: DaemonArgs) -> CliResult {
    let _ = args.foreground;
    let options = crate::daemon::DaemonOptions {
        fake_clock_ms: args.fake_clock_ms,
        stop: None,
    };
    crate::daemon::run(home, options).map_err(|e| {
        if e.is_bad_input() {
            CliError::usage(e)
        } else {
            CliError::failed(e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_config_that_parses_to_the_defaults_plus_init_values() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("node");
        init(
            &home,
            InitArgs {
                node_id: "lab-1".into(),
                endpoint: "wss://192.0.2.1:9100".into(),
                agent_types: vec!["coder".into()],
                mesh_subnet: "198.18.0.0/15".into(),
                no_listen: false,
                force: false,
            },
        )
        .unwrap();
        let loaded = NodeConfig::load(&home).unwrap();
        let mut expected = NodeConfig::default();
        expected.node.node_id = "lab-1".into();
        expected.node.endpoint = "wss://192.0.2.1:9100".into();
        expected.node.agent_types = vec!["coder".into()];
        expected.node.mesh_subnet = "198.18.0.0/15".into();
        assert_eq!(loaded, expected);
        let id = Identity::load(&home).unwrap();
        let params = manifest_params(&id, &loaded).unwrap();
        assert!(
            "198.18.0.0/15"
                .parse::<crate::identity::MeshSubnet>()
                .unwrap()
                .contains(params.mesh_ip)
        );
        // Without --force nothing is replaced.
        let again = init(
            &home,
            InitArgs {
                node_id: "lab-2".into(),
                endpoint: DEFAULT_ENDPOINT.into(),
                agent_types: vec![],
                mesh_subnet: "10.50.0.0/16".into(),
                no_listen: false,
                force: false,
            },
        )
        .unwrap_err();
        assert_eq!(again.code, 1);
        assert_eq!(NodeConfig::load(&home).unwrap(), expected);
    }

    #[test]
    fn bad_init_options_create_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("node");
        for (node_id, endpoint, subnet) in [
            ("Bad Id", DEFAULT_ENDPOINT, "10.50.0.0/16"),
            ("ok", "http://x:1", "10.50.0.0/16"),
            ("ok", DEFAULT_ENDPOINT, "10.0.0.0/31"),
        ] {
            let err = init(
                &home,
                InitArgs {
                    node_id: node_id.into(),
                    endpoint: endpoint.into(),
                    agent_types: vec![],
                    mesh_subnet: subnet.into(),
                    no_listen: false,
                    force: false,
                },
            )
            .unwrap_err();
            assert_eq!(err.code, 2, "{:#}", err.error);
            assert!(!home.exists());
        }
    }
}
