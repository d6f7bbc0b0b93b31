//! Replika under failure, against the real control plane: the guarantees of
//! docs/reliability.md that need crashes, outages, failovers and races to
//! show. One module per guarantee:
//!
//! - [`crash`]: the operator killed in the middle of a 500-namespace fan-out,
//!   of a prune and of a cleanup;
//! - [`outages`]: kube-apiserver and etcd stopped under it;
//! - [`failover`]: a leader killed, stopped or paused under load;
//! - [`races`]: races with users, with namespace and source deletions, and
//!   between Replikas;
//! - [`hostile_input`]: hostile specs that no webhook checked, and oversized
//!   sources;
//! - [`soak`]: continuous churn (`REPLIKA_SOAK_SECONDS`, 60 by default; `make
//!   soak` runs it longer).
//!
//! What they share: [`harness`] (one test at a time, the operators, writing
//! Replikas), [`fleet`] (the 500 namespaces of the fan-outs) and [`checks`]
//! (waiting until copies and status are as they should be).
//!
//! Each test runs its own operator processes under the `deploy/` RBAC, next to
//! the webhook-only operator of [`support::admission`] that signs Replikas'
//! authors. One test runs at a time: their operators would all reconcile every
//! Replika, and one of them stops the API server of the plane the others use.

#[path = "../support/mod.rs"]
mod support;

mod checks;
mod fleet;
mod harness;

mod crash;
mod failover;
mod hostile_input;
mod outages;
mod races;
mod soak;
