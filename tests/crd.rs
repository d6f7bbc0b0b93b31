//! The CRD committed under `deploy/` is the one generated from the Rust types.

use kube::CustomResourceExt;
use replika::api::Replika;

#[test]
fn committed_crd_matches_the_rust_types() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/base/crd.yaml"))
            .expect("deploy/base/crd.yaml is readable");
    let generated = serde_saphyr::to_string(&Replika::crd()).expect("the CRD renders as YAML");
    assert!(
        committed == generated,
        "deploy/base/crd.yaml is stale: run `make crd` and commit the result"
    );
}
