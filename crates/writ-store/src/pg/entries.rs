//! Entries, their lookups and the revision log in PostgreSQL.
//!
//! Tables: `writ_entries` (id, spiffe_id, parent_id, JSON body), `writ_entry_selectors`
//! (selector, entry_id), `writ_revlog` (revision -> JSON [`Change`]), and the `revision` row of
//! `writ_counters`. Every entry write locks that row first (`FOR UPDATE`, held to commit): the
//! uniqueness check, the numbering and the commit are one critical section across all servers,
//! so revisions commit in order.

use std::collections::HashMap;

use tokio_postgres::Transaction;
use writ_core::{Entry, Selector};

use super::{PgStore, P};
use crate::sled_store::{dec, enc};
use crate::{Change, ChangeKind, EntryFilter, StoreError};

/// Rows fetched per round trip when visiting entries.
const PAGE: i64 = 500;

pub(crate) fn enc_s<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    String::from_utf8(enc(v)?).map_err(|e| StoreError::Corrupt(e.into()))
}

pub(crate) fn dec_s<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    dec(s.as_bytes())
}

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound {
        kind: "entry",
        id: id.to_owned(),
    }
}

fn exists(id: &str) -> StoreError {
    StoreError::AlreadyExists {
        kind: "entry",
        id: id.to_owned(),
    }
}

/// What makes two entries the same registration.
fn registration(e: &Entry) -> (String, String, Vec<String>) {
    let mut sels: Vec<String> = e.selectors.iter().map(Selector::to_string).collect();
    sels.sort();
    sels.dedup();
    (e.spiffe_id.to_string(), e.parent_id.to_string(), sels)
}

/// Locks the revision counter for this transaction and returns it.
async fn lock_revision(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let row = tx
        .query_one(
            "SELECT value FROM writ_counters WHERE name = 'revision' FOR UPDATE",
            &[],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// The registration of an entry already stored under `spiffe_id` equal to `reg`, other than
/// `except`.
async fn duplicate_of(
    tx: &Transaction<'_>,
    reg: &(String, String, Vec<String>),
    except: Option<&str>,
) -> Result<Option<String>, StoreError> {
    let rows = tx
        .query(
            "SELECT body FROM writ_entries WHERE spiffe_id = $1 AND parent_id = $2",
            &[&reg.0, &reg.1],
        )
        .await?;
    for r in rows {
        let e: Entry = dec_s(r.get(0))?;
        if Some(e.id.as_str()) != except && registration(&e) == *reg {
            return Ok(Some(e.id));
        }
    }
    Ok(None)
}

async fn get_in(tx: &Transaction<'_>, id: &str) -> Result<Option<Entry>, StoreError> {
    tx.query_opt("SELECT body FROM writ_entries WHERE id = $1", &[&id])
        .await?
        .map(|r| dec_s(r.get(0)))
        .transpose()
}

/// Writes `items` with consecutive revisions after `rev` (the locked counter), logs them,
/// advances the counter and notifies; the caller commits.
async fn write(
    tx: &Transaction<'_>,
    mut rev: u64,
    items: Vec<(Option<Entry>, Entry, ChangeKind)>,
) -> Result<Vec<Entry>, StoreError> {
    let now = writ_core::now_unix();
    let mut out = Vec::with_capacity(items.len());
    // Column arrays for one UNNEST insert each: a bulk create is a handful of statements.
    let (mut ids, mut spiffes, mut parents, mut bodies) = (vec![], vec![], vec![], vec![]);
    let (mut sel_sel, mut sel_ids) = (vec![], vec![]);
    let (mut revs, mut changes) = (vec![], vec![]);
    let mut replaced = vec![];
    let mut deleted = vec![];
    for (old, new, kind) in items {
        rev += 1;
        let mut new = new;
        new.revision = rev;
        if old.is_some() {
            replaced.push(new.id.clone());
        }
        if kind == ChangeKind::Deleted {
            deleted.push(new.id.clone());
        } else {
            ids.push(new.id.clone());
            spiffes.push(new.spiffe_id.to_string());
            parents.push(new.parent_id.to_string());
            bodies.push(enc_s(&new)?);
            for s in &new.selectors {
                sel_sel.push(s.to_string());
                sel_ids.push(new.id.clone());
            }
        }
        let change = Change {
            revision: rev,
            kind,
            previous: if kind == ChangeKind::Updated {
                old
            } else {
                None
            },
            entry: new.clone(),
            at: now,
        };
        revs.push(rev as i64);
        changes.push(enc_s(&change)?);
        out.push(new);
    }
    if !replaced.is_empty() {
        tx.execute(
            "DELETE FROM writ_entry_selectors WHERE entry_id = ANY($1)",
            &[&replaced],
        )
        .await?;
    }
    if !deleted.is_empty() {
        tx.execute("DELETE FROM writ_entries WHERE id = ANY($1)", &[&deleted])
            .await?;
    }
    if !ids.is_empty() {
        tx.execute(
            "INSERT INTO writ_entries (id, spiffe_id, parent_id, body) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) \
             ON CONFLICT (id) DO UPDATE SET spiffe_id = EXCLUDED.spiffe_id, \
             parent_id = EXCLUDED.parent_id, body = EXCLUDED.body",
            &[&ids, &spiffes, &parents, &bodies],
        )
        .await?;
    }
    if !sel_sel.is_empty() {
        tx.execute(
            "INSERT INTO writ_entry_selectors (selector, entry_id) \
             SELECT * FROM UNNEST($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
            &[&sel_sel, &sel_ids],
        )
        .await?;
    }
    tx.execute(
        "INSERT INTO writ_revlog (revision, body) SELECT * FROM UNNEST($1::bigint[], $2::text[])",
        &[&revs, &changes],
    )
    .await?;
    tx.execute(
        "UPDATE writ_counters SET value = $1 WHERE name = 'revision'",
        &[&(rev as i64)],
    )
    .await?;
    tx.execute("SELECT pg_notify('writ', $1)", &[&format!("e {rev}")])
        .await?;
    Ok(out)
}

impl PgStore {
    pub(crate) fn pg_create_entries(&self, entries: Vec<Entry>) -> Result<Vec<Entry>, StoreError> {
        with_conn!(self, |c, sent| {
            let tx = c.transaction().await?;
            let rev = lock_revision(&tx).await?;
            let now = writ_core::now_unix();
            let mut seen_ids = std::collections::HashSet::new();
            let mut seen_regs: HashMap<_, String> = HashMap::new();
            let mut batch = Vec::with_capacity(entries.len());
            // Cloned per attempt: a retry on a fresh connection starts from the same input.
            for mut e in entries.clone() {
                if e.id.is_empty() {
                    e.id = uuid::Uuid::new_v4().to_string();
                }
                if !seen_ids.insert(e.id.clone()) || get_in(&tx, &e.id).await?.is_some() {
                    return Err(exists(&e.id));
                }
                let reg = registration(&e);
                if let Some(id) = seen_regs.get(&reg) {
                    return Err(exists(id));
                }
                if let Some(id) = duplicate_of(&tx, &reg, None).await? {
                    return Err(exists(&id));
                }
                seen_regs.insert(reg, e.id.clone());
                if e.created_at == 0 {
                    e.created_at = now;
                }
                batch.push((None, e, ChangeKind::Created));
            }
            let out = write(&tx, rev, batch).await?;
            sent.set(true);
            tx.commit().await?;
            Ok(out)
        })
    }

    pub(crate) fn pg_update_entry(&self, entry: Entry) -> Result<Entry, StoreError> {
        with_conn!(self, |c, sent| {
            let tx = c.transaction().await?;
            let rev = lock_revision(&tx).await?;
            let old = get_in(&tx, &entry.id)
                .await?
                .ok_or_else(|| not_found(&entry.id))?;
            if let Some(id) = duplicate_of(&tx, &registration(&entry), Some(&entry.id)).await? {
                return Err(exists(&id));
            }
            let mut entry = entry.clone();
            entry.created_at = old.created_at;
            let mut out = write(&tx, rev, vec![(Some(old), entry, ChangeKind::Updated)]).await?;
            sent.set(true);
            tx.commit().await?;
            out.pop()
                .ok_or_else(|| StoreError::Db("empty write".into()))
        })
    }

    pub(crate) fn pg_delete_entry(&self, id: &str) -> Result<Entry, StoreError> {
        with_conn!(self, |c, sent| {
            let tx = c.transaction().await?;
            let rev = lock_revision(&tx).await?;
            let old = get_in(&tx, id).await?.ok_or_else(|| not_found(id))?;
            let mut out = write(
                &tx,
                rev,
                vec![(Some(old.clone()), old, ChangeKind::Deleted)],
            )
            .await?;
            sent.set(true);
            tx.commit().await?;
            out.pop()
                .ok_or_else(|| StoreError::Db("empty write".into()))
        })
    }

    pub(crate) fn pg_get_entry(&self, id: &str) -> Result<Option<Entry>, StoreError> {
        self.read_one("SELECT body FROM writ_entries WHERE id = $1", &[&id])
    }

    /// Entries by a filter, all of them.
    pub(crate) fn pg_entries(&self, filter: EntryFilter<'_>) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        self.pg_scan(filter, "", &mut |e| {
            out.push(e);
            true
        })?;
        Ok(out)
    }

    pub(crate) fn pg_scan(
        &self,
        filter: EntryFilter<'_>,
        after: &str,
        visit: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<(), StoreError> {
        let (sql, value): (&str, Option<String>) = match filter {
            EntryFilter::All => (
                "SELECT id, body FROM writ_entries WHERE id > $1 ORDER BY id LIMIT $2",
                None,
            ),
            EntryFilter::SpiffeId(id) => (
                "SELECT id, body FROM writ_entries WHERE spiffe_id = $3 AND id > $1 \
                 ORDER BY id LIMIT $2",
                Some(id.to_string()),
            ),
            EntryFilter::Parent(id) => (
                "SELECT id, body FROM writ_entries WHERE parent_id = $3 AND id > $1 \
                 ORDER BY id LIMIT $2",
                Some(id.to_string()),
            ),
            EntryFilter::Selector(s) => (
                "SELECT e.id, e.body FROM writ_entry_selectors s JOIN writ_entries e \
                 ON e.id = s.entry_id WHERE s.selector = $3 AND e.id > $1 \
                 ORDER BY e.id LIMIT $2",
                Some(s.to_string()),
            ),
        };
        let mut after = after.to_owned();
        loop {
            // A page per call (and per connection checkout): the visitor runs between pages
            // without holding a connection.
            let rows = with_conn!(self, |c, _sent| {
                Ok(match &value {
                    None => c.query(sql, &[&after as P, &PAGE]).await?,
                    Some(v) => c.query(sql, &[&after as P, &PAGE, v]).await?,
                })
            })?;
            let n = rows.len() as i64;
            for r in rows {
                after = r.get::<_, String>(0);
                if !visit(dec_s(r.get(1))?) {
                    return Ok(());
                }
            }
            if n < PAGE {
                return Ok(());
            }
        }
    }

    pub(crate) fn pg_revision(&self) -> Result<u64, StoreError> {
        let row = with_conn!(self, |c, _sent| {
            Ok(c.query_one(
                "SELECT value FROM writ_counters WHERE name = 'revision'",
                &[],
            )
            .await?)
        })?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    pub(crate) fn pg_changes_since(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Change>, StoreError> {
        with_conn!(self, |c, sent| {
            let oldest: Option<i64> = c
                .query_one("SELECT min(revision) FROM writ_revlog", &[])
                .await?
                .get(0);
            if let Some(oldest) = oldest {
                if after + 1 < oldest as u64 {
                    return Err(StoreError::RevisionCompacted {
                        requested: after,
                        oldest: oldest as u64,
                    });
                }
            }
            let limit = limit.min(i64::MAX as usize) as i64;
            c.query(
                "SELECT body FROM writ_revlog WHERE revision > $1 ORDER BY revision LIMIT $2",
                &[&(after.min(i64::MAX as u64) as i64), &limit],
            )
            .await?
            .iter()
            .map(|r| dec_s(r.get(0)))
            .collect()
        })
    }

    pub(crate) fn pg_compact_log(&self, upto: u64) -> Result<(), StoreError> {
        with_conn!(self, |c, _sent| {
            c.execute(
                "DELETE FROM writ_revlog WHERE revision <= $1",
                &[&(upto.min(i64::MAX as u64) as i64)],
            )
            .await
            .map_err(StoreError::from)
        })?;
        Ok(())
    }
}
