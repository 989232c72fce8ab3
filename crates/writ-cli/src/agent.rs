//! `writ agent run` and `writ agent healthcheck`.

use std::path::Path;
use std::time::Duration;

use writ_proto::v1 as pb;
use writ_proto::v1::agent_admin_client::AgentAdminClient;

use crate::CliError;

pub(crate) async fn run(config: &Path, join_token: Option<String>) -> Result<(), CliError> {
    let mut cfg =
        writ_agent::AgentConfig::load(config).map_err(|e| CliError::Failed(e.to_string()))?;
    if let Some(t) = join_token {
        cfg.set_join_token(t).map_err(CliError::Usage)?;
    }
    let agent = writ_agent::start(cfg, None)
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    crate::signals::wait_for_stop().await?;
    agent.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

pub(crate) async fn healthcheck(socket: &Path) -> Result<(), CliError> {
    let ch = tokio::time::timeout(
        Duration::from_secs(5),
        writ_server::client::unix_channel(socket),
    )
    .await
    .map_err(|_| CliError::Failed("agent did not answer within 5s".into()))?
    .map_err(|e| {
        CliError::Failed(format!(
            "cannot connect to agent admin socket `{}`: {e}",
            socket.display()
        ))
    })?;
    let h = AgentAdminClient::new(ch)
        .health(pb::AgentHealthRequest {})
        .await
        .map_err(|s| CliError::Failed(s.message().to_owned()))?
        .into_inner();
    if h.agent_id.is_empty() {
        return Err(CliError::Failed("agent has not attested yet".into()));
    }
    Ok(())
}
