//! `check_file` / `parse_schedules`: the shipped `schedules.toml` loads, and broken files are
//! refused with the file name, the line and the problem (what `worker check-schedules` prints).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use worker::scheduler::{
    CatchUp, FirstStart, ScheduleFileError, Timing, check_file, parse_schedules,
};

fn known_tasks() -> HashMap<String, String> {
    [
        (
            "core.celery.tasks.notification_tasks.process_reminders",
            "notifications",
        ),
        ("core.celery.tasks.shift_tasks.auto_close_shifts", "shifts"),
        (
            "core.celery.tasks.analytics_tasks.cleanup_cache",
            "analytics",
        ),
        (
            "core.celery.tasks.shift_tasks.plan_next_year_timeslots",
            "shifts",
        ),
    ]
    .into_iter()
    .map(|(task, queue)| (task.to_owned(), queue.to_owned()))
    .collect()
}

fn shipped_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schedules.toml")
}

/// Parses `text` expecting failure; returns the error's full message and (line, message) pairs.
fn refused(text: &str) -> (String, Vec<(usize, String)>) {
    match parse_schedules(
        text,
        Path::new("broken.toml"),
        Tz::Europe__Moscow,
        &known_tasks(),
    ) {
        Ok((schedules, _)) => panic!(
            "expected the file to be refused, got {} schedules",
            schedules.len()
        ),
        Err(err) => {
            let pairs = err
                .problems()
                .iter()
                .map(|p| (p.line, p.message.clone()))
                .collect();
            (err.to_string(), pairs)
        }
    }
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("valid test time")
        .with_timezone(&Utc)
}

#[test]
fn shipped_file_loads_with_the_four_staffprobot_schedules() {
    let (schedules, warnings) = check_file(&shipped_file(), Tz::Europe__Moscow, &known_tasks())
        .expect("shipped file is valid");
    assert!(warnings.is_empty(), "unexpected warnings: {warnings:?}");
    let names: Vec<&str> = schedules.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "process-reminders",
            "auto-close-shifts",
            "cleanup-cache",
            "plan-next-year-timeslots"
        ]
    );
    let by_name = |name: &str| {
        schedules
            .iter()
            .find(|s| s.name == name)
            .expect("schedule present")
    };

    let reminders = by_name("process-reminders");
    assert_eq!(reminders.queue, "notifications");
    assert_eq!(reminders.timezone, Tz::Europe__Moscow);
    assert_eq!(
        reminders.upcoming(utc("2026-11-25T10:10:00+03:00"), 3),
        vec![
            utc("2026-11-25T10:30:00+03:00"),
            utc("2026-11-25T11:00:00+03:00"),
            utc("2026-11-25T11:30:00+03:00")
        ]
    );
    assert_eq!(by_name("auto-close-shifts").queue, "shifts");

    let cleanup = by_name("cleanup-cache");
    assert_eq!(cleanup.queue, "analytics");
    assert_eq!(
        cleanup.upcoming(utc("2026-11-25T10:10:00+03:00"), 3),
        vec![
            utc("2026-11-25T12:00:00+03:00"),
            utc("2026-11-25T18:00:00+03:00"),
            utc("2026-11-26T00:00:00+03:00")
        ]
    );

    let plan = by_name("plan-next-year-timeslots");
    assert_eq!(plan.queue, "shifts");
    assert_eq!(plan.catch_up, CatchUp::Latest);
    assert!(plan.catch_up_window >= TimeDelta::weeks(2));
    assert_eq!(
        plan.on_first_start,
        FirstStart::CatchUp,
        "idempotent: caught up on a cut-over"
    );
    assert_eq!(
        by_name("process-reminders").on_first_start,
        FirstStart::Skip
    );
    assert_eq!(
        plan.upcoming(utc("2026-11-25T10:10:00+03:00"), 2),
        vec![
            utc("2026-12-01T03:00:00+03:00"),
            utc("2027-12-01T03:00:00+03:00")
        ]
    );
    assert!(matches!(plan.timing, Timing::Cron(_)));
}

#[test]
fn defaults_apply() {
    let text = r#"
[[schedule]]
name = "reminders"
task = "core.celery.tasks.notification_tasks.process_reminders"
every = "30m"
"#;
    let (schedules, warnings) = parse_schedules(
        text,
        Path::new("ok.toml"),
        Tz::Europe__Berlin,
        &known_tasks(),
    )
    .expect("valid");
    assert!(warnings.is_empty());
    let s = &schedules[0];
    assert_eq!(
        s.queue, "notifications",
        "queue defaults to the task's registered queue"
    );
    assert_eq!(
        s.timezone,
        Tz::Europe__Berlin,
        "timezone defaults to DEFAULT_TIMEZONE"
    );
    assert_eq!(s.timing, Timing::Every(TimeDelta::minutes(30)));
    assert_eq!(s.args, serde_json::json!([]));
    assert_eq!(s.kwargs, serde_json::json!({}));
    assert!(s.enabled);
    assert_eq!(s.catch_up, CatchUp::Latest);
    assert_eq!(s.catch_up_window, TimeDelta::days(1));
    assert_eq!(s.on_first_start, FirstStart::Skip);
    assert_eq!(s.expires, None);
    assert_eq!(s.line, 3);
}

#[test]
fn all_keys_are_read() {
    let text = r#"
[[schedule]]
name = "weekly-report"
task = "python.only.task"
queue = "reports"
cron = "15 9 * * 1"
timezone = "America/New_York"
args = [1, "two"]
kwargs = { days = 7, dry_run = false }
enabled = false
catch_up = "skip"
catch_up_window = "2h"
on_first_start = "catch_up"
expires = "10m"
"#;
    let (schedules, warnings) = parse_schedules(
        text,
        Path::new("ok.toml"),
        Tz::Europe__Moscow,
        &known_tasks(),
    )
    .expect("valid");
    let s = &schedules[0];
    assert_eq!(s.queue, "reports");
    assert_eq!(s.timezone, Tz::America__New_York);
    assert_eq!(s.args, serde_json::json!([1, "two"]));
    assert_eq!(s.kwargs, serde_json::json!({"days": 7, "dry_run": false}));
    assert!(!s.enabled);
    assert_eq!(s.catch_up, CatchUp::Skip);
    assert_eq!(s.catch_up_window, TimeDelta::hours(2));
    assert_eq!(s.on_first_start, FirstStart::CatchUp);
    assert_eq!(s.expires, Some(TimeDelta::minutes(10)));
    // An unknown task is a warning naming the file and the line, not an error.
    assert_eq!(warnings.len(), 1);
    let warning = warnings[0].to_string();
    assert!(warning.starts_with("ok.toml: line 4: "), "{warning}");
    assert!(warning.contains("python.only.task"), "{warning}");
}

#[test]
fn invalid_cron_is_refused_with_its_line() {
    let text = r#"
[[schedule]]
name = "a"
task = "core.celery.tasks.shift_tasks.auto_close_shifts"
cron = "0,30 * * *"

[[schedule]]
name = "b"
task = "core.celery.tasks.shift_tasks.auto_close_shifts"
cron = "61 * * * *"
"#;
    let (message, problems) = refused(text);
    assert_eq!(problems.len(), 2, "{message}");
    assert_eq!(problems[0].0, 5);
    assert!(problems[0].1.contains("expected 5 fields"), "{message}");
    assert_eq!(problems[1].0, 10);
    assert!(
        problems[1]
            .1
            .contains("invalid cron expression `61 * * * *`"),
        "{message}"
    );
    assert!(message.starts_with("broken.toml: line 5: "), "{message}");
    assert!(message.contains("\nbroken.toml: line 10: "), "{message}");
}

#[test]
fn unknown_timezone_is_refused_with_its_line() {
    let text = r#"[[schedule]]
name = "a"
task = "core.celery.tasks.shift_tasks.auto_close_shifts"
cron = "0 3 * * *"
timezone = "Europe/Moscw"
"#;
    let (message, problems) = refused(text);
    assert_eq!(
        problems,
        vec![(
            5,
            "unknown timezone `Europe/Moscw` (use an IANA name such as \"Europe/Moscow\")"
                .to_owned()
        )],
        "{message}"
    );
}

#[test]
fn duplicate_names_are_refused_at_the_second_one() {
    let text = r#"[[schedule]]
name = "cleanup"
task = "core.celery.tasks.analytics_tasks.cleanup_cache"
cron = "0 */6 * * *"

[[schedule]]
name = "cleanup"
task = "core.celery.tasks.analytics_tasks.cleanup_cache"
every = "6h"
"#;
    let (message, problems) = refused(text);
    assert_eq!(
        problems,
        vec![(
            7,
            "duplicate schedule name `cleanup` (first defined at line 2)".to_owned()
        )],
        "{message}"
    );
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let text = r#"[[schedule]]
name = "a"
task = "core.celery.tasks.shift_tasks.auto_close_shifts"
cronn = "0 3 * * *"
"#;
    let (message, problems) = refused(text);
    assert_eq!(problems.len(), 1, "{message}");
    assert_eq!(problems[0].0, 4, "{message}");
    assert!(problems[0].1.contains("unknown field `cronn`"), "{message}");

    // A typo in the table name is caught too.
    let (message, problems) = refused("[[schedules]]\nname = \"a\"\n");
    assert_eq!(problems[0].0, 1, "{message}");
    assert!(
        problems[0].1.contains("unknown field `schedules`"),
        "{message}"
    );
}

#[test]
fn both_or_neither_of_cron_and_every_is_refused() {
    let both = r#"[[schedule]]
name = "a"
task = "core.celery.tasks.shift_tasks.auto_close_shifts"
cron = "0 3 * * *"
every = "1h"
"#;
    let (message, problems) = refused(both);
    assert_eq!(
        problems,
        vec![(
            5,
            "schedule `a` has both `cron` and `every`; keep one".to_owned()
        )],
        "{message}"
    );

    let neither = r#"
[[schedule]]
name = "a"
task = "core.celery.tasks.shift_tasks.auto_close_shifts"
"#;
    let (message, problems) = refused(neither);
    assert_eq!(problems.len(), 1, "{message}");
    assert!(
        problems[0].1.contains("needs `cron` or `every`"),
        "{message}"
    );
    assert!(problems[0].0 == 2 || problems[0].0 == 3, "{message}");
}

#[test]
fn unknown_task_without_queue_is_refused_naming_the_task() {
    let text = r#"[[schedule]]
name = "a"
task = "python.only.task"
cron = "0 3 * * *"
"#;
    let (message, problems) = refused(text);
    assert_eq!(problems[0].0, 3, "{message}");
    assert!(problems[0].1.contains("`python.only.task`"), "{message}");
    assert!(problems[0].1.contains("set `queue`"), "{message}");
}

#[test]
fn bad_values_are_refused_with_their_line() {
    let cases: &[(&str, usize, &str)] = &[
        ("every = \"30\"", 4, "`every`: invalid duration `30`"),
        (
            "cron = \"0 3 * * *\"\ncatch_up = \"always\"",
            5,
            "unknown variant `always`",
        ),
        (
            "cron = \"0 3 * * *\"\non_first_start = \"catchup\"",
            5,
            "unknown variant `catchup`",
        ),
        (
            "cron = \"0 3 * * *\"\ncatch_up_window = \"soon\"",
            5,
            "`catch_up_window`: invalid duration `soon`",
        ),
        (
            "cron = \"0 3 * * *\"\nexpires = \"0s\"",
            5,
            "`expires`: invalid duration `0s`",
        ),
        ("cron = \"0 3 * * *\"\nargs = { a = 1 }", 5, "invalid type"),
        ("cron = \"0 3 * * *\"\nkwargs = [1]", 5, "invalid type"),
        ("cron = \"0 0 30 2 *\"", 4, "never fires"),
        ("cron = \"0 3 * * 8\"", 4, "day-of-week"),
        ("cron = \"0 3 * * *\"\nenabled = \"yes\"", 5, "invalid type"),
    ];
    for (extra, line, expected) in cases {
        let text = format!(
            "[[schedule]]\nname = \"a\"\ntask = \"core.celery.tasks.shift_tasks.auto_close_shifts\"\n{extra}\n"
        );
        let (message, problems) = refused(&text);
        assert_eq!(problems.len(), 1, "{extra}: {message}");
        assert_eq!(problems[0].0, *line, "{extra}: {message}");
        assert!(problems[0].1.contains(expected), "{extra}: {message}");
    }
}

#[test]
fn toml_syntax_errors_carry_their_line() {
    let text = "[[schedule]]\nname = \"a\"\ntask = \"x\"\ncron = \"0 3 * * *\n";
    let (message, problems) = refused(text);
    assert_eq!(problems[0].0, 4, "{message}");
    assert!(message.starts_with("broken.toml: line 4: "), "{message}");
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let err = check_file(
        Path::new("/nonexistent/schedules.toml"),
        Tz::Europe__Moscow,
        &known_tasks(),
    )
    .expect_err("missing file");
    assert!(matches!(err, ScheduleFileError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/schedules.toml"));
}
