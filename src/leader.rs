//! Leader election through a `coordination.k8s.io` Lease: every replica of the
//! operator serves the webhooks, but only the Lease holder runs the engine.
//!
//! Leadership is judged by this process's monotonic clock, never by a cached
//! belief: the holder may write only until its *renew deadline* (two thirds of
//! the lease) after the start of its last successful renewal. A leader that was
//! paused, partitioned or starved past it stops writing before any follower can
//! take the Lease, which needs the holder's record unchanged for a whole lease
//! duration of the follower's own clock. A released Lease (no holder) is taken
//! at the next poll, so a SIGTERM hands over at once.
//!
//! Every write to the Lease carries the `resourceVersion` it was read at, so two
//! candidates can never both win.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::locks::lock;
use crate::shutdown::Shutdown;

/// Which Lease, held by whom, for how long.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// Unique per process: the pod name in a cluster.
    pub identity: String,
    /// How long a holder that stopped renewing keeps the Lease.
    pub duration: Duration,
}

impl LeaseSettings {
    /// How long after a renewal's start the holder may still act.
    fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// How often the holder renews: four times per renew deadline, so a slow
    /// API server (a renewal under load can take a second) or one failed
    /// attempt does not let the deadline lapse while the leader is healthy.
    fn renew_every(&self) -> Duration {
        self.duration / 6
    }

    /// How often a follower looks at the Lease.
    fn poll_every(&self) -> Duration {
        (self.duration / 4).clamp(Duration::from_millis(200), Duration::from_secs(1))
    }
}

/// Whether this process may write as the leader now. Cloned into every writer;
/// [`Leadership::always`] when no election runs.
#[derive(Clone, Debug)]
pub struct Leadership(Option<Arc<Mutex<Option<Instant>>>>);

impl Leadership {
    /// Leadership without an election: always valid.
    pub fn always() -> Self {
        Leadership(None)
    }

    fn elected() -> Self {
        Leadership(Some(Arc::default()))
    }

    /// True while the renew deadline of the last renewal has not passed.
    pub fn is_valid(&self) -> bool {
        match &self.0 {
            None => true,
            Some(valid_until) => lock(valid_until).is_some_and(|until| Instant::now() < until),
        }
    }

    fn set_valid_until(&self, until: Option<Instant>) {
        if let Some(valid_until) = &self.0 {
            *lock(valid_until) = until;
        }
    }
}

impl Default for Leadership {
    fn default() -> Self {
        Leadership::always()
    }
}

/// Runs `engine` whenever this process leads, until `shutdown` starts. `engine`
/// gets the [`Leadership`] its writes must check, and a future that resolves
/// when it must stop (shutdown, or leadership lost). On shutdown the Lease is
/// released. `on_leadership` hears every change.
pub async fn run_while_leading<E, F>(
    client: Client,
    settings: LeaseSettings,
    shutdown: &Shutdown,
    mut on_leadership: impl FnMut(bool),
    mut engine: E,
) where
    E: FnMut(Leadership, std::pin::Pin<Box<dyn Future<Output = ()> + Send + Sync>>) -> F,
    F: Future<Output = ()>,
{
    let lease = LeaseClient {
        api: Api::namespaced(client, &settings.namespace),
        settings: settings.clone(),
    };
    let leadership = Leadership::elected();
    let (leading_tx, leading_rx) = watch::channel(false);
    // The Lease is kept (and renewed) until the engine has finished its
    // in-flight work, then released.
    let (release_tx, release_rx) = watch::channel(false);
    let keeper = tokio::spawn(keep_lease(
        lease,
        leadership.clone(),
        leading_tx,
        release_rx,
    ));
    let mut leading = leading_rx;
    loop {
        tokio::select! {
            () = shutdown.started() => break,
            became = leading.wait_for(|leading| *leading) => if became.is_err() { break },
        }
        info!(identity = %settings.identity, lease = %settings.name, "leading: starting the engine");
        on_leadership(true);
        let (mut until_lost, until_shutdown) = (leading.clone(), shutdown.started());
        let must_stop = Box::pin(async move {
            tokio::select! {
                _ = until_lost.wait_for(|leading| !*leading) => {}
                () = until_shutdown => {}
            }
        });
        engine(leadership.clone(), must_stop).await;
        on_leadership(false);
        if shutdown.has_started() {
            break;
        }
        warn!(identity = %settings.identity, "lost the Lease: engine stopped until this process leads again");
    }
    let _ = release_tx.send(true);
    let _ = keeper.await;
}

/// Acquires, renews and finally releases the Lease, publishing whether this
/// process leads. Ends, releasing the Lease, when `release` turns true.
async fn keep_lease(
    lease: LeaseClient,
    leadership: Leadership,
    leading: watch::Sender<bool>,
    mut release: watch::Receiver<bool>,
) {
    let settings = &lease.settings;
    let mut observed: Option<(Option<String>, Option<String>, Instant)> = None;
    let mut last_renewal: Option<Instant> = None;
    loop {
        let attempt = Instant::now();
        match lease.try_hold(&mut observed).await {
            Ok(true) => {
                last_renewal = Some(attempt);
                leadership.set_valid_until(Some(attempt + settings.renew_deadline()));
            }
            Ok(false) => {
                last_renewal = None;
                leadership.set_valid_until(None);
            }
            Err(error) => {
                warn!(%error, lease = %settings.name, "could not read or write the Lease")
            }
        }
        let valid = leadership.is_valid();
        leading.send_if_modified(|leading| std::mem::replace(leading, valid) != valid);
        let next = match last_renewal {
            Some(renewed) if valid => {
                (renewed + settings.renew_every()).saturating_duration_since(Instant::now())
            }
            _ => settings.poll_every(),
        };
        // Wake at the renew deadline too, so a failing holder steps down on time.
        let deadline = last_renewal
            .map(|renewed| {
                (renewed + settings.renew_deadline()).saturating_duration_since(Instant::now())
            })
            .unwrap_or(next);
        tokio::select! {
            _ = tokio::time::sleep(next.min(deadline).max(Duration::from_millis(50))) => {}
            _ = release.wait_for(|release| *release) => break,
        }
    }
    if leadership.is_valid() || *leading.borrow() {
        leadership.set_valid_until(None);
        leading.send_replace(false);
        match lease.release().await {
            Ok(()) => info!(lease = %settings.name, "released the Lease"),
            Err(error) => {
                warn!(%error, "could not release the Lease; a follower takes it when it expires")
            }
        }
    }
}

/// How long a holder that stopped renewing keeps the Lease: the duration its
/// record states, which the holder itself chose, rather than this process's
/// own setting — so that shortening `--lease-duration` in a rolling update
/// never lets a new replica take the Lease from an old one that still writes.
fn held_for(record_seconds: Option<i32>, own: Duration) -> Duration {
    match record_seconds {
        Some(seconds) if seconds > 0 => Duration::from_secs(u64::from(seconds.unsigned_abs())),
        _ => own,
    }
}

#[derive(Clone)]
struct LeaseClient {
    api: Api<Lease>,
    settings: LeaseSettings,
}

impl LeaseClient {
    /// One round: reads the Lease and renews or takes it when this process may.
    /// `observed` is the holder record last seen and when it was first seen.
    /// True when this process holds the Lease as of now.
    async fn try_hold(
        &self,
        observed: &mut Option<(Option<String>, Option<String>, Instant)>,
    ) -> Result<bool, kube::Error> {
        let me = &self.settings.identity;
        let Some(current) = self.api.get_opt(&self.settings.name).await? else {
            return self.create().await;
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec
            .holder_identity
            .clone()
            .filter(|holder| !holder.is_empty());
        let renewed = spec.renew_time.as_ref().map(|time| time.0.to_string());
        let first_seen = match observed {
            Some((seen_holder, seen_renewed, since))
                if *seen_holder == holder && *seen_renewed == renewed =>
            {
                *since
            }
            _ => Instant::now(),
        };
        *observed = Some((holder.clone(), renewed, first_seen));
        let mine = holder.as_deref() == Some(me.as_str());
        let free = holder.is_none()
            || first_seen.elapsed()
                >= held_for(spec.lease_duration_seconds, self.settings.duration);
        if !mine && !free {
            return Ok(false);
        }
        let now = MicroTime(Timestamp::now());
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let patch = json!({
            "metadata": {"resourceVersion": current.resource_version()},
            "spec": {
                "holderIdentity": me,
                "leaseDurationSeconds": self.duration_seconds(),
                "renewTime": now,
                "acquireTime": if mine { spec.acquire_time.unwrap_or(now) } else { now },
                "leaseTransitions": transitions,
            },
        });
        match self
            .api
            .patch(
                &self.settings.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(true),
            // Someone else wrote it since we read it: they hold it, or will.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    async fn create(&self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.settings.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.settings.identity.clone()),
                lease_duration_seconds: Some(self.duration_seconds()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Gives the Lease up if this process still holds it.
    async fn release(&self) -> Result<(), kube::Error> {
        let Some(current) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(());
        };
        let holder = current
            .spec
            .as_ref()
            .and_then(|spec| spec.holder_identity.as_deref());
        if holder != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        let patch = json!({
            "metadata": {"resourceVersion": current.resource_version()},
            "spec": {"holderIdentity": null, "renewTime": MicroTime(Timestamp::now())},
        });
        self.api
            .patch(
                &self.settings.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map(|_| ())
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.settings.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_held_for_the_duration_its_record_states() {
        let own = Duration::from_secs(5);
        assert_eq!(
            held_for(Some(15), own),
            Duration::from_secs(15),
            "a longer recorded duration is honoured"
        );
        assert_eq!(
            held_for(Some(3), own),
            Duration::from_secs(3),
            "the holder's own promise"
        );
        assert_eq!(held_for(None, own), own, "no record: our own setting");
        assert_eq!(
            held_for(Some(0), own),
            own,
            "a nonsensical record: our own setting"
        );
    }
}
