//! Leader election: every replica of the operator serves the webhooks, but only
//! the holder of a Lease runs the replication engine. A replica that loses the
//! Lease stops its engine and waits to lead again; on shutdown the Lease is
//! released so a follower takes over at once instead of after it expires.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tracing::{info, warn};

/// Which Lease, held by whom, for how long.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// Unique per process: the pod name in a cluster.
    pub identity: String,
    /// How long a lost leader may keep the Lease before a follower takes it.
    pub duration: Duration,
}

/// Runs `engine` whenever this process leads, until `stop` turns true. `engine`
/// gets a future that resolves when it must stop (shutdown or leadership lost).
pub async fn run_while_leading<E, F>(
    client: Client,
    settings: LeaseSettings,
    mut stop: watch::Receiver<bool>,
    mut on_leadership: impl FnMut(bool),
    mut engine: E,
) -> Result<(), LeaseManagerError>
where
    E: FnMut(std::pin::Pin<Box<dyn Future<Output = ()> + Send + Sync>>) -> F,
    F: Future<Output = ()>,
{
    let seconds = settings.duration.as_secs().max(2);
    let manager = LeaseManagerBuilder::new(client, &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(seconds)
        .with_grace((seconds / 3).max(1))
        .build()
        .await?;
    let (mut leading, lease_task) = manager.watch().await;
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            became = leading.wait_for(|leading| *leading) => {
                if became.is_err() {
                    // The Lease task ended: without it no leadership is safe.
                    break;
                }
            }
        }
        info!(identity = %settings.identity, lease = %settings.name, "leading: starting the engine");
        on_leadership(true);
        let (mut until_lost, mut until_stop) = (leading.clone(), stop.clone());
        let must_stop = Box::pin(async move {
            tokio::select! {
                _ = until_lost.wait_for(|leading| !*leading) => {}
                _ = until_stop.wait_for(|stop| *stop) => {}
            }
        });
        engine(must_stop).await;
        on_leadership(false);
        if *stop.borrow() {
            break;
        }
        warn!(identity = %settings.identity, "lost the Lease: engine stopped until this process leads again");
    }
    // Dropping the receiver makes the Lease task release the Lease and end.
    drop(leading);
    match lease_task.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error),
        Err(join_error) => {
            warn!(%join_error, "the Lease task ended abnormally");
            Ok(())
        }
    }
}
