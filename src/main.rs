//! The `replika` command: runs the operator, or prints and makes what installing it needs.
//!
//! - `cli`: the command line and its parsing.
//! - `operator`: `replika run`, the wiring of a running operator.

mod cli;
mod operator;

use std::time::Duration;

use anyhow::Context as _;
use kube::CustomResourceExt;
use replika::api::Replika;
use replika::plugin;
use replika::webhook::tls;

use cli::{CertsArgs, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // One crypto provider for every TLS user in the process (kube client and webhook).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli::parse_command_line().command {
        Command::Crd => {
            print!(
                "{}",
                serde_saphyr::to_string(&Replika::crd()).context("rendering the CRD")?
            );
            Ok(())
        }
        Command::Certs(args) => write_certs(&args),
        Command::Run(args) => operator::run(*args).await,
        Command::Attest(args) => plugin::attest(args).await,
        Command::Status(args) => plugin::status(args).await,
        Command::Plan(args) => plugin::plan(args).await,
    }
}

fn write_certs(args: &CertsArgs) -> anyhow::Result<()> {
    let certs = tls::generate(&args.hosts, Duration::from_secs(args.days * 24 * 3600))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for (file, content) in [
        (tls::CA_FILE, &certs.ca_pem),
        (tls::CERT_FILE, &certs.cert_pem),
        (tls::KEY_FILE, &certs.key_pem),
    ] {
        let path = args.out.join(file);
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
