//! Running aggregates of one bucket, for batches that only append newer measures: the same
//! values `Method::reduce` gives over the bucket's points (bit for bit for everything but
//! `std`, which uses Welford's update and agrees to ~1e-15 relative), without rereading them.

use super::method::{percentile_sorted, Base, Method};

/// The state of one bucket's values, fed in timestamp order.
#[derive(Clone, Debug, Default)]
pub(super) struct Running {
    n: u64,
    sum: f64,
    min: f64,
    max: f64,
    first: f64,
    last: f64,
    mean: f64,
    m2: f64,
    /// The values in arrival order, kept only when a median or percentile is asked for
    /// (sorted when read: appending stays O(1), a bucket is read about once, when it closes).
    values: Option<Vec<f64>>,
}

impl Running {
    /// An empty bucket; `keep_sorted` when order statistics are needed.
    pub(super) fn new(keep_sorted: bool) -> Running {
        Running {
            values: keep_sorted.then(Vec::new),
            ..Running::default()
        }
    }

    /// Empties it, keeping the allocation of its kept values.
    pub(super) fn clear(&mut self) {
        let values = self.values.take().map(|mut v| {
            v.clear();
            v
        });
        *self = Running {
            values,
            ..Running::default()
        };
    }

    /// Whether [`Running::value`] gives a value for `method`.
    pub(super) fn has_value(&self, method: Method) -> bool {
        match method.base {
            Base::Std => self.n >= 2,
            Base::Median | Base::Pct(_) => self.n > 0 && self.values.is_some(),
            _ => self.n > 0,
        }
    }

    /// How many values the bucket has.
    pub(super) fn len(&self) -> u64 {
        self.n
    }

    /// Adds the next value (in timestamp order).
    pub(super) fn push(&mut self, v: f64) {
        if self.n == 0 {
            self.min = v;
            self.max = v;
            self.first = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.last = v;
        self.n += 1;
        self.sum += v;
        let delta = v - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (v - self.mean);
        if let Some(values) = &mut self.values {
            values.push(v);
        }
    }

    fn sorted(&self) -> Option<Vec<f64>> {
        let mut sorted = self.values.clone()?;
        sorted.sort_unstable_by(f64::total_cmp);
        Some(sorted)
    }

    /// The value of `method` for the bucket so far (`None` where `reduce` gives none).
    pub(super) fn value(&self, method: Method) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let n = self.n as f64;
        Some(match method.base {
            Base::Mean => self.sum / n,
            Base::Sum => self.sum,
            Base::Min => self.min,
            Base::Max => self.max,
            Base::First => self.first,
            Base::Last => self.last,
            Base::Count => n,
            Base::Std => {
                if self.n < 2 {
                    return None;
                }
                (self.m2 / (n - 1.0)).sqrt()
            }
            Base::Median => percentile_sorted(&self.sorted()?, 50.0),
            Base::Pct(p) => percentile_sorted(&self.sorted()?, f64::from(p)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_reduce() {
        let values = [3.5, -1.0, 8.25, 8.25, 0.0, 1e6, 2.0];
        for name in [
            "mean", "sum", "min", "max", "first", "last", "count", "std", "median", "5pct", "95pct",
        ] {
            let m: Method = name.parse().unwrap();
            for n in 1..=values.len() {
                let mut r = Running::new(true);
                values[..n].iter().for_each(|v| r.push(*v));
                let (a, b) = (r.value(m), m.reduce(&values[..n]));
                match (a, b) {
                    (Some(a), Some(b)) => assert!(
                        (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0),
                        "{name} n={n}: {a} vs {b}"
                    ),
                    (a, b) => assert_eq!(a, b, "{name} n={n}"),
                }
            }
        }
    }
}
