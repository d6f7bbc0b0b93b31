//! The reconciler and the watches that drive it: all of Replika's Kubernetes I/O
//! for replication lives here, while the rules it applies live in [`crate::domain`].
//!
//! - [`watches`]: caches of namespaces, sources and same-named objects, and the triggers they fire;
//!   [`due`] says whether a Replika's next pass looks at every target or a few namespaces.
//! - [`kinds`]: discovery of the kinds Replikas name.
//! - [`copy_index`]: the compact cache of copies (and of objects in their way).
//! - [`copies`]: writing, replacing, pruning and orphaning copies; [`outcome`]
//!   says what became of each, [`written`] remembers the versions it wrote.
//! - [`previous_copies`]: removing the copies made under a previous name or kind.
//! - [`reconcile`]: one pass over one Replika, with [`caches`] (its kind and
//!   watches), [`cleanup`] (pruning, and what a deleted Replika leaves) and
//!   [`pass`] (what both start from and end with).
//! - [`status`]: conditions, counts and Events.

pub mod caches;
pub mod cleanup;
pub mod copies;
pub mod copy_index;
pub mod due;
pub mod error;
pub mod kinds;
pub mod outcome;
pub mod pass;
pub mod previous_copies;
pub mod reconcile;
#[cfg(test)]
mod request_sequences;
pub mod status;
pub mod watches;
pub mod written;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use futures::stream::poll_fn;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{Controller, PredicateConfig, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::api::{ANNOTATION_AUTHOR, ANNOTATION_AUTHOR_SIGNATURE, Replika};
use crate::authorization::Authorizer;
use crate::leader::Leadership;
use crate::locks;
use crate::metrics::{Metrics, ReconcileLabels};
use crate::operations::Readiness;
pub use error::Error;

/// Name used as field manager for every write and as the Events' reporting controller.
pub const MANAGER: &str = "replika";

/// How many copies one Replika writes at once, unless told otherwise
/// (`replika run --max-parallel-writes`).
pub const DEFAULT_MAX_PARALLEL_WRITES: usize = 32;
/// How many Replikas' passes read the caches and write copies at once, unless
/// told otherwise (`replika run --max-parallel-replikas`). Most passes are
/// narrow ones over a namespace or two, so many may run at once; the writes of
/// all of them together are bounded by [`DEFAULT_MAX_WRITES_IN_FLIGHT`]. A pass
/// that wrote copies gives its slot back before it writes its status; one
/// that ends blocked before writing (invalid spec, caches not ready, author
/// not authorized, source missing) reports while it still holds it.
pub const DEFAULT_MAX_PARALLEL_REPLIKAS: u16 = 16;
/// How many copy writes are in flight at once across all Replikas, unless
/// told otherwise (`replika run --max-writes-in-flight`).
pub const DEFAULT_MAX_WRITES_IN_FLIGHT: usize = 64;

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How many copies one Replika writes at once.
    pub max_parallel_writes: usize,
    /// How many Replikas' passes read the caches and write copies at once.
    pub max_parallel_replikas: u16,
    /// How many copy writes are in flight at once, across all Replikas.
    pub max_writes_in_flight: usize,
    /// Whether this process may write now; every write checks it first.
    pub leadership: Leadership,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_parallel_writes: DEFAULT_MAX_PARALLEL_WRITES,
            max_parallel_replikas: DEFAULT_MAX_PARALLEL_REPLIKAS,
            max_writes_in_flight: DEFAULT_MAX_WRITES_IN_FLIGHT,
            leadership: Leadership::always(),
        }
    }
}

/// Everything a reconcile pass needs, shared by all passes.
pub struct Context {
    pub client: Client,
    pub namespaces: watches::NamespaceCache,
    pub watches: watches::Watches,
    pub kinds: kinds::KindCache,
    pub recorder: Recorder,
    pub written: Arc<written::WrittenVersions>,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// Verifies each Replika's author and reviews their access before any write.
    pub authorizer: Arc<Authorizer>,
    /// Every Replika, as last seen (the controller's own cache).
    pub replikas: reflector::Store<Replika>,
    /// Copies in sync per Replika UID, summed into the `copies_managed` gauge.
    pub synced_copies: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// UIDs of deleted Replikas whose cleanup this process finished: a pass
    /// that still sees one (the finalizer's removal not yet in the cache) must
    /// not open its watches again.
    pub cleaned: std::sync::Mutex<std::collections::HashSet<String>>,
    /// What each Replika's next pass must look at.
    pub due: Arc<due::DuePasses>,
    /// One permit per copy write in flight, shared by every pass.
    pub write_slots: tokio::sync::Semaphore,
    /// One permit per pass reading the caches and writing copies.
    pub pass_slots: tokio::sync::Semaphore,
    /// The last whole pass over each Replika (by UID), for narrow passes.
    pub whole_passes: std::sync::Mutex<std::collections::HashMap<String, due::WholePass>>,
}

impl Context {
    /// Writes for the copies of the Replika with `owner_uid`, of kind `resource`.
    pub fn copy_writer<'a>(
        &'a self,
        resource: &'a kube::api::ApiResource,
        owner_uid: &'a str,
    ) -> copies::CopyWriter<'a> {
        copies::CopyWriter {
            leadership: &self.settings.leadership,
            client: &self.client,
            resource,
            owner_uid,
            written: &self.written,
            metrics: &self.metrics,
            slots: &self.write_slots,
        }
    }

    /// Records that the cleanup of the Replika with `uid` is done, and forgets
    /// those of Replikas the cache no longer holds.
    pub fn record_cleaned(&self, uid: &str) {
        let live: std::collections::HashSet<String> = self
            .replikas
            .state()
            .iter()
            .filter_map(|r| r.uid())
            .collect();
        let mut cleaned = locks::lock(&self.cleaned);
        cleaned.retain(|done| live.contains(done));
        cleaned.insert(uid.to_string());
    }

    /// Waits for one of the [`Settings::max_parallel_replikas`] slots of
    /// passes that read the caches and write copies; given back when dropped.
    pub async fn pass_slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        // The semaphore is never closed; without a permit the pass goes ahead.
        self.pass_slots.acquire().await.ok()
    }

    /// Takes out the last whole pass over the Replika with `uid`: until one
    /// is recorded again, its next pass is whole.
    pub fn take_whole_pass(&self, uid: &str) -> Option<due::WholePass> {
        locks::lock(&self.whole_passes).remove(uid)
    }

    /// Whether this process finished the cleanup of the Replika with `uid`.
    pub fn is_cleaned(&self, uid: &str) -> bool {
        locks::lock(&self.cleaned).contains(uid)
    }

    /// Records how many copies of one Replika are in sync (`None`: it is gone).
    pub fn record_synced(&self, replika_uid: &str, synced: Option<u32>) {
        let mut counts = locks::lock(&self.synced_copies);
        match synced {
            Some(count) => counts.insert(replika_uid.to_string(), count),
            None => counts.remove(replika_uid),
        };
        self.metrics
            .copies_managed
            .set(counts.values().map(|c| i64::from(*c)).sum());
    }
}

/// What the engine reports to the rest of the process.
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    /// Its `engine` flag, written only by the engine: set while the
    /// namespace and Replika caches hold a full, live list.
    pub ready: Arc<Readiness>,
}

/// Runs the replication engine until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    authorizer: Arc<Authorizer>,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (wake_tx, mut wake_rx) = mpsc::unbounded_channel();
    let due = Arc::new(due::DuePasses::new(wake_tx));
    let (namespaces, namespace_writer) = watches::NamespaceCache::new();
    let health = Arc::new(EngineHealth::new(telemetry.ready.clone()));
    let (replika_store, replika_writer) = reflector::store();
    let namespace_task = tokio::spawn(watch_namespaces(
        client.clone(),
        namespaces.clone(),
        namespace_writer,
        NamespaceChanges {
            replikas: replika_store.clone(),
            due: due.clone(),
        },
        health.clone(),
    ));
    let written = Arc::new(written::WrittenVersions::default());
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let context = Arc::new(Context {
        client: client.clone(),
        namespaces,
        watches: watches::Watches::new(client.clone(), due.clone(), written.clone()),
        kinds: kinds::KindCache::new(client.clone()),
        recorder: Recorder::new(client.clone(), reporter),
        written: written.clone(),
        settings: settings.clone(),
        metrics: telemetry.metrics.clone(),
        authorizer,
        replikas: replika_store.clone(),
        synced_copies: Default::default(),
        cleaned: Default::default(),
        due,
        whole_passes: Default::default(),
        write_slots: tokio::sync::Semaphore::new(settings.max_writes_in_flight.max(1)),
        pass_slots: tokio::sync::Semaphore::new(usize::from(settings.max_parallel_replikas.max(1))),
    });
    info!("replication engine started");
    let replika_changes = watcher::watcher(
        Api::<Replika>::all(client),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .inspect(move |event| match event {
        Ok(Event::InitDone) => health.replikas_listed(true),
        Err(_) => health.replikas_listed(false),
        Ok(_) => {}
    })
    .reflect(replika_writer)
    .applied_objects()
    .predicate_filter(worth_a_pass, PredicateConfig::default());
    let controller = Controller::for_stream(replika_changes, replika_store);
    let metrics = telemetry.metrics;
    controller
        // Unbounded here: a pass holds one of `pass_slots` only while it reads
        // the caches and writes copies, not while it reports.
        .with_config(kube::runtime::Config::default())
        .reconcile_on(poll_fn(move |cx| wake_rx.poll_recv(cx)))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, context)
        .for_each(|result| {
            let outcome = match &result {
                Ok(_) => "success",
                Err(kube::runtime::controller::Error::ReconcilerFailed(error, _)) => error.label(),
                Err(_) => "controller",
            };
            metrics
                .reconciles
                .get_or_create(&ReconcileLabels {
                    result: outcome.into(),
                })
                .inc();
            match result {
                // A pass queued for a Replika deleted meanwhile: nothing to do.
                Err(error @ kube::runtime::controller::Error::ObjectNotFound(_)) => {
                    debug!(%error, "a pass was asked for a Replika that is gone");
                }
                Err(error) => warn!(%error, "reconcile failed"),
                Ok(_) => {}
            }
            std::future::ready(())
        })
        .await;
    namespace_task.abort();
    info!("replication engine stopped");
}

/// What makes a changed Replika worth a new pass: its spec (generation), its
/// author, its finalizers, its deletion. Not its status: the engine writes that
/// itself, and a pass per status write would redo every pass once more.
fn worth_a_pass(replika: &Replika) -> Option<u64> {
    let mut hasher = std::hash::DefaultHasher::new();
    let annotations = replika.annotations();
    (
        replika.metadata.generation,
        annotations.get(ANNOTATION_AUTHOR),
        annotations.get(ANNOTATION_AUTHOR_SIGNATURE),
        &replika.metadata.finalizers,
        replika.metadata.deletion_timestamp.is_some(),
    )
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// Where a namespace's change goes: to every Replika, as due in that
/// namespace (a whole pass after a relist, when any may have changed).
struct NamespaceChanges {
    replikas: reflector::Store<Replika>,
    due: Arc<due::DuePasses>,
}

impl NamespaceChanges {
    fn changed(&self, namespace: Option<&str>) {
        for replika in self.replikas.state() {
            self.due.changed(&ObjectRef::from_obj(&*replika), namespace);
        }
    }
}

/// Keeps the namespace cache current and signals every change that can move targets.
async fn watch_namespaces(
    client: Client,
    cache: watches::NamespaceCache,
    writer: Writer<PartialObjectMeta<Namespace>>,
    changes: NamespaceChanges,
    health: Arc<EngineHealth>,
) {
    let api = Api::<PartialObjectMeta<Namespace>>::all(client);
    let stream = watcher::watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|ns| ns.metadata.managed_fields = None)
        .reflect(writer);
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(namespace) | Event::Delete(namespace)) => {
                changes.changed(Some(&namespace.name_any()));
            }
            Ok(Event::InitDone) => {
                cache.mark_synced();
                health.namespaces_listed(true);
                changes.changed(None);
            }
            Ok(Event::Init | Event::InitApply(_)) => {}
            Err(error) => {
                health.namespaces_listed(false);
                warn!(%error, "namespace watch failed; retrying");
            }
        }
    }
}

/// Whether the engine's own caches are current: `readiness.engine` is true only
/// while both the Replika and the namespace watch hold a full, live list, so
/// `/readyz` shows an API server or etcd outage and its end.
struct EngineHealth {
    replikas: AtomicBool,
    namespaces: AtomicBool,
    readiness: Arc<Readiness>,
}

impl EngineHealth {
    /// A new engine's caches are empty: not ready (a leader that leads again
    /// must not be ready on the caches of its previous term).
    fn new(readiness: Arc<Readiness>) -> Self {
        readiness.engine.set(false);
        EngineHealth {
            replikas: AtomicBool::new(false),
            namespaces: AtomicBool::new(false),
            readiness,
        }
    }

    fn replikas_listed(&self, listed: bool) {
        self.replikas.store(listed, Ordering::Release);
        self.publish();
    }

    fn namespaces_listed(&self, listed: bool) {
        self.namespaces.store(listed, Ordering::Release);
        self.publish();
    }

    fn publish(&self) {
        let ready =
            self.replikas.load(Ordering::Acquire) && self.namespaces.load(Ordering::Acquire);
        if ready != self.readiness.engine.get() {
            info!(
                ready,
                "Replika and namespace caches {}",
                if ready {
                    "synced: the engine is ready"
                } else {
                    "lost their watch: the engine is not ready"
                }
            );
        }
        self.readiness.engine.set(ready);
    }
}
