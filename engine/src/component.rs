//! The traits connectors implement, so the dataflow can drive them without knowing them.

use std::sync::Arc;

use crate::model::{Event, Sample};

/// Why a publisher could not write; `retry` tells whether trying again may help.
#[derive(Debug, thiserror::Error)]
#[error("{target}: {message}")]
pub struct PublishError {
    /// The publisher's URL.
    pub target: String,
    /// What failed and what to do.
    pub message: String,
    /// Whether retrying with backoff may succeed (a full disk may clear; a bad path will not).
    pub retry: bool,
}

/// One worker's handle on a publisher: takes batches of samples, buffers, writes.
pub trait Publisher: Send {
    /// Publishes a batch (may buffer). On error nothing of the batch is assumed written.
    fn publish(&mut self, samples: &[Sample]) -> Result<(), PublishError>;
    /// Publishes a batch of events (from an event pipeline's sink; may buffer). On error
    /// nothing of the batch is assumed written.
    fn publish_events(&mut self, events: &[Arc<Event>]) -> Result<(), PublishError>;
    /// Writes out anything buffered (called at the end of each epoch and of the run).
    fn flush(&mut self) -> Result<(), PublishError>;
    /// Writes out anything buffered and makes everything written so far durable (a file's
    /// `fsync`), before a checkpoint counts it as published. By default the same as
    /// [`Publisher::flush`] (publishers whose flush is durable, or asynchronous with
    /// [`Publisher::durable`] tickets).
    fn sync(&mut self) -> Result<(), PublishError> {
        self.flush()
    }
    /// Writes out anything buffered and starts making everything written so far durable
    /// without waiting (a file's `fsync` on a thread of its own): a ticket for
    /// [`Publisher::durable`], or `None` when it is durable already. By default
    /// [`Publisher::sync`].
    fn sync_async(&mut self) -> Result<Option<u64>, PublishError> {
        self.sync().map(|()| None)
    }
    /// Starts writing out what is buffered without waiting for it to be durable (a broker's
    /// acknowledgement): returns a ticket for [`Publisher::durable`], or `None` when this
    /// publisher only flushes synchronously (then [`Publisher::flush`] is used).
    fn flush_async(&mut self) -> Option<u64> {
        None
    }
    /// Whether everything published before `ticket` was issued is durable; an error reports
    /// what was finally lost (the ticket then counts as done).
    fn durable(&mut self, ticket: u64) -> Result<bool, PublishError> {
        let _ = ticket;
        Ok(true)
    }
}

/// A publisher opened for a run, shared by all workers; each worker gets its own handle.
pub trait PublisherFactory: Send + Sync {
    /// The URL it was opened from.
    fn url(&self) -> &str;
    /// A handle for one worker.
    fn handle(self: Arc<Self>) -> Box<dyn Publisher>;
}
