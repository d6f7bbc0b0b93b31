//! Every file of `examples/` is accepted by the API server, and its Replikas
//! pass the rules the webhook applies on top of the CRD's schema.

use std::path::PathBuf;

use serde_json::Value;
use testenv::{ControlPlane, run, run_with_stdin};

use crate::tools::{
    apply_server_side, cluster_lock, install_prometheus_operator_crds, remove_webhooks, repo,
    wait_established, yaml_docs,
};

/// Every example's objects are accepted by the API server (`--dry-run=server`,
/// with the CRD of deploy/base; the admission webhook is not registered, so
/// this is the schema and its CEL rules), and their Replikas pass the rules the
/// webhook applies on top.
#[test]
fn examples_are_accepted_by_the_api_server() {
    let plane = ControlPlane::shared();
    let _cluster = cluster_lock();
    remove_webhooks(plane);
    apply_server_side(plane, &["-k", &repo("deploy/base")]);
    wait_established(plane, &["replikas.replika.prosimcorp.com"]);
    // examples/alertmanagerconfig-replika.yaml's source.
    install_prometheus_operator_crds(plane);

    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("examples"))
        .expect("examples/")
        .map(|entry| entry.expect("an entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| {
            f.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for wanted in [
        "alertmanagerconfig-replika.yaml",
        "configmap-replika.yaml",
        "dockerconfigjson-secret-replika.yaml",
        "selector-replika.yaml",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "examples/{wanted} is missing"
        );
    }

    for file in &files {
        let docs = yaml_docs(&std::fs::read_to_string(file).expect("an example"));
        let replikas: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Replika").collect();
        assert!(!replikas.is_empty(), "{} has no Replika", file.display());
        for doc in &docs {
            let namespace = doc["metadata"]["namespace"].as_str().unwrap_or_default();
            if !namespace.is_empty() {
                // A dry run does not create the example's Namespace, so make it.
                let created = run(plane.kubectl().args(["create", "namespace", namespace]));
                assert!(
                    created.status_ok || created.stderr.contains("AlreadyExists"),
                    "{created:?}"
                );
            }
            let text = serde_json::to_string(doc).expect("JSON");
            let what = format!(
                "{} {} from {}",
                doc["kind"],
                doc["metadata"]["name"],
                file.display()
            );
            let applied = run_with_stdin(
                plane
                    .kubectl()
                    .args(["apply", "--server-side", "--dry-run=server", "-f", "-"]),
                &text,
            );
            assert!(
                applied.status_ok,
                "the API server refused {what}: {}",
                applied.stderr
            );
        }
        for replika in replikas {
            let parsed: replika::api::Replika =
                serde_json::from_value(replika.clone()).expect("a Replika");
            let namespace = replika["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default");
            if let Err(problems) = replika::domain::validation::validate(&parsed.spec, namespace) {
                panic!(
                    "{} would be denied by the webhook: {problems:?}",
                    file.display()
                );
            }
        }
    }

    // The dry runs do validate: the CRD's CEL rule refuses a Replika whose
    // targets name its source's namespace.
    let refused = run_with_stdin(
        plane
            .kubectl()
            .args(["apply", "--server-side", "--dry-run=server", "-f", "-"]),
        r#"{"apiVersion": "replika.prosimcorp.com/v1beta1", "kind": "Replika",
            "metadata": {"name": "loop", "namespace": "default"},
            "spec": {"synchronization": {"time": "1m"},
                     "source": {"group": "", "version": "v1", "kind": "ConfigMap", "name": "x", "namespace": "default"},
                     "target": {"namespaces": {"matchAll": false, "replicateIn": ["default"]}}}}"#,
    );
    assert!(
        !refused.status_ok
            && refused
                .stderr
                .contains("must not name the source namespace"),
        "{refused:?}"
    );
}
