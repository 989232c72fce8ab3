//! `writ dev`: an embedded server and agent under one directory, with the invoking user
//! registered, so a new user can fetch an SVID with one more command.

use std::path::{Path, PathBuf};
use std::time::Duration;

use writ_core::{Entry, Selector, SpiffeId, TrustDomain};

use crate::CliError;

const TD: &str = "example.org";

fn fail(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

/// A path segment for the user: the login name with anything outside a-zA-Z0-9._- replaced.
fn user_segment(uid: u32) -> String {
    let from_passwd = std::fs::read_to_string("/etc/passwd").ok().and_then(|t| {
        t.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_owned())
        })
    });
    let name = from_passwd
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| format!("uid{uid}"));
    let seg: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if seg.is_empty() || seg == "." || seg == ".." {
        format!("uid{uid}")
    } else {
        seg
    }
}

fn toml_str(p: &Path) -> String {
    // TOML basic string with backslashes and quotes escaped.
    format!(
        "\"{}\"",
        p.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    )
}

pub(crate) async fn run(dir: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| fail(format!("cannot create `{}`: {e}", dir.display())))?;
    let dir: PathBuf = std::fs::canonicalize(dir).map_err(fail)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    }
    let server_cfg = writ_server::ServerConfig::parse(&format!(
        "trust_domain = \"{TD}\"\nlisten = \"127.0.0.1:0\"\nadmin_socket = {}\ndata_dir = {}\ndefault_x509_svid_ttl = \"1h\"\n[ca]\nttl = \"24h\"\n[node_attestor.join_token]\n",
        toml_str(&dir.join("server/private/admin.sock")),
        toml_str(&dir.join("server/data")),
    ))
    .map_err(fail)?;
    let server = writ_server::start(server_cfg).await.map_err(fail)?;
    let td = TrustDomain::new(TD).map_err(fail)?;
    let node_alias = td.id("/node/dev").map_err(fail)?;

    let (uid, _gid) = writ_agent::internal::own_ids()
        .ok_or_else(|| fail("cannot read this process's uid from /proc"))?;
    let user = user_segment(uid);
    let user_id = td.id(&format!("/user/{user}")).map_err(fail)?;
    let entry = Entry {
        owner: user.clone(),
        purpose: "writ dev: the invoking user".into(),
        ..Entry::new(
            user_id.clone(),
            node_alias.clone(),
            vec![Selector::new("unix", &format!("uid:{uid}")).map_err(fail)?],
        )
    };
    match server.state.create_entry(entry).await {
        Ok(_) => {}
        Err(e) if e.is_already_exists() => {}
        Err(e) => return Err(fail(e)),
    }

    // A join token for the first start; a restarted dev agent resumes its persisted identity.
    let token = server
        .state
        .create_join_token(Some(node_alias), 600)
        .map_err(fail)?;
    let agent_cfg = writ_agent::AgentConfig::parse(&format!(
        "trust_domain = \"{TD}\"\nserver_address = \"{}\"\nsocket_path = {}\nadmin_socket = {}\ndata_dir = {}\n[node_attestor.join_token]\ntoken = \"{}\"\n[workload_attestor.unix]\n",
        server.listen_addr,
        toml_str(&dir.join("agent/public/api.sock")),
        toml_str(&dir.join("agent/private/admin.sock")),
        toml_str(&dir.join("agent/data")),
        token.token,
    ))
    .map_err(fail)?;
    let bootstrap = server.state.bundles.borrow().own.clone();
    let agent = writ_agent::start(agent_cfg, Some(bootstrap))
        .await
        .map_err(fail)?;

    // Wait until the user's SVID is in the agent's cache, so the next command works at once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut gen = agent.state.view.subscribe();
    loop {
        let ready = agent
            .state
            .view
            .read()
            .svids
            .values()
            .any(|s| s.spiffe_id == user_id);
        if ready
            || tokio::time::timeout_at(deadline, gen.changed())
                .await
                .is_err()
        {
            break;
        }
    }
    let socket = dir.join("agent/public/api.sock");
    crate::output::out(&format!(
        "writ dev is running (trust domain {TD}).\n\
         \n\
         Your identity: {user_id}  (for processes with unix:uid:{uid})\n\
         Workload API:  unix://{sock}\n\
         Admin socket:  {admin}\n\
         \n\
         In another terminal, try:\n\
         \n\
         \x20 export SPIFFE_ENDPOINT_SOCKET=unix://{sock}\n\
         \x20 writ svid fetch          # or: cargo run --release -- svid fetch\n\
         \n\
         Operator commands: export WRIT_SERVER_SOCKET={admin}\n\
         Press Ctrl-C to stop.\n",
        sock = socket.display(),
        admin = dir.join("server/private/admin.sock").display(),
    ));
    crate::signals::wait_for_stop().await?;
    agent.shutdown(Duration::from_secs(3)).await;
    server
        .shutdown(Duration::from_secs(3))
        .await
        .map_err(fail)?;
    let _ = SpiffeId::parse(TD);
    Ok(())
}
