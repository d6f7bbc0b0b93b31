//! What a pass did in one target namespace, and how a failed request reads:
//! the vocabulary shared by the writer, the status and the plugin.

/// What happened to one target namespace in a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    InSync,
    Created,
    Updated,
    /// An immutable copy whose content changed was deleted and created again.
    Replaced,
    Conflict(String),
    Failed(String),
    /// The write was refused because this replica no longer leads: says
    /// nothing about the copy.
    NotLeading,
}

impl Outcome {
    /// Whether the namespace holds an up-to-date copy after the pass.
    pub fn is_synced(&self) -> bool {
        matches!(
            self,
            Outcome::InSync | Outcome::Created | Outcome::Updated | Outcome::Replaced
        )
    }

    /// What a failed request means for the copy: a refusal for lack of
    /// leadership (made by our own client layer, see [`CopyWriter`]), or a failure.
    pub fn from_error(error: &kube::Error) -> Self {
        match error {
            kube::Error::Service(refusal) if refusal.is::<NotLeading>() => Outcome::NotLeading,
            other => Outcome::Failed(describe(other)),
        }
    }

    /// Whether the write was refused for lack of leadership, which says
    /// nothing about the copy.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Outcome::NotLeading)
    }
}

/// Whether the API server refused a write because it changes an immutable field.
pub fn is_immutable_rejection(status: &kube::core::Status) -> bool {
    status.is_invalid() && status.message.contains("immutable")
}

/// Why a write was refused: the leader Lease is no longer this process's.
#[derive(Debug, thiserror::Error)]
#[error("this replica no longer holds the leader Lease; the write is left to the new leader")]
pub struct NotLeading;

/// The API server's own message when there is one, else the client error.
pub fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_refused_for_lost_leadership_is_a_refusal_whatever_its_message() {
        let refused = kube::Error::Service(Box::new(NotLeading));
        assert!(Outcome::from_error(&refused).is_refusal());
        assert!(Outcome::NotLeading.is_refusal());
        let other = kube::Error::Service("connection reset".into());
        assert!(!Outcome::from_error(&other).is_refusal());
        // A failure that merely says the same words is still a failure.
        assert!(!Outcome::Failed(NotLeading.to_string()).is_refusal());
    }

    #[test]
    fn only_an_invalid_status_about_immutability_is_an_immutable_rejection() {
        let status = |reason: &str, message: &str| {
            serde_json::from_value::<kube::core::Status>(serde_json::json!({
                "status": "Failure", "reason": reason, "message": message, "code": 422,
            }))
            .expect("a Status")
        };
        assert!(is_immutable_rejection(&status(
            "Invalid",
            "ConfigMap \"x\" is invalid: data: Forbidden: field is immutable when `immutable` is set"
        )));
        assert!(!is_immutable_rejection(&status(
            "Invalid",
            "data: Invalid value"
        )));
        assert!(!is_immutable_rejection(&status("Conflict", "immutable")));
    }
}
