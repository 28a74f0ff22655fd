//! Serving the router, with bounds no client can push past.
//!
//! - At most `max_connections` connections are served at once. The cap is taken before
//!   `accept`, so further connections wait in the kernel's listen backlog (and are refused
//!   when it is full) instead of costing a task, buffers and a file descriptor each.
//! - A request's headers must arrive within the timeout (hyper's `header_read_timeout`, which
//!   also bounds how long a kept-alive connection may sit idle): a client that connects and
//!   sends nothing, or half a request, is cut off and gives its slot back.
//! - Its answer must be ready within the timeout too: the router's timeout layer (see
//!   [`super::router`]) answers 503 instead.
//!
//! axum's own `serve` sets neither a connection limit nor a header timeout, hence this small
//! accept loop over hyper. At shutdown, connections finish their request in flight and close;
//! the loop waits for them at most one timeout.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::warn;

use crate::shutdown::{Phase, Shutdown};

/// What one client may hold of the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_connections: u32,
    pub timeout: Duration,
}

/// Accept and serve connections on `listener` until the background loops stop.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: Shutdown,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let (closing, closing_rx) = watch::channel(false);
    let stop = shutdown.reached(Phase::StopBackground);
    tokio::pin!(stop);
    loop {
        let slot = tokio::select! {
            _ = &mut stop => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        tokio::spawn(connection(
            stream,
            router.clone(),
            limits.timeout,
            slot,
            closing_rx.clone(),
        ));
    }
    drop(listener);
    closing.send_replace(true);
    // Every slot back means every connection closed.
    let _ = tokio::time::timeout(limits.timeout, slots.acquire_many(limits.max_connections)).await;
}

/// Serve one connection; its slot is given back when this returns.
async fn connection(
    stream: TcpStream,
    router: Router,
    timeout: Duration,
    _slot: OwnedSemaphorePermit,
    mut closing: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    tokio::pin!(conn);
    tokio::select! {
        // A client that went away, or was cut off by the header timeout: nothing to report.
        _ = conn.as_mut() => return,
        _ = closing.wait_for(|c| *c) => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}

/// `accept` failed: a connection reset before we took it costs nothing; running out of file
/// descriptors (or similar) is waited out rather than spun on.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    warn!(error = %e, "the HTTP server cannot accept a connection; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
