//! Gnocchi's aggregation methods: `mean sum min max first last count std median NNpct` and
//! `rate:<method>`.

use std::fmt;
use std::str::FromStr;

/// A method that reduces one bucket's values (the part after `rate:` for rate methods).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Base {
    /// Arithmetic mean.
    Mean,
    /// Sum.
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Value with the earliest timestamp.
    First,
    /// Value with the latest timestamp.
    Last,
    /// Number of values (as a float).
    Count,
    /// Sample standard deviation (n − 1); no value for a single point.
    Std,
    /// Median (mean of the two middle values for an even count).
    Median,
    /// Percentile with numpy's linear interpolation, 1 to 99.
    Pct(u8),
}

/// An aggregation method of an archive policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Method {
    /// The reduction.
    pub base: Base,
    /// `rate:`: applied to differences between consecutive raw values instead of the values.
    pub rate: bool,
}

/// An unknown method name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown aggregation method {0:?}; known: mean, sum, min, max, first, last, count, std, median, 1pct..99pct, and rate:<any of those>")]
pub struct MethodError(pub String);

impl FromStr for Method {
    type Err = MethodError;
    fn from_str(text: &str) -> Result<Method, MethodError> {
        let (rate, name) = match text.strip_prefix("rate:") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let base = match name {
            "mean" => Base::Mean,
            "sum" => Base::Sum,
            "min" => Base::Min,
            "max" => Base::Max,
            "first" => Base::First,
            "last" => Base::Last,
            "count" => Base::Count,
            "std" => Base::Std,
            "median" => Base::Median,
            _ => match name.strip_suffix("pct").and_then(|n| n.parse::<u8>().ok()) {
                Some(p)
                    if (1..=99).contains(&p)
                        && !name.starts_with('0')
                        && !name.starts_with('+') =>
                {
                    Base::Pct(p)
                }
                _ => return Err(MethodError(text.to_owned())),
            },
        };
        Ok(Method { base, rate })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rate {
            f.write_str("rate:")?;
        }
        match self.base {
            Base::Mean => f.write_str("mean"),
            Base::Sum => f.write_str("sum"),
            Base::Min => f.write_str("min"),
            Base::Max => f.write_str("max"),
            Base::First => f.write_str("first"),
            Base::Last => f.write_str("last"),
            Base::Count => f.write_str("count"),
            Base::Std => f.write_str("std"),
            Base::Median => f.write_str("median"),
            Base::Pct(p) => write!(f, "{p}pct"),
        }
    }
}

impl Method {
    /// The plain methods (without `rate:`), in Gnocchi's order.
    pub fn all_plain() -> Vec<Method> {
        let mut out: Vec<Method> = [
            "mean", "sum", "last", "max", "min", "std", "median", "first", "count",
        ]
        .iter()
        .map(|m| m.parse().expect("known"))
        .collect();
        out.extend((1..=99).map(|p| Method {
            base: Base::Pct(p),
            rate: false,
        }));
        out
    }

    /// Reduces one bucket: `values` in timestamp order (for `rate:` methods, the differences).
    /// `None` when the method has no value for it (an empty bucket, `std` of one point).
    ///
    /// # Examples
    /// ```
    /// use meterflow_operators::aggregate::Method;
    /// let v = [1.0, 2.0, 6.0, 10.0];
    /// let m = |name: &str| name.parse::<Method>().unwrap().reduce(&v).unwrap();
    /// assert_eq!(m("mean"), 4.75);
    /// assert_eq!(m("median"), 4.0);
    /// assert!((m("90pct") - 8.8).abs() < 1e-12);
    /// assert!((m("std") - 4.112987559751022).abs() < 1e-12);
    /// assert_eq!("std".parse::<Method>().unwrap().reduce(&[3.0]), None);
    /// ```
    pub fn reduce(&self, values: &[f64]) -> Option<f64> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        Some(match self.base {
            Base::Mean => values.iter().sum::<f64>() / n as f64,
            Base::Sum => values.iter().sum(),
            Base::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
            Base::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Base::First => values[0],
            Base::Last => values[n - 1],
            Base::Count => n as f64,
            Base::Std => {
                if n < 2 {
                    return None;
                }
                let mean = values.iter().sum::<f64>() / n as f64;
                let ss: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
                (ss / (n - 1) as f64).sqrt()
            }
            Base::Median => percentile(values, 50.0),
            Base::Pct(p) => percentile(values, f64::from(p)),
        })
    }
}

/// Gnocchi's `resample`: points grouped into buckets of `r` ns (rounded down), each reduced
/// with the method; for `rate:X`, X over the differences between consecutive points (the first
/// point has none), as Gnocchi derives a grouped series.
///
/// # Examples
/// ```
/// use meterflow_operators::aggregate::resampled;
/// let points = [(0, 1.0), (60, 3.0), (120, 10.0), (180, 11.0)];
/// let sum = "sum".parse().unwrap();
/// assert_eq!(resampled(&points, 120, sum), vec![(0, 4.0), (120, 21.0)]);
/// let rate = "rate:sum".parse().unwrap();
/// assert_eq!(resampled(&points, 120, rate), vec![(0, 2.0), (120, 8.0)]);
/// ```
pub fn resampled(points: &[(i64, f64)], r: i64, method: Method) -> Vec<(i64, f64)> {
    let series: Vec<(i64, f64)> = if method.rate {
        points
            .windows(2)
            .map(|w| (w[1].0, w[1].1 - w[0].1))
            .collect()
    } else {
        points.to_vec()
    };
    let mut out = Vec::new();
    for group in series.chunk_by(|a, b| a.0.div_euclid(r) == b.0.div_euclid(r)) {
        let values: Vec<f64> = group.iter().map(|p| p.1).collect();
        if let Some(v) = method.reduce(&values) {
            out.push((group[0].0.div_euclid(r) * r, v));
        }
    }
    out
}

/// numpy's `percentile(..., interpolation="linear")`.
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile_sorted(&sorted, q)
}

/// [`percentile`] over values already sorted ascending (not empty).
pub(super) fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = (sorted.len() - 1) as f64 * q / 100.0;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    if lo == hi {
        sorted[lo]
    } else {
        sorted[lo] * (hi as f64 - pos) + sorted[hi] * (pos - lo as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_method() {
        for name in [
            "mean",
            "sum",
            "min",
            "max",
            "first",
            "last",
            "count",
            "std",
            "median",
            "1pct",
            "95pct",
            "rate:mean",
            "rate:99pct",
        ] {
            let m: Method = name.parse().unwrap();
            assert_eq!(m.to_string(), name);
        }
        for bad in [
            "avg",
            "0pct",
            "100pct",
            "p95",
            "rate:",
            "rate:rate:mean",
            "05pct",
            "pct",
        ] {
            assert!(bad.parse::<Method>().is_err(), "{bad}");
        }
        assert_eq!(Method::all_plain().len(), 108);
    }

    #[test]
    fn reductions_match_gnocchi() {
        let v = [1.0, 2.0, 6.0, 10.0];
        let r = |m: &str| m.parse::<Method>().unwrap().reduce(&v).unwrap();
        assert_eq!(
            (
                r("sum"),
                r("min"),
                r("max"),
                r("first"),
                r("last"),
                r("count")
            ),
            (19.0, 1.0, 10.0, 1.0, 10.0, 4.0)
        );
        assert_eq!(r("50pct"), 4.0);
        assert_eq!(r("1pct"), 1.0 * (1.0 - 0.03) + 2.0 * 0.03);
        assert_eq!(
            "median".parse::<Method>().unwrap().reduce(&[5.0, 1.0, 3.0]),
            Some(3.0)
        );
        assert_eq!("mean".parse::<Method>().unwrap().reduce(&[]), None);
    }
}
