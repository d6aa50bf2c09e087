//! The HTTP-JSON pollster: `poll://http/HOST:PORT/PATH?interval=S[&event_type=T]` GETs a JSON
//! document each interval and hands it on as the payload of a notification of type `T`, so the
//! definition's meter definitions (JSONPath over `$.payload`) turn it into samples and its
//! event definitions into events, exactly as for a service's notifications. A document
//! `{"samples": [...]}` polled as `event_type=telemetry.polling` is read as Ceilometer sample
//! dicts directly.
//!
//! A poll that fails (connection refused, timeout, an error status, a body that is not JSON)
//! is logged with the URL and the reason, counted, and skipped: the next interval tries again.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meterflow_engine::time::format_iso_naive;
use meterflow_engine::wire::encode::uuid4;

/// Where to poll and what to call the result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpTarget {
    /// The endpoint, `http://` or `https://` (with the query options meterflow does not know).
    pub url: String,
    /// The notifications' `event_type`.
    pub event_type: String,
    /// How long one request may take.
    pub timeout: Duration,
}

/// An open HTTP pollster.
pub struct HttpPollster {
    target: HttpTarget,
    client: reqwest::blocking::Client,
    failures: u64,
}

impl HttpPollster {
    /// A client for `target`.
    pub fn new(target: &HttpTarget) -> io::Result<HttpPollster> {
        let client = reqwest::blocking::Client::builder()
            .timeout(target.timeout)
            .build()
            .map_err(|e| {
                io::Error::other(format!("{}: cannot build an HTTP client: {e}", target.url))
            })?;
        Ok(HttpPollster {
            target: target.clone(),
            client,
            failures: 0,
        })
    }

    /// One notification line (with its `\n`) holding the document, or `None` when this poll
    /// failed (logged).
    pub fn poll_line(&mut self) -> Option<Vec<u8>> {
        match self.fetch() {
            Ok(document) => {
                let micros = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as i64);
                let line = serde_json::json!({
                    "event_type": self.target.event_type, "priority": "INFO",
                    "publisher_id": "meterflow.poll.http", "message_id": uuid4(),
                    "timestamp": format_iso_naive(micros).replacen('T', " ", 1),
                    "payload": document,
                });
                let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
                bytes.push(b'\n');
                Some(bytes)
            }
            Err(why) => {
                self.failures += 1;
                tracing::warn!(
                    "poll {}: {why}; skipped, polling again at the next interval ({} failed polls so far)",
                    self.target.url,
                    self.failures
                );
                None
            }
        }
    }

    /// Polls that failed so far.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    fn fetch(&self) -> Result<serde_json::Value, String> {
        let response = self
            .client
            .get(&self.target.url)
            .header("accept", "application/json")
            .send()
            .map_err(|e| format!("request failed ({e})"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("answered {status}; expected 200 with a JSON body"));
        }
        let body = response
            .bytes()
            .map_err(|e| format!("reading the body failed ({e})"))?;
        serde_json::from_slice(&body).map_err(|e| format!("the body is not JSON ({e})"))
    }
}
