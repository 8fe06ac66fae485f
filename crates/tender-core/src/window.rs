//! Maintenance windows: when devices may be told to install. A window opens at each time a
//! five-field cron expression matches, in an IANA time zone, and stays open for a duration.
//!
//! Cron fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12), day of week
//! (0-7, 0 and 7 are Sunday). Each field is `*`, a number, a range `a-b`, a step `*/n` or
//! `a-b/n`, or a comma-separated list of those. As in cron, when both day fields are
//! restricted a day matches if either does. Times are evaluated in the window's time zone, so
//! "02:00 in Europe/Berlin" follows daylight-saving changes (a local time that does not exist
//! that day, in the spring gap, opens no window).

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

/// Longest window: a week.
pub const MAX_DURATION_SECS: u64 = 7 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("maintenance window: {0}")]
pub struct WindowError(pub String);

fn err(msg: impl Into<String>) -> WindowError {
    WindowError(msg.into())
}

/// One parsed cron field: the allowed values as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    bits: u64,
    /// Written as `*` (matters for the day-of-month / day-of-week rule).
    any: bool,
}

impl Field {
    fn parse(text: &str, name: &str, min: u32, max: u32) -> Result<Field, WindowError> {
        let mut bits = 0u64;
        for part in text.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => {
                    let step: u32 = s
                        .parse()
                        .ok()
                        .filter(|s| *s > 0)
                        .ok_or_else(|| err(format!("{name}: bad step in {part:?}")))?;
                    (r, step)
                }
                None => (part, 1),
            };
            let (lo, hi) = if range == "*" {
                (min, max)
            } else if let Some((a, b)) = range.split_once('-') {
                (num(a, name, min, max)?, num(b, name, min, max)?)
            } else {
                let v = num(range, name, min, max)?;
                (v, if step > 1 { max } else { v })
            };
            if lo > hi {
                return Err(err(format!("{name}: {part:?} runs backwards")));
            }
            let mut v = lo;
            while v <= hi {
                bits |= 1 << v;
                v += step;
            }
        }
        Ok(Field {
            bits,
            any: text == "*",
        })
    }

    fn has(self, v: u32) -> bool {
        self.bits & (1 << v) != 0
    }
}

fn num(s: &str, name: &str, min: u32, max: u32) -> Result<u32, WindowError> {
    s.parse::<u32>()
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| err(format!("{name}: {s:?} is not a number from {min} to {max}")))
}

/// A parsed five-field cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minute: Field,
    hour: Field,
    dom: Field,
    month: Field,
    dow: Field,
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, WindowError> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [m, h, dom, mon, dow] = fields[..] else {
            return Err(err(format!(
                "{text:?}: a cron expression has five fields (minute hour day-of-month month day-of-week), e.g. \"0 2 * * *\""
            )));
        };
        let mut dow = Field::parse(dow, "day of week", 0, 7)?;
        if dow.has(7) {
            dow.bits |= 1;
        }
        Ok(Cron {
            text: fields.join(" "),
            minute: Field::parse(m, "minute", 0, 59)?,
            hour: Field::parse(h, "hour", 0, 23)?,
            dom: Field::parse(dom, "day of month", 1, 31)?,
            month: Field::parse(mon, "month", 1, 12)?,
            dow,
        })
    }

    /// Whether a local time (minute, hour, day, month, weekday with Sunday 0) matches.
    fn matches(&self, minute: u32, hour: u32, day: u32, month: u32, weekday: u32) -> bool {
        if !(self.minute.has(minute) && self.hour.has(hour) && self.month.has(month)) {
            return false;
        }
        match (self.dom.any, self.dow.any) {
            (true, true) => true,
            (false, true) => self.dom.has(day),
            (true, false) => self.dow.has(weekday),
            (false, false) => self.dom.has(day) || self.dow.has(weekday),
        }
    }
}

impl std::fmt::Display for Cron {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A maintenance window as stored and written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// When it opens: five-field cron.
    pub cron: String,
    /// How long it stays open, seconds.
    pub duration_secs: u64,
    /// IANA time zone, e.g. `Europe/Berlin` (default UTC).
    #[serde(default = "utc")]
    pub time_zone: String,
}

fn utc() -> String {
    "UTC".into()
}

/// A checked window, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Checked {
    cron: Cron,
    duration_mins: i64,
    tz: jiff::tz::TimeZone,
}

impl Window {
    pub fn check(&self) -> Result<Checked, WindowError> {
        let cron = Cron::parse(&self.cron)?;
        if self.duration_secs < 60 || self.duration_secs > MAX_DURATION_SECS {
            return Err(err("the duration is 1 minute to 7 days"));
        }
        let tz = jiff::tz::db().get(&self.time_zone).map_err(|_| {
            err(format!(
                "unknown time zone {:?}; use an IANA name such as Europe/Berlin or UTC",
                self.time_zone
            ))
        })?;
        Ok(Checked {
            cron,
            duration_mins: (self.duration_secs / 60) as i64,
            tz,
        })
    }
}

impl Checked {
    fn opens_at_minute(&self, minute_start_ms: i64) -> bool {
        let Ok(ts) = jiff::Timestamp::from_millisecond(minute_start_ms) else {
            return false;
        };
        let z = ts.to_zoned(self.tz.clone());
        // A local minute that repeats (the autumn overlap) matches once per occurrence;
        // nothing needs more than that here.
        self.cron.matches(
            z.minute() as u32,
            z.hour() as u32,
            z.day() as u32,
            z.month() as u32,
            z.weekday().to_sunday_zero_offset() as u32,
        )
    }

    /// Whether the window is open at `now`: it opened within the last `duration`.
    pub fn is_open(&self, now: Timestamp) -> bool {
        let minute = now.unix_millis().div_euclid(60_000) * 60_000;
        (0..self.duration_mins).any(|back| self.opens_at_minute(minute - back * 60_000))
    }

    /// When it next opens after `now` (looking at most 400 days ahead).
    pub fn next_open(&self, now: Timestamp) -> Option<Timestamp> {
        let mut m = now.unix_millis().div_euclid(60_000) * 60_000 + 60_000;
        let end = m + 400 * 24 * 3600 * 1000;
        while m < end {
            let ts = jiff::Timestamp::from_millisecond(m).ok()?;
            let z = ts.to_zoned(self.tz.clone());
            let (minute, hour) = (z.minute() as i64, z.hour() as i64);
            let day_ok = self.cron.month.has(z.month() as u32)
                && match (self.cron.dom.any, self.cron.dow.any) {
                    (true, true) => true,
                    (false, true) => self.cron.dom.has(z.day() as u32),
                    (true, false) => self
                        .cron
                        .dow
                        .has(z.weekday().to_sunday_zero_offset() as u32),
                    (false, false) => {
                        self.cron.dom.has(z.day() as u32)
                            || self
                                .cron
                                .dow
                                .has(z.weekday().to_sunday_zero_offset() as u32)
                    }
                };
            if !day_ok {
                // To the next local midnight (near enough across a daylight-saving change:
                // the hour check below takes it from there).
                m += (24 * 60 - (hour * 60 + minute)) * 60_000;
            } else if !self.cron.hour.has(hour as u32) {
                m += (60 - minute) * 60_000;
            } else if self.cron.minute.has(minute as u32) {
                return Some(Timestamp::from_unix_millis(m));
            } else {
                m += 60_000;
            }
        }
        None
    }
}

/// Whether any of `windows` is open at `now` (no windows: always open).
pub fn any_open(windows: &[Checked], now: Timestamp) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.is_open(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap()
    }

    fn window(cron: &str, secs: u64, tz: &str) -> Checked {
        Window {
            cron: cron.into(),
            duration_secs: secs,
            time_zone: tz.into(),
        }
        .check()
        .unwrap()
    }

    #[test]
    fn cron_fields() {
        let c = Cron::parse("*/15 2-4 * * 1-5").unwrap();
        assert!(c.matches(30, 3, 10, 6, 2));
        assert!(!c.matches(31, 3, 10, 6, 2));
        assert!(!c.matches(0, 5, 10, 6, 2));
        assert!(!c.matches(0, 3, 10, 6, 0), "Sunday");
        let sunday = Cron::parse("0 0 * * 7").unwrap();
        assert!(sunday.matches(0, 0, 1, 1, 0));
        // Both day fields restricted: either matches.
        let either = Cron::parse("0 0 1 * 1").unwrap();
        assert!(either.matches(0, 0, 1, 5, 3));
        assert!(either.matches(0, 0, 9, 5, 1));
        assert!(!either.matches(0, 0, 9, 5, 3));
        for bad in [
            "",
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "5-1 * * * *",
            "*/0 * * * *",
            "a * * * *",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Cron::parse(" 0  2 * * * ").unwrap().to_string(),
            "0 2 * * *"
        );
    }

    #[test]
    fn windows_in_a_time_zone() {
        // 02:00-05:00 in Berlin (UTC+1 in winter) is 01:00-04:00 UTC.
        let w = window("0 2 * * *", 3 * 3600, "Europe/Berlin");
        assert!(!w.is_open(at("2026-12-05T00:59:00Z")));
        assert!(w.is_open(at("2026-12-05T01:00:00Z")));
        assert!(w.is_open(at("2026-12-05T03:59:59Z")));
        assert!(!w.is_open(at("2026-12-05T04:00:00Z")));
        assert_eq!(
            w.next_open(at("2026-12-05T04:00:00Z")),
            Some(at("2026-12-06T01:00:00Z"))
        );
        // In summer (UTC+2) the same local window is 00:00-03:00 UTC.
        assert!(w.is_open(at("2026-07-01T00:30:00Z")));
        assert!(!w.is_open(at("2026-07-01T03:30:00Z")));
        // No windows: always open.
        assert!(any_open(&[], at("2026-12-05T12:00:00Z")));
        assert!(!any_open(&[w], at("2026-12-05T12:00:00Z")));
    }

    #[test]
    fn bad_windows_say_why() {
        let bad = |cron: &str, secs, tz: &str| {
            Window {
                cron: cron.into(),
                duration_secs: secs,
                time_zone: tz.into(),
            }
            .check()
            .unwrap_err()
            .to_string()
        };
        assert!(bad("0 2 * * *", 3600, "Mars/Olympus").contains("unknown time zone"));
        assert!(bad("0 2 * * *", 10, "UTC").contains("duration"));
        assert!(bad("0 2 * *", 3600, "UTC").contains("five fields"));
    }
}
