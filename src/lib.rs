//! Replika: keeps copies of one namespaced object in many namespaces, in sync with its source.
//!
//! - [`api`]: the `Replika` custom resource.
//! - [`plugin`]: `kubectl replika status|plan|attest`, the commands users run against a cluster.
//! - [`domain`]: pure rules (target namespaces, copies, validation) with no Kubernetes I/O.
//! - [`controller`]: the reconciler and the watches that drive it.
//! - [`webhook`]: the admission webhooks and their HTTPS server.
//! - [`authorization`]: the signing key, author attestations and access reviews both use.
//! - [`leader`], [`operations`], [`metrics`]: running several replicas, the
//!   `/metrics`, `/healthz` and `/readyz` endpoint, Prometheus.
//! - [`shutdown`]: the one shutdown signal every task of a running operator holds.
//! - [`locks`]: locks that outlive a panic elsewhere.

pub mod api;
pub mod authorization;
pub mod controller;
pub mod domain;
pub mod leader;
pub mod locks;
pub mod metrics;
pub mod operations;
pub mod plugin;
pub mod shutdown;
pub mod webhook;
