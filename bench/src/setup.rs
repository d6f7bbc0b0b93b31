//! The cluster as the operator finds it when it starts: the target
//! namespaces, the unrelated Secrets and the sources (the numbered Replikas'
//! and the timed ones'), created before any operator runs, `parallelism`
//! requests at a time.

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::{
    FIRST_REVISION, Kind, NAMESPACE_PREFIX, SOURCE_NAMESPACE, WARMUP_NAME, WARMUP_NAMESPACE,
    source_name, timed_name,
};
use crate::workload::{self, Workload, run_parallel};

/// Namespaces that exist before the benchmark creates any; fails if a
/// previous run's namespaces are still there.
pub async fn preexisting_namespaces(admin: &Client) -> Result<Vec<String>> {
    let names: Vec<String> = Api::<Namespace>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .context("cannot list namespaces")?
        .into_iter()
        .map(|namespace| namespace.name_any())
        .collect();
    ensure!(
        !names.iter().any(|name| name.starts_with(NAMESPACE_PREFIX)),
        "namespaces named {NAMESPACE_PREFIX}* exist already: wait until a previous run's are deleted"
    );
    Ok(names)
}

/// Creates the namespaces, the unrelated Secrets and the sources.
pub async fn build(admin: &Client, workload: &Workload, parallelism: usize) -> Result<()> {
    let mut namespaces = workload.target_namespaces();
    namespaces.extend([SOURCE_NAMESPACE.to_owned(), WARMUP_NAMESPACE.to_owned()]);
    run_parallel("namespaces", namespaces, parallelism, |name| {
        create(Api::all(admin.clone()), workload::namespace(&name))
    })
    .await?;

    let targets = workload.target_namespaces();
    let secrets: Vec<usize> = (0..workload.unrelated_secrets).collect();
    run_parallel("unrelated Secrets", secrets, parallelism, |index| {
        let namespace = &targets[index % targets.len()];
        let api = Api::<Secret>::namespaced(admin.clone(), namespace);
        create(api, workload::unrelated_secret(index, namespace))
    })
    .await?;

    let configmaps = Api::<ConfigMap>::namespaced(admin.clone(), SOURCE_NAMESPACE);
    let mut plain_sources = vec![WARMUP_NAME.to_owned()];
    plain_sources.extend((0..workload.repeats).map(timed_name));
    run_parallel("timed sources", plain_sources, parallelism, |name| {
        create(
            configmaps.clone(),
            workload::config_map_source(&name, FIRST_REVISION),
        )
    })
    .await?;
    let sources: Vec<usize> = (0..workload.replikas).collect();
    run_parallel("sources", sources, parallelism, |index| {
        let name = source_name(index);
        let configmaps = configmaps.clone();
        let secrets = Api::<Secret>::namespaced(admin.clone(), SOURCE_NAMESPACE);
        async move {
            match Kind::of_source(index) {
                Kind::ConfigMap => {
                    create(
                        configmaps,
                        workload::config_map_source(&name, FIRST_REVISION),
                    )
                    .await
                }
                Kind::Secret => {
                    create(secrets, workload::secret_source(&name, FIRST_REVISION)).await
                }
            }
        }
    })
    .await
}

async fn create<K>(api: Api<K>, object: K) -> Result<()>
where
    K: Resource + Clone + std::fmt::Debug + Serialize + DeserializeOwned,
{
    api.create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("cannot create {}", object.name_any()))?;
    Ok(())
}
