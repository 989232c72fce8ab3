//! Behaviour of the sled store: entries and their indexes, the revision log, nodes, join tokens,
//! bundles and the CA journal, each surviving a reopen: every case runs against both backends,
//! sled and a private PostgreSQL cluster (`writ_testkit::PgCluster`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cloned_ref_to_slice_refs
)]

use writ_core::{AttestedNode, Bundle, Entry, JoinToken, Selector, SpiffeId, TrustDomain};
use writ_store::{ChangeKind, PgSettings, PgStore, SledStore, Store, StoreError};
use writ_testkit::{PgCluster, PG_PASSWORD};

/// Where a case's store lives; `open` opens it (again).
enum Backend {
    Sled(tempfile::TempDir),
    Pg(PgCluster),
}

impl Backend {
    fn open(&self) -> Box<dyn Store> {
        match self {
            Backend::Sled(d) => Box::new(SledStore::open(d.path()).unwrap()),
            Backend::Pg(c) => Box::new(
                PgStore::open(PgSettings {
                    url: c.url(),
                    password: Some(PG_PASSWORD.into()),
                    instance: "test".into(),
                    ca_pem: None,
                })
                .unwrap(),
            ),
        }
    }
}

/// Runs `case` against sled, then against PostgreSQL.
fn each(case: fn(&Backend)) {
    case(&Backend::Sled(tempfile::tempdir().unwrap()));
    case(&Backend::Pg(PgCluster::start()));
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn entry(spiffe: &str, parent: &str, sels: &[&str]) -> Entry {
    Entry {
        owner: "team".into(),
        purpose: "test".into(),
        ..Entry::new(
            id(spiffe),
            id(parent),
            sels.iter().map(|s| Selector::parse(s).unwrap()).collect(),
        )
    }
}

const AGENT: &str = "spiffe://td/writ/agent/join_token/a";

#[test]
fn entries_crud_indexes_and_revision_log() {
    each(entries_crud_indexes_and_revision_log_on);
}

fn entries_crud_indexes_and_revision_log_on(be: &Backend) {
    let s = be.open();
    assert_eq!(s.revision().unwrap(), 0);
    let a = s
        .create_entry(entry("spiffe://td/a", AGENT, &["unix:uid:1", "unix:gid:2"]))
        .unwrap();
    let b = s
        .create_entry(entry("spiffe://td/b", AGENT, &["unix:uid:1"]))
        .unwrap();
    let c = s
        .create_entry(entry("spiffe://td/c", "spiffe://td/other", &["unix:uid:3"]))
        .unwrap();
    assert_eq!((a.revision, b.revision, c.revision), (1, 2, 3));
    assert!(!a.id.is_empty() && a.id != b.id);
    assert!(a.created_at > 0);

    // Duplicate (same id, parent and selectors in any order) is refused and changes nothing.
    let dup = s.create_entry(entry("spiffe://td/a", AGENT, &["unix:gid:2", "unix:uid:1"]));
    assert!(matches!(dup, Err(StoreError::AlreadyExists { .. })));
    assert_eq!(s.revision().unwrap(), 3);

    let names = |v: Vec<Entry>| {
        let mut n: Vec<String> = v.into_iter().map(|e| e.spiffe_id.to_string()).collect();
        n.sort();
        n
    };
    assert_eq!(
        names(s.entries_by_parent(&id(AGENT)).unwrap()),
        ["spiffe://td/a", "spiffe://td/b"]
    );
    assert_eq!(
        names(
            s.entries_by_selector(&Selector::parse("unix:uid:1").unwrap())
                .unwrap()
        ),
        ["spiffe://td/a", "spiffe://td/b"]
    );
    assert_eq!(
        names(s.entries_by_spiffe_id(&id("spiffe://td/c")).unwrap()),
        ["spiffe://td/c"]
    );
    // A prefix of an indexed value does not match.
    assert!(s
        .entries_by_parent(&id("spiffe://td/writ/agent/join_token"))
        .unwrap()
        .is_empty());

    // Update moves index keys.
    let mut a2 = a.clone();
    a2.parent_id = id("spiffe://td/other");
    a2.selectors = vec![Selector::parse("unix:uid:9").unwrap()];
    a2.created_at = 12345; // ignored: created_at is kept
    let a2 = s.update_entry(a2).unwrap();
    assert_eq!(a2.revision, 4);
    assert_eq!(a2.created_at, a.created_at);
    assert_eq!(
        names(s.entries_by_parent(&id(AGENT)).unwrap()),
        ["spiffe://td/b"]
    );
    assert!(s
        .entries_by_selector(&Selector::parse("unix:gid:2").unwrap())
        .unwrap()
        .is_empty());

    let gone = s.delete_entry(&b.id).unwrap();
    assert_eq!(gone.spiffe_id, b.spiffe_id);
    assert!(s.get_entry(&b.id).unwrap().is_none());
    assert!(matches!(
        s.delete_entry(&b.id),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.update_entry(b.clone()),
        Err(StoreError::NotFound { .. })
    ));

    // The log reads from any revision.
    let log = s.changes_since(0, 100).unwrap();
    let kinds: Vec<_> = log.iter().map(|c| (c.revision, c.kind)).collect();
    assert_eq!(
        kinds,
        [
            (1, ChangeKind::Created),
            (2, ChangeKind::Created),
            (3, ChangeKind::Created),
            (4, ChangeKind::Updated),
            (5, ChangeKind::Deleted)
        ]
    );
    assert_eq!(s.changes_since(3, 100).unwrap().len(), 2);
    assert_eq!(s.changes_since(3, 1).unwrap().len(), 1);
    assert!(s.changes_since(5, 100).unwrap().is_empty());

    // Compaction: old revisions are gone and asking for them says so.
    s.compact_log(2).unwrap();
    assert!(matches!(
        s.changes_since(0, 10),
        Err(StoreError::RevisionCompacted { oldest: 3, .. })
    ));
    assert_eq!(s.changes_since(2, 10).unwrap().len(), 3);
    drop(s);

    // Everything survives a reopen.
    let s = be.open();
    assert_eq!(s.revision().unwrap(), 5);
    assert_eq!(s.list_entries().unwrap().len(), 2);
    assert_eq!(
        s.get_entry(&a.id).unwrap().unwrap().parent_id,
        id("spiffe://td/other")
    );
    let e = s
        .create_entry(entry("spiffe://td/d", AGENT, &["unix:uid:4"]))
        .unwrap();
    assert_eq!(e.revision, 6);
}

#[test]
fn join_tokens_are_single_use_and_expire() {
    each(join_tokens_are_single_use_and_expire_on);
}

fn join_tokens_are_single_use_and_expire_on(be: &Backend) {
    let s = be.open();
    s.create_join_token(JoinToken {
        token: "t1".into(),
        spiffe_id: Some(id("spiffe://td/node/1")),
        expires_at: 100,
    })
    .unwrap();
    s.create_join_token(JoinToken {
        token: "t2".into(),
        spiffe_id: None,
        expires_at: 50,
    })
    .unwrap();
    assert!(s
        .create_join_token(JoinToken {
            token: "t1".into(),
            spiffe_id: None,
            expires_at: 100
        })
        .is_err());
    let t = s.consume_join_token("t1", 10).unwrap();
    assert_eq!(t.spiffe_id, Some(id("spiffe://td/node/1")));
    assert!(matches!(
        s.consume_join_token("t1", 10),
        Err(StoreError::TokenInvalid)
    ));
    assert!(matches!(
        s.consume_join_token("nope", 10),
        Err(StoreError::TokenInvalid)
    ));
    assert!(matches!(
        s.consume_join_token("t2", 50),
        Err(StoreError::TokenExpired)
    ));
    // An expired token is used up too.
    assert!(matches!(
        s.consume_join_token("t2", 0),
        Err(StoreError::TokenInvalid)
    ));
    s.create_join_token(JoinToken {
        token: "t3".into(),
        spiffe_id: None,
        expires_at: 5,
    })
    .unwrap();
    assert_eq!(s.prune_join_tokens(10).unwrap(), 1);
}

#[test]
fn nodes_bundles_and_journal() {
    each(nodes_bundles_and_journal_on);
}

fn nodes_bundles_and_journal_on(be: &Backend) {
    let s = be.open();
    let n = AttestedNode {
        spiffe_id: id(AGENT),
        attestor: "join_token".into(),
        selectors: vec![],
        cert_serial: "ab".into(),
        cert_not_after: 99,
        prev_cert_serial: String::new(),
        aliases: vec![],
        banned: false,
        created_at: 1,
        revision: 0,
    };
    s.put_node(n.clone()).unwrap();
    assert_eq!(s.get_node(&id(AGENT)).unwrap(), Some(n.clone()));
    assert_eq!(s.list_nodes().unwrap().len(), 1);
    s.delete_node(&id(AGENT)).unwrap();
    assert!(s.get_node(&id(AGENT)).unwrap().is_none());
    assert!(matches!(
        s.delete_node(&id(AGENT)),
        Err(StoreError::NotFound { .. })
    ));

    let td = TrustDomain::new("other.org").unwrap();
    let mut b = Bundle::new(td.clone());
    b.sequence = 4;
    s.put_bundle(&b).unwrap();
    assert_eq!(s.get_bundle(&td).unwrap(), Some(b));
    assert_eq!(s.list_bundles().unwrap().len(), 1);
    s.delete_bundle(&td).unwrap();
    assert!(s.delete_bundle(&td).is_err());

    assert!(s.get_ca_journal().unwrap().is_none());
    s.put_ca_journal(b"{\"x509\":[]}").unwrap();
    drop(s);
    let s = be.open();
    assert_eq!(s.get_ca_journal().unwrap().unwrap(), b"{\"x509\":[]}");
}

#[test]
fn bulk_create_refuses_duplicates_whole() {
    each(bulk_create_refuses_duplicates_whole_on);
}

fn bulk_create_refuses_duplicates_whole_on(be: &Backend) {
    let s = be.open();
    let many: Vec<Entry> = (0..2000)
        .map(|i| {
            entry(
                &format!("spiffe://td/w/{i}"),
                "spiffe://td/agent",
                &["unix:uid:1"],
            )
        })
        .collect();
    let created = s.create_entries(many).unwrap();
    assert_eq!(created.len(), 2000);
    let rev = s.revision().unwrap();
    // The same registration twice in one batch (selectors in another order): refused whole.
    let a = entry(
        "spiffe://td/x",
        "spiffe://td/agent",
        &["unix:uid:1", "unix:gid:2"],
    );
    let b = entry(
        "spiffe://td/x",
        "spiffe://td/agent",
        &["unix:gid:2", "unix:uid:1"],
    );
    let fresh = entry("spiffe://td/y", "spiffe://td/agent", &["unix:uid:1"]);
    let err = s
        .create_entries(vec![fresh.clone(), a.clone(), b])
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    // One repeating a stored registration, or reusing a stored or batch ID: refused whole.
    let dup = entry("spiffe://td/w/7", "spiffe://td/agent", &["unix:uid:1"]);
    assert!(s.create_entries(vec![fresh.clone(), dup]).is_err());
    let mut same_id = fresh.clone();
    same_id.id = created[0].id.clone();
    assert!(s.create_entries(vec![same_id]).is_err());
    let (mut p, mut q) = (fresh.clone(), a.clone());
    p.id = "one".into();
    q.id = "one".into();
    assert!(s.create_entries(vec![p, q]).is_err());
    assert_eq!(s.revision().unwrap(), rev, "refused batches write nothing");
    assert_eq!(s.list_entries().unwrap().len(), 2000);
    assert_eq!(s.create_entries(vec![fresh, a]).unwrap().len(), 2);
}

/// `update_node` is a read-modify-write that no other node write can slip into: 16 threads
/// each do 20 "renewals" (read the record, bump the serial, write it back unless banned) while
/// the main thread bans the node, then evicts it. The ban must stick (no renewal writes the
/// record back unbanned) and the eviction must stick (no renewal recreates the record).
#[test]
fn node_updates_cannot_undo_a_ban_or_an_eviction() {
    each(node_updates_cannot_undo_a_ban_or_an_eviction_on);
}

fn node_updates_cannot_undo_a_ban_or_an_eviction_on(be: &Backend) {
    use std::sync::Arc;
    use writ_store::NodeUpdate;
    let s = Arc::<dyn Store>::from(be.open());
    let node = AttestedNode {
        spiffe_id: id(AGENT),
        attestor: "join_token".into(),
        selectors: vec![],
        cert_serial: "0".into(),
        cert_not_after: 99,
        prev_cert_serial: String::new(),
        aliases: vec![],
        banned: false,
        created_at: 1,
        revision: 0,
    };
    for evict in [false, true] {
        s.put_node(node.clone()).unwrap();
        let renewers: Vec<_> = (0..16)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..20 {
                        s.update_node(&id(AGENT), &mut |cur| match cur {
                            Some(n) if !n.banned => NodeUpdate::Put(AttestedNode {
                                cert_serial: format!("{t}-{i}"),
                                ..n.clone()
                            }),
                            _ => NodeUpdate::Keep,
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        if evict {
            s.delete_node(&id(AGENT)).unwrap();
        } else {
            s.update_node(&id(AGENT), &mut |cur| match cur {
                Some(n) => NodeUpdate::Put(AttestedNode {
                    banned: true,
                    ..n.clone()
                }),
                None => NodeUpdate::Keep,
            })
            .unwrap();
        }
        for r in renewers {
            r.join().unwrap();
        }
        let now = s.get_node(&id(AGENT)).unwrap();
        if evict {
            assert!(now.is_none(), "the eviction was undone: {now:?}");
        } else {
            assert!(now.unwrap().banned, "the ban was lost");
        }
    }
}

/// `scan_entries` walks entries in ID order from just after a token, with or without an index
/// filter, and stops when told: what paged listings are built on.
#[test]
fn scan_entries_pages_in_id_order() {
    each(scan_entries_pages_in_id_order_on);
}

fn scan_entries_pages_in_id_order_on(be: &Backend) {
    use writ_store::EntryFilter;
    let s = be.open();
    let mut ids = Vec::new();
    for i in 0..30 {
        let parent = if i % 3 == 0 { "spiffe://td/p3" } else { AGENT };
        let e = s
            .create_entry(entry(&format!("spiffe://td/w{i}"), parent, &["unix:uid:1"]))
            .unwrap();
        ids.push((e.id, parent));
    }
    ids.sort();
    let p3 = id("spiffe://td/p3");
    for (filter, want) in [
        (
            EntryFilter::All,
            ids.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(),
        ),
        (
            EntryFilter::Parent(&p3),
            ids.iter()
                .filter(|(_, p)| *p == "spiffe://td/p3")
                .map(|(i, _)| i.clone())
                .collect(),
        ),
    ] {
        // Pages of 4, each starting after the last ID of the previous one.
        let mut got = Vec::new();
        let mut after = String::new();
        loop {
            let mut page = Vec::new();
            s.scan_entries(filter, &after, &mut |e| {
                page.push(e.id);
                page.len() < 4
            })
            .unwrap();
            let Some(last) = page.last().cloned() else {
                break;
            };
            got.extend(page);
            after = last;
        }
        assert_eq!(got, want);
    }
}

/// A connection cut in the middle of a bulk write (the backend terminated while the
/// transaction runs) leaves nothing behind: the write fails with an error naming the cause, the
/// revision and the entries are as before, and the store works again on the next call.
#[test]
fn postgres_write_cut_midway_leaves_nothing() {
    let pg = PgCluster::start();
    let be = Backend::Pg(pg);
    let s = be.open();
    s.create_entry(entry("spiffe://td/before", AGENT, &["unix:uid:1"]))
        .unwrap();
    let Backend::Pg(pg) = &be else { unreachable!() };
    let batch: Vec<Entry> = (0..20_000)
        .map(|i| entry(&format!("spiffe://td/bulk/{i}"), AGENT, &["unix:uid:2"]))
        .collect();
    let done = std::sync::atomic::AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            // Cut every other connection of the database until the write returns.
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                pg.psql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = 'writ' AND pid <> pg_backend_pid() \
                     AND query LIKE '%writ_entr%'",
                );
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        });
        let r = s.create_entries(batch);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    });
    let n = s.list_entries().unwrap().len();
    match result {
        Err(e) => {
            let msg = e.to_string();
            eprintln!("cut write refused: {msg}");
            assert!(msg.starts_with("datastore"), "{msg}");
            assert_eq!(n, 1, "a failed bulk write left entries behind");
            assert_eq!(s.revision().unwrap(), 1);
        }
        // The write can win the race; then all of it is there.
        Ok(v) => assert_eq!((v.len(), n), (20_000, 20_001)),
    }
    // The pool replaced the cut connection.
    s.create_entry(entry("spiffe://td/after", AGENT, &["unix:uid:1"]))
        .unwrap();
}

fn pg_open(pg: &PgCluster, instance: &str) -> PgStore {
    PgStore::open(PgSettings {
        url: pg.url(),
        password: Some(PG_PASSWORD.into()),
        instance: instance.into(),
        ca_pem: None,
    })
    .unwrap()
}

/// Two servers revoke at the same time (16 threads each adding one serial through
/// `update_revocations`): every revocation is in the stored list afterwards. A read-merge-write
/// without the store's lock lost some (the last writer's list won).
#[test]
fn postgres_concurrent_revocations_from_two_servers_all_stay() {
    let pg = PgCluster::start();
    let (a, b) = (pg_open(&pg, "a"), pg_open(&pg, "b"));
    std::thread::scope(|scope| {
        for (i, s) in [&a, &b].into_iter().cycle().take(16).enumerate() {
            scope.spawn(move || {
                for n in 0..5 {
                    s.update_revocations(&mut |cur| {
                        let mut list: Vec<String> = cur
                            .map(|b| serde_json::from_slice(b).unwrap())
                            .unwrap_or_default();
                        list.push(format!("{i}-{n}"));
                        serde_json::to_vec(&list).unwrap()
                    })
                    .unwrap();
                }
            });
        }
    });
    let list: Vec<String> = serde_json::from_slice(&b.get_revocations().unwrap().unwrap()).unwrap();
    assert_eq!(list.len(), 80, "{list:?}");
}

/// Many callers at once on a fresh store never open more connections than the pool's size
/// (4, plus the listener): the slot is taken before connecting.
#[test]
fn postgres_pool_stays_within_its_size() {
    let pg = PgCluster::start();
    let s = pg_open(&pg, "a");
    std::thread::scope(|scope| {
        for _ in 0..16 {
            scope.spawn(|| {
                for _ in 0..20 {
                    s.list_entries().unwrap();
                }
            });
        }
    });
    let n: usize = pg
        .psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'writ-server'")
        .parse()
        .unwrap();
    assert!(n <= 5, "{n} connections");
}

/// Two servers recompute the trust domain's bundle at the same time from their own shares:
/// the stored bundle ends with both shares' authorities, and no two writes shared a sequence.
#[test]
fn postgres_own_bundle_is_the_union_of_shares_under_a_lock() {
    let pg = PgCluster::start();
    let (a, b) = (pg_open(&pg, "a"), pg_open(&pg, "b"));
    let td = TrustDomain::new("td").unwrap();
    let share = |der: u8| Bundle {
        x509_authorities: vec![vec![der]],
        ..Bundle::new(td.clone())
    };
    let seqs = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for (i, s) in [&a, &b].into_iter().enumerate() {
            let (seqs, share) = (&seqs, share(i as u8 + 1));
            scope.spawn(move || {
                s.update_own_bundle(&share, &mut |shares, stored| {
                    let mut next = Bundle::new(share.trust_domain.clone());
                    for sh in shares {
                        next.x509_authorities.extend(sh.x509_authorities);
                    }
                    next.sequence = stored.map_or(0, |b| b.sequence) + 1;
                    seqs.lock().unwrap().push(next.sequence);
                    Some(next)
                })
                .unwrap();
            });
        }
    });
    let stored = a.get_bundle(&td).unwrap().unwrap();
    assert_eq!(stored.x509_authorities.len(), 2, "{stored:?}");
    let mut seqs = seqs.into_inner().unwrap();
    seqs.sort();
    assert_eq!(seqs, vec![1, 2]);
}
