//! The requests that bring one copy in line, one at a time: [`next_step`]
//! looks at what is known of the copy now (what the cache or the last
//! response showed, what this process wrote, what the template holds) and
//! names the next request; the engine's writer makes it, learns from the
//! answer, and asks again, until a step ends the sync.

use std::fmt;
use std::ops::Deref;

use super::copy::Owner;
use super::plan::{Found, Scope, Step, step};
use crate::api::ConflictPolicy;

/// What is known of an existing object named like the copy.
#[derive(Clone, Copy, Debug)]
pub struct CopyFacts<'a> {
    pub found: Found<'a>,
    pub resource_version: &'a str,
    /// Its field ownership still has our create's `Update` entry, to upgrade to `Apply`.
    pub needs_ownership_upgrade: bool,
}

/// The longest resource version kept inline in a [`Version`].
const INLINE_VERSION: usize = 22;

/// A resource version: opaque, only ever compared for equality. One of up to
/// 22 bytes (the API server's are decimal numbers of at most 20 digits) is
/// kept inline, a longer one on the heap; 24 bytes either way, so the
/// engine's per-copy records hold theirs without an allocation.
#[derive(Clone)]
pub struct Version(VersionText);

/// A [`Version`]'s text: inline when it fits, else on the heap.
#[derive(Clone)]
enum VersionText {
    Inline {
        len: u8,
        bytes: [u8; INLINE_VERSION],
    },
    Heap(Box<str>),
}

impl From<&str> for Version {
    fn from(text: &str) -> Self {
        Version(match u8::try_from(text.len()) {
            Ok(len) if text.len() <= INLINE_VERSION => {
                let mut bytes = [0; INLINE_VERSION];
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                VersionText::Inline { len, bytes }
            }
            _ => VersionText::Heap(text.into()),
        })
    }
}

impl Deref for Version {
    type Target = str;

    fn deref(&self) -> &str {
        match &self.0 {
            VersionText::Inline { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)])
                .expect("an inline version is a whole str's bytes"),
            VersionText::Heap(text) => text,
        }
    }
}

impl Default for Version {
    fn default() -> Self {
        Version::from("")
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Version {}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// The resource versions our own last writes left on a copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// The resource version of our latest write.
    pub latest: Version,
    /// The version our create left, when our ownership upgrade (which changes
    /// no content) followed it: its watch echo may still be on the way.
    pub created: Option<Version>,
}

impl Written {
    /// Whether `version` is the create that our ownership upgrade superseded.
    pub fn superseded(&self, version: &str) -> bool {
        self.created.as_deref() == Some(version)
    }

    /// Whether the copy at `version` is exactly as our writes left it.
    pub fn is_ours(&self, version: &str) -> bool {
        *self.latest == *version || self.superseded(version)
    }
}

/// What happened earlier in this sync that the facts alone do not show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The copy was read from the API server once already: never read twice.
    pub read: bool,
    /// A guarded write found the copy other than the cache showed it.
    pub cache_stale: bool,
    /// The apply was refused because the copy is immutable.
    pub refused_as_immutable: bool,
}

/// The next request for one copy, or the end of its sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncStep {
    /// No object there: create the copy (POST, which fails rather than overwrite).
    Create,
    /// Nothing to write: the copy is ours and current.
    InSync,
    /// Turn our create's `Update` field-ownership entry into an `Apply` one,
    /// before the first apply to the copy, so that the apply can remove keys.
    UpgradeOwnership,
    /// Server-side apply of the copy over the object (its UID as precondition).
    Apply,
    /// Read the whole copy before writing: it is marked current but at a
    /// version this process did not write (a previous leader's, or a hand edit).
    ReadFirst,
    /// Read the copy's metadata again: the cache proved out of date.
    Reread,
    /// Delete the immutable copy and create it again.
    Replace,
    /// Leave the object alone and report why.
    Conflict(String),
    /// Being deleted: wait.
    Wait(String),
}

/// The next request for the copy `copy` (absent: no object there) of the
/// template whose content hash is `template_hash`.
pub fn next_step(
    copy: Option<CopyFacts<'_>>,
    written: &Written,
    template_hash: &str,
    owner: &Owner,
    conflict: ConflictPolicy,
    scope: &Scope,
    progress: Progress,
) -> SyncStep {
    if progress.cache_stale && !progress.read {
        return SyncStep::Reread;
    }
    let Some(copy) = copy else {
        return SyncStep::Create;
    };
    if progress.refused_as_immutable {
        return SyncStep::Replace;
    }
    match step(copy.found, owner, conflict, scope) {
        Step::Conflict(why) => SyncStep::Conflict(why),
        Step::Wait(why) => SyncStep::Wait(why),
        Step::Adopt => SyncStep::Apply,
        Step::Sync => {
            let version = copy.resource_version;
            let untouched = written.is_ours(version);
            let marked_current = copy.found.marks.content_hash.as_deref() == Some(template_hash);
            if marked_current && !untouched && !progress.read {
                SyncStep::ReadFirst
            } else if untouched && marked_current {
                SyncStep::InSync
            } else if copy.needs_ownership_upgrade && !written.superseded(version) {
                // Only an apply needs it: a copy never changed keeps its create's entry.
                SyncStep::UpgradeOwnership
            } else {
                SyncStep::Apply
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        ANNOTATION_CONTENT_HASH, ANNOTATION_OWNER, ANNOTATION_OWNER_UID, CREATED_BY_VALUE,
        LABEL_CREATED_BY,
    };
    use crate::domain::copy::CopyMarks;

    fn owner() -> Owner {
        Owner {
            namespace: "platform".into(),
            name: "creds".into(),
            uid: "uid-1".into(),
        }
    }

    /// Our copy, marked with content hash `hash`.
    fn ours(hash: &str) -> CopyMarks {
        let labels = [(LABEL_CREATED_BY.to_string(), CREATED_BY_VALUE.to_string())].into();
        let annotations = [
            (ANNOTATION_OWNER.to_string(), "platform/creds".to_string()),
            (ANNOTATION_OWNER_UID.to_string(), "uid-1".to_string()),
            (ANNOTATION_CONTENT_HASH.to_string(), hash.to_string()),
        ]
        .into();
        CopyMarks::read(&labels, &annotations)
    }

    fn written(latest: &str, created: Option<&str>) -> Written {
        Written {
            latest: latest.into(),
            created: created.map(Version::from),
        }
    }

    /// One row: the copy's marks (`None`: no object), its version, whether its
    /// ownership needs the upgrade, what we wrote, the progress so far, and
    /// the step expected.
    struct Case {
        what: &'static str,
        marks: Option<CopyMarks>,
        version: &'static str,
        needs_upgrade: bool,
        written: Written,
        policy: ConflictPolicy,
        progress: Progress,
        expected: SyncStep,
    }

    #[test]
    fn every_situation_of_a_copy_has_one_next_step() {
        let current = || Some(ours("h1"));
        let none = Written::default();
        let read = Progress {
            read: true,
            ..Default::default()
        };
        let refuse = ConflictPolicy::Refuse;
        let cases = [
            Case {
                what: "no object: create",
                marks: None,
                version: "",
                needs_upgrade: false,
                written: none.clone(),
                policy: refuse,
                progress: Progress::default(),
                expected: SyncStep::Create,
            },
            Case {
                what: "current and as we wrote it: nothing",
                marks: current(),
                version: "10",
                needs_upgrade: false,
                written: written("10", None),
                policy: refuse,
                progress: Progress::default(),
                expected: SyncStep::InSync,
            },
            Case {
                what: "the echo of our create after its upgrade: nothing",
                marks: current(),
                version: "10",
                needs_upgrade: true,
                written: written("12", Some("10")),
                policy: refuse,
                progress: Progress::default(),
                expected: SyncStep::InSync,
            },
            Case {
                what: "current as our create left it: nothing, its ownership waits for a change",
                marks: current(),
                version: "10",
                needs_upgrade: true,
                written: written("10", None),
                policy: refuse,
                progress: Progress::default(),
                expected: SyncStep::InSync,
            },
            Case {
                what: "an old hash on our create's version: upgrade, then apply",
                marks: Some(ours("h0")),
                version: "10",
                needs_upgrade: true,
                written: written("10", None),
                policy: refuse,
                progress: Progress::default(),
                expected: SyncStep::UpgradeOwnership,
            },
            Case {
                what: "marked current at a version we did not write: read first",
                marks: current(),
                version: "11",
                needs_upgrade: false,
                written: written("10", None),
                policy: refuse,
                progress: Progress::default(),
                expected: SyncStep::ReadFirst,
            },
            Case {
                what: "the same after a restart (nothing written yet): read first",
                marks: current(),
                version: "11",
                needs_upgrade: true,
                written: none.clone(),
                policy: refuse,
                progress: Progress::default(),
                expected: SyncStep::ReadFirst,
            },
            Case {
                what: "read, and not held: apply",
                marks: current(),
                version: "11",
                needs_upgrade: false,
                written: written("10", None),
                policy: refuse,
                progress: read,
                expected: SyncStep::Apply,
            },
            Case {
                what: "read, not ours, ownership not upgraded: upgrade first",
                marks: current(),
                version: "11",
                needs_upgrade: true,
                written: none.clone(),
                policy: refuse,
                progress: read,
                expected: SyncStep::UpgradeOwnership,
            },
            Case {
                what: "marked with an old hash: apply",
                marks: Some(ours("h0")),
                version: "10",
                needs_upgrade: false,
                written: written("10", None),
                policy: refuse,
                progress: Progress::default(),
                expected: SyncStep::Apply,
            },
            Case {
                what: "a guarded write found the cache stale: read again",
                marks: current(),
                version: "10",
                needs_upgrade: true,
                written: written("10", None),
                policy: refuse,
                progress: Progress {
                    cache_stale: true,
                    ..Default::default()
                },
                expected: SyncStep::Reread,
            },
            Case {
                what: "a create found an object the cache did not show: read it",
                marks: None,
                version: "",
                needs_upgrade: false,
                written: none.clone(),
                policy: refuse,
                progress: Progress {
                    cache_stale: true,
                    ..Default::default()
                },
                expected: SyncStep::Reread,
            },
            Case {
                what: "the apply was refused as immutable: replace",
                marks: Some(ours("h0")),
                version: "10",
                needs_upgrade: false,
                written: written("10", None),
                policy: refuse,
                progress: Progress {
                    refused_as_immutable: true,
                    ..Default::default()
                },
                expected: SyncStep::Replace,
            },
            Case {
                what: "a user's object, policy Refuse: conflict",
                marks: Some(CopyMarks::default()),
                version: "10",
                needs_upgrade: false,
                written: none.clone(),
                policy: refuse,
                progress: Progress::default(),
                expected: SyncStep::Conflict(
                    "an object with this name exists and is not managed by Replika (policy.conflict: Refuse)"
                        .into(),
                ),
            },
            Case {
                what: "a user's object, policy Adopt: apply",
                marks: Some(CopyMarks::default()),
                version: "10",
                needs_upgrade: false,
                written: none.clone(),
                policy: ConflictPolicy::Adopt,
                progress: Progress::default(),
                expected: SyncStep::Apply,
            },
        ];
        let scope = Scope::default();
        for case in cases {
            let facts = case.marks.as_ref().map(|marks| CopyFacts {
                found: Found {
                    namespace: "team-a",
                    marks,
                    deleting: false,
                },
                resource_version: case.version,
                needs_ownership_upgrade: case.needs_upgrade,
            });
            assert_eq!(
                next_step(
                    facts,
                    &case.written,
                    "h1",
                    &owner(),
                    case.policy,
                    &scope,
                    case.progress
                ),
                case.expected,
                "{}",
                case.what
            );
        }
    }

    #[test]
    fn a_copy_being_deleted_is_waited_for() {
        let marks = ours("h1");
        let facts = CopyFacts {
            found: Found {
                namespace: "team-a",
                marks: &marks,
                deleting: true,
            },
            resource_version: "10",
            needs_ownership_upgrade: false,
        };
        let next = next_step(
            Some(facts),
            &Written::default(),
            "h1",
            &owner(),
            ConflictPolicy::Refuse,
            &Scope::default(),
            Progress::default(),
        );
        assert!(matches!(next, SyncStep::Wait(_)), "{next:?}");
    }

    #[test]
    fn a_version_keeps_its_text_whatever_its_length_and_a_short_one_inline() {
        let longest_inline = "9".repeat(INLINE_VERSION);
        let long = "9".repeat(INLINE_VERSION + 1);
        for text in ["", "10", "ab\u{e9}", &longest_inline, &long] {
            let version = Version::from(text);
            assert_eq!(&*version, text);
            assert_eq!(version, Version::from(text));
        }
        assert_ne!(Version::from("10"), Version::from("1"));
        assert!(matches!(
            Version::from(longest_inline.as_str()).0,
            VersionText::Inline { .. }
        ));
        assert!(matches!(
            Version::from(long.as_str()).0,
            VersionText::Heap(_)
        ));
        assert_eq!(&*Version::default(), "");
    }
}
