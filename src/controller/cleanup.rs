//! Removing copies: those a pass no longer wants, and those a deleted
//! Replika leaves, behind its finalizer (or the earlier Go operator's).

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::{StreamExt, stream};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tracing::{info, warn};

use super::caches::{CacheState, Caches, open_caches};
use super::copies::CopyWriter;
use super::copy_index::{CopyIndex, CopyRecord};
use super::outcome::describe;
use super::pass::{RETRY_BLOCKED, json_patch, owner_of, report, scope_of};
use super::previous_copies;
use super::status::{Blocked, PassResult};
use super::watches::WatchView;
use super::{Context, Error};
use crate::api::{FINALIZER, LEGACY_FINALIZER, Replika, ReplikaDeletedPolicy};
use crate::domain::copy::{Owner, Ownership};
use crate::domain::plan::{Scope, is_stale};
use crate::domain::validation::{ReplikaPlan, validate};

/// How many copies a prune removed, and how many it could not.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Pruned {
    pub removed: usize,
    pub failed: usize,
}

/// Deletes our copies outside `keep`, among the namespaces `among` only
/// when given (a narrow pass).
pub(super) async fn prune(
    writer: &CopyWriter<'_>,
    copies: &WatchView<CopyIndex>,
    owner: &Owner,
    scope: &Scope,
    keep: &BTreeSet<String>,
    among: Option<&BTreeSet<String>>,
    ctx: &Context,
) -> Pruned {
    let candidates = match among {
        None => copies.store.all(),
        Some(namespaces) => namespaces
            .iter()
            .filter_map(|namespace| copies.store.get(namespace))
            .collect(),
    };
    let stale: Vec<Arc<CopyRecord>> = candidates
        .into_iter()
        .filter(|copy| is_stale(copy.found(), owner, scope, keep))
        .collect();
    stream::iter(stale)
        .map(|copy| async move {
            let removed = writer.delete(&copy).await;
            if let Err(error) = &removed {
                warn!(namespace = %copy.namespace, error = %describe(error), "could not remove a copy");
            }
            removed.is_ok()
        })
        .buffer_unordered(ctx.settings.max_parallel_writes)
        .fold(Pruned::default(), |mut total, removed| async move {
            if removed {
                total.removed += 1;
            } else {
                total.failed += 1;
            }
            total
        })
        .await
}

/// The earlier Go operator's finalizer on a Replika it managed: a live one
/// gets ours in its place (one guarded patch); a deleted one is cleaned up as
/// ours would be, then released.
pub(super) async fn take_over_legacy_finalizer(
    api: &Api<Replika>,
    replika: &Replika,
    deleting: bool,
    ctx: &Context,
) -> Result<Action, Error> {
    if !ctx.settings.leadership.is_valid() {
        return Ok(Action::requeue(RETRY_BLOCKED));
    }
    if deleting {
        cleanup(replika, ctx).await?;
    }
    let finalizers = replika.finalizers();
    let ours = finalizers.iter().any(|f| f == FINALIZER);
    let mut operations: Vec<serde_json::Value> = Vec::new();
    // From the end, so that each removal leaves the earlier indices valid.
    for (index, finalizer) in finalizers.iter().enumerate().rev() {
        if finalizer == LEGACY_FINALIZER {
            let path = format!("/metadata/finalizers/{index}");
            operations
                .push(serde_json::json!({"op": "test", "path": path, "value": LEGACY_FINALIZER}));
            operations.push(if deleting || ours {
                serde_json::json!({"op": "remove", "path": path})
            } else {
                serde_json::json!({"op": "replace", "path": path, "value": FINALIZER})
            });
        }
    }
    json_patch(api, replika, serde_json::Value::Array(operations)).await?;
    info!(replika = %ObjectRef::from_obj(replika), deleting, "took over the earlier Go operator's finalizer");
    // The patch is a change of finalizers: it brings the next pass.
    Ok(Action::await_change())
}

/// Runs when the Replika is deleted: removes or releases its copies, then forgets it.
/// Anything that keeps it from seeing its copies (a spec that does not
/// validate, a watch that fails, a missing grant) keeps the finalizer and is
/// retried, with the reason in status; only a kind that is not served, or is
/// cluster-scoped, can have no copies.
pub(super) async fn cleanup(replika: &Replika, ctx: &Context) -> Result<Action, Error> {
    let replika_ref = ObjectRef::from_obj(replika);
    let owner = owner_of(replika)?;
    let _slot = ctx.pass_slot().await;
    let blocked = match validate(&replika.spec, &owner.namespace) {
        Err(problems) => Some(Blocked::Invalid(problems)),
        Ok(plan) => match open_caches(replika, &plan, ctx).await? {
            CacheState::Ready(caches) => {
                remove_or_release(replika, &plan, &caches, &owner, ctx).await?;
                None
            }
            CacheState::Blocked(Blocked::KindNotServed(_) | Blocked::Invalid(_)) => {
                info!(replika = %replika_ref, "its kind is not served or cluster-scoped: no copies to clean up");
                None
            }
            CacheState::Blocked(blocked) => Some(blocked),
            CacheState::Syncing => return Err(Error::CacheNotSynced),
        },
    };
    if let Some(blocked) = blocked {
        report(ctx, replika, PassResult::Blocked(blocked.clone())).await?;
        return Err(Error::CleanupBlocked(blocked.to_string()));
    }
    ctx.watches.forget(&replika_ref);
    ctx.written.forget_owner(&owner.uid);
    ctx.record_synced(&owner.uid, None);
    ctx.take_whole_pass(&owner.uid);
    ctx.due.take(&replika_ref);
    ctx.record_cleaned(&owner.uid);
    Ok(Action::await_change())
}

/// Removes the copies of a deleted Replika, or releases them (`onReplikaDeleted`).
async fn remove_or_release(
    replika: &Replika,
    plan: &ReplikaPlan,
    caches: &Caches,
    owner: &Owner,
    ctx: &Context,
) -> Result<(), Error> {
    let writer = ctx.copy_writer(&caches.kind.resource, &owner.uid);
    match plan.policy.on_replika_deleted {
        ReplikaDeletedPolicy::Delete => {
            let scope = scope_of(replika, plan, ctx, None);
            let pruned = prune(
                &writer,
                &caches.copies,
                owner,
                &scope,
                &BTreeSet::new(),
                None,
                ctx,
            )
            .await;
            if pruned.failed > 0 {
                return Err(Error::CleanupIncomplete(pruned.failed));
            }
            let current = previous_copies::identity(&caches.kind.resource, &plan.copy.name);
            if let Some(previous) = previous_copies::superseded(replika, &current) {
                previous_copies::remove(&previous, owner, ctx).await?;
            }
            info!(replika = %ObjectRef::from_obj(replika), removed = pruned.removed, "removed the copies of a deleted Replika");
            Ok(())
        }
        ReplikaDeletedPolicy::Orphan => release_all(&writer, &caches.copies, owner).await,
    }
}

async fn release_all(
    writer: &CopyWriter<'_>,
    copies: &WatchView<CopyIndex>,
    owner: &Owner,
) -> Result<(), Error> {
    for copy in copies.store.all() {
        if copy.marks.ownership(owner) == Ownership::Ours {
            writer.release(&copy).await?;
        }
    }
    Ok(())
}
