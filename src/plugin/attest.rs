//! `replika attest`: an admin vouches for existing Replikas in bulk, for
//! instance after taking over from the earlier Go operator, whose Replikas
//! carry no author attestation.
//!
//! Each Replika gets an update that asks for a re-attestation
//! ([`ANNOTATION_ATTEST`]); Replika's webhooks review the requesting user's
//! access like for a new spec, sign them as the author and drop the request.
//! Nothing is signed here: only the webhooks hold the key.

use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::api::{ANNOTATION_ATTEST, ANNOTATION_AUTHOR, Replika};
use crate::domain::attestation::Author;

/// Which Replikas to attest.
pub enum Selection {
    /// These names in one namespace, or all of its Replikas when empty.
    Namespace {
        namespace: String,
        names: Vec<String>,
    },
    /// Every Replika in the cluster.
    AllNamespaces,
}

/// What became of one Replika.
pub struct Attested {
    pub namespace: String,
    pub name: String,
    /// The signed author's user name, or why nobody was signed.
    pub result: Result<String, String>,
}

/// Asks the webhooks to sign the caller as the author of each selected Replika.
pub async fn attest(client: Client, selection: Selection) -> Result<Vec<Attested>, kube::Error> {
    let targets: Vec<(String, String)> = match selection {
        Selection::Namespace { namespace, names } if !names.is_empty() => names
            .into_iter()
            .map(|name| (namespace.clone(), name))
            .collect(),
        Selection::Namespace { namespace, .. } => {
            listed(Api::namespaced(client.clone(), &namespace)).await?
        }
        Selection::AllNamespaces => listed(Api::all(client.clone())).await?,
    };
    let mut attested = Vec::with_capacity(targets.len());
    for (namespace, name) in targets {
        let api = Api::<Replika>::namespaced(client.clone(), &namespace);
        let result = request_attestation(&api, &name).await;
        attested.push(Attested {
            namespace,
            name,
            result,
        });
    }
    Ok(attested)
}

async fn listed(api: Api<Replika>) -> Result<Vec<(String, String)>, kube::Error> {
    Ok(api
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|replika| (replika.namespace().unwrap_or_default(), replika.name_any()))
        .collect())
}

async fn request_attestation(api: &Api<Replika>, name: &str) -> Result<String, String> {
    let asked_at = k8s_openapi::jiff::Timestamp::now().to_string();
    let request = json!({"metadata": {"annotations": {ANNOTATION_ATTEST: asked_at}}});
    let stored = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&request))
        .await
        .map_err(|error| match error {
            kube::Error::Api(status) => status.message,
            other => other.to_string(),
        })?;
    let annotations = stored.annotations();
    match annotations.get(ANNOTATION_AUTHOR) {
        Some(author) if !annotations.contains_key(ANNOTATION_ATTEST) => {
            serde_json::from_str::<Author>(author)
                .map(|author| author.username)
                .map_err(|error| format!("the stored author cannot be read: {error}"))
        }
        _ => Err(format!(
            "not signed: Replika's webhooks did not answer the request (are they installed?); remove the annotation with `kubectl annotate replika {name} {ANNOTATION_ATTEST}-`"
        )),
    }
}
