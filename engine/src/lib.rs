//! meterflow-engine: the data model and the plumbing every other crate shares.
//!
//! # Architecture
//! A line of input (an oslo notification or a bare Ceilometer sample dict) arrives in a
//! [`chunk::Chunk`], a block of whole lines read by a source connector. [`wire::decode_line`]
//! parses it without copying: strings that name things (meters, resources, users, units) are
//! interned as [`intern::Sym`], unique text (timestamps, message ids, resource metadata) stays a
//! zero-copy slice of the chunk. The resulting [`model::Sample`]s travel through the timely
//! dataflow built by `meterflow-pipelines`, are transformed by `meterflow-operators` and written
//! by `meterflow-connectors` with [`wire::encode`]. Bad input becomes data: a
//! [`metrics::DropReason`] counted in [`metrics::Counters`] and reported with its place.
//!
//! # Example
//! ```
//! use bytes::Bytes;
//! use meterflow_engine::wire::{decode_line, Decoded};
//!
//! let line = Bytes::from_static(br#"{"counter_name": "cpu", "counter_type": "cumulative",
//!   "counter_unit": "ns", "counter_volume": 42, "resource_id": "vm-1",
//!   "timestamp": "2021-07-30T02:00:00.5", "resource_metadata": {"cpu_number": 2}}"#);
//! let mut samples = Vec::new();
//! decode_line(&line, &mut |d| if let Decoded::Sample(s) = d { samples.push(s) }).unwrap();
//! assert_eq!(samples[0].name.as_str(), "cpu");
//! assert_eq!(samples[0].volume.as_f64(), 42.0);
//! ```

pub mod chunk;
pub mod component;
pub mod files;
pub mod intern;
pub mod json;
pub mod metrics;
pub mod model;
pub mod partition;
pub mod time;
pub mod wire;

pub use intern::Sym;
pub use model::{Sample, SampleType, Text, Volume};
