//! Telemetry series: samples of one metric grouped into fixed time buckets (a step) and reduced
//! by an aggregation, for charts and fleet-wide questions ("average temperature of group X per
//! 5 minutes"). Also the rollup resolutions that keep aggregates after raw samples expire.
//!
//! **Invariants:** a step is 1 s to 31 days, in whole seconds; a series has at most
//! [`MAX_BUCKETS`] buckets; buckets start at `from + k * step`; an empty bucket is absent (never
//! a zero); merging buckets is associative and commutative, so the result does not depend on
//! how the devices or the time range were split into queries; `last` is the value with the
//! greatest time (ties: the greater value, so it is deterministic).

use std::fmt;

use crate::Timestamp;

/// Most buckets in one series.
pub const MAX_BUCKETS: i64 = 10_000;
/// Shortest step.
pub const MIN_STEP_MS: i64 = 1_000;
/// Longest step.
pub const MAX_STEP_MS: i64 = 31 * 86_400_000;

/// The aggregates of one metric over one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// The bucket's start (`from + k * step`).
    pub start: Timestamp,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    /// Time of the newest sample in the bucket, and its value.
    pub last_at: Timestamp,
    pub last: f64,
}

impl Bucket {
    /// Folds `other` (the same bucket, from other devices or another part of the range) in.
    pub fn merge(&mut self, other: &Bucket) {
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        if other.last_at > self.last_at || (other.last_at == self.last_at && other.last > self.last)
        {
            self.last_at = other.last_at;
            self.last = other.last;
        }
    }

    pub fn avg(&self) -> f64 {
        if self.count == 0 {
            f64::NAN
        } else {
            self.sum / self.count as f64
        }
    }
}

/// How a bucket is reduced to one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aggregation {
    Avg,
    Min,
    Max,
    Sum,
    Count,
    Last,
}

impl Aggregation {
    pub const ALL: [Aggregation; 6] = [
        Aggregation::Avg,
        Aggregation::Min,
        Aggregation::Max,
        Aggregation::Sum,
        Aggregation::Count,
        Aggregation::Last,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Avg => "avg",
            Aggregation::Min => "min",
            Aggregation::Max => "max",
            Aggregation::Sum => "sum",
            Aggregation::Count => "count",
            Aggregation::Last => "last",
        }
    }

    pub fn parse(s: &str) -> Result<Self, SeriesError> {
        Aggregation::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| SeriesError::Aggregation(s.chars().take(32).collect()))
    }

    /// The bucket's value under this aggregation.
    pub fn of(self, b: &Bucket) -> f64 {
        match self {
            Aggregation::Avg => b.avg(),
            Aggregation::Min => b.min,
            Aggregation::Max => b.max,
            Aggregation::Sum => b.sum,
            Aggregation::Count => b.count as f64,
            Aggregation::Last => b.last,
        }
    }
}

impl fmt::Display for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a series request is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeriesError {
    #[error("step {0:?} is not a duration: use a number and a unit, like 30s, 5m, 1h or 1d")]
    Step(String),
    #[error("step must be from 1s to 31d, in whole seconds")]
    StepRange,
    #[error("aggregation {0:?} is unknown: use avg, min, max, sum, count or last")]
    Aggregation(String),
    #[error("the range is empty: `from` must be before `to`")]
    EmptyRange,
    #[error("{buckets} buckets is more than {MAX_BUCKETS}: use a longer step or a shorter range")]
    TooManyBuckets { buckets: i64 },
}

/// Parses a step such as `30s`, `5m`, `1h`, `1d` (or plain seconds) into milliseconds.
pub fn parse_step(s: &str) -> Result<i64, SeriesError> {
    let bad = || SeriesError::Step(s.chars().take(32).collect());
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() || digits.len() > 9 {
        return Err(bad());
    }
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let ms = n.checked_mul(unit_ms).ok_or(SeriesError::StepRange)?;
    if !(MIN_STEP_MS..=MAX_STEP_MS).contains(&ms) {
        return Err(SeriesError::StepRange);
    }
    Ok(ms)
}

/// Checks a series request: a non-empty range of at most [`MAX_BUCKETS`] steps.
pub fn check(from: Timestamp, to: Timestamp, step_ms: i64) -> Result<(), SeriesError> {
    if from >= to {
        return Err(SeriesError::EmptyRange);
    }
    if !(MIN_STEP_MS..=MAX_STEP_MS).contains(&step_ms) || step_ms % 1000 != 0 {
        return Err(SeriesError::StepRange);
    }
    let span = (to.unix_millis() as i128) - (from.unix_millis() as i128);
    let step = step_ms as i128;
    let buckets = (span + step - 1) / step;
    if buckets > MAX_BUCKETS as i128 {
        return Err(SeriesError::TooManyBuckets {
            buckets: i64::try_from(buckets).unwrap_or(i64::MAX),
        });
    }
    Ok(())
}

/// The start of the bucket holding `at` in a series from `from` with `step_ms`.
pub fn bucket_start(from: Timestamp, step_ms: i64, at: Timestamp) -> Timestamp {
    let offset = at.unix_millis().saturating_sub(from.unix_millis());
    Timestamp::from_unix_millis(from.unix_millis() + offset.div_euclid(step_ms) * step_ms)
}

/// Formats milliseconds as the shortest step text (`90s`, `5m`, `1h`, `2d`).
pub fn format_step(ms: i64) -> String {
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)] {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{}s", ms / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(start: i64, values: &[(i64, f64)]) -> Bucket {
        let mut out: Option<Bucket> = None;
        for &(at, v) in values {
            let one = Bucket {
                start: Timestamp::from_unix_millis(start),
                count: 1,
                min: v,
                max: v,
                sum: v,
                last_at: Timestamp::from_unix_millis(at),
                last: v,
            };
            match &mut out {
                Some(o) => o.merge(&one),
                None => out = Some(one),
            }
        }
        out.expect("test buckets have values")
    }

    #[test]
    fn steps_parse_in_every_unit_and_stay_in_range() {
        assert_eq!(parse_step("30s"), Ok(30_000));
        assert_eq!(parse_step("45"), Ok(45_000));
        assert_eq!(parse_step("5m"), Ok(300_000));
        assert_eq!(parse_step("1h"), Ok(3_600_000));
        assert_eq!(parse_step("31d"), Ok(MAX_STEP_MS));
        assert_eq!(parse_step("32d"), Err(SeriesError::StepRange));
        assert_eq!(parse_step("0s"), Err(SeriesError::StepRange));
        assert!(matches!(parse_step("5x"), Err(SeriesError::Step(_))));
        assert!(matches!(parse_step("m"), Err(SeriesError::Step(_))));
        assert!(matches!(parse_step("-5m"), Err(SeriesError::Step(_))));
        assert!(matches!(
            parse_step("99999999999999999999d"),
            Err(SeriesError::Step(_))
        ));
        assert_eq!(format_step(300_000), "5m");
        assert_eq!(format_step(90_000), "90s");
        assert_eq!(format_step(86_400_000), "1d");
    }

    #[test]
    fn a_series_has_a_bounded_number_of_buckets() {
        let t = |ms| Timestamp::from_unix_millis(ms);
        assert_eq!(check(t(0), t(60_000), 1_000), Ok(()));
        assert_eq!(check(t(0), t(0), 1_000), Err(SeriesError::EmptyRange));
        assert_eq!(check(t(10), t(0), 1_000), Err(SeriesError::EmptyRange));
        assert_eq!(
            check(t(0), t(10_001_000), 1_000),
            Err(SeriesError::TooManyBuckets { buckets: 10_001 })
        );
        assert_eq!(check(t(0), t(10_000_000), 1_000), Ok(()));
        assert_eq!(check(t(0), t(1), 1_500), Err(SeriesError::StepRange));
        assert_eq!(
            check(t(i64::MIN), t(i64::MAX), 1_000),
            Err(SeriesError::TooManyBuckets {
                buckets: 18_446_744_073_709_552
            })
        );
    }

    #[test]
    fn buckets_start_at_from_plus_whole_steps() {
        let t = |ms| Timestamp::from_unix_millis(ms);
        assert_eq!(bucket_start(t(500), 1000, t(500)), t(500));
        assert_eq!(bucket_start(t(500), 1000, t(1499)), t(500));
        assert_eq!(bucket_start(t(500), 1000, t(1500)), t(1500));
    }

    #[test]
    fn merging_is_order_independent_and_aggregations_read_it() {
        let whole = b(0, &[(1, 3.0), (2, -1.0), (5, 4.0), (7, 2.0)]);
        let mut left = b(0, &[(1, 3.0), (5, 4.0)]);
        left.merge(&b(0, &[(2, -1.0), (7, 2.0)]));
        let mut right = b(0, &[(2, -1.0), (7, 2.0)]);
        right.merge(&b(0, &[(1, 3.0), (5, 4.0)]));
        assert_eq!(left, whole);
        assert_eq!(right, whole);
        assert_eq!(Aggregation::Avg.of(&whole), 2.0);
        assert_eq!(Aggregation::Min.of(&whole), -1.0);
        assert_eq!(Aggregation::Max.of(&whole), 4.0);
        assert_eq!(Aggregation::Sum.of(&whole), 8.0);
        assert_eq!(Aggregation::Count.of(&whole), 4.0);
        assert_eq!(Aggregation::Last.of(&whole), 2.0);
        // Two devices with a sample at the same time: the greater value is `last` either way.
        let mut x = b(0, &[(7, 1.0)]);
        x.merge(&b(0, &[(7, 9.0)]));
        let mut y = b(0, &[(7, 9.0)]);
        y.merge(&b(0, &[(7, 1.0)]));
        assert_eq!((x.last, y.last), (9.0, 9.0));
        for a in Aggregation::ALL {
            assert_eq!(Aggregation::parse(a.as_str()), Ok(a));
        }
        assert!(Aggregation::parse("median").is_err());
    }
}
