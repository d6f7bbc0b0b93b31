//! Caches fed by watches, and the passes their changes make due ([`super::due`]).
//!
//! Memory stays proportional to what Replikas reference: namespaces are cached
//! by metadata; each Replika's source is watched alone (one object, full body);
//! and for each copied `(kind, name)` one watch, selected by name, covers every
//! same-named object in the cluster — our copies and the objects we must not
//! touch. Its objects arrive whole (the API server encodes each event once for
//! every such watcher) but only their metadata is parsed, kept as compact
//! records ([`super::copy_index`]), so 100 000 unrelated Secrets cost nothing
//! and each copy little.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ApiResource, DynamicObject};
use kube::core::{GroupVersionKind, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::copy_index::{CopyIndex, CopyIndexWriter, CopyMeta};
use super::due::DuePasses;
use super::written::{Wake, WrittenVersions};
use crate::api::Replika;
use crate::domain::validation::SourceRef;
use crate::locks::lock;

/// Every namespace, by metadata (labels and deletion state are all the target rule needs).
#[derive(Clone)]
pub struct NamespaceCache {
    store: Store<PartialObjectMeta<Namespace>>,
    synced: Arc<AtomicBool>,
}

impl NamespaceCache {
    /// An empty cache and the writer that fills it.
    pub fn new() -> (Self, Writer<PartialObjectMeta<Namespace>>) {
        let (store, writer) = reflector::store();
        let cache = NamespaceCache {
            store,
            synced: Arc::default(),
        };
        (cache, writer)
    }

    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// Whether the first full list has arrived.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn all(&self) -> Vec<Arc<PartialObjectMeta<Namespace>>> {
        self.store.state()
    }

    /// The namespace `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<Arc<PartialObjectMeta<Namespace>>> {
        self.store.get(&ObjectRef::new(name))
    }
}

/// A watch failure worth telling the user about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchFailure {
    /// The operator's RBAC does not allow listing or watching the kind.
    pub forbidden: bool,
    pub message: String,
}

/// Whether a watch has listed once, and how it last failed.
#[derive(Default)]
pub struct WatchHealth {
    synced: AtomicBool,
    failure: Mutex<Option<WatchFailure>>,
    last_change: Mutex<Option<Instant>>,
}

impl WatchHealth {
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn failure(&self) -> Option<WatchFailure> {
        lock(&self.failure).clone()
    }

    /// When the watch last delivered a change (not counting its initial list).
    pub fn last_change(&self) -> Option<Instant> {
        *lock(&self.last_change)
    }

    /// Records the outcome of one poll; returns true when the failure state changed.
    fn record(&self, failure: Option<WatchFailure>) -> bool {
        let mut current = lock(&self.failure);
        let changed = *current != failure;
        *current = failure;
        changed
    }
}

/// A cache (`S`: a store or an index) and its health, as handed to a reconcile pass.
pub struct WatchView<S> {
    pub store: S,
    pub health: Arc<WatchHealth>,
}

/// Identifies the watch over all objects of one kind with one name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CopyCacheKey {
    pub gvk: GroupVersionKind,
    pub name: String,
}

struct RunningWatch<S> {
    store: S,
    health: Arc<WatchHealth>,
    subscribers: Arc<Mutex<HashSet<ObjectRef<Replika>>>>,
    task: JoinHandle<()>,
}

impl<S> Drop for RunningWatch<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<S: Clone> RunningWatch<S> {
    fn view(&self) -> WatchView<S> {
        WatchView {
            store: self.store.clone(),
            health: self.health.clone(),
        }
    }
}

/// The watch on one Replika's source, with the source it was opened for.
type SourceWatch = (SourceRef, RunningWatch<Store<DynamicObject>>);

/// The dynamic watches of all Replikas.
pub struct Watches {
    client: Client,
    due: Arc<DuePasses>,
    /// The copies' resource versions the engine wrote itself: their watch
    /// events are echoes of its own writes and trigger no pass.
    written: Arc<WrittenVersions>,
    sources: Mutex<HashMap<ObjectRef<Replika>, SourceWatch>>,
    copies: Mutex<HashMap<CopyCacheKey, RunningWatch<CopyIndex>>>,
}

impl Watches {
    pub fn new(client: Client, due: Arc<DuePasses>, written: Arc<WrittenVersions>) -> Self {
        Watches {
            client,
            due,
            written,
            sources: Mutex::default(),
            copies: Mutex::default(),
        }
    }

    /// The cache of `replika`'s source object, watching it from now on if not already.
    pub fn source(
        &self,
        replika: &ObjectRef<Replika>,
        source: &SourceRef,
        resource: &ApiResource,
    ) -> WatchView<Store<DynamicObject>> {
        let mut sources = lock(&self.sources);
        if let Some((watched, running)) = sources.get(replika)
            && watched == source
        {
            return running.view();
        }
        let api =
            Api::<DynamicObject>::namespaced_with(self.client.clone(), &source.namespace, resource);
        let config = watcher::Config::default()
            .fields(&format!("metadata.name={}", source.name))
            .any_semantic();
        let mut writer = Writer::new(resource.clone());
        let running = spawn_watch(
            api,
            config,
            writer.as_reader(),
            HashSet::from([replika.clone()]),
            self.due.clone(),
            Handling {
                store: Box::new(move |event| writer.apply_watcher_event(event)),
                on_change: Box::new(|_, wake| wake()),
                // A changed source concerns every copy.
                namespace_of: |_| None,
            },
        );
        let view = running.view();
        sources.insert(replika.clone(), (source.clone(), running));
        view
    }

    /// The cache of every object named like `replika`'s copies, subscribing `replika`
    /// to its changes (and unsubscribing it from any other name it watched before).
    pub fn copies(
        &self,
        replika: &ObjectRef<Replika>,
        key: &CopyCacheKey,
        resource: &ApiResource,
    ) -> WatchView<CopyIndex> {
        let mut copies = lock(&self.copies);
        unsubscribe(&mut copies, replika, Some(key));
        if let Some(running) = copies.get(key) {
            lock(&running.subscribers).insert(replika.clone());
            return running.view();
        }
        let api = Api::<CopyMeta>::all_with(self.client.clone(), resource);
        let config = watcher::Config::default()
            .fields(&format!("metadata.name={}", key.name))
            .any_semantic();
        let index = CopyIndex::default();
        let mut writer = CopyIndexWriter::new(index.clone());
        let written = self.written.clone();
        let running = spawn_watch(
            api,
            config,
            index,
            HashSet::from([replika.clone()]),
            self.due.clone(),
            Handling {
                store: Box::new(move |event| writer.apply(event)),
                on_change: Box::new(move |copy: &CopyMeta, wake| {
                    written.wake_unless_own_write(&copy.metadata, wake);
                }),
                // A copy changed by someone else concerns its namespace alone.
                namespace_of: |copy: &CopyMeta| copy.metadata.namespace.clone(),
            },
        );
        let view = running.view();
        copies.insert(key.clone(), running);
        view
    }

    /// Stops every watch held for `replika` alone.
    pub fn forget(&self, replika: &ObjectRef<Replika>) {
        lock(&self.sources).remove(replika);
        unsubscribe(&mut lock(&self.copies), replika, None);
    }
}

/// Removes `replika` from every copy watch but `keep`, stopping watches left without subscribers.
fn unsubscribe(
    copies: &mut HashMap<CopyCacheKey, RunningWatch<CopyIndex>>,
    replika: &ObjectRef<Replika>,
    keep: Option<&CopyCacheKey>,
) {
    copies.retain(|key, running| {
        let mut subscribers = lock(&running.subscribers);
        if Some(key) != keep {
            subscribers.remove(replika);
        }
        !subscribers.is_empty()
    });
}

/// Puts each event of a watch into its cache.
type StoreEvent<K> = Box<dyn FnMut(&Event<K>) + Send>;

/// Given a changed object and how to wake the passes it concerns: wakes
/// them, unless the change is the echo of the engine's own write.
type OnChange<K> = Box<dyn Fn(&K, Wake) + Send>;

/// How a watch treats its objects.
struct Handling<K> {
    store: StoreEvent<K>,
    on_change: OnChange<K>,
    /// The one namespace a change of the object concerns (`None`: every target).
    namespace_of: fn(&K) -> Option<String>,
}

fn spawn_watch<K, S>(
    api: Api<K>,
    config: watcher::Config,
    store: S,
    subscribers: HashSet<ObjectRef<Replika>>,
    due: Arc<DuePasses>,
    handling: Handling<K>,
) -> RunningWatch<S>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let health = Arc::new(WatchHealth::default());
    let subscribers = Arc::new(Mutex::new(subscribers));
    let task = tokio::spawn(drive_watch(
        api,
        config,
        health.clone(),
        subscribers.clone(),
        due,
        handling,
    ));
    RunningWatch {
        store,
        health,
        subscribers,
        task,
    }
}

async fn drive_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    health: Arc<WatchHealth>,
    subscribers: Arc<Mutex<HashSet<ObjectRef<Replika>>>>,
    due: Arc<DuePasses>,
    mut handling: Handling<K>,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let notify = |namespace: Option<String>| wake(&subscribers, &due, namespace.as_deref());
    // A change of one object: it counts as the watch's last change once it
    // proves not to be our own write's echo.
    let waker = |namespace: Option<String>| -> Wake {
        let (health, subscribers, due) = (health.clone(), subscribers.clone(), due.clone());
        Box::new(move || {
            *lock(&health.last_change) = Some(Instant::now());
            wake(&subscribers, &due, namespace.as_deref());
        })
    };
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                (handling.store)(&event);
                let recovered = health.record(None);
                match event {
                    Event::InitDone => {
                        health.synced.store(true, Ordering::Release);
                        notify(None);
                    }
                    Event::Apply(object) | Event::Delete(object) => {
                        (handling.on_change)(&object, waker((handling.namespace_of)(&object)));
                    }
                    Event::Init | Event::InitApply(_) if recovered => notify(None),
                    Event::Init | Event::InitApply(_) => {}
                }
            }
            Err(error) => {
                let failure = describe_failure(&error);
                debug!(%error, "watch failed; retrying");
                if health.record(Some(failure)) {
                    warn!(%error, "watch failed; retrying with backoff");
                    notify(None);
                }
            }
        }
    }
}

/// Makes a pass of every subscriber due, for `namespace` alone or (`None`) every target.
fn wake(
    subscribers: &Mutex<HashSet<ObjectRef<Replika>>>,
    due: &DuePasses,
    namespace: Option<&str>,
) {
    for replika in lock(subscribers).iter() {
        due.changed(replika, namespace);
    }
}

fn describe_failure(error: &watcher::Error) -> WatchFailure {
    let status = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => Some(status.as_ref()),
        watcher::Error::WatchError(status) => Some(status.as_ref()),
        _ => None,
    };
    WatchFailure {
        forbidden: status.is_some_and(|s| s.is_forbidden()),
        message: status.map_or_else(|| error.to_string(), |s| s.message.clone()),
    }
}
