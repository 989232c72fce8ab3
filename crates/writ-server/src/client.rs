//! Clients: the admin API over its Unix socket (used by the CLI), and a Unix-socket gRPC
//! channel helper shared with the Workload API clients.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use writ_proto::v1::admin_client::AdminClient;

/// Connects a gRPC channel to a Unix socket.
pub async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_owned();
    // The URI is required by tonic but unused: the connector below ignores it.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}

/// Connects to the server's admin socket.
pub async fn admin_client(path: &Path) -> Result<AdminClient<Channel>, tonic::transport::Error> {
    Ok(AdminClient::new(unix_channel(path).await?))
}
