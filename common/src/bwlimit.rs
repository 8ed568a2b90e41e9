//! `--bwlimit`'s language: a rate, or a timetable of rates, in rclone's syntax. Parsed once,
//! here, for the process's own cap (`engine::bandwidth`) and a job's fleet-wide budget, which
//! the coordinator shares among workers.
//!
//! ```text
//! 10M                                   10 MiB/s (suffix B, K, M, G, T; no suffix: KiB/s)
//! off                                   no cap
//! 4M:10M                                upload:download; era5 receives, so 10M applies
//! "08:00,512K 19:00,off"                512 KiB/s from 08:00, no cap from 19:00, every day
//! "Mon-00:00,512K Fri-23:59,10M Sun-20:00,off"   by day of the week
//! ```
//!
//! A timetable entry holds from its time until the next entry's; before the first entry of the
//! day (or week), the last one of the previous day (or week) holds. Times are the machine's
//! local time, as rclone's are.

use std::fmt;

use jiff::civil::Weekday;

/// A rate: bytes per second, or no cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rate {
    /// At most this many bytes per second.
    Limited(u64),
    /// No cap.
    Off,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Limited(bytes) => write!(f, "{}/s", crate::units::human_bytes(*bytes)),
            Rate::Off => f.write_str("off"),
        }
    }
}

/// A `--bwlimit` that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{item}`: {reason}")]
pub struct BadBwLimit {
    /// The part that is wrong.
    pub item: String,
    /// Why.
    pub reason: &'static str,
}

/// Minutes in a week.
const WEEK: u32 = 7 * 24 * 60;

/// `--bwlimit`: a rate, or a timetable of rates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BwLimit {
    /// Sorted by minute of the week (Monday 00:00 is 0); never empty.
    entries: Vec<(u32, Rate)>,
}

impl BwLimit {
    /// No cap.
    pub fn off() -> Self {
        Self {
            entries: vec![(0, Rate::Off)],
        }
    }

    /// Parses rclone's syntax (see the module doc).
    pub fn parse(text: &str) -> Result<Self, BadBwLimit> {
        let items: Vec<&str> = text.split_whitespace().collect();
        if items.is_empty() {
            return Err(BadBwLimit {
                item: text.to_string(),
                reason: "expected a rate (e.g. 10M, off) or a timetable (e.g. \"08:00,512K 19:00,off\")",
            });
        }
        if items.len() == 1 && !items[0].contains(',') {
            return Ok(Self {
                entries: vec![(0, parse_rate(items[0])?)],
            });
        }
        let mut entries = Vec::new();
        for item in items {
            let bad = |reason| BadBwLimit {
                item: item.to_string(),
                reason,
            };
            let (when, rate) = item
                .split_once(',')
                .ok_or_else(|| bad("a timetable entry is TIME,RATE or DAY-TIME,RATE"))?;
            let rate = parse_rate(rate)?;
            let (day, time) = match when.split_once('-') {
                Some((day, time)) => (
                    Some(parse_day(day).ok_or_else(|| {
                        bad("the day is one of Mon, Tue, Wed, Thu, Fri, Sat, Sun")
                    })?),
                    time,
                ),
                None => (None, when),
            };
            let minute =
                parse_time(time).ok_or_else(|| bad("the time is HH:MM, from 00:00 to 23:59"))?;
            match day {
                Some(day) => entries.push((day * 24 * 60 + minute, rate)),
                // A time without a day holds every day.
                None => entries.extend((0..7).map(|day| (day * 24 * 60 + minute, rate))),
            }
        }
        entries.sort_by_key(|(minute, _)| *minute);
        if entries.windows(2).any(|pair| pair[0].0 == pair[1].0) {
            return Err(BadBwLimit {
                item: text.to_string(),
                reason: "two entries of the timetable start at the same time",
            });
        }
        Ok(Self { entries })
    }

    /// The rate at `minute` of the week (Monday 00:00 is 0).
    pub fn rate_at_minute(&self, minute: u32) -> Rate {
        let minute = minute % WEEK;
        self.entries
            .iter()
            .rev()
            .find(|(start, _)| *start <= minute)
            .or_else(|| self.entries.last())
            .map_or(Rate::Off, |(_, rate)| *rate)
    }

    /// The rate now, by the machine's local time.
    pub fn rate_now(&self) -> Rate {
        if self.entries.len() == 1 {
            return self.entries[0].1;
        }
        let now = jiff::ZonedDateTime::now();
        let day = u32::from(now.weekday().to_monday_zero_offset().unsigned_abs());
        let minute =
            u32::from(now.hour().unsigned_abs()) * 60 + u32::from(now.minute().unsigned_abs());
        self.rate_at_minute(day * 24 * 60 + minute)
    }

    /// The highest rate of the timetable, if every period has one (no `off`).
    pub fn highest_rate(&self) -> Option<u64> {
        self.entries
            .iter()
            .map(|(_, rate)| match rate {
                Rate::Limited(bytes) => Some(*bytes),
                Rate::Off => None,
            })
            .try_fold(0, |highest, rate| rate.map(|rate| rate.max(highest)))
    }

    /// Whether it never caps anything.
    pub fn is_off(&self) -> bool {
        self.entries.iter().all(|(_, rate)| *rate == Rate::Off)
    }
}

/// `10M`, `512K`, `1.5G`, `100` (KiB), `off`; `UP:DOWN` takes DOWN (era5 receives).
fn parse_rate(text: &str) -> Result<Rate, BadBwLimit> {
    let bad = || BadBwLimit {
        item: text.to_string(),
        reason: "a rate is a number with an optional suffix B, K, M, G or T (KiB by default), or off",
    };
    let text = match text.split_once(':') {
        Some((_up, down)) => down,
        None => text,
    };
    if text.eq_ignore_ascii_case("off") {
        return Ok(Rate::Off);
    }
    let (number, unit) = match text.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "K"),
    };
    let scale: u64 = match unit.to_ascii_uppercase().as_str() {
        "B" => 1,
        "K" | "KI" | "KIB" => 1 << 10,
        "M" | "MI" | "MIB" => 1 << 20,
        "G" | "GI" | "GIB" => 1 << 30,
        "T" | "TI" | "TIB" => 1 << 40,
        _ => return Err(bad()),
    };
    let number: f64 = number.parse().map_err(|_| bad())?;
    let bytes = number * scale as f64;
    if !(1.0..=1e15).contains(&bytes) {
        return Err(bad());
    }
    Ok(Rate::Limited(bytes as u64))
}

fn parse_day(text: &str) -> Option<u32> {
    let days = [
        (Weekday::Monday, "mon"),
        (Weekday::Tuesday, "tue"),
        (Weekday::Wednesday, "wed"),
        (Weekday::Thursday, "thu"),
        (Weekday::Friday, "fri"),
        (Weekday::Saturday, "sat"),
        (Weekday::Sunday, "sun"),
    ];
    let lower = text.to_ascii_lowercase();
    days.iter()
        .find(|(_, name)| lower.starts_with(name))
        .map(|(day, _)| u32::from(day.to_monday_zero_offset().unsigned_abs()))
}

fn parse_time(text: &str) -> Option<u32> {
    let (hours, minutes) = text.split_once(':')?;
    let (hours, minutes): (u32, u32) = (hours.parse().ok()?, minutes.parse().ok()?);
    (hours < 24 && minutes < 60 && text.len() <= 5).then_some(hours * 60 + minutes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(text: &str) -> Rate {
        BwLimit::parse(text).unwrap().rate_at_minute(0)
    }

    #[test]
    fn rates_read_as_rclone_reads_them() {
        assert_eq!(rate("10M"), Rate::Limited(10 << 20));
        assert_eq!(rate("512K"), Rate::Limited(512 << 10));
        assert_eq!(
            rate("512"),
            Rate::Limited(512 << 10),
            "KiB without a suffix"
        );
        assert_eq!(rate("1.5G"), Rate::Limited(3 << 29));
        assert_eq!(rate("100B"), Rate::Limited(100));
        assert_eq!(rate("off"), Rate::Off);
        assert_eq!(rate("4M:10M"), Rate::Limited(10 << 20), "upload:download");
        for bad in [
            "",
            "fast",
            "10X",
            "-1M",
            "0",
            "08:00",
            "25:00,1M",
            "Mox-08:00,1M",
            "08:00,1M 08:00,2M",
        ] {
            let error = BwLimit::parse(bad).unwrap_err();
            assert!(!error.reason.is_empty(), "{bad}");
        }
    }

    #[test]
    fn a_daily_timetable_holds_from_each_time_to_the_next_and_wraps_at_midnight() {
        let limit = BwLimit::parse("08:00,512K 19:00,off").unwrap();
        let at = |day: u32, hour: u32, minute: u32| {
            limit.rate_at_minute(day * 1440 + hour * 60 + minute)
        };
        assert_eq!(
            at(0, 7, 59),
            Rate::Off,
            "before 08:00: the previous evening's"
        );
        assert_eq!(at(0, 8, 0), Rate::Limited(512 << 10));
        assert_eq!(at(3, 18, 59), Rate::Limited(512 << 10));
        assert_eq!(at(6, 19, 0), Rate::Off);
    }

    #[test]
    fn a_weekly_timetable_wraps_around_the_week() {
        let limit = BwLimit::parse("Mon-00:00,512 Fri-23:59,10M Sun-20:00,off").unwrap();
        assert_eq!(limit.rate_at_minute(0), Rate::Limited(512 << 10));
        assert_eq!(
            limit.rate_at_minute(4 * 1440 + 23 * 60 + 59),
            Rate::Limited(10 << 20)
        );
        assert_eq!(limit.rate_at_minute(5 * 1440), Rate::Limited(10 << 20));
        assert_eq!(limit.rate_at_minute(6 * 1440 + 21 * 60), Rate::Off);
        let late_start = BwLimit::parse("Wed-12:00,1M Thu-12:00,2M").unwrap();
        assert_eq!(
            late_start.rate_at_minute(0),
            Rate::Limited(2 << 20),
            "Monday: Thursday's"
        );
    }
}
