//! Calendar arithmetic for quotas: the UTC day, ISO week (Monday to Monday) or calendar month
//! that contains an instant, its label, and how long until it ends. Pure functions of the time
//! they are given, so leap years, month ends and week starts are tested with fixed dates.

use time::{Date, Duration, Month, OffsetDateTime, Time};

use crate::config::schema::PeriodCfg;

/// A quota period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// UTC calendar day.
    Day,
    /// ISO week, from Monday 00:00 UTC.
    Week,
    /// UTC calendar month.
    Month,
}

impl From<PeriodCfg> for Period {
    fn from(p: PeriodCfg) -> Period {
        match p {
            PeriodCfg::Day => Period::Day,
            PeriodCfg::Week => Period::Week,
            PeriodCfg::Month => Period::Month,
        }
    }
}

fn midnight(d: Date) -> OffsetDateTime {
    d.with_time(Time::MIDNIGHT).assume_utc()
}

impl Period {
    /// Start (inclusive) and end (exclusive) of the period containing `t`.
    pub fn bounds(self, t: OffsetDateTime) -> (OffsetDateTime, OffsetDateTime) {
        let t = t.to_offset(time::UtcOffset::UTC);
        let day = t.date();
        match self {
            Period::Day => (midnight(day), midnight(day) + Duration::days(1)),
            Period::Week => {
                let monday =
                    day - Duration::days(i64::from(day.weekday().number_days_from_monday()));
                (midnight(monday), midnight(monday) + Duration::weeks(1))
            }
            Period::Month => {
                let first = day.replace_day(1).expect("day 1 exists");
                let next = if first.month() == Month::December {
                    Date::from_calendar_date(first.year() + 1, Month::January, 1)
                } else {
                    Date::from_calendar_date(first.year(), first.month().next(), 1)
                }
                .expect("first of a month exists");
                (midnight(first), midnight(next))
            }
        }
    }

    /// A stable label of the period containing `t` (`2026-11-22`, `2026-W47`, `2026-11`), used
    /// in counter keys.
    pub fn label(self, t: OffsetDateTime) -> String {
        let (start, _) = self.bounds(t);
        let d = start.date();
        match self {
            Period::Day => day_label(d),
            Period::Week => {
                let (year, week, _) = d.to_iso_week_date();
                format!("{year}-W{week:02}")
            }
            Period::Month => format!("{:04}-{:02}", d.year(), u8::from(d.month())),
        }
    }

    /// Whole seconds from `t` until the period containing it ends (at least 1).
    pub fn seconds_left(self, t: OffsetDateTime) -> u64 {
        seconds_until(self.bounds(t).1, t)
    }
}

/// Whole seconds from `t` until `end`, rounded up (at least 1).
pub fn seconds_until(end: OffsetDateTime, t: OffsetDateTime) -> u64 {
    let left = end - t;
    let secs = left.whole_seconds() + i64::from(left.subsec_nanoseconds() > 0);
    secs.max(1) as u64
}

/// `YYYY-MM-DD` of a date.
pub fn day_label(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Parses `YYYY-MM-DD`.
pub fn parse_day(s: &str) -> Option<Date> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s, &fmt).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn days() {
        let t = datetime!(2026-11-22 23:59:59.5 UTC);
        assert_eq!(
            Period::Day.bounds(t),
            (
                datetime!(2026-11-22 0:00 UTC),
                datetime!(2026-11-23 0:00 UTC)
            )
        );
        assert_eq!(Period::Day.label(t), "2026-11-22");
        assert_eq!(Period::Day.seconds_left(t), 1);
        assert_eq!(
            Period::Day.seconds_left(datetime!(2026-11-22 0:00 UTC)),
            86_400
        );
    }

    #[test]
    fn weeks_start_on_monday() {
        // 2026-11-22 is a Sunday: its week began Monday 2026-11-16.
        let sunday = datetime!(2026-11-22 12:00 UTC);
        assert_eq!(
            Period::Week.bounds(sunday).0,
            datetime!(2026-11-16 0:00 UTC)
        );
        let monday = datetime!(2026-11-23 0:00 UTC);
        assert_eq!(Period::Week.bounds(monday).0, monday);
        assert_eq!(
            Period::Week.seconds_left(datetime!(2026-11-22 23:00 UTC)),
            3600
        );
        // ISO week labels across a year end: 2026-12-31 (Thursday) is in 2026-W53.
        assert_eq!(
            Period::Week.label(datetime!(2026-12-31 10:00 UTC)),
            "2026-W53"
        );
        assert_eq!(
            Period::Week.label(datetime!(2027-01-03 10:00 UTC)),
            "2026-W53"
        );
        assert_eq!(
            Period::Week.label(datetime!(2027-01-04 10:00 UTC)),
            "2027-W01"
        );
    }

    #[test]
    fn months_leap_years_and_year_end() {
        assert_eq!(
            Period::Month.bounds(datetime!(2024-02-29 18:00 UTC)),
            (
                datetime!(2024-02-01 0:00 UTC),
                datetime!(2024-03-01 0:00 UTC)
            )
        );
        assert_eq!(
            Period::Month.bounds(datetime!(2023-02-28 18:00 UTC)).1,
            datetime!(2023-03-01 0:00 UTC)
        );
        assert_eq!(
            Period::Month.bounds(datetime!(2026-12-31 23:00 UTC)),
            (
                datetime!(2026-12-01 0:00 UTC),
                datetime!(2027-01-01 0:00 UTC)
            )
        );
        assert_eq!(
            Period::Month.label(datetime!(2026-01-31 23:00 UTC)),
            "2026-01"
        );
        assert_eq!(
            Period::Month.seconds_left(datetime!(2026-12-31 23:00 UTC)),
            3600
        );
        // 30- and 31-day months.
        assert_eq!(
            Period::Month.bounds(datetime!(2026-04-30 1:00 UTC)).1,
            datetime!(2026-05-01 0:00 UTC)
        );
        assert_eq!(
            Period::Month.bounds(datetime!(2026-03-31 1:00 UTC)).1,
            datetime!(2026-04-01 0:00 UTC)
        );
    }

    #[test]
    fn non_utc_instants_are_read_in_utc() {
        let t = datetime!(2026-11-23 01:00 +02:00); // 2026-11-22 23:00 UTC
        assert_eq!(Period::Day.label(t), "2026-11-22");
    }

    #[test]
    fn day_parsing() {
        assert_eq!(
            parse_day("2026-02-28").map(day_label).as_deref(),
            Some("2026-02-28")
        );
        assert!(parse_day("2026-02-30").is_none());
        assert!(parse_day("yesterday").is_none());
    }
}
