//! The commands a user runs against a cluster, as `replika COMMAND` or, with
//! the binary installed as `kubectl-replika`, as `kubectl replika COMMAND`:
//! - `status NAME`: where each namespace of one Replika stands;
//! - `plan -f FILE` or `plan NAME`: what applying it would do, writing nothing;
//! - `attest`: an admin vouches for existing Replikas ([`attest`]).
//!
//! [`inspect`] reads the cluster and asks the domain planner; [`render`] prints.

pub mod attest;
pub mod inspect;
pub mod render;

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use kube::{Client, ResourceExt};

use crate::api::Replika;
use crate::domain::plan::Action;
use attest::{Attested, Selection};
use inspect::{Inspection, State, StatusReport};
use render::{Format, Table, Tone};

/// The name the binary answers to when kubectl runs it as a plugin.
pub const PLUGIN_BINARY: &str = "kubectl-replika";

/// `status`: one Replika's per-namespace truth.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// The Replika's name.
    name: String,
    /// Its namespace (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

/// `plan`: what applying a Replika would do.
#[derive(clap::Args)]
pub struct PlanArgs {
    /// A stored Replika to plan as it is (e.g. after namespaces changed).
    #[arg(required_unless_present = "filename", conflicts_with = "filename")]
    name: Option<String>,
    /// A manifest holding one Replika (`-` reads standard input).
    #[arg(short = 'f', long)]
    filename: Option<PathBuf>,
    /// Its namespace when the manifest names none (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    output: Format,
}

/// `attest`: vouch for existing Replikas.
#[derive(clap::Args)]
pub struct AttestArgs {
    /// The namespace of the Replikas (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
    namespace: Option<String>,
    /// Every Replika in every namespace.
    #[arg(short = 'A', long, conflicts_with = "names")]
    all_namespaces: bool,
    /// Replika names (default: every Replika of the namespace).
    names: Vec<String>,
}

async fn client() -> anyhow::Result<Client> {
    Client::try_default()
        .await
        .context("no usable kubeconfig or in-cluster configuration")
}

/// Prints the status of one Replika.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = client().await?;
    let namespace = args
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_string());
    let stored = kube::Api::<Replika>::namespaced(client.clone(), &namespace)
        .get_opt(&args.name)
        .await
        .context("reading the Replika")?
        .with_context(|| format!("no Replika {namespace}/{} exists", args.name))?;
    let report = inspect::status(&client, &stored).await?;
    render::print(args.output, &report, || status_table(&report))
}

fn status_table(report: &StatusReport) -> Table {
    let rows = report
        .namespaces
        .iter()
        .map(|ns| {
            let tone = match ns.state {
                State::Synced => Tone::Good,
                State::Pending => Tone::Pending,
                State::Conflict | State::Failed => Tone::Bad,
            };
            (
                vec![
                    ns.namespace.clone(),
                    ns.state.to_string(),
                    ns.detail.clone(),
                ],
                tone,
            )
        })
        .collect();
    let count = |state| {
        report
            .namespaces
            .iter()
            .filter(|ns| ns.state == state)
            .count()
    };
    Table {
        heading: vec![
            ("Replika", report.replika.clone()),
            ("Source", report.source.clone()),
            ("Copies", report.copies.clone()),
            ("Ready", report.ready.clone()),
            ("Message", report.message.clone()),
        ],
        titles: vec!["NAMESPACE", "STATE", "DETAIL"],
        rows,
        toned: 1,
        summary: format!(
            "{} synced, {} pending, {} conflicts, {} failed",
            count(State::Synced),
            count(State::Pending),
            count(State::Conflict),
            count(State::Failed)
        ),
    }
}

/// Prints what applying a Replika would do.
pub async fn plan(args: PlanArgs) -> anyhow::Result<()> {
    let client = client().await?;
    let default_namespace = || {
        args.namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string())
    };
    let replika = match (&args.name, &args.filename) {
        (Some(name), _) => kube::Api::<Replika>::namespaced(client.clone(), &default_namespace())
            .get_opt(name)
            .await
            .context("reading the Replika")?
            .with_context(|| format!("no Replika {}/{name} exists", default_namespace()))?,
        (None, Some(path)) => {
            let mut replika = read_manifest(path)?;
            if replika.namespace().is_none() {
                replika.metadata.namespace = Some(default_namespace());
            }
            replika
        }
        (None, None) => bail!("name a Replika or give a manifest with -f"),
    };
    let inspection = inspect::plan(&client, &replika).await?;
    render::print(args.output, &inspection, || plan_table(&inspection))
}

/// The one Replika in a manifest file (`-`: standard input).
fn read_manifest(path: &PathBuf) -> anyhow::Result<Replika> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    let replika: Replika = serde_saphyr::from_str(&text)
        .with_context(|| format!("{} does not hold one Replika", path.display()))?;
    if replika.metadata.name.is_none() {
        bail!("{}: the Replika has no metadata.name", path.display());
    }
    Ok(replika)
}

fn plan_table(inspection: &Inspection) -> Table {
    let rows = inspection
        .namespaces
        .iter()
        .map(|planned| {
            let tone = match planned.action {
                Action::Unchanged => Tone::Good,
                Action::Conflict => Tone::Bad,
                _ if planned.detail.contains("the API server refuses it") => Tone::Bad,
                _ => Tone::Pending,
            };
            (
                vec![
                    planned.namespace.clone(),
                    planned.action.to_string(),
                    planned.detail.clone(),
                ],
                tone,
            )
        })
        .collect();
    let mut counts: std::collections::BTreeMap<Action, usize> = Default::default();
    for planned in &inspection.namespaces {
        *counts.entry(planned.action).or_default() += 1;
    }
    let summary = counts
        .iter()
        .map(|(action, count)| format!("{count} {action}"))
        .collect::<Vec<_>>()
        .join(", ");
    Table {
        heading: vec![
            ("Replika", inspection.replika.clone()),
            ("Source", inspection.source.clone()),
            ("Copies", inspection.copies.clone()),
        ],
        titles: vec!["NAMESPACE", "ACTION", "DETAIL"],
        rows,
        toned: 1,
        summary: if summary.is_empty() {
            "no namespace is concerned".into()
        } else {
            summary
        },
    }
}

/// Asks Replika's webhooks to sign the caller as the author of the selected Replikas.
pub async fn attest(args: AttestArgs) -> anyhow::Result<()> {
    let client = client().await?;
    let selection = if args.all_namespaces {
        Selection::AllNamespaces
    } else {
        Selection::Namespace {
            namespace: args
                .namespace
                .unwrap_or_else(|| client.default_namespace().to_string()),
            names: args.names,
        }
    };
    let attested = attest::attest(client, selection)
        .await
        .context("listing the Replikas")?;
    let rows = attested
        .iter()
        .map(|one: &Attested| match &one.result {
            Ok(author) => (
                vec![
                    one.namespace.clone(),
                    one.name.clone(),
                    format!("attested: author {author}"),
                ],
                Tone::Good,
            ),
            Err(why) => (
                vec![
                    one.namespace.clone(),
                    one.name.clone(),
                    format!("FAILED: {why}"),
                ],
                Tone::Bad,
            ),
        })
        .collect();
    let table = Table {
        heading: Vec::new(),
        titles: vec!["NAMESPACE", "NAME", "RESULT"],
        rows,
        toned: 2,
        summary: String::new(),
    };
    print!("{}", table.render(render::colour_wanted()));
    let failed = attested.iter().filter(|a| a.result.is_err()).count();
    if failed > 0 {
        bail!(
            "{failed} of {} Replika(s) could not be attested",
            attested.len()
        );
    }
    Ok(())
}
