//! Author attestations: who admitted a Replika, signed so that nobody but the
//! operator can forge or move one.
//!
//! The mutating webhook records the requesting user in an annotation and signs
//! it, together with the Replika's identity and its *scope* (the source and the
//! target rule, after defaults), with a key only the operator holds. The
//! reconciler verifies the signature before every sync and then asks the API
//! server whether that author may still do what the Replika does. A Replika
//! written past the webhook, or whose scope was changed past it, carries no
//! valid attestation and is never replicated.

use std::collections::BTreeMap;

use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::validation::ReplikaPlan;

/// The identity the API server authenticated for the Replika's last admitted write.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Author {
    pub username: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The two annotation values that make an attestation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attestation {
    /// The author as JSON: readable by users (`kubectl get -o yaml`).
    pub author: String,
    /// `v1:` and the hex HMAC-SHA256 of the signed message.
    pub signature: String,
}

/// Why a Replika's attestation does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AttestationProblem {
    #[error("it carries no author attestation: it was not admitted by Replika's webhook")]
    Missing,
    #[error("its author annotation is not valid JSON: {0}")]
    Malformed(String),
    #[error(
        "its author attestation does not match: the Replika was changed without Replika's webhook, or the attestation was copied from elsewhere"
    )]
    Mismatch,
}

const SIGNATURE_VERSION: &str = "v1:";

/// Signs and verifies attestations with the operator's key.
pub struct Signer {
    key: hmac::Key,
}

impl Signer {
    pub fn new(secret: &[u8]) -> Self {
        Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The attestation that `author` admitted the Replika `namespace/name` with `plan`.
    pub fn attest(
        &self,
        namespace: &str,
        name: &str,
        plan: &ReplikaPlan,
        author: &Author,
    ) -> Attestation {
        let author = serde_json::to_string(author).expect(
            "an Author is strings, lists and maps with string keys, which always serialize",
        );
        let tag = hmac::sign(&self.key, &message(namespace, name, plan, &author));
        Attestation {
            signature: format!("{SIGNATURE_VERSION}{}", hex(tag.as_ref())),
            author,
        }
    }

    /// The author of the Replika `namespace/name` with `plan`, if `attestation` was
    /// made by this key for exactly that Replika and scope.
    pub fn verify(
        &self,
        namespace: &str,
        name: &str,
        plan: &ReplikaPlan,
        attestation: Option<&Attestation>,
    ) -> Result<Author, AttestationProblem> {
        let attestation = attestation.ok_or(AttestationProblem::Missing)?;
        let tag = attestation
            .signature
            .strip_prefix(SIGNATURE_VERSION)
            .and_then(unhex)
            .ok_or(AttestationProblem::Mismatch)?;
        hmac::verify(
            &self.key,
            &message(namespace, name, plan, &attestation.author),
            &tag,
        )
        .map_err(|_| AttestationProblem::Mismatch)?;
        serde_json::from_str(&attestation.author)
            .map_err(|error| AttestationProblem::Malformed(error.to_string()))
    }
}

/// Marks a name signed before the API server generated it: no real name holds it.
const GENERATED: char = '*';

/// The name to sign for a Replika being admitted: its name, or, for a create
/// with `metadata.generateName` (the API server makes the name up after
/// admission), the prefix followed by `*`. Such an attestation holds for any
/// name with that prefix, in the same namespace, for the same scope and author.
pub fn name_to_sign(name: &str, generate_name: Option<&str>) -> String {
    match generate_name {
        Some(prefix) if name.is_empty() => format!("{prefix}{GENERATED}"),
        _ => name.to_string(),
    }
}

impl Signer {
    /// [`Signer::verify`] for a stored Replika, which may have been attested
    /// before its name was generated from `generate_name`.
    pub fn verify_stored(
        &self,
        namespace: &str,
        name: &str,
        generate_name: Option<&str>,
        plan: &ReplikaPlan,
        attestation: Option<&Attestation>,
    ) -> Result<Author, AttestationProblem> {
        let exact = self.verify(namespace, name, plan, attestation);
        match generate_name {
            Some(prefix) if exact.is_err() && name.starts_with(prefix) => self
                .verify(
                    namespace,
                    &name_to_sign("", Some(prefix)),
                    plan,
                    attestation,
                )
                .or(exact),
            _ => exact,
        }
    }
}

/// What is signed: the Replika's identity, its scope, and the author, each
/// unambiguously delimited (JSON), so no two different inputs share a message.
fn message(namespace: &str, name: &str, plan: &ReplikaPlan, author: &str) -> Vec<u8> {
    let source = &plan.source;
    let targets = &plan.targets;
    json!({
        "replika": [namespace, name],
        "source": [source.gvk.group, source.gvk.version, source.gvk.kind, source.namespace, source.name],
        "targets": {
            "matchAll": targets.match_all,
            "replicateIn": targets.replicate_in,
            "excludeFrom": targets.exclude_from,
            "selector": targets.selector,
        },
        "author": author,
    })
    .to_string()
    .into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ReplikaSpec;
    use crate::domain::validation::validate;

    fn plan(targets: &str) -> ReplikaPlan {
        let spec: ReplikaSpec = serde_json::from_value(json!({
            "synchronization": {"time": "30s"},
            "source": {"group": "", "version": "v1", "kind": "Secret", "name": "db"},
            "target": {"namespaces": {"matchAll": false, "replicateIn": [targets]}},
        }))
        .expect("a spec");
        validate(&spec, "team-a").expect("a valid spec")
    }

    fn alice() -> Author {
        Author {
            username: "alice".into(),
            groups: vec!["system:authenticated".into()],
            ..Author::default()
        }
    }

    #[test]
    fn an_attestation_verifies_for_the_same_replika_and_scope() {
        let signer = Signer::new(b"key");
        let attestation = signer.attest("team-a", "db", &plan("team-b"), &alice());
        assert_eq!(
            signer.verify("team-a", "db", &plan("team-b"), Some(&attestation)),
            Ok(alice())
        );
    }

    #[test]
    fn a_changed_scope_name_author_or_key_does_not_verify() {
        let signer = Signer::new(b"key");
        let attestation = signer.attest("team-a", "db", &plan("team-b"), &alice());
        let mismatch = Err(AttestationProblem::Mismatch);
        assert_eq!(
            signer.verify("team-a", "db", &plan("team-*"), Some(&attestation)),
            mismatch
        );
        assert_eq!(
            signer.verify("team-a", "other", &plan("team-b"), Some(&attestation)),
            mismatch
        );
        let forged = Attestation {
            author: attestation.author.replace("alice", "admin"),
            ..attestation.clone()
        };
        assert_eq!(
            signer.verify("team-a", "db", &plan("team-b"), Some(&forged)),
            mismatch
        );
        assert_eq!(
            Signer::new(b"other key").verify("team-a", "db", &plan("team-b"), Some(&attestation)),
            mismatch
        );
    }

    #[test]
    fn an_attestation_made_before_the_name_was_generated_holds_for_that_prefix_only() {
        let signer = Signer::new(b"key");
        let signed = name_to_sign("", Some("db-"));
        let attestation = signer.attest("team-a", &signed, &plan("team-b"), &alice());
        let verify = |name: &str, generate_name: Option<&str>| {
            signer
                .verify_stored(
                    "team-a",
                    name,
                    generate_name,
                    &plan("team-b"),
                    Some(&attestation),
                )
                .map(|author| author.username)
        };
        assert_eq!(verify("db-x7k2p", Some("db-")), Ok("alice".into()));
        assert!(
            verify("db-x7k2p", None).is_err(),
            "only for a generated name"
        );
        assert!(
            verify("web-x7k2p", Some("db-")).is_err(),
            "only with that prefix"
        );
        assert!(
            verify("web-x7k2p", Some("web-")).is_err(),
            "only the prefix signed"
        );
        assert_eq!(
            name_to_sign("db", Some("db-")),
            "db",
            "a given name is signed as it is"
        );
    }

    #[test]
    fn a_missing_or_garbled_signature_does_not_verify() {
        let signer = Signer::new(b"key");
        assert_eq!(
            signer.verify("team-a", "db", &plan("team-b"), None),
            Err(AttestationProblem::Missing)
        );
        for signature in ["", "v1:", "v1:zz", "v2:00", "v1:é"] {
            let garbled = Attestation {
                author: "{}".into(),
                signature: signature.into(),
            };
            assert_eq!(
                signer.verify("team-a", "db", &plan("team-b"), Some(&garbled)),
                Err(AttestationProblem::Mismatch),
                "{signature:?}"
            );
        }
    }
}
