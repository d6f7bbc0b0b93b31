//! The resource versions this process's own writes left on copies, so that
//! the watch echo of a write wakes nobody and a copy changed by someone else
//! is looked at again.
//!
//! The echo of a write can arrive before the write's answer: a change seen
//! while a write to that copy is in flight ([`WrittenVersions::write_started`])
//! is held, and judged against the versions the write recorded once it is
//! answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::copy_index::shared_namespace;
use crate::api::ANNOTATION_OWNER_UID;
use crate::domain::sync_steps::Written;
use crate::locks::lock;

/// What we wrote into one Replika's copies, by namespace (shared with the copy indexes).
type ByNamespace = HashMap<Arc<str>, Written>;

/// Wakes the passes that a change of a copy concerns.
pub type Wake = Box<dyn FnOnce() + Send>;

/// Identifies one copy: its Replika's UID and its namespace.
type CopyKey = (Box<str>, Box<str>);

/// The writes in flight to one copy, and the changes seen meanwhile.
#[derive(Default)]
struct InFlight {
    writes: usize,
    /// The version each held change showed, and whom it wakes unless ours.
    held: Vec<(Box<str>, Wake)>,
}

/// Resource versions of copies as we last wrote them, by Replika UID and namespace.
/// A copy whose resource version moved on was changed by someone else and is re-applied.
#[derive(Default)]
pub struct WrittenVersions {
    versions: Mutex<HashMap<Box<str>, ByNamespace>>,
    in_flight: Mutex<HashMap<CopyKey, InFlight>>,
}

/// A write to one copy in flight; when dropped (after the write recorded its
/// answer), the changes seen meanwhile that are not ours wake their passes.
pub struct WriteInFlight<'a> {
    written: &'a WrittenVersions,
    key: CopyKey,
}

impl Drop for WriteInFlight<'_> {
    fn drop(&mut self) {
        let held = {
            let mut in_flight = lock(&self.written.in_flight);
            let Some(copy) = in_flight.get_mut(&self.key) else {
                return;
            };
            copy.writes -= 1;
            if copy.writes > 0 {
                return;
            }
            let held = std::mem::take(&mut copy.held);
            in_flight.remove(&self.key);
            held
        };
        let written = self.written.get(&self.key.0, &self.key.1);
        for (version, wake) in held {
            if !written.as_ref().is_some_and(|ours| ours.is_ours(&version)) {
                wake();
            }
        }
    }
}

impl WrittenVersions {
    /// Marks a write of `owner_uid`'s copy in `namespace` as in flight until
    /// the returned guard is dropped.
    pub(super) fn write_started(&self, owner_uid: &str, namespace: &str) -> WriteInFlight<'_> {
        let key: CopyKey = (owner_uid.into(), namespace.into());
        lock(&self.in_flight).entry(key.clone()).or_default().writes += 1;
        WriteInFlight { written: self, key }
    }

    pub(super) fn get(&self, owner_uid: &str, namespace: &str) -> Option<Written> {
        self.lock().get(owner_uid)?.get(namespace).cloned()
    }

    pub(super) fn set(&self, owner_uid: &str, namespace: &str, resource_version: Option<&str>) {
        let mut owners = self.lock();
        let Some(latest) = resource_version else {
            if let Some(copies) = owners.get_mut(owner_uid) {
                copies.remove(namespace);
                if copies.is_empty() {
                    owners.remove(owner_uid);
                }
            }
            return;
        };
        let written = Written {
            latest: latest.into(),
            created: None,
        };
        match owners.get_mut(owner_uid) {
            Some(copies) => match copies.get_mut(namespace) {
                Some(held) => *held = written,
                None => {
                    copies.insert(shared_namespace(namespace), written);
                }
            },
            None => {
                let copies = HashMap::from([(shared_namespace(namespace), written)]);
                owners.insert(owner_uid.into(), copies);
            }
        }
    }

    /// Records the ownership upgrade of a copy we created at `created`.
    pub(super) fn upgraded(
        &self,
        owner_uid: &str,
        namespace: &str,
        created: &str,
        upgraded: Option<&str>,
    ) {
        let Some(upgraded) = upgraded else {
            return;
        };
        if let Some(written) = self
            .lock()
            .get_mut(owner_uid)
            .and_then(|copies| copies.get_mut(namespace))
            && *written.latest == *created
        {
            written.created = Some(std::mem::replace(&mut written.latest, upgraded.into()));
        }
    }

    /// Whether an object is exactly as the engine's own writes left it (by
    /// owner and namespace); what the tests inspect.
    #[cfg(test)]
    pub(super) fn is_own_write(&self, metadata: &ObjectMeta) -> bool {
        copy_version(metadata).is_some_and(|(owner_uid, namespace, version)| {
            self.is_ours(owner_uid, namespace, version)
        })
    }

    /// Calls `wake` for a change of the copy `metadata` unless it is the echo
    /// of our own write; while a write to that copy is in flight, the change
    /// is held and judged once the write has recorded its answer.
    pub fn wake_unless_own_write(&self, metadata: &ObjectMeta, wake: Wake) {
        let Some((owner_uid, namespace, version)) = copy_version(metadata) else {
            return wake();
        };
        if self.is_ours(owner_uid, namespace, version) {
            return;
        }
        let key = (owner_uid.into(), namespace.into());
        if let Some(copy) = lock(&self.in_flight).get_mut(&key) {
            copy.held.push((version.into(), wake));
            return;
        }
        wake();
    }

    /// Whether `owner_uid`'s copy in `namespace` at `version` is as our writes left it.
    fn is_ours(&self, owner_uid: &str, namespace: &str, version: &str) -> bool {
        self.get(owner_uid, namespace)
            .is_some_and(|written| written.is_ours(version))
    }

    /// Drops everything remembered for one Replika.
    pub fn forget_owner(&self, owner_uid: &str) {
        self.lock().remove(owner_uid);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, ByNamespace>> {
        lock(&self.versions)
    }
}

/// The owner UID, namespace and resource version of a copy.
fn copy_version(metadata: &ObjectMeta) -> Option<(&str, &str, &str)> {
    Some((
        metadata.annotations.as_ref()?.get(ANNOTATION_OWNER_UID)?,
        metadata.namespace.as_deref()?,
        metadata.resource_version.as_deref()?,
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// The engine's record of its writes, and a copy watch beside it that
    /// counts the passes its changes wake.
    #[derive(Default)]
    struct Watched {
        written: WrittenVersions,
        woken: Arc<AtomicUsize>,
    }

    impl Watched {
        /// The watch sees `uid-1`'s copy in `namespace` at `version`.
        fn sees(&self, namespace: &str, version: &str) {
            let woken = self.woken.clone();
            self.written.wake_unless_own_write(
                &copy("uid-1", namespace, version),
                Box::new(move || {
                    woken.fetch_add(1, Ordering::SeqCst);
                }),
            );
        }

        /// How many changes have woken passes so far.
        fn woken(&self) -> usize {
            self.woken.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn the_echo_of_a_write_that_arrives_before_its_answer_wakes_nobody() {
        let watched = Watched::default();
        let write = watched.written.write_started("uid-1", "team-a");
        watched.sees("team-a", "10");
        watched.written.set("uid-1", "team-a", Some("10"));
        drop(write);
        assert_eq!(watched.woken(), 0);
        // Once answered, the same version is known at once.
        watched.sees("team-a", "10");
        assert_eq!(watched.woken(), 0);
    }

    #[test]
    fn a_change_by_someone_else_during_our_write_wakes_once_the_write_is_answered() {
        let watched = Watched::default();
        let first = watched.written.write_started("uid-1", "team-a");
        let second = watched.written.write_started("uid-1", "team-a");
        watched.sees("team-a", "9");
        watched.written.set("uid-1", "team-a", Some("10"));
        drop(first);
        assert_eq!(watched.woken(), 0, "held while a write is in flight");
        drop(second);
        assert_eq!(watched.woken(), 1);
        // Without a write in flight, a change not ours wakes at once.
        watched.sees("team-a", "11");
        assert_eq!(watched.woken(), 2);
        // A write to another namespace holds nothing here.
        let _other = watched.written.write_started("uid-1", "team-b");
        watched.sees("team-a", "12");
        assert_eq!(watched.woken(), 3);
    }

    #[test]
    fn an_upgrade_s_echo_seen_while_the_apply_after_it_is_in_flight_wakes_nobody() {
        let watched = Watched::default();
        let written = &watched.written;
        written.set("uid-1", "team-a", Some("10"));
        let upgrade = written.write_started("uid-1", "team-a");
        written.upgraded("uid-1", "team-a", "10", Some("11"));
        drop(upgrade);
        let apply = written.write_started("uid-1", "team-a");
        watched.sees("team-a", "11");
        written.set("uid-1", "team-a", Some("12"));
        drop(apply);
        assert_eq!(watched.woken(), 0);
    }

    fn copy(owner_uid: &str, namespace: &str, version: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(namespace.into()),
            resource_version: Some(version.into()),
            annotations: Some([(ANNOTATION_OWNER_UID.to_string(), owner_uid.to_string())].into()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_copy_is_our_own_write_only_at_the_versions_we_wrote() {
        let written = WrittenVersions::default();
        written.set("uid-1", "team-a", Some("10"));
        assert!(written.is_own_write(&copy("uid-1", "team-a", "10")));
        assert!(!written.is_own_write(&copy("uid-1", "team-a", "11")));
        assert!(!written.is_own_write(&copy("uid-1", "team-b", "10")));
        assert!(!written.is_own_write(&copy("uid-2", "team-a", "10")));
    }

    #[test]
    fn the_echo_of_a_create_stays_ours_after_its_ownership_upgrade() {
        let written = WrittenVersions::default();
        written.set("uid-1", "team-a", Some("10"));
        written.upgraded("uid-1", "team-a", "10", Some("12"));
        assert!(written.is_own_write(&copy("uid-1", "team-a", "10")));
        assert!(written.is_own_write(&copy("uid-1", "team-a", "12")));
        // A later write of ours leaves only its own version ours.
        written.set("uid-1", "team-a", Some("15"));
        assert!(!written.is_own_write(&copy("uid-1", "team-a", "10")));
        assert!(written.is_own_write(&copy("uid-1", "team-a", "15")));
    }

    #[test]
    fn an_upgrade_of_a_version_we_no_longer_hold_is_not_recorded() {
        let written = WrittenVersions::default();
        written.set("uid-1", "team-a", Some("11"));
        written.upgraded("uid-1", "team-a", "10", Some("12"));
        assert!(!written.is_own_write(&copy("uid-1", "team-a", "12")));
        written.forget_owner("uid-1");
        assert!(!written.is_own_write(&copy("uid-1", "team-a", "11")));
    }

    #[test]
    fn a_removed_copy_is_forgotten_and_its_owners_others_kept() {
        let written = WrittenVersions::default();
        written.set("uid-1", "team-a", Some("10"));
        written.set("uid-1", "team-b", Some("20"));
        written.set("uid-2", "team-a", Some("30"));
        written.set("uid-1", "team-a", None);
        assert!(!written.is_own_write(&copy("uid-1", "team-a", "10")));
        assert!(written.is_own_write(&copy("uid-1", "team-b", "20")));
        assert!(written.is_own_write(&copy("uid-2", "team-a", "30")));
        written.set("uid-1", "team-b", None);
        assert!(
            written.lock().get("uid-1").is_none(),
            "an owner without copies takes no room"
        );
    }
}
