//! The resource versions this process's own writes left on copies, so that
//! the watch echo of a write wakes nobody and a copy changed by someone else
//! is looked at again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::copy_index::shared_namespace;
use crate::api::ANNOTATION_OWNER_UID;
use crate::domain::sync_steps::Written;
use crate::locks::lock;

/// What we wrote into one Replika's copies, by namespace (shared with the copy indexes).
type ByNamespace = HashMap<Arc<str>, Written>;

/// Resource versions of copies as we last wrote them, by Replika UID and namespace.
/// A copy whose resource version moved on was changed by someone else and is re-applied.
#[derive(Default)]
pub struct WrittenVersions(Mutex<HashMap<Box<str>, ByNamespace>>);

impl WrittenVersions {
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
        let mut owners = self.lock();
        let held = owners
            .get_mut(owner_uid)
            .and_then(|copies| copies.get_mut(namespace));
        if let (Some(written), Some(upgraded)) = (held, upgraded)
            && *written.latest == *created
        {
            written.created = Some(std::mem::replace(&mut written.latest, upgraded.into()));
        }
    }

    /// Whether an object is exactly as the engine's own writes left it (by owner and namespace).
    pub fn is_own_write(&self, metadata: &ObjectMeta) -> bool {
        let (Some(owner_uid), Some(namespace), Some(version)) = (
            metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(ANNOTATION_OWNER_UID)),
            metadata.namespace.as_deref(),
            metadata.resource_version.as_deref(),
        ) else {
            return false;
        };
        self.get(owner_uid, namespace)
            .is_some_and(|written| written.is_ours(version))
    }

    /// Drops everything remembered for one Replika.
    pub fn forget_owner(&self, owner_uid: &str) {
        self.lock().remove(owner_uid);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, ByNamespace>> {
        lock(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
