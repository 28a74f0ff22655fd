//! Objects' wall clocks: which timezone an object lives in, and when a local closing time next
//! happens after a given instant.
//!
//! DST is resolved explicitly, with one rule for both cases: a closing time is "the first instant
//! at which the local wall clock shows that time, strictly after the start".
//! - In a spring-forward gap the wall clock never shows it (02:30 when clocks jump 02:00 → 03:00):
//!   the instant used is the end of the gap, when the clock jumps past it (03:00 new time).
//! - In a fall-back overlap it shows it twice (02:30 CEST, then 02:30 CET): the earlier instant is
//!   used, unless the start is between the two, in which case the later one is the first after it.
//!
//! A NULL timezone means `DEFAULT_TIMEZONE`; an unknown name falls back to it too, with a warning
//! (the Python job failed such rows forever).

use chrono::{DateTime, Days, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The timezone an object's times are in.
pub fn object_timezone(name: Option<&str>, default: Tz, object_id: i32) -> Tz {
    match name.map(str::trim) {
        None | Some("") => default,
        Some(name) => match name.parse::<Tz>() {
            Ok(tz) => tz,
            Err(_) => {
                tracing::warn!(
                    object_id,
                    timezone = name,
                    fallback = %default,
                    "unknown object timezone, using DEFAULT_TIMEZONE"
                );
                default
            }
        },
    }
}

/// The instants at which the wall clock in `tz` shows `local`, earliest first: one normally, two
/// in a fall-back overlap, and in a spring-forward gap the instant the clock jumps past it.
pub fn local_instants(tz: Tz, local: NaiveDateTime) -> Vec<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
        LocalResult::Ambiguous(a, b) => {
            let (a, b) = (a.with_timezone(&Utc), b.with_timezone(&Utc));
            vec![a.min(b), a.max(b)]
        }
        LocalResult::None => gap_end(tz, local).into_iter().collect(),
    }
}

/// The first instant whose wall clock reads `local` or later, for a `local` inside a gap.
fn gap_end(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    // Gaps are an hour almost everywhere; the longest on record skipped a whole day (Samoa 2011).
    // Walk forward a minute at a time to the first wall time that exists, then back second by
    // second in case the transition was not on a minute boundary.
    let mut probe = local;
    for _ in 0..(48 * 60) {
        probe += chrono::Duration::minutes(1);
        if let Some(first) = earliest(tz, probe) {
            let mut best = first;
            let mut back = probe;
            for _ in 0..59 {
                back -= chrono::Duration::seconds(1);
                if back <= local {
                    break;
                }
                match earliest(tz, back) {
                    Some(t) => best = t,
                    None => break,
                }
            }
            return Some(best);
        }
    }
    None
}

fn earliest(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    tz.from_local_datetime(&local)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
}

/// The first instant strictly after `start` at which the wall clock in `tz` shows `time`: on the
/// start's local date if that is still ahead, else the next day. So a shift started after
/// closing, or at an overnight object (closing <= opening), ends the next day instead of getting
/// a negative duration.
pub fn next_local_time_after(
    start: DateTime<Utc>,
    time: NaiveTime,
    tz: Tz,
) -> Option<DateTime<Utc>> {
    let local_date = start.with_timezone(&tz).date_naive();
    // Three days covers a skipped day (a gap of 24 h) after the start's own date.
    (0..3u64)
        .filter_map(|offset| local_date.checked_add_days(Days::new(offset)))
        .flat_map(|date: NaiveDate| local_instants(tz, date.and_time(time)))
        .find(|instant| *instant > start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Europe::{Berlin, Moscow};

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().expect("test timestamp")
    }

    fn hm(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).expect("test time")
    }

    #[test]
    fn same_day_closing() {
        // 09:00 Moscow = 06:00Z; closing 18:00 Moscow = 15:00Z.
        let end = next_local_time_after(utc("2026-03-10T06:00:00Z"), hm(18, 0), Moscow);
        assert_eq!(end, Some(utc("2026-03-10T15:00:00Z")));
    }

    #[test]
    fn started_after_closing_ends_next_day() {
        // 19:00 Moscow, closing 18:00: next day's 18:00.
        let end = next_local_time_after(utc("2026-03-10T16:00:00Z"), hm(18, 0), Moscow);
        assert_eq!(end, Some(utc("2026-03-11T15:00:00Z")));
    }

    #[test]
    fn start_exactly_at_closing_is_not_an_end() {
        let end = next_local_time_after(utc("2026-03-10T15:00:00Z"), hm(18, 0), Moscow);
        assert_eq!(end, Some(utc("2026-03-11T15:00:00Z")));
    }

    #[test]
    fn spring_forward_gap_uses_the_jump() {
        // Berlin 2026-03-29: 02:00 CET -> 03:00 CEST (01:00Z). 02:30 does not exist.
        let end = next_local_time_after(utc("2026-03-28T23:00:00Z"), hm(2, 30), Berlin);
        assert_eq!(end, Some(utc("2026-03-29T01:00:00Z")));
    }

    #[test]
    fn fall_back_overlap_uses_the_first_after_start() {
        // Berlin 2026-10-25: 03:00 CEST -> 02:00 CET (01:00Z). 02:30 happens at 00:30Z and 01:30Z.
        let early = next_local_time_after(utc("2026-10-24T22:00:00Z"), hm(2, 30), Berlin);
        assert_eq!(early, Some(utc("2026-10-25T00:30:00Z")));
        let between = next_local_time_after(utc("2026-10-25T00:45:00Z"), hm(2, 30), Berlin);
        assert_eq!(between, Some(utc("2026-10-25T01:30:00Z")));
    }

    #[test]
    fn unknown_and_missing_timezones_fall_back() {
        assert_eq!(object_timezone(None, Moscow, 1), Moscow);
        assert_eq!(object_timezone(Some(""), Moscow, 1), Moscow);
        assert_eq!(object_timezone(Some("Mars/Olympus"), Moscow, 1), Moscow);
        assert_eq!(object_timezone(Some("Europe/Berlin"), Moscow, 1), Berlin);
    }
}
