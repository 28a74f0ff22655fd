//! The shutdown signal. The first SIGTERM or SIGINT starts a graceful shutdown; a second one
//! exits at once — still without losing work, since every unfinished message is unacked and
//! RabbitMQ hands it to another replica.

use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

/// Resolves on the first SIGTERM/SIGINT and arms the second one to exit the process.
pub async fn first_signal() -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(
        signal = name,
        "shutting down: no new tasks, waiting for running ones"
    );
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        warn!("second signal: exiting now; unfinished tasks return to their queues");
        crate::telemetry::flush();
        std::process::exit(130);
    });
    Ok(())
}
