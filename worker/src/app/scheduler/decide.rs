//! Whether a due tick is published: on time, caught up after downtime, or skipped.
//!
//! Pure functions of the schedule, the tick, "now" and what is known about the last published
//! tick, so the policy is unit-tested with any clock. The runner supplies the real clock.
//!
//! * A tick reached within its grace (a minute, or half the gap to the next tick if shorter) is
//!   on time and always published.
//! * A later tick was missed (the scheduler was down or stalled). `catch_up = "latest"` publishes
//!   it if it lies within `catch_up_window` *and* there is history: an earlier run on record in
//!   PostgreSQL, or this replica was already running when the tick fell due (a stall).
//!   `"skip"` publishes none. Only the most recent due tick is ever considered, so there is
//!   never a burst.
//! * A first start (no history) fires no past tick by default (`on_first_start = "skip"`).
//!   `on_first_start = "catch_up"` publishes the latest tick inside `catch_up_window` instead,
//!   whatever `catch_up` says: for an idempotent task whose yearly run must not be lost when the
//!   worker replaces Celery beat just after it fell due. Every replica decides the same, and the
//!   per-tick claim makes it one publish.

use chrono::{DateTime, TimeDelta, Utc};

use super::schedule::{CatchUp, FirstStart, Schedule};

/// Longest lateness that still counts as "on time".
const MAX_GRACE: TimeDelta = TimeDelta::seconds(60);

/// What to do with a due tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Publish it: reached on time.
    OnTime,
    /// Publish it: a missed tick, caught up.
    CatchUp,
    /// Do not publish it.
    Skip(SkipReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SkipReason {
    /// `catch_up = "skip"`.
    Policy,
    /// Older than `catch_up_window`.
    OutsideWindow,
    /// No earlier run on record (first start): old ticks are not fired retroactively.
    NoHistory,
    /// The schedule was just added or changed by a reload; edits apply from now on.
    JustReloaded,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SkipReason::Policy => "catch_up = \"skip\"",
            SkipReason::OutsideWindow => "older than catch_up_window",
            SkipReason::NoHistory => "no earlier run on record",
            SkipReason::JustReloaded => "schedule was just (re)loaded",
        })
    }
}

/// How late a tick may be reached and still count as on time.
pub(crate) fn grace(schedule: &Schedule, tick: DateTime<Utc>) -> TimeDelta {
    match schedule.next_after(tick) {
        Some(next) => MAX_GRACE.min((next - tick) / 2),
        None => MAX_GRACE,
    }
}

/// Decides about `tick`, the most recent tick at or before `now`, which has not been published
/// as far as this replica knows. `has_history` says whether an earlier run is on record or this
/// replica was running when the tick fell due; `allow_catch_up` is false right after a reload.
pub(crate) fn decide(
    schedule: &Schedule,
    tick: DateTime<Utc>,
    now: DateTime<Utc>,
    has_history: bool,
    allow_catch_up: bool,
) -> Decision {
    if now - tick <= grace(schedule, tick) {
        return Decision::OnTime;
    }
    if !allow_catch_up {
        return Decision::Skip(SkipReason::JustReloaded);
    }
    if !has_history {
        return match schedule.on_first_start {
            FirstStart::Skip => Decision::Skip(SkipReason::NoHistory),
            FirstStart::CatchUp if now - tick > schedule.catch_up_window => {
                Decision::Skip(SkipReason::OutsideWindow)
            }
            FirstStart::CatchUp => Decision::CatchUp,
        };
    }
    if schedule.catch_up == CatchUp::Skip {
        return Decision::Skip(SkipReason::Policy);
    }
    if now - tick > schedule.catch_up_window {
        return Decision::Skip(SkipReason::OutsideWindow);
    }
    Decision::CatchUp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::scheduler::cron_expr::CronExpr;
    use crate::app::scheduler::schedule::Timing;
    use chrono_tz::Tz;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("valid test time")
            .with_timezone(&Utc)
    }

    fn plan_next_year(catch_up: CatchUp) -> Schedule {
        Schedule {
            name: "plan-next-year-timeslots".into(),
            task: "core.celery.tasks.shift_tasks.plan_next_year_timeslots".into(),
            queue: "shifts".into(),
            timing: Timing::Cron(CronExpr::parse("0 3 1 12 *").expect("valid")),
            timezone: Tz::Europe__Moscow,
            args: serde_json::json!([]),
            kwargs: serde_json::json!({}),
            enabled: true,
            catch_up,
            catch_up_window: TimeDelta::days(30),
            on_first_start: FirstStart::Skip,
            expires: None,
            line: 1,
        }
    }

    /// The due tick at `now`, decided with the given history: what the runner does on start.
    fn on_start(schedule: &Schedule, now: &str, last: Option<&str>) -> (DateTime<Utc>, Decision) {
        let now = utc(now);
        let tick = schedule.latest_at_or_before(now).expect("has a tick");
        (tick, decide(schedule, tick, now, last.is_some(), true))
    }

    #[test]
    fn down_on_december_first_still_plans_next_year() {
        let s = plan_next_year(CatchUp::Latest);
        let (tick, decision) = on_start(
            &s,
            "2026-12-05T10:00:00+03:00",
            Some("2025-12-01T03:00:00+03:00"),
        );
        assert_eq!(tick, utc("2026-12-01T03:00:00+03:00"));
        assert_eq!(decision, Decision::CatchUp);
    }

    #[test]
    fn catch_up_window_bounds_how_late() {
        let s = plan_next_year(CatchUp::Latest);
        let (_, decision) = on_start(
            &s,
            "2027-01-15T10:00:00+03:00",
            Some("2025-12-01T03:00:00+03:00"),
        );
        assert_eq!(decision, Decision::Skip(SkipReason::OutsideWindow));
    }

    #[test]
    fn skip_policy_publishes_no_missed_tick() {
        let s = plan_next_year(CatchUp::Skip);
        let (_, decision) = on_start(
            &s,
            "2026-12-05T10:00:00+03:00",
            Some("2025-12-01T03:00:00+03:00"),
        );
        assert_eq!(decision, Decision::Skip(SkipReason::Policy));
    }

    #[test]
    fn first_start_does_not_fire_old_ticks() {
        let s = plan_next_year(CatchUp::Latest);
        let (_, decision) = on_start(&s, "2026-12-05T10:00:00+03:00", None);
        assert_eq!(decision, Decision::Skip(SkipReason::NoHistory));
    }

    #[test]
    fn first_start_with_catch_up_fires_the_latest_tick_inside_the_window() {
        let mut s = plan_next_year(CatchUp::Latest);
        s.on_first_start = FirstStart::CatchUp;
        // Cut over from Celery beat on 2 December: the 1 December run is still planned.
        let (tick, decision) = on_start(&s, "2026-12-02T10:00:00+03:00", None);
        assert_eq!(tick, utc("2026-12-01T03:00:00+03:00"));
        assert_eq!(decision, Decision::CatchUp);
        // Whatever `catch_up` says about ticks missed after a run.
        s.catch_up = CatchUp::Skip;
        assert_eq!(
            on_start(&s, "2026-12-02T10:00:00+03:00", None).1,
            Decision::CatchUp
        );
        // But never older than catch_up_window (30 days here).
        assert_eq!(
            on_start(&s, "2027-01-15T10:00:00+03:00", None).1,
            Decision::Skip(SkipReason::OutsideWindow)
        );
    }

    #[test]
    fn first_start_catch_up_does_not_apply_to_a_reload_or_change_history_rules() {
        let mut s = plan_next_year(CatchUp::Skip);
        s.on_first_start = FirstStart::CatchUp;
        let now = utc("2026-12-02T10:00:00+03:00");
        let tick = s.latest_at_or_before(now).expect("has a tick");
        assert_eq!(
            decide(&s, tick, now, false, false),
            Decision::Skip(SkipReason::JustReloaded)
        );
        // With history, `catch_up` decides as before.
        assert_eq!(
            decide(&s, tick, now, true, true),
            Decision::Skip(SkipReason::Policy)
        );
    }

    #[test]
    fn a_tick_reached_within_grace_is_on_time_for_every_policy() {
        for policy in [CatchUp::Latest, CatchUp::Skip] {
            let s = plan_next_year(policy);
            let (_, decision) = on_start(&s, "2026-12-01T03:00:20+03:00", None);
            assert_eq!(decision, Decision::OnTime);
            let (_, decision) = on_start(&s, "2026-12-01T03:01:01+03:00", None);
            assert_ne!(decision, Decision::OnTime);
        }
    }

    #[test]
    fn grace_shrinks_for_short_intervals() {
        let mut s = plan_next_year(CatchUp::Latest);
        s.timing = Timing::Every(TimeDelta::seconds(2));
        let tick = utc("2026-01-01T00:00:00Z");
        assert_eq!(grace(&s, tick), TimeDelta::seconds(1));
        assert_eq!(
            decide(&s, tick, tick + TimeDelta::milliseconds(1500), true, true),
            Decision::CatchUp
        );
        assert_eq!(
            decide(&s, tick, tick + TimeDelta::milliseconds(1500), true, false),
            Decision::Skip(SkipReason::JustReloaded)
        );
    }
}
