//! The scenarios of docs/benchmarks.md, run in order against one operator
//! process:
//!
//! 1. [`crate::setup::build`]: the target namespaces, the unrelated Secrets,
//!    the sources;
//! 2. [`Bench::start`]: the operator, its admission webhooks registered if it
//!    serves them, and a warm-up Replika whose copy shows that its caches are
//!    filled;
//! 3. floor create ([`crate::floor`]), then Replika created (one Replika, one
//!    copy per namespace);
//! 4. floor update, then source updated;
//! 5. the other Replikas, so that all are present;
//! 6. namespaces created one at a time, each getting a copy of every source;
//! 7. the idle window, and the operator's memory;
//! 8. the admission scenario ([`crate::webhook`]).
//!
//! Each floor run comes right before the operator run it is compared with, so
//! both meet the same API server; the floor's objects are deleted after its
//! update run, so the later steps see only what docs/benchmarks.md describes. After each
//! step the benchmark waits until no ConfigMap or Secret has changed for a few
//! seconds, so the step's follow-up work (a second pass over the copies) is
//! counted in its phase, not in the next step.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::accounting::{self, RequestCounts};
use crate::cluster::{self, Cluster};
use crate::figures::{Idle, Memory, Phase, Propagation, WebhookFigures};
use crate::floor::{self, FloorWrite};
use crate::model::{
    FIRST_REVISION, FLOOR_NAME, Kind, NAMESPACE_PREFIX, ObjectKey, REVISION_KEY, SECOND_REVISION,
    SOURCE_NAMESPACE, WARMUP_NAME, WARMUP_NAMESPACE, keys, replikas, source_name,
};
use crate::observer::{Expectation, Observer};
use crate::operator::{Endpoints, Operator};
use crate::progress::Progress;
use crate::stats::{Summary, millis};
use crate::webhook;
use crate::workload::{self, Workload};

/// How long no watched object may change before a step starts.
const SETTLE_QUIET: Duration = Duration::from_secs(2);
/// How long a step waits for that quiet before starting anyway.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Quiet between two namespaces of the namespace scenario.
const NAMESPACE_GAP_QUIET: Duration = Duration::from_millis(250);
const NAMESPACE_GAP_TIMEOUT: Duration = Duration::from_secs(5);

/// How the operator is run and how long anything may take.
#[derive(Clone, Debug)]
pub struct Options {
    pub operator_cmd: String,
    pub operator_log: PathBuf,
    pub endpoints: Endpoints,
    /// Writes in flight at once, for the floor and for building the cluster.
    pub parallelism: usize,
    /// Longest wait for one step.
    pub timeout: Duration,
}

/// The running operator and what the run has recorded so far.
pub struct Bench {
    pub cluster: Cluster,
    pub workload: Workload,
    observer: Observer,
    operator: Operator,
    options: Options,
    /// Whether the operator serves admission webhooks (then registered).
    webhook_served: bool,
    phases: Vec<Phase>,
    phase_started: Instant,
    phase_counts: RequestCounts,
}

impl Bench {
    /// Starts the operator, registers its webhooks if it serves them, and
    /// waits until it has copied the warm-up source, checking that its
    /// requests are being counted.
    pub async fn start(
        cluster: Cluster,
        workload: Workload,
        observer: Observer,
        options: Options,
    ) -> Result<Bench> {
        let phase_counts = RequestCounts::read(&cluster.admin).await?;
        let operator = Operator::start(
            &options.operator_cmd,
            &cluster.operator_kubeconfig,
            &options.endpoints,
            &options.operator_log,
        )?;
        let webhook_served = webhook::served(&options.endpoints, &workload).await?;
        let mut bench = Bench {
            cluster,
            workload,
            observer,
            operator,
            options,
            webhook_served,
            phases: Vec::new(),
            phase_started: Instant::now(),
            phase_counts,
        };
        if webhook_served {
            webhook::register(&bench.cluster, &bench.options.endpoints, &bench.workload).await?;
        }
        bench.warm_up().await?;
        Ok(bench)
    }

    async fn warm_up(&mut self) -> Result<()> {
        self.replikas()
            .create(&PostParams::default(), &self.workload.warmup_replika())
            .await
            .context("cannot create the warm-up Replika")?;
        let key = ObjectKey::new(Kind::ConfigMap, WARMUP_NAMESPACE, WARMUP_NAME);
        let mut progress = Progress::new("operator start: warm-up copy", 1);
        self.wait(vec![key], Expectation::Present, Some(&mut progress))
            .await?;
        progress.finish();
        let phase = self.end_phase("operator start, warm-up").await?;
        ensure!(
            phase.requests.total() > 0,
            "no request of the operator was counted: are the FlowSchemas of the \
             benchmark in effect (kubectl get flowschemas)?"
        );
        Ok(())
    }

    /// The floor for creation: the bare client creates one object per namespace.
    pub async fn floor_create(&mut self) -> Result<Propagation> {
        self.floor(FloorWrite::Create, "floor create").await
    }

    /// The floor for updates: the bare client applies a new revision to its
    /// objects; then it deletes them.
    pub async fn floor_update(&mut self) -> Result<Propagation> {
        let propagation = self.floor(FloorWrite::Apply, "floor update").await?;
        floor::delete_floor(
            &self.cluster.floor,
            self.workload.target_namespaces(),
            self.options.parallelism,
        )
        .await?;
        self.end_phase("floor objects deleted").await?;
        Ok(propagation)
    }

    async fn floor(&mut self, write: FloorWrite, phase: &str) -> Result<Propagation> {
        let namespaces = self.workload.target_namespaces();
        let (expectation, revision) = match write {
            FloorWrite::Create => (Expectation::Present, FIRST_REVISION),
            FloorWrite::Apply => (
                Expectation::Revision(SECOND_REVISION.into()),
                SECOND_REVISION,
            ),
        };
        let mut progress = Progress::new(phase, namespaces.len());
        let started = Instant::now();
        let writes = floor::write_floor(
            &self.cluster.floor,
            &namespaces,
            write,
            revision,
            self.options.parallelism,
        );
        let waited = self.wait(
            keys(Kind::ConfigMap, FLOOR_NAME, &namespaces),
            expectation,
            Some(&mut progress),
        );
        let (responses, arrived) = tokio::try_join!(writes, waited)?;
        progress.finish();
        let mut propagation = Propagation::since(started, arrived.into_values());
        propagation.responses_ms = Some(millis(responses));
        self.end_phase(phase).await?;
        Ok(propagation)
    }

    /// Replika created → a copy in every target namespace.
    pub async fn replika_created(&mut self) -> Result<Propagation> {
        let copies = self.workload.copies_of(0);
        let mut progress = Progress::new("Replika created: copies", copies.len());
        let started = Instant::now();
        self.replikas()
            .create(&PostParams::default(), &self.workload.replika(0))
            .await
            .context("cannot create the first Replika")?;
        let arrived = self
            .wait(copies, Expectation::Present, Some(&mut progress))
            .await?;
        progress.finish();
        self.end_phase("Replika created").await?;
        Ok(Propagation::since(started, arrived.into_values()))
    }

    /// Source updated → every copy holds the new revision.
    pub async fn source_updated(&mut self) -> Result<Propagation> {
        let copies = self.workload.copies_of(0);
        let mut progress = Progress::new("source updated: copies", copies.len());
        let sources = Api::<ConfigMap>::namespaced(self.cluster.admin.clone(), SOURCE_NAMESPACE);
        let patch = json!({"data": {REVISION_KEY: SECOND_REVISION}});
        let started = Instant::now();
        sources
            .patch(
                &source_name(0),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .context("cannot update the first source")?;
        let arrived = self
            .wait(
                copies,
                Expectation::Revision(SECOND_REVISION.into()),
                Some(&mut progress),
            )
            .await?;
        progress.finish();
        self.end_phase("source updated").await?;
        Ok(Propagation::since(started, arrived.into_values()))
    }

    /// Creates every other Replika and waits for all their copies.
    pub async fn remaining_replikas(&mut self) -> Result<()> {
        let indexes: Vec<usize> = (1..self.workload.replikas).collect();
        let all_keys: Vec<ObjectKey> = indexes
            .iter()
            .flat_map(|&index| self.workload.copies_of(index))
            .collect();
        let mut progress = Progress::new("other Replikas: copies", all_keys.len());
        for &index in &indexes {
            self.replikas()
                .create(&PostParams::default(), &self.workload.replika(index))
                .await
                .with_context(|| format!("cannot create Replika {index}"))?;
        }
        self.wait(all_keys, Expectation::Present, Some(&mut progress))
            .await?;
        progress.finish();
        self.end_phase("other Replikas created").await?;
        Ok(())
    }

    /// Namespaces created one at a time → a copy of every source in each.
    pub async fn namespace_created(&mut self) -> Result<Summary> {
        let new_namespaces = self.workload.new_namespaces();
        let api = Api::<Namespace>::all(self.cluster.admin.clone());
        let mut progress = Progress::new("namespaces created one at a time", new_namespaces.len());
        let mut latencies = Vec::new();
        for namespace in &new_namespaces {
            let copies = self.workload.copies_in(namespace);
            let started = Instant::now();
            api.create(&PostParams::default(), &workload::namespace(namespace))
                .await
                .with_context(|| format!("cannot create the namespace {namespace}"))?;
            let arrived = self.wait(copies, Expectation::Present, None).await?;
            latencies.extend(
                arrived
                    .values()
                    .map(|at| at.saturating_duration_since(started)),
            );
            progress.inc();
            self.observer
                .settle(NAMESPACE_GAP_QUIET, NAMESPACE_GAP_TIMEOUT)
                .await;
        }
        progress.finish();
        self.end_phase("namespaces created").await?;
        Ok(Summary::of(&latencies))
    }

    /// Counts the operator's requests over `window` while nothing changes.
    pub async fn idle(&mut self, window: Duration) -> Result<Idle> {
        let before = RequestCounts::read(&self.cluster.admin).await?;
        let seconds = window.as_secs();
        let mut progress = Progress::new("idle window (s)", seconds as usize);
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        ticks.tick().await;
        for second in 1..=seconds {
            ticks.tick().await;
            self.operator.ensure_running()?;
            progress.set(second as usize);
        }
        let by_class = RequestCounts::read(&self.cluster.admin)
            .await?
            .since(&before);
        progress.finish();
        self.end_phase("idle window").await?;
        Ok(Idle {
            window_s: seconds,
            state_requests: by_class.state_requests(),
            by_class,
        })
    }

    /// The operator's memory now (steady) and at its peak.
    pub fn memory(&self) -> Result<Memory> {
        self.operator.memory()
    }

    /// The admission scenario, with `requests` requests of each kind; `None`
    /// if the operator serves no webhook.
    pub async fn admission(&mut self, requests: usize) -> Result<Option<WebhookFigures>> {
        let figures = if self.webhook_served {
            Some(
                webhook::measure(
                    &self.cluster,
                    &self.options.endpoints,
                    &self.workload,
                    requests,
                )
                .await?,
            )
        } else {
            None
        };
        self.end_phase("admission").await?;
        Ok(figures)
    }

    /// The operator's own `/metrics`, if it serves them.
    pub async fn operator_metrics(&self) -> Result<String> {
        self.operator.scrape_metrics().await
    }

    /// What each phase cost the operator.
    pub fn phases(&self) -> Vec<Phase> {
        self.phases.clone()
    }

    /// Removes what the benchmark made, for clusters it does not own: the
    /// Replikas first (the operator removes their copies), then the webhook
    /// registration and the rest.
    pub async fn clean_up(&mut self) -> Result<()> {
        eprintln!("  cleaning up");
        self.replikas()
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await
            .context("cannot delete the Replikas")?;
        let deadline = Instant::now() + self.options.timeout;
        while !self
            .replikas()
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
        {
            self.operator.ensure_running()?;
            ensure!(
                Instant::now() < deadline,
                "the Replikas were not deleted in time"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if self.webhook_served {
            webhook::unregister(&self.cluster, &self.workload).await?;
        }
        let admin = &self.cluster.admin;
        let namespaces = Api::<Namespace>::all(admin.clone());
        for namespace in namespaces.list(&ListParams::default()).await? {
            let name = namespace.name_any();
            if name.starts_with(NAMESPACE_PREFIX) {
                namespaces.delete(&name, &DeleteParams::default()).await?;
            }
        }
        accounting::uninstall(admin).await?;
        cluster::remove_floor(admin).await
    }

    fn replikas(&self) -> Api<DynamicObject> {
        replikas(&self.cluster.admin)
    }

    /// Waits for `keys` with the step timeout, failing early if the operator
    /// exits; on failure, shows the end of its log.
    async fn wait(
        &self,
        keys: Vec<ObjectKey>,
        expectation: Expectation,
        progress: Option<&mut Progress>,
    ) -> Result<std::collections::HashMap<ObjectKey, Instant>> {
        let alive = || self.operator.ensure_running();
        self.observer
            .wait(keys, expectation, self.options.timeout, progress, alive)
            .await
            .map_err(|error| match self.operator.ensure_running() {
                // The exit is the news; its error shows the log already.
                Err(exited) => exited,
                Ok(()) => anyhow!(
                    "{error:#}\nthe end of the operator's log:\n{}",
                    self.operator.log_tail()
                ),
            })
    }

    async fn settle(&mut self) {
        if !self.observer.settle(SETTLE_QUIET, SETTLE_TIMEOUT).await {
            eprintln!("bench: objects still changing after {SETTLE_TIMEOUT:?}; going on anyway");
        }
    }

    /// Records the operator's memory and requests since the previous phase,
    /// once the follow-up work of this one (e.g. a second pass) is done.
    async fn end_phase(&mut self, name: &str) -> Result<Phase> {
        self.settle().await;
        self.operator.ensure_running()?;
        let counts = RequestCounts::read(&self.cluster.admin).await?;
        let phase = Phase {
            name: name.to_owned(),
            seconds: (self.phase_started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            memory: self.operator.memory()?,
            requests: counts.since(&self.phase_counts),
        };
        self.phases.push(phase.clone());
        self.phase_started = Instant::now();
        self.phase_counts = counts;
        Ok(phase)
    }
}
