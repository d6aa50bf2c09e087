//! Aodh's alarms: definitions in Aodh's API JSON form ([`definition`]), the decision its
//! evaluator makes for threshold rules ([`threshold`]) and that decision driven by closed
//! buckets in event time ([`evaluator`]), alarms over several metrics ([`cross`]) and event
//! alarms ([`event`]).

pub mod constraints;
pub mod cross;
pub mod definition;
pub mod evaluator;
pub mod event;
pub mod threshold;
