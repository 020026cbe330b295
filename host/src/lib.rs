//! agentfed: a federation host for AI-agent installations.
//!
//! Separate agent installations discover each other, prove who they are,
//! and exchange work with graded trust, bounded cost, PII protection and a
//! tamper-evident audit trail. Decisions (trust, PII, spend, inbound
//! messages) are made by sandboxed WebAssembly components; this crate is
//! the host that owns everything with side effects or secrets.
//!
//! Modules, one concern each:
//! * [`clock`]: injectable time.
//! * [`identity`]: keys, the signed manifest, mesh addresses.
//! * [`model`]: domain types shared by the store and the coordinator.
//! * [`store`]: persistent state in one redb file, and the home lock.
//! * [`journal`]: group commit: the one writer thread of the state file,
//!   committing concurrent state changes and audit records together.
//! * [`seglog`]: the append-only segment log with group commit that the
//!   message path is moving onto (framing, recovery, retention).
//! * [`audit`]: the hash-chained audit log.
//! * [`trust`]: capabilities per trust level.
//! * [`trust_ledger`]: what counts as earned trust, promotion gates,
//!   operator pins and decay.
//! * [`breaker`]: legal circuit-breaker transitions and send gates.
//! * [`budget`]: per-envelope budgets.
//! * [`coordinator`]: the node's business logic over store, audit and plugins.
//! * [`envelope`]: signed envelopes and message types.
//! * [`limits`]: inbound size and shape limits by message type and trust
//!   level, and the streaming pre-check that enforces them.
//! * [`federation`]: the daemon's session manager and delivery worker
//!   over the transport.
//! * [`transport`]: the wire: pinned TLS 1.3, WebSocket with
//!   permessage-deflate, the mutual handshake, prioritised streams.
//! * [`control`]: the versioned control API on the node's Unix socket
//!   (protocol, server dispatch, blocking client).
//! * [`demo`]: `agentfed demo`, three narrated nodes on loopback.
//! * [`daemon`]: `agentfed daemon`: lock, socket, timers, signals.
//! * [`plugin`]: the wasmtime runtime that loads, sandboxes and calls
//!   policy components, with hot reload and a precompiled-code cache.
//! * [`embedded`]: the default policies compiled into the binary.
//! * [`pii`]: the host half of the PII pipeline (JSON values in, rewrites
//!   back).
//! * [`config`]: the node configuration file.
//! * [`home`]: where a node keeps its files.
//! * [`scaffold`]: `agentfed plugin new`, generating plugin crates.
//! * [`cli`]: the `agentfed` command line.
#![deny(missing_docs)]

pub mod breaker;
pub mod budget;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod coordinator;
pub mod daemon;
pub mod demo;
pub mod embedded;
pub mod envelope;
pub mod federation;
pub mod home;
pub mod identity;
pub mod limits;
pub mod mcp;
pub mod mesh;
pub mod model;
pub mod pii;
pub mod plugin;
pub mod receipt;
pub mod scaffold;
pub mod storage;
pub mod transport;
pub mod trust;
pub mod trust_ledger;

// The storage layer's modules, at the paths the rest of the crate uses.
pub use storage::{audit, journal, seglog, store};
