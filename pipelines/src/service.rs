//! A run as a service: prepares the dataflow, starts Gnocchi's and Aodh's API beside it when
//! asked to listen, runs the dataflow, and stops the API once it ends. The binary, the bench
//! and the tests start runs here.

use std::net::SocketAddr;
use std::sync::Arc;

use meterflow_connectors::file::source::InputSpec;

use crate::api::Server;
use crate::dataflow::{self, RunOptions, RunReport};
use crate::plan::Plan;

/// Called once the API listens, with its address (the binary prints it).
#[derive(Clone)]
pub struct ListeningCallback(pub Arc<dyn Fn(SocketAddr) + Send + Sync>);

impl std::fmt::Debug for ListeningCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListeningCallback")
    }
}

/// Runs `plan` over `inputs` to their end (listening: until SIGINT or SIGTERM), serving the
/// API meanwhile when `options.listen` says so; `listening` is told its address.
pub fn run(
    plan: Plan,
    inputs: &[InputSpec],
    options: &RunOptions,
    listening: Option<ListeningCallback>,
) -> anyhow::Result<RunReport> {
    let mut prepared = dataflow::prepare(plan, inputs, options)?;
    let mut server = None;
    if let (Some(listen), Some(store)) = (&options.listen, prepared.store()) {
        let (s, requests) = Server::start(
            listen,
            store.clone(),
            prepared.plan().clone(),
            prepared.live().clone(),
            prepared.actions().clone(),
        )?;
        if let Some(callback) = &listening {
            (callback.0)(s.addr());
        }
        prepared = prepared.with_requests(requests);
        server = Some(s);
    }
    let report = dataflow::execute(prepared);
    if let Some(server) = server {
        server.shutdown();
    }
    report
}
