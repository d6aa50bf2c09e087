//! Ceilometer's meter selection (the shared pattern lists of [`meterflow_operators::glob`]).

pub use meterflow_operators::glob::MeterMatcher;
