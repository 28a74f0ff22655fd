//! The command line: `worker run`, `send`, `result`, `dead-letters`, `tasks`, `config`,
//! `healthcheck`, `scheduler`, `schedules`, `check-schedules`, `migrate`, `inspect`, `revoke`,
//! `queues`, `failures`.
//!
//! Exit codes are part of the interface for scripts: 0 success, 1 the task failed or was
//! revoked, 2 pending, unknown, timed out, or the command itself could not do its work.

mod config;
mod config_file;
mod dead_letters;
mod healthcheck;
mod inspect;
mod migrate;
mod output;
mod overview;
mod result;
mod revoke;
mod run;
mod schedules;
mod send;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::settings::{ConnectionSettings, redact_text};

#[derive(Debug, Parser)]
#[command(
    name = "worker",
    version,
    about = "Celery-compatible worker and scheduler for StaffProBot"
)]
pub struct Cli {
    /// A TOML file of settings by their environment names; the environment and flags win.
    #[arg(long, env = "WORKER_CONFIG_FILE", global = true)]
    pub(crate) config: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub(crate) connections: ConnectionSettings,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Consume the queues and run tasks until SIGTERM/SIGINT.
    Run(run::RunArgs),
    /// Publish a task exactly as a Python producer would; print its id (or, with --wait, its result).
    Send(send::SendArgs),
    /// Print a task's state and result.
    Result(result::ResultArgs),
    /// Inspect or replay messages in the `<queue>.dead` dead-letter queues.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLettersCommand),
    /// List the tasks this worker runs, with their default queues.
    Tasks,
    /// Run only the scheduler (publishes ticks; consumes nothing).
    Scheduler(schedules::SchedulerArgs),
    /// List the schedules: next fire times (local and UTC) and the last run with its state.
    Schedules(schedules::ListArgs),
    /// Validate a schedules file and print its next fire times; exits 1 when invalid.
    CheckSchedules(schedules::CheckArgs),
    /// Apply the database migrations to DATABASE_URL (`worker run` never migrates by itself).
    Migrate,
    /// Print the effective configuration of `worker run`, secrets redacted.
    Config {
        #[command(flatten)]
        run: run::RunArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the workers (ours or Python Celery's) over remote control; exits 2 when none replied.
    Inspect(inspect::InspectArgs),
    /// Queue depths and consumers: the task queues, their `.dead`, undelivered results, delays.
    Queues(overview::QueuesArgs),
    /// Recent task failures and retries (kept in Redis for 7 days, the newest 1000).
    Failures(overview::FailuresArgs),
    /// Revoke tasks on every worker (with --terminate, cancel them where they run).
    Revoke(revoke::RevokeArgs),
    /// Exit 0 when the local worker's /healthz answers (for Docker's HEALTHCHECK).
    Healthcheck {
        #[arg(long, env = "WORKER_HTTP_ADDR", default_value = "0.0.0.0:8080")]
        http_addr: std::net::SocketAddr,
    },
}

/// Outcome of a command, mapped to the documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Failed,
    Unknown,
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Success => ExitCode::SUCCESS,
            Outcome::Failed => ExitCode::from(1),
            Outcome::Unknown => ExitCode::from(2),
        }
    }
}

/// The stack of every thread the process starts: the runtime's workers and blocking threads,
/// and — through `RUST_MIN_STACK` — threads that libraries start themselves, lapin's I/O thread
/// above all. lapin parses and writes AMQP header tables recursively on that thread, and the
/// executor clones and drops them recursively on the runtime's; a header may nest as deep as a
/// 128 KiB frame holds (about 26,000 levels). Only the pages a thread touches become resident,
/// so a generous reservation costs address space, not memory.
const THREAD_STACK: usize = 256 * 1024 * 1024;

pub fn main() -> ExitCode {
    if std::env::var_os("RUST_MIN_STACK").is_none() {
        // SAFETY: the first thing the process does: no other thread exists yet, and std reads
        // the variable when it starts the first thread.
        unsafe { std::env::set_var("RUST_MIN_STACK", THREAD_STACK.to_string()) };
    }
    // The file must be applied before clap reads the environment.
    let args: Vec<String> = std::env::args().collect();
    if let Some(path) = config_file::requested(&args) {
        match config_file::read(&path) {
            Ok(vars) => {
                for (k, v) in vars {
                    // SAFETY: still single-threaded: no runtime or other thread exists yet.
                    unsafe { std::env::set_var(k, v) };
                }
            }
            Err(e) => {
                eprintln!("error: {}", redact_text(&format!("{e:#}")));
                return ExitCode::from(2);
            }
        }
    }
    let cli = Cli::parse();
    crate::adapters::broker::topology::set_queue_type(cli.connections.queue_type);
    if let Err(e) = crate::adapters::broker::connection::configure_tls(&cli.connections) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    crate::telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(THREAD_STACK)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(&cli.connections, args).await,
            Command::Send(args) => send::send(&cli.connections, args).await,
            Command::Result(args) => result::result(&cli.connections, args).await,
            Command::DeadLetters(cmd) => dead_letters::dead_letters(&cli.connections, cmd).await,
            Command::Config { run, json } => Ok(config::print(&cli.connections, &run, json)),
            Command::Healthcheck { http_addr } => healthcheck::check(http_addr).await,
            Command::Scheduler(args) => schedules::run_alone(&cli.connections, args).await,
            Command::Schedules(args) => schedules::list(&cli.connections, args).await,
            Command::CheckSchedules(args) => schedules::check(&cli.connections, args),
            Command::Migrate => migrate::migrate(&cli.connections).await,
            Command::Inspect(args) => inspect::inspect(&cli.connections, args).await,
            Command::Queues(args) => overview::queues(&cli.connections, args).await,
            Command::Failures(args) => overview::failures(&cli.connections, args).await,
            Command::Revoke(args) => revoke::revoke(&cli.connections, args).await,
            Command::Tasks => {
                for job in crate::app::registry::catalogue().iter() {
                    println!(
                        "{:<64} {:<14} {}",
                        job.name(),
                        job.queue(),
                        job.description()
                    );
                }
                Ok(Outcome::Success)
            }
        }
    });
    crate::telemetry::flush();
    match result {
        Ok(outcome) => outcome.into(),
        Err(e) => {
            // Error chains from lapin, sqlx or redis may quote a URL with its password.
            eprintln!("error: {}", redact_text(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}
