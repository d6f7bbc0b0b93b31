//! The fleet: 500 namespaces made once per test binary, into which the
//! fan-out tests copy (and from which they prune) while an operator is killed,
//! stopped or raced.

use std::collections::BTreeSet;
use std::time::Instant;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::harness::{apply_replika, namespaces, spec};

/// How many namespaces the fan-out scenarios copy into.
const FLEET_SIZE: usize = 500;

/// The namespaces `<prefix>-000` to `<prefix>-499`, made once per test binary.
pub struct Fleet {
    prefix: String,
    pub names: Vec<String>,
}

impl Fleet {
    /// The glob of the fleet's namespaces whose name ends with `suffix` (all of them for "").
    pub fn glob(&self, suffix: &str) -> String {
        format!("{}-*{suffix}", self.prefix)
    }

    /// The fleet's namespaces whose name ends with `suffix`.
    pub fn ending_with(&self, suffix: &str) -> BTreeSet<String> {
        self.names
            .iter()
            .filter(|name| name.ends_with(suffix))
            .cloned()
            .collect()
    }
}

/// Replicates the ConfigMap `source_ns/name` into the fleet, but for the
/// namespaces ending in 7; returns the targets and the Replika's UID.
pub async fn replicate_to_fleet(
    admin: &Client,
    fleet: &Fleet,
    source_ns: &str,
    name: &str,
) -> (BTreeSet<String>, String) {
    let (all, excluded) = (fleet.glob(""), fleet.glob("7"));
    let targets: BTreeSet<String> = fleet
        .names
        .iter()
        .filter(|ns| !ns.ends_with('7'))
        .cloned()
        .collect();
    let spec = spec(
        "ConfigMap",
        source_ns,
        name,
        "30s",
        namespaces(&[&all], &[&excluded]),
    );
    let replika = apply_replika(admin, source_ns, name, spec)
        .await
        .expect("the Replika is created");
    (targets, replika.uid().expect("a UID"))
}

static FLEET: tokio::sync::OnceCell<Fleet> = tokio::sync::OnceCell::const_new();

/// The fleet, created on first use, 16 namespaces at a time.
pub async fn fleet(client: &Client) -> &'static Fleet {
    FLEET
        .get_or_init(|| async {
            let prefix = format!("fleet{}", std::process::id());
            let names: Vec<String> = (0..FLEET_SIZE)
                .map(|i| format!("{prefix}-{i:03}"))
                .collect();
            let started = Instant::now();
            let namespaces = Api::<Namespace>::all(client.clone());
            stream::iter(&names)
                .for_each_concurrent(16, |name| {
                    let namespaces = namespaces.clone();
                    async move {
                        let namespace: Namespace =
                            serde_json::from_value(json!({"metadata": {"name": name}}))
                                .expect("a Namespace");
                        match namespaces.create(&PostParams::default(), &namespace).await {
                            Ok(_) => {}
                            Err(kube::Error::Api(status)) if status.is_already_exists() => {}
                            Err(error) => panic!("creating namespace {name}: {error}"),
                        }
                    }
                })
                .await;
            println!("created {FLEET_SIZE} namespaces in {:?}", started.elapsed());
            Fleet { prefix, names }
        })
        .await
}
