//! Crash safety: an operator killed (SIGKILL) in the middle of a fan-out to
//! the fleet, of a prune and of a finalizer cleanup; the one started after it
//! converges to exactly the right copies, leaves what is not Replika's alone,
//! and reports exact counts.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{Api, DeleteParams};
use replika::api::Replika;

use crate::checks::*;
use crate::fleet::*;
use crate::harness::*;
use crate::support::*;

#[tokio::test]
async fn a_killed_operator_finishes_the_fan_out_prune_or_cleanup_it_was_in() {
    let _alone = alone().await;
    let admin = installed().plane.admin_client().await;
    let fleet = fleet(&admin).await;
    let source_ns = namespace(&admin, "crash-src").await;
    let name = "crash-copy";
    let payload = "x".repeat(2048);
    let data = string_map(&[("key", "v1"), ("payload", &payload)]);
    create_configmap(
        &admin,
        &source_ns,
        name,
        &[("key", "v1"), ("payload", &payload)],
    )
    .await;

    // Objects with the copies' name that are not Replika's: two in excluded
    // namespaces, one in a target namespace (a conflict while it is a target).
    let conflicted = fleet.names[3].clone();
    let mut untouchable = BTreeMap::new();
    for namespace in [&fleet.names[7], &fleet.names[17], &conflicted] {
        let theirs = create_configmap(&admin, namespace, name, &[("owner", "someone-else")]).await;
        untouchable.insert(namespace.clone(), theirs);
    }
    let excluded = fleet.ending_with("7");
    let targets: BTreeSet<String> = fleet
        .names
        .iter()
        .filter(|ns| !excluded.contains(*ns))
        .cloned()
        .collect();
    let copies: BTreeSet<String> = targets
        .iter()
        .filter(|ns| **ns != conflicted)
        .cloned()
        .collect();

    // Fan-out: killed once a third of the copies exist.
    let mut first = start("crash-fan-out", &["--max-parallel-writes=8"]);
    let all = fleet.glob("");
    let excluded_glob = fleet.glob("7");
    let fan_out = namespaces(&[&all], &[&excluded_glob]);
    let uid = replicate_configmap(&admin, &source_ns, name, "30s", fan_out).await;
    when_owned(&admin, name, &uid, |owned| owned >= copies.len() / 3).await;
    first.process.signal("KILL");
    first.process.wait_for_exit(DEADLINE).await;
    let at_kill = owned_now(&admin, name, &uid).await;
    println!(
        "fan-out: killed with {at_kill} of {} copies made",
        copies.len()
    );
    assert!(
        at_kill < copies.len(),
        "the fan-out was over before the kill, so nothing was tested"
    );

    let mut second = start("crash-resumed", &["--max-parallel-writes=8"]);
    let expected = Expected {
        owner_uid: &uid,
        targets: &copies,
        data: &data,
        untouchable: &untouchable,
        their_keys: false,
    };
    converge_copies(&admin, name, &expected, FLEET_DEADLINE, &[&second]).await;
    let desired = targets.len() as u32;
    let replika = converge_status(
        &admin,
        &source_ns,
        name,
        ("False", "Conflict"),
        Some((desired, desired - 1, 1, 0)),
        &[&second],
    )
    .await;
    let failures = replika.status.expect("a status").failures;
    assert_eq!(
        failures
            .iter()
            .map(|f| (f.namespace.as_str(), f.reason.as_str()))
            .collect::<Vec<_>>(),
        [(conflicted.as_str(), "Conflict")]
    );

    // Prune: the targets shrink to a tenth, killed once a third of the stale copies are gone.
    let remaining = fleet.ending_with("0");
    let kept_glob = fleet.glob("0");
    let shrunk = namespaces(&[&kept_glob], &[&excluded_glob]);
    replicate_configmap(&admin, &source_ns, name, "30s", shrunk).await;
    let stale = copies.len() - remaining.len();
    when_owned(&admin, name, &uid, |owned| {
        owned <= copies.len() - stale / 3
    })
    .await;
    second.process.signal("KILL");
    second.process.wait_for_exit(DEADLINE).await;
    let at_kill = owned_now(&admin, name, &uid).await;
    println!(
        "prune: killed with {at_kill} copies left of {}, {} to keep",
        copies.len(),
        remaining.len()
    );
    assert!(
        remaining.len() < at_kill && at_kill < copies.len(),
        "the kill was not in the middle of the prune, so nothing was tested"
    );

    let mut third = start("crash-pruned", &["--max-parallel-writes=8"]);
    let pruned = Expected {
        targets: &remaining,
        ..expected
    };
    converge_copies(&admin, name, &pruned, FLEET_DEADLINE, &[&third]).await;
    let desired = remaining.len() as u32;
    converge_all_synced(&admin, &source_ns, name, desired, &[&third]).await;

    // Cleanup: the targets widen again, then the Replika is deleted, and the
    // operator is killed once a third of the copies are gone.
    let widened = namespaces(&[&all], &[&excluded_glob]);
    replicate_configmap(&admin, &source_ns, name, "30s", widened).await;
    converge_copies(&admin, name, &expected, FLEET_DEADLINE, &[&third]).await;
    Api::<Replika>::namespaced(admin.clone(), &source_ns)
        .delete(name, &DeleteParams::default())
        .await
        .expect("deleting the Replika");
    when_owned(&admin, name, &uid, |owned| owned <= copies.len() * 2 / 3).await;
    third.process.signal("KILL");
    third.process.wait_for_exit(DEADLINE).await;
    let at_kill = owned_now(&admin, name, &uid).await;
    println!(
        "cleanup: killed with {at_kill} copies left of {}",
        copies.len()
    );
    assert!(
        0 < at_kill && at_kill < copies.len(),
        "the kill was not in the middle of the cleanup, so nothing was tested"
    );

    let fourth = start("crash-cleaned", &[]);
    let none = BTreeSet::new();
    let cleaned = Expected {
        targets: &none,
        ..expected
    };
    converge_copies(&admin, name, &cleaned, FLEET_DEADLINE, &[&fourth]).await;
    let replikas = Api::<Replika>::namespaced(admin.clone(), &source_ns);
    converge("the Replika to be gone", DEADLINE, &[&fourth], || async {
        match replikas.get_opt(name).await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}
