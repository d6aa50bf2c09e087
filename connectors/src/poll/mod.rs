//! Built-in pollsters: sources that sample something on an interval and emit Ceilometer
//! polling notifications, so a pipeline can run on live data with no message bus.
//!
//! `poll://host?interval=SECONDS[&count=N]` samples this machine from `/proc` (see [`host`]);
//! `poll://http/HOST:PORT/PATH?interval=SECONDS[&event_type=T]` polls a JSON document (see
//! [`http`]).
//! A pollster is a [`std::io::Read`] of JSONL notification lines, one per poll, so it enters
//! the dataflow exactly like a file or stdin.

pub mod host;
pub mod http;

use std::io::{self, Read};
use std::time::{Duration, Instant};

use crate::Url;

/// What a `poll://` input samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pollster {
    /// This machine, from `/proc`.
    Host,
    /// A JSON document over HTTP.
    Http(http::HttpTarget),
}

/// A validated `poll://` input.
#[derive(Clone, Debug, PartialEq)]
pub struct PollSpec {
    /// What it samples.
    pub pollster: Pollster,
    /// Time between polls.
    pub interval: Duration,
    /// Stop after this many polls (`None`: poll until interrupted).
    pub count: Option<u64>,
}

/// The pollsters `poll://` knows, for messages.
const KNOWN: &str = "poll://host?interval=SECONDS[&count=N] or poll://http/HOST:PORT/PATH?interval=SECONDS[&event_type=T][&timeout=SECONDS][&count=N] (https/... for TLS)";

impl PollSpec {
    /// Parses `poll://host?...` or `poll://http[s]/HOST:PORT/PATH?...`.
    pub fn from_url(url: &Url) -> Result<PollSpec, String> {
        let seconds = |key: &str, default: f64| -> Result<Duration, String> {
            match url.option(key) {
                None => Ok(Duration::from_secs_f64(default)),
                Some(s) => s
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| {
                        format!(
                            "poll://{}: {key}={s:?} must be a positive number of seconds",
                            url.target
                        )
                    }),
            }
        };
        let pollster = match url.target.split_once('/') {
            None if url.target == "host" => {
                url.reject_options(&["interval", "count"])?;
                Pollster::Host
            }
            Some((scheme @ ("http" | "https"), endpoint)) if !endpoint.is_empty() => {
                // Options meterflow does not know stay on the endpoint's URL.
                let mut query: Vec<String> = Vec::new();
                for (k, v) in &url.options {
                    if !["interval", "count", "event_type", "timeout"].contains(&k.as_str()) {
                        query.push(format!("{k}={v}"));
                    }
                }
                let mut endpoint = format!("{scheme}://{endpoint}");
                if !query.is_empty() {
                    endpoint = format!("{endpoint}?{}", query.join("&"));
                }
                let event_type = url.option("event_type").unwrap_or("http.poll");
                if event_type.is_empty() {
                    return Err(format!("poll://{}: event_type= must name the notifications' type, e.g. event_type=node.stats", url.target));
                }
                Pollster::Http(http::HttpTarget {
                    url: endpoint,
                    event_type: event_type.to_owned(),
                    timeout: seconds("timeout", 5.0)?,
                })
            }
            _ => {
                return Err(format!(
                    "poll://{}: unknown pollster; known: {KNOWN}",
                    url.target
                ))
            }
        };
        let interval = seconds("interval", 10.0)?;
        let count = url
            .option("count")
            .map(|c| {
                c.parse::<u64>().ok().filter(|c| *c > 0).ok_or_else(|| {
                    format!(
                        "poll://{}: count={c:?} must be a positive integer",
                        url.target
                    )
                })
            })
            .transpose()?;
        Ok(PollSpec {
            pollster,
            interval,
            count,
        })
    }

    /// The name used in messages.
    pub fn display(&self) -> String {
        match &self.pollster {
            Pollster::Host => "poll://host".into(),
            Pollster::Http(t) => format!("poll {}", t.url),
        }
    }

    /// The pollster as a stream of notification lines.
    pub fn open(&self) -> io::Result<Poller> {
        let source = match &self.pollster {
            Pollster::Host => Source::Host(host::HostPollster::new()?),
            Pollster::Http(target) => Source::Http(http::HttpPollster::new(target)?),
        };
        Ok(Poller {
            spec: self.clone(),
            source,
            pending: Vec::new(),
            pos: 0,
            polls: 0,
            next: None,
        })
    }
}

/// An open pollster.
enum Source {
    Host(host::HostPollster),
    Http(http::HttpPollster),
}

/// Reads as JSONL: each poll becomes one notification line, the first immediately, the next
/// ones one interval apart (a failed HTTP poll gives no line; the next interval tries again).
pub struct Poller {
    spec: PollSpec,
    source: Source,
    pending: Vec<u8>,
    pos: usize,
    polls: u64,
    next: Option<Instant>,
}

impl Read for Poller {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.pending.len() {
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
            self.pending = match &mut self.source {
                Source::Host(h) => h.poll_line()?,
                Source::Http(h) => h.poll_line().unwrap_or_default(),
            };
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
                pollster: Pollster::Host,
                interval: Duration::from_millis(500),
                count: Some(3)
            }
        );
        let spec = PollSpec::from_url(
            &Url::parse("poll://http/127.0.0.1:9100/stats?interval=2&event_type=node.stats&v=1")
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            spec.pollster,
            Pollster::Http(http::HttpTarget {
                url: "http://127.0.0.1:9100/stats?v=1".into(),
                event_type: "node.stats".into(),
                timeout: Duration::from_secs(5),
            })
        );
        assert_eq!(spec.interval, Duration::from_secs(2));
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
            ("poll://http/", "unknown pollster"),
            ("poll://ftp/x", "unknown pollster"),
            ("poll://http/h:1/p?timeout=0", "positive number"),
            ("poll://http/h:1/p?event_type=", "must name"),
        ] {
            let err = PollSpec::from_url(&Url::parse(bad).unwrap()).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn polls_count_times_then_ends() {
        let spec = PollSpec {
            pollster: Pollster::Host,
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
