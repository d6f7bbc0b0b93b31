//! Who may replicate what, asked of the API server: the operator's signing key
//! (kept in a Secret every replica shares), its own identity, and
//! SubjectAccessReviews for a Replika's author or for the operator itself.
//!
//! The webhook signs the author of every admitted Replika
//! ([`crate::domain::attestation`]); the reconciler verifies that signature and
//! repeats the author's access review before every sync, so a Replika that
//! bypassed admission, or whose author lost their rights, copies nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, Shared, join_all};
use futures::{FutureExt, StreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, UserInfo};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec, SubjectAccessReview,
    SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use ring::rand::{SecureRandom, SystemRandom};
use tracing::{info, warn};

use crate::api::{ANNOTATION_AUTHOR, ANNOTATION_AUTHOR_SIGNATURE, Replika};
use crate::domain::access::Access;
use crate::domain::attestation::{Attestation, AttestationProblem, Author, Signer};
use crate::domain::validation::ReplikaPlan;
use crate::locks;

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

    /// Which of `checks` `author` may not do. An error means "could not tell".
    pub async fn denied_to(
        &self,
        author: &Author,
        checks: &[Access],
    ) -> Result<Vec<Access>, String> {
        let (api, author) = (Api::all(self.client.clone()), author.clone());
        let subject = Subject::Author(author.clone());
        self.reviews
            .answer(subject, checks, move |checks| {
                let review = move |attributes| SubjectAccessReview {
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
                let allowed = |answer: &SubjectAccessReview| {
                    answer.status.as_ref().is_some_and(|s| s.allowed)
                };
                not_allowed(api, checks, review, allowed).boxed()
            })
            .await
    }

    /// Which of `checks` the operator itself may not do.
    pub async fn denied_to_operator(&self, checks: &[Access]) -> Result<Vec<Access>, String> {
        let api = Api::all(self.client.clone());
        self.reviews
            .answer(Subject::Operator, checks, move |checks| {
                let review = |attributes| SelfSubjectAccessReview {
                    spec: SelfSubjectAccessReviewSpec {
                        resource_attributes: Some(attributes),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                let allowed = |answer: &SelfSubjectAccessReview| {
                    answer.status.as_ref().is_some_and(|s| s.allowed)
                };
                not_allowed(api, checks, review, allowed).boxed()
            })
            .await
    }

    /// Keeps access review answers while RBAC stays unchanged: watches the
    /// metadata of Roles, ClusterRoles and their bindings, forgets every answer
    /// on any change, and answers nothing from memory while a watch is down.
    /// Runs until the process ends.
    pub async fn follow_rbac(self: Arc<Self>) {
        let client = self.client.clone();
        tokio::join!(
            self.follow::<Role>(client.clone(), 0),
            self.follow::<ClusterRole>(client.clone(), 1),
            self.follow::<RoleBinding>(client.clone(), 2),
            self.follow::<ClusterRoleBinding>(client, 3),
        );
    }

    async fn follow<K>(&self, client: Client, index: usize)
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + 'static,
    {
        let stream = watcher(
            Api::<PartialObjectMeta<K>>::all(client),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff();
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::InitDone) => self.reviews.rbac_followed(index, true),
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => self.reviews.forget(),
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(error) => {
                    self.reviews.rbac_followed(index, false);
                    warn!(%error, kind = K::kind(&()).as_ref(), "RBAC watch failed: access reviews are not remembered until it recovers");
                }
            }
        }
    }
}

/// Whose access a review asks about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Subject {
    Author(Author),
    Operator,
}

type Answer = Shared<BoxFuture<'static, Result<Vec<Access>, String>>>;
/// Who is asked about, and which checks.
type Question = (Subject, Vec<Access>);

/// How long an answer is kept even if no RBAC change is seen: authorizers
/// other than RBAC (webhook, ABAC) change without an object to watch.
const ANSWER_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// How long after an RBAC change answers are used but not remembered: the API
/// server that answers a review may not have seen the change yet (its RBAC
/// authorizer follows its own watch), and a stale "yes" must not be kept.
const RBAC_SETTLING: Duration = Duration::from_secs(5);

/// Access review answers, shared by concurrent askers; a full "yes" is kept
/// until RBAC changes.
struct ReviewCache {
    /// Each answer with when it was asked.
    answers: Mutex<HashMap<Question, (Instant, Answer)>>,
    /// Whether each RBAC watch has its full list and is running.
    followed: [AtomicBool; 4],
    /// When RBAC last changed (or a watch of it restarted), if ever.
    last_change: Mutex<Option<Instant>>,
    /// See [`RBAC_SETTLING`].
    settling: Duration,
}

impl Default for ReviewCache {
    fn default() -> Self {
        ReviewCache {
            answers: Mutex::default(),
            followed: Default::default(),
            last_change: Mutex::default(),
            settling: RBAC_SETTLING,
        }
    }
}

impl ReviewCache {
    /// The answer for `subject` and `checks`: remembered, in flight, or asked now by `ask`.
    async fn answer(
        &self,
        subject: Subject,
        checks: &[Access],
        ask: impl FnOnce(Vec<Access>) -> BoxFuture<'static, Result<Vec<Access>, String>>,
    ) -> Result<Vec<Access>, String> {
        let key = (subject, checks.to_vec());
        let (asked, answer) = {
            let mut answers = locks::lock(&self.answers);
            let fresh = |(asked, _): &(Instant, Answer)| asked.elapsed() < ANSWER_LIFETIME;
            match answers.get(&key).filter(|entry| fresh(entry)) {
                Some(entry) => entry.clone(),
                None => {
                    let entry = (Instant::now(), ask(checks.to_vec()).shared());
                    answers.insert(key.clone(), entry.clone());
                    entry
                }
            }
        };
        let result = answer.await;
        let allowed = result.as_ref().is_ok_and(Vec::is_empty);
        if !allowed || !self.remembering() || !self.settled_at(asked) {
            // Only a full "yes" is kept: a denial is asked again (a grant that
            // just landed counts at once), an error is no answer, and a "yes"
            // under RBAC that is not being followed, or asked while a change
            // may not have reached the authorizer, could be stale.
            locks::lock(&self.answers).remove(&key);
        }
        result
    }

    fn remembering(&self) -> bool {
        self.followed
            .iter()
            .all(|followed| followed.load(Ordering::Acquire))
    }

    fn rbac_followed(&self, index: usize, followed: bool) {
        self.followed[index].store(followed, Ordering::Release);
        self.forget();
    }

    /// Whether an answer asked at `asked` came late enough after the last
    /// RBAC change to reflect it.
    fn settled_at(&self, asked: Instant) -> bool {
        locks::lock(&self.last_change).is_none_or(|changed| asked >= changed + self.settling)
    }

    fn forget(&self) {
        *locks::lock(&self.last_change) = Some(Instant::now());
        locks::lock(&self.answers).clear();
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
    checks: Vec<Access>,
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
    for (access, answer) in checks.into_iter().zip(answers) {
        if !allowed(&answer.map_err(|error| error.to_string())?) {
            denied.push(access);
        }
    }
    Ok(denied)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn check(verb: &'static str) -> Access {
        Access {
            verb,
            group: String::new(),
            resource: "secrets".into(),
            namespace: Some("team-a".into()),
            name: None,
        }
    }

    /// A cache whose RBAC watches are all running, and which keeps answers
    /// asked right after a change.
    fn followed() -> ReviewCache {
        let cache = ReviewCache {
            settling: Duration::ZERO,
            ..ReviewCache::default()
        };
        for index in 0..4 {
            cache.rbac_followed(index, true);
        }
        cache
    }

    /// Asks `cache` about `checks`, answering `denied` and counting the asks.
    async fn ask(cache: &ReviewCache, asks: &Arc<AtomicUsize>, denied: Vec<Access>) -> Vec<Access> {
        let asks = asks.clone();
        cache
            .answer(Subject::Operator, &[check("get")], move |_| {
                asks.fetch_add(1, Ordering::SeqCst);
                async move { Ok(denied) }.boxed()
            })
            .await
            .expect("an answer")
    }

    #[tokio::test]
    async fn a_yes_is_remembered_until_rbac_changes() {
        let (cache, asks) = (followed(), Arc::new(AtomicUsize::new(0)));
        let (first, second) = tokio::join!(ask(&cache, &asks, vec![]), ask(&cache, &asks, vec![]));
        assert_eq!((first, second), (vec![], vec![]));
        assert_eq!(ask(&cache, &asks, vec![]).await, vec![]);
        assert_eq!(
            asks.load(Ordering::SeqCst),
            1,
            "concurrent and later askers share one review"
        );
        cache.forget();
        ask(&cache, &asks, vec![]).await;
        assert_eq!(
            asks.load(Ordering::SeqCst),
            2,
            "an RBAC change forgets the answer"
        );
    }

    #[tokio::test]
    async fn a_yes_asked_while_an_rbac_change_settles_is_used_but_not_kept() {
        let (cache, asks) = (followed(), Arc::new(AtomicUsize::new(0)));
        let cache = ReviewCache {
            settling: Duration::from_secs(3600),
            ..cache
        };
        ask(&cache, &asks, vec![]).await;
        ask(&cache, &asks, vec![]).await;
        assert_eq!(
            asks.load(Ordering::SeqCst),
            2,
            "the authorizer may not have seen the change yet: asked again"
        );
    }

    #[tokio::test]
    async fn denials_and_answers_under_unfollowed_rbac_are_asked_again() {
        let (cache, asks) = (followed(), Arc::new(AtomicUsize::new(0)));
        ask(&cache, &asks, vec![check("get")]).await;
        ask(&cache, &asks, vec![check("get")]).await;
        assert_eq!(asks.load(Ordering::SeqCst), 2, "a denial is not kept");

        let (cache, asks) = (ReviewCache::default(), Arc::new(AtomicUsize::new(0)));
        ask(&cache, &asks, vec![]).await;
        ask(&cache, &asks, vec![]).await;
        assert_eq!(
            asks.load(Ordering::SeqCst),
            2,
            "nothing is kept while RBAC is not followed"
        );
    }
}
