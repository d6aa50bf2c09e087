//! Built-in pollsters: sources that sample something on an interval and emit Ceilometer
//! polling notifications, so a pipeline can run on live data with no message bus.
//!
//! `poll://host?interval=SECONDS[&count=N]` samples this machine from `/proc` (see [`host`]).
//! A pollster is a [`std::io::Read`] of JSONL notification lines, one per poll, so it enters
//! the dataflow exactly like a file or stdin.

pub mod host;

use std::io::{self, Read};
use std::time::{Duration, Instant};

use crate::Url;

/// A validated `poll://` input.
#[derive(Clone, Debug, PartialEq)]
pub struct PollSpec {
    /// Time between polls.
    pub interval: Duration,
    /// Stop after this many polls (`None`: poll until interrupted).
    pub count: Option<u64>,
}

impl PollSpec {
    /// Parses `poll://host?interval=SECONDS[&count=N]`.
    pub fn from_url(url: &Url) -> Result<PollSpec, String> {
        if url.target != "host" {
            return Err(format!(
                "poll://{}: unknown pollster; known: poll://host?interval=SECONDS[&count=N]",
                url.target
            ));
        }
        url.reject_options(&["interval", "count"])?;
        let interval = match url.option("interval") {
            None => 10.0,
            Some(s) => s
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .ok_or_else(|| {
                    format!("poll://host: interval={s:?} must be a positive number of seconds")
                })?,
        };
        let count =
            url.option("count")
                .map(|c| {
                    c.parse::<u64>().ok().filter(|c| *c > 0).ok_or_else(|| {
                        format!("poll://host: count={c:?} must be a positive integer")
                    })
                })
                .transpose()?;
        Ok(PollSpec {
            interval: Duration::from_secs_f64(interval),
            count,
        })
    }

    /// The pollster as a stream of notification lines.
    pub fn open(&self) -> io::Result<Poller> {
        Ok(Poller {
            spec: self.clone(),
            host: host::HostPollster::new()?,
            pending: Vec::new(),
            pos: 0,
            polls: 0,
            next: None,
        })
    }
}

/// Reads as JSONL: each poll becomes one `telemetry.polling` notification line, the first
/// immediately, the next ones one interval apart.
pub struct Poller {
    spec: PollSpec,
    host: host::HostPollster,
    pending: Vec<u8>,
    pos: usize,
    polls: u64,
    next: Option<Instant>,
}

impl Read for Poller {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.pending.len() {
            if self.spec.count.is_some_and(|c| self.polls >= c) {
                return Ok(0);
            }
            if let Some(next) = self.next {
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
            }
            let now = Instant::now();
            self.next = Some(self.next.map_or(now, |n| n.max(now)) + self.spec.interval);
            self.pending = self.host.poll_line()?;
            self.pos = 0;
            self.polls += 1;
        }
        let n = buf.len().min(self.pending.len() - self.pos);
        buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_poll_urls() {
        let spec =
            PollSpec::from_url(&Url::parse("poll://host?interval=0.5&count=3").unwrap()).unwrap();
        assert_eq!(
            spec,
            PollSpec {
                interval: Duration::from_millis(500),
                count: Some(3)
            }
        );
        assert_eq!(
            PollSpec::from_url(&Url::parse("poll://host").unwrap())
                .unwrap()
                .count,
            None
        );
        for (bad, needle) in [
            ("poll://snmp", "unknown pollster"),
            ("poll://host?interval=0", "positive"),
            ("poll://host?count=-1", "positive integer"),
            ("poll://host?every=3", "unknown option"),
        ] {
            let err = PollSpec::from_url(&Url::parse(bad).unwrap()).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn polls_count_times_then_ends() {
        let spec = PollSpec {
            interval: Duration::from_millis(1),
            count: Some(2),
        };
        let mut text = String::new();
        spec.open().unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text.lines().count(), 2);
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["event_type"], "telemetry.polling");
            assert!(v["payload"]["samples"].as_array().unwrap().len() >= 4);
        }
    }
}
