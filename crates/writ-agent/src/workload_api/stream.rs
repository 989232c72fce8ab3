//! Workload API streams: the full state at once, then a new full message whenever the answer
//! changes (SVID rotation, entry change, bundle change), until the caller goes away or loses
//! its identity (then PermissionDenied ends the stream).
//!
//! Invariant: before each message the connecting process must still be the one attested (a
//! stream outlives requests, and a rotated message carries a new private key).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::conn::ConnIdentity;
use crate::view::WorkloadView;

use super::no_identity;

pub(super) type Stream<T> = ReceiverStream<Result<T, Status>>;

/// Runs a stream: computes `answer` now and after every generation change, sends it when it
/// differs from the last one, ends with PermissionDenied when `answer` says the caller has no
/// identity any more.
/// `sent` is called with each message after it is handed to the caller (delivery records).
pub(super) fn spawn_stream<T, F, S>(
    view: Arc<WorkloadView>,
    identity: Arc<ConnIdentity>,
    mut answer: F,
    mut sent: S,
) -> Stream<T>
where
    T: PartialEq + Clone + Send + 'static,
    F: FnMut(&WorkloadView) -> Option<Option<T>> + Send + 'static,
    S: FnMut(&T) + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    let mut gen = view.subscribe();
    tokio::spawn(async move {
        let mut last: Option<T> = None;
        loop {
            gen.borrow_and_update();
            match answer(&view) {
                // No identity: end the stream.
                None => {
                    let _ = tx.send(Err(no_identity())).await;
                    return;
                }
                Some(Some(msg)) if last.as_ref() != Some(&msg) => {
                    // A stream outlives requests: before each new message (a rotated key
                    // above all), the process that connected must still be the one attested.
                    if let Err(e) = identity.still_same().await {
                        let _ = tx.send(Err(Status::permission_denied(e))).await;
                        return;
                    }
                    if tx.send(Ok(msg.clone())).await.is_err() {
                        return;
                    }
                    sent(&msg);
                    last = Some(msg);
                }
                // Unchanged, or not ready yet.
                Some(_) => {}
            }
            tokio::select! {
                r = gen.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    ReceiverStream::new(rx)
}
