//! API server and etcd outages: the watches recover by themselves, changes
//! made meanwhile converge without waiting for a resync, `/readyz` reports
//! the outage while it lasts and `/healthz` never fails.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams};
use serde_json::json;
use testenv::Component;

use crate::checks::*;
use crate::harness::*;
use crate::support::*;

/// What `/readyz` and `/healthz` answered while a component was down.
#[derive(Debug, Default)]
struct Outage {
    readyz: BTreeMap<String, usize>,
    healthz_failures: usize,
}

impl Outage {
    fn saw_unready(&self) -> bool {
        self.readyz.keys().any(|status| status != "200")
    }
}

/// Keeps `component` down for `duration`, asking the operator's `/readyz` and `/healthz` meanwhile.
async fn outage(component: Component, duration: Duration, operator: &OperatorWithPort) -> Outage {
    let plane = installed().plane;
    plane
        .stop_component(component)
        .expect("stopping a component");
    let mut seen = Outage::default();
    let until = Instant::now() + duration;
    while Instant::now() < until {
        let readyz = status_of(operator.port, "/readyz")
            .await
            .map_or("none".to_string(), |s| s.to_string());
        *seen.readyz.entry(readyz).or_default() += 1;
        if status_of(operator.port, "/healthz").await != Some(200) {
            seen.healthz_failures += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    plane
        .start_component(component)
        .await
        .expect("starting a component again");
    println!(
        "{component:?} down for {duration:?}, back in {:?}: {seen:?}",
        started.elapsed()
    );
    seen
}

#[tokio::test]
async fn watches_recover_from_api_server_and_etcd_outages() {
    let _alone = alone().await;
    let plane = installed().plane;
    if !plane.controls_processes() {
        println!("skipped: the plane from REPLIKA_TEST_KUBECONFIG cannot be stopped and started");
        return;
    }
    let admin = plane.admin_client().await;
    let label = ("replika.test/outage", format!("o{}", std::process::id()));
    let selected = json!({"matchAll": false, "selector": {"matchLabels": {label.0: label.1}}});
    let mut targets = BTreeSet::new();
    for _ in 0..10 {
        targets.insert(labelled_namespace(&admin, "outage", label.0, &label.1).await);
    }
    let source_ns = namespace(&admin, "outage-src").await;
    let name = "outage-copy";
    create_configmap(&admin, &source_ns, name, &[("version", "1")]).await;
    let operator = start("outage", &[]);
    wait_until_ready("/readyz to answer 200", &operator, DEADLINE).await;
    // A resync of an hour: whatever converges after an outage was brought by a watch.
    let uid = replicate_configmap(&admin, &source_ns, name, "1h", selected).await;
    let mut data = string_map(&[("version", "1")]);
    converge_copies(
        &admin,
        name,
        &Expected::only(&uid, &targets, &data),
        DEADLINE,
        &[&operator],
    )
    .await;

    let mut outages = Vec::new();
    for (round, (component, duration)) in [
        (Component::ApiServer, Duration::from_secs(5)),
        (Component::Etcd, Duration::from_secs(8)),
    ]
    .into_iter()
    .enumerate()
    {
        // The source changes just before the outage: replication is under way when it starts.
        data = string_map(&[("version", &format!("{round}-before"))]);
        set_data(&admin, &source_ns, name, &data).await;
        outages.push((component, outage(component, duration, &operator).await));

        // After it, every kind of watch must bring news again: a new target
        // namespace, a source change, a copy deleted by hand.
        targets.insert(labelled_namespace(&admin, "outage", label.0, &label.1).await);
        data = string_map(&[("version", &format!("{round}-after"))]);
        set_data(&admin, &source_ns, name, &data).await;
        let victim = targets.first().expect("a target").clone();
        converge_copies(
            &admin,
            name,
            &Expected::only(&uid, &targets, &data),
            DEADLINE,
            &[&operator],
        )
        .await;
        Api::<ConfigMap>::namespaced(admin.clone(), &victim)
            .delete(name, &DeleteParams::default())
            .await
            .expect("deleting a copy");
        converge_copies(
            &admin,
            name,
            &Expected::only(&uid, &targets, &data),
            DEADLINE,
            &[&operator],
        )
        .await;
        let desired = targets.len() as u32;
        converge_all_synced(&admin, &source_ns, name, desired, &[&operator]).await;
    }

    for (component, seen) in &outages {
        assert_eq!(
            seen.healthz_failures, 0,
            "/healthz failed during the {component:?} outage: {seen:?}"
        );
    }
    // Ready again once the API server is (its own /readyz may trail etcd's return).
    wait_until_ready(
        "/readyz to answer 200 after the outages",
        &operator,
        DEADLINE,
    )
    .await;
    // `/readyz` reflects the outage.
    let unnoticed: Vec<_> = outages
        .iter()
        .filter(|(_, seen)| !seen.saw_unready())
        .collect();
    assert!(
        unnoticed.is_empty(),
        "/readyz answered 200 throughout these outages: {unnoticed:?}\n{}",
        operator.process.log_tail()
    );
}
