//! Reductions across series: what Gnocchi's `aggregate` and `rolling` operations apply to the
//! values several metrics (or one metric's window) have at one timestamp.

use std::fmt;
use std::str::FromStr;

/// How the values of several metrics at one timestamp become one: the reductions of
/// Gnocchi's `aggregate` operation (numpy's nan-aware ones; `std` and `var` are the
/// population's, ÷ n).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Across {
    /// `mean`.
    Mean,
    /// `median`.
    Median,
    /// `std` (population, n).
    Std,
    /// `var` (population, n).
    Var,
    /// `min`.
    Min,
    /// `max`.
    Max,
    /// `sum`.
    Sum,
    /// `count`: how many metrics have a value.
    Count,
}

/// A name that is not one of [`Across`]'s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown reduction {0:?}; known: mean, median, std, var, min, max, sum, count")]
pub struct AcrossError(pub String);

impl FromStr for Across {
    type Err = AcrossError;
    fn from_str(name: &str) -> Result<Across, AcrossError> {
        Ok(match name {
            "mean" => Across::Mean,
            "median" => Across::Median,
            "std" => Across::Std,
            "var" => Across::Var,
            "min" => Across::Min,
            "max" => Across::Max,
            "sum" => Across::Sum,
            "count" => Across::Count,
            _ => return Err(AcrossError(name.to_owned())),
        })
    }
}

impl fmt::Display for Across {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Across::Mean => "mean",
            Across::Median => "median",
            Across::Std => "std",
            Across::Var => "var",
            Across::Min => "min",
            Across::Max => "max",
            Across::Sum => "sum",
            Across::Count => "count",
        })
    }
}

impl Across {
    /// Reduces `values` (at least one, none NaN). They are sorted first, so the result does
    /// not depend on the order the metrics' buckets arrived in (float sums are not
    /// associative).
    pub fn reduce(self, values: &mut [f64]) -> f64 {
        values.sort_by(f64::total_cmp);
        let n = values.len() as f64;
        let variance = |values: &[f64]| {
            let mean = values.iter().sum::<f64>() / n;
            values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n
        };
        match self {
            Across::Mean => values.iter().sum::<f64>() / n,
            Across::Sum => values.iter().sum(),
            Across::Min => values[0],
            Across::Max => values[values.len() - 1],
            Across::Count => n,
            Across::Std => variance(values).sqrt(),
            Across::Var => variance(values),
            Across::Median => {
                let mid = values.len() / 2;
                if values.len() % 2 == 1 {
                    values[mid]
                } else {
                    (values[mid - 1] + values[mid]) / 2.0
                }
            }
        }
    }

    /// numpy's nan-aware reduction (`nanmean`, `nansum`, ..., and `count_nonzero(~isnan)`):
    /// NaN values are left out; with none left, `sum` and `count` give 0 and the others NaN.
    /// `scratch` is reused between calls.
    ///
    /// # Examples
    /// ```
    /// use meterflow_operators::aggregate::Across;
    /// let mut scratch = Vec::new();
    /// let v = [1.0, f64::NAN, 3.0];
    /// assert_eq!(Across::Mean.reduce_nan(&v, &mut scratch), 2.0);
    /// assert_eq!(Across::Count.reduce_nan(&v, &mut scratch), 2.0);
    /// assert_eq!(Across::Var.reduce_nan(&v, &mut scratch), 1.0);
    /// assert_eq!(Across::Sum.reduce_nan(&[f64::NAN], &mut scratch), 0.0);
    /// assert!(Across::Max.reduce_nan(&[f64::NAN], &mut scratch).is_nan());
    /// ```
    pub fn reduce_nan(self, values: &[f64], scratch: &mut Vec<f64>) -> f64 {
        scratch.clear();
        scratch.extend(values.iter().copied().filter(|v| !v.is_nan()));
        if scratch.is_empty() {
            return match self {
                Across::Sum | Across::Count => 0.0,
                _ => f64::NAN,
            };
        }
        self.reduce(scratch)
    }
}
