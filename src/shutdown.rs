//! The process's one shutdown signal: every long-running task holds a clone of
//! [`Shutdown`]; any of them may start the shutdown (SIGTERM, a webhook server
//! that fails) and all of them see it.

use std::sync::Arc;

use tokio::sync::watch;

/// A shutdown token: cheap to clone, started once, seen by every clone.
#[derive(Clone, Debug)]
pub struct Shutdown {
    started: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            started: Arc::new(watch::Sender::new(false)),
        }
    }
}

impl Shutdown {
    /// Starts the shutdown; starting it again changes nothing.
    pub fn start(&self) {
        self.started.send_replace(true);
    }

    /// Whether the shutdown has started.
    pub fn has_started(&self) -> bool {
        *self.started.borrow()
    }

    /// Resolves once the shutdown has started (at once if it has).
    pub fn started(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut started = self.started.subscribe();
        async move {
            let _ = started.wait_for(|started| *started).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_shutdown_started_by_any() {
        let shutdown = Shutdown::default();
        let waiting = tokio::spawn(shutdown.started());
        let other = shutdown.clone();
        assert!(!other.has_started());
        other.start();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting task sees the shutdown")
            .expect("the waiting task ends");
        assert!(shutdown.has_started());
        // Asked after the fact, it resolves at once.
        tokio::time::timeout(Duration::from_secs(5), shutdown.started())
            .await
            .expect("resolves at once");
    }
}
