//! The WireGuard mesh governed by trust (docs/mesh.md): the desired state
//! from trust, breaker state and validated manifests ([`desired`]), the
//! device behind a small interface with userspace and kernel backends
//! ([`device`], [`uapi`]), the reconciler ([`runtime`], [`diff`]), the
//! files an operator applies by hand ([`render`], bundled by [`stage`]), key rotation
//! ([`rotation`]) and the signed witness chain of every change
//! ([`witness`]).

pub mod desired;
pub mod device;
pub mod diff;
pub mod fetch;
pub mod render;
pub mod rotation;
pub mod runtime;
pub mod stage;
pub mod uapi;
pub mod witness;
