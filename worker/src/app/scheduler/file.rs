//! `schedules.toml`: reading and validating the file operators edit.
//!
//! Everything wrong with a file is reported with the file name and a line number, so an operator
//! (or CI running `worker check-schedules`) can fix it without reading code. TOML syntax and type
//! errors come from the `toml` crate's spans; the checks it cannot do (cron syntax, timezones,
//! duplicate names, `cron` vs `every`) use `Spanned` fields to point at the offending line, and
//! all of them are reported at once. A task this worker does not register is only a warning: a
//! Python Celery worker may serve it.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use chrono::Utc;
use chrono_tz::Tz;
use serde::Deserialize;
use toml::Spanned;

use super::cron_expr::CronExpr;
use super::duration::parse_duration;
use super::schedule::{CatchUp, FirstStart, Schedule, Timing};

/// A schedules file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleFileError {
    #[error("{}: cannot read the schedules file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl ScheduleFileError {
    /// The problems found, empty when the file could not be read at all.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ScheduleFileError::Read { .. } => &[],
            ScheduleFileError::Invalid { problems, .. } => problems,
        }
    }
}

/// One thing wrong with a schedules file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    pub message: String,
}

/// Something suspicious that does not stop the file from loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: line {}: {}",
            self.path.display(),
            self.line,
            self.message
        )
    }
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: line {}: {}", path.display(), p.line, p.message))
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    schedule: Vec<Spanned<RawSchedule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    name: Spanned<String>,
    task: Spanned<String>,
    cron: Option<Spanned<String>>,
    every: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    queue: Option<Spanned<String>>,
    args: Option<Vec<serde_json::Value>>,
    kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    enabled: Option<bool>,
    catch_up: Option<CatchUp>,
    catch_up_window: Option<Spanned<String>>,
    on_first_start: Option<FirstStart>,
    expires: Option<Spanned<String>>,
}

/// Reads and validates a schedules file. `default_timezone` applies to entries without
/// `timezone`; `known_tasks` maps the Celery task names this worker registers to their queue.
pub fn check_file(
    path: &Path,
    default_timezone: Tz,
    known_tasks: &HashMap<String, String>,
) -> Result<(Vec<Schedule>, Vec<Warning>), ScheduleFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScheduleFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_schedules(&text, path, default_timezone, known_tasks)
}

/// Validates schedules file contents; `path` is only used in messages.
pub fn parse_schedules(
    text: &str,
    path: &Path,
    default_timezone: Tz,
    known_tasks: &HashMap<String, String>,
) -> Result<(Vec<Schedule>, Vec<Warning>), ScheduleFileError> {
    let lines = LineIndex::new(text);
    let invalid = |problems: Vec<Problem>| ScheduleFileError::Invalid {
        path: path.to_owned(),
        problems,
    };
    let raw: RawFile = toml::from_str(text).map_err(|err| {
        let (line, column) = err
            .span()
            .map(|span| lines.locate(span.start))
            .unwrap_or((1, 1));
        // The crate's Display repeats the source excerpt; the bare message reads better after
        // "file: line N:".
        invalid(vec![Problem {
            line,
            column,
            message: err.message().trim().to_owned(),
        }])
    })?;

    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut schedules = Vec::new();
    let mut first_line_of: HashMap<String, usize> = HashMap::new();
    let mut problem = |span: Range<usize>, message: String| {
        let (line, column) = lines.locate(span.start);
        problems.push(Problem {
            line,
            column,
            message,
        });
    };

    for entry in raw.schedule {
        let entry_span = entry.span();
        let raw = entry.into_inner();
        let name = raw.name.get_ref().trim().to_owned();
        let line = lines.locate(raw.name.span().start).0;

        let mut entry_ok = true;
        let mut fail = |span: Range<usize>, message: String| {
            entry_ok = false;
            problem(span, message);
        };

        if name.is_empty()
            || !name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
        {
            fail(
                raw.name.span(),
                format!(
                    "schedule name `{name}` must be non-empty letters, digits, '-', '_' or '.'"
                ),
            );
        }
        match first_line_of.get(&name) {
            Some(first) => fail(
                raw.name.span(),
                format!("duplicate schedule name `{name}` (first defined at line {first})"),
            ),
            None => {
                first_line_of.insert(name.clone(), line);
            }
        }

        let task = raw.task.get_ref().trim().to_owned();
        if task.is_empty() {
            fail(raw.task.span(), "`task` must not be empty".to_owned());
        }

        let timing = match (&raw.cron, &raw.every) {
            (Some(_), Some(every)) => {
                fail(
                    every.span(),
                    format!("schedule `{name}` has both `cron` and `every`; keep one"),
                );
                None
            }
            (None, None) => {
                fail(
                    entry_span.clone(),
                    format!("schedule `{name}` needs `cron` or `every`"),
                );
                None
            }
            (Some(cron), None) => match CronExpr::parse(cron.get_ref()) {
                Ok(expr) => Some(Timing::Cron(expr)),
                Err(err) => {
                    fail(cron.span(), err.to_string());
                    None
                }
            },
            (None, Some(every)) => match parse_duration(every.get_ref()) {
                Ok(interval) => Some(Timing::Every(interval)),
                Err(err) => {
                    fail(every.span(), format!("`every`: {err}"));
                    None
                }
            },
        };

        let timezone = match &raw.timezone {
            None => Some(default_timezone),
            Some(tz) => match tz.get_ref().trim().parse::<Tz>() {
                Ok(tz) => Some(tz),
                Err(_) => {
                    fail(
                        tz.span(),
                        format!(
                            "unknown timezone `{}` (use an IANA name such as \"Europe/Moscow\")",
                            tz.get_ref()
                        ),
                    );
                    None
                }
            },
        };

        let registered_queue = known_tasks.get(&task);
        if registered_queue.is_none() && !task.is_empty() {
            warnings.push(Warning {
                path: path.to_owned(),
                line: lines.locate(raw.task.span().start).0,
                message: format!(
                    "task `{task}` is not registered by this worker (fine if a Python Celery worker serves it)"
                ),
            });
        }
        let queue = match (&raw.queue, registered_queue) {
            (Some(queue), _) if queue.get_ref().trim().is_empty() => {
                fail(queue.span(), "`queue` must not be empty".to_owned());
                None
            }
            (Some(queue), _) => Some(queue.get_ref().trim().to_owned()),
            (None, Some(queue)) => Some(queue.clone()),
            (None, None) => {
                fail(
                    raw.task.span(),
                    format!(
                        "schedule `{name}`: task `{task}` is not registered by this worker, so it has no default queue; set `queue`"
                    ),
                );
                None
            }
        };

        let mut duration_field = |field: &Option<Spanned<String>>, key: &str| match field {
            None => Ok(None),
            Some(value) => parse_duration(value.get_ref())
                .map(Some)
                .map_err(|err| fail(value.span(), format!("`{key}`: {err}"))),
        };
        let catch_up_window = duration_field(&raw.catch_up_window, "catch_up_window");
        let expires = duration_field(&raw.expires, "expires");

        // Validate that the expression can fire at all (e.g. `0 0 30 2 *` never does).
        if let (Some(timing), Some(tz)) = (&timing, timezone) {
            let probe = Schedule {
                name: name.clone(),
                task: task.clone(),
                queue: String::new(),
                timing: timing.clone(),
                timezone: tz,
                args: serde_json::Value::Null,
                kwargs: serde_json::Value::Null,
                enabled: true,
                catch_up: CatchUp::Latest,
                catch_up_window: chrono::TimeDelta::zero(),
                on_first_start: FirstStart::Skip,
                expires: None,
                line,
            };
            if probe.next_after(Utc::now()).is_none()
                && let Some(cron) = &raw.cron
            {
                fail(
                    cron.span(),
                    format!("cron expression `{}` never fires", cron.get_ref().trim()),
                );
            }
        }

        if let (true, Some(timing), Some(timezone), Some(queue), Ok(catch_up_window), Ok(expires)) =
            (entry_ok, timing, timezone, queue, catch_up_window, expires)
        {
            schedules.push(Schedule {
                name,
                task,
                queue,
                timing,
                timezone,
                args: serde_json::Value::Array(raw.args.unwrap_or_default()),
                kwargs: serde_json::Value::Object(raw.kwargs.unwrap_or_default()),
                enabled: raw.enabled.unwrap_or(true),
                catch_up: raw.catch_up.unwrap_or_default(),
                catch_up_window: catch_up_window.unwrap_or(chrono::TimeDelta::days(1)),
                on_first_start: raw.on_first_start.unwrap_or_default(),
                expires,
                line,
            });
        }
    }

    if problems.is_empty() {
        Ok((schedules, warnings))
    } else {
        problems.sort_by_key(|p| (p.line, p.column));
        Err(invalid(problems))
    }
}

/// Byte offset -> (line, column), both 1-based.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(at, _)| at + 1));
        Self { starts }
    }

    fn locate(&self, offset: usize) -> (usize, usize) {
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self
            .starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        (line.max(1), offset - start + 1)
    }
}
