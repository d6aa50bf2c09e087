//! Files and standard input: JSONL in ([`source`]), JSONL out ([`sink`]).

pub mod sink;
pub mod source;
