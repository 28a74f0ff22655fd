//! Logging setup, in one place. `RUST_LOG` sets levels (default `info`); `LOG_FORMAT` chooses
//! `json` or `text`, and defaults to JSON when stderr is not a terminal (containers, CI) so
//! that log shippers get structured lines with the task span's fields.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match std::env::var("LOG_FORMAT").ok().as_deref() {
        Some("json") => true,
        Some("text") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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
    drop(result);
}
