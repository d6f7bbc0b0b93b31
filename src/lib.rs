//! Replika: keeps copies of one namespaced object in many namespaces, in sync with its source.
//!
//! - [`api`]: the `Replika` custom resource.
//! - [`plugin`]: `kubectl replika status|plan|attest`, the commands users run against a cluster.
//! - [`domain`]: pure rules (target namespaces, copies, validation) with no Kubernetes I/O.
//! - [`controller`]: the reconciler and the watches that drive it.
//! - [`webhook`]: the admission webhooks and their HTTPS server.
//! - [`authorization`]: the signing key, author attestations and access reviews both use.
//! - [`leader`], [`health`], [`metrics`]: running several replicas, probes, Prometheus.
//! - [`locks`]: locks that outlive a panic elsewhere.

pub mod api;
pub mod authorization;
pub mod controller;
pub mod domain;
pub mod health;
pub mod leader;
pub mod locks;
pub mod metrics;
pub mod plugin;
pub mod webhook;
