//! The entry sync stream of the Node API: a snapshot of the agent's authorised set in pages,
//! then, on every committed change that could concern the agent, the difference.
//!
//! Invariants: every message stays within the page limits of [`crate::paging`] whatever the
//! entries hold; an agent only advances its revision when it has everything up to it (a change
//! split over several messages carries the new revision only on its last message); a change is
//! considered by its entry as it is now and as it was before (see [`change_touches`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tonic::Status;
use writ_core::{AttestedNode, Entry, SpiffeId};
use writ_proto::convert::entry_to_pb;
use writ_proto::v1 as pb;

use crate::index::EntryIndex;
use crate::paging::{field_len, Pager};
use crate::state::{Event, ServerState, StreamEnd};

/// Snapshot in pages, then a diff of the authorised set on every relevant change.
pub(crate) async fn sync_loop(
    st: &Arc<ServerState>,
    node: AttestedNode,
    after: u64,
    mut events: broadcast::Receiver<Event>,
    tx: &mpsc::Sender<Result<pb::SyncEntriesResponse, Status>>,
) -> Result<(), StreamEnd> {
    let send = |msg| async move { tx.send(Ok(msg)).await.map_err(|_| StreamEnd::AgentGone) };
    let (mut revision, mut identities, mut set) = st.authorized(&node);
    if after > revision && st.store.shared() {
        // An agent that failed over from a server further along the shared log: catch up
        // first, or a snapshot older than its copy would take entries away from it.
        if let Err(e) = st.catch_up().await {
            tracing::warn!(error = %e, "could not catch up for an agent ahead of this server");
        }
        (revision, identities, set) = st.authorized(&node);
        if after > revision {
            return Err(StreamEnd::Behind(after));
        }
    }
    let mut watch_ids = watched_ids(&identities, &set);
    if after != 0 && after <= revision && nothing_changed_for(st, &watch_ids, &set, after, revision)
    {
        // Nothing that concerns this agent changed since its copy: it keeps what it has.
        send(pb::SyncEntriesResponse {
            event: Some(pb::sync_entries_response::Event::Snapshot(
                pb::SnapshotPage {
                    entries: Vec::new(),
                    last: true,
                    revision,
                    unchanged: true,
                },
            )),
        })
        .await?;
    } else {
        // Pages cut by count and by size (see `paging`); the last one says so.
        let mut page = Vec::new();
        let mut pager = Pager::default();
        for e in &set {
            let p = entry_to_pb(e);
            let len = field_len(&p);
            if !pager.fits(len) {
                send(snapshot_page(std::mem::take(&mut page), false, revision)).await?;
                pager.next_page();
            }
            pager.add(len);
            page.push(p);
        }
        send(snapshot_page(page, true, revision)).await?;
    }
    // The revision the agent holds completely once what was sent so far is applied.
    let mut sent = revision;
    let mut current: HashMap<String, u64> =
        set.iter().map(|e| (e.id.clone(), e.revision)).collect();
    let mut next_expiry = next_expiry(&set);
    loop {
        let sleep = tokio::time::sleep(Duration::from_secs(
            next_expiry
                .map(|t| (t - writ_core::now_unix()).clamp(0, 3600) as u64)
                .unwrap_or(3600),
        ));
        let recompute_at;
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(Event::Entry(c)) => {
                    if c.revision <= revision || !change_touches(&c, &watch_ids, &current) {
                        continue;
                    }
                    recompute_at = c.revision;
                }
                Ok(Event::NodeGone(id)) if id == node.spiffe_id => {
                    return Err(StreamEnd::NodeGone);
                }
                Ok(Event::NodeGone(_)) => continue,
                Ok(Event::Shutdown) => return Err(StreamEnd::Shutdown),
                Ok(Event::CheckNodes) => match st.store.get_node(&node.spiffe_id) {
                    Ok(Some(n)) if !n.banned => continue,
                    Ok(_) => return Err(StreamEnd::NodeGone),
                    // The store is away: the next check (or call) decides.
                    Err(_) => continue,
                },
                Ok(Event::PolicyChanged) => {
                    recompute_at = st.index.read().unwrap_or_else(|p| p.into_inner()).revision();
                }
                // Missed events: recompute from the index, which is always current.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    recompute_at = st.index.read().unwrap_or_else(|p| p.into_inner()).revision();
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = sleep => {
                recompute_at = st.index.read().unwrap_or_else(|p| p.into_inner()).revision();
            }
            _ = tx.closed() => return Ok(()),
        }
        // A burst of changes (a bulk create commits thousands) is folded into one recomputation:
        // whatever is already queued is covered by the set computed next, so computing it per
        // change would cost O(changes x set) for nothing.
        loop {
            match events.try_recv() {
                Ok(Event::NodeGone(id)) if id == node.spiffe_id => {
                    return Err(StreamEnd::NodeGone);
                }
                Ok(Event::Shutdown) => return Err(StreamEnd::Shutdown),
                Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        // The set is exactly the index as of `as_of`, which is at least `recompute_at`.
        let (as_of, identities, set) = st.authorized(&node);
        let recompute_at = recompute_at.max(as_of);
        let mut upserts = Vec::new();
        let mut next: HashMap<String, u64> = HashMap::with_capacity(set.len());
        for e in &set {
            if current.get(&e.id) != Some(&e.revision) {
                upserts.push(entry_to_pb(e));
            }
            next.insert(e.id.clone(), e.revision);
        }
        let removed_ids: Vec<String> = current
            .keys()
            .filter(|k| !next.contains_key(*k))
            .cloned()
            .collect();
        current = next;
        watch_ids = watched_ids(&identities, &set);
        next_expiry = self::next_expiry(&set);
        if upserts.is_empty() && removed_ids.is_empty() {
            continue;
        }
        for msg in change_messages(upserts, removed_ids, sent, recompute_at) {
            send(msg).await?;
        }
        sent = recompute_at;
    }
}

/// Most log records read to decide whether a resuming agent's copy is still current.
pub(crate) const MAX_RESUME_SCAN: usize = 10_000;

/// Whether no change in the revision log between `after` (exclusive) and `revision` (inclusive)
/// could have altered what an agent holds (`watch`: its identities and its entries' SPIFFE IDs).
/// A change matters when its entry (new or previous version) is one of the agent's entries, is parented to one of its identities or entries, or
/// is a node alias. Cost: proportional to the changes since `after`, never to all entries. When
/// the log no longer reaches back to `after` (compacted) or is too long, the answer is no and the
/// agent gets a snapshot.
fn nothing_changed_for(
    st: &ServerState,
    watch: &HashSet<SpiffeId>,
    set: &[Arc<Entry>],
    after: u64,
    revision: u64,
) -> bool {
    // The set also depends on the policy in force, which the revision log does not record.
    if st.policy.current().is_some() {
        return false;
    }
    if after == revision {
        return true;
    }
    let Ok(changes) = st.store.changes_since(after, MAX_RESUME_SCAN) else {
        return false;
    };
    let covers = changes.first().is_some_and(|c| c.revision == after + 1)
        && changes.last().is_some_and(|c| c.revision >= revision);
    if !covers {
        return false;
    }
    let current: HashMap<String, u64> = set.iter().map(|e| (e.id.clone(), e.revision)).collect();
    !changes
        .iter()
        .filter(|c| c.revision <= revision)
        .any(|c| change_touches(c, watch, &current))
}

/// Whether a change could alter the set of an agent watching `watch` (its identities and its
/// entries' SPIFFE IDs) and holding `current`: the entry as it is now, or as it was before an
/// update (a node alias turned into a plain entry withdraws whatever hung under it).
fn change_touches<V>(
    c: &writ_store::Change,
    watch: &HashSet<SpiffeId>,
    current: &HashMap<String, V>,
) -> bool {
    EntryIndex::touches(&c.entry, watch, current)
        || c.previous
            .as_ref()
            .is_some_and(|p| EntryIndex::touches(p, watch, current))
}

fn snapshot_page(entries: Vec<pb::Entry>, last: bool, revision: u64) -> pb::SyncEntriesResponse {
    pb::SyncEntriesResponse {
        event: Some(pb::sync_entries_response::Event::Snapshot(
            pb::SnapshotPage {
                entries,
                last,
                revision,
                unchanged: false,
            },
        )),
    }
}

/// One change of the authorised set as messages within the page limits. Every message but the
/// last carries `before` (the revision the agent already holds completely) and only the last
/// carries `revision`: an agent that loses the stream part-way through resumes from `before`,
/// so the resume check sees the change again instead of taking a half-applied change as done.
fn change_messages(
    upserts: Vec<pb::Entry>,
    removed_ids: Vec<String>,
    before: u64,
    revision: u64,
) -> Vec<pb::SyncEntriesResponse> {
    let mut parts = vec![pb::EntryChange::default()];
    let mut pager = Pager::default();
    let mut room = |len: usize, parts: &mut Vec<pb::EntryChange>| {
        if !pager.fits(len) {
            parts.push(pb::EntryChange::default());
            pager.next_page();
        }
        pager.add(len);
    };
    for u in upserts {
        room(field_len(&u), &mut parts);
        if let Some(p) = parts.last_mut() {
            p.upserts.push(u);
        }
    }
    for id in removed_ids {
        room(id.len() + 3, &mut parts);
        if let Some(p) = parts.last_mut() {
            p.removed_ids.push(id);
        }
    }
    let n = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            c.revision = if i + 1 == n { revision } else { before };
            pb::SyncEntriesResponse {
                event: Some(pb::sync_entries_response::Event::Change(c)),
            }
        })
        .collect()
}

/// IDs whose children matter to this agent: its identities and its entries' SPIFFE IDs.
fn watched_ids(identities: &[SpiffeId], set: &[Arc<Entry>]) -> HashSet<SpiffeId> {
    identities
        .iter()
        .cloned()
        .chain(set.iter().map(|e| e.spiffe_id.clone()))
        .collect()
}

fn next_expiry(set: &[Arc<Entry>]) -> Option<i64> {
    set.iter().filter_map(|e| e.expires_at).min()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn big(i: usize) -> pb::Entry {
        pb::Entry {
            id: format!("e{i}"),
            dns_names: vec!["x".repeat(250); 64],
            ..Default::default()
        }
    }

    #[test]
    fn a_large_change_is_split_and_only_its_last_part_advances_the_revision() {
        let upserts: Vec<_> = (0..300).map(big).collect();
        let removed: Vec<_> = (0..1000).map(|i| format!("gone{i}")).collect();
        let msgs = change_messages(upserts, removed, 7, 9);
        assert!(msgs.len() > 3, "{} messages", msgs.len());
        let mut ups = 0;
        let mut rem = 0;
        for (i, m) in msgs.iter().enumerate() {
            use prost::Message;
            assert!(m.encoded_len() < 2 * crate::paging::PAGE_BYTES);
            let Some(pb::sync_entries_response::Event::Change(c)) = &m.event else {
                panic!("not a change")
            };
            assert_eq!(c.revision, if i + 1 == msgs.len() { 9 } else { 7 });
            ups += c.upserts.len();
            rem += c.removed_ids.len();
        }
        assert_eq!((ups, rem), (300, 1000));
        // A small change stays one message.
        assert_eq!(change_messages(vec![big(1)], vec![], 7, 9).len(), 1);
    }
}
