//! Connecting to the Workload API socket: `SPIFFE_ENDPOINT_SOCKET`-style addresses
//! (`unix:///path`), with the `workload.spiffe.io: true` header added to every call, for the
//! SPIFFE Workload API and for writ's task service on the same socket.

use std::path::PathBuf;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use writ_proto::task::tasks_client::TasksClient as TasksApiClient;
use writ_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

/// A client that sends the security header.
pub type WorkloadClient = SpiffeWorkloadApiClient<
    InterceptedService<
        Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
>;

/// Why the Workload API could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No address given.
    #[error("no Workload API address: pass --socket or set SPIFFE_ENDPOINT_SOCKET")]
    NoAddress,
    /// An address that is not `unix:///absolute/path`.
    #[error("Workload API address `{0}` is not unix:///absolute/path")]
    BadAddress(String),
    /// Connection failure.
    #[error("cannot connect to the Workload API at `{addr}`: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// The cause.
        source: tonic::transport::Error,
    },
}

/// Parses `unix:///path` (also accepts `unix:/path` and a bare absolute path).
pub fn socket_path(addr: &str) -> Result<PathBuf, ClientError> {
    let p = addr
        .strip_prefix("unix://")
        .or_else(|| addr.strip_prefix("unix:"))
        .unwrap_or(addr);
    if !p.starts_with('/') {
        return Err(ClientError::BadAddress(addr.to_owned()));
    }
    Ok(PathBuf::from(p))
}

fn add_header(mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    r.metadata_mut().insert(
        writ_proto::WORKLOAD_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    Ok(r)
}

/// A `writ.task.v1.Tasks` client on the Workload API socket, with the security header.
pub type TasksClient = TasksApiClient<
    InterceptedService<
        Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
>;

/// A channel to the socket at `addr` (or `SPIFFE_ENDPOINT_SOCKET` when `None`).
async fn channel(addr: Option<&str>) -> Result<Channel, ClientError> {
    let addr = match addr {
        Some(a) => a.to_owned(),
        None => std::env::var("SPIFFE_ENDPOINT_SOCKET").map_err(|_| ClientError::NoAddress)?,
    };
    let path = socket_path(&addr)?;
    writ_tls::socket::channel(&path)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.clone(),
            source,
        })
}

/// Connects to the Workload API at `addr` (or `SPIFFE_ENDPOINT_SOCKET` when `None`).
pub async fn connect(addr: Option<&str>) -> Result<WorkloadClient, ClientError> {
    let f: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> = add_header;
    Ok(
        SpiffeWorkloadApiClient::with_interceptor(channel(addr).await?, f)
            .max_decoding_message_size(64 * 1024 * 1024),
    )
}

/// Connects to the task service on the Workload API socket at `addr` (or
/// `SPIFFE_ENDPOINT_SOCKET` when `None`).
pub async fn connect_tasks(addr: Option<&str>) -> Result<TasksClient, ClientError> {
    let f: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> = add_header;
    Ok(TasksApiClient::with_interceptor(channel(addr).await?, f)
        .max_decoding_message_size(4 * 1024 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            socket_path("unix:///run/a.sock").unwrap(),
            PathBuf::from("/run/a.sock")
        );
        assert_eq!(
            socket_path("unix:/run/a.sock").unwrap(),
            PathBuf::from("/run/a.sock")
        );
        assert!(socket_path("tcp://127.0.0.1:1").is_err());
        assert!(socket_path("unix://relative").is_err());
    }
}
