//! One writer at a time under load: a leader killed, stopped with SIGTERM or
//! paused in the middle of a fan-out; the follower takes over, finishes the
//! fan-out and rewrites nothing, and a paused leader that wakes up writes
//! nothing once it lost the Lease.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::Client;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use replika::api::Replika;

use crate::checks::*;
use crate::fleet::*;
use crate::harness::*;
use crate::support::*;

#[tokio::test]
async fn a_follower_finishes_the_fan_out_of_a_killed_leader() {
    // SIGKILL leaves the Lease held: the follower waits for it to expire.
    failover_mid_fan_out("KILL", "killed", LEASE, LEASE * 3 + DEADLINE).await;
}

#[tokio::test]
async fn a_leader_stopped_with_sigterm_hands_its_fan_out_over_at_once() {
    // SIGTERM: the leader finishes the pass in flight, releases the Lease and
    // exits cleanly; the follower takes over without waiting for the Lease
    // (of 30 s here) to expire.
    failover_mid_fan_out(
        "TERM",
        "stopped",
        Duration::from_secs(30),
        Duration::from_secs(3),
    )
    .await;
}

/// Two leader-elected operators with a Lease of `lease`; the leader gets
/// `signal` once a third of a fan-out to the fleet is made, and the follower,
/// leading within `handover` of the leader's exit, makes what is missing, and
/// rewrites nothing.
async fn failover_mid_fan_out(signal: &str, how: &str, lease: Duration, handover: Duration) {
    let _alone = alone().await;
    let admin = installed().plane.admin_client().await;
    let fleet = fleet(&admin).await;
    let source_ns = namespace(&admin, &format!("{how}-src")).await;
    let name = format!("{how}-copy");
    let name = name.as_str();
    let data = string_map(&[("key", "value")]);
    create_configmap(&admin, &source_ns, name, &[("key", "value")]).await;

    let (a, b) = (format!("replika-{how}-a"), format!("replika-{how}-b"));
    let slow_writes = ["--max-parallel-writes=8"];
    let mut leader = start_leader_elected(&a, &a, lease, &slow_writes);
    wait_for_leadership(&admin, &leader, &a, DEADLINE).await;
    let follower = start_leader_elected(&b, &b, lease, &slow_writes);
    wait_until_ready("the follower to be ready", &follower, DEADLINE).await;

    let (targets, uid) = replicate_to_fleet(&admin, fleet, &source_ns, name).await;
    when_owned(&admin, name, &uid, |owned| owned >= targets.len() / 3).await;
    let follower_writes_before = copy_writes(follower.port).await;
    leader.process.signal(signal);
    let exit = leader.process.wait_for_exit(DEADLINE).await;
    let exited = Instant::now();
    let at_exit = owned_now(&admin, name, &uid).await;
    println!(
        "{how}: the leader exited ({exit:?}) with {at_exit} of {} copies made",
        targets.len()
    );
    assert!(
        follower_writes_before.values().all(|writes| *writes == 0.0),
        "the follower wrote while the leader led: {follower_writes_before:?}"
    );
    if signal == "TERM" {
        // Graceful: the pass in flight, the whole fan-out, is finished first.
        assert_eq!(
            exit,
            Some(0),
            "a clean exit on SIGTERM\n{}",
            leader.process.log_tail()
        );
        assert_eq!(
            at_exit,
            targets.len(),
            "copies made when the leader exited on SIGTERM"
        );
    } else {
        assert!(
            at_exit < targets.len(),
            "the fan-out was over before the kill, so nothing was tested"
        );
    }

    wait_for_leadership(&admin, &follower, &b, handover).await;
    println!(
        "{how}: the follower leads {:?} after the leader exited",
        exited.elapsed()
    );
    let expected = Expected::only(&uid, &targets, &data);
    converge_copies(&admin, name, &expected, FLEET_DEADLINE, &[&follower]).await;
    let desired = targets.len() as u32;
    converge_all_synced(&admin, &source_ns, name, desired, &[&follower]).await;
    // Its first pass is over once it counts every copy as in sync.
    converge(
        "the new leader to finish its pass",
        DEADLINE,
        &[&follower],
        || async {
            match try_metric(follower.port, "replika_copies_managed").await {
                Some(managed) if managed == f64::from(desired) => Ok(()),
                other => Err(format!("replika_copies_managed={other:?}")),
            }
        },
    )
    .await;
    // The new leader made only copies that were missing, and rewrote none:
    // those it did not write itself it read, and found right.
    let written = copy_writes(follower.port).await;
    println!("{how}: the new leader wrote {written:?}");
    assert!(
        written["create"] as usize <= targets.len() - at_exit,
        "the new leader created {} copies, {at_exit} of {} existed",
        written["create"],
        targets.len()
    );
    for operation in ["update", "replace", "delete"] {
        assert_eq!(
            written[operation], 0.0,
            "copies the new leader had to {operation}"
        );
    }
}

/// Notes the `Ready` condition of every state the Replika `namespace/name` is
/// written in, as `status reason (synced/desired)` followed by the failures
/// it lists, if any, into `seen`.
async fn note_readiness(
    client: Client,
    namespace: String,
    name: &'static str,
    seen: Arc<Mutex<Vec<String>>>,
) {
    let api = Api::<Replika>::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let states = watcher::watcher(api, config)
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(states);
    while let Some(Ok(replika)) = states.next().await {
        let ready = ready_condition(&replika).map(|c| format!("{} {}", c.status, c.reason));
        let counts = replika
            .status
            .as_ref()
            .and_then(|s| s.targets.as_ref())
            .map(|t| format!("{}/{}", t.synced, t.desired));
        let failures: Vec<String> = replika
            .status
            .iter()
            .flat_map(|s| &s.failures)
            .map(|f| format!("{}: {} {}", f.namespace, f.reason, f.message))
            .collect();
        let state = format!(
            "{} ({}){}",
            ready.unwrap_or_default(),
            counts.unwrap_or_default(),
            if failures.is_empty() {
                String::new()
            } else {
                format!(" [{}]", failures.join("; "))
            }
        );
        let mut seen = seen.lock().expect("not poisoned");
        if seen.last() != Some(&state) {
            seen.push(state);
        }
    }
}

/// The paused leader's `--max-parallel-writes`: how many of its writes can be
/// in flight when it is paused.
const PAUSED_IN_FLIGHT: usize = 8;

#[tokio::test]
async fn a_leader_paused_mid_fan_out_writes_nothing_once_a_follower_took_over() {
    let _alone = alone().await;
    let admin = installed().plane.admin_client().await;
    let fleet = fleet(&admin).await;
    let source_ns = namespace(&admin, "paused-src").await;
    let name = "paused-copy";
    let data = string_map(&[("key", "value")]);
    create_configmap(&admin, &source_ns, name, &[("key", "value")]).await;
    let (a, b) = ("replika-paused-a", "replika-paused-b");
    let in_flight = format!("--max-parallel-writes={PAUSED_IN_FLIGHT}");
    let leader = start_leader_elected("paused-a", a, LEASE, &[&in_flight]);
    wait_for_leadership(&admin, &leader, a, DEADLINE).await;
    let follower = start_leader_elected("paused-b", b, LEASE, &[]);
    let (targets, uid) = replicate_to_fleet(&admin, fleet, &source_ns, name).await;

    // The leader stops in the middle of its fan-out (a long pause, or a
    // partition), and the follower takes over and finishes.
    when_owned(&admin, name, &uid, |owned| owned >= targets.len() / 3).await;
    leader.process.signal("STOP");
    let at_pause = owned_now(&admin, name, &uid).await;
    println!(
        "paused: the leader paused with {at_pause} of {} copies made",
        targets.len()
    );
    wait_for_leadership(&admin, &follower, b, LEASE * 3 + DEADLINE).await;
    converge_copies(
        &admin,
        name,
        &Expected::only(&uid, &targets, &data),
        FLEET_DEADLINE,
        &[&follower],
    )
    .await;
    let desired = targets.len() as u32;
    converge_all_synced(&admin, &source_ns, name, desired, &[&follower]).await;

    // The old leader wakes up: it must find out it lost the Lease before it
    // writes anything, copies or status. Meanwhile every state of the
    // Replika's readiness is noted.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let noting = tokio::spawn(note_readiness(
        admin.clone(),
        source_ns.clone(),
        name,
        seen.clone(),
    ));
    leader.process.signal("CONT");
    converge(
        "the old leader to step down",
        DEADLINE,
        &[&leader],
        || async {
            match try_metric(leader.port, "replika_leader").await {
                Some(0.0) => Ok(()),
                other => Err(format!("replika_leader={other:?}")),
            }
        },
    )
    .await;
    let written = copy_writes(leader.port).await;
    converge_all_synced(&admin, &source_ns, name, desired, &[&follower]).await;
    noting.abort();
    let seen = seen.lock().expect("not poisoned").clone();
    assert_eq!(
        seen,
        [format!("True AllTargetsSynced ({desired}/{desired})")],
        "the Replika's readiness as written after the old leader woke up\nold leader: {}\nfollower: {}",
        leader.process.log_tail(),
        follower.process.log_tail()
    );
    // Creates sent before the pause may land after the count was taken.
    assert!(
        written["create"] as usize <= at_pause + PAUSED_IN_FLIGHT
            && written["update"] + written["replace"] + written["delete"] == 0.0,
        "the old leader wrote copies after it woke up: {written:?}, {at_pause} copies made when it paused"
    );
    assert_eq!(lease_holder(&admin, LEADER_LEASE).await.as_deref(), Some(b));
    converge_copies(
        &admin,
        name,
        &Expected::only(&uid, &targets, &data),
        DEADLINE,
        &[&follower],
    )
    .await;
}
