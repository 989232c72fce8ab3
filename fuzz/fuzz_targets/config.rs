//! Server and agent config parsing from TOML text (first byte picks which): never a panic,
//! every error says something, and what is accepted holds the validated invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writ_agent::AgentConfig;
use writ_server::ServerConfig;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if which % 2 == 0 {
        match ServerConfig::parse(text) {
            Ok(c) => {
                assert!(c.admin_socket.is_absolute());
                assert!(!c.data_dir.as_os_str().is_empty());
                assert!(c.ca_ttl >= 10);
                for ttl in [
                    c.default_x509_svid_ttl,
                    c.default_jwt_svid_ttl,
                    c.agent_svid_ttl,
                ] {
                    assert!(ttl > 0);
                }
                assert!(c.attestation_rate_per_ip >= 1);
                assert!(!c.node_attestors.is_empty());
                assert!(writ_core::TrustDomain::new(c.trust_domain.as_str()).is_ok());
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    } else {
        match AgentConfig::parse(text) {
            Ok(c) => {
                assert!(c.socket_path.is_absolute() && c.admin_socket.is_absolute());
                assert_ne!(c.socket_path.parent(), c.admin_socket.parent());
                assert!(c.server_address.contains(':'));
                assert!(writ_core::TrustDomain::new(c.trust_domain.as_str()).is_ok());
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});
