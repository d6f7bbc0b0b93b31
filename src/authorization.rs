//! Who may replicate what, asked of the API server: the operator's signing key
//! (kept in a Secret every replica shares), its own identity, and
//! SubjectAccessReviews for a Replika's author or for the operator itself.
//!
//! The webhook signs the author of every admitted Replika
//! ([`crate::domain::attestation`]); the reconciler verifies that signature and
//! repeats the author's access review before every sync, so a Replika that
//! bypassed admission, or whose author lost their rights, copies nothing.

use std::collections::BTreeMap;

use futures::future::join_all;
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, UserInfo};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec, SubjectAccessReview,
    SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use ring::rand::{SecureRandom, SystemRandom};
use tracing::info;

use crate::api::{ANNOTATION_AUTHOR, ANNOTATION_AUTHOR_SIGNATURE, Replika};
use crate::domain::access::Access;
use crate::domain::attestation::{Attestation, AttestationProblem, Author, Signer};
use crate::domain::validation::ReplikaPlan;

/// The Secret data key holding the signing key.
const KEY_FIELD: &str = "signing-key";
/// Bytes of a new signing key.
const KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum AuthorizationError {
    #[error("the signing key Secret {secret}: {source}")]
    Key {
        secret: String,
        #[source]
        source: kube::Error,
    },
    #[error("the signing key Secret {0} has no usable {KEY_FIELD}")]
    KeyUnusable(String),
    #[error("cannot make a signing key: the system's random source failed")]
    Random,
    #[error("cannot learn the operator's own identity (SelfSubjectReview): {0}")]
    Identity(#[source] kube::Error),
}

/// The operator's signing key and identity, and the access reviews made with them.
pub struct Authorizer {
    client: Client,
    signer: Signer,
    /// The operator's own user name: it never becomes a Replika's author.
    operator: String,
}

impl Authorizer {
    /// Reads the signing key from the Secret `namespace/name`, creating it with a
    /// random key if it does not exist (every replica then reads the same one).
    pub async fn load(
        client: Client,
        namespace: &str,
        name: &str,
    ) -> Result<Authorizer, AuthorizationError> {
        let secret_name = format!("{namespace}/{name}");
        let key_error = |source| AuthorizationError::Key {
            secret: secret_name.clone(),
            source,
        };
        let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
        let secret = match secrets.get_opt(name).await.map_err(key_error)? {
            Some(secret) => secret,
            None => {
                let created = secrets
                    .create(&PostParams::default(), &new_key_secret(name)?)
                    .await;
                match created {
                    Ok(secret) => {
                        info!(secret = %secret_name, "created the signing key for Replika authors");
                        secret
                    }
                    // Another replica created it first: use theirs.
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        secrets.get(name).await.map_err(key_error)?
                    }
                    Err(error) => return Err(key_error(error)),
                }
            }
        };
        let key = secret
            .data
            .as_ref()
            .and_then(|data| data.get(KEY_FIELD))
            .filter(|key| key.0.len() >= KEY_BYTES)
            .ok_or_else(|| AuthorizationError::KeyUnusable(secret_name.clone()))?;
        let review = Api::<SelfSubjectReview>::all(client.clone())
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .map_err(AuthorizationError::Identity)?;
        let operator = review
            .status
            .and_then(|status| status.user_info)
            .and_then(|user| user.username)
            .unwrap_or_default();
        Ok(Authorizer {
            client,
            signer: Signer::new(&key.0),
            operator,
        })
    }

    /// Whether `user` is this operator (whose own writes never make it an author).
    pub fn is_operator(&self, user: &UserInfo) -> bool {
        user.username.as_deref() == Some(self.operator.as_str())
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The verified author of `replika`, whose validated spec is `plan`.
    pub fn author_of(
        &self,
        replika: &Replika,
        plan: &ReplikaPlan,
    ) -> Result<Author, AttestationProblem> {
        self.signer.verify(
            &replika.namespace().unwrap_or_default(),
            &replika.name_any(),
            plan,
            attestation(replika.annotations()).as_ref(),
        )
    }

    /// Which of `checks` `author` may not do. An error means "could not tell".
    pub async fn denied_to(
        &self,
        author: &Author,
        checks: &[Access],
    ) -> Result<Vec<Access>, String> {
        let review = |attributes| SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(author.username.clone()),
                groups: Some(author.groups.clone()),
                uid: (!author.uid.is_empty()).then(|| author.uid.clone()),
                extra: (!author.extra.is_empty()).then(|| author.extra.clone()),
                resource_attributes: Some(attributes),
                ..Default::default()
            },
            ..Default::default()
        };
        let allowed =
            |answer: &SubjectAccessReview| answer.status.as_ref().is_some_and(|s| s.allowed);
        not_allowed(Api::all(self.client.clone()), checks, review, allowed).await
    }

    /// Which of `checks` the operator itself may not do.
    pub async fn denied_to_operator(&self, checks: &[Access]) -> Result<Vec<Access>, String> {
        let review = |attributes| SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(attributes),
                ..Default::default()
            },
            ..Default::default()
        };
        let allowed =
            |answer: &SelfSubjectAccessReview| answer.status.as_ref().is_some_and(|s| s.allowed);
        not_allowed(Api::all(self.client.clone()), checks, review, allowed).await
    }
}

/// The author as the API server authenticated them.
pub fn author(user: &UserInfo) -> Author {
    Author {
        username: user.username.clone().unwrap_or_default(),
        uid: user.uid.clone().unwrap_or_default(),
        groups: user.groups.clone().unwrap_or_default(),
        extra: user.extra.clone().unwrap_or_default(),
    }
}

/// The attestation recorded in a Replika's annotations, if both parts are there.
pub fn attestation(annotations: &BTreeMap<String, String>) -> Option<Attestation> {
    Some(Attestation {
        author: annotations.get(ANNOTATION_AUTHOR)?.clone(),
        signature: annotations.get(ANNOTATION_AUTHOR_SIGNATURE)?.clone(),
    })
}

fn new_key_secret(name: &str) -> Result<Secret, AuthorizationError> {
    let mut key = vec![0; KEY_BYTES];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| AuthorizationError::Random)?;
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "replika".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(KEY_FIELD.to_string(), ByteString(key))])),
        ..Secret::default()
    })
}

fn attributes(access: &Access) -> ResourceAttributes {
    ResourceAttributes {
        verb: Some(access.verb.to_string()),
        group: Some(access.group.clone()),
        resource: Some(access.resource.clone()),
        namespace: access.namespace.clone(),
        name: access.name.clone(),
        ..Default::default()
    }
}

/// Creates one review per check, all at once, and keeps the checks that were not allowed.
/// Fails if any review could not be made: an unanswered question is not a yes.
async fn not_allowed<K>(
    api: Api<K>,
    checks: &[Access],
    review: impl Fn(ResourceAttributes) -> K,
    allowed: fn(&K) -> bool,
) -> Result<Vec<Access>, String>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let answers = join_all(checks.iter().map(|access| {
        let (api, request) = (api.clone(), review(attributes(access)));
        async move { api.create(&PostParams::default(), &request).await }
    }))
    .await;
    let mut denied = Vec::new();
    for (access, answer) in checks.iter().zip(answers) {
        if !allowed(&answer.map_err(|error| error.to_string())?) {
            denied.push(access.clone());
        }
    }
    Ok(denied)
}
