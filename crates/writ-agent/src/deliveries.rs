//! Delivery records: which process received which SVID (`svid.delivered`: an X509-SVID serial
//! or a JWT-SVID `jti`) and which JWT-SVIDs workloads validated (`jwt.validated`), reported to
//! the server's audit journal.
//!
//! The Workload API hands each event to [`Deliveries::record`] (never blocking the caller); a
//! writer appends them to `data_dir/deliveries.jsonl` and syncs the file, and while the agent
//! is connected the reporter sends what is written in batches and drops it once the server has
//! acknowledged (the server journals a batch durably before it answers). So an event survives
//! an agent restart or a server outage; at most a batch is sent twice if the agent dies between
//! the acknowledgement and dropping it.
//!
//! Bounds: at most [`MAX_PENDING`] events wait (a server unreachable for long, a flood of
//! callers); beyond that new events are dropped and counted, with a warning.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use writ_proto::v1 as pb;

use crate::failover::ServerGone;
use crate::node_client::Node;

/// Most events kept waiting for the server.
pub(crate) const MAX_PENDING: usize = 100_000;
/// Most events in one report.
const BATCH: usize = 1000;

/// One event, as it is stored and sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Delivery {
    /// `svid.delivered` or `jwt.validated`.
    pub(crate) kind: String,
    /// X509-SVID serial (lowercase hex).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) serial: String,
    /// JWT-SVID `jti`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) jti: String,
    /// The identity.
    pub(crate) spiffe_id: String,
    /// The receiving (or validating) process.
    pub(crate) pid: i32,
    /// Its user ID.
    pub(crate) uid: u32,
    /// Its executable (empty when not readable).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) exe: String,
    /// Audiences (validation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) audience: Vec<String>,
    /// When (unix milliseconds).
    pub(crate) at_ms: i64,
}

impl Delivery {
    fn to_pb(&self) -> pb::Delivery {
        pb::Delivery {
            kind: self.kind.clone(),
            serial: self.serial.clone(),
            jti: self.jti.clone(),
            spiffe_id: self.spiffe_id.clone(),
            pid: self.pid,
            uid: self.uid,
            exe: self.exe.clone(),
            audience: self.audience.clone(),
            at_ms: self.at_ms,
        }
    }
}

/// The agent's delivery log.
#[derive(Debug)]
pub(crate) struct Deliveries {
    tx: mpsc::Sender<Delivery>,
    rx: Mutex<Option<mpsc::Receiver<Delivery>>>,
    path: Option<PathBuf>,
    /// Written (durable) and not yet acknowledged, oldest first.
    pending: Mutex<VecDeque<Delivery>>,
    written: Notify,
    dropped: AtomicU64,
}

impl Deliveries {
    /// A log kept in `path` (none: memory only, for tests of other parts), with what a
    /// previous run left there.
    pub(crate) fn open(path: Option<PathBuf>) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        let mut pending = VecDeque::new();
        if let Some(p) = &path {
            if let Ok(text) = std::fs::read_to_string(p) {
                for line in text.lines() {
                    match serde_json::from_str::<Delivery>(line) {
                        Ok(d) => pending.push_back(d),
                        // A torn last line (crash mid-write) is all that can be bad here.
                        Err(e) => {
                            tracing::warn!(error = %e, "skipping an unreadable delivery record")
                        }
                    }
                }
                if !pending.is_empty() {
                    tracing::info!(
                        count = pending.len(),
                        "delivery records waiting from a previous run"
                    );
                }
            }
        }
        Deliveries {
            tx,
            rx: Mutex::new(Some(rx)),
            path,
            pending: Mutex::new(pending),
            written: Notify::new(),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues an event (never waits; drops and counts it when the queue is full).
    pub(crate) fn record(&self, d: Delivery) {
        if self.tx.try_send(d).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "delivery records dropped: the queue is full");
            }
        }
    }

    /// Events dropped because the queue or the log was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events written and not yet acknowledged.
    pub(crate) fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The writer: appends queued events to the file (one sync per group) and makes them
    /// reportable. Runs for the agent's lifetime.
    pub(crate) async fn run_writer(self: std::sync::Arc<Self>) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(d) => batch.push(d),
                    Err(_) => break,
                }
            }
            let room = MAX_PENDING.saturating_sub(self.pending());
            if batch.len() > room {
                self.dropped
                    .fetch_add((batch.len() - room) as u64, Ordering::Relaxed);
                tracing::warn!(
                    dropped = batch.len() - room,
                    "delivery log full; records dropped"
                );
                batch.truncate(room);
            }
            if batch.is_empty() {
                continue;
            }
            let this = self.clone();
            let write = batch.clone();
            let ok = tokio::task::spawn_blocking(move || this.append(&write))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            if let Err(e) = ok {
                tracing::warn!(error = %e, "cannot write the delivery log; keeping records in memory");
            }
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(batch);
            self.written.notify_one();
        }
    }

    fn append(&self, batch: &[Delivery]) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut text = Vec::new();
        for d in batch {
            serde_json::to_writer(&mut text, d)?;
            text.push(b'\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode_0600()
            .open(path)?;
        f.write_all(&text)?;
        f.sync_data()
    }

    /// After an acknowledgement: the file holds exactly what is still pending.
    fn rewrite(&self, rest: &VecDeque<Delivery>) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut text = Vec::new();
        for d in rest {
            serde_json::to_writer(&mut text, d)?;
            text.push(b'\n');
        }
        writ_ca::keys::write_atomic(path, &text, 0o600)
    }

    /// The reporter for one server session: sends pending events in batches until the
    /// session ends (the task is aborted then). A server found gone is reported to `gone`.
    pub(crate) async fn report(&self, mut client: Node, gone: ServerGone) {
        loop {
            let batch: Vec<Delivery> = {
                let p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                p.iter().take(BATCH).cloned().collect()
            };
            if batch.is_empty() {
                self.written.notified().await;
                continue;
            }
            let req = pb::ReportDeliveriesRequest {
                deliveries: batch.iter().map(Delivery::to_pb).collect(),
            };
            match client.report_deliveries(req).await {
                Ok(_) => {
                    let rest = {
                        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                        let n = batch.len().min(p.len());
                        p.drain(..n);
                        p.clone()
                    };
                    if let Err(e) = self.rewrite(&rest) {
                        tracing::warn!(error = %e, "cannot rewrite the delivery log");
                    }
                }
                Err(s) => {
                    gone.check("ReportDeliveries", &s);
                    tracing::warn!(error = %s.message(), "server did not take delivery records; will retry");
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                }
            }
        }
    }
}

/// `OpenOptions::mode(0o600)` without importing the extension trait at every call site.
trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

/// The current time in unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
