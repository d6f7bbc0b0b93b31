//! [`Identity`]: someone other than the admin, with a kubeconfig of their own,
//! and the [`ControlPlane`] methods that hand them out.

use std::{
    fmt::Debug,
    fs,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU64, Ordering},
};

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Namespace, ServiceAccount},
};
use kube::{
    Api, Resource,
    api::{ObjectMeta, PostParams},
    config::Kubeconfig,
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    ControlPlane,
    kubeconfig::{self, Admin},
    kubectl::Kubectl,
};

/// How long ServiceAccount tokens from [`ControlPlane::service_account`] last.
const TOKEN_LIFETIME_SECONDS: i64 = 3600;

/// A user or ServiceAccount that tests act as, through kube-rs or kubectl.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The name the API server knows this identity by, e.g. `alice` or
    /// `system:serviceaccount:ns:name`.
    pub username: String,
    /// A kubeconfig that authenticates as this identity.
    pub kubeconfig: PathBuf,
    kubectl: Kubectl,
}

impl Identity {
    pub(crate) fn new(username: &str, kubeconfig: PathBuf, kubectl: Kubectl) -> Identity {
        Identity {
            username: username.to_owned(),
            kubeconfig,
            kubectl,
        }
    }

    /// A new client acting as this identity.
    ///
    /// # Panics
    /// If the kubeconfig cannot be read.
    pub async fn client(&self) -> kube::Client {
        kubeconfig::client(&self.kubeconfig)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "cannot make a client from {}: {error:#}",
                    self.kubeconfig.display()
                )
            })
    }

    /// `kubectl --kubeconfig=<this identity's kubeconfig>`, ready for more arguments.
    pub fn kubectl(&self) -> Command {
        self.kubectl.command(&self.kubeconfig)
    }
}

impl ControlPlane {
    /// An ordinary user called `name` in `groups` (and `system:authenticated`),
    /// with no rights until a test grants them with RBAC.
    ///
    /// Its kubeconfig authenticates as the admin and impersonates the user, so
    /// it works on any plane, including one from `REPLIKA_TEST_KUBECONFIG`;
    /// the API server authorizes each request for the impersonated user only.
    ///
    /// # Panics
    /// If the kubeconfig cannot be written.
    pub async fn user(&self, name: &str, groups: &[&str]) -> Identity {
        let path = self.identity_path(name).with_extension("kubeconfig");
        self.identity(name, path, |admin| admin.impersonating(name, groups))
    }

    /// The ServiceAccount `namespace/name` (both created if missing), holding a
    /// one-hour token from the TokenRequest API, with no rights until a test
    /// grants them with RBAC.
    ///
    /// # Panics
    /// If the API server refuses to create the objects or the token.
    pub async fn service_account(&self, namespace: &str, name: &str) -> Identity {
        let client = self.admin_client().await;
        let namespaces = Api::<Namespace>::all(client.clone());
        create_if_missing(
            &namespaces,
            Namespace {
                metadata: named(namespace),
                ..Namespace::default()
            },
        )
        .await;
        let accounts = Api::<ServiceAccount>::namespaced(client, namespace);
        create_if_missing(
            &accounts,
            ServiceAccount {
                metadata: named(name),
                ..ServiceAccount::default()
            },
        )
        .await;
        let token = request_token(&accounts, name).await;

        let username = format!("system:serviceaccount:{namespace}:{name}");
        let path = self.identity_path(&username);
        let token_file = path.with_extension("token");
        fs::write(&token_file, token)
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", token_file.display()));
        self.identity(&username, path.with_extension("kubeconfig"), |admin| {
            admin.with_token_file(&username, &token_file)
        })
    }

    /// Writes the kubeconfig that `derive` makes from the admin's to `path`.
    fn identity(
        &self,
        username: &str,
        path: PathBuf,
        derive: impl FnOnce(&Admin) -> Kubeconfig,
    ) -> Identity {
        let admin = Admin::load(self.kubeconfig_path()).unwrap_or_else(|error| {
            panic!(
                "cannot read {}: {error:#}",
                self.kubeconfig_path().display()
            )
        });
        kubeconfig::write(&path, &derive(&admin)).unwrap_or_else(|error| panic!("{error:#}"));
        Identity::new(username, path, self.kubectl.clone())
    }

    /// A fresh path (without extension) for an identity's files; tests running
    /// in parallel may ask for the same user.
    fn identity_path(&self, username: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let readable: String = username
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.layout.identities().join(format!(
            "{}-{readable}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

async fn request_token(accounts: &Api<ServiceAccount>, name: &str) -> String {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(TOKEN_LIFETIME_SECONDS),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let response = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|error| {
            panic!("cannot get a token for the ServiceAccount {name}: {error}")
        });
    let status = response
        .status
        .expect("the API server fills in the status of a TokenRequest");
    status.token
}

async fn create_if_missing<K>(api: &Api<K>, object: K)
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_already_exists() => {}
        Err(error) => panic!("cannot create {object:?}: {error}"),
    }
}

fn named(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}
