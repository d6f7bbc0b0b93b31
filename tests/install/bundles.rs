//! The Kustomize bundles of `make bundle`: one per overlay, each applies
//! cleanly by server-side apply (also over the other, as an upgrade that
//! switches certificate modes does), and the flags of their Deployment are
//! ones the operator accepts.

use std::process::{Command, Stdio};

use testenv::{ControlPlane, run};

use crate::tools::{
    OVERLAYS, RemoveWebhooksOnDrop, apply_server_side, cluster_lock, install_cert_manager_crds,
    kustomize, repo, scratch_dir, yaml_docs,
};

#[test]
fn bundles_apply_cleanly_by_server_side_apply() {
    let plane = ControlPlane::shared();
    let _cluster = cluster_lock();
    let _webhooks = RemoveWebhooksOnDrop(plane);
    install_cert_manager_crds(plane);

    let out = scratch_dir("bundles");
    let rendered = run(Command::new(repo("tools/bundle.sh"))
        .arg(&out)
        .env("KUBECTL", plane.bin_dir().join("kubectl")));
    assert!(rendered.status_ok, "tools/bundle.sh failed: {rendered:?}");
    let mut listed: Vec<&str> = rendered.stdout.lines().collect();
    listed.sort();
    let expected: Vec<String> = OVERLAYS
        .iter()
        .map(|overlay| out.join(overlay).join("bundle.yaml").display().to_string())
        .collect();
    assert_eq!(listed, expected, "one bundle.yaml per overlay");

    for overlay in OVERLAYS {
        let bundle = out.join(overlay).join("bundle.yaml");
        let objects = yaml_docs(&std::fs::read_to_string(&bundle).expect("the bundle"));
        assert!(
            objects.iter().any(|o| o["kind"] == "Deployment"),
            "{overlay}: the bundle runs the operator"
        );
        apply_server_side(plane, &["-f", &bundle.display().to_string()]);
        let listed = run(plane
            .kubectl()
            .args(["get", "-o", "name", "-f"])
            .arg(&bundle));
        assert!(listed.status_ok, "{overlay}: {listed:?}");
        assert_eq!(
            listed.stdout.lines().count(),
            objects.len(),
            "{overlay}: {listed:?}"
        );
    }

    // The last bundle applied was self-managed, over cert-manager's: same objects,
    // new content (an upgrade that switches modes).
    let annotations = run(plane.kubectl().args([
        "get",
        "validatingwebhookconfiguration/replika",
        "-o",
        "jsonpath={.metadata.annotations}",
    ]));
    assert!(annotations.status_ok, "{annotations:?}");
    assert!(
        !annotations.stdout.contains("inject-ca-from"),
        "switching to self-managed removes the cainjector annotation: {annotations:?}"
    );
}

/// The flags in each bundle's Deployment are ones `replika run` accepts: it gets
/// past argument parsing and stops only for want of a cluster.
#[test]
fn deployment_flags_are_accepted_by_the_operator() {
    let plane = ControlPlane::shared();
    for overlay in OVERLAYS {
        let objects = yaml_docs(&kustomize(plane, &format!("deploy/overlays/{overlay}")));
        let deployment = objects
            .iter()
            .find(|o| o["kind"] == "Deployment")
            .expect("a Deployment");
        let args: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("string args"))
            .collect();
        let output = Command::new(env!("CARGO_BIN_EXE_replika"))
            .args(&args)
            .env_clear()
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env("HOME", "/nonexistent")
            .stdin(Stdio::null())
            .output()
            .expect("the replika binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.code() == Some(1) && stderr.contains("no usable kubeconfig"),
            "{overlay}: `replika {}` should fail only for want of a cluster: {:?} {stderr}",
            args.join(" "),
            output.status
        );
    }
}
