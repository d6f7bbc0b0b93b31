//! Installing Replika, against the real control plane (docs/install.md). One
//! module per guarantee:
//!
//! - [`rbac`]: the RBAC grants exactly what the code uses;
//! - [`bundles`]: the Kustomize bundles of `make bundle` apply cleanly by
//!   server-side apply, and the Deployment's flags are ones the binary accepts;
//! - [`helm_chart`]: the Helm chart renders what the bundles hold, and its own
//!   options render what they say;
//! - [`examples`]: every example is accepted by the API server;
//! - [`cert_manager`]: the cert-manager overlay works end to end with
//!   cert-manager's own controllers.
//!
//! [`tools`] holds what they share. The tools are pinned in
//! `tools/versions.env` and built or fetched from Go modules by the scripts in
//! `tools/`, which print what they made and build only what is missing: Helm
//! (`$REPLIKA_HELM`, or `tools/build-helm.sh`), cert-manager's CRDs and
//! controllers (`tools/cert-manager-crds.sh`, `tools/build-cert-manager.sh`)
//! and the Prometheus Operator's CRDs (`tools/prometheus-operator-crds.sh`).

#[path = "../support/mod.rs"]
mod support;

mod tools;

mod bundles;
mod cert_manager;
mod examples;
mod helm_chart;
mod rbac;
