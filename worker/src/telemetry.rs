//! Logging setup, in one place. `RUST_LOG` sets levels (default `info`); `LOG_FORMAT` chooses
//! `json` or `text`, and defaults to JSON when stderr is not a terminal (containers, CI) so
//! that log shippers get structured lines with the task span's fields.
//!
//! lapin's own lines are off unless `RUST_LOG` names `lapin` (`RUST_LOG=info,lapin=warn`): it
//! logs two or three ERROR lines of its own for every failed connection attempt, each saying
//! again what our one warning per attempt says, with the error lapin returns to us.
//!
//! Lines are written by a dedicated thread through a buffer that is flushed whenever the queue
//! of lines runs dry: the threads that run tasks never block on `write(2)`, and a burst of task
//! lines costs one system call, not one per line. The queue is not lossy (a full queue makes the
//! logging thread wait, it never drops a line); [`flush`] writes what is left before exit.
//!
//! Every line goes through [`redact_text`] on its way out, whoever wrote it: our own lines
//! already print URLs redacted, but an error chain from lapin, sqlx or redis may quote a URL
//! with its password, and a library's own lines are not ours to word.

use std::io::{self, BufWriter, IsTerminal, Write};
use std::sync::Mutex;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::settings::redact_text;

/// Lines waiting for the writer thread before a logging thread has to wait.
const LINES_QUEUED: usize = 4096;

/// The log writer's guard: dropping it writes out the queued lines and stops the thread.
static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

pub(crate) fn init() {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let json = match std::env::var("LOG_FORMAT").ok().as_deref() {
        Some("json") => true,
        Some("text") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let (writer, guard) = NonBlockingBuilder::default()
        // The queue is allocated up front: the default 128,000 lines would cost 3 MB of RSS.
        .buffered_lines_limit(LINES_QUEUED)
        .lossy(false)
        .thread_name("log-writer")
        .finish(BufWriter::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(!json && std::io::stderr().is_terminal())
        .with_writer(Redacting(writer));
    let result = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    // Already initialised (tests call this more than once): keep the first.
    if result.is_ok() {
        *WRITER.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
    }
}

/// The filter `RUST_LOG` asks for (`info` when unset or invalid), with lapin off unless named.
fn filter(rust_log: Option<&str>) -> EnvFilter {
    let spec = rust_log.filter(|s| !s.trim().is_empty()).unwrap_or("info");
    let filter = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"));
    if spec.contains("lapin") {
        return filter;
    }
    match "lapin=off".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

/// Write out every queued line; call before the process exits. Lines logged afterwards are lost.
pub(crate) fn flush() {
    let guard = WRITER.lock().unwrap_or_else(|p| p.into_inner()).take();
    drop(guard);
}

/// The log writer with secrets masked (see the module notes).
struct Redacting(NonBlocking);

impl<'a> MakeWriter<'a> for Redacting {
    type Writer = RedactingLine;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingLine(self.0.clone())
    }
}

/// One event's line: the formatter hands it over whole, in one `write`.
struct RedactingLine(NonBlocking);

impl Write for RedactingLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(line) if line.contains("://") || line.contains("/bot") => {
                self.0.write_all(redact_text(line).as_bytes())?
            }
            _ => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapin_is_off_unless_named() {
        assert_eq!(filter(None).to_string(), "lapin=off,info");
        assert_eq!(filter(Some("debug")).to_string(), "lapin=off,debug");
        assert_eq!(
            filter(Some("info,lapin=warn")).to_string(),
            "lapin=warn,info"
        );
        assert_eq!(filter(Some("not==valid")).to_string(), "lapin=off,info");
    }
}
