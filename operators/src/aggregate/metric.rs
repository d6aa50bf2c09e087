//! One metric's state: Gnocchi's raw buffer plus, per granularity, the aggregates of every
//! method (one row per bucket) and the running aggregates of the newest bucket.

use std::collections::VecDeque;
use std::sync::Arc;

use super::method::{Base, Method};
use super::policy::ArchivePolicy;
use super::running::Running;

/// A measure or an aggregate: (timestamp in nanoseconds since the epoch, value).
pub type Point = (i64, f64);

/// What one batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Measures merged into the raw buffer.
    pub accepted: usize,
    /// Measures older than `back_window` allows, dropped (Gnocchi drops them silently;
    /// meterflow counts them).
    pub late: usize,
    /// Measures sharing a timestamp with another of the same batch (the smallest value is kept).
    pub duplicates: usize,
    /// Measures that are NaN or infinite, dropped.
    pub invalid: usize,
    /// Measures already held with the same value (a replayed batch), ignored.
    pub replayed: usize,
}

/// A metric aggregated by an archive policy, batch by batch, exactly as Gnocchi's storage does:
/// each batch is sorted, measures older than `floor(last, block) − block × back_window` are
/// dropped, the rest merged into the raw buffer (a new measure replaces an old one at the same
/// timestamp), every bucket from the first new measure on is recomputed from the raw points,
/// the buffer is cut back to the window, and each series keeps the points newer than its last
/// point minus its timespan.
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use meterflow_operators::aggregate::{ArchivePolicy, Metric};
/// let policy = ArchivePolicy::from_json(&serde_json::json!({
///     "name": "p", "aggregation_methods": ["mean", "count"], "definition": [{"granularity": 60, "points": 10}]})).unwrap();
/// let mut m = Metric::new(Arc::new(policy));
/// let s = 1_000_000_000i64;
/// m.add_batch(vec![(0, 1.0), (30 * s, 3.0), (60 * s, 10.0)]);
/// let mean = m.measures("mean".parse().unwrap(), None);
/// assert_eq!(mean, [(0, 60.0, 2.0), (60 * s, 60.0, 10.0)]);
/// ```
#[derive(Clone, Debug)]
pub struct Metric {
    policy: Arc<ArchivePolicy>,
    raw: Vec<Point>,
    /// Per granule (like `policy.definition`), one row per bucket with a value per method
    /// (like `policy.methods`).
    series: Vec<Rows>,
    /// Per granule, the running aggregates of its newest bucket (see [`Metric::append`]).
    open: Vec<Option<Open>>,
    /// Whether appends may take the running path (every granularity divides the block, so the
    /// raw buffer always holds whole buckets).
    incremental: bool,
    /// Whether open buckets keep their rate differences (a `rate:` median or percentile reads
    /// them; plain ones read the raw buffer).
    keep_rate_values: bool,
    has_rate: bool,
    /// The block of the newest measure when [`Metric::take_final`] last ran.
    taken_at: Option<i64>,
    /// The start of the window when the raw buffer was last cut back to it (nothing older is
    /// held): the buffer's head is only looked at when the window moves.
    cut_at: Option<i64>,
}

/// The newest bucket of one granule, aggregated as measures are appended. Its plain values
/// are the raw buffer's points in the bucket (the buffer holds whole buckets whenever this is
/// used), read from there by the order statistics. Small on purpose (appending a measure
/// touches the open bucket of every granule): what only `rate:` methods need is apart.
#[derive(Clone, Debug)]
struct Open {
    bucket: i64,
    plain: Running,
    /// Present when the policy has `rate:` methods.
    rate: Option<Box<RateOpen>>,
}

/// The `rate:` side of an open bucket: the differences between consecutive raw values.
#[derive(Clone, Debug, Default)]
struct RateOpen {
    running: Running,
    /// The bucket's first rate difference was counted by an earlier batch that started in an
    /// older bucket; a recompute from this bucket would not count it, so rebuild before reuse.
    stale: bool,
    /// The differences, kept only when a `rate:` median or percentile needs them.
    values: Vec<f64>,
}

/// Stores the values of `open`'s bucket (granularity `g`) into the granule's rows; a method
/// with no value keeps what was stored. The bucket's values are sorted at most once, however
/// many order statistics the policy has.
fn write_values(methods: &[Method], rows: &mut Rows, open: &Open, g: i64, raw: &[Point]) {
    let mut plain_sorted = None;
    rows.write_row(open.bucket, |mi| {
        open.value(methods[mi], g, raw, &mut plain_sorted)
    });
}

/// The values of the raw points in bucket `[bucket, bucket + g)`, sorted.
fn sorted_bucket_values(raw: &[Point], bucket: i64, g: i64) -> Vec<f64> {
    let lo = raw.partition_point(|p| p.0 < bucket);
    let hi = raw.partition_point(|p| p.0 < bucket.saturating_add(g));
    sorted(raw[lo..hi].iter().map(|p| p.1).collect())
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_unstable_by(f64::total_cmp);
    values
}

impl Open {
    /// An empty bucket; `rate` when the policy has `rate:` methods.
    fn new(bucket: i64, rate: bool) -> Open {
        Open {
            bucket,
            plain: Running::default(),
            rate: rate.then(Box::default),
        }
    }

    /// Empties it for the next bucket, keeping its allocations.
    fn reset(&mut self, bucket: i64) {
        self.bucket = bucket;
        self.plain.clear();
        if let Some(rate) = &mut self.rate {
            rate.running.clear();
            rate.stale = false;
            rate.values.clear();
        }
    }

    /// Adds the next rate difference (a policy with `rate:` methods).
    fn push_rate(&mut self, d: f64, keep: bool) {
        if let Some(rate) = &mut self.rate {
            rate.running.push(d);
            if keep {
                rate.values.push(d);
            }
        }
    }

    fn stale(&self) -> bool {
        self.rate.as_ref().is_some_and(|r| r.stale)
    }
}

fn floor(ts: i64, g: i64) -> i64 {
    ts.div_euclid(g) * g
}

/// [`floor`], without the division when `ts` falls in the bucket `near` starts (the usual
/// case: the bucket of the previous measure). `near` must be a bucket start of `g`.
fn floor_near(ts: i64, g: i64, near: Option<i64>) -> i64 {
    match near {
        Some(near) if ts >= near && ts.checked_sub(near).is_some_and(|d| d < g) => near,
        _ => floor(ts, g),
    }
}

impl Metric {
    /// An empty metric under `policy`.
    pub fn new(policy: Arc<ArchivePolicy>) -> Metric {
        let series = vec![Rows::new(policy.methods.len()); policy.definition.len()];
        let block = policy.block();
        Metric {
            open: vec![None; policy.definition.len()],
            incremental: policy.definition.iter().all(|g| block % g.granularity == 0),
            keep_rate_values: policy
                .methods
                .iter()
                .any(|m| m.rate && matches!(m.base, Base::Median | Base::Pct(_))),
            has_rate: policy.methods.iter().any(|m| m.rate),
            policy,
            raw: Vec::new(),
            series,
            taken_at: None,
            cut_at: None,
        }
    }

    /// The same metric, always recomputing buckets from the raw points (the reference the
    /// running path is tested against).
    pub fn without_running_aggregates(mut self) -> Metric {
        self.incremental = false;
        self
    }

    /// The policy.
    pub fn policy(&self) -> &ArchivePolicy {
        &self.policy
    }

    /// Adds one batch of measures (one notification's worth, for `back_window` purposes).
    pub fn add_batch(&mut self, mut batch: Vec<Point>) -> BatchOutcome {
        self.add_batch_from(&mut batch)
    }

    /// [`Metric::add_batch`] taking the points out of `batch` (left empty, its allocation
    /// kept for the next batch).
    pub fn add_batch_from(&mut self, batch: &mut Vec<Point>) -> BatchOutcome {
        let outcome = self.add_points(batch);
        batch.clear();
        outcome
    }

    fn add_points(&mut self, batch: &mut Vec<Point>) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        let before = batch.len();
        batch.retain(|p| p.1.is_finite());
        outcome.invalid = before - batch.len();
        if batch.is_empty() {
            return outcome;
        }
        batch.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let before = batch.len();
        batch.dedup_by_key(|p| p.0);
        outcome.duplicates = before - batch.len();
        let first_in_batch = batch[0].0;
        let block = self.policy.block();
        let window = block.saturating_mul(self.policy.effective_back_window() as i64);
        if let Some(&(last, _)) = self.raw.last() {
            let block_start = self.cut_at.map(|c| c + window);
            let cutoff = floor_near(last, block, block_start) - window;
            let before = batch.len();
            batch.retain(|p| p.0 >= cutoff);
            outcome.late = before - batch.len();
        }
        if batch.is_empty() {
            return outcome;
        }
        // A batch whose every measure is already held with the same value (a replay after a
        // restart, at-least-once delivery) changes nothing; Gnocchi would still recompute from
        // it, which for `rate:` methods can lose the difference across the buffer's start.
        let after_all = self.raw.last().is_none_or(|l| l.0 < batch[0].0);
        if !after_all && self.raw.len() >= batch.len() && batch.iter().all(|p| self.holds(*p)) {
            outcome.replayed = batch.len();
            return outcome;
        }
        outcome.accepted = batch.len();
        // Gnocchi recomputes from the batch's first measure, late ones included; a batch that
        // dropped late measures so recomputes older buckets and takes the general path.
        let appends = outcome.late == 0 && after_all;
        // Granules whose newest bucket moved: only their series can have points to retire.
        // (A bit per granule; granules past the 64th always count as moved.)
        let mut moved: u64 = !0;
        if appends && self.incremental {
            let first_new = self.raw.len();
            self.raw.extend_from_slice(batch);
            for gi in 0..self.policy.definition.len() {
                let before = self.open[gi].as_ref().map(|o| o.bucket);
                self.append(gi, first_new);
                if gi < 64 && self.open[gi].as_ref().map(|o| o.bucket) == before {
                    moved &= !(1 << gi);
                }
            }
        } else {
            // Store what the open buckets show first: a recompute that yields no value for a
            // bucket keeps what was stored, as Gnocchi does.
            for gi in 0..self.policy.definition.len() {
                if let Some(open) = self.open[gi].take() {
                    self.write(gi, &open);
                }
            }
            self.merge(batch);
            let from = self.raw[0].0.max(first_in_batch);
            for gi in 0..self.policy.definition.len() {
                self.recompute(gi, from);
            }
        }
        let last = self.raw.last().map_or(0, |p| p.0);
        let keep_from = floor_near(last, block, self.cut_at.map(|c| c + window)) - window;
        // Points older than the window are dropped before they are merged, so only a moved
        // window (or a resumed buffer) can leave any in the buffer.
        if self.cut_at != Some(keep_from) {
            self.cut_at = Some(keep_from);
            if self.raw.first().is_some_and(|p| p.0 < keep_from) {
                let cut = self.raw.partition_point(|p| p.0 < keep_from);
                self.raw.drain(..cut);
            }
        }
        for gi in 0..self.policy.definition.len() {
            let granule_moved = gi >= 64 || moved & (1 << gi) != 0;
            let span = self.policy.definition[gi].timespan();
            if let Some(span) = span.filter(|_| granule_moved) {
                self.retain_newest(gi, span);
            }
        }
        outcome
    }

    /// Gnocchi's retention for granule `gi`: each method's series keeps the buckets newer
    /// than its own newest bucket minus `span`.
    fn retain_newest(&mut self, gi: usize, span: i64) {
        let open = self.open[gi].as_ref();
        let rows = &mut self.series[gi];
        let Some(first) = rows.first_time() else {
            return;
        };
        // No method's newest bucket is newer than this: when the oldest row is inside the
        // span from it, every method keeps all of its rows.
        let newest = rows
            .last_time()
            .max(open.map(|o| o.bucket))
            .unwrap_or(first);
        if first > newest - span {
            return;
        }
        for (mi, method) in self.policy.methods.iter().enumerate() {
            let last = match open.filter(|o| o.has_value(*method)) {
                Some(o) => Some(o.bucket),
                None => rows.last_time_of(mi),
            };
            if let Some(last) = last {
                rows.remove_before(mi, (last - span).saturating_add(1));
            }
        }
        rows.drop_empty_front();
    }

    /// Whether the raw buffer holds exactly this point.
    fn holds(&self, p: Point) -> bool {
        self.raw
            .binary_search_by_key(&p.0, |q| q.0)
            .is_ok_and(|i| self.raw[i].1.to_bits() == p.1.to_bits())
    }

    /// Merges sorted, unique new points into the raw buffer; a new point replaces an old one
    /// at the same timestamp.
    fn merge(&mut self, new: &[Point]) {
        if self.raw.last().is_none_or(|l| l.0 < new[0].0) {
            self.raw.extend_from_slice(new);
            return;
        }
        let old = std::mem::take(&mut self.raw);
        let mut merged = Vec::with_capacity(old.len() + new.len());
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            if j == new.len() || (i < old.len() && old[i].0 < new[j].0) {
                merged.push(old[i]);
                i += 1;
            } else {
                if i < old.len() && old[i].0 == new[j].0 {
                    i += 1;
                }
                merged.push(new[j]);
                j += 1;
            }
        }
        self.raw = merged;
    }

    /// The running path for a batch that only appends (raw points `first_new..` are new):
    /// gives exactly what [`Metric::recompute`] from the first new point would, updating the
    /// newest bucket's running aggregates instead of rereading its points.
    fn append(&mut self, gi: usize, first_new: usize) {
        let g = self.policy.definition[gi].granularity;
        let near = self.open[gi].as_ref().map(|o| o.bucket);
        let start = floor_near(self.raw[first_new].0, g, near);
        // The open bucket is updated in place (it is large: moving it costs more than the
        // arithmetic).
        let reusable = matches!(&self.open[gi], Some(o) if o.bucket == start && !o.stale());
        if !reusable {
            // An older (or stale) bucket: store what it shows, then start over from raw.
            if let Some(o) = self.open[gi].take() {
                self.write(gi, &o);
            }
            self.open[gi] = Some(self.rebuild(g, start, first_new));
        }
        let Metric {
            raw,
            series,
            open,
            policy,
            has_rate,
            keep_rate_values,
            ..
        } = self;
        let open = open[gi].as_mut().expect("set above");
        for j in first_new..raw.len() {
            let (t, v) = raw[j];
            let bucket = floor_near(t, g, Some(open.bucket));
            if bucket != open.bucket {
                write_values(&policy.methods, &mut series[gi], open, g, raw);
                open.reset(bucket);
            }
            open.plain.push(v);
            if *has_rate && j > 0 {
                let (pt, pv) = raw[j - 1];
                // Recompute from `start` pairs points from `start - g` on.
                if j > first_new || pt >= start - g {
                    open.push_rate(v - pv, *keep_rate_values);
                    if bucket != start && open.plain.len() == 1 && pt < bucket - g {
                        if let Some(rate) = &mut open.rate {
                            rate.stale = true;
                        }
                    }
                }
            }
        }
        // The newest bucket's values are read from `open` (see `values`), written when it closes.
    }

    /// Running aggregates of bucket `bucket` from the raw points before index `end`, as a
    /// recompute from that bucket sees them.
    fn rebuild(&self, g: i64, bucket: i64, end: usize) -> Open {
        let mut open = Open::new(bucket, self.has_rate);
        let lo = self.raw[..end].partition_point(|p| p.0 < bucket);
        for j in lo..end {
            open.plain.push(self.raw[j].1);
            if self.has_rate && j > 0 && self.raw[j - 1].0 >= bucket - g {
                open.push_rate(self.raw[j].1 - self.raw[j - 1].1, self.keep_rate_values);
            }
        }
        open
    }

    /// Stores the values of `open`'s bucket (a method with no value keeps what was stored).
    fn write(&mut self, gi: usize, open: &Open) {
        let g = self.policy.definition[gi].granularity;
        write_values(
            &self.policy.methods,
            &mut self.series[gi],
            open,
            g,
            &self.raw,
        );
    }

    /// Recomputes every bucket of granule `gi` from the one holding `from`.
    fn recompute(&mut self, gi: usize, from: i64) {
        let g = self.policy.definition[gi].granularity;
        let start = floor(from, g);
        let first = self.raw.partition_point(|p| p.0 < start);
        // For rate: methods, the differences also use the point(s) up to one granularity earlier.
        let rate_first = self.raw.partition_point(|p| p.0 < start - g);
        let diffs: Vec<Point> = if self.policy.methods.iter().any(|m| m.rate) {
            self.raw[rate_first..]
                .windows(2)
                .map(|w| (w[1].0, w[1].1 - w[0].1))
                .filter(|d| d.0 >= start)
                .collect()
        } else {
            Vec::new()
        };
        let mut values = Vec::new();
        for (mi, method) in self.policy.methods.iter().enumerate() {
            let points: &[Point] = if method.rate {
                &diffs
            } else {
                &self.raw[first..]
            };
            let rows = &mut self.series[gi];
            for bucket in points.chunk_by(|a, b| floor(a.0, g) == floor(b.0, g)) {
                values.clear();
                values.extend(bucket.iter().map(|p| p.1));
                // A bucket with no value (std of one point) keeps what was stored, as Gnocchi does.
                if let Some(v) = method.reduce(&values) {
                    rows.set(floor(bucket[0].0, g), mi, v);
                }
            }
        }
    }

    /// The start of the oldest bucket of granule `gi` that a later batch can still change
    /// (buckets before it are final), or `None` before the first measure. Later measures older
    /// than `floor(last, block) − block × back_window` are dropped, and the raw buffer starts
    /// there, so no recompute reaches back past this.
    pub fn open_from(&self, gi: usize) -> Option<i64> {
        let last = self.raw.last()?.0;
        let block = self.policy.block();
        let window = block.saturating_mul(self.policy.effective_back_window() as i64);
        Some(floor(
            floor(last, block) - window,
            self.policy.definition[gi].granularity,
        ))
    }

    /// Moves every final bucket out of memory, calling `out(granule, method, bucket, value)`
    /// for each (indices into the policy's `definition` and `methods`), oldest first per series.
    pub fn take_final(&mut self, out: &mut dyn FnMut(usize, usize, i64, f64)) {
        // What is final only changes when the newest measure enters a new block: every bucket
        // written since the last call is at or after the cutoff it had then.
        let block = self
            .raw
            .last()
            .map(|p| floor_near(p.0, self.policy.block(), self.taken_at));
        if block.is_some() && block == self.taken_at {
            return;
        }
        self.taken_at = block;
        for gi in 0..self.policy.definition.len() {
            let Some(from) = self.open_from(gi) else {
                return;
            };
            let rows = &mut self.series[gi];
            if rows.first_time().is_some_and(|t| t < from) {
                rows.drain_before(from, &mut |mi, t, v| out(gi, mi, t, v));
            }
        }
    }

    /// The value of every bucket still held in memory (those a later batch may change), as
    /// `out(granule, method, bucket, value)`.
    pub fn provisional(&self, out: &mut dyn FnMut(usize, usize, i64, f64)) {
        for (gi, rows) in self.series.iter().enumerate() {
            for (mi, &method) in self.policy.methods.iter().enumerate() {
                let open = self.open_value(gi, method);
                let until = open.map_or(i64::MAX, |(bucket, _)| bucket);
                for (t, v) in rows.range(mi, i64::MIN, until) {
                    out(gi, mi, t, v);
                }
                if let Some((bucket, v)) = open {
                    out(gi, mi, bucket, v);
                }
            }
        }
    }

    /// The newest measure's timestamp, if any: buckets of granularity `g` before
    /// `floor(newest, g)` are closed in the metric's event time.
    pub fn newest(&self) -> Option<i64> {
        self.raw.last().map(|p| p.0)
    }

    /// The values of granule `gi`, method `mi` for the buckets in `[from, until)` still held
    /// in memory (the newest bucket's current value included), oldest first.
    pub fn values_in(
        &self,
        gi: usize,
        mi: usize,
        (from, until): (i64, i64),
        out: &mut dyn FnMut(i64, f64),
    ) {
        let (Some(rows), Some(&method)) = (self.series.get(gi), self.policy.methods.get(mi)) else {
            return;
        };
        let open = self.open_value(gi, method);
        let stored_until = open.map_or(until, |(bucket, _)| bucket.min(until));
        for (t, v) in rows.range(mi, from, stored_until) {
            out(t, v);
        }
        if let Some((bucket, v)) = open.filter(|&(b, _)| b >= from && b < until) {
            out(bucket, v);
        }
        if let Some((bucket, _)) = open {
            let rest = if bucket >= from { bucket + 1 } else { from };
            for (t, v) in rows.range(mi, rest, until) {
                out(t, v);
            }
        }
    }

    /// The raw measures kept for later batches (those inside the back window), oldest first.
    pub fn raw(&self) -> &[Point] {
        &self.raw
    }

    /// A metric resumed from what [`Metric::raw`] and [`Metric::provisional`] gave: later
    /// batches aggregate exactly as they would have on the original.
    pub fn restore(
        policy: Arc<ArchivePolicy>,
        mut raw: Vec<Point>,
        buckets: impl IntoIterator<Item = (usize, usize, i64, f64)>,
    ) -> Metric {
        let mut metric = Metric::new(policy);
        raw.sort_by_key(|p| p.0);
        raw.dedup_by_key(|p| p.0);
        metric.raw = raw;
        let width = metric.policy.methods.len();
        for (gi, mi, t, v) in buckets {
            if let Some(rows) = metric.series.get_mut(gi).filter(|_| mi < width) {
                rows.set(t, mi, v);
            }
        }
        metric
    }

    /// The aggregates of `method`, at `granularity` (nanoseconds) or at every granularity
    /// (coarsest first), as `(timestamp ns, granularity seconds, value)`, oldest first.
    /// Empty when the policy has no such method or granularity.
    pub fn measures(&self, method: Method, granularity: Option<i64>) -> Vec<(i64, f64, f64)> {
        let Some(mi) = self.policy.methods.iter().position(|m| *m == method) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (gi, granule) in self.policy.definition.iter().enumerate() {
            if granularity.is_some_and(|g| g != granule.granularity) {
                continue;
            }
            let rows = &self.series[gi];
            // The newest bucket's value lives in `open` while the bucket is being appended to.
            let open = self.open_value(gi, method);
            let last = match open {
                Some((bucket, _)) => Some(bucket),
                None => rows.last_time_of(mi),
            };
            let oldest = match (granule.timespan(), last) {
                (Some(span), Some(last)) => last - span,
                _ => i64::MIN,
            };
            let stored_until = open.map_or(i64::MAX, |(bucket, _)| bucket);
            out.extend(
                rows.range(mi, oldest.saturating_add(1), stored_until)
                    .map(|(t, v)| (t, granule.seconds(), v)),
            );
            if let Some((bucket, v)) = open {
                out.push((bucket, granule.seconds(), v));
            }
        }
        out
    }
}

/// Keeps the points strictly newer than the last point minus `span`; `open` is a newer bucket
/// held outside the map.
/// The payload of a value no aggregation produces (arithmetic on finite values gives the
/// default NaN, never this one): "this method has no value for this bucket".
const ABSENT: u64 = 0x7ff8_a65e_0000_0001;

fn absent() -> f64 {
    f64::from_bits(ABSENT)
}

fn present(v: f64) -> bool {
    v.to_bits() != ABSENT
}

/// The aggregates of one granule, one row per bucket sorted by bucket, each row holding every
/// method's value (or [`ABSENT`]): closing a bucket writes one row, not one entry per method.
/// Buckets nearly always arrive newest last and leave oldest first, so deques make both O(1);
/// a late bucket is inserted in place.
#[derive(Clone, Debug)]
struct Rows {
    width: usize,
    times: VecDeque<i64>,
    /// `width` values per row.
    values: VecDeque<f64>,
}

impl Rows {
    fn new(width: usize) -> Rows {
        Rows {
            width,
            times: VecDeque::new(),
            values: VecDeque::new(),
        }
    }

    /// The index of bucket `t`'s row, made (every method absent) when missing.
    fn row(&mut self, t: i64) -> usize {
        match self.times.back() {
            Some(&last) if last == t => return self.times.len() - 1,
            Some(&last) if last > t => {}
            _ => {
                self.times.push_back(t);
                self.values
                    .extend(std::iter::repeat_n(absent(), self.width));
                return self.times.len() - 1;
            }
        }
        match self.times.binary_search(&t) {
            Ok(i) => i,
            Err(i) => {
                self.times.insert(i, t);
                for _ in 0..self.width {
                    self.values.insert(i * self.width, absent());
                }
                i
            }
        }
    }

    /// Sets method `mi`'s value of bucket `t`.
    fn set(&mut self, t: i64, mi: usize, v: f64) {
        let i = self.row(t);
        self.values[i * self.width + mi] = v;
    }

    /// Sets the value of every method `value` gives one for; the others keep theirs.
    fn write_row(&mut self, t: i64, mut value: impl FnMut(usize) -> Option<f64>) {
        if self.times.back().is_none_or(|&last| last < t) {
            self.times.push_back(t);
            self.values
                .extend((0..self.width).map(|mi| value(mi).unwrap_or_else(absent)));
            return;
        }
        let i = self.row(t);
        for mi in 0..self.width {
            if let Some(v) = value(mi) {
                self.values[i * self.width + mi] = v;
            }
        }
    }

    fn first_time(&self) -> Option<i64> {
        self.times.front().copied()
    }

    fn last_time(&self) -> Option<i64> {
        self.times.back().copied()
    }

    /// The newest bucket method `mi` has a value for.
    fn last_time_of(&self, mi: usize) -> Option<i64> {
        (0..self.times.len())
            .rev()
            .find(|i| present(self.values[i * self.width + mi]))
            .map(|i| self.times[i])
    }

    /// Removes and yields (method, bucket, value) of the buckets before `from`, method by
    /// method, oldest first.
    fn drain_before(&mut self, from: i64, out: &mut dyn FnMut(usize, i64, f64)) {
        let n = self.times.partition_point(|&t| t < from);
        for mi in 0..self.width {
            for i in 0..n {
                let v = self.values[i * self.width + mi];
                if present(v) {
                    out(mi, self.times[i], v);
                }
            }
        }
        self.times.drain(..n);
        self.values.drain(..n * self.width);
    }

    /// Removes method `mi`'s values of the buckets before `from` (the rows stay; see
    /// [`Rows::drop_empty_front`]).
    fn remove_before(&mut self, mi: usize, from: i64) {
        let n = self.times.partition_point(|&t| t < from);
        for i in 0..n {
            self.values[i * self.width + mi] = absent();
        }
    }

    /// Removes the oldest rows while no method has a value in them.
    fn drop_empty_front(&mut self) {
        let width = self.width;
        let n = (0..self.times.len())
            .take_while(|i| !(0..width).any(|mi| present(self.values[i * width + mi])))
            .count();
        self.times.drain(..n);
        self.values.drain(..n * width);
    }

    /// Method `mi`'s buckets in `lo..hi`, oldest first.
    fn range(&self, mi: usize, lo: i64, hi: i64) -> impl Iterator<Item = (i64, f64)> + '_ {
        let a = self.times.partition_point(|&t| t < lo);
        let b = self.times.partition_point(|&t| t < hi).max(a);
        (a..b)
            .map(move |i| (self.times[i], self.values[i * self.width + mi]))
            .filter(|p| present(p.1))
    }
}

impl Metric {
    /// The newest bucket of granule `gi` and its current value of `method`, while it is open.
    fn open_value(&self, gi: usize, method: Method) -> Option<(i64, f64)> {
        let g = self.policy.definition[gi].granularity;
        let open = self.open[gi].as_ref()?;
        Some((open.bucket, open.value(method, g, &self.raw, &mut None)?))
    }
}

impl Open {
    /// The bucket's current value of `method` (its granularity `g`; `raw` holds its points).
    /// `plain_sorted` holds the bucket's plain values once an order statistic sorted them.
    fn value(
        &self,
        method: Method,
        g: i64,
        raw: &[Point],
        plain_sorted: &mut Option<Vec<f64>>,
    ) -> Option<f64> {
        if method.rate {
            let rate = self.rate.as_ref()?;
            let mut rate_sorted = None;
            let rate_sorted = &mut rate_sorted;
            rate.running.value(method, move || {
                rate_sorted.insert(sorted(rate.values.clone()))
            })
        } else {
            self.plain.value(method, move || {
                plain_sorted.get_or_insert_with(|| sorted_bucket_values(raw, self.bucket, g))
            })
        }
    }

    /// Whether [`Open::value`] gives a value (without computing it).
    fn has_value(&self, method: Method) -> bool {
        match (&self.rate, method.rate) {
            (_, false) => self.plain.has_value(method),
            (Some(rate), true) => rate.running.has_value(method),
            (None, true) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn metric(policy: serde_json::Value) -> Metric {
        Metric::new(Arc::new(ArchivePolicy::from_json(&policy).unwrap()))
    }

    fn values(m: &Metric, method: &str) -> Vec<(i64, f64)> {
        m.measures(method.parse().unwrap(), None)
            .into_iter()
            .map(|(t, _, v)| (t / S, v))
            .collect()
    }

    #[test]
    fn late_measures_follow_back_window_of_the_largest_granularity() {
        // Policy low-like: g = block = 300 s, back_window 0 (SEMANTICS-UPSTREAM §4.4 example).
        let mut m = metric(
            serde_json::json!({"name": "x", "aggregation_methods": ["sum"], "definition": [{"granularity": 300, "points": 100}]}),
        );
        let t = |h: i64, mi: i64| (h * 3600 + mi * 60) * S;
        m.add_batch(vec![(t(12, 7), 1.0)]);
        let out = m.add_batch(vec![(t(12, 4), 7.0), (t(12, 8), 9.0)]);
        assert_eq!((out.accepted, out.late), (1, 1));
        let out = m.add_batch(vec![(t(12, 6), 3.0)]);
        assert_eq!(out.late, 0, "late but inside the current block");
        m.add_batch(vec![(t(12, 11), 5.0)]);
        let out = m.add_batch(vec![(t(12, 9), 100.0)]);
        assert_eq!(out.late, 1, "the block moved on");
        assert_eq!(
            values(&m, "sum"),
            [(t(12, 5) / S, 13.0), (t(12, 10) / S, 5.0)]
        );
    }

    #[test]
    fn duplicates_keep_the_smallest_and_later_batches_override() {
        let mut m = metric(
            serde_json::json!({"name": "x", "aggregation_methods": ["sum", "count"], "definition": [{"granularity": 60}]}),
        );
        let out = m.add_batch(vec![(10 * S, 5.0), (10 * S, 2.0), (20 * S, 1.0)]);
        assert_eq!(out.duplicates, 1);
        assert_eq!(values(&m, "sum"), [(0, 3.0)]);
        m.add_batch(vec![(10 * S, 7.0)]);
        assert_eq!(values(&m, "sum"), [(0, 8.0)]);
        assert_eq!(values(&m, "count"), [(0, 2.0)]);
    }

    #[test]
    fn rate_uses_differences_including_the_point_before_the_bucket() {
        let mut m = metric(
            serde_json::json!({"name": "x", "aggregation_methods": ["rate:mean", "rate:sum", "rate:last"], "definition": [{"granularity": 300}]}),
        );
        let t = |mi: i64| (12 * 3600 + mi * 60) * S;
        m.add_batch(vec![(t(-1), 8.0)]);
        m.add_batch(vec![(t(1), 10.0), (t(2), 15.0), (t(3), 25.0), (t(4), 26.0)]);
        let bucket = t(0) / S;
        assert_eq!(values(&m, "rate:sum"), [(bucket, 18.0)]);
        assert_eq!(values(&m, "rate:last"), [(bucket, 1.0)]);
        assert_eq!(values(&m, "rate:mean"), [(bucket, 4.5)]);
    }

    #[test]
    fn retention_keeps_points_newer_than_last_minus_timespan() {
        let mut m = metric(
            serde_json::json!({"name": "x", "aggregation_methods": ["last"], "definition": [{"granularity": 1, "points": 3}]}),
        );
        m.add_batch((0..10).map(|i| (i * S, i as f64)).collect());
        assert_eq!(values(&m, "last"), [(7, 7.0), (8, 8.0), (9, 9.0)]);
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// The running path gives what recomputing from the raw points gives, on streams that
        /// are mostly in order with gaps, late, duplicate and equal-time measures.
        #[test]
        fn running_aggregates_match_recompute(
            back_window in 0u64..3,
            batches in prop::collection::vec(
                prop::collection::vec((0i64..400, -50i64..50, 0u8..10), 1..6),
                1..40,
            ),
        ) {
            let policy = serde_json::json!({"name": "p", "back_window": back_window,
                "aggregation_methods": ["mean", "sum", "min", "max", "first", "last", "count", "std", "median", "90pct", "rate:mean", "rate:sum", "rate:last", "rate:median", "rate:10pct"],
                "definition": [{"granularity": 10, "points": 30}, {"granularity": 60, "points": 20}, {"granularity": 300, "points": 10}]});
            let mut running = metric(policy.clone());
            let mut reference = metric(policy).without_running_aggregates();
            let mut clock = 0i64;
            for batch in batches {
                let points: Vec<Point> = batch
                    .iter()
                    .map(|&(step, value, kind)| {
                        // Mostly forward by up to 40 s; sometimes a jump past a bucket, sometimes late.
                        let t = match kind {
                            0 => clock - step,
                            1 => clock + 700 + step,
                            _ => clock + step % 40,
                        };
                        clock = clock.max(t);
                        (t * S, value as f64)
                    })
                    .collect();
                prop_assert_eq!(running.add_batch(points.clone()), reference.add_batch(points));
            }
            for method in running.policy().methods.clone() {
                let (a, b) = (running.measures(method, None), reference.measures(method, None));
                prop_assert_eq!(a.len(), b.len(), "{}", method);
                for (x, y) in a.iter().zip(&b) {
                    prop_assert_eq!((x.0, x.1), (y.0, y.1), "{}", method);
                    let close = x.2 == y.2 || (x.2 - y.2).abs() <= 1e-9 * x.2.abs().max(y.2.abs()).max(1.0);
                    prop_assert!(close, "{} at {}: {} vs {}", method, x.0 / S, x.2, y.2);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Moving final buckets out after every batch and resuming from raw + provisional at
        /// random points gives the same series as one uninterrupted metric; final buckets never
        /// change after they are taken; replayed batches change nothing.
        #[test]
        fn final_buckets_and_resumes_match_an_uninterrupted_metric(
            batches in prop::collection::vec(
                prop::collection::vec((0i64..30, -50i64..50, 0u8..8), 1..6),
                1..30,
            ),
            resume_at in prop::collection::vec(any::<bool>(), 30),
        ) {
            let policy = serde_json::json!({"name": "p", "back_window": 1,
                "aggregation_methods": ["mean", "count", "std", "last", "rate:sum"],
                "definition": [{"granularity": 10, "points": 40}, {"granularity": 60, "points": 8}]});
            let mut whole = metric(policy.clone());
            let mut parts = metric(policy);
            let mut finals: std::collections::BTreeMap<(usize, usize, i64), f64> = Default::default();
            let mut clock = 0i64;
            for (i, batch) in batches.iter().enumerate() {
                let points: Vec<Point> = batch.iter().map(|&(step, v, kind)| {
                    let t = if kind == 0 { clock - step * 3 } else { clock + step };
                    clock = clock.max(t);
                    (t * S, v as f64)
                }).collect();
                whole.add_batch(points.clone());
                parts.add_batch(points.clone());
                let mut twice = Vec::new();
                parts.take_final(&mut |gi, mi, t, v| {
                    if finals.insert((gi, mi, t), v).is_some() {
                        twice.push(t);
                    }
                });
                prop_assert!(twice.is_empty(), "buckets taken twice: {:?}", twice);
                let replay = parts.add_batch(points.clone());
                prop_assert_eq!(replay.accepted, 0, "a replayed batch is a no-op");
                if resume_at[i] {
                    let mut buckets = Vec::new();
                    parts.provisional(&mut |gi, mi, t, v| buckets.push((gi, mi, t, v)));
                    parts = Metric::restore(parts.policy.clone(), parts.raw().to_vec(), buckets);
                }
            }
            let mut all = finals.clone();
            parts.provisional(&mut |gi, mi, t, v| { all.insert((gi, mi, t), v); });
            for (mi, method) in whole.policy().methods.clone().into_iter().enumerate() {
                for (gi, granule) in whole.policy().definition.clone().into_iter().enumerate() {
                    let want = whole.measures(method, Some(granule.granularity));
                    let series: Vec<(i64, f64)> = all.range((gi, mi, i64::MIN)..=(gi, mi, i64::MAX)).map(|(k, v)| (k.2, *v)).collect();
                    let last = series.last().map_or(0, |p| p.0);
                    let oldest = granule.timespan().map_or(i64::MIN, |s| last - s);
                    let got: Vec<(i64, f64)> = series.into_iter().filter(|p| p.0 > oldest).collect();
                    prop_assert_eq!(got.len(), want.len(), "{}@{}", method, granule.granularity / S);
                    for (g, w) in got.iter().zip(&want) {
                        let close = (g.1 - w.2).abs() <= 1e-9 * g.1.abs().max(w.2.abs()).max(1.0);
                        prop_assert!(g.0 == w.0 && close, "{} at {}: {} vs {}", method, g.0 / S, g.1, w.2);
                    }
                }
            }
        }
    }

    #[test]
    fn invalid_values_are_counted_not_stored() {
        let mut m = metric(
            serde_json::json!({"name": "x", "aggregation_methods": ["count"], "definition": [{"granularity": 1}]}),
        );
        let out = m.add_batch(vec![(0, f64::NAN), (S, f64::INFINITY), (2 * S, 1.0)]);
        assert_eq!((out.invalid, out.accepted), (2, 1));
    }
}
