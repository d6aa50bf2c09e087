//! The end-of-run summary: what came in, what each sink published, what was dropped and why.

use std::fmt::Write;

use meterflow_engine::metrics::DropReason;

use crate::dataflow::RunReport;

/// Renders `report` as the human summary `meterflow run` prints on stderr.
pub fn render(report: &RunReport) -> String {
    let c = &report.counters;
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "meterflow: {} lines, {} notifications, {} samples in {:.3}s ({:.0} samples/s, {} worker{})",
        c.lines,
        c.notifications,
        c.samples_in,
        secs,
        c.samples_in as f64 / secs,
        report.workers,
        if report.workers == 1 { "" } else { "s" }
    );
    for (name, sink) in report.sinks.iter().zip(&c.sinks) {
        let _ = match sink.events {
            0 => writeln!(
                s,
                "  sink {name}: {} in, {} out",
                sink.samples_in, sink.samples_out
            ),
            n if sink.samples_in == 0 => writeln!(s, "  sink {name}: {n} events"),
            n => writeln!(
                s,
                "  sink {name}: {} in, {} out, {n} events",
                sink.samples_in, sink.samples_out
            ),
        };
    }
    if c.events_published > 0 {
        let _ = writeln!(
            s,
            "  events: {} made from notifications, {} published",
            c.events, c.events_published
        );
    }
    if c.measures > 0 || c.buckets_written > 0 {
        let _ = writeln!(
            s,
            "  store: {} measures aggregated, {} bucket values written",
            c.measures, c.buckets_written
        );
    }
    if c.alarms > 0 || c.alarm_evaluations > 0 {
        let _ = write!(
            s,
            "  alarms: {} alarms, {} evaluations, {} transitions, {} notifications",
            c.alarms, c.alarm_evaluations, c.alarm_transitions, c.alarm_notifications
        );
        match report.notifier {
            Some(n) => {
                let pending = n.sent.saturating_sub(n.delivered + n.dead_lettered);
                let _ = writeln!(
                    s,
                    " ({} delivered, {} dead-lettered, {pending} still pending: resent at the next start)",
                    n.delivered, n.dead_lettered
                );
            }
            None => s.push('\n'),
        }
    }
    if let Some(k) = report.checkpoints {
        let _ = write!(
            s,
            "  checkpoints: {} taken, the last {} bytes in {} ms",
            k.completed,
            k.last_bytes,
            k.last_duration.as_millis()
        );
        if let Some(from) = k.restored {
            let _ = write!(s, "; resumed from checkpoint {from}");
        }
        if k.failed > 0 {
            let _ = write!(s, "; {} failed (see the log)", k.failed);
        }
        s.push('\n');
    }
    if c.samples_unrouted > 0 {
        let _ = writeln!(s, "  not selected by any source: {}", c.samples_unrouted);
    }
    if c.state_forgotten > 0 {
        let _ = writeln!(
            s,
            "  series forgotten by the transformers after a quiet span of event time (--forget-after): {}",
            c.state_forgotten
        );
    }
    if c.metrics_released > 0 {
        let _ = writeln!(
            s,
            "  metrics released from memory after a quiet span (--forget-after; kept in the store): {}, read back when they spoke again: {}",
            c.metrics_released, c.metrics_reloaded
        );
    }
    if c.held > 0 {
        let _ = writeln!(
            s,
            "  held in transformers at end of input (released by later batches, as in Ceilometer): {}",
            c.held
        );
    }
    let dropped = c.dropped_total();
    if dropped == 0 {
        let _ = writeln!(s, "  dropped: 0");
    } else {
        let _ = writeln!(s, "  dropped: {dropped}");
        for r in DropReason::ALL {
            if c.dropped(r) > 0 {
                let _ = writeln!(s, "    {}: {}", r.as_str(), c.dropped(r));
            }
        }
    }
    s
}

/// The same report as one JSON object (for scripts: `meterflow run --summary-json`).
pub fn json(report: &RunReport) -> serde_json::Value {
    let c = &report.counters;
    let dropped: serde_json::Map<String, serde_json::Value> = DropReason::ALL
        .iter()
        .map(|r| (r.as_str().to_owned(), c.dropped(*r).into()))
        .collect();
    let sinks: serde_json::Map<String, serde_json::Value> = report
        .sinks
        .iter()
        .zip(&c.sinks)
        .map(|(n, s)| {
            (
                n.clone(),
                serde_json::json!({"in": s.samples_in, "out": s.samples_out, "events": s.events}),
            )
        })
        .collect();
    serde_json::json!({
        "lines": c.lines,
        "notifications": c.notifications,
        "samples_in": c.samples_in,
        "unrouted": c.samples_unrouted,
        "held": c.held,
        "forgotten": c.state_forgotten,
        "metrics_open": c.metrics_open,
        "metrics_released": c.metrics_released,
        "metrics_reloaded": c.metrics_reloaded,
        "measures": c.measures,
        "buckets_written": c.buckets_written,
        "sinks": sinks,
        "events": {"made": c.events, "published": c.events_published},
        "dropped": dropped,
        "alarms": {
            "alarms": c.alarms,
            "evaluations": c.alarm_evaluations,
            "transitions": c.alarm_transitions,
            "notifications": c.alarm_notifications,
            "events": c.events,
            "delivered": report.notifier.map_or(0, |n| n.delivered),
            "dead_lettered": report.notifier.map_or(0, |n| n.dead_lettered),
        },
        "checkpoints": report.checkpoints.map(|k| serde_json::json!({
            "taken": k.completed,
            "failed": k.failed,
            "last_bytes": k.last_bytes,
            "last_seconds": k.last_duration.as_secs_f64(),
            "resumed_from": k.restored,
        })),
        "seconds": report.elapsed.as_secs_f64(),
        "workers": report.workers,
    })
}
