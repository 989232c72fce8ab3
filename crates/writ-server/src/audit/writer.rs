//! Group commit for the audit journal: a writer thread takes every batch queued since it last
//! looked and appends them all as one group (one checkpoint, one fsync), then answers each
//! caller. Under load a write covers many callers; idle, a caller waits for one fsync only.
//! Two writer threads take turns: while one waits for the disk, the other builds and writes the
//! next group (the store chains appends in the order they are written and lets one fsync cover
//! both), so a caller arriving during a sync does not wait for it to finish before its own
//! records are even encoded.

use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::oneshot;
use writ_audit::NewRecord;
use writ_store::{AuditBatch, Store};

use super::{AuditError, AuditKey};

/// Most records in one write: bounds the transaction and the time one group holds the store.
const MAX_GROUP: usize = 10_000;
/// Writer threads: one writing while the other syncs; more add nothing (one disk, one chain).
const THREADS: usize = 2;

struct Job {
    records: Vec<NewRecord>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The handle callers send batches through.
pub(super) struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread (it ends when the handle is dropped).
    pub(super) fn start(store: Arc<dyn Store>, key: Arc<AuditKey>) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..THREADS {
            let (rx, store, key) = (rx.clone(), store.clone(), key.clone());
            let spawned = std::thread::Builder::new()
                .name("writ-audit".into())
                .spawn(move || run(&rx, &*store, &key));
            if let Err(e) = spawned {
                // Without any thread every record() reports Closed: issuance fails closed.
                tracing::error!(error = %e, "could not start an audit writer thread");
            }
        }
        Writer { tx }
    }

    /// Queues `records` and waits until they are durable.
    pub(super) async fn append(&self, records: Vec<NewRecord>) -> Result<(), AuditError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job { records, done })
            .map_err(|_| AuditError::Closed)?;
        wait.await
            .map_err(|_| AuditError::Closed)?
            .map_err(|e| AuditError::Store(writ_store::StoreError::Db(e.into())))
    }
}

/// Takes the next group of jobs: waits for one, then whatever else is queued.
fn take(rx: &Mutex<mpsc::Receiver<Job>>) -> Option<(Vec<Job>, usize)> {
    // The other thread, if it holds the receiver, is only waiting for work.
    let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
    let first = rx.recv().ok()?;
    let mut n = first.records.len();
    let mut jobs = vec![first];
    while n < MAX_GROUP {
        match rx.try_recv() {
            Ok(j) => {
                n += j.records.len();
                jobs.push(j);
            }
            Err(_) => break,
        }
    }
    Some((jobs, n))
}

fn run(rx: &Mutex<mpsc::Receiver<Job>>, store: &dyn Store, key: &AuditKey) {
    while let Some((jobs, n)) = take(rx) {
        let mut records = Vec::with_capacity(n);
        let mut waiters = Vec::with_capacity(jobs.len());
        for j in jobs {
            records.extend(j.records);
            waiters.push(j.done);
        }
        let batch = AuditBatch {
            records,
            now_ms: now_ms(),
        };
        let sign = |seq: u64, hash: &str, t: i64| key.checkpoint(seq, hash, t);
        let result = store
            .append_audit(batch, &sign)
            .map(|_| ())
            .map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, "audit journal write failed");
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
