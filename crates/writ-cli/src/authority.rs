//! `writ authority x509|jwt show|prepare|activate|taint|revoke`: authority rotation on demand.

use serde_json::{json, Value};
use writ_proto::v1 as pb;

use crate::admin::{connect, status};
use crate::args::{AuthorityAction, AuthorityCmd, Output};
use crate::output::{out, rfc3339};
use crate::CliError;

fn info_json(a: &pb::AuthorityInfo) -> Value {
    json!({
        "kind": a.kind,
        "key_id": a.key_id,
        "state": a.state,
        "tainted": a.tainted,
        "public_id": a.public_id,
        "not_before": rfc3339(a.not_before),
        "not_after": rfc3339(a.not_after),
    })
}

fn info_text(a: &pb::AuthorityInfo) -> String {
    format!(
        "{:<12} {:<9}{} {}  {} .. {}\n",
        a.key_id,
        a.state,
        if a.tainted { " TAINTED" } else { "" },
        a.public_id,
        rfc3339(a.not_before),
        rfc3339(a.not_after)
    )
}

pub(crate) async fn run(cmd: AuthorityCmd, output: Output) -> Result<(), CliError> {
    let (kind, action) = match cmd {
        AuthorityCmd::X509(a) => ("x509", a),
        AuthorityCmd::Jwt(a) => ("jwt", a),
    };
    let (socket, name, key_id) = match action {
        AuthorityAction::Show(s) => (s, "show", String::new()),
        AuthorityAction::Prepare(s) => (s, "prepare", String::new()),
        AuthorityAction::Activate(s) => (s, "activate", String::new()),
        AuthorityAction::Taint { socket, key_id } => (socket, "taint", key_id),
        AuthorityAction::Revoke { socket, key_id } => (socket, "revoke", key_id),
    };
    let mut c = connect(&socket.socket).await?;
    let r = c
        .authority(pb::AuthorityRequest {
            kind: kind.into(),
            action: name.into(),
            key_id,
        })
        .await
        .map_err(status)?
        .into_inner();
    match output {
        Output::Json => out(&format!(
            "{}\n",
            json!({
                "authorities": r.authorities.iter().map(info_json).collect::<Vec<_>>(),
                "changed": r.changed.as_ref().map(info_json),
            })
        )),
        Output::Human => {
            let mut t = String::new();
            if let Some(ch) = &r.changed {
                t += &format!(
                    "{name}: {} is now {}{}\n",
                    ch.key_id,
                    ch.state,
                    if ch.tainted { " (tainted)" } else { "" }
                );
            }
            for a in &r.authorities {
                t += &info_text(a);
            }
            out(&t);
        }
    }
    Ok(())
}
