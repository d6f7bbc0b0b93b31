//! [`TestNamespace`]: a namespace of its own for each test.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};

/// Marks namespaces made by tests, so that a long-lived plane can be tidied
/// with `kubectl delete namespace -l app.kubernetes.io/created-by=testenv`.
const CREATED_BY: (&str, &str) = ("app.kubernetes.io/created-by", "testenv");

/// A fresh namespace per test, named `<prefix>-<random>`; created on construction.
///
/// It is not deleted afterwards: a private plane disappears with the test
/// binary, and on a long-lived one what a failed test left is worth seeing.
#[derive(Debug, Clone)]
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    /// Creates the namespace; the API server picks the random suffix
    /// (`generateName`), so names never collide. `prefix` must be a valid
    /// start of a DNS label (lower-case letters, digits and `-`).
    ///
    /// # Panics
    /// If the namespace cannot be created.
    pub async fn new(client: &kube::Client, prefix: &str) -> TestNamespace {
        let namespace = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{prefix}-")),
                labels: Some(BTreeMap::from([(
                    CREATED_BY.0.to_owned(),
                    CREATED_BY.1.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let created = Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|error| panic!("cannot create a namespace {prefix}-*: {error}"));
        TestNamespace {
            name: created
                .metadata
                .name
                .expect("the API server names what it creates"),
        }
    }
}
