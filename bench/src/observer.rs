//! Watches every ConfigMap and Secret in the cluster and timestamps, as each
//! event arrives, when an object of the benchmark's first appears and when it
//! first holds each revision of its content.
//!
//! The operator's copies and the floor client's objects are timed by these same
//! watches, so both are measured with the same clock and the same delays. No
//! label or field selector is used: nothing is assumed about how an operator
//! marks its copies. Objects outside the benchmark's names (the unrelated
//! Secrets, `kube-root-ca.crt`) only count as activity for [`Observer::settle`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::model::{Kind, NAMESPACE_PREFIX, ObjectKey, REVISION_KEY};
use crate::progress::Progress;

/// How long the first list of each kind may take.
const FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a wait updates its progress line.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// What a wait waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expectation {
    /// The object exists.
    Present,
    /// The object holds this value under [`REVISION_KEY`].
    Revision(String),
}

impl std::fmt::Display for Expectation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expectation::Present => write!(f, "present"),
            Expectation::Revision(revision) => write!(f, "at revision {revision}"),
        }
    }
}

/// When one object was first seen, and first seen at each revision.
struct Arrival {
    first_seen: Instant,
    revisions: HashMap<String, Instant>,
}

impl Arrival {
    fn when(&self, expectation: &Expectation) -> Option<Instant> {
        match expectation {
            Expectation::Present => Some(self.first_seen),
            Expectation::Revision(revision) => self.revisions.get(revision).copied(),
        }
    }
}

/// The wait in progress: objects still pending, and when the others arrived.
struct Waiter {
    expectation: Expectation,
    pending: HashSet<ObjectKey>,
    arrived: HashMap<ObjectKey, Instant>,
    done: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct State {
    arrivals: HashMap<ObjectKey, Arrival>,
    waiter: Option<Waiter>,
    last_event: Option<Instant>,
}

impl State {
    /// Records one event about `key`; checking only the waiter's entry for that
    /// key keeps each event O(1), whatever the number of objects waited for.
    fn record(&mut self, key: ObjectKey, revision: Option<String>, now: Instant) {
        self.last_event = Some(now);
        let arrival = self.arrivals.entry(key.clone()).or_insert_with(|| Arrival {
            first_seen: now,
            revisions: HashMap::new(),
        });
        if let Some(revision) = revision {
            arrival.revisions.entry(revision).or_insert(now);
        }
        let Some(waiter) = &mut self.waiter else {
            return;
        };
        if !waiter.pending.contains(&key) {
            return;
        }
        if let Some(at) = arrival.when(&waiter.expectation) {
            waiter.pending.remove(&key);
            waiter.arrived.insert(key, at);
            if waiter.pending.is_empty()
                && let Some(done) = waiter.done.take()
            {
                let _ = done.send(());
            }
        }
    }
}

/// The running watches and what they have seen.
pub struct Observer {
    state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Observer {
    /// Starts watching, and returns once the first lists have arrived, so that
    /// every later change is seen as it happens.
    pub async fn start(client: Client) -> Result<Observer> {
        let state = Arc::new(Mutex::new(State::default()));
        let mut observer = Observer {
            state: state.clone(),
            tasks: Vec::new(),
        };
        let (listed, first_list) = oneshot::channel();
        observer.tasks.push(tokio::spawn(watch(
            Api::<ConfigMap>::all(client.clone()),
            Kind::ConfigMap,
            |configmap: &ConfigMap| configmap.data.as_ref()?.get(REVISION_KEY).cloned(),
            state.clone(),
            listed,
        )));
        wait_listed(first_list, Kind::ConfigMap).await?;
        let (listed, first_list) = oneshot::channel();
        observer.tasks.push(tokio::spawn(watch(
            Api::<Secret>::all(client),
            Kind::Secret,
            |secret: &Secret| {
                let bytes = &secret.data.as_ref()?.get(REVISION_KEY)?.0;
                String::from_utf8(bytes.clone()).ok()
            },
            state,
            listed,
        )));
        wait_listed(first_list, Kind::Secret).await?;
        Ok(observer)
    }

    /// Waits until every object of `keys` meets `expectation`, and returns
    /// when each did. Fails after `timeout`, naming a few objects still
    /// missing, or as soon as `alive` (checked a few times a second) fails.
    pub async fn wait(
        &self,
        keys: impl IntoIterator<Item = ObjectKey>,
        expectation: Expectation,
        timeout: Duration,
        mut progress: Option<&mut Progress>,
        alive: impl Fn() -> Result<()>,
    ) -> Result<HashMap<ObjectKey, Instant>> {
        let (done, mut finished) = oneshot::channel();
        let total = {
            let mut state = self.lock();
            ensure!(state.waiter.is_none(), "only one wait at a time");
            let waiter = new_waiter(&state.arrivals, keys, expectation, done);
            let total = waiter.pending.len() + waiter.arrived.len();
            if waiter.pending.is_empty() {
                return Ok(waiter.arrived);
            }
            state.waiter = Some(waiter);
            total
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let tick = (tokio::time::Instant::now() + PROGRESS_EVERY).min(deadline);
            tokio::select! {
                _ = &mut finished => break,
                () = tokio::time::sleep_until(tick) => {
                    if let Some(progress) = progress.as_deref_mut() {
                        progress.set(total - self.pending());
                    }
                    if let Err(error) = alive() {
                        self.lock().waiter = None;
                        return Err(error);
                    }
                    if tick >= deadline {
                        break;
                    }
                }
            }
        }
        let waiter = self.lock().waiter.take().context("the wait disappeared")?;
        if let Some(progress) = progress {
            progress.set(waiter.arrived.len());
        }
        if !waiter.pending.is_empty() {
            bail!(describe_timeout(&waiter, total, timeout));
        }
        Ok(waiter.arrived)
    }

    /// Waits until no watched object has changed for `quiet`, for at most
    /// `timeout`; returns whether the cluster went quiet.
    pub async fn settle(&self, quiet: Duration, timeout: Duration) -> bool {
        let started = Instant::now();
        loop {
            let since = self
                .lock()
                .last_event
                .map_or(quiet, |at| at.elapsed().min(quiet));
            if since >= quiet {
                return true;
            }
            if started.elapsed() >= timeout {
                return false;
            }
            tokio::time::sleep(quiet - since).await;
        }
    }

    fn pending(&self) -> usize {
        self.lock()
            .waiter
            .as_ref()
            .map_or(0, |waiter| waiter.pending.len())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn new_waiter(
    arrivals: &HashMap<ObjectKey, Arrival>,
    keys: impl IntoIterator<Item = ObjectKey>,
    expectation: Expectation,
    done: oneshot::Sender<()>,
) -> Waiter {
    let mut waiter = Waiter {
        expectation,
        pending: HashSet::new(),
        arrived: HashMap::new(),
        done: Some(done),
    };
    for key in keys {
        match arrivals
            .get(&key)
            .and_then(|arrival| arrival.when(&waiter.expectation))
        {
            Some(at) => {
                waiter.arrived.insert(key, at);
            }
            None => {
                waiter.pending.insert(key);
            }
        }
    }
    waiter
}

fn describe_timeout(waiter: &Waiter, total: usize, timeout: Duration) -> String {
    let mut missing: Vec<&ObjectKey> = waiter.pending.iter().collect();
    missing.sort();
    let examples: Vec<String> = missing
        .iter()
        .take(5)
        .map(|key| format!("{:?} {}/{}", key.kind, key.namespace, key.name))
        .collect();
    format!(
        "timed out after {timeout:?}: {} of {total} objects not {} (e.g. {})",
        waiter.pending.len(),
        waiter.expectation,
        examples.join(", ")
    )
}

async fn wait_listed(first_list: oneshot::Receiver<()>, kind: Kind) -> Result<()> {
    tokio::time::timeout(FIRST_LIST_TIMEOUT, first_list)
        .await
        .with_context(|| format!("timed out listing {kind:?}s"))?
        .with_context(|| format!("the {kind:?} watch ended"))
}

/// Feeds every event of `api`'s watch into `state`; `revision` reads an
/// object's revision. Tells `listed` once the first list is in.
async fn watch<K>(
    api: Api<K>,
    kind: Kind,
    revision: fn(&K) -> Option<String>,
    state: Arc<Mutex<State>>,
    listed: oneshot::Sender<()>,
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut listed = Some(listed);
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let now = Instant::now();
        let state = || {
            state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        match event {
            Ok(Event::Apply(object) | Event::InitApply(object)) => {
                let name = object.name_any();
                if name.starts_with(NAMESPACE_PREFIX) {
                    let key = ObjectKey::new(kind, &object.namespace().unwrap_or_default(), &name);
                    state().record(key, revision(&object), now);
                } else {
                    state().last_event = Some(now);
                }
            }
            Ok(Event::Delete(_)) => state().last_event = Some(now),
            Ok(Event::InitDone) => {
                if let Some(listed) = listed.take() {
                    let _ = listed.send(());
                }
            }
            Ok(Event::Init) => {}
            Err(error) => eprintln!("bench: the {kind:?} watch failed; retrying: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_is_told_once_everything_arrived() {
        let mut state = State::default();
        let start = Instant::now();
        let a = ObjectKey::new(Kind::ConfigMap, "ns-a", "copy");
        let b = ObjectKey::new(Kind::Secret, "ns-b", "copy");
        state.record(a.clone(), Some("1".into()), start);
        let (done, mut finished) = oneshot::channel();
        let waiter = new_waiter(
            &state.arrivals,
            [a.clone(), b.clone()],
            Expectation::Revision("2".into()),
            done,
        );
        assert_eq!(waiter.pending.len(), 2);
        state.waiter = Some(waiter);

        let later = start + Duration::from_millis(5);
        state.record(a.clone(), Some("2".into()), later);
        assert!(finished.try_recv().is_err());
        state.record(b.clone(), Some("2".into()), later);
        assert!(finished.try_recv().is_ok());
        let waiter = state.waiter.take().expect("a waiter");
        assert_eq!(waiter.arrived[&a], later);
    }

    #[test]
    fn objects_already_there_count_at_once() {
        let mut state = State::default();
        let now = Instant::now();
        let key = ObjectKey::new(Kind::ConfigMap, "ns", "copy");
        state.record(key.clone(), None, now);
        let (done, _finished) = oneshot::channel();
        let waiter = new_waiter(&state.arrivals, [key.clone()], Expectation::Present, done);
        assert!(waiter.pending.is_empty());
        assert_eq!(waiter.arrived[&key], now);
    }
}
