//! The WireGuard mesh: devices, reconciliation and the witness chain.

pub mod device;
pub mod uapi;
