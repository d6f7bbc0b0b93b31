//! Access reviews: which of a set of permissions an author (SubjectAccessReview)
//! or the operator itself (SelfSubjectAccessReview) lacks, asked all at once,
//! and a cache that shares answers between concurrent askers and keeps a full
//! "yes" while RBAC is unchanged ([`super::rbac`] reports the changes).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared, join_all};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec, SubjectAccessReview,
    SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::Authorizer;
use crate::domain::access::Access;
use crate::domain::attestation::Author;
use crate::locks;

impl Authorizer {
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
pub(super) struct ReviewCache {
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

    pub(super) fn rbac_followed(&self, index: usize, followed: bool) {
        self.followed[index].store(followed, Ordering::Release);
        self.forget();
    }

    /// Whether an answer asked at `asked` came late enough after the last
    /// RBAC change to reflect it.
    fn settled_at(&self, asked: Instant) -> bool {
        locks::lock(&self.last_change).is_none_or(|changed| asked >= changed + self.settling)
    }

    pub(super) fn forget(&self) {
        *locks::lock(&self.last_change) = Some(Instant::now());
        locks::lock(&self.answers).clear();
    }
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
    use std::sync::Arc;
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
