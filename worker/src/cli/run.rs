//! `worker run`: the long-running service, built by [`crate::startup`] and run until
//! SIGTERM/SIGINT.

use clap::Args;

use super::Outcome;
use crate::settings::{
    ConnectionSettings, JobSettings, RunSettings, ScheduleSettings, ServiceSettings,
};
use crate::shutdown::Shutdown;
use crate::startup::{Consume, Settings, Stopped, Worker};

#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub settings: RunSettings,

    #[command(flatten)]
    pub service: ServiceSettings,

    #[command(flatten)]
    pub jobs: JobSettings,

    #[command(flatten)]
    pub schedules: ScheduleSettings,

    /// Do not run the scheduler in this process (another replica, or `worker scheduler`, does).
    #[arg(long, env = "WORKER_NO_SCHEDULER")]
    pub no_scheduler: bool,

    /// Before consuming, create the database if it does not exist and apply the migrations
    /// (`worker migrate` does the same as a separate step, as production deployments prefer).
    #[arg(long, env = "WORKER_MIGRATE")]
    pub migrate: bool,
}

impl RunArgs {
    pub(crate) fn startup_settings(&self, conn: &ConnectionSettings) -> Settings {
        Settings {
            connections: conn.clone(),
            service: self.service.clone(),
            schedules: (!self.no_scheduler).then(|| self.schedules.schedules_file.clone()),
            consume: Some(Consume {
                run: self.settings.clone(),
                jobs: self.jobs.clone(),
                migrate: self.migrate,
            }),
        }
    }
}

pub(crate) async fn run(conn: &ConnectionSettings, args: RunArgs) -> anyhow::Result<Outcome> {
    let worker = Worker::build(args.startup_settings(conn)).await?;
    let shutdown = Shutdown::new();
    shutdown.on_signals()?;
    Ok(match worker.run_until_stopped(shutdown).await? {
        Stopped::Clean => Outcome::Success,
        Stopped::Fatal(_) => Outcome::Failed,
    })
}
