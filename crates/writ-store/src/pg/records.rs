//! Nodes, join tokens, bundles, tasks and the opaque blobs (CA journal, revocations,
//! federation relationships, authority shares) in PostgreSQL, and the `Store` impl that ties
//! them to the entry and audit halves.
//!
//! Every write that other servers must act on sends `NOTIFY writ` in its transaction:
//! `n <node id>` (a node record changed: a ban or eviction ends that agent's streams everywhere),
//! `b <trust domain>` (a bundle changed), `r` (revocations), `f` (federations), `a` (a server's
//! authority share).

use tokio_postgres::Transaction;
use writ_core::{AttestedNode, Bundle, JoinToken, SpiffeId, Task, TrustDomain};

use super::entries::{dec_s, enc_s};
use super::PgStore;
use crate::{
    AuditBatch, AuditQuery, Change, Checkpoint, CheckpointSigner, Entry, EntryFilter, NodeUpdate,
    Notice, Record, Selector, Store, StoreError,
};

const REVOCATIONS: &str = "revocations";
const FEDERATIONS: &str = "federations";
/// Advisory lock keys (any constants): own-bundle recomputation, revocation list updates.
const BUNDLE_LOCK: i64 = 0x7772_6974_0001;
const REVOCATIONS_LOCK: i64 = 0x7772_6974_0002;

async fn notify(tx: &Transaction<'_>, payload: &str) -> Result<(), StoreError> {
    tx.execute("SELECT pg_notify('writ', $1)", &[&payload])
        .await?;
    Ok(())
}

impl PgStore {
    fn put_blob(&self, name: &str, body: &[u8], note: Option<&str>) -> Result<(), StoreError> {
        with_conn!(self, |c, sent| {
            let tx = c.transaction().await?;
            // Unchanged bodies are not rewritten and not announced: a server that republishes
            // what it has must not wake every other server (which would republish in turn).
            let changed = tx
                .execute(
                    "INSERT INTO writ_blobs (name, body) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET body = EXCLUDED.body \
                     WHERE writ_blobs.body IS DISTINCT FROM EXCLUDED.body",
                    &[&name, &body],
                )
                .await?;
            if let (Some(n), true) = (note, changed > 0) {
                notify(&tx, n).await?;
            }
            sent.set(true);
            tx.commit().await?;
            Ok(())
        })
    }

    fn get_blob(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = with_conn!(self, |c, _sent| {
            Ok(
                c.query_opt("SELECT body FROM writ_blobs WHERE name = $1", &[&name])
                    .await?,
            )
        })?;
        Ok(row.map(|r| r.get(0)))
    }

    fn ca_key(&self) -> String {
        format!("ca/{}", self.instance())
    }
}

impl Store for PgStore {
    fn create_entry(&self, entry: Entry) -> Result<Entry, StoreError> {
        let mut v = self.pg_create_entries(vec![entry])?;
        v.pop().ok_or_else(|| StoreError::Db("empty write".into()))
    }

    fn create_entries(&self, entries: Vec<Entry>) -> Result<Vec<Entry>, StoreError> {
        self.pg_create_entries(entries)
    }

    fn update_entry(&self, entry: Entry) -> Result<Entry, StoreError> {
        self.pg_update_entry(entry)
    }

    fn delete_entry(&self, id: &str) -> Result<Entry, StoreError> {
        self.pg_delete_entry(id)
    }

    fn get_entry(&self, id: &str) -> Result<Option<Entry>, StoreError> {
        self.pg_get_entry(id)
    }

    fn list_entries(&self) -> Result<Vec<Entry>, StoreError> {
        self.pg_entries(EntryFilter::All)
    }

    fn entries_by_spiffe_id(&self, id: &SpiffeId) -> Result<Vec<Entry>, StoreError> {
        self.pg_entries(EntryFilter::SpiffeId(id))
    }

    fn entries_by_parent(&self, parent: &SpiffeId) -> Result<Vec<Entry>, StoreError> {
        self.pg_entries(EntryFilter::Parent(parent))
    }

    fn entries_by_selector(&self, selector: &Selector) -> Result<Vec<Entry>, StoreError> {
        self.pg_entries(EntryFilter::Selector(selector))
    }

    fn scan_entries(
        &self,
        filter: EntryFilter<'_>,
        after: &str,
        visit: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<(), StoreError> {
        self.pg_scan(filter, after, visit)
    }

    fn revision(&self) -> Result<u64, StoreError> {
        self.pg_revision()
    }

    fn changes_since(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.pg_changes_since(after, limit)
    }

    fn compact_log(&self, upto: u64) -> Result<(), StoreError> {
        self.pg_compact_log(upto)
    }

    fn put_node(&self, node: AttestedNode) -> Result<AttestedNode, StoreError> {
        with_conn!(self, |c, sent| {
            let tx = c.transaction().await?;
            tx.execute(
                "INSERT INTO writ_nodes (id, body) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body",
                &[&node.spiffe_id.as_str(), &enc_s(&node)?],
            )
            .await?;
            notify(&tx, &format!("n {}", node.spiffe_id)).await?;
            sent.set(true);
            tx.commit().await?;
            Ok(node.clone())
        })
    }

    fn update_node(
        &self,
        id: &SpiffeId,
        decide: &mut dyn FnMut(Option<&AttestedNode>) -> NodeUpdate,
    ) -> Result<Option<AttestedNode>, StoreError> {
        let key = id.as_str();
        loop {
            // The row lock makes read-decide-write atomic against every other server; a record
            // that did not exist cannot be locked, so its insert refuses to overwrite one made
            // meanwhile and the decision is taken again.
            let done: Option<Option<AttestedNode>> = with_conn!(self, |c, sent| {
                let tx = c.transaction().await?;
                let old: Option<AttestedNode> = tx
                    .query_opt(
                        "SELECT body FROM writ_nodes WHERE id = $1 FOR UPDATE",
                        &[&key],
                    )
                    .await?
                    .map(|r| dec_s(r.get(0)))
                    .transpose()?;
                let after = match decide(old.as_ref()) {
                    NodeUpdate::Keep => return Ok(Some(old)),
                    NodeUpdate::Delete => {
                        tx.execute("DELETE FROM writ_nodes WHERE id = $1", &[&key])
                            .await?;
                        None
                    }
                    NodeUpdate::Put(n) => {
                        let body = enc_s(&n)?;
                        let wrote = if old.is_some() {
                            tx.execute(
                                "UPDATE writ_nodes SET body = $2 WHERE id = $1",
                                &[&key, &body],
                            )
                            .await?
                        } else {
                            tx.execute(
                                "INSERT INTO writ_nodes (id, body) VALUES ($1, $2) \
                                 ON CONFLICT DO NOTHING",
                                &[&key, &body],
                            )
                            .await?
                        };
                        if wrote == 0 {
                            return Ok(None);
                        }
                        Some(n)
                    }
                };
                notify(&tx, &format!("n {key}")).await?;
                sent.set(true);
                tx.commit().await?;
                Ok(Some(after))
            })?;
            if let Some(after) = done {
                return Ok(after);
            }
        }
    }

    fn get_node(&self, id: &SpiffeId) -> Result<Option<AttestedNode>, StoreError> {
        self.read_one("SELECT body FROM writ_nodes WHERE id = $1", &[&id.as_str()])
    }

    fn list_nodes(&self) -> Result<Vec<AttestedNode>, StoreError> {
        self.read_all("SELECT body FROM writ_nodes ORDER BY id", &[])
    }

    fn delete_node(&self, id: &SpiffeId) -> Result<AttestedNode, StoreError> {
        with_conn!(self, |c, sent| {
            let tx = c.transaction().await?;
            let row = tx
                .query_opt(
                    "DELETE FROM writ_nodes WHERE id = $1 RETURNING body",
                    &[&id.as_str()],
                )
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    kind: "node",
                    id: id.to_string(),
                })?;
            notify(&tx, &format!("n {id}")).await?;
            sent.set(true);
            tx.commit().await?;
            dec_s(row.get(0))
        })
    }

    fn create_join_token(&self, token: JoinToken) -> Result<(), StoreError> {
        let body = enc_s(&token)?;
        let n = with_conn!(self, |c, _sent| {
            Ok(c.execute(
                "INSERT INTO writ_join_tokens (token, body, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
                &[&token.token, &body, &token.expires_at],
            )
            .await?)
        })?;
        if n == 0 {
            return Err(StoreError::AlreadyExists {
                kind: "join token",
                id: "(redacted)".into(),
            });
        }
        Ok(())
    }

    fn consume_join_token(&self, token: &str, now: i64) -> Result<JoinToken, StoreError> {
        // One DELETE ... RETURNING: of any number of servers trying at once, one gets the row.
        // Never retried: if the connection died after the delete, the token is used up
        // and the caller is refused, which is safe (a token is never used twice).
        let row = with_conn!(self, |c, sent| {
            sent.set(true);
            Ok(c.query_opt(
                "DELETE FROM writ_join_tokens WHERE token = $1 RETURNING body",
                &[&token],
            )
            .await?)
        })?
        .ok_or(StoreError::TokenInvalid)?;
        let t: JoinToken = dec_s(row.get(0))?;
        if t.expires_at <= now {
            return Err(StoreError::TokenExpired);
        }
        Ok(t)
    }

    fn prune_join_tokens(&self, now: i64) -> Result<usize, StoreError> {
        let n = with_conn!(self, |c, _sent| {
            Ok(c.execute(
                "DELETE FROM writ_join_tokens WHERE expires_at <= $1",
                &[&now],
            )
            .await?)
        })?;
        Ok(n as usize)
    }

    fn put_bundle(&self, bundle: &Bundle) -> Result<(), StoreError> {
        with_conn!(self, |c, sent| {
            let tx = c.transaction().await?;
            let changed = tx
                .execute(
                    "INSERT INTO writ_bundles (trust_domain, body) VALUES ($1, $2) \
                     ON CONFLICT (trust_domain) DO UPDATE SET body = EXCLUDED.body \
                     WHERE writ_bundles.body IS DISTINCT FROM EXCLUDED.body",
                    &[&bundle.trust_domain.as_str(), &enc_s(bundle)?],
                )
                .await?;
            if changed > 0 {
                notify(&tx, &format!("b {}", bundle.trust_domain)).await?;
            }
            sent.set(true);
            tx.commit().await?;
            Ok(())
        })
    }

    fn get_bundle(&self, td: &TrustDomain) -> Result<Option<Bundle>, StoreError> {
        self.read_one(
            "SELECT body FROM writ_bundles WHERE trust_domain = $1",
            &[&td.as_str()],
        )
    }

    fn list_bundles(&self) -> Result<Vec<Bundle>, StoreError> {
        self.read_all("SELECT body FROM writ_bundles ORDER BY trust_domain", &[])
    }

    fn delete_bundle(&self, td: &TrustDomain) -> Result<(), StoreError> {
        with_conn!(self, |c, sent| {
            let tx = c.transaction().await?;
            let n = tx
                .execute(
                    "DELETE FROM writ_bundles WHERE trust_domain = $1",
                    &[&td.as_str()],
                )
                .await?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    kind: "bundle",
                    id: td.to_string(),
                });
            }
            notify(&tx, &format!("b {td}")).await?;
            sent.set(true);
            tx.commit().await?;
            Ok(())
        })
    }

    fn append_audit(
        &self,
        batch: AuditBatch,
        sign: CheckpointSigner<'_>,
    ) -> Result<Vec<Record>, StoreError> {
        self.pg_audit_append(batch, sign)
    }

    fn audit_scan(
        &self,
        query: AuditQuery<'_>,
        after: u64,
        visit: &mut dyn FnMut(Result<Record, (u64, String)>) -> bool,
    ) -> Result<(), StoreError> {
        self.pg_audit_scan(query, after, visit)
    }

    fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        self.pg_audit_checkpoints()
    }

    fn audit_head(&self) -> Result<(u64, String), StoreError> {
        self.pg_audit_head()
    }

    fn put_ca_journal(&self, journal: &[u8]) -> Result<(), StoreError> {
        self.put_blob(&self.ca_key(), journal, None)
    }

    fn get_ca_journal(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_blob(&self.ca_key())
    }

    fn put_revocations(&self, list: &[u8]) -> Result<(), StoreError> {
        self.put_blob(REVOCATIONS, list, Some("r"))
    }

    fn get_revocations(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_blob(REVOCATIONS)
    }

    fn put_task(&self, task: &Task) -> Result<(), StoreError> {
        with_conn!(self, |c, _sent| {
            c.execute(
                "INSERT INTO writ_tasks (id, body) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body",
                &[&task.id, &enc_s(task)?],
            )
            .await
            .map_err(StoreError::from)
        })?;
        Ok(())
    }

    fn list_tasks(&self) -> Result<Vec<Task>, StoreError> {
        self.read_all("SELECT body FROM writ_tasks ORDER BY id", &[])
    }

    fn delete_tasks(&self, ids: &[String]) -> Result<(), StoreError> {
        with_conn!(self, |c, _sent| {
            c.execute("DELETE FROM writ_tasks WHERE id = ANY($1)", &[&ids])
                .await
                .map_err(StoreError::from)
        })?;
        Ok(())
    }

    fn put_federations(&self, list: &[u8]) -> Result<(), StoreError> {
        self.put_blob(FEDERATIONS, list, Some("f"))
    }

    fn get_federations(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_blob(FEDERATIONS)
    }

    fn shared(&self) -> bool {
        true
    }

    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>> {
        Some(self.notices().subscribe())
    }

    fn update_own_bundle(
        &self,
        share: &Bundle,
        make: crate::MakeBundle<'_>,
    ) -> Result<Option<Bundle>, StoreError> {
        let name = format!("authorities/{}", self.instance());
        let share_body = crate::sled_store::enc(share)?;
        let td = share.trust_domain.as_str();
        with_conn!(self, |c, sent| {
            let tx = c.transaction().await?;
            // One bundle recomputation at a time across servers: each runs after committing
            // its share inside the lock, so the last one sees every share.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&BUNDLE_LOCK])
                .await?;
            let changed = tx
                .execute(
                    "INSERT INTO writ_blobs (name, body) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET body = EXCLUDED.body \
                     WHERE writ_blobs.body IS DISTINCT FROM EXCLUDED.body",
                    &[&name, &share_body],
                )
                .await?;
            let shares = tx
                .query(
                    "SELECT body FROM writ_blobs WHERE name LIKE 'authorities/%' ORDER BY name",
                    &[],
                )
                .await?
                .iter()
                .map(|r| crate::sled_store::dec(r.get::<_, &[u8]>(0)))
                .collect::<Result<Vec<Bundle>, _>>()?;
            let stored: Option<Bundle> = tx
                .query_opt(
                    "SELECT body FROM writ_bundles WHERE trust_domain = $1",
                    &[&td],
                )
                .await?
                .map(|r| dec_s(r.get(0)))
                .transpose()?;
            let out = match make(shares, stored.as_ref()) {
                Some(b) => {
                    tx.execute(
                        "INSERT INTO writ_bundles (trust_domain, body) VALUES ($1, $2) \
                         ON CONFLICT (trust_domain) DO UPDATE SET body = EXCLUDED.body",
                        &[&td, &enc_s(&b)?],
                    )
                    .await?;
                    notify(&tx, &format!("b {td}")).await?;
                    Some(b)
                }
                None => stored,
            };
            if changed > 0 {
                notify(&tx, "a").await?;
            }
            sent.set(true);
            tx.commit().await?;
            Ok(out)
        })
    }

    fn update_revocations(
        &self,
        merge: &mut dyn FnMut(Option<&[u8]>) -> Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        with_conn!(self, |c, sent| {
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&REVOCATIONS_LOCK])
                .await?;
            let cur: Option<Vec<u8>> = tx
                .query_opt(
                    "SELECT body FROM writ_blobs WHERE name = $1",
                    &[&REVOCATIONS],
                )
                .await?
                .map(|r| r.get(0));
            let next = merge(cur.as_deref());
            if cur.as_deref() != Some(next.as_slice()) {
                tx.execute(
                    "INSERT INTO writ_blobs (name, body) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET body = EXCLUDED.body",
                    &[&REVOCATIONS, &next],
                )
                .await?;
                notify(&tx, "r").await?;
            }
            sent.set(true);
            tx.commit().await?;
            Ok(next)
        })
    }
}
