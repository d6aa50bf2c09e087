//! The `log://` publisher: each sample (or event) logged as JSON on stderr through `tracing`.

use std::sync::Arc;

use meterflow_engine::component::{PublishError, Publisher, PublisherFactory};
use meterflow_engine::model::Event;
use meterflow_engine::wire::encode::{write_sample, EncodeOptions};
use meterflow_engine::Sample;

/// An open `log://` publisher.
pub struct LogPublisher {
    url: String,
}

impl LogPublisher {
    /// A publisher for `url`.
    pub fn new(url: &str) -> LogPublisher {
        LogPublisher {
            url: url.to_owned(),
        }
    }
}

impl PublisherFactory for LogPublisher {
    fn url(&self) -> &str {
        &self.url
    }

    fn handle(self: Arc<Self>) -> Box<dyn Publisher> {
        Box::new(LogHandle { line: Vec::new() })
    }
}

struct LogHandle {
    line: Vec<u8>,
}

impl Publisher for LogHandle {
    fn publish(&mut self, samples: &[Sample]) -> Result<(), PublishError> {
        for s in samples {
            self.line.clear();
            write_sample(s, EncodeOptions::default(), &mut self.line);
            let text = String::from_utf8_lossy(&self.line);
            tracing::info!(target: "meterflow::publisher::log", "{}", text.trim_end());
        }
        Ok(())
    }

    fn publish_events(&mut self, events: &[Arc<Event>]) -> Result<(), PublishError> {
        for e in events {
            tracing::info!(target: "meterflow::publisher::log", "{}", e.serialize());
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), PublishError> {
        Ok(())
    }
}
