//! meterflow-operators: the pure cores of meterflow's stream operators.
//!
//! # Architecture
//! Each operator is a plain struct with state in and samples out, free of timely types, so it
//! can be unit-tested, benchmarked and used by the sequential reference implementation; the
//! dataflow wrappers in `meterflow-pipelines` only feed it batches. [`transform`] holds
//! Ceilometer's six transformers and the [`transform::Chain`] that runs a sink's transformers
//! with Ceilometer's per-notification flush; [`expr`] is the safe Python-expression subset
//! their `scale` and `expr` parameters use; [`aggregate`] is Gnocchi's aggregation by archive
//! policy; [`alarm`] is Aodh's alarm decision; [`notification`] turns service notifications
//! into samples by Ceilometer's meter definitions.
//!
//! # Example
//! ```
//! use meterflow_engine::{metrics::Diag, Sample, SampleType, Volume};
//! use meterflow_operators::transform::{build_chain, TransformerSpec};
//!
//! let spec = TransformerSpec { name: "delta".into(), parameters: serde_yaml::from_str("{}").unwrap() };
//! let mut chain = build_chain(&[spec]).unwrap();
//! let (mut out, mut diag) = (Vec::new(), Diag::default());
//! for (v, t) in [(10, "2021-07-30T00:00:00"), (25, "2021-07-30T00:01:00")] {
//!     let s = Sample::gauge("net", "vm-1", 0.0, t).with_kind(SampleType::Cumulative).with_volume(Volume::Int(v));
//!     chain.handle(s, &mut out, &mut diag);
//!     chain.flush(&mut out, &mut diag);
//! }
//! assert_eq!(out.len(), 1);
//! assert_eq!(out[0].volume, Volume::Int(15));
//! assert_eq!(out[0].kind, SampleType::Delta);
//! ```

pub mod aggregate;
pub mod alarm;
pub mod event;
pub mod expr;
pub mod glob;
pub mod notification;
pub mod transform;
