//! Self-managed certificates: the operator makes a CA and a serving certificate,
//! keeps them in a Secret that every replica of the operator shares, writes the
//! CA into its webhook configurations' `caBundle`, and renews them before expiry.
//!
//! On renewal the new CA is published next to the old one first, and only once
//! API servers had time to load that bundle is the new certificate served: with
//! `failurePolicy: Fail`, a certificate served before its CA is trusted would
//! refuse every Replika write in between.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use super::tls::{
    CA_FILE, CERT_FILE, CertResolver, GeneratedCerts, KEY_FILE, certified_key, generate,
};

/// Annotation on the Secret recording when its serving certificate expires.
const ANNOTATION_NOT_AFTER: &str = "replika.prosimcorp.com/not-after";
/// How long generated certificates are valid.
const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Renew when less than this is left.
const RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(30 * 24);
/// How long API servers are given to load a new `caBundle` (they follow the
/// webhook configurations with a watch) before the certificate it vouches for is served.
const BUNDLE_SETTLE: Duration = Duration::from_secs(10);
/// How often writing the `caBundle` is tried again after a conflict: replicas
/// that start together write the same configurations at the same time.
const CONFLICT_RETRIES: usize = 5;

/// Where the certificates live and who must trust them.
#[derive(Clone)]
pub struct SelfManaged {
    pub client: Client,
    pub secret_namespace: String,
    pub secret_name: String,
    /// DNS names and IPs the serving certificate is valid for.
    pub hosts: Vec<String>,
    /// Name of the ValidatingWebhookConfiguration and MutatingWebhookConfiguration to inject.
    pub webhook_configuration: String,
    /// How often the Secret is checked for expiry and for renewals by other replicas.
    pub check_every: Duration,
}

/// Why self-managed certificates could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SelfManagedError {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    #[error("Secret {0} lacks {1}")]
    Incomplete(String, &'static str),
}

/// The certificates as stored in the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stored {
    ca_bundle: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl SelfManaged {
    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.secret_namespace)
    }

    /// Makes sure the Secret holds valid certificates, publishes the CA, then
    /// serves them: runs [`SelfManaged::keep_current`] in the background and
    /// returns the resolver.
    pub async fn start(self) -> Result<Arc<CertResolver>, SelfManagedError> {
        let stored = self.ensure_secret().await?;
        let key = certified_key(&stored.cert, &stored.key)?;
        self.inject_ca_bundle(&stored.ca_bundle).await?;
        let resolver = CertResolver::new(key);
        tokio::spawn(self.keep_current(resolver.clone(), stored));
        Ok(resolver)
    }

    /// Checks the Secret periodically: renews what is about to expire, and picks up
    /// certificates that another replica renewed. A new certificate is served
    /// only after its CA was published and had [`BUNDLE_SETTLE`] to reach the API servers.
    async fn keep_current(self, resolver: Arc<CertResolver>, mut served: Stored) {
        loop {
            tokio::time::sleep(self.check_every).await;
            let stored = match self.ensure_secret().await {
                Ok(stored) if stored != served => stored,
                Ok(_) => continue,
                Err(error) => {
                    warn!(%error, "could not check the webhook certificates");
                    continue;
                }
            };
            let published = match certified_key(&stored.cert, &stored.key) {
                Ok(key) => self.inject_ca_bundle(&stored.ca_bundle).await.map(|()| key),
                Err(error) => Err(error.into()),
            };
            match published {
                Ok(key) => {
                    tokio::time::sleep(BUNDLE_SETTLE).await;
                    resolver.replace(key);
                    info!(secret = %self.secret_name, "serving the renewed certificate");
                    served = stored;
                }
                Err(error) => warn!(%error, "could not apply the renewed certificates"),
            }
        }
    }

    /// Reads the Secret, creating or renewing it when needed.
    async fn ensure_secret(&self) -> Result<Stored, SelfManagedError> {
        let secrets = self.secrets();
        let Some(existing) = secrets.get_opt(&self.secret_name).await? else {
            let created = secrets
                .create(
                    &PostParams::default(),
                    &self.new_secret(generate(&self.hosts, VALIDITY)?, None),
                )
                .await;
            return match created {
                Ok(secret) => {
                    info!(secret = %self.secret_name, "created the webhook certificates");
                    self.stored(&secret)
                }
                // Another replica created it first: use theirs.
                Err(kube::Error::Api(status)) if status.is_already_exists() => {
                    self.stored(&secrets.get(&self.secret_name).await?)
                }
                Err(error) => Err(error.into()),
            };
        };
        let expires = existing
            .annotations()
            .get(ANNOTATION_NOT_AFTER)
            .and_then(|t| t.parse::<Timestamp>().ok());
        let fresh = expires.is_some_and(|t| t.duration_since(Timestamp::now()) > RENEW_BEFORE);
        match self.stored(&existing) {
            Ok(stored) if fresh => Ok(stored),
            previous => {
                let old_ca = previous.ok().map(|p| p.ca_bundle);
                let mut renewed =
                    self.new_secret(generate(&self.hosts, VALIDITY)?, old_ca.as_deref());
                renewed.metadata.resource_version = existing.resource_version();
                let secret = secrets
                    .replace(&self.secret_name, &PostParams::default(), &renewed)
                    .await?;
                info!(secret = %self.secret_name, "renewed the webhook certificates");
                self.stored(&secret)
            }
        }
    }

    fn new_secret(&self, certs: GeneratedCerts, previous_ca: Option<&[u8]>) -> Secret {
        let not_after =
            Timestamp::now() + SignedDuration::try_from(VALIDITY).unwrap_or(SignedDuration::MAX);
        let mut ca_bundle = certs.ca_pem.into_bytes();
        if let Some(previous) = previous_ca {
            ca_bundle.extend_from_slice(first_pem_block(previous));
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(self.secret_name.clone()),
                namespace: Some(self.secret_namespace.clone()),
                annotations: Some(BTreeMap::from([(
                    ANNOTATION_NOT_AFTER.to_string(),
                    not_after.to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                (CA_FILE.to_string(), ByteString(ca_bundle)),
                (
                    CERT_FILE.to_string(),
                    ByteString(certs.cert_pem.into_bytes()),
                ),
                (KEY_FILE.to_string(), ByteString(certs.key_pem.into_bytes())),
            ])),
            ..Default::default()
        }
    }

    fn stored(&self, secret: &Secret) -> Result<Stored, SelfManagedError> {
        let field = |name: &'static str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(name))
                .map(|b| b.0.clone())
                .ok_or_else(|| SelfManagedError::Incomplete(self.secret_name.clone(), name))
        };
        Ok(Stored {
            ca_bundle: field(CA_FILE)?,
            cert: field(CERT_FILE)?,
            key: field(KEY_FILE)?,
        })
    }

    /// Writes `ca_bundle` into every webhook of both configurations, where it
    /// differs, reading them again when another writer changed them first.
    async fn inject_ca_bundle(&self, ca_bundle: &[u8]) -> Result<(), SelfManagedError> {
        let mut conflicts = 0;
        loop {
            match self.try_inject_ca_bundle(ca_bundle).await {
                Err(SelfManagedError::Kube(kube::Error::Api(status)))
                    if status.is_conflict() && conflicts < CONFLICT_RETRIES =>
                {
                    conflicts += 1;
                }
                outcome => return outcome,
            }
        }
    }

    async fn try_inject_ca_bundle(&self, ca_bundle: &[u8]) -> Result<(), SelfManagedError> {
        let bundle = ByteString(ca_bundle.to_vec());
        let validating: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
        if let Some(mut config) = validating.get_opt(&self.webhook_configuration).await? {
            let webhooks = config.webhooks.iter_mut().flatten();
            if set_bundles(webhooks.map(|w| &mut w.client_config.ca_bundle), &bundle) {
                validating
                    .replace(&self.webhook_configuration, &PostParams::default(), &config)
                    .await?;
            }
        }
        let mutating: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        if let Some(mut config) = mutating.get_opt(&self.webhook_configuration).await? {
            let webhooks = config.webhooks.iter_mut().flatten();
            if set_bundles(webhooks.map(|w| &mut w.client_config.ca_bundle), &bundle) {
                mutating
                    .replace(&self.webhook_configuration, &PostParams::default(), &config)
                    .await?;
            }
        }
        info!(configuration = %self.webhook_configuration, "webhook caBundle is current");
        Ok(())
    }
}

/// Sets every bundle to `bundle`; true when any changed.
fn set_bundles<'a>(
    bundles: impl Iterator<Item = &'a mut Option<ByteString>>,
    bundle: &ByteString,
) -> bool {
    let mut changed = false;
    for current in bundles {
        if current.as_ref() != Some(bundle) {
            *current = Some(bundle.clone());
            changed = true;
        }
    }
    changed
}

/// The first PEM block of `pem` (the newest CA of a bundle).
fn first_pem_block(pem: &[u8]) -> &[u8] {
    const END: &[u8] = b"-----END CERTIFICATE-----\n";
    pem.windows(END.len())
        .position(|w| w == END)
        .map_or(pem, |at| &pem[..at + END.len()])
}
