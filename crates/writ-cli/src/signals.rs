//! Waiting for SIGTERM or SIGINT.

use tokio::signal::unix::{signal, SignalKind};

use crate::CliError;

pub(crate) async fn wait_for_stop() -> Result<(), CliError> {
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| CliError::Failed(format!("signal handler: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| CliError::Failed(format!("signal handler: {e}")))?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
