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
    let mut m = CaManager::open(config(600), keys.clone(), None, None, T0).unwrap();
    assert_eq!(states(m.journal()), vec![SlotState::Active]);
    assert_eq!(m.journal().jwt.len(), 1);
    let first = m.x509_authority().cert_der().to_vec();
    let first_kid = m.jwt_signer().kid().to_owned();
    assert_eq!(m.x509_roots(), vec![first.clone()]);

    // Before half-life nothing happens.
    assert!(!m.tick(T0 + 200).unwrap());
    // At half-life a CA is prepared and published, but the old one still signs. (The X.509 CA
    // half-life is T0-10+305, the JWT key's T0+300.)
    let half = T0 + 300;
    assert!(m.next_event() <= half);
    assert!(m.tick(half).unwrap());
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
    assert!(!m.tick(act_x509 - 1).unwrap());
    let act = T0 + 500;
    assert!(m.tick(act).unwrap());
    assert_eq!(states(m.journal()), vec![SlotState::Old, SlotState::Active]);
    assert_eq!(m.x509_authority().cert_der(), &prepared[..]);
    assert_ne!(m.jwt_signer().kid(), first_kid);
    assert_eq!(m.x509_roots().len(), 2);

    // Persist and reopen: same state, same signer.
    let saved = serde_json::to_string(m.journal()).unwrap();
    let journal: CaJournal = serde_json::from_str(&saved).unwrap();
    let mut m2 = CaManager::open(config(600), keys.clone(), None, Some(journal), act + 1).unwrap();
    assert_eq!(m2.x509_authority().cert_der(), &prepared[..]);
    assert_eq!(m2.journal(), m.journal());

    // After the old CA expires it leaves the bundle and its key is destroyed.
    let old_key = m2.journal().x509[0].key_id.clone();
    assert!(m2.tick(T0 + 600).unwrap());
    assert!(m2.journal().x509.iter().all(|s| s.state != SlotState::Old));
    assert!(keys.get(&old_key).unwrap().is_none());
}

#[test]
fn a_server_down_past_expiry_gets_a_fresh_active_ca() {
    let keys: Arc<dyn KeyManager> = Arc::new(writ_ca::MemoryKeyManager::new());
    let m = CaManager::open(config(600), keys.clone(), None, None, T0).unwrap();
    let j = m.journal().clone();
    let m2 = CaManager::open(config(600), keys, None, Some(j), T0 + 10_000).unwrap();
    assert_eq!(states(m2.journal()), vec![SlotState::Active]);
    assert!(m2.x509_authority().not_after() > T0 + 10_000);
}

#[test]
fn a_journal_whose_keys_are_gone_is_an_error() {
    let keys: Arc<dyn KeyManager> = Arc::new(writ_ca::MemoryKeyManager::new());
    let m = CaManager::open(config(600), keys, None, None, T0).unwrap();
    let j = m.journal().clone();
    let empty: Arc<dyn KeyManager> = Arc::new(writ_ca::MemoryKeyManager::new());
    let err = CaManager::open(config(600), empty, None, Some(j), T0 + 1).unwrap_err();
    assert!(err.to_string().contains("key"), "{err}");
}
