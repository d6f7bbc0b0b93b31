//! Reads what `kubectl replika plan` and `status` show: the Replika's source,
//! the cluster's namespaces and Replikas, and every object named like its
//! copies, then asks the domain planner what a pass would do in each
//! namespace — the same decisions the engine takes. Writes nothing; a plan
//! may ask the API server for dry runs of the writes it predicts.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    ResourceExt,
};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope as KindScope, pinned_kind};
use kube::{Client, Resource};
use serde::Serialize;

use crate::api::{CopiesIdentity, Replika};
use crate::controller::kinds::cluster_scoped;
use crate::controller::outcome::{describe, is_immutable_rejection};
use crate::controller::previous_copies;
use crate::domain::copy::{CopyMarks, CopyTemplate, Owner};
use crate::domain::plan::{Action, Found, Observed, Planned, Scope, plan_namespaces};
use crate::domain::targets::NamespaceView;
use crate::domain::validation::validate;

/// The field manager named in the dry runs, as the engine's writes would be.
const MANAGER: &str = "replika";

/// A Replika and what a pass over it would do, namespace by namespace.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    /// `namespace/name` of the Replika.
    pub replika: String,
    /// `Kind namespace/name` of the source.
    pub source: String,
    /// `Kind name` of the copies.
    pub copies: String,
    pub namespaces: Vec<Planned>,
}

/// Whether to ask the API server to dry-run the writes a plan predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DryRun {
    Server,
    None,
}

/// What a pass over `replika` (as given: from a file, or as stored) would do.
/// `stored` is the Replika of that name in the cluster, if there is one: its
/// UID owns the copies, and its status names copies made under a previous name.
pub async fn inspect(
    client: &Client,
    replika: &Replika,
    stored: Option<&Replika>,
    dry_run: DryRun,
) -> anyhow::Result<Inspection> {
    let namespace = replika
        .namespace()
        .context("the Replika has no namespace")?;
    let plan = validate(&replika.spec, &namespace).map_err(|problems| {
        anyhow::anyhow!("the Replika is invalid:\n  - {}", problems.join("\n  - "))
    })?;
    let owner = Owner {
        namespace: namespace.clone(),
        name: replika.name_any(),
        // Not created yet: no object can be its copy.
        uid: stored.and_then(|s| s.uid()).unwrap_or_default(),
    };
    let resource = resolve(client, &plan.source.gvk).await?;
    let source =
        Api::<DynamicObject>::namespaced_with(client.clone(), &plan.source.namespace, &resource)
            .get_opt(&plan.source.name)
            .await
            .context("reading the source")?
            .with_context(|| {
                format!(
                    "the source {} {}/{} does not exist: nothing would be copied",
                    resource.kind, plan.source.namespace, plan.source.name
                )
            })?;
    let mut source = serde_json::to_value(&source)?;
    source["apiVersion"] = resource.api_version.clone().into();
    source["kind"] = resource.kind.clone().into();
    let template = CopyTemplate::new(&source, &owner, &plan.copy)?;

    let namespaces = Api::<Namespace>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
        .context("listing namespaces")?;
    let views: Vec<NamespaceView<'_>> = namespaces
        .items
        .iter()
        .map(|ns| NamespaceView::of(&ns.metadata))
        .collect();
    let others = other_replikas(client, replika).await?;
    let scope = Scope::of(replika, &plan, others.iter().chain([replika]), &views);

    let found = Api::<DynamicObject>::all_with(client.clone(), &resource)
        .list(&ListParams::default().fields(&format!("metadata.name={}", plan.copy.name)))
        .await
        .context("listing the objects named like the copies")?;
    let marks: Vec<(String, CopyMarks, bool, bool)> = found
        .items
        .iter()
        .map(|object| {
            let namespace = object.namespace().unwrap_or_default();
            let marks = CopyMarks::read(object.labels(), object.annotations());
            // Listed objects carry no type; the copy does.
            let holds = serde_json::to_value(object).is_ok_and(|mut body| {
                body["apiVersion"] = resource.api_version.clone().into();
                body["kind"] = resource.kind.clone().into();
                template.is_held_by(&body, &namespace)
            });
            let deleting = object.meta().deletion_timestamp.is_some();
            (namespace, marks, deleting, holds)
        })
        .collect();
    let observed: Vec<Observed<'_>> = marks
        .iter()
        .map(|(namespace, marks, deleting, holds)| Observed {
            found: Found {
                namespace,
                marks,
                deleting: *deleting,
            },
            holds_copy: *holds,
        })
        .collect();
    let mut planned = plan_namespaces(&observed, &owner, plan.policy.conflict, &scope);
    if dry_run == DryRun::Server {
        let writes = Writes {
            client,
            resource: &resource,
            template: &template,
            found: &found.items,
        };
        for one in &mut planned {
            let note = match writes.dry_run(one).await {
                Ok(note) => note,
                Err(refusal) => Some(format!("the API server refuses it: {refusal}")),
            };
            if let Some(note) = note {
                one.detail = if one.detail.is_empty() {
                    note
                } else {
                    format!("{}; {note}", one.detail)
                };
            }
        }
    }
    // Copies under a previous name are listed after the dry runs, which are
    // about the objects named like the copies now.
    let current = previous_copies::identity(&resource, &plan.copy.name);
    if let Some(previous) = stored.and_then(|stored| previous_copies::superseded(stored, &current))
    {
        planned.extend(copies_to_prune(client, &previous, &owner).await?);
        planned.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    }
    Ok(Inspection {
        replika: format!("{namespace}/{}", replika.name_any()),
        source: format!(
            "{} {}/{}",
            resource.kind, plan.source.namespace, plan.source.name
        ),
        copies: format!("{} {}", resource.kind, plan.copy.name),
        namespaces: planned,
    })
}

/// The kind of `gvk` as the cluster serves it; only namespaced kinds are copied.
async fn resolve(client: &Client, gvk: &GroupVersionKind) -> anyhow::Result<ApiResource> {
    let (resource, capabilities) = pinned_kind(client, gvk).await.with_context(|| {
        format!(
            "the cluster does not serve {}.{}/{}",
            gvk.kind, gvk.group, gvk.version
        )
    })?;
    if capabilities.scope != KindScope::Namespaced {
        bail!(cluster_scoped(&gvk.kind));
    }
    Ok(resource)
}

/// Every Replika of the cluster but `replika`, for the rules that involve
/// others (same-named Replikas contest the earlier Go operator's copies); only
/// the Replika's own namespace when the caller may not list them all.
async fn other_replikas(client: &Client, replika: &Replika) -> anyhow::Result<Vec<Replika>> {
    let all = Api::<Replika>::all(client.clone())
        .list(&ListParams::default())
        .await;
    let listed = match all {
        Ok(listed) => listed,
        Err(kube::Error::Api(status)) if status.is_forbidden() => {
            Api::<Replika>::namespaced(client.clone(), &replika.namespace().unwrap_or_default())
                .list(&ListParams::default())
                .await
                .context("listing Replikas")?
        }
        Err(error) => return Err(error).context("listing Replikas"),
    };
    let me = (replika.namespace(), replika.name_any());
    Ok(listed
        .items
        .into_iter()
        .filter(|other| (other.namespace(), other.name_any()) != me)
        .collect())
}

/// The copies `owner` made under a previous kind or name, which a pass removes.
async fn copies_to_prune(
    client: &Client,
    previous: &CopiesIdentity,
    owner: &Owner,
) -> anyhow::Result<Vec<Planned>> {
    let Ok((resource, _)) = pinned_kind(client, &previous.gvk()).await else {
        return Ok(Vec::new());
    };
    let copies = previous_copies::list(client, &resource, previous, owner)
        .await
        .context("listing the copies made under the previous name")?;
    Ok(copies
        .into_iter()
        .map(|copy| Planned {
            namespace: copy.namespace.to_string(),
            action: Action::Prune,
            detail: format!("made as {} {} before", previous.kind, previous.name),
        })
        .collect())
}

/// The writes of a plan, tried as server dry runs.
struct Writes<'a> {
    client: &'a Client,
    resource: &'a ApiResource,
    template: &'a CopyTemplate,
    found: &'a [DynamicObject],
}

impl Writes<'_> {
    /// Dry-runs the write `planned` predicts: the API server's refusal if any,
    /// or a note on how the engine goes about it.
    async fn dry_run(&self, planned: &Planned) -> Result<Option<String>, String> {
        let namespace = planned.namespace.as_str();
        let api =
            Api::<DynamicObject>::namespaced_with(self.client.clone(), namespace, self.resource);
        let existing = self
            .found
            .iter()
            .find(|object| object.namespace().as_deref() == Some(namespace));
        let result = match (planned.action, existing) {
            (Action::Create, _) => {
                let copy: DynamicObject =
                    serde_json::from_value(self.template.for_namespace(namespace))
                        .map_err(|error| error.to_string())?;
                let params = PostParams {
                    dry_run: true,
                    field_manager: Some(MANAGER.into()),
                };
                api.create(&params, &copy).await.map(drop)
            }
            (Action::Update | Action::Adopt, Some(existing)) => {
                let mut body = self.template.for_namespace(namespace);
                body["metadata"]["uid"] = existing.uid().unwrap_or_default().into();
                let params = PatchParams::apply(MANAGER).force().dry_run();
                match api
                    .patch(&existing.name_any(), &params, &Patch::Apply(&body))
                    .await
                {
                    // The engine replaces an immutable copy whose content changed.
                    Err(kube::Error::Api(status)) if is_immutable_rejection(&status) => {
                        return Ok(Some(
                            "the copy is immutable: it is replaced (deleted, then created)".into(),
                        ));
                    }
                    other => other.map(drop),
                }
            }
            (Action::Prune, Some(existing)) => {
                let params = DeleteParams {
                    dry_run: true,
                    ..Default::default()
                };
                api.delete(&existing.name_any(), &params).await.map(drop)
            }
            _ => Ok(()),
        };
        result.map(|()| None).map_err(|error| describe(&error))
    }
}

/// The stored Replika's per-namespace state, for `kubectl replika status`.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub replika: String,
    pub source: String,
    pub copies: String,
    /// The `Ready` condition: `True`/`False` and its reason.
    pub ready: String,
    /// Its message.
    pub message: String,
    pub namespaces: Vec<NamespaceState>,
}

/// One namespace of a status report.
#[derive(Clone, Debug, Serialize)]
pub struct NamespaceState {
    pub namespace: String,
    pub state: State,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Where one namespace stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Synced,
    Pending,
    Conflict,
    Failed,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Synced => "synced",
            State::Pending => "pending",
            State::Conflict => "conflict",
            State::Failed => "failed",
        })
    }
}

/// The truth of a stored Replika, namespace by namespace: what a pass would
/// do now, and the failures its last pass reported.
pub async fn status(client: &Client, stored: &Replika) -> anyhow::Result<StatusReport> {
    let inspection = inspect(client, stored, Some(stored), DryRun::None).await?;
    let status = stored.status.clone().unwrap_or_default();
    let failed: BTreeMap<&str, &str> = status
        .failures
        .iter()
        .filter(|failure| failure.reason == "SyncFailed")
        .map(|failure| (failure.namespace.as_str(), failure.message.as_str()))
        .collect();
    let ready = status
        .conditions
        .iter()
        .find(|condition| condition.type_ == "Ready");
    let namespaces = inspection
        .namespaces
        .into_iter()
        .map(|planned| {
            let (state, detail) = match (planned.action, failed.get(planned.namespace.as_str())) {
                (Action::Unchanged, _) => (State::Synced, String::new()),
                (Action::Conflict, _) => (State::Conflict, planned.detail),
                (_, Some(why)) => (State::Failed, why.to_string()),
                (Action::Create, None) => (State::Pending, "no copy yet".into()),
                (Action::Update, None) => (State::Pending, "the copy is out of date".into()),
                (Action::Adopt, None) => (
                    State::Pending,
                    "the object found there is to be taken over".into(),
                ),
                (Action::Prune, None) => {
                    (State::Pending, format!("to be removed: {}", planned.detail))
                }
                (Action::Wait, None) => (State::Pending, planned.detail),
            };
            NamespaceState {
                namespace: planned.namespace,
                state,
                detail,
            }
        })
        .collect();
    Ok(StatusReport {
        replika: inspection.replika,
        source: inspection.source,
        copies: inspection.copies,
        ready: ready.map_or_else(
            || "Unknown".into(),
            |c| format!("{} ({})", c.status, c.reason),
        ),
        message: ready.map(|c| c.message.clone()).unwrap_or_default(),
        namespaces,
    })
}

/// The plan of `replika` (from a file or as stored) against the cluster.
pub async fn plan(client: &Client, replika: &Replika) -> anyhow::Result<Inspection> {
    let namespace = replika.namespace().unwrap_or_default();
    let stored = Api::<Replika>::namespaced(client.clone(), &namespace)
        .get_opt(&replika.name_any())
        .await
        .context("reading the stored Replika")?;
    inspect(client, replika, stored.as_ref(), DryRun::Server).await
}
