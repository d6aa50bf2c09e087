//! meterflow-pipelines: definitions, the planner, the dataflow, and the `meterflow` binary.
//!
//! # Architecture
//! [`plan::Plan::from_yaml`] parses and validates a Ceilometer `pipeline.yaml` (reporting
//! every problem with its key path); [`service::run`] turns the plan into a timely dataflow ([`dataflow`])
//! over `--workers` threads and runs it to the end of its inputs; [`sequential::run`] is the
//! plain one-loop reference the dataflow is tested against; [`bench`](mod@bench) generates synthetic
//! telemetry and measures throughput. `gnocchi://` publishers feed [`storage`]'s aggregation
//! operator, which writes the embedded store; [`query`] reads it back as Gnocchi does, and
//! [`api`] serves Gnocchi's REST API over it (feeding POSTed measures into the same operator);
//! [`alarms`] evaluates Aodh's alarms inside that operator as buckets close (and, for alarms over
//! several metrics, in a cross operator that [`feeds`] supplies). The binary in `src/main.rs` only parses arguments and
//! calls these.
//!
//! # Example
//! ```
//! use meterflow_pipelines::{plan::Plan, sequential};
//! let plan = Plan::from_yaml("
//! sources: [{name: s, meters: [cpu], sinks: [k]}]
//! sinks: [{name: k, transformers: [{name: delta}], publishers: ['log://']}]
//! ", "inline").unwrap();
//! let line = |v: u64, t: &str| format!(r#"{{"counter_name": "cpu", "counter_type": "cumulative", "counter_unit": "ns", "counter_volume": {v}, "resource_id": "vm", "timestamp": "{t}"}}"#);
//! let lines = [line(10, "2021-01-01T00:00:00"), line(15, "2021-01-01T00:01:00")];
//! let out = sequential::run(&plan, &[&lines[0], &lines[1]]);
//! assert_eq!(out[0].1.volume.as_f64(), 5.0);
//! ```

pub mod aggregates;
pub mod alarms;
pub mod api;
pub mod bench;
pub mod checkpoint;
pub mod committer;
pub mod control;
pub mod dataflow;
pub mod feeds;
pub mod matcher;
pub mod plan;
pub mod query;
pub mod resource_events;
pub mod retry;
pub mod sequential;
pub mod service;
pub mod shipped;
pub mod storage;
pub mod summary;
