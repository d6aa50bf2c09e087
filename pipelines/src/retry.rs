//! Retrying what fails for a while (a full disk, a broker away) before giving up.

use std::time::{Duration, Instant};

/// Calls `attempt` until it succeeds, fails with an error `retryable` rejects, or `limit` has
/// passed, sleeping with exponential backoff (50 ms, doubling up to 5 s) after each retryable
/// failure. While it retries the worker waits, so the whole dataflow pauses and a Kafka input
/// stops consuming and committing: nothing is acknowledged that is not written.
pub fn retry_with_backoff<E: std::fmt::Display>(
    what: &str,
    limit: Duration,
    retryable: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> Result<(), E>,
) -> Result<(), E> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(50);
    loop {
        match attempt() {
            Err(e) if retryable(&e) && started.elapsed() < limit => {
                tracing::warn!("{what}: {e}; retrying in {} ms", backoff.as_millis());
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            result => return result,
        }
    }
}
