//! One pass over one Replika: validate, resolve the kind, read the caches,
//! write what differs, prune what is no longer a target, report.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use tracing::{info, warn};

use super::copies::{CopyWriter, Outcome, SyncRules, describe};
use super::copy_index::{CopyIndex, CopyRecord};
use super::kinds::{KindError, ServedKind, display};
use super::previous_copies;
use super::status::{Blocked, PassResult, next_status, publish};
use super::watches::{CopyCacheKey, WatchView};
use super::{Context, Error};
use crate::api::{FINALIZER, LEGACY_FINALIZER, Replika, ReplikaDeletedPolicy, SourceDeletedPolicy};
use crate::domain::access::author_checks;
use crate::domain::copy::{CopyTemplate, Owner, Ownership};
use crate::domain::plan::{Scope, is_stale};
use crate::domain::targets::NamespaceView;
use crate::domain::validation::{ReplikaPlan, validate};

/// How soon a Replika blocked on something outside its spec is looked at again.
const RETRY_BLOCKED: Duration = Duration::from_secs(10);

/// Entry point for the controller: runs the pass under the cleanup finalizer.
pub async fn reconcile(replika: Arc<Replika>, ctx: Arc<Context>) -> Result<Action, Error> {
    let owner = owner_of(&replika)?;
    let api: Api<Replika> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    let deleting = replika.metadata.deletion_timestamp.is_some();
    if replika.finalizers().iter().any(|f| f == LEGACY_FINALIZER) {
        return take_over_legacy_finalizer(&api, &replika, deleting, &ctx).await;
    }
    if !deleting && !replika.finalizers().iter().any(|f| f == FINALIZER) {
        // A spec stored past admission (before the webhooks existed) that does
        // not validate is reported once; it gets no finalizer, since it never
        // has copies to clean up, and no write that its webhook would refuse.
        if let Err(problems) = validate(&replika.spec, &owner.namespace) {
            ctx.watches.forget(&ObjectRef::from_obj(&*replika));
            report(
                &ctx,
                &replika,
                PassResult::Blocked(Blocked::Invalid(problems)),
            )
            .await?;
            return Ok(Action::await_change());
        }
    }
    finalizer(&api, FINALIZER, replika, |event| async {
        match event {
            FinalizerEvent::Apply(replika) => replicate(&replika, &ctx).await,
            FinalizerEvent::Cleanup(replika) => cleanup(&replika, &ctx).await,
        }
    })
    .await
    .map_err(|error| Error::Finalizer(Box::new(error)))
}

/// The earlier Go operator's finalizer on a Replika it managed: a live one
/// gets ours in its place (one guarded patch); a deleted one is cleaned up as
/// ours would be, then released.
async fn take_over_legacy_finalizer(
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
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(operations))
        .map_err(|error| Error::Kube(kube::Error::SerdeError(error)))?;
    api.patch(
        &replika.name_any(),
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await?;
    info!(replika = %ObjectRef::from_obj(replika), deleting, "took over the earlier Go operator's finalizer");
    // The patch is a change of finalizers: it brings the next pass.
    Ok(Action::await_change())
}

/// Retries a failed pass with a short delay.
pub fn error_policy(replika: Arc<Replika>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(replika = %ObjectRef::from_obj(&*replika), kind = error.label(), %error, "pass failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// The Replika's identity; the API server always sets both, so a missing one
/// is a bug upstream, never something to replicate under an empty owner.
fn owner_of(replika: &Replika) -> Result<Owner, Error> {
    let missing = |field: &'static str| Error::Malformed(format!("the Replika has no {field}"));
    Ok(Owner {
        namespace: replika
            .namespace()
            .ok_or_else(|| missing("metadata.namespace"))?,
        name: replika.name_any(),
        uid: replika.uid().ok_or_else(|| missing("metadata.uid"))?,
    })
}

/// Whether the caches of a Replika can be used.
enum CacheState {
    Ready(Caches),
    Blocked(Blocked),
    Syncing,
}

/// The caches and kind a valid Replika works with.
struct Caches {
    kind: ServedKind,
    source: WatchView<Store<DynamicObject>>,
    copies: WatchView<CopyIndex>,
}

async fn replicate(replika: &Replika, ctx: &Context) -> Result<Action, Error> {
    let replika_ref = ObjectRef::from_obj(replika);
    let owner = owner_of(replika)?;
    let plan = match validate(&replika.spec, &owner.namespace) {
        Ok(plan) => plan,
        Err(problems) => {
            ctx.watches.forget(&replika_ref);
            report(
                ctx,
                replika,
                PassResult::Blocked(Blocked::Invalid(problems)),
            )
            .await?;
            return Ok(Action::await_change());
        }
    };
    let caches = match open_caches(replika, &plan, ctx).await? {
        CacheState::Ready(caches) => caches,
        CacheState::Blocked(blocked) => {
            report(ctx, replika, PassResult::Blocked(blocked)).await?;
            return Ok(Action::requeue(RETRY_BLOCKED.min(plan.resync)));
        }
        CacheState::Syncing => return Ok(Action::requeue(RETRY_BLOCKED)),
    };
    if let Some(blocked) = unauthorized(replika, &plan, &caches.kind, ctx).await {
        report(ctx, replika, PassResult::Blocked(blocked)).await?;
        // Rights granted later are picked up at the next resync.
        return Ok(Action::requeue(plan.resync));
    }
    let writer = ctx.copy_writer(&caches.kind.resource, &owner.uid);
    let source_key = ObjectRef::new_with(&plan.source.name, caches.kind.resource.clone())
        .within(&plan.source.namespace);
    let Some(source) = caches.source.store.get(&source_key) else {
        let remove = plan.policy.on_source_deleted == SourceDeletedPolicy::Delete;
        if remove {
            let scope = scope_of(replika, &plan, ctx);
            prune(
                &writer,
                &caches.copies,
                &owner,
                &scope,
                &BTreeSet::new(),
                ctx,
            )
            .await;
        }
        let blocked = Blocked::SourceNotFound {
            copies_removed: remove,
        };
        report(ctx, replika, PassResult::Blocked(blocked)).await?;
        return Ok(Action::requeue(plan.resync));
    };
    let mut source_json = serde_json::to_value(&*source)
        .map_err(|error| Error::Malformed(format!("the source cannot be read as JSON: {error}")))?;
    // Objects from a list carry no type, and server-side apply needs it.
    source_json["apiVersion"] = caches.kind.resource.api_version.clone().into();
    source_json["kind"] = caches.kind.resource.kind.clone().into();
    let template = match CopyTemplate::new(&source_json, &owner, &plan.copy) {
        Ok(template) => template,
        Err(why) => {
            report(
                ctx,
                replika,
                PassResult::Blocked(Blocked::SourceNotCopyable(why.to_string())),
            )
            .await?;
            return Ok(Action::await_change());
        }
    };

    let scope = scope_of(replika, &plan, ctx);
    let existing = caches.copies.store.snapshot();

    let rules = SyncRules {
        owner: &owner,
        conflict: plan.policy.conflict,
        scope: &scope,
    };
    let source_changed_at = caches.source.health.last_change();
    let outcomes: BTreeMap<String, Outcome> = stream::iter(scope.targets.iter().cloned())
        .map(|namespace| {
            let found = existing.get(&namespace).cloned();
            let (writer, template, rules) = (&writer, &template, &rules);
            async move {
                let outcome = writer
                    .sync(&namespace, found.as_deref(), template, rules)
                    .await;
                if let (Outcome::Created | Outcome::Updated | Outcome::Replaced, Some(changed)) =
                    (&outcome, source_changed_at)
                {
                    ctx.metrics
                        .propagation
                        .observe(changed.elapsed().as_secs_f64());
                }
                (namespace, outcome)
            }
        })
        .buffer_unordered(ctx.settings.max_parallel_writes)
        .collect()
        .await;
    writer
        .upgrade_created(ctx.settings.max_parallel_writes)
        .await;
    let mut pruned = prune(&writer, &caches.copies, &owner, &scope, &scope.targets, ctx)
        .await
        .removed;
    let current = previous_copies::identity(&caches.kind.resource, &plan.copy.name);
    let copies = match previous_copies::superseded(replika, &current) {
        None => current,
        Some(previous) => match previous_copies::remove(&previous, &owner, ctx).await {
            Ok(removed) => {
                pruned += removed;
                current
            }
            Err(error) => {
                // Still recorded as the copies' identity, so the next pass retries.
                warn!(replika = %replika_ref, %error, "could not remove the copies made under a previous name or kind");
                previous
            }
        },
    };

    // Writes refused for lack of leadership (however briefly) say nothing about
    // the copies: report nothing, and try again shortly.
    if outcomes.values().any(Outcome::is_refusal) {
        return Ok(Action::requeue(RETRY_BLOCKED));
    }
    let synced = outcomes.values().filter(|o| o.is_synced()).count();
    ctx.record_synced(&owner.uid, Some(u32::try_from(synced).unwrap_or(u32::MAX)));
    let result = PassResult::Replicated {
        outcomes,
        pruned,
        source_resource_version: source.resource_version(),
        copies,
    };
    report(ctx, replika, result).await?;
    Ok(Action::requeue(plan.resync))
}

/// The scope of `plan` in the cluster as the caches show it now.
fn scope_of(replika: &Replika, plan: &ReplikaPlan, ctx: &Context) -> Scope {
    let namespaces = ctx.namespaces.all();
    let views: Vec<NamespaceView<'_>> = namespaces
        .iter()
        .map(|ns| NamespaceView::of(&ns.metadata))
        .collect();
    let replikas = ctx.replikas.state();
    Scope::of(replika, plan, replikas.iter().map(|r| &**r), &views)
}

/// Resolves the kind and opens the watches, or says what blocks replication.
/// Fails closed: why this pass must not write, unless the Replika carries a
/// valid attestation of its author and that author may (still) read the source
/// and write the kind wherever copies go.
async fn unauthorized(
    replika: &Replika,
    plan: &ReplikaPlan,
    kind: &ServedKind,
    ctx: &Context,
) -> Option<Blocked> {
    let author = match ctx.authorizer.author_of(replika, plan) {
        Ok(author) => author,
        Err(problem) => {
            return Some(Blocked::AuthorUnverified(format!(
                "nothing is replicated because {problem}; an admin can vouch for it with `replika attest -n {} {}` (docs/upgrade.md), or its author can change its spec through Replika's webhooks",
                replika.namespace().unwrap_or_default(),
                replika.name_any()
            )));
        }
    };
    let checks = author_checks(plan, &kind.resource.group, &kind.resource.plural);
    match ctx.authorizer.denied_to(&author, &checks).await {
        Ok(denied) if denied.is_empty() => None,
        Ok(denied) => {
            let missing: Vec<String> = denied.iter().map(ToString::to_string).collect();
            Some(Blocked::AuthorNotAuthorized(format!(
                "nothing is replicated because its author {} may not {}",
                author.username,
                missing.join(", ")
            )))
        }
        Err(error) => Some(Blocked::AuthorNotAuthorized(format!(
            "nothing is replicated because the access of its author {} could not be checked: {error}",
            author.username
        ))),
    }
}

async fn open_caches(
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
        let problem = format!(
            "spec.source.kind: {} is cluster-scoped; only namespaced kinds can be replicated",
            display(&plan.source.gvk)
        );
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

/// How many copies a prune removed, and how many it could not.
#[derive(Clone, Copy, Debug, Default)]
struct Pruned {
    removed: usize,
    failed: usize,
}

/// Deletes our copies outside `keep`.
async fn prune(
    writer: &CopyWriter<'_>,
    copies: &WatchView<CopyIndex>,
    owner: &Owner,
    scope: &Scope,
    keep: &BTreeSet<String>,
    ctx: &Context,
) -> Pruned {
    let stale: Vec<Arc<CopyRecord>> = copies
        .store
        .all()
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

async fn report(ctx: &Context, replika: &Replika, result: PassResult) -> Result<(), Error> {
    let status = next_status(replika, &result, Timestamp::now());
    publish(ctx, replika, &result, status).await?;
    Ok(())
}

/// Runs when the Replika is deleted: removes or releases its copies, then forgets it.
/// Anything that keeps it from seeing its copies (a spec that does not
/// validate, a watch that fails, a missing grant) keeps the finalizer and is
/// retried, with the reason in status; only a kind that is not served, or is
/// cluster-scoped, can have no copies.
async fn cleanup(replika: &Replika, ctx: &Context) -> Result<Action, Error> {
    let replika_ref = ObjectRef::from_obj(replika);
    let owner = owner_of(replika)?;
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
            let scope = scope_of(replika, plan, ctx);
            let pruned = prune(
                &writer,
                &caches.copies,
                owner,
                &scope,
                &BTreeSet::new(),
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
