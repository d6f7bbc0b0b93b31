//! The scenarios of docs/benchmarks.md, run in order against one operator
//! process:
//!
//! 1. [`crate::setup::build`]: the target namespaces, the unrelated Secrets,
//!    the sources;
//! 2. [`Bench::start`]: the operator, its admission webhooks registered if it
//!    serves them, and a warm-up Replika whose copy shows that its caches are
//!    filled;
//! 3. [`Bench::fan_out`], repeated: floor create ([`crate::floor`]), then
//!    Replika created (a fresh timed Replika with its own source, one copy per
//!    namespace), then both removed again; then, on the last repetition's
//!    objects, floor update and source updated, each repetition writing a new
//!    revision;
//! 4. the numbered Replikas, so that all are present;
//! 5. namespaces created one at a time, each getting a copy of every source
//!    (fresh namespaces in each repetition);
//! 6. the idle window, and the operator's memory;
//! 7. the admission scenario ([`crate::webhook`]), repeated.
//!
//! Each floor run comes right before the operator run it is compared with, so
//! both meet the same API server, repetition after repetition. After each
//! step the benchmark waits until no ConfigMap or Secret has changed for a few
//! seconds, so the step's follow-up work (a second pass over the copies) is
//! counted in its phase, not in the next step. Waits scale with the objects
//! they wait for ([`Options::timeout_for`]).

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
    FIRST_REVISION, Kind, NAMESPACE_PREFIX, ObjectKey, REVISION_KEY, SOURCE_NAMESPACE, WARMUP_NAME,
    WARMUP_NAMESPACE, floor_name, keys, replikas, timed_name, update_revision,
};
use crate::observer::{Expectation, Observer};
use crate::operator::{Endpoints, Operator};
use crate::progress::Progress;
use crate::stats::{Summary, millis};
use crate::webhook;
use crate::workload::{self, Workload};

/// How long no watched object may change before a step starts.
const SETTLE_QUIET: Duration = Duration::from_secs(2);
/// How long a step waits for that quiet before starting anyway, at any
/// scale; [`SETTLE_PER_NAMESPACE`] more per target namespace.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
const SETTLE_PER_NAMESPACE: Duration = Duration::from_millis(20);
/// Time a wait allows per object it waits for, beyond the `--timeout`.
const WAIT_PER_OBJECT: Duration = Duration::from_millis(5);
/// Pause between two checks of whether a deleted Replika is gone.
const GONE_POLL: Duration = Duration::from_millis(200);
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
    /// Longest wait for one step, before [`WAIT_PER_OBJECT`] per object.
    pub timeout: Duration,
    /// Repetitions of each timed scenario (at least 1).
    pub repeats: usize,
}

impl Options {
    /// How long a wait for `objects` objects may take: `--timeout`, and
    /// [`WAIT_PER_OBJECT`] per object (200 000 copies: 1 000 s more).
    pub fn timeout_for(&self, objects: usize) -> Duration {
        self.timeout + WAIT_PER_OBJECT * u32::try_from(objects).unwrap_or(u32::MAX)
    }
}

/// The fan-out scenarios' figures, one per repetition, in the order they ran.
#[derive(Clone, Debug, Default)]
pub struct FanOut {
    pub floor_create: Vec<Propagation>,
    pub replika_created: Vec<Propagation>,
    pub floor_update: Vec<Propagation>,
    pub source_updated: Vec<Propagation>,
}

/// What a phase wrote, for its cost per 1 000 copies.
#[derive(Clone, Copy, Debug)]
enum Written {
    Nothing,
    /// Copies the operator wrote.
    Copies(usize),
    /// Objects the floor client wrote, one request each.
    Floor(usize),
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
    phase_cpu_s: f64,
    /// The operator's RSS once it was up, before any Replika existed.
    baseline_rss_mib: f64,
    /// Whether timed waves start on a freshly collected API server heap
    /// (until the API server refuses: see [`Bench::start_wave`]).
    collect_garbage: bool,
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
            phase_cpu_s: 0.0,
            baseline_rss_mib: 0.0,
            collect_garbage: true,
        };
        if webhook_served {
            webhook::register(&bench.cluster, &bench.options.endpoints, &bench.workload).await?;
        }
        bench.baseline_rss_mib = bench.operator.memory()?.rss_mib;
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
        let phase = self
            .end_phase("operator start, warm-up", Written::Copies(1))
            .await?;
        ensure!(
            phase.requests.total() > 0,
            "no request of the operator was counted: are the FlowSchemas of the \
             benchmark in effect (kubectl get flowschemas)?"
        );
        Ok(())
    }

    /// The fan-out scenarios, each `--repeats` times: floor create, then
    /// Replika created (a fresh timed Replika and source each time), both
    /// removed before the next repetition; then floor update and source
    /// updated on the last repetition's objects, a new revision each time;
    /// then those are removed too.
    pub async fn fan_out(&mut self) -> Result<FanOut> {
        let repeats = self.options.repeats;
        let mut figures = FanOut::default();
        for repetition in 0..repeats {
            let run = format!("{}/{repeats}", repetition + 1);
            let floor = self
                .floor(repetition, FloorWrite::Create, FIRST_REVISION, &run)
                .await?;
            figures.floor_create.push(floor);
            figures
                .replika_created
                .push(self.replika_created(repetition, &run).await?);
            if repetition + 1 < repeats {
                self.remove_timed(repetition).await?;
            }
        }
        let last = repeats - 1;
        for update in 0..repeats {
            let run = format!("{}/{repeats}", update + 1);
            let revision = update_revision(update);
            let floor = self.floor(last, FloorWrite::Apply, &revision, &run).await?;
            figures.floor_update.push(floor);
            figures
                .source_updated
                .push(self.source_updated(last, &revision, &run).await?);
        }
        self.remove_timed(last).await?;
        Ok(figures)
    }

    /// The bare client writes the floor object of `repetition` into every
    /// namespace, at `revision`.
    async fn floor(
        &mut self,
        repetition: usize,
        write: FloorWrite,
        revision: &str,
        run: &str,
    ) -> Result<Propagation> {
        let namespaces = self.workload.target_namespaces();
        let (expectation, phase) = match write {
            FloorWrite::Create => (Expectation::Present, "floor create"),
            FloorWrite::Apply => (Expectation::Revision(revision.into()), "floor update"),
        };
        let name = floor_name(repetition);
        let started = self.start_wave().await;
        let mut progress = Progress::new(format!("{phase} {run}"), namespaces.len());
        let writes = floor::write_floor(
            &self.cluster.floor,
            &name,
            &namespaces,
            write,
            revision,
            self.options.parallelism,
        );
        let waited = self.wait(
            keys(Kind::ConfigMap, &name, &namespaces),
            expectation,
            Some(&mut progress),
        );
        let (responses, arrived) = tokio::try_join!(writes, waited)?;
        progress.finish();
        let mut propagation = Propagation::since(started, arrived.into_values());
        propagation.responses_ms = Some(millis(responses));
        self.end_phase(phase, Written::Floor(namespaces.len()))
            .await?;
        Ok(propagation)
    }

    /// Replika created → a copy in every target namespace, for the timed
    /// Replika of `repetition`.
    async fn replika_created(&mut self, repetition: usize, run: &str) -> Result<Propagation> {
        let copies = self.workload.timed_copies(repetition);
        let count = copies.len();
        let started = self.start_wave().await;
        let mut progress = Progress::new(format!("Replika created {run}: copies"), count);
        self.replikas()
            .create(
                &PostParams::default(),
                &self.workload.timed_replika(repetition),
            )
            .await
            .with_context(|| format!("cannot create the timed Replika {run}"))?;
        let arrived = self
            .wait(copies, Expectation::Present, Some(&mut progress))
            .await?;
        progress.finish();
        self.end_phase("Replika created", Written::Copies(count))
            .await?;
        Ok(Propagation::since(started, arrived.into_values()))
    }

    /// Source updated → every copy of the timed Replika of `repetition`
    /// holds `revision`.
    async fn source_updated(
        &mut self,
        repetition: usize,
        revision: &str,
        run: &str,
    ) -> Result<Propagation> {
        let copies = self.workload.timed_copies(repetition);
        let count = copies.len();
        let sources = Api::<ConfigMap>::namespaced(self.cluster.admin.clone(), SOURCE_NAMESPACE);
        let patch = json!({"data": {REVISION_KEY: revision}});
        let started = self.start_wave().await;
        let mut progress = Progress::new(format!("source updated {run}: copies"), count);
        sources
            .patch(
                &timed_name(repetition),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .context("cannot update the timed source")?;
        let arrived = self
            .wait(
                copies,
                Expectation::Revision(revision.into()),
                Some(&mut progress),
            )
            .await?;
        progress.finish();
        self.end_phase("source updated", Written::Copies(count))
            .await?;
        Ok(Propagation::since(started, arrived.into_values()))
    }

    /// Deletes the floor's objects and the timed Replika of `repetition`,
    /// and waits until the Replika is gone (its copies with it, if the
    /// operator removes them) and nothing changes any more.
    async fn remove_timed(&mut self, repetition: usize) -> Result<()> {
        let namespaces = self.workload.target_namespaces();
        let count = namespaces.len();
        floor::delete_floor(
            &self.cluster.floor,
            &floor_name(repetition),
            namespaces,
            self.options.parallelism,
        )
        .await?;
        let name = timed_name(repetition);
        self.replikas()
            .delete(&name, &DeleteParams::default())
            .await
            .with_context(|| format!("cannot delete the timed Replika {name}"))?;
        let deadline = Instant::now() + self.options.timeout_for(count);
        while self.replikas().get_opt(&name).await?.is_some() {
            self.operator.ensure_running()?;
            ensure!(
                Instant::now() < deadline,
                "the timed Replika {name} was not deleted in time"
            );
            tokio::time::sleep(GONE_POLL).await;
        }
        self.end_phase("timed Replika, floor objects removed", Written::Nothing)
            .await?;
        Ok(())
    }

    /// Creates every numbered Replika and waits for all their copies.
    pub async fn all_replikas(&mut self) -> Result<()> {
        let indexes: Vec<usize> = (0..self.workload.replikas).collect();
        let all_keys: Vec<ObjectKey> = indexes
            .iter()
            .flat_map(|&index| self.workload.copies_of(index))
            .collect();
        let count = all_keys.len();
        let mut progress = Progress::new("Replikas created: copies", count);
        for &index in &indexes {
            self.replikas()
                .create(&PostParams::default(), &self.workload.replika(index))
                .await
                .with_context(|| format!("cannot create Replika {index}"))?;
        }
        self.wait(all_keys, Expectation::Present, Some(&mut progress))
            .await?;
        progress.finish();
        self.end_phase("Replikas created", Written::Copies(count))
            .await?;
        Ok(())
    }

    /// Namespaces created one at a time → a copy of every source in each;
    /// `--repeats` times, with fresh namespaces each time.
    pub async fn namespace_created(&mut self) -> Result<Vec<Summary>> {
        let repeats = self.options.repeats;
        let mut summaries = Vec::new();
        for repetition in 0..repeats {
            let run = format!("{}/{repeats}", repetition + 1);
            summaries.push(self.new_namespaces(repetition, &run).await?);
        }
        Ok(summaries)
    }

    async fn new_namespaces(&mut self, repetition: usize, run: &str) -> Result<Summary> {
        let new_namespaces = self.workload.new_namespaces(repetition);
        let api = Api::<Namespace>::all(self.cluster.admin.clone());
        let mut progress = Progress::new(
            format!("namespaces created one at a time {run}"),
            new_namespaces.len(),
        );
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
        self.end_phase("namespaces created", Written::Copies(latencies.len()))
            .await?;
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
        self.end_phase("idle window", Written::Nothing).await?;
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

    /// The operator's RSS once it was up, before any Replika existed.
    pub fn baseline_rss_mib(&self) -> f64 {
        self.baseline_rss_mib
    }

    /// The admission scenario, `--repeats` times, with `requests` requests
    /// of each kind; `None` if the operator serves no webhook.
    pub async fn admission(&mut self, requests: usize) -> Result<Option<Vec<WebhookFigures>>> {
        if !self.webhook_served {
            self.end_phase("admission", Written::Nothing).await?;
            return Ok(None);
        }
        let mut figures = Vec::new();
        for _ in 0..self.options.repeats {
            figures.push(
                webhook::measure(
                    &self.cluster,
                    &self.options.endpoints,
                    &self.workload,
                    requests,
                )
                .await?,
            );
            self.end_phase("admission", Written::Nothing).await?;
        }
        Ok(Some(figures))
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
        let copies = self.workload.copies_managed() as usize;
        let deadline = Instant::now() + self.options.timeout_for(copies);
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
        let ours: Vec<String> = namespaces
            .list(&ListParams::default())
            .await?
            .into_iter()
            .map(|namespace| namespace.name_any())
            .filter(|name| name.starts_with(NAMESPACE_PREFIX))
            .collect();
        let namespaces = &namespaces;
        workload::run_parallel(
            "namespaces deleted",
            ours,
            self.options.parallelism,
            |name| async move {
                namespaces
                    .delete(&name, &DeleteParams::default())
                    .await
                    .with_context(|| format!("cannot delete the namespace {name}"))?;
                Ok(())
            },
        )
        .await?;
        accounting::uninstall(admin).await?;
        cluster::remove_floor(admin).await
    }

    fn replikas(&self) -> Api<DynamicObject> {
        replikas(&self.cluster.admin)
    }

    /// Waits for `keys` with the step timeout for as many objects, failing
    /// early if the operator exits; on failure, shows the end of its log.
    async fn wait(
        &self,
        keys: Vec<ObjectKey>,
        expectation: Expectation,
        progress: Option<&mut Progress>,
    ) -> Result<std::collections::HashMap<ObjectKey, Instant>> {
        let alive = || self.operator.ensure_running();
        let timeout = self.options.timeout_for(keys.len());
        self.observer
            .wait(keys, expectation, timeout, progress, alive)
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
        let timeout = SETTLE_TIMEOUT
            + SETTLE_PER_NAMESPACE * u32::try_from(self.workload.scale).unwrap_or(u32::MAX);
        if !self.observer.settle(SETTLE_QUIET, timeout).await {
            eprintln!("bench: objects still changing after {timeout:?}; going on anyway");
        }
    }

    /// The start of a timed wave, the floor's or the operator's. Each starts
    /// right after the API server has collected its garbage: a collection
    /// cycle roughly doubles the API server's CPU during the wave it lands in
    /// (profiled: 0.46-0.53 s of 1.6 s), and without this it lands wherever
    /// the heap's growth reaches its limit, the same places in every run
    /// (such as the floor's third wave), which decided the ratios more than
    /// either side's work did. Afterwards a wave's own allocations stay far
    /// below the next limit. Where the API server refuses (`--profiling=false`
    /// on a cluster of `--kubeconfig`), the waves start without it, said once.
    async fn start_wave(&mut self) -> Instant {
        if self.collect_garbage
            && let Err(error) = self.cluster.collect_api_server_garbage().await
        {
            eprintln!("bench: {error:#}; timed waves start without a garbage collection");
            self.collect_garbage = false;
        }
        Instant::now()
    }

    /// Records the operator's memory, CPU time and requests since the
    /// previous phase, once the follow-up work of this one (e.g. a second
    /// pass) is done; a phase that ran before (an earlier repetition) adds up.
    async fn end_phase(&mut self, name: &str, written: Written) -> Result<Phase> {
        self.settle().await;
        self.operator.ensure_running()?;
        let counts = RequestCounts::read(&self.cluster.admin).await?;
        let cpu_s = self.operator.cpu_seconds()?;
        let (copies_written, floor_requests) = match written {
            Written::Nothing => (0, 0),
            Written::Copies(copies) => (copies as u64, 0),
            Written::Floor(objects) => (objects as u64, objects as u64),
        };
        let phase = Phase {
            name: name.to_owned(),
            runs: 1,
            seconds: (self.phase_started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            memory: self.operator.memory()?,
            cpu_s: ((cpu_s - self.phase_cpu_s) * 100.0).round() / 100.0,
            requests: counts.since(&self.phase_counts),
            copies_written,
            floor_requests,
        };
        match self.phases.iter_mut().find(|earlier| earlier.name == name) {
            Some(earlier) => earlier.add(phase.clone()),
            None => self.phases.push(phase.clone()),
        }
        self.phase_started = Instant::now();
        self.phase_counts = counts;
        self.phase_cpu_s = cpu_s;
        Ok(phase)
    }
}
