//! Replika's rules as plain functions over plain data: no Kubernetes I/O here,
//! so every rule is unit-tested without an API server. The admission webhook
//! and the reconciler both call into this module, so they never disagree.

pub mod access;
pub mod attestation;
pub mod copy;
pub mod duration;
pub mod names;
pub mod plan;
pub mod selector;
pub mod sync_steps;
pub mod targets;
pub mod validation;
