//! Decode: chunks of input lines become samples routed to their sinks, and events.
//!
//! Each chunk is one epoch, decoded by one worker (chosen round-robin by its sequence number).
//! Every sample (one per sink that takes it) and every event is numbered in the chunk's input
//! order, so the operators downstream can restore that order whatever order the exchange
//! delivers an epoch's batches in (see [`super::epoch`]).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use meterflow_connectors::file::deadletter::DeadLetterHandle;
use meterflow_connectors::file::source::ChunkReader;
use meterflow_engine::chunk::{input_name, Chunk, Oversized, Place};
use meterflow_engine::intern::Sym;
use meterflow_engine::metrics::{Diag, DropReason};
use meterflow_engine::model::Event;
use meterflow_engine::time::Instant;
use meterflow_engine::wire::{decode_line, Decoded, LineKind};
use meterflow_engine::Sample;
use meterflow_operators::notification::message_view;
use meterflow_operators::transform::Partition;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::StreamVec;

use super::epoch::Placed;
use crate::plan::Plan;

/// A sample on its way to one sink.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Routed {
    /// Exchange key: the resource's hash, or the sink for sinks that run on one worker.
    pub route: u64,
    /// The notification it came in (flush boundaries): the chunk's sequence number in the
    /// high 32 bits, the line's index in the chunk in the low ones.
    pub notification: u64,
    /// Its place among everything its chunk's decoding emitted (samples and events), which
    /// restores input order whatever order the exchange delivers an epoch's batches in.
    pub order: u32,
    /// Index of the sink.
    pub sink: u16,
    /// Where it came from (named when a later stage rejects it).
    pub at: Place,
    /// The sample.
    pub sample: Sample,
}

impl Placed for Routed {
    fn place(&self) -> u64 {
        (self.notification & !u64::from(u32::MAX)) | u64::from(self.order)
    }
}

/// An event on its way to the event sinks and event alarms, numbered in its chunk's input
/// order like [`Routed::order`] (the chunk's sequence number in the high 32 bits).
#[derive(Clone, Debug)]
pub struct OrderedEvent {
    /// Its place in input order.
    pub order: u64,
    /// The event.
    pub event: Arc<Event>,
}

impl Placed for OrderedEvent {
    fn place(&self) -> u64 {
        self.order
    }
}

/// The stable hash that spreads resources over workers (the same in every process).
pub fn resource_route(resource: Sym) -> u64 {
    meterflow_engine::partition::route(resource.as_str())
}

/// Turns chunks into routed samples; counts and reports bad input.
pub struct Decoder {
    plan: Arc<Plan>,
    routes: FxHashMap<Sym, Box<[u16]>>,
    inputs: Arc<Vec<String>>,
    dead: Option<DeadLetterHandle>,
    /// Whether notifications also become events (for event sinks or event alarms).
    events: bool,
    /// Per event type, the publishers its events go to.
    event_routes: EventRoutes,
    /// The longest line taken, in bytes.
    max_line: usize,
}

/// Per event type, the event sinks that take it and their publishers (looked up once per
/// type).
#[derive(Default)]
pub(super) struct EventRoutes(FxHashMap<String, EventRoute>);

/// The sinks and publishers one event type goes to.
pub(super) struct EventRoute {
    pub(super) sinks: Box<[u16]>,
    pub(super) publishers: Box<[usize]>,
}

impl EventRoutes {
    pub(super) fn get(&mut self, plan: &Plan, event_type: &str) -> &EventRoute {
        if !self.0.contains_key(event_type) {
            let (sinks, publishers) = plan.event_route(event_type);
            let route = EventRoute {
                sinks: sinks.into_boxed_slice(),
                publishers: publishers.into_boxed_slice(),
            };
            self.0.insert(event_type.to_owned(), route);
        }
        &self.0[event_type]
    }
}

impl Decoder {
    /// A decoder for `plan`; `inputs` names the inputs in messages.
    pub fn new(plan: Arc<Plan>, inputs: Arc<Vec<String>>) -> Decoder {
        Decoder {
            plan,
            routes: FxHashMap::default(),
            inputs,
            dead: None,
            events: false,
            event_routes: EventRoutes::default(),
            max_line: ChunkReader::MAX_LINE_BYTES,
        }
    }

    /// Refuses lines longer than `bytes` (`--max-line-bytes`).
    pub fn with_max_line(mut self, bytes: usize) -> Decoder {
        self.max_line = bytes;
        self
    }

    /// Also turns service notifications into events (by the plan's event definitions), for
    /// event sinks and event alarms.
    pub fn with_events(mut self, events: bool) -> Decoder {
        self.events = events;
        self
    }

    /// Also writes every rejected record to a dead-letter file.
    pub fn with_dead_letter(mut self, dead: Option<DeadLetterHandle>) -> Decoder {
        self.dead = dead;
        self
    }

    fn routes<'r>(
        routes: &'r mut FxHashMap<Sym, Box<[u16]>>,
        plan: &Plan,
        meter: Sym,
    ) -> &'r [u16] {
        routes
            .entry(meter)
            .or_insert_with(|| plan.route(meter.as_str()).into_boxed_slice())
    }

    /// Decodes every line of `chunk`, calling `emit` for each (sink, sample) and `emit_event`
    /// for each event, in input order and numbered in it (see [`Routed::order`]).
    pub fn decode(
        &mut self,
        chunk: &Chunk,
        diag: &mut Diag,
        emit: &mut dyn FnMut(Routed),
        emit_event: &mut dyn FnMut(OrderedEvent),
    ) {
        let Decoder {
            plan,
            routes,
            inputs,
            dead,
            events,
            event_routes,
            max_line,
        } = self;
        let input = input_name(inputs, chunk.input);
        // The place of the next thing emitted (a chunk holds far fewer than 2^32).
        let order = std::cell::Cell::new(0u32);
        let next = || {
            let n = order.get();
            order.set(n.wrapping_add(1));
            n
        };
        let base = chunk.seq << 32;
        let mut emit_event = |event: Event| {
            emit_event(OrderedEvent {
                order: base | u64::from(next()),
                event: Arc::new(event),
            })
        };
        // Lines over the limit: what the reader skipped, and long lines (or Kafka messages)
        // that arrived whole.
        for skipped in &chunk.oversized {
            let at = (chunk, input, skipped.line);
            too_long(diag, dead, at, (*max_line, skipped.bytes), &skipped.head);
        }
        for (index, (line_no, line)) in chunk.lines().enumerate() {
            if line.len() > *max_line {
                let head = &line[..Oversized::HEAD.min(line.len())];
                let at = (chunk, input, line_no);
                too_long(diag, dead, at, (*max_line, line.len() as u64), head);
                continue;
            }
            diag.counters.lines += 1;
            let notification = (chunk.seq << 32) | index as u64;
            let mut reject = |diag: &mut Diag, reason: DropReason, detail: &str| {
                reject_line(diag, dead, (chunk, input, line_no), (reason, detail), &line);
            };
            let mut handle = |diag: &mut Diag, decoded: Decoded| match decoded {
                Decoded::Sample(sample) => {
                    diag.counters.samples_in += 1;
                    let sinks = Self::routes(routes, plan, sample.name);
                    if sinks.is_empty() {
                        // Not checked (as Ceilometer checks only what a pipeline takes), but
                        // its time still moves the input's event time on.
                        if let Ok(t) = Instant::parse(sample.timestamp.as_str()) {
                            diag.counters.saw_event(chunk.input as usize, t.micros());
                        }
                        diag.counters.samples_unrouted += 1;
                        return;
                    }
                    // Checked once here, so no stage sees a time the store cannot hold or a
                    // volume no arithmetic can use.
                    let micros = match Instant::parse(sample.timestamp.as_str()) {
                        Ok(t) => t.micros(),
                        Err(why) => {
                            let detail = format!(
                                "sample {} of resource {}: timestamp {:?} {why}",
                                sample.name,
                                sample.resource_id,
                                sample.timestamp.as_str()
                            );
                            return reject(diag, DropReason::BadTimestamp, &detail);
                        }
                    };
                    if !sample.volume.as_f64().is_finite() {
                        let detail = format!(
                            "sample {} of resource {} at {}: counter_volume {} is not a finite number; give a number (NaN and infinities cannot be rated, summed or stored)",
                            sample.name,
                            sample.resource_id,
                            sample.timestamp.as_str(),
                            sample.volume.as_f64()
                        );
                        return reject(diag, DropReason::VolumeNotANumber, &detail);
                    }
                    diag.counters.saw_event(chunk.input as usize, micros);
                    let route = resource_route(sample.resource_id);
                    let (last, rest) = sinks.split_last().expect("non-empty");
                    let at = chunk.place_of(line_no);
                    let routed = |sink: u16, sample: Sample| Routed {
                        route: match plan.sinks[sink as usize].partition {
                            Partition::ByResource => route,
                            Partition::Global => u64::from(sink),
                        },
                        notification,
                        order: next(),
                        sink,
                        at,
                        sample,
                    };
                    for &sink in rest {
                        emit(routed(sink, sample.clone()));
                    }
                    emit(routed(*last, sample));
                }
                Decoded::Rejected(r) => {
                    diag.counters.samples_in += 1;
                    let volume = matches!(
                        r.reason,
                        DropReason::VolumeMissing | DropReason::VolumeNotANumber
                    );
                    // Like Ceilometer, volumes are only checked for samples some pipeline takes.
                    if volume
                        && r.name
                            .is_some_and(|n| Self::routes(routes, plan, n).is_empty())
                    {
                        diag.counters.samples_unrouted += 1;
                        return;
                    }
                    reject(diag, r.reason, &r.detail);
                }
            };
            let kind = decode_line(&line, &mut |decoded| handle(diag, decoded));
            let failed = match kind {
                Ok(LineKind::SampleNotification | LineKind::BareSample) => {
                    diag.counters.notifications += 1;
                    None
                }
                Ok(LineKind::ServiceNotification { event_type }) => {
                    diag.counters.notifications += 1;
                    let text = std::str::from_utf8(&line).unwrap_or_default();
                    let (made, failed) = service_notification(
                        (plan, *events, event_routes),
                        (&event_type, text),
                        &mut emit_event,
                        &mut |d| handle(diag, d),
                    );
                    diag.counters.events += made;
                    failed
                }
                Err(e) => Some((e.reason(), e.to_string())),
            };
            if let Some((reason, detail)) = failed {
                reject(diag, reason, &detail);
            }
        }
        if let Some(dead) = dead.as_mut() {
            if let Err(e) = dead.flush() {
                tracing::error!("{e}");
            }
        }
    }
}

/// Counts, logs and dead-letters (its head only) a line of `bytes` over `max_line`.
fn too_long(
    diag: &mut Diag,
    dead: &mut Option<DeadLetterHandle>,
    at: (&Chunk, &str, u64),
    (max_line, bytes): (usize, u64),
    head: &[u8],
) {
    diag.counters.lines += 1;
    let detail = format!(
        "the line is {bytes} bytes, over --max-line-bytes {max_line}; it is skipped (its first {} bytes are kept in the dead-letter file)",
        head.len()
    );
    reject_line(diag, dead, at, (DropReason::LineTooLong, &detail), head);
}

/// Counts and logs a rejected input line with its place, and writes `raw` (the line, or its
/// head) to the dead-letter file.
fn reject_line(
    diag: &mut Diag,
    dead: &mut Option<DeadLetterHandle>,
    (chunk, input, line_no): (&Chunk, &str, u64),
    (reason, detail): (DropReason, &str),
    raw: &[u8],
) {
    diag.drop(reason, || {
        format!("{}: {detail}", chunk.place(input, line_no))
    });
    if let Some(dead) = dead.as_mut() {
        let position = chunk.position(line_no);
        dead.record(input, line_no, position.as_deref(), reason, detail, raw);
    }
}

/// A service notification (one that is not samples already): its events, when events are
/// wanted, and its samples by the meter definitions (to `samples`). Returns the events made,
/// and why it is dropped if it is.
fn service_notification(
    (plan, events, event_routes): (&Plan, bool, &mut EventRoutes),
    (event_type, text): (&str, &str),
    emit_event: &mut dyn FnMut(Event),
    samples: &mut dyn FnMut(Decoded),
) -> (u64, Option<(DropReason, String)>) {
    if events && SERIALIZED_EVENTS.contains(&event_type) {
        // Events already made (Ceilometer's notifier publisher names the notification after
        // its topic, `event` or Aodh's `alarm.all`; a kafka:// event sink writes `event`):
        // the payload is a list of serialized events.
        return match serialized_events(text) {
            Ok(list) => {
                let made = list.len() as u64;
                list.into_iter().for_each(emit_event);
                (made, None)
            }
            Err(why) => (0, Some((DropReason::NotANotification, why))),
        };
    }
    // Read once, for the meter definitions and the event definitions.
    let unmetered = plan.unmetered(event_type);
    let view = (unmetered.is_none() || events).then(|| message_view(text));
    // Whether an event sink keeps it (then it is not dropped for want of meters).
    let mut published = false;
    let mut made = 0;
    if let (true, Some(Ok(view))) = (events, &view) {
        if let Some(event) = plan.events.event(view) {
            made += 1;
            published = !event_routes.get(plan, &event.event_type).sinks.is_empty();
            emit_event(event);
        }
    }
    let skipped = match (unmetered, view) {
        (Some(_), _) if published => None,
        (Some(why), _) | (None, Some(Err(why))) => Some(why),
        (None, Some(Ok(view))) => {
            plan.meters.samples(&view, samples);
            None
        }
        (None, None) => unreachable!("read whenever a definition takes it"),
    };
    (
        made,
        skipped.map(|detail| (DropReason::NoMeterDefinition, detail)),
    )
}

/// The event types of notifications that carry serialized events.
const SERIALIZED_EVENTS: [&str; 2] = ["event", "alarm.all"];

/// The events of an `event` notification (its payload: a list of serialized events).
fn serialized_events(text: &str) -> Result<Vec<Event>, String> {
    let view = message_view(text)?;
    let Some(list) = view["payload"].as_array() else {
        return Err("an \"event\" notification carries a list of serialized events as its payload; this payload is not a list".into());
    };
    list.iter()
        .map(|e| Event::deserialize(e).map_err(|why| format!("\"event\" notification: {why}")))
        .collect()
}

/// The Decode operator: decodes every chunk on one worker (round-robin by sequence number);
/// out come the routed samples and the events, each numbered in input order.
pub fn decode<'s>(
    chunks: StreamVec<'s, u64, Chunk>,
    mut decoder: Decoder,
    diag: Rc<RefCell<Diag>>,
) -> (StreamVec<'s, u64, Routed>, StreamVec<'s, u64, OrderedEvent>) {
    let scope = chunks.scope();
    let peers = scope.peers() as u64;
    let mut builder = OperatorBuilder::new("Decode".to_owned(), scope);
    let mut chunks = builder.new_input(chunks, Exchange::new(move |c: &Chunk| c.seq % peers));
    let (samples_out, routed) = builder.new_output::<Vec<Routed>>();
    let (events_out, events) = builder.new_output::<Vec<OrderedEvent>>();
    let mut samples_out = OutputBuilder::from(samples_out);
    let mut events_out = OutputBuilder::from(events_out);
    builder.build(move |_| {
        move |_frontiers| {
            let mut samples_handle = samples_out.activate();
            let mut events_handle = events_out.activate();
            chunks.for_each_stamp(|cap, data| {
                let mut samples = samples_handle.session(&cap);
                let mut events = events_handle.session(&cap);
                let mut diag = diag.borrow_mut();
                for batch in data {
                    for chunk in batch.drain(..) {
                        decoder.decode(&chunk, &mut diag, &mut |r| samples.give(r), &mut |e| {
                            events.give(e)
                        });
                    }
                }
            });
        }
    });
    (routed, events)
}
