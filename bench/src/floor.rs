//! The floor: a bare client that writes the same objects as the operator, the
//! way the operator writes copies, so that each propagation figure has a
//! floor to be compared with on the same API server.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

use crate::workload::{self, run_parallel};

/// Field manager of the floor client's writes.
const FLOOR_MANAGER: &str = "replika-bench-floor";

/// How the floor client writes its objects: as the operator writes copies.
#[derive(Clone, Copy, Debug)]
pub enum FloorWrite {
    /// A POST, as for a new copy.
    Create,
    /// A forced server-side apply, as for a changed copy.
    Apply,
}

/// Writes the floor object `name` into every namespace, `parallelism` at a
/// time, one request each; returns how long until every write was answered.
pub async fn write_floor(
    client: &Client,
    name: &str,
    namespaces: &[String],
    write: FloorWrite,
    revision: &str,
    parallelism: usize,
) -> Result<Duration> {
    let started = Instant::now();
    stream::iter(namespaces)
        .map(|namespace| {
            let api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
            let object = workload::floor_object(name, namespace, revision);
            async move {
                match write {
                    FloorWrite::Create => {
                        let params = PostParams {
                            field_manager: Some(FLOOR_MANAGER.into()),
                            ..PostParams::default()
                        };
                        api.create(&params, &object).await.map(drop)
                    }
                    FloorWrite::Apply => {
                        let params = PatchParams::apply(FLOOR_MANAGER).force();
                        api.patch(name, &params, &Patch::Apply(&object))
                            .await
                            .map(drop)
                    }
                }
            }
        })
        .buffer_unordered(parallelism.max(1))
        .try_collect::<()>()
        .await
        .context("the floor client's write failed")?;
    Ok(started.elapsed())
}

/// Deletes the floor object `name` of every namespace, `parallelism` at a time.
pub async fn delete_floor(
    client: &Client,
    name: &str,
    namespaces: Vec<String>,
    parallelism: usize,
) -> Result<()> {
    run_parallel(
        "floor objects deleted",
        namespaces,
        parallelism,
        |namespace| async move {
            Api::<ConfigMap>::namespaced(client.clone(), &namespace)
                .delete(name, &DeleteParams::default())
                .await
                .with_context(|| format!("cannot delete {namespace}/{name}"))?;
            Ok(())
        },
    )
    .await
}
