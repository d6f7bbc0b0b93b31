//! Replika's benchmark: the figures of docs/benchmarks.md for any operator
//! serving `replika.prosimcorp.com/v1beta1`, each beside its target.
//!
//! The modules, each depending only on those listed before it:
//!
//! - [`model`]: the kinds, object keys, names and constants all others share.
//! - [`stats`], [`progress`]: percentiles and medians of repetitions, the counter line.
//! - [`histogram`]: Prometheus histograms, their difference and quantiles.
//! - [`accounting`]: the operator's requests, from the API server's metrics.
//! - [`figures`]: what a run measures (memory, propagation, idle, phases and
//!   their cost, admission), per repetition.
//! - [`cli`], [`operator`]: the command line; the operator process, its
//!   endpoints, its memory and CPU time.
//! - [`cluster`]: the control plane, `deploy/base`, the operator's and the floor's identities.
//! - [`workload`]: the objects of the scenarios.
//! - [`observer`]: ConfigMap and Secret watches that timestamp every arrival.
//! - [`setup`]: the cluster as the operator finds it when it starts.
//! - [`floor`]: the bare client the operator is compared with.
//! - [`webhook`]: the operator's webhooks, registered, and the admission scenario.
//! - [`scenarios`]: the steps of a run, in order, against one operator.
//! - [`report`]: the table, the per-phase lines and the JSON.

pub mod accounting;
pub mod cli;
pub mod cluster;
pub mod figures;
pub mod floor;
pub mod histogram;
pub mod model;
pub mod observer;
pub mod operator;
pub mod progress;
pub mod report;
pub mod scenarios;
pub mod setup;
pub mod stats;
pub mod webhook;
pub mod workload;
