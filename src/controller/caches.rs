//! The caches a valid Replika works with: its kind resolved, the watches of
//! its source and of the objects named like its copies opened and listed.

use kube::api::DynamicObject;
use kube::runtime::reflector::{ObjectRef, Store};

use super::copy_index::CopyIndex;
use super::kinds::{KindError, ServedKind, cluster_scoped_problem, display};
use super::status::Blocked;
use super::watches::{CopyCacheKey, WatchView};
use super::{Context, Error};
use crate::api::Replika;
use crate::domain::validation::ReplikaPlan;

/// Whether the caches of a Replika can be used.
pub(super) enum CacheState {
    Ready(Caches),
    Blocked(Blocked),
    Syncing,
}

/// The caches and kind a valid Replika works with.
pub(super) struct Caches {
    pub kind: ServedKind,
    pub source: WatchView<Store<DynamicObject>>,
    pub copies: WatchView<CopyIndex>,
}

/// Resolves the kind and opens the watches, or says what blocks replication.
pub(super) async fn open_caches(
    replika: &Replika,
    plan: &ReplikaPlan,
    ctx: &Context,
) -> Result<CacheState, Error> {
    let replika_ref = ObjectRef::from_obj(replika);
    let kind = match ctx.kinds.resolve(&plan.source.gvk).await {
        Ok(kind) => kind,
        Err(KindError::NotServed(message)) => {
            return Ok(CacheState::Blocked(Blocked::KindNotServed(message)));
        }
        Err(error) => return Err(error.into()),
    };
    if !kind.namespaced {
        let problem = cluster_scoped_problem(&plan.source.gvk);
        return Ok(CacheState::Blocked(Blocked::Invalid(vec![problem])));
    }
    let source = ctx
        .watches
        .source(&replika_ref, &plan.source, &kind.resource);
    let copies = ctx.watches.copies(
        &replika_ref,
        &CopyCacheKey {
            gvk: plan.source.gvk.clone(),
            name: plan.copy.name.clone(),
        },
        &kind.resource,
    );
    for health in [&source.health, &copies.health] {
        if let Some(failure) = health.failure() {
            let kind_name = display(&plan.source.gvk);
            return Ok(CacheState::Blocked(if failure.forbidden {
                Blocked::Forbidden(format!(
                    "the operator may not list and watch {kind_name}: grant it with an additive ClusterRole (see the README): {}",
                    failure.message
                ))
            } else {
                Blocked::WatchFailed(format!("watching {kind_name} failed: {}", failure.message))
            }));
        }
    }
    if !(source.health.is_synced() && copies.health.is_synced() && ctx.namespaces.is_synced()) {
        // Each watch fires a new pass once its first list has arrived.
        return Ok(CacheState::Syncing);
    }
    Ok(CacheState::Ready(Caches {
        kind,
        source,
        copies,
    }))
}
