//! agentfed's integration tests, in one binary to keep link time down.
//!
//! Every component used here is real: built from source in `policies/`,
//! `examples/` and `tests/fixtures/` by build scripts.

mod adversarial;
mod cli;
mod cli_errors;
mod coordinator;
mod daemon;
mod demo;
mod dial_only;
mod earned_trust;
mod federation;
mod harness;
mod home;
mod hostile;
mod inbound_checks;
mod loading;
mod mcp;
mod mesh_device;
mod mesh_netns;
mod mesh_render;
mod mesh_rotation;
mod mesh_stage;
mod message_log;
mod netns;
mod node;
mod plugin_chain;
mod policies;
mod protocol_doc;
mod receipts;
mod support;
mod transport;
mod walkthrough;
mod wire;
