//! The schema every policy set is validated against (`writ.cedarschema`, in namespace
//! `Writ`). Policies name actions as `Writ::Action::"mint_x509"` and principals as
//! `Writ::Workload` / `Writ::Operator`; see docs/policy.md.

use std::sync::OnceLock;

use cedar_policy::Schema;

/// The schema text.
pub const SCHEMA: &str = include_str!("writ.cedarschema");

/// The parsed schema (parsed once; it is part of writ, so it always parses: the crate's tests
/// parse it, and a writ whose own schema is broken must not start).
#[allow(clippy::panic)]
pub fn schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| match Schema::from_cedarschema_str(SCHEMA) {
        Ok((s, _warnings)) => s,
        // Covered by the crate's tests: the shipped schema parses.
        Err(e) => panic!("the built-in Cedar schema does not parse: {e}"),
    })
}
