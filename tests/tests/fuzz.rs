//! Every decoder and parser under the mutation fuzzer for a fixed budget (`MF_FUZZ_SECONDS`
//! per target, default 2; `.ci/run` sets it): no input may panic, hang or overflow the stack.

use std::time::Duration;

use meterflow_tests::fuzz::{run, Target};

#[test]
fn no_input_crashes_or_hangs_a_parser() {
    let seconds: u64 = std::env::var("MF_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let seed = std::env::var("MF_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let mut failed = Vec::new();
    for target in Target::ALL {
        let report = run(
            target,
            seed,
            u64::MAX,
            Duration::from_secs(seconds),
            Duration::from_secs(20),
        );
        eprintln!(
            "fuzz {}: {} execs in {:.1?} (seed {seed}), slowest {:.1?}, {} crashes",
            target.name(),
            report.execs,
            report.elapsed,
            report.slowest,
            report.crashes.len()
        );
        if !report.crashes.is_empty() {
            failed.push(format!("{}: {:?}", target.name(), report.crashes));
        }
    }
    assert!(
        failed.is_empty(),
        "crashes (replay with MF_FUZZ_SEED={seed}): {failed:#?}"
    );
}
