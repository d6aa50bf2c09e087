//! Files and standard input: JSONL in ([`source`]), JSONL out ([`sink`]).

pub mod append;
pub mod deadletter;
pub mod sink;
pub mod source;
