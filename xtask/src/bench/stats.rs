//! Small statistics over repeated measurements: median, range and a distribution-free 95%
//! confidence interval of the median, serialised into the results.

use std::time::Instant;

use serde::{Deserialize, Deserializer, Serialize};

/// Summary of a sample: median, smallest, largest, count, in the unit of the values (the
/// name of the results field that holds it says which). In `results.json` as
/// `{"median":..,"min":..,"max":..,"n":..,"ci95":[lo,hi] or null}`; the statistics of an empty
/// sample (NaN) as null.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Median (mean of the two middle values for an even count).
    #[serde(deserialize_with = "nan_if_null")]
    pub median: f64,
    /// Smallest value.
    #[serde(deserialize_with = "nan_if_null")]
    pub min: f64,
    /// Largest value.
    #[serde(deserialize_with = "nan_if_null")]
    pub max: f64,
    /// Number of values.
    pub n: usize,
    /// 95% confidence interval of the median (order statistics, no assumption on the
    /// distribution); `None` below 6 values, where no pair of order statistics covers 95%.
    pub ci95: Option<(f64, f64)>,
}

impl Summary {
    /// Summarises `values`; all zeros for an empty sample.
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                n: 0,
                ci95: None,
            };
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
            n,
            ci95: median_ci_rank(n).map(|k| (v[k - 1], v[n - k])),
        }
    }

    /// The same with every value rounded to `digits` decimals (as the results keep it).
    pub fn rounded(&self, digits: i32) -> Self {
        Self {
            median: round(self.median, digits),
            min: round(self.min, digits),
            max: round(self.max, digits),
            n: self.n,
            ci95: self
                .ci95
                .map(|(lo, hi)| (round(lo, digits), round(hi, digits))),
        }
    }
}

/// Reads a figure that `results.json` may hold as null: serde_json writes a NaN (no value, e.g.
/// the median of an empty sample) as null, and this reads it back as NaN.
pub fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The rank `k` (1-based) such that the `k`-th smallest and the `k`-th largest of `n` values
/// bound the median with at least 95% confidence: the largest `k` with
/// P(Binomial(n, 1/2) < k) <= 2.5%. `None` when even the extremes do not reach 95% (n < 6).
fn median_ci_rank(n: usize) -> Option<usize> {
    // P(X = i) for X ~ Binomial(n, 1/2), summed from i = 0 while the lower tail stays <= 2.5%.
    let mut p = 0.5f64.powi(n as i32);
    let (mut tail, mut k) = (0.0, 0);
    while k < n / 2 && tail + p <= 0.025 {
        tail += p;
        k += 1;
        p *= (n - k + 1) as f64 / k as f64;
    }
    (k >= 1).then_some(k)
}

/// `x` rounded to `digits` decimals (NaN stays NaN: JSON null in the results).
pub fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// Wall time from `started` until now, seconds to 0.1 s (as the results keep run times).
pub fn seconds_since(started: Instant) -> f64 {
    round(started.elapsed().as_secs_f64(), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even() {
        assert_eq!(Summary::of(&[3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        let s = Summary::of(&[5.0, 1.0]);
        assert_eq!((s.min, s.max, s.n), (1.0, 5.0, 2));
        assert!(Summary::of(&[]).median.is_nan());
    }

    #[test]
    fn median_confidence_interval_ranks() {
        // Tabulated distribution-free ranks (e.g. Conover, Practical Nonparametric Statistics).
        assert_eq!(median_ci_rank(5), None);
        assert_eq!(median_ci_rank(6), Some(1));
        assert_eq!(median_ci_rank(11), Some(2));
        assert_eq!(median_ci_rank(21), Some(6));
        assert_eq!(median_ci_rank(51), Some(19));
        let v: Vec<f64> = (1..=11).map(f64::from).collect();
        assert_eq!(Summary::of(&v).ci95, Some((2.0, 10.0)));
    }
}
