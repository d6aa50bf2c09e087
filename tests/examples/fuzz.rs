//! Runs the mutation fuzzer by hand: `cargo run --release -p meterflow-tests --example fuzz --
//! [--execs N] [--seconds S] [--seed N] [--target NAME]...` (every target by default).

use std::io::Write;
use std::time::Duration;

use meterflow_tests::fuzz::{run, Target};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| -> Option<&str> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let execs: u64 = value("--execs").map_or(1_000_000, |v| v.parse().expect("--execs N"));
    let seconds: u64 = value("--seconds").map_or(u64::MAX / 2, |v| v.parse().expect("--seconds S"));
    let seed: u64 =
        value("--seed").map_or_else(|| fastrand::u64(..), |v| v.parse().expect("--seed N"));
    let wanted: Vec<&str> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| *i > 0 && args[i - 1] == "--target" && !a.is_empty())
        .map(|(_, a)| a.as_str())
        .collect();
    let mut crashed = false;
    let mut stdout = std::io::stdout();
    for target in Target::ALL {
        if !wanted.is_empty() && !wanted.contains(&target.name()) {
            continue;
        }
        let report = run(
            target,
            seed,
            execs,
            Duration::from_secs(seconds),
            Duration::from_secs(10),
        );
        let _ = writeln!(
            stdout,
            "{}: {} execs in {:.1?} ({:.0}/s, seed {seed}), slowest {:.1?}, {} crashes, 0 hangs",
            target.name(),
            report.execs,
            report.elapsed,
            report.execs as f64 / report.elapsed.as_secs_f64(),
            report.slowest,
            report.crashes.len()
        );
        for c in &report.crashes {
            let _ = writeln!(stdout, "  crash: {c}");
        }
        crashed |= !report.crashes.is_empty();
    }
    if crashed {
        std::process::exit(1);
    }
}
