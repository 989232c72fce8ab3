//! CA and JWT key rotation through the journal: prepare at 1/2, activate at 5/6, publish before
//! signing, drop after expiry, and resume from a persisted journal.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cloned_ref_to_slice_refs
)]

use std::sync::Arc;

use writ_ca::{CaConfig, CaJournal, CaManager, DiskKeyManager, KeyManager, KeyType, SlotState};
use writ_core::TrustDomain;

const T0: i64 = 1_800_000_000;

fn config(ttl: i64) -> CaConfig {
    CaConfig {
        trust_domain: TrustDomain::new("example.org").unwrap(),
        key_type: KeyType::EcP256,
        ca_ttl_secs: ttl,
        jwt_key_ttl_secs: ttl,
        jwt_issuer: None,
    }
}

fn states(j: &CaJournal) -> Vec<SlotState> {
    j.x509.iter().map(|s| s.state).collect()
}

#[test]
fn rotation_follows_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Arc<dyn KeyManager> = Arc::new(DiskKeyManager::open(dir.path()).unwrap());
    // The CA cert is backdated 10 s, so its lifetime is 610 s from T0-10.
    let mut m =
        CaManager::open(config(600), keys.clone(), None, None, T0, &mut |_| Ok(())).unwrap();
    assert_eq!(states(m.journal()), vec![SlotState::Active]);
    assert_eq!(m.journal().jwt.len(), 1);
    let first = m.x509_authority().cert_der().to_vec();
    let first_kid = m.jwt_signer().kid().to_owned();
    assert_eq!(m.x509_roots(), vec![first.clone()]);

    // Before half-life nothing happens.
    assert!(!m.tick(T0 + 200, &mut |_| Ok(())).unwrap());
    // At half-life a CA is prepared and published, but the old one still signs. (The X.509 CA
    // half-life is T0-10+305, the JWT key's T0+300.)
    let half = T0 + 300;
    assert!(m.next_event() <= half);
    assert!(m.tick(half, &mut |_| Ok(())).unwrap());
    assert_eq!(
        states(m.journal()),
        vec![SlotState::Active, SlotState::Prepared]
    );
    assert_eq!(m.x509_authority().cert_der(), &first[..]);
    assert_eq!(
        m.x509_roots().len(),
        2,
        "prepared CA is in the bundle before it signs"
    );
    assert_eq!(m.jwt_authorities().len(), 2);
    assert_eq!(m.jwt_signer().kid(), first_kid);
    let prepared = m.journal().x509[1].cert_der.clone();

    // At five sixths the prepared one activates; the old one stays published.
    let act_x509 = T0 - 10 + 610 * 5 / 6;
    assert!(!m.tick(act_x509 - 1, &mut |_| Ok(())).unwrap());
    let act = T0 + 500;
    assert!(m.tick(act, &mut |_| Ok(())).unwrap());
    assert_eq!(states(m.journal()), vec![SlotState::Old, SlotState::Active]);
    assert_eq!(m.x509_authority().cert_der(), &prepared[..]);
    assert_ne!(m.jwt_signer().kid(), first_kid);
    assert_eq!(m.x509_roots().len(), 2);

    // Persist and reopen: same state, same signer.
    let saved = serde_json::to_string(m.journal()).unwrap();
    let journal: CaJournal = serde_json::from_str(&saved).unwrap();
    let mut m2 = CaManager::open(
        config(600),
        keys.clone(),
        None,
        Some(journal),
        act + 1,
        &mut |_| Ok(()),
    )
    .unwrap();
    assert_eq!(m2.x509_authority().cert_der(), &prepared[..]);
    assert_eq!(m2.journal(), m.journal());

    // After the old CA expires it leaves the bundle and its key is destroyed.
    let old_key = m2.journal().x509[0].key_id.clone();
    assert!(m2.tick(T0 + 600, &mut |_| Ok(())).unwrap());
    assert!(m2.journal().x509.iter().all(|s| s.state != SlotState::Old));
    assert!(keys.get(&old_key).unwrap().is_none());
}

#[test]
fn a_server_down_past_expiry_gets_a_fresh_active_ca() {
    let keys: Arc<dyn KeyManager> = Arc::new(writ_ca::MemoryKeyManager::new());
    let m = CaManager::open(config(600), keys.clone(), None, None, T0, &mut |_| Ok(())).unwrap();
    let j = m.journal().clone();
    let m2 = CaManager::open(config(600), keys, None, Some(j), T0 + 10_000, &mut |_| {
        Ok(())
    })
    .unwrap();
    assert_eq!(states(m2.journal()), vec![SlotState::Active]);
    assert!(m2.x509_authority().not_after() > T0 + 10_000);
}

#[test]
fn a_journal_whose_keys_are_gone_is_an_error() {
    let keys: Arc<dyn KeyManager> = Arc::new(writ_ca::MemoryKeyManager::new());
    let m = CaManager::open(config(600), keys, None, None, T0, &mut |_| Ok(())).unwrap();
    let j = m.journal().clone();
    let empty: Arc<dyn KeyManager> = Arc::new(writ_ca::MemoryKeyManager::new());
    let err =
        CaManager::open(config(600), empty, None, Some(j), T0 + 1, &mut |_| Ok(())).unwrap_err();
    assert!(err.to_string().contains("key"), "{err}");
}

/// Item 18 of issue 10: in the "nothing active" path a new CA was made active in memory and
/// could sign before the server saved the journal naming it, so a kill -9 in between lost the CA
/// that had signed issued SVIDs. Now the journal goes through the persist hook before the
/// manager switches to it. With a hook that fails, the manager must keep its previous journal
/// and signer (before the fix `tick` switched unconditionally and the caller saved afterwards)
/// and must not destroy keys the persisted journal still names; with a hook that succeeds, the
/// authority that signs afterwards is the one in the journal the hook made durable.
#[test]
fn a_new_authority_signs_only_after_its_journal_is_persisted() {
    let keys: Arc<dyn KeyManager> = Arc::new(writ_ca::MemoryKeyManager::new());
    let mut persisted: Vec<CaJournal> = Vec::new();
    let mut m = CaManager::open(config(600), keys.clone(), None, None, T0, &mut |j| {
        persisted.push(j.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(
        persisted.len(),
        1,
        "the first journal is persisted before use"
    );
    let first = m.x509_authority().cert_der().to_vec();
    let first_key = m.journal().x509[0].key_id.clone();

    // Everything expired while the server was down: nothing is active, a new CA is made.
    let later = T0 + 10_000;
    let err = m
        .tick(later, &mut |_| {
            Err(writ_ca::CaError::Persist("disk full".into()))
        })
        .unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(
        m.x509_authority().cert_der(),
        &first[..],
        "an authority whose journal is not durable must not sign"
    );
    assert_eq!(m.journal(), &persisted[0]);
    assert!(
        keys.get(&first_key).unwrap().is_some(),
        "keys named by the persisted journal are kept"
    );

    let mut saved = None;
    assert!(m
        .tick(later, &mut |j| {
            saved = Some(j.clone());
            Ok(())
        })
        .unwrap());
    let saved = saved.expect("the new journal went through the hook");
    let signer = m.x509_authority().cert_der().to_vec();
    assert_ne!(signer, first);
    assert!(
        saved
            .x509
            .iter()
            .any(|s| s.cert_der == signer && s.state == SlotState::Active),
        "the signing CA is in the persisted journal"
    );
    assert_eq!(m.journal(), &saved);
    assert!(
        keys.get(&first_key).unwrap().is_none(),
        "the expired CA's key goes once the journal without it is durable"
    );

    // First start with a store that cannot persist: no manager, so nothing can sign.
    let fresh: Arc<dyn KeyManager> = Arc::new(writ_ca::MemoryKeyManager::new());
    assert!(
        CaManager::open(config(600), fresh, None, None, T0, &mut |_| {
            Err(writ_ca::CaError::Persist("read-only".into()))
        })
        .is_err()
    );
}
