//! The answers of the Workload API, computed from the cache for one caller's selectors: what
//! FetchX509SVID sends (or why not), which bundles a caller gets, and the JSON -> protobuf
//! `Struct` conversion for ValidateJWTSVID claims.
//!
//! Invariant: a caller gets SVIDs and bundles only through entries whose selectors are all
//! among its own; hints are unique within one answer.

use std::collections::{BTreeMap, HashMap};

use prost_types::{value::Kind, ListValue, Struct, Value};
use writ_core::Selector;
use writ_proto::workload as wl;

use crate::view::WorkloadView;

/// What a caller gets from FetchX509SVID, or why not.
pub(super) enum X509Answer {
    Ready(wl::X509svidResponse),
    /// Entries match but no SVID is signed yet.
    Pending,
    None,
}

pub(super) fn x509_answer(view: &WorkloadView, selectors: &[Selector]) -> X509Answer {
    let c = view.read();
    let now = writ_core::now_unix();
    let entries = c.matching(selectors, now);
    if entries.is_empty() {
        return X509Answer::None;
    }
    let own = c.own_bundle.x509_der_concat();
    let mut svids = Vec::new();
    let mut hints = std::collections::HashSet::new();
    let mut federated = HashMap::new();
    for e in &entries {
        let Some(s) = c.svids.get(e.id.as_str()) else {
            continue;
        };
        if s.expires_at <= now {
            continue;
        }
        // Hints must be unique: the first (default-ordered) SVID with a hint keeps it.
        if !e.hint.is_empty() && !hints.insert(e.hint.clone()) {
            continue;
        }
        svids.push(wl::X509svid {
            spiffe_id: s.spiffe_id.to_string(),
            x509_svid: s.chain_der(),
            x509_svid_key: s.key_pkcs8().to_vec(),
            bundle: own.clone(),
            hint: e.hint.clone(),
        });
        for td in &e.federates_with {
            if let Some(b) = c.bundle_for(td.as_str()) {
                federated.insert(td.id_string(), b.x509_der_concat());
            }
        }
    }
    if svids.is_empty() {
        return X509Answer::Pending;
    }
    let crl = if c.crl.is_empty() {
        Vec::new()
    } else {
        vec![c.crl.clone()]
    };
    X509Answer::Ready(wl::X509svidResponse {
        svids,
        crl,
        federated_bundles: federated,
    })
}

/// The CRL of the own trust domain's CA, for the `crl` fields (empty list when none yet).
pub(super) fn crl(view: &WorkloadView) -> Vec<Vec<u8>> {
    let c = view.read();
    if c.crl.is_empty() {
        Vec::new()
    } else {
        vec![c.crl.clone()]
    }
}

/// Which encoding of a bundle a stream serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BundleKind {
    /// X.509 authorities, DER concatenated.
    X509,
    /// JWT keys, a JWK Set with `use` `jwt-svid`.
    Jwt,
    /// WIT keys, a JWK Set with `use` `wit-svid`.
    Wit,
}

/// Bundles for a caller: own plus those its entries federate with; `None` without identity.
pub(super) fn bundles_for(
    view: &WorkloadView,
    selectors: &[Selector],
    kind: BundleKind,
) -> Option<HashMap<String, Vec<u8>>> {
    let c = view.read();
    let entries = c.matching(selectors, writ_core::now_unix());
    if entries.is_empty() {
        return None;
    }
    let enc = |b: &writ_core::Bundle| match kind {
        BundleKind::Jwt => b
            .jwt_jwks_json()
            .map(String::into_bytes)
            .unwrap_or_default(),
        BundleKind::Wit => b
            .wit_jwks_json()
            .map(String::into_bytes)
            .unwrap_or_default(),
        BundleKind::X509 => b.x509_der_concat(),
    };
    let mut m = HashMap::new();
    m.insert(c.own_bundle.trust_domain.id_string(), enc(&c.own_bundle));
    for e in &entries {
        for td in &e.federates_with {
            if let Some(b) = c.bundle_for(td.as_str()) {
                m.insert(td.id_string(), enc(b));
            }
        }
    }
    Some(m)
}

/// JSON object -> protobuf Struct.
pub(super) fn to_struct(m: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: m
            .iter()
            .map(|(k, v)| (k.clone(), to_value(v)))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn to_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(to_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(to_struct(o)),
    };
    Value { kind: Some(kind) }
}
