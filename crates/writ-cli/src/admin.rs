//! Operator commands: talk to the server's admin socket.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tonic::Code;
use writ_core::{server_id, Bundle, Entry, SpiffeId, TrustDomain};
use writ_proto::convert::{
    bundle_from_pb, entry_from_pb, entry_to_pb, node_from_pb, selector_to_pb,
};
use writ_proto::v1 as pb;
use writ_server::client::admin_client;

use crate::args::{
    BundleCmd, BundleFormat, EntryCmd, EntryFields, NodeCmd, Output, TokenCmd, X509Cmd,
};
use crate::output::{entry_json, entry_text, node_json, node_text, out, parse_rfc3339, rfc3339};
use crate::CliError;

type Client = writ_proto::v1::admin_client::AdminClient<tonic::transport::Channel>;

pub(crate) async fn connect(socket: &Path) -> Result<Client, CliError> {
    tokio::time::timeout(Duration::from_secs(10), admin_client(socket))
        .await
        .map_err(|_| {
            CliError::Failed(format!(
                "timed out connecting to admin socket `{}`",
                socket.display()
            ))
        })?
        .map_err(|e| {
            CliError::Failed(format!(
                "cannot connect to admin socket `{}`: {e}",
                socket.display()
            ))
        })
}

/// Maps a server refusal to the CLI's exit codes: bad input is a usage error (2).
pub(crate) fn status(s: tonic::Status) -> CliError {
    match s.code() {
        Code::InvalidArgument => CliError::Usage(s.message().to_owned()),
        Code::Unavailable => CliError::Failed(format!("server unavailable: {}", s.message())),
        _ => CliError::Failed(s.message().to_owned()),
    }
}

fn print(output: Output, json: Value, text: String) {
    match output {
        Output::Json => out(&format!("{json}\n")),
        Output::Human => out(&text),
    }
}

pub(crate) async fn token(cmd: TokenCmd, output: Output) -> Result<(), CliError> {
    let TokenCmd::Generate {
        socket,
        spiffe_id,
        ttl,
    } = cmd;
    let mut c = connect(&socket.socket).await?;
    let r = c
        .create_join_token(pb::CreateJoinTokenRequest {
            spiffe_id: spiffe_id.map(|i| i.to_string()).unwrap_or_default(),
            ttl_secs: ttl.as_secs() as i64,
        })
        .await
        .map_err(status)?
        .into_inner();
    let spiffe = (!r.spiffe_id.is_empty()).then(|| r.spiffe_id.clone());
    print(
        output,
        json!({"token": r.token, "spiffe_id": spiffe, "expires_at": rfc3339(r.expires_at)}),
        format!("Token: {}\n", r.token),
    );
    Ok(())
}

fn apply_fields(e: &mut Entry, f: EntryFields, creating: bool) -> Result<(), CliError> {
    if let Some(id) = f.spiffe_id {
        e.spiffe_id = id;
    }
    if f.node {
        e.parent_id = server_id(&e.spiffe_id.trust_domain());
    } else if let Some(p) = f.parent_id {
        e.parent_id = p;
    } else if creating {
        return Err(CliError::Usage(
            "entry create needs --parent-id or --node".into(),
        ));
    }
    if !f.selectors.is_empty() {
        e.selectors = f.selectors;
    } else if creating {
        return Err(CliError::Usage(
            "entry create needs at least one --selector".into(),
        ));
    }
    if let Some(t) = f.x509_ttl {
        e.x509_svid_ttl = t.as_secs();
    }
    if let Some(t) = f.jwt_ttl {
        e.jwt_svid_ttl = t.as_secs();
    }
    if !f.dns_names.is_empty() {
        e.dns_names = f.dns_names;
    }
    if let Some(h) = f.hint {
        e.hint = h;
    }
    if f.admin {
        e.admin = true;
    }
    if f.downstream {
        e.downstream = true;
    }
    if !f.federates_with.is_empty() {
        e.federates_with = f.federates_with;
    }
    if let Some(t) = f.expires_at {
        e.expires_at = Some(parse_rfc3339(&t).map_err(CliError::Usage)?);
    }
    if let Some(o) = f.owner {
        e.owner = o;
    }
    if let Some(p) = f.purpose {
        e.purpose = p;
    }
    if f.break_glass {
        e.break_glass = true;
        e.break_glass_reason = f.reason.unwrap_or_default();
    }
    match f.delegate {
        Some(crate::args::DelegateArg::Set(d)) => e.delegate = Some(Box::new(d)),
        Some(crate::args::DelegateArg::None) => e.delegate = None,
        None => {}
    }
    Ok(())
}

fn pb_entry(e: pb::Entry) -> Result<Entry, CliError> {
    entry_from_pb(&e)
        .map_err(|s| CliError::Failed(format!("server sent a bad entry: {}", s.message())))
}

pub(crate) async fn entry(cmd: EntryCmd, output: Output) -> Result<(), CliError> {
    match cmd {
        EntryCmd::Create { socket, fields } => {
            let spiffe_id = fields
                .spiffe_id
                .clone()
                .ok_or_else(|| CliError::Usage("entry create needs --spiffe-id".into()))?;
            // The parent is a placeholder: apply_fields sets it from --parent-id or --node.
            let mut e = Entry::new(spiffe_id.clone(), spiffe_id, Vec::new());
            apply_fields(&mut e, fields, true)?;
            let mut c = connect(&socket.socket).await?;
            let created = pb_entry(
                c.create_entry(entry_to_pb(&e))
                    .await
                    .map_err(status)?
                    .into_inner(),
            )?;
            print(output, entry_json(&created), entry_text(&created));
        }
        EntryCmd::Show { socket, id } => {
            let mut c = connect(&socket.socket).await?;
            let e = pb_entry(
                c.get_entry(pb::GetEntryRequest { id })
                    .await
                    .map_err(status)?
                    .into_inner(),
            )?;
            print(output, entry_json(&e), entry_text(&e));
        }
        EntryCmd::List {
            socket,
            spiffe_id,
            parent_id,
            selector,
            review,
        } => {
            let mut c = connect(&socket.socket).await?;
            // The server pages the list (by count and size); gather every page.
            let mut entries: Vec<Entry> = Vec::new();
            let mut page_token = String::new();
            loop {
                let r = c
                    .list_entries(pb::ListEntriesRequest {
                        spiffe_id: spiffe_id
                            .as_ref()
                            .map(|i| i.to_string())
                            .unwrap_or_default(),
                        parent_id: parent_id
                            .as_ref()
                            .map(|i| i.to_string())
                            .unwrap_or_default(),
                        selector: selector.as_ref().map(selector_to_pb),
                        page_size: 0,
                        page_token: page_token.clone(),
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                for e in r.entries {
                    entries.push(pb_entry(e)?);
                }
                // An empty or repeated token ends the listing (a server bug must not loop).
                if r.next_page_token.is_empty() || r.next_page_token == page_token {
                    break;
                }
                page_token = r.next_page_token;
            }
            let now = writ_core::now_unix();
            entries.retain(|e| review.keeps(e, now));
            entries.sort_by(|a, b| a.spiffe_id.cmp(&b.spiffe_id).then(a.id.cmp(&b.id)));
            let text = if entries.is_empty() {
                "No entries\n".to_owned()
            } else {
                entries
                    .iter()
                    .map(entry_text)
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            print(
                output,
                Value::Array(entries.iter().map(entry_json).collect()),
                text,
            );
        }
        EntryCmd::Update { socket, id, fields } => {
            let mut c = connect(&socket.socket).await?;
            let mut e = pb_entry(
                c.get_entry(pb::GetEntryRequest { id })
                    .await
                    .map_err(status)?
                    .into_inner(),
            )?;
            apply_fields(&mut e, fields, false)?;
            let updated = pb_entry(
                c.update_entry(entry_to_pb(&e))
                    .await
                    .map_err(status)?
                    .into_inner(),
            )?;
            print(output, entry_json(&updated), entry_text(&updated));
        }
        EntryCmd::Delete { socket, ids } => {
            let mut c = connect(&socket.socket).await?;
            let r = c
                .delete_entries(pb::DeleteEntriesRequest { ids })
                .await
                .map_err(status)?
                .into_inner();
            let text = r
                .deleted
                .iter()
                .map(|d| format!("Deleted entry {d}\n"))
                .collect();
            print(output, json!({"deleted": r.deleted}), text);
        }
    }
    Ok(())
}

pub(crate) async fn node(cmd: NodeCmd, output: Output) -> Result<(), CliError> {
    let conv = |n: pb::AttestedNode| {
        node_from_pb(&n)
            .map_err(|s| CliError::Failed(format!("server sent a bad node: {}", s.message())))
    };
    match cmd {
        NodeCmd::List(socket) => {
            let mut c = connect(&socket.socket).await?;
            let r = c
                .list_nodes(pb::ListNodesRequest {})
                .await
                .map_err(status)?
                .into_inner();
            let nodes = r
                .nodes
                .into_iter()
                .map(conv)
                .collect::<Result<Vec<_>, _>>()?;
            let text = if nodes.is_empty() {
                "No nodes\n".to_owned()
            } else {
                nodes.iter().map(node_text).collect::<Vec<_>>().join("\n")
            };
            print(
                output,
                Value::Array(nodes.iter().map(node_json).collect()),
                text,
            );
        }
        NodeCmd::Show { socket, id } => node_one("show", &socket.socket, &id, output).await?,
        NodeCmd::Evict { socket, id } => node_one("evict", &socket.socket, &id, output).await?,
        NodeCmd::Ban { socket, id } => node_one("ban", &socket.socket, &id, output).await?,
    }
    Ok(())
}

async fn node_one(
    kind: &str,
    socket: &Path,
    id: &SpiffeId,
    output: Output,
) -> Result<(), CliError> {
    let mut c = connect(socket).await?;
    let req = pb::NodeRequest {
        spiffe_id: id.to_string(),
    };
    let r = match kind {
        "show" => c.get_node(req).await,
        "evict" => c.evict_node(req).await,
        _ => c.ban_node(req).await,
    }
    .map_err(status)?
    .into_inner();
    let n = node_from_pb(&r).map_err(|s| CliError::Failed(s.message().to_owned()))?;
    let text = match kind {
        "evict" => format!("Evicted {}\n", n.spiffe_id),
        "ban" => format!("Banned {}\n", n.spiffe_id),
        _ => node_text(&n),
    };
    print(output, node_json(&n), text);
    Ok(())
}

fn bundle_of(b: pb::Bundle) -> Result<Bundle, CliError> {
    bundle_from_pb(&b)
        .map_err(|s| CliError::Failed(format!("server sent a bad bundle: {}", s.message())))
}

fn bundle_value(b: &Bundle) -> Result<Value, CliError> {
    let text = b.to_json().map_err(|e| CliError::Failed(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| CliError::Failed(e.to_string()))
}

pub(crate) async fn bundle(cmd: BundleCmd, output: Output) -> Result<(), CliError> {
    match cmd {
        BundleCmd::Show {
            socket,
            format: _,
            crl: true,
        } => {
            let mut c = connect(&socket.socket).await?;
            let r = c
                .get_crl(pb::GetCrlRequest {})
                .await
                .map_err(status)?
                .into_inner();
            let pem = writ_core::pem::encode("X509 CRL", &r.crl);
            match output {
                Output::Json => out(&format!(
                    "{}\n",
                    json!({
                        "crl_pem": pem,
                        "revoked_x509": r.revoked_x509.iter().map(revoked_json).collect::<Vec<_>>(),
                        "revoked_jwt": r.revoked_jwt.iter().map(revoked_json).collect::<Vec<_>>(),
                    })
                )),
                Output::Human => out(&pem),
            }
        }
        BundleCmd::Show {
            socket,
            format,
            crl: false,
        } => {
            let mut c = connect(&socket.socket).await?;
            let b = bundle_of(
                c.get_bundle(pb::GetBundleRequest {})
                    .await
                    .map_err(status)?
                    .into_inner(),
            )?;
            if output == Output::Json || format == BundleFormat::Jwks {
                out(&format!("{}\n", bundle_value(&b)?));
            } else {
                out(&b.x509_pem());
            }
        }
        BundleCmd::List(socket) => {
            let mut c = connect(&socket.socket).await?;
            let r = c
                .list_federated_bundles(pb::ListFederatedBundlesRequest {})
                .await
                .map_err(status)?
                .into_inner();
            let bundles: Vec<Bundle> = r
                .bundles
                .into_iter()
                .map(bundle_of)
                .collect::<Result<_, _>>()?;
            let mut arr = Vec::new();
            let mut text = String::new();
            for b in &bundles {
                arr.push(
                    json!({"trust_domain": b.trust_domain.to_string(), "bundle": bundle_value(b)?}),
                );
                text += &format!(
                    "{} (sequence {})\n{}",
                    b.trust_domain,
                    b.sequence,
                    b.x509_pem()
                );
            }
            if bundles.is_empty() {
                text = "No federated bundles\n".into();
            }
            print(output, Value::Array(arr), text);
        }
        BundleCmd::Set {
            socket,
            trust_domain,
            file,
        } => {
            let data = std::fs::read(&file)
                .map_err(|e| CliError::Failed(format!("cannot read `{}`: {e}", file.display())))?;
            let b = parse_bundle_file(trust_domain, &data).map_err(CliError::Usage)?;
            let mut c = connect(&socket.socket).await?;
            let pbb = writ_proto::convert::bundle_to_pb(&b)
                .map_err(|s| CliError::Failed(s.message().to_owned()))?;
            let set = bundle_of(
                c.set_federated_bundle(pbb)
                    .await
                    .map_err(status)?
                    .into_inner(),
            )?;
            print(
                output,
                json!({"trust_domain": set.trust_domain.to_string(), "bundle": bundle_value(&set)?}),
                format!("Set bundle for {}\n", set.trust_domain),
            );
        }
        BundleCmd::Delete {
            socket,
            trust_domain,
        } => {
            let mut c = connect(&socket.socket).await?;
            c.delete_federated_bundle(pb::DeleteFederatedBundleRequest {
                trust_domain: trust_domain.to_string(),
            })
            .await
            .map_err(status)?;
            print(
                output,
                json!({"deleted": trust_domain.to_string()}),
                format!("Deleted bundle for {trust_domain}\n"),
            );
        }
    }
    Ok(())
}

/// A bundle file is SPIFFE bundle JSON, or PEM CA certificates.
fn parse_bundle_file(td: TrustDomain, data: &[u8]) -> Result<Bundle, String> {
    let text = std::str::from_utf8(data).map_err(|_| "bundle file is not text".to_owned())?;
    if text.trim_start().starts_with('{') {
        Bundle::from_json(td, data).map_err(|e| e.to_string())
    } else {
        Bundle::from_x509_pem(td, text).map_err(|e| e.to_string())
    }
}

/// One revoked credential as JSON.
fn revoked_json(r: &pb::RevokedCredential) -> Value {
    json!({
        "id": r.id,
        "spiffe_id": r.spiffe_id,
        "expires_at": rfc3339(r.expires_at),
        "revoked_at": rfc3339(r.revoked_at),
        "reason": r.reason,
    })
}

fn print_revoked(output: Output, r: &pb::RevokeResponse) {
    let text = r
        .revoked
        .iter()
        .map(|c| {
            format!(
                "revoked {} ({}, expires {}): {}\n",
                c.id,
                c.spiffe_id,
                rfc3339(c.expires_at),
                c.reason
            )
        })
        .collect();
    print(
        output,
        json!({"revoked": r.revoked.iter().map(revoked_json).collect::<Vec<_>>()}),
        text,
    );
}

/// `writ jwt revoke`.
pub(crate) async fn jwt_revoke(
    socket: &Path,
    jti: String,
    reason: String,
    output: Output,
) -> Result<(), CliError> {
    let mut c = connect(socket).await?;
    let r = c
        .revoke_jwt(pb::RevokeJwtRequest { jti, reason })
        .await
        .map_err(status)?
        .into_inner();
    print_revoked(output, &r);
    Ok(())
}

pub(crate) async fn x509(cmd: X509Cmd, output: Output) -> Result<(), CliError> {
    let (socket, spiffe_id, ttl, out_dir) = match cmd {
        X509Cmd::Mint {
            socket,
            spiffe_id,
            ttl,
            out_dir,
        } => (socket, spiffe_id, ttl, out_dir),
        X509Cmd::Revoke {
            socket,
            serial,
            spiffe_id,
            entry,
            reason,
        } => {
            let mut c = connect(&socket.socket).await?;
            let serial = serial
                .map(|s| crate::audit::normalise_serial(&s))
                .unwrap_or_default();
            let r = c
                .revoke_x509(pb::RevokeX509Request {
                    serial,
                    spiffe_id: spiffe_id.unwrap_or_default(),
                    entry_id: entry.unwrap_or_default(),
                    reason,
                })
                .await
                .map_err(status)?
                .into_inner();
            print_revoked(output, &r);
            return Ok(());
        }
    };
    let mut c = connect(&socket.socket).await?;
    let r = c
        .mint_x509(pb::MintX509Request {
            spiffe_id: spiffe_id.to_string(),
            ttl_secs: ttl.map(|t| t.as_secs() as i64).unwrap_or(0),
            dns_names: Vec::new(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let cert_pem =
        writ_core::pem::encode_many("CERTIFICATE", r.cert_chain.iter().map(Vec::as_slice));
    let key_pem = writ_core::pem::encode("PRIVATE KEY", &r.private_key_pkcs8);
    let bundle_pem = writ_core::pem::encode_many("CERTIFICATE", r.bundle.iter().map(Vec::as_slice));
    if let Some(dir) = &out_dir {
        crate::files::write_svid_files(dir, &cert_pem, &key_pem, &bundle_pem, &[], &[])?;
    }
    print(
        output,
        json!({
            "spiffe_id": spiffe_id.to_string(),
            "cert_pem": cert_pem,
            "key_pem": key_pem,
            "bundle_pem": bundle_pem,
            "expires_at": rfc3339(r.expires_at),
        }),
        match &out_dir {
            Some(d) => format!(
                "Wrote svid.pem, svid.key and bundle.pem to {} (expires {})\n",
                d.display(),
                rfc3339(r.expires_at)
            ),
            None => format!("{cert_pem}{key_pem}"),
        },
    );
    Ok(())
}

pub(crate) async fn jwt_mint(
    socket: &Path,
    spiffe_id: &SpiffeId,
    audience: Vec<String>,
    ttl: Option<Duration>,
    output: Output,
) -> Result<(), CliError> {
    let mut c = connect(socket).await?;
    let r = c
        .mint_jwt(pb::AdminMintJwtRequest {
            spiffe_id: spiffe_id.to_string(),
            audience,
            ttl_secs: ttl.map(|t| t.as_secs() as i64).unwrap_or(0),
        })
        .await
        .map_err(status)?
        .into_inner();
    print(output, json!({"token": r.token}), format!("{}\n", r.token));
    Ok(())
}

pub(crate) async fn healthcheck(socket: &Path) -> Result<(), CliError> {
    let mut c = connect(socket).await?;
    tokio::time::timeout(
        Duration::from_secs(5),
        c.get_bundle(pb::GetBundleRequest {}),
    )
    .await
    .map_err(|_| CliError::Failed("server did not answer within 5s".into()))?
    .map_err(status)?;
    Ok(())
}
