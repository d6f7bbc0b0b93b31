//! One pass over one Replika: validate, resolve the kind, read the caches,
//! write what differs, prune what is no longer a target, report.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, stream};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use tracing::warn;

use super::caches::{CacheState, open_caches};
use super::cleanup::{cleanup, prune, take_over_legacy_finalizer};
use super::copies::SyncRules;
use super::due::WholePass;
use super::kinds::ServedKind;
use super::outcome::Outcome;
use super::pass::{RETRY_BLOCKED, json_patch, owner_of, report, scope_of};
use super::previous_copies;
use super::status::{Blocked, PassResult};
use super::{Context, Error};
use crate::api::{FINALIZER, LEGACY_FINALIZER, Replika, SourceDeletedPolicy};
use crate::domain::access::author_checks;
use crate::domain::copy::CopyTemplate;
use crate::domain::validation::{ReplikaPlan, validate};
use crate::locks::lock;
use crate::metrics::{PassLabels, PassScope};

/// Entry point for the controller: runs the pass under the cleanup finalizer.
pub async fn reconcile(mut replika: Arc<Replika>, ctx: Arc<Context>) -> Result<Action, Error> {
    let owner = owner_of(&replika)?;
    let api: Api<Replika> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    let deleting = replika.metadata.deletion_timestamp.is_some();
    if deleting && ctx.is_cleaned(&owner.uid) {
        // Cleaned up already; only the finalizer's removal may be left to do.
        remove_finalizer(&api, &replika).await?;
        return Ok(Action::await_change());
    }
    if replika.finalizers().iter().any(|f| f == LEGACY_FINALIZER) {
        return take_over_legacy_finalizer(&api, &replika, deleting, &ctx).await;
    }
    if !deleting && !replika.finalizers().iter().any(|f| f == FINALIZER) {
        // A spec stored past admission (before the webhooks existed) that does
        // not validate is reported once; it gets no finalizer, since it never
        // has copies to clean up, and no write that its webhook would refuse.
        let plan = match validate(&replika.spec, &owner.namespace) {
            Ok(plan) => plan,
            Err(problems) => {
                ctx.watches.forget(&ObjectRef::from_obj(&*replika));
                report(
                    &ctx,
                    &replika,
                    PassResult::Blocked(Blocked::Invalid(problems)),
                )
                .await?;
                return Ok(Action::await_change());
            }
        };
        // The finalizer is added here and the pass goes on with the object the
        // patch returned, rather than waiting for its watch event: a new
        // Replika's copies arrive one round trip sooner. Its watches start
        // listing meanwhile; the pass opens the same caches again and reports
        // what they show (so their state here is not looked at). Without the
        // finalizer no cleanup would ever close them, so a failed patch does.
        if !ctx.settings.leadership.is_valid() {
            return Ok(Action::requeue(RETRY_BLOCKED));
        }
        let (_, with_finalizer) = tokio::join!(
            open_caches(&replika, &plan, &ctx),
            add_finalizer(&api, &replika)
        );
        replika = match with_finalizer {
            Ok(with_finalizer) => Arc::new(with_finalizer),
            Err(error) => {
                ctx.watches.forget(&ObjectRef::from_obj(&*replika));
                return Err(error);
            }
        };
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

/// Adds [`FINALIZER`] to `replika`, only if its finalizers are still as
/// seen (the `test` operation), and returns the stored result.
async fn add_finalizer(api: &Api<Replika>, replika: &Replika) -> Result<Replika, Error> {
    let operations = match &replika.metadata.finalizers {
        None => serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ]),
        Some(finalizers) => serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ]),
    };
    Ok(json_patch(api, replika, operations).await?)
}

/// Removes [`FINALIZER`] from `replika` if it is still there; a Replika
/// already gone, or whose finalizers changed meanwhile, needs nothing more.
async fn remove_finalizer(api: &Api<Replika>, replika: &Replika) -> Result<(), Error> {
    let Some(index) = replika.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{index}");
    let operations = serde_json::json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path},
    ]);
    match json_patch(api, replika, operations).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() || status.is_invalid() => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Retries a failed pass with a short delay.
pub fn error_policy(replika: Arc<Replika>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(replika = %ObjectRef::from_obj(&*replika), kind = error.label(), %error, "pass failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

async fn replicate(replika: &Replika, ctx: &Context) -> Result<Action, Error> {
    let replika_ref = ObjectRef::from_obj(replika);
    let due = ctx.due.take(&replika_ref);
    // Reasons that arrive while this pass waits make the next one due.
    let slot = ctx.pass_slot().await;
    let owner = owner_of(replika)?;
    // Put back only by a pass that replicates: any other makes the next one whole.
    let last_whole = ctx.take_whole_pass(&owner.uid);
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
            let scope = scope_of(replika, &plan, ctx, None);
            prune(
                &writer,
                &caches.copies,
                &owner,
                &scope,
                &BTreeSet::new(),
                None,
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

    let source_version = source.resource_version();
    let narrow = WholePass::narrows(
        last_whole.as_ref(),
        &due,
        replika.metadata.generation,
        source_version.as_deref(),
        plan.resync,
    );
    let scope = scope_of(replika, &plan, ctx, narrow);

    let rules = SyncRules {
        owner: &owner,
        conflict: plan.policy.conflict,
        scope: &scope,
    };
    let source_changed_at = caches.source.health.last_change();
    let outcomes: BTreeMap<String, Outcome> = stream::iter(scope.targets.iter().cloned())
        .map(|namespace| {
            let found = caches.copies.store.get(&namespace);
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
    let mut pruned = prune(
        &writer,
        &caches.copies,
        &owner,
        &scope,
        &scope.targets,
        narrow,
        ctx,
    )
    .await
    .removed;
    let current = previous_copies::identity(&caches.kind.resource, &plan.copy.name);
    // A narrow pass follows a whole one that settled the copies' identity.
    let superseded = match narrow {
        Some(_) => None,
        None => previous_copies::superseded(replika, &current),
    };
    let copies = match superseded {
        None => current.clone(),
        Some(previous) => match previous_copies::remove(&previous, &owner, ctx).await {
            Ok(removed) => {
                pruned += removed;
                current.clone()
            }
            Err(error) => {
                // Still recorded as the copies' identity, so the next pass retries.
                warn!(replika = %replika_ref, %error, "could not remove the copies made under a previous name or kind");
                previous
            }
        },
    };

    // The copies are written: reporting needs no slot.
    drop(slot);

    // Writes refused for lack of leadership (however briefly) say nothing about
    // the copies: report nothing, and try again shortly.
    if outcomes.values().any(Outcome::is_refusal) {
        return Ok(Action::requeue(RETRY_BLOCKED));
    }
    let whole_pass = match (narrow, last_whole) {
        (Some(namespaces), Some(mut last)) => {
            last.record_narrow(namespaces, &scope.targets, &outcomes);
            last
        }
        _ => WholePass::new(
            replika.metadata.generation,
            source_version.clone(),
            &scope.targets,
            &outcomes,
        ),
    };
    let synced = whole_pass
        .desired()
        .saturating_sub(whole_pass.problems.len());
    ctx.record_synced(&owner.uid, Some(u32::try_from(synced).unwrap_or(u32::MAX)));
    let looked = if narrow.is_some() {
        PassScope::Narrow
    } else {
        PassScope::Whole
    };
    ctx.metrics
        .passes
        .get_or_create(&PassLabels { scope: looked })
        .inc();
    let settled = copies == current;
    let result = PassResult::Replicated {
        outcomes,
        desired: whole_pass.desired(),
        problems: whole_pass.problems.clone(),
        pruned,
        source_resource_version: source_version,
        copies,
    };
    report(ctx, replika, result).await?;
    let next_whole = whole_pass.resync_in(plan.resync);
    if settled {
        lock(&ctx.whole_passes).insert(owner.uid, whole_pass);
    }
    Ok(Action::requeue(next_whole))
}

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
