//! Turns the result of a pass into the Replika's status and Events.
//!
//! Status is written only when it changes, and Events only mark changes, so a
//! Replika whose copies are in sync costs no API requests at resync time.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::outcome::{NotLeading, Outcome};
use super::{Context, MANAGER};
use crate::api::{CopiesIdentity, Replika, ReplikaStatus, TargetCounts, TargetFailure};

/// The earlier Go operator's condition: the source was read and written to every target it could be.
pub const CONDITION_SOURCE_SYNCED: &str = "SourceSynced";
/// Every target namespace holds an up-to-date copy.
pub const CONDITION_READY: &str = "Ready";
/// How many failing namespaces status lists.
pub const MAX_LISTED_FAILURES: usize = 10;

/// Why a pass could not replicate at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// The spec is unusable; `reason` is a CamelCase condition reason.
    Invalid(Vec<String>),
    KindNotServed(String),
    Forbidden(String),
    WatchFailed(String),
    SourceNotFound {
        copies_removed: bool,
    },
    SourceNotCopyable(String),
    /// No valid author attestation: the Replika bypassed admission or was changed past it.
    AuthorUnverified(String),
    /// The author may not read the source or write the copies (any more).
    AuthorNotAuthorized(String),
}

impl Blocked {
    fn reason_and_message(&self) -> (&'static str, String) {
        match self {
            Blocked::Invalid(problems) => ("Invalid", problems.join("; ")),
            Blocked::KindNotServed(message) => ("KindNotServed", message.clone()),
            Blocked::Forbidden(message) => ("Forbidden", message.clone()),
            Blocked::WatchFailed(message) => ("WatchFailed", message.clone()),
            Blocked::SourceNotFound { copies_removed } => (
                "SourceNotFound",
                if *copies_removed {
                    "the source object does not exist; its copies were removed (onSourceDeleted: Delete)".into()
                } else {
                    "the source object does not exist; its last copies are kept (onSourceDeleted: Retain)".into()
                },
            ),
            Blocked::SourceNotCopyable(message) => ("SourceNotCopyable", message.clone()),
            Blocked::AuthorUnverified(message) => ("AuthorUnverified", message.clone()),
            Blocked::AuthorNotAuthorized(message) => ("AuthorNotAuthorized", message.clone()),
        }
    }
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (reason, message) = self.reason_and_message();
        write!(f, "{reason}: {message}")
    }
}

/// The result of one pass over one Replika.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassResult {
    Blocked(Blocked),
    Replicated {
        /// What the pass did in each namespace it looked at.
        outcomes: BTreeMap<String, Outcome>,
        /// How many namespaces are targets.
        desired: usize,
        /// Every target not in sync, with why (for a narrow pass, also those
        /// an earlier pass found and this one did not look at).
        problems: BTreeMap<String, Outcome>,
        pruned: usize,
        source_resource_version: Option<String>,
        /// What the copies are made as, for the next pass to see a rename.
        copies: CopiesIdentity,
    },
}

/// Computes the new status from the old one and the pass result.
pub fn next_status(replika: &Replika, result: &PassResult, now: Timestamp) -> ReplikaStatus {
    let previous = replika.status.clone().unwrap_or_default();
    let generation = replika.metadata.generation;
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let last_transition_time = previous
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time,
        }
    };
    match result {
        PassResult::Blocked(blocked) => {
            let (reason, message) = blocked.reason_and_message();
            ReplikaStatus {
                observed_generation: generation,
                conditions: vec![
                    condition(CONDITION_SOURCE_SYNCED, false, reason, message.clone()),
                    condition(CONDITION_READY, false, reason, message),
                ],
                targets: previous.targets.clone(),
                failures: Vec::new(),
                source_resource_version: previous.source_resource_version.clone(),
                last_sync_time: previous.last_sync_time.clone(),
                copies: previous.copies.clone(),
            }
        }
        PassResult::Replicated {
            outcomes,
            desired,
            problems,
            pruned,
            source_resource_version,
            copies,
        } => {
            let counts = count(*desired, problems);
            let failures: Vec<TargetFailure> = problems
                .iter()
                .filter_map(|(namespace, outcome)| match outcome {
                    Outcome::Conflict(message) => Some(("Conflict", namespace, message.clone())),
                    Outcome::Failed(message) => Some(("SyncFailed", namespace, message.clone())),
                    Outcome::NotLeading => Some(("SyncFailed", namespace, NotLeading.to_string())),
                    _ => None,
                })
                .take(MAX_LISTED_FAILURES)
                .map(|(reason, namespace, message)| TargetFailure {
                    namespace: namespace.clone(),
                    reason: reason.into(),
                    message,
                })
                .collect();
            let wrote = *pruned > 0
                || outcomes
                    .values()
                    .any(|o| matches!(o, Outcome::Created | Outcome::Updated | Outcome::Replaced));
            let summary = format!(
                "{} of {} target namespaces in sync, {} conflicts, {} failed",
                counts.synced, counts.desired, counts.conflicts, counts.failed
            );
            let (ready_reason, source_reason) = match (counts.failed, counts.conflicts) {
                (0, 0) => ("AllTargetsSynced", "SourceSynced"),
                (0, _) => ("Conflict", "SourceSynced"),
                _ => ("SyncFailed", "SyncFailed"),
            };
            ReplikaStatus {
                observed_generation: generation,
                conditions: vec![
                    condition(
                        CONDITION_SOURCE_SYNCED,
                        counts.failed == 0,
                        source_reason,
                        summary.clone(),
                    ),
                    condition(
                        CONDITION_READY,
                        counts.synced == counts.desired,
                        ready_reason,
                        summary,
                    ),
                ],
                targets: Some(counts),
                failures,
                source_resource_version: source_resource_version.clone(),
                last_sync_time: if wrote || previous.last_sync_time.is_none() {
                    Some(Time(now))
                } else {
                    previous.last_sync_time.clone()
                },
                copies: Some(copies.clone()),
            }
        }
    }
}

/// The counts of `desired` targets, all in sync but the `problems`.
fn count(desired: usize, problems: &BTreeMap<String, Outcome>) -> TargetCounts {
    let mut counts = TargetCounts {
        desired: u32::try_from(desired).unwrap_or(u32::MAX),
        ..Default::default()
    };
    for outcome in problems.values() {
        match outcome {
            Outcome::Conflict(_) => counts.conflicts += 1,
            Outcome::Failed(_) | Outcome::NotLeading => counts.failed += 1,
            _ => {}
        }
    }
    counts.synced = counts
        .desired
        .saturating_sub(counts.conflicts + counts.failed);
    counts
}

/// Writes `status` when it differs from the stored one, and publishes the Events of the pass.
pub async fn publish(
    ctx: &Context,
    replika: &Replika,
    result: &PassResult,
    status: ReplikaStatus,
) -> Result<(), kube::Error> {
    let previous = replika.status.clone().unwrap_or_default();
    // A replica that lost the Lease reports nothing: the new leader owns the status now.
    if status == previous || !ctx.settings.leadership.is_valid() {
        return Ok(());
    }
    let api: Api<Replika> =
        Api::namespaced(ctx.client.clone(), &replika.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": Replika::api_version(&()),
        "kind": Replika::kind(&()),
        "status": status,
    });
    api.patch_status(
        &replika.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    for event in events(result, &previous, &status) {
        if let Err(error) = ctx.recorder.publish(&event, &replika.object_ref(&())).await {
            warn!(%error, "could not publish an Event");
        }
    }
    Ok(())
}

/// Events that mark what changed in this pass.
fn events(result: &PassResult, previous: &ReplikaStatus, status: &ReplikaStatus) -> Vec<Event> {
    let event = |type_, reason: &str, note: String| Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Replicate".into(),
        secondary: None,
    };
    let mut events = Vec::new();
    match result {
        PassResult::Blocked(blocked) => {
            let (reason, message) = blocked.reason_and_message();
            events.push(event(EventType::Warning, reason, message));
        }
        PassResult::Replicated {
            outcomes, pruned, ..
        } => {
            let written =
                |wanted: fn(&Outcome) -> bool| outcomes.values().filter(|o| wanted(o)).count();
            let created = written(|o| *o == Outcome::Created);
            let updated = written(|o| *o == Outcome::Updated);
            let replaced = written(|o| *o == Outcome::Replaced);
            if created + updated + replaced > 0 {
                events.push(event(
                    EventType::Normal,
                    "Synced",
                    format!("created {created}, updated {updated}, replaced {replaced} copies"),
                ));
            }
            if *pruned > 0 {
                events.push(event(
                    EventType::Normal,
                    "Pruned",
                    format!("removed {pruned} copies that are no longer wanted (namespaces no longer targeted, or a previous name)"),
                ));
            }
            if status.failures != previous.failures {
                for (reason, wanted) in [("Conflict", "Conflict"), ("SyncFailed", "SyncFailed")] {
                    let listed: Vec<String> = status
                        .failures
                        .iter()
                        .filter(|f| f.reason == wanted)
                        .map(|f| format!("{}: {}", f.namespace, f.message))
                        .collect();
                    if !listed.is_empty() {
                        events.push(event(EventType::Warning, reason, listed.join("; ")));
                    }
                }
            }
        }
    }
    events
}
