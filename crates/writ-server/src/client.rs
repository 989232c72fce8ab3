//! The admin API client over its Unix socket (used by the CLI).

use std::path::Path;

use tonic::transport::Channel;
use writ_proto::v1::admin_client::AdminClient;

pub use writ_tls::socket::channel as unix_channel;

/// Connects to the server's admin socket.
pub async fn admin_client(path: &Path) -> Result<AdminClient<Channel>, tonic::transport::Error> {
    Ok(AdminClient::new(unix_channel(path).await?))
}
