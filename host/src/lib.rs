//! agentfed
