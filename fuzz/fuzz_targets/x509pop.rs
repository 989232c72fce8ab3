//! x509pop node attestation, the first thing any network peer reaches (before authentication):
//! `X509PopAttestor::start` with a fixed node CA (`writ_fuzz::node_ca`) on an arbitrary
//! payload. Seeds are valid chains for the fixture node key, so mutations start past the chain
//! check. Invariants: a payload is either refused or answered with a challenge (never attested
//! without one); the challenge is a nonce of the protocol's length; a wrong answer is refused;
//! and when the chain certifies the fixture node key, the right answer attests an agent of the
//! trust domain under `/writ/agent/x509pop/` with only `x509pop` selectors.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use writ_fuzz::{node_ca, node_key, td, NOW};
use writ_server::internal::X509PopProbe;

fn attestor() -> &'static X509PopProbe {
    static A: OnceLock<X509PopProbe> = OnceLock::new();
    A.get_or_init(|| X509PopProbe::new(td(), vec![node_ca().0.clone()]))
}

/// The agent's answer: the node key's signature over the context string and the nonce.
fn sign_challenge(nonce: &[u8]) -> Vec<u8> {
    let mut msg = writ_proto::X509POP_CONTEXT.to_vec();
    msg.extend_from_slice(nonce);
    node_key().sign_asn1(&msg).expect("signing")
}

/// The leaf (first certificate) certifies the fixture node key.
fn leaf_has_node_key(payload: &[u8]) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok((_, leaf)) = X509Certificate::from_der(payload) else {
        return false;
    };
    let spki = node_key().public_key_spki().expect("fixture key");
    leaf.public_key().raw == spki.as_slice()
}

fuzz_target!(|data: &[u8]| {
    let Ok(step) = attestor().start(data, NOW) else {
        return;
    };
    let Some((challenge, pending)) = step else {
        panic!("x509pop attested without a challenge");
    };
    assert_eq!(challenge.len(), writ_proto::X509POP_NONCE_LEN);
    if !leaf_has_node_key(data) {
        // Not our key: any answer we can make is wrong.
        assert!(pending.verify(data).is_err());
        return;
    }
    let answer = sign_challenge(&challenge);
    let (agent_id, selectors) = pending
        .verify(&answer)
        .expect("the node key's answer is accepted");
    assert!(agent_id.is_member_of(&td()));
    assert!(agent_id.path().starts_with("/writ/agent/x509pop/"));
    assert!(selectors.iter().all(|s| s.kind() == "x509pop"));
    // A second run gets a different nonce: an answer is good for its own challenge only.
    let Ok(Some((c2, p2))) = attestor().start(data, NOW) else {
        panic!("an accepted chain is accepted again");
    };
    assert_ne!(c2, challenge);
    assert!(p2.verify(&answer).is_err());
});
