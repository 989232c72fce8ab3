//! The audit journal in PostgreSQL: `writ_audit` (seq -> record JSON, with the indexed fields
//! as columns), `writ_audit_checkpoints`, and the one-row `writ_audit_head`.
//!
//! An append locks the head row (`FOR UPDATE`) for its transaction: appends from every server
//! sharing the database are serialised there, so the chain stays linear whichever server writes,
//! and records, checkpoint and head commit together (no cut-short append to clean up, unlike
//! sled).

use writ_audit::{Chain, Checkpoint, Record};

use super::entries::{dec_s, enc_s};
use super::{PgStore, P};
use crate::audit::{AuditBatch, AuditQuery, CheckpointSigner};
use crate::StoreError;

/// Records fetched per round trip when scanning.
const PAGE: i64 = 1000;

impl PgStore {
    pub(crate) fn pg_audit_head(&self) -> Result<(u64, String), StoreError> {
        let row = with_conn!(self, |c, _sent| {
            Ok(
                c.query_one("SELECT seq, hash FROM writ_audit_head WHERE one = 1", &[])
                    .await?,
            )
        })?;
        Ok((row.get::<_, i64>(0) as u64, row.get(1)))
    }

    pub(crate) fn pg_audit_append(
        &self,
        batch: AuditBatch,
        sign: CheckpointSigner<'_>,
    ) -> Result<Vec<Record>, StoreError> {
        if batch.records.is_empty() {
            return Ok(Vec::new());
        }
        with_conn!(self, |c, sent| {
            let tx = c.transaction().await?;
            let head = tx
                .query_one(
                    "SELECT seq, hash FROM writ_audit_head WHERE one = 1 FOR UPDATE",
                    &[],
                )
                .await?;
            let mut chain = Chain::resume(head.get::<_, i64>(0) as u64, head.get(1));
            // Cloned: a retry on a fresh connection appends the same records.
            let records: Vec<Record> = batch
                .records
                .iter()
                .cloned()
                .map(|r| chain.append(r, batch.now_ms))
                .collect();
            let cp: Checkpoint =
                sign(chain.seq, &chain.hash, batch.now_ms).map_err(|e| StoreError::Db(e.into()))?;
            let n = records.len();
            let mut seqs = Vec::with_capacity(n);
            let mut bodies = Vec::with_capacity(n);
            let mut cols: [Vec<Option<String>>; 5] = Default::default();
            for r in &records {
                seqs.push(r.seq as i64);
                bodies.push(enc_s(r)?);
                for (col, v) in
                    cols.iter_mut()
                        .zip([&r.spiffe_id, &r.serial, &r.jti, &r.entry_id, &r.task_id])
                {
                    col.push(v.clone());
                }
            }
            tx.execute(
                "INSERT INTO writ_audit (seq, body, spiffe_id, serial, jti, entry_id, task_id) \
                 SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], \
                 $5::text[], $6::text[], $7::text[])",
                &[
                    &seqs as P, &bodies, &cols[0], &cols[1], &cols[2], &cols[3], &cols[4],
                ],
            )
            .await?;
            tx.execute(
                "INSERT INTO writ_audit_checkpoints (seq, body) VALUES ($1, $2)",
                &[&(cp.seq as i64) as P, &enc_s(&cp)?],
            )
            .await?;
            tx.execute(
                "UPDATE writ_audit_head SET seq = $1, hash = $2 WHERE one = 1",
                &[&(chain.seq as i64) as P, &chain.hash],
            )
            .await?;
            sent.set(true);
            tx.commit().await?;
            Ok(records)
        })
    }

    pub(crate) fn pg_audit_scan(
        &self,
        query: AuditQuery<'_>,
        after: u64,
        visit: &mut dyn FnMut(Result<Record, (u64, String)>) -> bool,
    ) -> Result<(), StoreError> {
        let column = match query {
            AuditQuery::All => None,
            AuditQuery::SpiffeId(v) => Some(("spiffe_id", v)),
            AuditQuery::Serial(v) => Some(("serial", v)),
            AuditQuery::Jti(v) => Some(("jti", v)),
            AuditQuery::Entry(v) => Some(("entry_id", v)),
            AuditQuery::Task(v) => Some(("task_id", v)),
        };
        let sql = match column {
            None => {
                "SELECT seq, body FROM writ_audit WHERE seq > $1 ORDER BY seq LIMIT $2".to_owned()
            }
            Some((col, _)) => format!(
                "SELECT seq, body FROM writ_audit WHERE {col} = $3 AND seq > $1 \
                 ORDER BY seq LIMIT $2"
            ),
        };
        let mut after = after.min(i64::MAX as u64) as i64;
        loop {
            let rows = with_conn!(self, |c, _sent| {
                Ok(match column {
                    None => c.query(sql.as_str(), &[&after as P, &PAGE]).await?,
                    Some((_, v)) => c.query(sql.as_str(), &[&after as P, &PAGE, &v]).await?,
                })
            })?;
            let n = rows.len() as i64;
            for row in rows {
                let seq: i64 = row.get(0);
                after = seq;
                let item = match dec_s::<Record>(row.get(1)) {
                    Ok(r) if r.seq != seq as u64 => Err((
                        seq as u64,
                        format!("it holds record {}: records were swapped or moved", r.seq),
                    )),
                    Ok(r) => Ok(r),
                    Err(e) => Err((seq as u64, e.to_string())),
                };
                if !visit(item) {
                    return Ok(());
                }
            }
            if n < PAGE {
                return Ok(());
            }
        }
    }

    pub(crate) fn pg_audit_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.read_all("SELECT body FROM writ_audit_checkpoints ORDER BY seq", &[])
    }
}
