//! `worker healthcheck`: exit 0 when the local worker's `/healthz` answers 200. For Docker's
//! HEALTHCHECK, since slim images have no curl.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Outcome;

pub(crate) async fn check(addr: SocketAddr) -> anyhow::Result<Outcome> {
    // The server binds 0.0.0.0; probe it on loopback.
    let target = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(target).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(3), probe)
        .await
        .context("timed out")?
        .with_context(|| format!("cannot reach {target}"))?;
    let status = String::from_utf8_lossy(&response);
    if status.starts_with("HTTP/1.0 200") || status.starts_with("HTTP/1.1 200") {
        println!("ok");
        Ok(Outcome::Success)
    } else {
        bail!("unhealthy: {}", status.lines().next().unwrap_or(""))
    }
}
