//! The transform sandbox's per-endpoint bound, on a `Sandbox` of its own
//! (its own test process, so no other test's workers are counted).

use std::time::Duration;
use tests::eventually;

const WAIT: Duration = Duration::from_secs(30);

/// At most `transforms.per_endpoint` transforms of one endpoint run at once:
/// two spinning runs of endpoint `a` take one worker between them (the
/// second waits for the first to be killed), while endpoint `b` gets a
/// worker of its own at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transforms_of_one_endpoint_run_one_at_a_time() {
    use dispatcher::delivery::transform::Sandbox;
    let limits = common::config::TransformsConfig {
        workers: 4,
        per_endpoint: 1,
        timeout: Duration::from_secs(2),
        memory_bytes: 64 << 20,
        worker_path: None,
    };
    let sandbox = Sandbox::new(Sandbox::locate(None), limits, 1 << 20);
    let quick = common::transform::Transform::compile(".data.ok = true").expect("compiles");
    let input = br#"{"id":"e1","type":"t","data":{}}"#;
    let (first, second) = (sandbox.clone(), sandbox.clone());
    let (spin_a, spin_b) = (
        common::transform::Transform::compile("last(range(1e18))").expect("compiles"),
        common::transform::Transform::compile("last(range(1e18))").expect("compiles"),
    );
    let a1 = tokio::spawn(async move { first.run("a", &spin_a, input).await });
    let a2 = tokio::spawn(async move { second.run("a", &spin_b, input).await });
    eventually(WAIT, "a transform of a running", || async {
        (sandbox.running("a") == 1).then_some(())
    })
    .await;
    // b is not held up by a.
    let b = sandbox.run("b", &quick, input).await.expect("b runs");
    assert!(matches!(b, common::transform::Outcome::Send(_)));
    assert_eq!(sandbox.running("a"), 1, "a's second run waits for its turn");
    let (r1, r2) = (a1.await.expect("join"), a2.await.expect("join"));
    for r in [r1, r2] {
        let e = r.expect_err("spins past its limit").to_string();
        assert!(e.contains("exceeded its 2000 ms time limit"), "{e}");
    }
    assert_eq!(sandbox.running("a"), 0);
}
