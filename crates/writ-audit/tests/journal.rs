//! The journal's tamper evidence: every edit, removal, reorder and truncation is named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use writ_audit::{
    kinds, verify, Actor, Chain, Checkpoint, CheckpointError, NewRecord, Record, VerifyError,
    VerifyingKey,
};

struct Key {
    pair: EcdsaKeyPair,
    kid: String,
}

impl Key {
    fn new(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Key {
            pair,
            kid: kid.into(),
        }
    }

    fn verifying(&self) -> VerifyingKey {
        VerifyingKey {
            kid: self.kid.clone(),
            point: self.pair.public_key().as_ref().to_vec(),
        }
    }

    fn sign(&self, r: &Record) -> Checkpoint {
        Checkpoint::sign(r.seq, &r.hash, 1, &self.kid, |m| {
            self.pair
                .sign(&SystemRandom::new(), m)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| "sign".to_string())
        })
        .unwrap()
    }
}

/// A journal of `n` records with a checkpoint every 10 and at the end.
fn journal(n: u64, key: &Key) -> (Vec<Record>, Vec<Checkpoint>) {
    let mut c = Chain::default();
    let mut recs = Vec::new();
    let mut cps = Vec::new();
    for i in 0..n {
        let r = c.append(
            NewRecord::new(kinds::X509_ISSUED, Actor::agent("spiffe://td/writ/agent/a"))
                .spiffe_id("spiffe://td/w")
                .serial(format!("{i:04x}"))
                .detail("not_after", 1000 + i),
            1_700_000_000_000 + i as i64,
        );
        if (i + 1) % 10 == 0 || i + 1 == n {
            cps.push(key.sign(&r));
        }
        recs.push(r);
    }
    (recs, cps)
}

fn check(recs: &[Record], cps: &[Checkpoint], key: &Key) -> Result<u64, VerifyError> {
    verify(recs.iter().cloned().map(Ok), cps, &[key.verifying()], false).map(|r| r.records)
}

#[test]
fn an_intact_journal_verifies() {
    let k = Key::new("audit-1");
    let (recs, cps) = journal(95, &k);
    assert_eq!(check(&recs, &cps, &k), Ok(95));
}

#[test]
fn an_edit_names_the_record() {
    let k = Key::new("audit-1");
    let (mut recs, cps) = journal(30, &k);
    recs[16].spiffe_id = Some("spiffe://td/attacker".into());
    assert_eq!(check(&recs, &cps, &k), Err(VerifyError::Edited(17)));
    // Re-hashing the edited record breaks the link to the next one instead.
    recs[16].hash = recs[16].compute_hash();
    assert_eq!(check(&recs, &cps, &k), Err(VerifyError::BrokenLink(18)));
}

#[test]
fn a_removal_names_the_gap() {
    let k = Key::new("audit-1");
    let (mut recs, cps) = journal(30, &k);
    recs.remove(11);
    assert_eq!(
        check(&recs, &cps, &k),
        Err(VerifyError::Missing {
            missing: 12,
            before: 11,
            after: 13
        })
    );
}

#[test]
fn a_swap_is_reported_as_reordering() {
    let k = Key::new("audit-1");
    let (mut recs, cps) = journal(30, &k);
    recs.swap(4, 5);
    assert_eq!(
        check(&recs, &cps, &k),
        Err(VerifyError::Missing {
            missing: 5,
            before: 4,
            after: 6
        })
    );
    // Swapping the contents but keeping the numbers breaks the hashes.
    let (mut recs, cps) = journal(30, &k);
    let (a, b) = (recs[4].clone(), recs[5].clone());
    recs[4] = Record { seq: 5, ..b };
    recs[5] = Record { seq: 6, ..a };
    assert_eq!(check(&recs, &cps, &k), Err(VerifyError::Edited(5)));
}

#[test]
fn a_dropped_tail_is_detected_by_the_newest_checkpoint() {
    let k = Key::new("audit-1");
    let (mut recs, cps) = journal(30, &k);
    recs.truncate(25);
    assert_eq!(
        check(&recs, &cps, &k),
        Err(VerifyError::Truncated {
            end: 25,
            signed: 30
        })
    );
}

#[test]
fn records_appended_without_the_key_are_unsigned() {
    let k = Key::new("audit-1");
    let (mut recs, cps) = journal(30, &k);
    let mut c = Chain::resume(30, recs[29].hash.clone());
    recs.push(c.append(NewRecord::new("entry.created", Actor::operator(0)), 0));
    assert_eq!(
        check(&recs, &cps, &k),
        Err(VerifyError::Unsigned { from: 31, to: 31 })
    );
}

#[test]
fn checkpoints_by_unknown_keys_or_forged_are_refused() {
    let k = Key::new("audit-1");
    let other = Key::new("audit-9");
    let (recs, cps) = journal(10, &k);
    assert_eq!(
        check(&recs, &cps, &other),
        Err(VerifyError::Checkpoint(CheckpointError::UnknownKey {
            seq: 10,
            kid: "audit-1".into()
        }))
    );
    // Same kid, wrong key: the signature does not verify.
    let impostor = Key {
        kid: "audit-1".into(),
        ..Key::new("x")
    };
    assert_eq!(
        check(&recs, &cps, &impostor),
        Err(VerifyError::Checkpoint(CheckpointError::BadSignature(10)))
    );
}

#[test]
fn keys_from_the_journal_are_trusted_only_when_asked_and_vouched_for() {
    // Two servers share a journal: `a` (pinned here) and `b`, whose key only the journal names.
    let a = Key::new("audit-a");
    let b = Key::new("audit-b");
    let mut c = Chain::default();
    let intro = c.append(
        NewRecord::new(kinds::AUDIT_KEY, Actor::server())
            .detail("kid", "audit-b")
            .detail("point", hex(&b.verifying().point)),
        0,
    );
    let by_b = c.append(NewRecord::new("entry.created", Actor::operator(0)), 1);
    let by_a = c.append(NewRecord::new("entry.created", Actor::operator(0)), 2);
    let cps = vec![b.sign(&by_b), a.sign(&by_a)];
    let recs = [intro, by_b, by_a];
    let pinned = [a.verifying()];
    // b's checkpoint is accepted once a's (trusted) checkpoint covers b's key record.
    assert!(verify(recs.iter().cloned().map(Ok), &cps, &pinned, true).is_ok());
    // Not asked to trust journal keys: b's checkpoint has an unknown key.
    assert!(verify(recs.iter().cloned().map(Ok), &cps, &pinned, false).is_err());
    // A key that names itself, with no trusted checkpoint after it, is not trusted.
    assert!(verify(recs[..2].iter().cloned().map(Ok), &cps[..1], &pinned, true).is_err());
    assert!(verify(recs.iter().cloned().map(Ok), &cps, &[], true).is_err());
}

/// Someone who can write the database (not the keys) rewrites a shared journal from the first
/// record under a key of their own, named by an `audit.key` record they put first, and signs
/// every checkpoint with it: the server's pinned key vouches for none of it, so it fails.
#[test]
fn a_journal_rewritten_under_a_self_named_key_fails() {
    let real = Key::new("audit-real");
    let forger = Key::new("audit-forged");
    let mut c = Chain::default();
    let mut recs = vec![c.append(
        NewRecord::new(kinds::AUDIT_KEY, Actor::server())
            .detail("kid", "audit-forged")
            .detail("point", hex(&forger.verifying().point)),
        0,
    )];
    for i in 0..5 {
        recs.push(c.append(NewRecord::new("entry.created", Actor::operator(0)), i));
    }
    let cps: Vec<_> = recs.iter().skip(1).map(|r| forger.sign(r)).collect();
    let res = verify(recs.into_iter().map(Ok), &cps, &[real.verifying()], true);
    assert!(
        matches!(
            res,
            Err(VerifyError::Checkpoint(CheckpointError::UnknownKey { .. }))
        ),
        "{res:?}"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

proptest::proptest! {
    /// Any single-field edit of any record is detected.
    #[test]
    fn any_edit_is_detected(at in 0usize..40, what in 0u8..5, s in "[a-z]{1,8}") {
        let k = Key::new("audit-1");
        let (mut recs, cps) = journal(40, &k);
        let r = &mut recs[at];
        match what {
            0 => r.kind = format!("{}x", r.kind),
            1 => r.serial = Some(s),
            2 => { r.details.insert("x".into(), s.into()); }
            3 => r.time = format!("{}{}", r.time, s),
            _ => r.actor.uid = Some(7),
        }
        proptest::prop_assert!(check(&recs, &cps, &k).is_err());
    }
}
