//! Coalescing JWT-SVID mints: workloads' concurrent cache misses go to the server as one
//! `BatchMintJwt` call instead of one round trip each, and identical misses (same entry, same
//! audiences) arriving together are minted once and shared.
//!
//! Shape: one task per server session takes the first waiting request, then whatever else is
//! already queued (up to [`MAX_BATCH`]), and sends them as a batch; up to [`IN_FLIGHT`] batches
//! run at once (the server signs a batch on one worker; several keep every core busy). An idle
//! agent adds no delay: a lone miss is a batch of one, sent at once. Against a server without
//! `BatchMintJwt` (older), each request falls back to `MintJwt`.
//!
//! Invariant: every request gets exactly one answer (a token or a status) within the
//! deadline, also when the session ends (its sender dropped: Unavailable).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::{Code, Status};
use writ_proto::v1 as pb;

use crate::failover::ServerGone;
use crate::jwt::MINT_DEADLINE;
use crate::node_client::Node;

/// Most requests in one batch (the server's limit is 256).
pub(crate) const MAX_BATCH: usize = 128;
/// Batches in flight at once.
const IN_FLIGHT: usize = 4;
/// Requests waiting for a batch, at most (callers beyond wait for room).
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<pb::MintJwtResponse, Status>>;

/// One waiting mint.
struct Pending {
    req: pb::MintJwtRequest,
    reply: Reply,
}

/// The batching front of one server session.
#[derive(Debug, Clone)]
pub(crate) struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts the batching task for a session's connection; it ends when the last `Batcher`
    /// clone is dropped.
    pub(crate) fn start(node: Node, gone: ServerGone) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(node, gone, rx));
        Batcher { tx }
    }

    /// Mints `req` as part of the next batch.
    pub(crate) async fn mint(
        &self,
        req: pb::MintJwtRequest,
    ) -> Result<pb::MintJwtResponse, Status> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { req, reply })
            .await
            .map_err(|_| Status::unavailable("agent is not connected to the server"))?;
        rx.await
            .map_err(|_| Status::unavailable("the server session ended during the mint"))?
    }
}

async fn run(node: Node, gone: ServerGone, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let batch_supported = Arc::new(std::sync::atomic::AtomicBool::new(true));
    while let Some(first) = rx.recv().await {
        // Waiting for a slot is when a batch fills up under load.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (node, gone, supported) = (node.clone(), gone.clone(), batch_supported.clone());
        tokio::spawn(async move {
            send(node, gone, supported, batch).await;
            drop(permit);
        });
    }
}

/// Identical requests of a batch (same entry and audiences) become one.
fn coalesce(batch: Vec<Pending>) -> (Vec<pb::MintJwtRequest>, Vec<Vec<Reply>>) {
    let mut index: HashMap<(String, Vec<String>), usize> = HashMap::new();
    let (mut reqs, mut replies): (Vec<pb::MintJwtRequest>, Vec<Vec<Reply>>) = (vec![], vec![]);
    for p in batch {
        let key = (p.req.entry_id.clone(), p.req.audience.clone());
        match index.get(&key) {
            Some(&i) => replies[i].push(p.reply),
            None => {
                index.insert(key, reqs.len());
                reqs.push(p.req);
                replies.push(vec![p.reply]);
            }
        }
    }
    (reqs, replies)
}

async fn send(
    mut node: Node,
    gone: ServerGone,
    supported: Arc<std::sync::atomic::AtomicBool>,
    batch: Vec<Pending>,
) {
    let (reqs, replies) = coalesce(batch);
    let answer = |replies: Vec<Reply>, r: Result<pb::MintJwtResponse, Status>| {
        for tx in replies {
            let _ = tx.send(r.clone());
        }
    };
    if supported.load(std::sync::atomic::Ordering::Relaxed) {
        let call = node.batch_mint_jwt(pb::BatchMintJwtRequest {
            requests: reqs.clone(),
        });
        match tokio::time::timeout(MINT_DEADLINE, call).await {
            Err(_) => {
                let s = Status::unavailable(format!(
                    "cannot mint JWT-SVID: the server did not answer within {}s",
                    MINT_DEADLINE.as_secs()
                ));
                return replies.into_iter().for_each(|r| answer(r, Err(s.clone())));
            }
            Ok(Ok(resp)) => {
                let results = resp.into_inner().results;
                if results.len() != replies.len() {
                    let s = Status::unavailable("cannot mint JWT-SVID: malformed batch answer");
                    return replies.into_iter().for_each(|r| answer(r, Err(s.clone())));
                }
                for (r, tx) in results.into_iter().zip(replies) {
                    let out = if r.code == 0 {
                        Ok(pb::MintJwtResponse {
                            token: r.token,
                            expires_at: r.expires_at,
                        })
                    } else {
                        Err(map_error(Status::new(Code::from(r.code), r.error)))
                    };
                    answer(tx, out);
                }
                return;
            }
            Ok(Err(s)) if s.code() == Code::Unimplemented => {
                // An older server: per-request mints from now on.
                supported.store(false, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(Err(s)) => {
                gone.check("BatchMintJwt", &s);
                let s = map_error(s);
                return replies.into_iter().for_each(|r| answer(r, Err(s.clone())));
            }
        }
    }
    for (req, tx) in reqs.into_iter().zip(replies) {
        let call = node.mint_jwt(req);
        let out = match tokio::time::timeout(MINT_DEADLINE, call).await {
            Err(_) => Err(Status::unavailable(format!(
                "cannot mint JWT-SVID: the server did not answer within {}s",
                MINT_DEADLINE.as_secs()
            ))),
            Ok(r) => r
                .map(tonic::Response::into_inner)
                .inspect_err(|s| gone.check("MintJwt", s))
                .map_err(map_error),
        };
        answer(tx, out);
    }
}

/// What a workload is told: a bad request as it is, anything else as Unavailable (it may retry).
fn map_error(s: Status) -> Status {
    match s.code() {
        Code::InvalidArgument => s,
        _ => Status::unavailable(format!("cannot mint JWT-SVID: {}", s.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_requests_are_minted_once() {
        let mk = |e: &str, a: &[&str]| {
            let (reply, _rx) = oneshot::channel();
            Pending {
                req: pb::MintJwtRequest {
                    entry_id: e.into(),
                    audience: a.iter().map(|s| s.to_string()).collect(),
                },
                reply,
            }
        };
        let (reqs, replies) = coalesce(vec![
            mk("e1", &["db"]),
            mk("e1", &["db"]),
            mk("e1", &["web"]),
            mk("e2", &["db"]),
            mk("e1", &["db"]),
        ]);
        assert_eq!(reqs.len(), 3);
        assert_eq!(
            replies.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 1, 1]
        );
    }
}
