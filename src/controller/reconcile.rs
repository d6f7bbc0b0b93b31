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

use super::copies::{CopyWriter, Outcome, describe};
use super::copy_index::{CopyIndex, CopyRecord};
use super::kinds::{KindError, ServedKind, display};
use super::status::{Blocked, PassResult, next_status, publish};
use super::watches::{CopyCacheKey, WatchView};
use super::{Context, Error};
use crate::api::{
    ConflictPolicy, FINALIZER, LEGACY_FINALIZER, Replika, ReplikaDeletedPolicy, SourceDeletedPolicy,
};
use crate::domain::access::author_checks;
use crate::domain::copy::{CopyTemplate, ExtraMetadata, Owner, Ownership};
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
            let targets = targets_of(&plan, ctx);
            let inheritance = Inheritance::of(replika, &plan, &targets, ctx);
            prune(
                &writer,
                &caches.copies,
                &owner,
                &inheritance,
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
    let extra = ExtraMetadata {
        labels: &plan.extra_labels,
        annotations: &plan.extra_annotations,
    };
    let template = match CopyTemplate::new(&source_json, &owner, &extra) {
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

    let targets = targets_of(&plan, ctx);
    let inheritance = Inheritance::of(replika, &plan, &targets, ctx);
    let existing = caches.copies.store.snapshot();

    let source_changed_at = caches.source.health.last_change();
    let outcomes: BTreeMap<String, Outcome> = stream::iter(targets.iter().cloned())
        .map(|namespace| {
            let found = existing.get(&namespace).cloned();
            let (writer, template, owner, inheritance) = (&writer, &template, &owner, &inheritance);
            async move {
                let outcome = sync_one(
                    writer,
                    found.as_deref(),
                    &namespace,
                    template,
                    owner,
                    plan.policy.conflict,
                    inheritance,
                )
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
    let pruned = prune(&writer, &caches.copies, &owner, &inheritance, &targets, ctx)
        .await
        .removed;

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
    };
    report(ctx, replika, result).await?;
    Ok(Action::requeue(plan.resync))
}

/// The namespaces `plan` targets now.
fn targets_of(plan: &ReplikaPlan, ctx: &Context) -> BTreeSet<String> {
    let namespaces = ctx.namespaces.all();
    plan.targets.select(
        namespaces.iter().map(|ns| NamespaceView {
            name: ns.metadata.name.as_deref().unwrap_or_default(),
            labels: ns.labels(),
            terminating: ns.metadata.deletion_timestamp.is_some(),
        }),
        &plan.source.namespace,
    )
}

/// Which copies made by others a Replika takes over:
/// - the earlier Go operator's: its labels name the Replika but not its
///   namespace, so a copy is inherited only in a namespace this Replika targets
///   and no other Replika of the same name, copying the same kind and name,
///   targets too; where one does, the copy is contested and left alone until
///   an admin settles it;
/// - a deleted predecessor's (same namespace and name, another UID), whose
///   cleanup could not remove them: adopted once that Replika is gone.
struct Inheritance<'a> {
    /// The namespaces this Replika targets: an uncontested inherited copy there is its own.
    targets: &'a BTreeSet<String>,
    /// The other Replikas (`namespace/name`) that could have made each contested copy.
    contested: BTreeMap<String, Vec<String>>,
    /// UIDs of the Replikas that exist (a predecessor among them is still cleaning up).
    live: BTreeSet<String>,
}

impl<'a> Inheritance<'a> {
    fn of(
        replika: &Replika,
        plan: &ReplikaPlan,
        targets: &'a BTreeSet<String>,
        ctx: &Context,
    ) -> Self {
        let mut contested: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let replikas = ctx.replikas.state();
        let live = replikas.iter().filter_map(|other| other.uid()).collect();
        let rivals = replikas
            .into_iter()
            .filter(|other| other.name_any() == replika.name_any() && other.uid() != replika.uid());
        for rival in rivals {
            let namespace = rival.namespace().unwrap_or_default();
            let Ok(theirs) = validate(&rival.spec, &namespace) else {
                continue;
            };
            if theirs.source.gvk != plan.source.gvk || theirs.source.name != plan.source.name {
                continue;
            }
            for target in targets_of(&theirs, ctx).intersection(targets) {
                contested
                    .entry(target.clone())
                    .or_default()
                    .push(format!("{namespace}/{}", rival.name_any()));
            }
        }
        Inheritance {
            targets,
            contested,
            live,
        }
    }

    /// Whether `copy` is this Replika's to keep in sync and to remove.
    fn claims(&self, copy: &CopyRecord, owner: &Owner) -> bool {
        match copy.marks.ownership(owner) {
            Ownership::Ours => true,
            Ownership::Inherited => {
                self.targets.contains(&copy.namespace)
                    && !self.contested.contains_key(&copy.namespace)
            }
            Ownership::Predecessor(uid) => !self.live.contains(&uid),
            Ownership::OtherReplika(_) | Ownership::Unowned => false,
        }
    }
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
            name: plan.source.name.clone(),
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

/// Brings one target namespace in line with the template.
async fn sync_one(
    writer: &CopyWriter<'_>,
    existing: Option<&CopyRecord>,
    namespace: &str,
    template: &CopyTemplate,
    owner: &Owner,
    conflict: ConflictPolicy,
    inheritance: &Inheritance<'_>,
) -> Outcome {
    let Some(existing) = existing else {
        return writer.create(namespace, template).await;
    };
    if existing.deleting {
        return Outcome::Failed(
            "the copy is being deleted; it will be created again once it is gone".into(),
        );
    }
    match existing.marks.ownership(owner) {
        Ownership::Ours => writer.sync_owned(existing, template).await,
        Ownership::OtherReplika(other) => Outcome::Conflict(format!("the object is managed by Replika {other}")),
        Ownership::Predecessor(_) if inheritance.claims(existing, owner) => {
            writer.update(existing, template).await
        }
        Ownership::Predecessor(uid) => Outcome::Conflict(format!(
            "the object belongs to the previous Replika of this name (UID {uid}), which is still being deleted"
        )),
        Ownership::Inherited => match inheritance.contested.get(namespace) {
            // Adopted: from now on it carries this Replika's marks.
            None => writer.update(existing, template).await,
            Some(rivals) => Outcome::Conflict(format!(
                "the earlier Go operator made this object for a Replika named {}, and Replikas {} of that name copy the same source here: delete the object and the first of them to sync makes it again as its own",
                owner.name,
                rivals.join(", ")
            )),
        },
        Ownership::Unowned if conflict == ConflictPolicy::Adopt => writer.update(existing, template).await,
        Ownership::Unowned => Outcome::Conflict(
            "an object with this name exists and is not managed by Replika (policy.conflict: Refuse)".into(),
        ),
    }
}

/// How many copies a prune removed, and how many it could not.
#[derive(Clone, Copy, Debug, Default)]
struct Pruned {
    removed: usize,
    failed: usize,
}

/// Deletes our copies outside `targets`.
async fn prune(
    writer: &CopyWriter<'_>,
    copies: &WatchView<CopyIndex>,
    owner: &Owner,
    inheritance: &Inheritance<'_>,
    targets: &BTreeSet<String>,
    ctx: &Context,
) -> Pruned {
    let stale: Vec<Arc<CopyRecord>> = copies
        .store
        .all()
        .into_iter()
        .filter(|copy| {
            inheritance.claims(copy, owner) && !copy.deleting && !targets.contains(&copy.namespace)
        })
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
            let targets = targets_of(plan, ctx);
            let inheritance = Inheritance::of(replika, plan, &targets, ctx);
            let pruned = prune(
                &writer,
                &caches.copies,
                owner,
                &inheritance,
                &BTreeSet::new(),
                ctx,
            )
            .await;
            if pruned.failed > 0 {
                return Err(Error::CleanupIncomplete(pruned.failed));
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
