//! `writ server run`: load the config, start the server, stop cleanly on SIGTERM/SIGINT.

use std::path::Path;
use std::time::Duration;

use crate::CliError;

pub(crate) async fn run(config: &Path) -> Result<(), CliError> {
    let cfg =
        writ_server::ServerConfig::load(config).map_err(|e| CliError::Failed(e.to_string()))?;
    let server = writ_server::start(cfg)
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    crate::signals::wait_for_stop().await?;
    server
        .shutdown(Duration::from_secs(10))
        .await
        .map_err(|e| CliError::Failed(e.to_string()))
}
