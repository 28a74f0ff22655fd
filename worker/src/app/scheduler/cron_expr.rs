//! Crontab expressions, read the way crontab(5) reads them, evaluated by the `cron` 0.17 crate.
//!
//! Operators write standard 5-field crontab (`min hour day-of-month month day-of-week`); a 6-field
//! form with a leading seconds field is accepted too (tests and sub-minute jobs). The `cron` crate
//! speaks a different dialect, so this module translates instead of passing text through:
//!
//! * it wants a seconds field first: a 5-field expression gets `0` prepended;
//! * its day-of-week numbers run 1-7 from Sunday, crontab's run 0-7 with 0 and 7 both Sunday and
//!   1 = Monday: numeric day-of-week fields are rewritten to day names, which mean the same in both;
//! * when both day-of-month and day-of-week are restricted, crontab fires when *either* matches
//!   (`0 0 1 * MON` = the 1st and every Monday) while the crate requires both: such an expression
//!   becomes two crate schedules whose fire times are merged.
//!
//! The `@yearly`, `@monthly`, `@weekly`, `@daily`/`@midnight` and `@hourly` shorthands are expanded
//! to their crontab meaning.

use std::str::FromStr;

/// Why a cron expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error(
        "invalid cron expression `{expr}`: expected 5 fields (minute hour day-of-month month day-of-week) or 6 (second first), found {found}"
    )]
    FieldCount { expr: String, found: usize },
    #[error("invalid cron expression `{expr}`: day-of-week {problem}")]
    DayOfWeek { expr: String, problem: String },
    #[error("invalid cron expression `{expr}`: {problem}")]
    Syntax { expr: String, problem: String },
}

/// A parsed crontab expression: the text the operator wrote plus the crate schedules that
/// implement it (two when day-of-month and day-of-week are both restricted).
#[derive(Debug, Clone)]
pub struct CronExpr {
    source: String,
    alternatives: Vec<cron::Schedule>,
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl CronExpr {
    /// Parses a 5-field (or seconds-first 6-field) crontab expression.
    pub fn parse(expr: &str) -> Result<Self, CronError> {
        let source = expr.trim().to_owned();
        let expanded = match source.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *".to_owned(),
            "@monthly" => "0 0 1 * *".to_owned(),
            "@weekly" => "0 0 * * 0".to_owned(),
            "@daily" | "@midnight" => "0 0 * * *".to_owned(),
            "@hourly" => "0 * * * *".to_owned(),
            _ => source.clone(),
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (second, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            found => {
                return Err(CronError::FieldCount {
                    expr: source,
                    found,
                });
            }
        };
        let (minute, hour, day_of_month, month, day_of_week) =
            (rest[0], rest[1], rest[2], rest[3], rest[4]);
        let day_of_week =
            translate_day_of_week(day_of_week).map_err(|problem| CronError::DayOfWeek {
                expr: source.clone(),
                problem,
            })?;

        // crontab(5): "If both fields are restricted (i.e., do not begin with *), the command
        // will be run when either field matches the current time."
        let restricted = |field: &str| !(field.starts_with('*') || field == "?");
        let texts = if restricted(day_of_month) && restricted(&day_of_week) {
            vec![
                format!("{second} {minute} {hour} {day_of_month} {month} *"),
                format!("{second} {minute} {hour} * {month} {day_of_week}"),
            ]
        } else {
            vec![format!(
                "{second} {minute} {hour} {day_of_month} {month} {day_of_week}"
            )]
        };
        let alternatives = texts
            .iter()
            .map(|text| {
                cron::Schedule::from_str(text).map_err(|err| CronError::Syntax {
                    expr: source.clone(),
                    problem: crate_problem(&err.to_string()),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            source,
            alternatives,
        })
    }

    /// The expression as written in the file.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The crate schedules behind this expression; their fire times are merged by the caller.
    pub(crate) fn alternatives(&self) -> &[cron::Schedule] {
        &self.alternatives
    }
}

/// The crate's parse errors echo its own (translated) expression with a caret under it; only
/// the last line, the actual complaint, makes sense next to what the operator wrote.
fn crate_problem(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .unwrap_or("unparsable")
        // The crate says "Minutes must be less than 59" for 60 while 59 itself is fine.
        .replace(" must be less than ", " must be at most ")
}

const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Rewrites a numeric crontab day-of-week field (0-7, 0 and 7 = Sunday) into day names.
/// Fields that already use names are left alone: names mean the same to crontab and the crate.
fn translate_day_of_week(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" || field.chars().any(|ch| ch.is_ascii_alphabetic()) {
        return Ok(field.to_owned());
    }
    let mut days = [false; 7];
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| format!("`{item}` has an invalid step"))?;
                if step == 0 {
                    return Err(format!("`{item}` has a zero step"));
                }
                (range, step)
            }
            None => (item, 1),
        };
        let number = |text: &str| -> Result<u32, String> {
            let value: u32 = text
                .parse()
                .map_err(|_| format!("`{item}` is not a day number (0-7) or name"))?;
            if value > 7 {
                return Err(format!("`{value}` is out of range 0-7"));
            }
            Ok(value)
        };
        let (first, last) = if range == "*" {
            (0, 7)
        } else if let Some((low, high)) = range.split_once('-') {
            let (low, high) = (number(low)?, number(high)?);
            if low > high {
                return Err(format!("range `{range}` runs backwards"));
            }
            (low, high)
        } else if item.contains('/') {
            // `3/2` means "from 3 to the end, every 2nd", as in cronie.
            (number(range)?, 7)
        } else {
            let day = number(range)?;
            (day, day)
        };
        for day in (first..=last).step_by(step as usize) {
            days[(day % 7) as usize] = true;
        }
    }
    Ok(DAY_NAMES
        .iter()
        .zip(days)
        .filter(|(_, wanted)| *wanted)
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Utc, Weekday};

    fn next_days(expr: &str, count: usize) -> Vec<Weekday> {
        let parsed = CronExpr::parse(expr).expect("valid");
        let start = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("valid");
        let mut out = Vec::new();
        for alternative in parsed.alternatives() {
            out.extend(alternative.after(&start).take(count));
        }
        out.sort();
        out.truncate(count);
        out.into_iter().map(|t| t.weekday()).collect()
    }

    #[test]
    fn five_fields_get_a_zero_seconds_field() {
        let parsed = CronExpr::parse("0,30 * * * *").expect("valid");
        assert_eq!(parsed.alternatives()[0].source(), "0 0,30 * * * *");
        assert_eq!(parsed.source(), "0,30 * * * *");
    }

    #[test]
    fn six_fields_keep_their_seconds() {
        let parsed = CronExpr::parse("*/5 * * * * *").expect("valid");
        assert_eq!(parsed.alternatives()[0].source(), "*/5 * * * * *");
    }

    #[test]
    fn day_of_week_numbers_follow_crontab() {
        // 2026-01-01 is a Thursday; crontab's 1 is Monday (the crate's 1 would be Sunday).
        assert_eq!(next_days("0 3 * * 1", 2), vec![Weekday::Mon, Weekday::Mon]);
        assert_eq!(next_days("0 3 * * 0", 1), vec![Weekday::Sun]);
        assert_eq!(next_days("0 3 * * 7", 1), vec![Weekday::Sun]);
        assert_eq!(
            next_days("0 3 * * 5-7", 3),
            vec![Weekday::Fri, Weekday::Sat, Weekday::Sun]
        );
        assert_eq!(
            next_days("0 3 * * 1-5/2", 3),
            vec![Weekday::Fri, Weekday::Mon, Weekday::Wed]
        );
        assert_eq!(next_days("0 3 * * MON", 1), vec![Weekday::Mon]);
    }

    #[test]
    fn restricted_day_of_month_and_week_means_either() {
        // The 1st of the month OR any Monday: from Thu Jan 1 2026 -> Jan 1, Mon Jan 5, Mon Jan 12.
        let parsed = CronExpr::parse("0 0 1 * 1").expect("valid");
        assert_eq!(parsed.alternatives().len(), 2);
        assert_eq!(
            CronExpr::parse("0 0 1 * *")
                .expect("valid")
                .alternatives()
                .len(),
            1
        );
    }

    #[test]
    fn shorthands_expand() {
        let parsed = CronExpr::parse("@daily").expect("valid");
        assert_eq!(parsed.alternatives()[0].source(), "0 0 0 * * *");
    }

    #[test]
    fn refuses_bad_expressions() {
        assert!(matches!(
            CronExpr::parse("* * *"),
            Err(CronError::FieldCount { found: 3, .. })
        ));
        assert!(matches!(
            CronExpr::parse("0 0 1 1 * 2030 x"),
            Err(CronError::FieldCount { found: 7, .. })
        ));
        assert!(matches!(
            CronExpr::parse("61 * * * *"),
            Err(CronError::Syntax { .. })
        ));
        assert!(matches!(
            CronExpr::parse("0 3 * * 8"),
            Err(CronError::DayOfWeek { .. })
        ));
        assert!(matches!(
            CronExpr::parse("0 3 * * 5-1"),
            Err(CronError::DayOfWeek { .. })
        ));
    }
}
