//! Durations as operators write them in `schedules.toml`: `"30m"`, `"6h"`, `"1d"`, `"1h30m"`.
//!
//! One tiny grammar for every duration field (`every`, `catch_up_window`, `expires`) so the
//! file reads the same everywhere. Whole seconds only: ticks are whole seconds, and so are the
//! tick times the claims are keyed by.

use chrono::TimeDelta;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration (write e.g. \"30m\", \"6h\", \"1d\")")]
    Empty,
    #[error(
        "invalid duration `{0}`: expected numbers with units s, m, h, d or w, e.g. \"30m\", \"6h\", \"1h30m\""
    )]
    Syntax(String),
    #[error("invalid duration `{0}`: must be longer than zero")]
    Zero(String),
    #[error("invalid duration `{0}`: too long")]
    TooLong(String),
}

/// Parses `"30m"`, `"6h"`, `"1d"`, `"2w"`, `"1h30m"`, `"90s"`.
pub fn parse_duration(text: &str) -> Result<TimeDelta, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError::Empty);
    }
    let syntax = || DurationError::Syntax(trimmed.to_owned());
    let mut total: i64 = 0;
    let mut digits = String::new();
    for ch in trimmed.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit: i64 = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(syntax()),
        };
        if digits.is_empty() {
            return Err(syntax());
        }
        let count: i64 = digits
            .parse()
            .map_err(|_| DurationError::TooLong(trimmed.to_owned()))?;
        total = count
            .checked_mul(unit)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| DurationError::TooLong(trimmed.to_owned()))?;
        digits.clear();
    }
    // A bare number has no unit: refusing it beats guessing seconds vs minutes.
    if !digits.is_empty() {
        return Err(syntax());
    }
    if total == 0 {
        return Err(DurationError::Zero(trimmed.to_owned()));
    }
    // Keep far away from chrono's limits so tick arithmetic never overflows.
    if total > 100 * 365 * 86_400 {
        return Err(DurationError::TooLong(trimmed.to_owned()));
    }
    Ok(TimeDelta::seconds(total))
}

/// Formats a duration back into the file's grammar (`1h30m`), for listings and logs.
pub fn format_duration(duration: TimeDelta) -> String {
    let mut rest = duration.num_seconds();
    if rest <= 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, seconds) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        let count = rest / seconds;
        if count > 0 {
            out.push_str(&format!("{count}{unit}"));
            rest -= count * seconds;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_combined_units() {
        assert_eq!(parse_duration("30m"), Ok(TimeDelta::minutes(30)));
        assert_eq!(parse_duration("6h"), Ok(TimeDelta::hours(6)));
        assert_eq!(parse_duration("1s"), Ok(TimeDelta::seconds(1)));
        assert_eq!(parse_duration("30d"), Ok(TimeDelta::days(30)));
        assert_eq!(parse_duration("2w"), Ok(TimeDelta::days(14)));
        assert_eq!(parse_duration("1h30m"), Ok(TimeDelta::minutes(90)));
    }

    #[test]
    fn refuses_bad_durations() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("30"),
            Err(DurationError::Syntax(_))
        ));
        assert!(matches!(parse_duration("m"), Err(DurationError::Syntax(_))));
        assert!(matches!(
            parse_duration("5 min"),
            Err(DurationError::Syntax(_))
        ));
        assert!(matches!(parse_duration("0s"), Err(DurationError::Zero(_))));
        assert!(matches!(
            parse_duration("99999999999999999999d"),
            Err(DurationError::TooLong(_))
        ));
    }

    #[test]
    fn formats_round_trip() {
        for text in ["30m", "6h", "1s", "30d", "1h30m"] {
            let parsed = parse_duration(text).expect("valid");
            assert_eq!(parse_duration(&format_duration(parsed)), Ok(parsed));
        }
        assert_eq!(format_duration(TimeDelta::minutes(90)), "1h30m");
    }
}
