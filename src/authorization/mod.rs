//! Who may replicate what, asked of the API server: the operator's signing key
//! (kept in a Secret every replica shares), its own identity, and
//! SubjectAccessReviews for a Replika's author or for the operator itself.
//!
//! The webhook signs the author of every admitted Replika
//! ([`crate::domain::attestation`]); the reconciler verifies that signature and
//! repeats the author's access review before every sync, so a Replika that
//! bypassed admission, or whose author lost their rights, copies nothing.
//!
//! - [`reviews`]: access reviews, asked at once and remembered while RBAC is unchanged.
//! - [`rbac`]: the RBAC follower that tells the review cache when RBAC changes.

pub mod rbac;
pub mod reviews;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, UserInfo};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use ring::rand::{SecureRandom, SystemRandom};
use tracing::info;

use crate::api::{ANNOTATION_AUTHOR, ANNOTATION_AUTHOR_SIGNATURE, Replika};
use crate::domain::attestation::{Attestation, AttestationProblem, Author, Signer};
use crate::domain::validation::ReplikaPlan;
use reviews::ReviewCache;

/// How the API server names ServiceAccounts.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
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
    #[error(
        "the API server named no user for the operator's own identity (SelfSubjectReview); without it the operator could be mistaken for an author"
    )]
    Anonymous,
}

/// The operator's signing key and identity, and the access reviews made with them.
pub struct Authorizer {
    client: Client,
    signer: Signer,
    /// The operator's own identity: it never becomes a Replika's author, except
    /// in development mode ([`Authorizer::authorize_unsigned_as_self`]).
    operator: Author,
    /// Development mode: a Replika that carries no attestation at all is
    /// authorized as the operator's own identity.
    unsigned_as_self: bool,
    reviews: ReviewCache,
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
        // Fail closed: an empty name would match every request that names no user.
        let operator = review
            .status
            .and_then(|status| status.user_info)
            .map(|user| author(&user))
            .filter(|operator| !operator.username.is_empty())
            .ok_or(AuthorizationError::Anonymous)?;
        Ok(Authorizer {
            client,
            signer: Signer::new(&key.0),
            operator,
            unsigned_as_self: false,
            reviews: ReviewCache::default(),
        })
    }

    /// The identity the operator runs as.
    pub fn identity(&self) -> &Author {
        &self.operator
    }

    /// Development mode, for an operator run by a developer against a cluster
    /// that cannot call its webhooks: Replikas with no attestation at all are
    /// authorized as the operator's own identity (the developer's kubeconfig
    /// user), whose access is still reviewed before every sync. A forged or
    /// outdated attestation still blocks. Refused for a ServiceAccount, so an
    /// installed operator can never run this way.
    pub fn authorize_unsigned_as_self(mut self) -> Result<Self, String> {
        if self.operator.username.starts_with(SERVICE_ACCOUNT_PREFIX) {
            return Err(format!(
                "unsigned Replikas cannot be authorized as {}: development mode is for a developer's own credentials, never for a ServiceAccount",
                self.operator.username
            ));
        }
        self.unsigned_as_self = true;
        Ok(self)
    }

    /// Whether `user` is this operator (whose own writes never make it an author).
    pub fn is_operator(&self, user: &UserInfo) -> bool {
        user.username.as_deref() == Some(self.operator.username.as_str())
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
        match self.signer.verify_stored(
            &replika.namespace().unwrap_or_default(),
            &replika.name_any(),
            replika.metadata.generate_name.as_deref(),
            plan,
            attestation(replika.annotations()).as_ref(),
        ) {
            Err(AttestationProblem::Missing) if self.unsigned_as_self => Ok(self.operator.clone()),
            verified => verified,
        }
    }

    /// Keeps access review answers while RBAC stays unchanged: watches the
    /// metadata of Roles, ClusterRoles and their bindings, forgets every answer
    /// on any change, and answers nothing from memory while a watch is down.
    /// Runs until the process ends.
    pub async fn follow_rbac(self: Arc<Self>) {
        self.reviews.follow_rbac(self.client.clone()).await;
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
