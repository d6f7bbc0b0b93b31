//! Replika's benchmark: the figures of SPEC §6 for any operator serving
//! `replika.prosimcorp.com/v1beta1`, each beside its target.
//!
//! - [`cli`]: the command line.
//! - [`cluster`]: the control plane, `deploy/base`, the operator's and the floor's identities.
//! - [`workload`]: the objects of the scenarios.
//! - [`observer`]: ConfigMap and Secret watches that timestamp every arrival.
//! - [`operator`]: the operator process, its endpoints, its memory.
//! - [`accounting`]: the operator's requests, from the API server's metrics.
//! - [`scenarios`]: the steps of a run, in order.
//! - [`webhook`]: the admission scenario.
//! - [`stats`], [`report`], [`progress`]: percentiles, the table and JSON, the counter line.

pub mod accounting;
pub mod cli;
pub mod cluster;
pub mod observer;
pub mod operator;
pub mod progress;
pub mod report;
pub mod scenarios;
pub mod stats;
pub mod webhook;
pub mod workload;
