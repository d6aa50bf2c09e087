//! Running aggregates of one bucket, for batches that only append newer measures: the same
//! values `Method::reduce` gives over the bucket's points (bit for bit for everything but
//! `std`, which uses Welford's update and agrees to ~1e-15 relative), without rereading them.

use super::method::{percentile_sorted, Base, Method};

/// The state of one bucket's values, fed in timestamp order: one cache line. Order statistics
/// (median, percentiles) need the values themselves, which the caller keeps (the raw buffer
/// for plain values, a vector for `rate:` differences) and hands to [`Running::value`].
#[derive(Clone, Debug, Default)]
pub(super) struct Running {
    n: u64,
    sum: f64,
    min: f64,
    max: f64,
    first: f64,
    last: f64,
    /// Welford's running mean and sum of squared differences from it, for `std`.
    mean: f64,
    m2: f64,
}

impl Running {
    /// Empties it.
    pub(super) fn clear(&mut self) {
        *self = Running::default();
    }

    /// Whether [`Running::value`] gives a value for `method`.
    pub(super) fn has_value(&self, method: Method) -> bool {
        match method.base {
            Base::Std => self.n >= 2,
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
    }

    /// The value of `method` for the bucket so far (`None` where `reduce` gives none);
    /// `sorted` gives the bucket's values sorted, when an order statistic needs them.
    pub(super) fn value<'v>(
        &self,
        method: Method,
        sorted: impl FnOnce() -> &'v [f64],
    ) -> Option<f64> {
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
            Base::Median => percentile_sorted(sorted(), 50.0),
            Base::Pct(p) => percentile_sorted(sorted(), f64::from(p)),
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
                let mut r = Running::default();
                values[..n].iter().for_each(|v| r.push(*v));
                let mut sorted = values[..n].to_vec();
                sorted.sort_unstable_by(f64::total_cmp);
                let (a, b) = (r.value(m, || &sorted), m.reduce(&values[..n]));
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
