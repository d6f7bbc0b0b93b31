//! Errors that make a reconcile pass retry.

use kube::runtime::finalizer;

/// A failure of a whole pass (per-namespace failures are reported in status instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Kind(#[from] super::kinds::KindError),
    #[error("the caches for this Replika have not synced yet")]
    CacheNotSynced,
    #[error("{0} copies could not be removed yet")]
    CleanupIncomplete(usize),
    #[error("the copies of the deleted Replika cannot be cleaned up yet: {0}")]
    CleanupBlocked(String),
    #[error("an object from the API server lacks what it always has: {0}")]
    Malformed(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// A short, bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Kind(_) => "discovery",
            Error::CacheNotSynced => "cache_not_synced",
            Error::CleanupIncomplete(_) => "cleanup_incomplete",
            Error::CleanupBlocked(_) => "cleanup_blocked",
            Error::Finalizer(_) => "finalizer",
            Error::Malformed(_) => "malformed",
        }
    }
}
