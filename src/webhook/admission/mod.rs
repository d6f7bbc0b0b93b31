//! What the admission webhooks decide, independent of HTTP: the request entry
//! points and what they share.
//!
//! Validation runs every rule and denies with all the problems it found;
//! checks that need the cluster (discovery, authorization, other Replikas) go
//! through [`ClusterView`], so the decisions are unit-tested with fixtures.
//! Mutation only adds fields that are absent, as an RFC 6902 patch; lists the
//! user wrote are never rewritten, so GitOps tools see no drift.
//!
//! - [`validate`]: the validating webhook's decision.
//! - [`mutate`]: the mutating webhook's patch (defaults and the author).
//! - [`author`]: who becomes a Replika's author, and the access they must hold.
//! - [`overlap`]: warnings for other Replikas that write the same objects.

mod author;
#[cfg(test)]
mod fixtures;
mod mutate;
mod overlap;
mod validate;

pub use mutate::mutate_request;
pub use validate::validate_request;

use k8s_openapi::api::authentication::v1::UserInfo;
use kube::core::DynamicObject;

use crate::api::Replika;
use crate::controller::kinds::{KindError, ServedKind};
use crate::domain::access::Access;
use crate::domain::attestation::Signer;

/// What validation needs to know about the cluster.
pub trait ClusterView {
    /// How the API server serves a kind.
    fn kind(
        &self,
        gvk: &kube::core::GroupVersionKind,
    ) -> impl Future<Output = Result<ServedKind, KindError>> + Send;
    /// Which of `checks` the user may not do (SubjectAccessReview). An error means "could not tell".
    fn denied_to_user(
        &self,
        user: &UserInfo,
        checks: &[Access],
    ) -> impl Future<Output = Result<Vec<Access>, String>> + Send;
    /// Which of `checks` the operator itself may not do.
    fn denied_to_operator(
        &self,
        checks: &[Access],
    ) -> impl Future<Output = Result<Vec<Access>, String>> + Send;
    /// Every Replika the cluster has, as last seen.
    fn replikas(&self) -> Vec<Replika>;
    /// The key authors are signed with.
    fn signer(&self) -> &Signer;
    /// Whether `user` is the operator itself (never recorded as an author).
    fn is_operator(&self, user: &UserInfo) -> bool;
}

/// The verbs the operator needs on a replicated kind, matching `deploy/` RBAC.
pub const OPERATOR_VERBS: [&str; 6] = ["get", "list", "watch", "create", "patch", "delete"];

/// The Replika a request carries, or why it carries none.
pub(super) fn parse_replika(object: Option<&DynamicObject>) -> Result<Replika, String> {
    let object = object.ok_or("the request carries no object")?;
    let value = serde_json::to_value(object)
        .map_err(|e| format!("the object cannot be read as JSON: {e}"))?;
    serde_json::from_value(value).map_err(|e| format!("the object is not a valid Replika: {e}"))
}
