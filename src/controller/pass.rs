//! What every pass over a Replika starts from and ends with: its identity,
//! its scope in the cluster as the caches show it, its report, and when a
//! blocked one is looked at again. Shared by the replication pass and cleanup.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};

use super::status::{PassResult, next_status, publish};
use super::{Context, Error};
use crate::api::Replika;
use crate::domain::copy::Owner;
use crate::domain::plan::Scope;
use crate::domain::targets::NamespaceView;
use crate::domain::validation::ReplikaPlan;

/// How soon a Replika blocked on something outside its spec is looked at again.
pub(super) const RETRY_BLOCKED: Duration = Duration::from_secs(10);

/// The Replika's identity; the API server always sets both, so a missing one
/// is a bug upstream, never something to replicate under an empty owner.
pub(super) fn owner_of(replika: &Replika) -> Result<Owner, Error> {
    let missing = |field: &'static str| Error::Malformed(format!("the Replika has no {field}"));
    Ok(Owner {
        namespace: replika
            .namespace()
            .ok_or_else(|| missing("metadata.namespace"))?,
        name: replika.name_any(),
        uid: replika.uid().ok_or_else(|| missing("metadata.uid"))?,
    })
}

/// The scope of `plan` in the cluster as the caches show it now, over every
/// namespace or only those `among` some (a narrow pass).
pub(super) fn scope_of(
    replika: &Replika,
    plan: &ReplikaPlan,
    ctx: &Context,
    among: Option<&BTreeSet<String>>,
) -> Scope {
    let namespaces = match among {
        None => ctx.namespaces.all(),
        Some(names) => names
            .iter()
            .filter_map(|name| ctx.namespaces.get(name))
            .collect(),
    };
    let views: Vec<NamespaceView<'_>> = namespaces
        .iter()
        .map(|ns| NamespaceView::of(&ns.metadata))
        .collect();
    let replikas = ctx.replikas.state();
    Scope::of(replika, plan, replikas.iter().map(|r| &**r), &views)
}

/// Writes the status and Events of a pass.
pub(super) async fn report(
    ctx: &Context,
    replika: &Replika,
    result: PassResult,
) -> Result<(), Error> {
    let status = next_status(replika, &result, Timestamp::now());
    publish(ctx, replika, &result, status).await?;
    Ok(())
}

/// Applies a JSON patch of `operations` (guarded by their `test`s) to
/// `replika`, e.g. to its finalizers; the stored result.
pub(super) async fn json_patch(
    api: &Api<Replika>,
    replika: &Replika,
    operations: serde_json::Value,
) -> Result<Replika, kube::Error> {
    let patch: json_patch::Patch =
        serde_json::from_value(operations).map_err(kube::Error::SerdeError)?;
    api.patch(
        &replika.name_any(),
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await
}
