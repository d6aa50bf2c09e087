//! Aodh's alarm semantics as pure functions: [`threshold`] holds the decision its evaluator
//! makes for gnocchi threshold rules (the comparison over the last `evaluation_periods`
//! values, the transition with `repeat_actions`, the reason text and `reason_data`). The
//! dataflow that feeds it closed buckets, the definitions and the notifiers land next.

pub mod threshold;
