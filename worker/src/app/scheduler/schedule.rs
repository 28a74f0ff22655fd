//! One schedule and when it fires: the fire-time arithmetic, including daylight-saving time.
//!
//! Fire times are pure functions of the schedule and an instant, so every replica computes the
//! same ticks — that is what lets a per-tick claim de-duplicate them.
//!
//! * `cron` schedules are matched against wall-clock time in the schedule's timezone. The `cron`
//!   crate is asked for candidate wall-clock times only (evaluated in UTC, which has no gaps or
//!   repeats), and this module maps each one to an instant itself, because the crate's own
//!   timezone handling fires a repeated local time twice and silently drops a skipped one:
//!   - a local time that happens twice (autumn fall-back) fires once, at its first occurrence;
//!   - a local time skipped by a spring-forward fires once, at the end of the gap (02:30 on a
//!     02:00→03:00 night fires at 03:00; several skipped times collapse into that one tick).
//! * `every` schedules tick at whole multiples of the interval since the Unix epoch (UTC): no
//!   replica-specific start time, no drift, and DST cannot touch them. `every = "6h"` is therefore
//!   00/06/12/18 UTC; use `cron` for wall-clock alignment.
//!
//! The instant mapping of wall-clock candidates is monotonic (a later local time never maps to an
//! earlier instant), which is what makes the forward and backward searches below correct.

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::cron_expr::CronExpr;
use super::duration::format_duration;

/// How often a schedule fires.
#[derive(Debug, Clone, PartialEq)]
pub enum Timing {
    /// A crontab expression matched in the schedule's timezone.
    Cron(CronExpr),
    /// A fixed interval counted from the Unix epoch.
    Every(TimeDelta),
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Timing::Cron(expr) => write!(f, "cron \"{}\"", expr.source()),
            Timing::Every(every) => write!(f, "every \"{}\"", format_duration(*every)),
        }
    }
}

/// What to do with ticks that passed while no replica was running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// Publish the most recent missed tick once, if it is within `catch_up_window`.
    #[default]
    Latest,
    /// Publish no missed tick; wait for the next one.
    Skip,
}

/// What the first start does when the schedule has never run (no published tick on record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FirstStart {
    /// Fire no past tick; wait for the next one (Celery beat's behaviour with an empty
    /// schedule file).
    #[default]
    Skip,
    /// Publish the latest tick inside `catch_up_window` once (across replicas, by the claim):
    /// for idempotent tasks whose run must not be missed at a cut-over.
    CatchUp,
}

/// One validated entry of `schedules.toml`.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    /// Registered Celery task name, e.g. `core.celery.tasks.shift_tasks.auto_close_shifts`.
    pub task: String,
    pub queue: String,
    pub timing: Timing,
    pub timezone: Tz,
    /// JSON array of positional arguments.
    pub args: serde_json::Value,
    /// JSON object of keyword arguments.
    pub kwargs: serde_json::Value,
    pub enabled: bool,
    pub catch_up: CatchUp,
    pub catch_up_window: TimeDelta,
    pub on_first_start: FirstStart,
    /// The published message expires this long after its tick time.
    pub expires: Option<TimeDelta>,
    /// Line of the entry in its file, for messages.
    pub line: usize,
}

/// How far past a transition a repeated hour can reach; real zones shift by at most 2 hours.
const MAX_DST_SHIFT: TimeDelta = TimeDelta::hours(3);
/// Upper bound on candidates examined per search, so a pathological expression cannot spin.
const MAX_CANDIDATES: usize = 200_000;

impl Schedule {
    /// Same definition, ignoring where it sits in the file: used by hot reload to leave unchanged
    /// schedules running untouched.
    pub fn same_definition(&self, other: &Schedule) -> bool {
        self.name == other.name
            && self.task == other.task
            && self.queue == other.queue
            && self.timing == other.timing
            && self.timezone == other.timezone
            && self.args == other.args
            && self.kwargs == other.kwargs
            && self.enabled == other.enabled
            && self.catch_up == other.catch_up
            && self.catch_up_window == other.catch_up_window
            && self.on_first_start == other.on_first_start
            && self.expires == other.expires
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.timing {
            Timing::Every(every) => {
                let latest = every_at_or_before(*every, after)?;
                latest.checked_add_signed(*every)
            }
            Timing::Cron(expr) => expr
                .alternatives()
                .iter()
                .filter_map(|alternative| cron_next_after(alternative, self.timezone, after))
                .min(),
        }
    }

    /// The most recent tick at or before `at`: the tick that is "due" at that instant.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.timing {
            Timing::Every(every) => every_at_or_before(*every, at),
            Timing::Cron(expr) => expr
                .alternatives()
                .iter()
                .filter_map(|alternative| cron_at_or_before(alternative, self.timezone, at))
                .max(),
        }
    }

    /// The next `count` ticks strictly after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(count);
        let mut cursor = after;
        while out.len() < count {
            match self.next_after(cursor) {
                Some(tick) => {
                    out.push(tick);
                    cursor = tick;
                }
                None => break,
            }
        }
        out
    }
}

fn every_at_or_before(every: TimeDelta, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let step = every.num_seconds();
    if step <= 0 {
        return None;
    }
    let slot = at.timestamp().div_euclid(step);
    DateTime::from_timestamp(slot.checked_mul(step)?, 0)
}

/// Maps a wall-clock time to the instant it fires: the first occurrence of a repeated time, the
/// end of the gap for a skipped one.
fn resolve_local(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => Some(at.with_timezone(&Utc)),
        LocalResult::None => {
            // In a gap: walk minute by minute to the first wall-clock time that exists again;
            // transitions happen on whole minutes, so that is the instant the gap ends.
            let mut probe = local.with_second(0)?.with_nanosecond(0)?;
            for _ in 0..(48 * 60) {
                probe = probe.checked_add_signed(TimeDelta::minutes(1))?;
                match tz.from_local_datetime(&probe) {
                    LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => {
                        return Some(at.with_timezone(&Utc));
                    }
                    LocalResult::None => {}
                }
            }
            None
        }
    }
}

fn cron_next_after(
    alternative: &cron::Schedule,
    tz: Tz,
    after: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    // No wall-clock time earlier than `after`'s own can map past `after` (monotonic mapping), so
    // the search starts there; candidates in a repeated hour's second pass map back to the first
    // pass and are skipped by the comparison.
    let start = after.with_timezone(&tz).naive_local().and_utc();
    alternative
        .after(&start)
        .take(MAX_CANDIDATES)
        .filter_map(|candidate| resolve_local(tz, candidate.naive_utc()))
        .find(|&at| at > after)
}

fn cron_at_or_before(
    alternative: &cron::Schedule,
    tz: Tz,
    at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    // During a repeated hour's second pass, wall-clock times up to one DST shift later than `at`'s
    // own already happened (in the first pass); start the backward search above them.
    let offset_now = tz.offset_from_utc_datetime(&at.naive_utc()).fix();
    let earlier = at.checked_sub_signed(MAX_DST_SHIFT)?;
    let offset_before = tz.offset_from_utc_datetime(&earlier.naive_utc()).fix();
    let shift = (offset_before.local_minus_utc() - offset_now.local_minus_utc()).max(0);
    let start = at.with_timezone(&tz).naive_local() + TimeDelta::seconds(i64::from(shift) + 1);
    alternative
        .after(&start.and_utc())
        .rev()
        .take(MAX_CANDIDATES)
        .filter_map(|candidate| resolve_local(tz, candidate.naive_utc()))
        .find(|&tick| tick <= at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("valid test time")
            .with_timezone(&Utc)
    }

    fn schedule(timing: Timing, tz: Tz) -> Schedule {
        Schedule {
            name: "test".into(),
            task: "t".into(),
            queue: "q".into(),
            timing,
            timezone: tz,
            args: serde_json::json!([]),
            kwargs: serde_json::json!({}),
            enabled: true,
            catch_up: CatchUp::Latest,
            catch_up_window: TimeDelta::days(1),
            on_first_start: FirstStart::Skip,
            expires: None,
            line: 1,
        }
    }

    fn cron(expr: &str, tz: Tz) -> Schedule {
        schedule(Timing::Cron(CronExpr::parse(expr).expect("valid")), tz)
    }

    fn every(seconds: i64) -> Schedule {
        schedule(Timing::Every(TimeDelta::seconds(seconds)), Tz::UTC)
    }

    fn ticks(schedule: &Schedule, after: &str, count: usize) -> Vec<DateTime<Utc>> {
        schedule.upcoming(utc(after), count)
    }

    fn all(times: &[&str]) -> Vec<DateTime<Utc>> {
        times.iter().map(|t| utc(t)).collect()
    }

    /// Every tick found walking forward must also be found walking backward from it.
    fn assert_backward_agrees(schedule: &Schedule, forward: &[DateTime<Utc>]) {
        for pair in forward.windows(2) {
            let just_before_next = pair[1] - TimeDelta::milliseconds(1);
            assert_eq!(
                schedule.latest_at_or_before(just_before_next),
                Some(pair[0])
            );
            assert_eq!(schedule.latest_at_or_before(pair[1]), Some(pair[1]));
        }
    }

    #[test]
    fn every_30_minutes_at_00_and_30_across_a_year_end() {
        let s = cron("0,30 * * * *", Tz::Europe__Moscow);
        let got = ticks(&s, "2026-12-31T23:10:00+03:00", 4);
        let want = all(&[
            "2026-12-31T23:30:00+03:00",
            "2027-01-01T00:00:00+03:00",
            "2027-01-01T00:30:00+03:00",
            "2027-01-01T01:00:00+03:00",
        ]);
        assert_eq!(got, want);
        assert_backward_agrees(&s, &got);
        // On a tick exactly, "next" is the following one.
        assert_eq!(
            s.next_after(utc("2027-01-01T00:00:00+03:00")),
            Some(utc("2027-01-01T00:30:00+03:00"))
        );
    }

    #[test]
    fn every_30m_interval_is_epoch_aligned() {
        let s = every(30 * 60);
        let got = ticks(&s, "2026-12-31T23:59:59Z", 3);
        assert_eq!(
            got,
            all(&[
                "2027-01-01T00:00:00Z",
                "2027-01-01T00:30:00Z",
                "2027-01-01T01:00:00Z"
            ])
        );
        assert_backward_agrees(&s, &got);
    }

    #[test]
    fn every_6_hours_cron_in_moscow_and_interval_in_utc() {
        let s = cron("0 0,6,12,18 * * *", Tz::Europe__Moscow);
        let got = ticks(&s, "2026-12-31T20:00:00Z", 4);
        assert_eq!(
            got,
            all(&[
                "2027-01-01T00:00:00+03:00",
                "2027-01-01T06:00:00+03:00",
                "2027-01-01T12:00:00+03:00",
                "2027-01-01T18:00:00+03:00",
            ])
        );
        assert_backward_agrees(&s, &got);

        let s = every(6 * 3600);
        let got = ticks(&s, "2026-12-31T20:00:00Z", 3);
        assert_eq!(
            got,
            all(&[
                "2027-01-01T00:00:00Z",
                "2027-01-01T06:00:00Z",
                "2027-01-01T12:00:00Z"
            ])
        );
    }

    #[test]
    fn december_first_0300_moscow_across_year_ends() {
        let s = cron("0 3 1 12 *", Tz::Europe__Moscow);
        let got = ticks(&s, "2026-06-01T00:00:00Z", 3);
        let want = all(&[
            "2026-12-01T00:00:00Z",
            "2027-12-01T00:00:00Z",
            "2028-12-01T00:00:00Z",
        ]);
        assert_eq!(got, want);
        assert_backward_agrees(&s, &got);
        // From just after a tick, across New Year, the due tick is still last December's.
        assert_eq!(
            s.latest_at_or_before(utc("2027-01-10T12:00:00Z")),
            Some(utc("2026-12-01T03:00:00+03:00"))
        );
        assert_eq!(
            s.next_after(utc("2026-12-01T00:00:00Z")),
            Some(utc("2027-12-01T00:00:00Z"))
        );
    }

    #[test]
    fn berlin_repeated_hour_fires_once() {
        // 2026-10-25: 03:00 CEST -> 02:00 CET, so 02:00-02:59 happens twice.
        let s = cron("30 2 * * *", Tz::Europe__Berlin);
        let got = ticks(&s, "2026-10-24T12:00:00Z", 3);
        assert_eq!(
            got,
            all(&[
                "2026-10-25T02:30:00+02:00",
                "2026-10-26T02:30:00+01:00",
                "2026-10-27T02:30:00+01:00",
            ])
        );
        assert_backward_agrees(&s, &got);

        let s = cron("0,30 * * * *", Tz::Europe__Berlin);
        let got = ticks(&s, "2026-10-25T01:10:00+02:00", 5);
        assert_eq!(
            got,
            all(&[
                "2026-10-25T01:30:00+02:00",
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:30:00+02:00",
                // 02:00 and 02:30 CET already happened as CEST: not again.
                "2026-10-25T03:00:00+01:00",
                "2026-10-25T03:30:00+01:00",
            ])
        );
        assert_backward_agrees(&s, &got);
        // Asked from inside the second pass, the due tick is the first pass's 02:30.
        assert_eq!(
            s.latest_at_or_before(utc("2026-10-25T02:45:00+01:00")),
            Some(utc("2026-10-25T02:30:00+02:00"))
        );
        assert_eq!(
            s.next_after(utc("2026-10-25T02:10:00+01:00")),
            Some(utc("2026-10-25T03:00:00+01:00"))
        );
    }

    #[test]
    fn berlin_skipped_hour_fires_at_end_of_gap() {
        // 2026-03-29: 02:00 CET -> 03:00 CEST, so 02:00-02:59 never happens.
        let s = cron("30 2 * * *", Tz::Europe__Berlin);
        let got = ticks(&s, "2026-03-28T12:00:00Z", 3);
        assert_eq!(
            got,
            all(&[
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00",
                "2026-03-31T02:30:00+02:00",
            ])
        );
        assert_backward_agrees(&s, &got);

        let s = cron("0,30 * * * *", Tz::Europe__Berlin);
        let got = ticks(&s, "2026-03-29T01:10:00+01:00", 3);
        assert_eq!(
            got,
            all(&[
                "2026-03-29T01:30:00+01:00",
                // 02:00, 02:30 and 03:00 all land on the end of the gap: one tick.
                "2026-03-29T03:00:00+02:00",
                "2026-03-29T03:30:00+02:00",
            ])
        );
        assert_backward_agrees(&s, &got);
    }

    #[test]
    fn new_york_repeated_hour_fires_once() {
        // 2026-11-01: 02:00 EDT -> 01:00 EST, so 01:00-01:59 happens twice.
        let s = cron("30 1 * * *", Tz::America__New_York);
        let got = ticks(&s, "2026-10-31T12:00:00Z", 2);
        assert_eq!(
            got,
            all(&["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"])
        );
        assert_backward_agrees(&s, &got);
        assert_eq!(
            s.latest_at_or_before(utc("2026-11-01T01:45:00-05:00")),
            Some(utc("2026-11-01T01:30:00-04:00"))
        );
    }

    #[test]
    fn new_york_skipped_hour_fires_at_end_of_gap() {
        // 2026-03-08: 02:00 EST -> 03:00 EDT.
        let s = cron("30 2 * * *", Tz::America__New_York);
        let got = ticks(&s, "2026-03-07T12:00:00Z", 2);
        assert_eq!(
            got,
            all(&["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"])
        );
        assert_backward_agrees(&s, &got);
    }

    #[test]
    fn restricted_day_of_month_and_week_fire_on_either() {
        // crontab(5): the 1st of the month OR any Monday. 2026-06-01 is itself a Monday.
        let s = cron("0 9 1 * 1", Tz::Europe__Moscow);
        let got = ticks(&s, "2026-05-20T00:00:00+03:00", 4);
        assert_eq!(
            got,
            all(&[
                "2026-05-25T09:00:00+03:00",
                "2026-06-01T09:00:00+03:00",
                "2026-06-08T09:00:00+03:00",
                "2026-06-15T09:00:00+03:00",
            ])
        );
        assert_backward_agrees(&s, &got);
        let got = ticks(&s, "2026-06-25T00:00:00+03:00", 2);
        assert_eq!(
            got,
            all(&["2026-06-29T09:00:00+03:00", "2026-07-01T09:00:00+03:00"])
        );
    }

    #[test]
    fn seconds_cron_and_one_second_interval() {
        let s = cron("*/2 * * * * *", Tz::UTC);
        assert_eq!(
            ticks(&s, "2026-01-01T00:00:00.500Z", 2),
            all(&["2026-01-01T00:00:02Z", "2026-01-01T00:00:04Z"])
        );
        let s = every(1);
        assert_eq!(
            s.latest_at_or_before(utc("2026-01-01T00:00:00.999Z")),
            Some(utc("2026-01-01T00:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:00Z")),
            Some(utc("2026-01-01T00:00:01Z"))
        );
    }
}
