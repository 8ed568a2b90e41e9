//! Calendar values of the ERA5 archive: days, the hour stamps in object names and inclusive
//! day ranges.
//!
//! ERA5 names every object by the first and last hour it covers (`YYYYMMDDHH`). Everything the
//! selection rule needs is an ordering of those hours, so [`HourStamp`] is a plain ordered
//! (date, hour) pair and a request is an inclusive [`DayRange`].

use std::fmt;

use jiff::civil::Date;

use crate::error::InputError;

/// First day of the ERA5 archive as published in `nsf-ncar-era5` (the back extension starts in
/// 1940).
pub const ARCHIVE_START: Date = jiff::civil::date(1940, 1, 1);

/// One hour of the archive, as it appears in object names (`YYYYMMDDHH`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HourStamp {
    /// Calendar day (UTC).
    pub date: Date,
    /// Hour of the day, 0..=23.
    pub hour: u8,
}

impl HourStamp {
    /// Builds a stamp; `hour` must be 0..=23.
    pub fn new(date: Date, hour: u8) -> Self {
        debug_assert!(hour < 24, "hour {hour} out of range");
        Self { date, hour }
    }

    /// Parses the 10-digit `YYYYMMDDHH` form used in object names.
    pub fn parse_compact(text: &str) -> Option<Self> {
        if text.len() != 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let year: i16 = text[0..4].parse().ok()?;
        let month: i8 = text[4..6].parse().ok()?;
        let day: i8 = text[6..8].parse().ok()?;
        let hour: u8 = text[8..10].parse().ok()?;
        if hour > 23 {
            return None;
        }
        let date = Date::new(year, month, day).ok()?;
        Some(Self { date, hour })
    }

    /// The stamp in its 10-digit object-name form.
    pub fn compact(&self) -> String {
        format!(
            "{:04}{:02}{:02}{:02}",
            self.date.year(),
            self.date.month(),
            self.date.day(),
            self.hour
        )
    }
}

impl fmt::Display for HourStamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:02}:00", self.date, self.hour)
    }
}

/// A calendar month, the unit of the bucket's folder layout (`{product}/{YYYYMM}/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct YearMonth {
    /// Year, e.g. 2022.
    pub year: i16,
    /// Month, 1..=12.
    pub month: i8,
}

impl YearMonth {
    /// The month a day belongs to.
    pub fn of(date: Date) -> Self {
        Self {
            year: date.year(),
            month: date.month(),
        }
    }

    /// First day of the month.
    pub fn first_day(&self) -> Date {
        jiff::civil::date(self.year, self.month, 1)
    }

    /// Last day of the month (28, 29, 30 or 31).
    pub fn last_day(&self) -> Date {
        self.first_day().last_of_month()
    }

    /// The month after this one.
    #[must_use]
    pub fn next(&self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// The month before this one.
    #[must_use]
    pub fn previous(&self) -> Self {
        if self.month == 1 {
            Self {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Self {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    /// The folder name in the bucket, `YYYYMM`.
    pub fn compact(&self) -> String {
        format!("{:04}{:02}", self.year, self.month)
    }

    /// Parses the `YYYYMM` folder name.
    pub fn parse_compact(text: &str) -> Option<Self> {
        if text.len() != 6 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let year: i16 = text[0..4].parse().ok()?;
        let month: i8 = text[4..6].parse().ok()?;
        (1..=12).contains(&month).then_some(Self { year, month })
    }

    /// Every month from `self` to `last`, inclusive.
    pub fn through(self, last: YearMonth) -> impl Iterator<Item = YearMonth> {
        std::iter::successors(Some(self), move |m| (*m < last).then(|| m.next()))
    }
}

impl fmt::Display for YearMonth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// An inclusive range of whole days: `[start 00:00, end 23:00]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DayRange {
    /// First day, included from 00:00.
    pub start: Date,
    /// Last day, included through 23:00.
    pub end: Date,
}

impl DayRange {
    /// Builds a range; fails when `end` is before `start`.
    pub fn new(start: Date, end: Date) -> Result<Self, InputError> {
        if end < start {
            return Err(InputError::EndBeforeStart { start, end });
        }
        Ok(Self { start, end })
    }

    /// First hour of the range.
    pub fn first_hour(&self) -> HourStamp {
        HourStamp::new(self.start, 0)
    }

    /// Last hour of the range.
    pub fn last_hour(&self) -> HourStamp {
        HourStamp::new(self.end, 23)
    }

    /// Whether the inclusive hour window `[first, last]` overlaps this range.
    pub fn overlaps(&self, first: HourStamp, last: HourStamp) -> bool {
        first <= self.last_hour() && last >= self.first_hour()
    }

    /// Number of days in the range.
    pub fn days(&self) -> i64 {
        i64::from((self.end - self.start).get_days()) + 1
    }

    /// Splits the range into consecutive pieces of at most `max_days` days, in order, covering
    /// it exactly. The cluster turns these into leases; a piece never spans two months, so a
    /// piece maps to one bucket folder.
    pub fn split(&self, max_days: u32) -> Vec<DayRange> {
        let max_days = i64::from(max_days.max(1));
        let mut pieces = Vec::new();
        let mut start = self.start;
        loop {
            let month_end = start.last_of_month();
            let by_size = start
                .checked_add(jiff::Span::new().days(max_days - 1))
                .unwrap_or(month_end);
            let end = by_size.min(month_end).min(self.end);
            pieces.push(DayRange { start, end });
            if end >= self.end {
                return pieces;
            }
            start = end
                .tomorrow()
                .expect("a day inside the archive has a successor");
        }
    }
}

impl fmt::Display for DayRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// Which end of a range a DATE argument gives: a bare month means its first day for the start
/// and its last day for the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeEnd {
    /// `--start`.
    Start,
    /// `--end`.
    End,
}

impl RangeEnd {
    fn flag(self) -> &'static str {
        match self {
            RangeEnd::Start => "--start",
            RangeEnd::End => "--end",
        }
    }
}

/// The `--end` value that means "whatever the bucket has": today, re-read at every pass of a
/// follow-mode sync, so the range grows with the archive.
pub const LATEST: &str = "latest";

/// Parses a DATE argument (`YYYY-MM-DD` or `YYYY-MM`, or [`LATEST`] for `--end`) and checks it
/// lies inside the archive, which ends `today` (UTC).
pub fn parse_date_arg(text: &str, which: RangeEnd, today: Date) -> Result<Date, InputError> {
    let bad = |reason: String| InputError::BadDate {
        flag: which.flag(),
        value: text.to_string(),
        reason,
    };
    if which == RangeEnd::End && text == LATEST {
        return Ok(today);
    }
    let fields: Vec<&str> = text.split('-').collect();
    let numeric = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit());
    let well_formed = match fields.as_slice() {
        [y, m] => numeric(y, 4) && numeric(m, 2),
        [y, m, d] => numeric(y, 4) && numeric(m, 2) && numeric(d, 2),
        _ => false,
    };
    if !well_formed {
        return Err(bad(match which {
            RangeEnd::Start => "expected YYYY-MM-DD or YYYY-MM".to_string(),
            RangeEnd::End => "expected YYYY-MM-DD, YYYY-MM or latest".to_string(),
        }));
    }
    // The fields are all-digit and short, so these parses cannot fail.
    let year: i16 = fields[0].parse().unwrap_or_default();
    let month: i8 = fields[1].parse().unwrap_or_default();
    if !(1..=12).contains(&month) {
        return Err(bad(format!("month {month:02} does not exist")));
    }
    let year_month = YearMonth { year, month };
    let date = match fields.get(2) {
        Some(day_text) => {
            let day: i8 = day_text.parse().unwrap_or_default();
            let last = year_month.last_day().day();
            if day < 1 || day > last {
                return Err(bad(format!("{year_month} has days 01 to {last:02}")));
            }
            jiff::civil::date(year, month, day)
        }
        None => match which {
            RangeEnd::Start => year_month.first_day(),
            RangeEnd::End => year_month.last_day(),
        },
    };
    // A month that straddles the archive's edges is clamped for the side it covers, so
    // `--end 2026-11` means "through today" during November 2026.
    let date = match which {
        RangeEnd::End
            if fields.len() == 2 && date > today && YearMonth::of(today) == year_month =>
        {
            today
        }
        _ => date,
    };
    if date < ARCHIVE_START {
        return Err(bad(format!(
            "ERA5 starts on {ARCHIVE_START}; earlier dates are outside the archive"
        )));
    }
    if date > today {
        return Err(bad(format!(
            "it is after today ({today}); ERA5 has no data in the future"
        )));
    }
    Ok(date)
}

/// Today's date in UTC, the archive's last possible day.
pub fn today_utc() -> Date {
    jiff::Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    const TODAY: Date = date(2026, 11, 24);

    #[test]
    fn latest_means_today_and_only_for_the_end() {
        assert_eq!(
            parse_date_arg("latest", RangeEnd::End, TODAY).unwrap(),
            TODAY
        );
        let err = parse_date_arg("latest", RangeEnd::Start, TODAY).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid --start `latest`: expected YYYY-MM-DD or YYYY-MM"
        );
    }

    #[test]
    fn month_arguments_mean_first_and_last_day() {
        assert_eq!(
            parse_date_arg("2024-02", RangeEnd::Start, TODAY).unwrap(),
            date(2024, 2, 1)
        );
        assert_eq!(
            parse_date_arg("2024-02", RangeEnd::End, TODAY).unwrap(),
            date(2024, 2, 29)
        );
        assert_eq!(
            parse_date_arg("2023-02", RangeEnd::End, TODAY).unwrap(),
            date(2023, 2, 28)
        );
        assert_eq!(
            parse_date_arg("2022-04", RangeEnd::End, TODAY).unwrap(),
            date(2022, 4, 30)
        );
        assert_eq!(
            parse_date_arg("2022-12", RangeEnd::End, TODAY).unwrap(),
            date(2022, 12, 31)
        );
    }

    #[test]
    fn impossible_and_malformed_dates_are_rejected_with_the_value() {
        for bad in [
            "2023-02-29",
            "2022-04-31",
            "2022-13",
            "2022-00-10",
            "2022-1-1",
            "20220101",
            "",
            "2022-01-01T00",
        ] {
            let err = parse_date_arg(bad, RangeEnd::Start, TODAY)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{bad}`")), "{err}");
            assert!(err.contains("--start"), "{err}");
        }
        assert!(parse_date_arg("2024-02-29", RangeEnd::Start, TODAY).is_ok());
    }

    #[test]
    fn dates_outside_the_archive_are_rejected() {
        assert!(parse_date_arg("1939-12-31", RangeEnd::Start, TODAY).is_err());
        assert!(parse_date_arg("1940-01-01", RangeEnd::Start, TODAY).is_ok());
        assert!(parse_date_arg("2026-11-25", RangeEnd::End, TODAY).is_err());
        assert!(parse_date_arg("2027-01", RangeEnd::Start, TODAY).is_err());
        // The current month as an end means "through today".
        assert_eq!(
            parse_date_arg("2026-11", RangeEnd::End, TODAY).unwrap(),
            TODAY
        );
    }

    #[test]
    fn hour_stamps_round_trip_and_reject_impossible_hours() {
        let stamp = HourStamp::parse_compact("2024022923").unwrap();
        assert_eq!(stamp, HourStamp::new(date(2024, 2, 29), 23));
        assert_eq!(stamp.compact(), "2024022923");
        for bad in [
            "2023022900",
            "2024010124",
            "202401010",
            "20240101000",
            "2024a10100",
        ] {
            assert!(HourStamp::parse_compact(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn months_walk_across_years() {
        let months: Vec<String> = YearMonth {
            year: 2021,
            month: 11,
        }
        .through(YearMonth {
            year: 2022,
            month: 2,
        })
        .map(|m| m.compact())
        .collect();
        assert_eq!(months, ["202111", "202112", "202201", "202202"]);
        assert_eq!(
            YearMonth {
                year: 2022,
                month: 1
            }
            .previous()
            .compact(),
            "202112"
        );
    }

    #[test]
    fn end_before_start_is_an_error() {
        assert!(DayRange::new(date(2022, 2, 1), date(2022, 1, 31)).is_err());
        assert_eq!(
            DayRange::new(date(2022, 1, 1), date(2022, 1, 1))
                .unwrap()
                .days(),
            1
        );
    }
}
