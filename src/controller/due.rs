//! Which pass each Replika is due: a whole one, over every target, or a
//! narrow one over just the namespaces where something changed.
//!
//! Watches say why they wake a Replika ([`DuePasses`]): a namespace created,
//! relabelled or deleted, or a copy changed by someone else, concerns one
//! namespace; anything else (its source, a relist, a lost watch) concerns
//! every target. A narrow pass is only taken when the last whole pass
//! ([`WholePass`]) saw the same spec and source and its resync is not due, so
//! a new namespace costs each Replika the work of one namespace, not of all.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;

use super::copy_index::shared_namespace;
use super::outcome::Outcome;
use crate::api::Replika;
use crate::locks::lock;

/// Beyond this many changed namespaces a Replika gets a whole pass instead:
/// it costs about as much, and the set stays small.
const MAX_NARROW_NAMESPACES: usize = 128;

/// What a Replika's next pass must look at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Every target.
    pub whole: bool,
    /// The namespaces where something changed.
    pub namespaces: BTreeSet<String>,
}

/// The reasons recorded for each Replika's next pass, and the channel that
/// wakes the controller for it.
pub struct DuePasses {
    wake: mpsc::UnboundedSender<ObjectRef<Replika>>,
    due: Mutex<HashMap<ObjectRef<Replika>, Due>>,
}

impl DuePasses {
    /// Records reasons and wakes the controller through `wake`.
    pub fn new(wake: mpsc::UnboundedSender<ObjectRef<Replika>>) -> Self {
        DuePasses {
            wake,
            due: Mutex::default(),
        }
    }

    /// `replika` must look at every target.
    pub fn whole(&self, replika: &ObjectRef<Replika>) {
        lock(&self.due).entry(replika.clone()).or_default().whole = true;
        let _ = self.wake.send(replika.clone());
    }

    /// Something changed in `namespace` that concerns `replika`.
    pub fn namespace(&self, replika: &ObjectRef<Replika>, namespace: &str) {
        {
            let mut due = lock(&self.due);
            let due = due.entry(replika.clone()).or_default();
            if !due.whole {
                due.namespaces.insert(namespace.to_string());
                if due.namespaces.len() > MAX_NARROW_NAMESPACES {
                    due.whole = true;
                    due.namespaces.clear();
                }
            }
        }
        let _ = self.wake.send(replika.clone());
    }

    /// Something changed that concerns `replika`: in `namespace` alone, or
    /// (`None`) in every target.
    pub fn changed(&self, replika: &ObjectRef<Replika>, namespace: Option<&str>) {
        match namespace {
            Some(namespace) => self.namespace(replika, namespace),
            None => self.whole(replika),
        }
    }

    /// What `replika`'s pass, starting now, must look at; forgotten here.
    pub fn take(&self, replika: &ObjectRef<Replika>) -> Due {
        lock(&self.due).remove(replika).unwrap_or_default()
    }
}

/// What the last whole pass over a Replika saw, for narrow passes to build on.
#[derive(Clone, Debug)]
pub struct WholePass {
    pub generation: Option<i64>,
    pub source_version: Option<String>,
    pub finished: Instant,
    /// The target namespaces after it (and the narrow passes since).
    targets: HashSet<Arc<str>>,
    /// The targets not in sync after it (and the narrow passes since), with why.
    pub problems: BTreeMap<String, Outcome>,
}

impl WholePass {
    /// A whole pass, finished now, over `targets`, which ended with `outcomes`.
    pub fn new(
        generation: Option<i64>,
        source_version: Option<String>,
        targets: &BTreeSet<String>,
        outcomes: &BTreeMap<String, Outcome>,
    ) -> Self {
        WholePass {
            generation,
            source_version,
            finished: Instant::now(),
            targets: targets.iter().map(|name| shared_namespace(name)).collect(),
            problems: Self::problems_in(outcomes),
        }
    }

    /// How many namespaces are targets.
    pub fn desired(&self) -> usize {
        self.targets.len()
    }

    /// The namespaces a pass may be narrowed to, given what it is `due` and
    /// what the Replika is now; `None` when it must look at every target.
    pub fn narrows<'d>(
        last: Option<&WholePass>,
        due: &'d Due,
        generation: Option<i64>,
        source_version: Option<&str>,
        resync: Duration,
    ) -> Option<&'d BTreeSet<String>> {
        let last = last?;
        let unchanged = last.generation == generation
            && last.source_version.as_deref() == source_version
            && last.finished.elapsed() < resync;
        (unchanged && !due.whole && !due.namespaces.is_empty()).then_some(&due.namespaces)
    }

    /// The targets not in sync among `outcomes`, with why.
    fn problems_in(outcomes: &BTreeMap<String, Outcome>) -> BTreeMap<String, Outcome> {
        outcomes
            .iter()
            .filter(|(_, outcome)| !outcome.is_synced())
            .map(|(namespace, outcome)| (namespace.clone(), outcome.clone()))
            .collect()
    }

    /// Takes in a narrow pass over `looked_at`, where it found `targets` and
    /// ended with `outcomes`: what it found replaces what was known of those
    /// namespaces (one that is no longer a target has no outcome, and no problem).
    pub fn record_narrow(
        &mut self,
        looked_at: &BTreeSet<String>,
        targets: &BTreeSet<String>,
        outcomes: &BTreeMap<String, Outcome>,
    ) {
        for namespace in looked_at {
            self.targets.remove(namespace.as_str());
        }
        self.targets
            .extend(targets.iter().map(|name| shared_namespace(name)));
        self.problems
            .retain(|namespace, _| !looked_at.contains(namespace));
        self.problems.extend(Self::problems_in(outcomes));
    }

    /// How long until the next whole pass is due.
    pub fn resync_in(&self, resync: Duration) -> Duration {
        resync.saturating_sub(self.finished.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replika(name: &str) -> ObjectRef<Replika> {
        ObjectRef::new(name).within("default")
    }

    fn names(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn last(problems: &[(&str, Outcome)]) -> WholePass {
        let outcomes: BTreeMap<String, Outcome> = problems
            .iter()
            .map(|(ns, o)| (ns.to_string(), o.clone()))
            .chain([("team-ok".to_string(), Outcome::InSync)])
            .collect();
        let targets = outcomes.keys().cloned().collect();
        WholePass::new(Some(2), Some("10".into()), &targets, &outcomes)
    }

    #[test]
    fn reasons_gather_until_taken_and_each_wakes_the_controller() {
        let (wake, mut woken) = mpsc::unbounded_channel();
        let due = DuePasses::new(wake);
        due.namespace(&replika("a"), "team-1");
        due.namespace(&replika("a"), "team-2");
        due.namespace(&replika("b"), "team-1");
        due.whole(&replika("b"));
        assert_eq!(
            due.take(&replika("a")),
            Due {
                whole: false,
                namespaces: names(&["team-1", "team-2"])
            }
        );
        assert!(due.take(&replika("b")).whole);
        assert_eq!(due.take(&replika("a")), Due::default(), "taken once");
        let mut wakes = 0;
        while woken.try_recv().is_ok() {
            wakes += 1;
        }
        assert_eq!(wakes, 4);
    }

    #[test]
    fn too_many_namespaces_make_a_whole_pass() {
        let (wake, _woken) = mpsc::unbounded_channel();
        let due = DuePasses::new(wake);
        for i in 0..=MAX_NARROW_NAMESPACES {
            due.namespace(&replika("a"), &format!("team-{i}"));
        }
        let taken = due.take(&replika("a"));
        assert!(taken.whole);
        assert!(taken.namespaces.is_empty());
    }

    #[test]
    fn a_pass_is_narrow_only_over_an_unchanged_replika_and_source() {
        let resync = Duration::from_secs(60);
        let due = Due {
            whole: false,
            namespaces: names(&["team-1"]),
        };
        let last = last(&[]);
        let narrows = |last: Option<&WholePass>, due: &Due, generation, source: &str| {
            WholePass::narrows(last, due, Some(generation), Some(source), resync).is_some()
        };
        assert!(narrows(Some(&last), &due, 2, "10"));
        assert!(!narrows(None, &due, 2, "10"), "no whole pass yet");
        assert!(!narrows(Some(&last), &due, 3, "10"), "the spec changed");
        assert!(!narrows(Some(&last), &due, 2, "11"), "the source changed");
        let whole = Due {
            whole: true,
            ..due.clone()
        };
        assert!(!narrows(Some(&last), &whole, 2, "10"));
        assert!(!narrows(Some(&last), &Due::default(), 2, "10"), "a resync");
        let overdue = WholePass {
            finished: Instant::now() - resync,
            ..last.clone()
        };
        assert!(!narrows(Some(&overdue), &due, 2, "10"), "the resync is due");
    }

    #[test]
    fn a_narrow_pass_keeps_the_problems_it_did_not_look_at() {
        let mut last = last(&[
            ("team-1", Outcome::Failed("timeout".into())),
            ("team-2", Outcome::Conflict("not ours".into())),
            ("untargeted", Outcome::Failed("timeout".into())),
        ]);
        assert_eq!(last.desired(), 4);
        let looked_at = names(&["team-1", "team-4", "untargeted"]);
        let this_pass = BTreeMap::from([
            ("team-1".to_string(), Outcome::InSync),
            ("team-4".to_string(), Outcome::Failed("forbidden".into())),
        ]);
        last.record_narrow(&looked_at, &names(&["team-1", "team-4"]), &this_pass);
        assert_eq!(
            last.desired(),
            4,
            "team-4 became a target, untargeted no longer is"
        );
        assert_eq!(
            last.problems,
            BTreeMap::from([
                ("team-2".to_string(), Outcome::Conflict("not ours".into())),
                ("team-4".to_string(), Outcome::Failed("forbidden".into())),
            ]),
            "fixed and untargeted namespaces are forgotten, others kept"
        );
    }
}
