//! `writ audit`: reading and checking the server's audit journal over the admin socket.
//!
//! Records travel as the journal's own JSON (`writ_audit::Record`), so what `export` prints is
//! exactly what was hashed; `--output json` prints records unchanged.

use std::path::Path;

use serde_json::Value;
use writ_audit::Record;
use writ_proto::v1 as pb;

use crate::admin::{connect, status};
use crate::args::{AuditCmd, AuditFilter, Output};
use crate::output::{out, parse_rfc3339};
use crate::CliError;

/// Records asked for in one page.
const PAGE: u32 = 5000;

pub(crate) async fn run(cmd: AuditCmd, output: Output) -> Result<(), CliError> {
    match cmd {
        AuditCmd::List {
            socket,
            filter,
            limit,
        } => {
            let req = request(&filter)?;
            let records = fetch(&socket.socket, req, limit).await?;
            print_records(&records, output);
        }
        AuditCmd::Show { socket, seq } => {
            let req = pb::ListAuditRequest {
                after_seq: seq.saturating_sub(1),
                limit: 1,
                ..Default::default()
            };
            let records = fetch(&socket.socket, req, 1).await?;
            let Some(r) = records.into_iter().find(|r| r.seq == seq) else {
                return Err(CliError::Failed(format!("no audit record {seq}")));
            };
            match output {
                Output::Json => out(&format!("{}\n", to_json(&r))),
                Output::Human => out(&format!(
                    "{}\n",
                    serde_json::to_string_pretty(&r).unwrap_or_default()
                )),
            }
        }
        AuditCmd::Trace { socket, what } => {
            let records = trace(&socket.socket, &what).await?;
            if records.is_empty() {
                return Err(CliError::Failed(format!(
                    "no audit records for `{what}` (a serial, a jti or a spiffe:// ID)"
                )));
            }
            print_records(&records, output);
        }
        AuditCmd::Verify(socket) => {
            let mut c = connect(&socket.socket).await?;
            let r = c
                .verify_audit(pb::VerifyAuditRequest {})
                .await
                .map_err(status)?
                .into_inner();
            let ok = r.error.is_empty();
            match output {
                Output::Json => out(&format!(
                    "{}\n",
                    serde_json::json!({
                        "ok": ok,
                        "error": (!ok).then_some(&r.error),
                        "records": r.records,
                        "checkpoints": r.checkpoints,
                        "head_hash": r.head_hash,
                        "keys": r.keys,
                    })
                )),
                Output::Human if ok => out(&format!(
                    "audit journal verified: {} records, {} signed checkpoints, head {}, keys {}\n",
                    r.records,
                    r.checkpoints,
                    r.head_hash,
                    r.keys.join(", ")
                )),
                Output::Human => {}
            }
            if !ok {
                return Err(CliError::Failed(format!(
                    "audit journal failed verification: {}",
                    r.error
                )));
            }
        }
        AuditCmd::Export { socket, since } => {
            let filter = AuditFilter {
                spiffe_id: None,
                serial: None,
                jti: None,
                entry: None,
                kinds: Vec::new(),
                since,
            };
            let req = request(&filter)?;
            let mut c = connect(&socket.socket).await?;
            let mut req = pb::ListAuditRequest { limit: PAGE, ..req };
            loop {
                let page = c
                    .list_audit(req.clone())
                    .await
                    .map_err(status)?
                    .into_inner();
                let mut text = String::new();
                for r in &page.records {
                    text.push_str(r);
                    text.push('\n');
                }
                out(&text);
                if page.next_after_seq == 0 {
                    break;
                }
                req.after_seq = page.next_after_seq;
            }
        }
    }
    Ok(())
}

/// The request for `filter` (first page).
fn request(f: &AuditFilter) -> Result<pb::ListAuditRequest, CliError> {
    let since_ms = match &f.since {
        None => 0,
        Some(s) => since_ms(s)?,
    };
    Ok(pb::ListAuditRequest {
        spiffe_id: f.spiffe_id.clone().unwrap_or_default(),
        serial: f
            .serial
            .clone()
            .map(|s| normalise_serial(&s))
            .unwrap_or_default(),
        jti: f.jti.clone().unwrap_or_default(),
        entry_id: f.entry.clone().unwrap_or_default(),
        kinds: f.kinds.clone(),
        since_ms,
        after_seq: 0,
        limit: 0,
    })
}

/// `--since`: RFC 3339, or a duration back from now.
fn since_ms(s: &str) -> Result<i64, CliError> {
    if let Ok(t) = parse_rfc3339(s) {
        return Ok(t.saturating_mul(1000));
    }
    match writ_core::parse_duration(s) {
        Ok(d) => Ok((writ_core::now_unix() - d.as_secs() as i64).saturating_mul(1000)),
        Err(_) => Err(CliError::Usage(format!(
            "--since `{s}` is neither an RFC 3339 time nor a duration such as 1h or 7d"
        ))),
    }
}

/// Serials are recorded as lowercase hex without separators; accept `AB:CD` and `0xabcd`.
pub(crate) fn normalise_serial(s: &str) -> String {
    s.trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Every record `req` selects, up to `limit` (0: all), following pages.
async fn fetch(
    socket: &Path,
    req: pb::ListAuditRequest,
    limit: usize,
) -> Result<Vec<Record>, CliError> {
    let mut c = connect(socket).await?;
    let mut out = Vec::new();
    let mut req = req;
    loop {
        let want = if limit == 0 {
            PAGE
        } else {
            PAGE.min((limit - out.len()) as u32)
        };
        req.limit = want;
        let page = c
            .list_audit(req.clone())
            .await
            .map_err(status)?
            .into_inner();
        for r in &page.records {
            out.push(serde_json::from_str::<Record>(r).map_err(|e| {
                CliError::Failed(format!("server sent an unreadable audit record: {e}"))
            })?);
        }
        if page.next_after_seq == 0 || (limit > 0 && out.len() >= limit) {
            break;
        }
        req.after_seq = page.next_after_seq;
    }
    Ok(out)
}

/// One identity's records: by SPIFFE ID, or by serial and by `jti` (whichever matches), plus
/// the records of the entry it was issued under, in journal order.
async fn trace(socket: &Path, what: &str) -> Result<Vec<Record>, CliError> {
    let base = pb::ListAuditRequest::default();
    let mut records = if what.starts_with("spiffe://") {
        let req = pb::ListAuditRequest {
            spiffe_id: what.to_owned(),
            ..base.clone()
        };
        fetch(socket, req, 0).await?
    } else {
        let mut r = fetch(
            socket,
            pb::ListAuditRequest {
                serial: normalise_serial(what),
                ..base.clone()
            },
            0,
        )
        .await?;
        r.extend(
            fetch(
                socket,
                pb::ListAuditRequest {
                    jti: what.to_owned(),
                    ..base.clone()
                },
                0,
            )
            .await?,
        );
        // The entry's own history (created, changed, deleted) frames the credential's life.
        let entries: Vec<String> = r.iter().filter_map(|x| x.entry_id.clone()).collect();
        for e in dedup(entries) {
            let more = fetch(
                socket,
                pb::ListAuditRequest {
                    entry_id: e,
                    ..base.clone()
                },
                0,
            )
            .await?;
            r.extend(
                more.into_iter()
                    .filter(|x| x.serial.is_none() && x.jti.is_none()),
            );
        }
        r
    };
    records.sort_by_key(|r| r.seq);
    records.dedup_by_key(|r| r.seq);
    Ok(records)
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

fn to_json(r: &Record) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

fn print_records(records: &[Record], output: Output) {
    match output {
        Output::Json => out(&format!(
            "{}\n",
            serde_json::to_string(records).unwrap_or_else(|_| "[]".into())
        )),
        Output::Human => {
            if records.is_empty() {
                out("No audit records\n");
                return;
            }
            let mut text = String::new();
            for r in records {
                text.push_str(&line(r));
                text.push('\n');
            }
            out(&text);
        }
    }
}

/// One record on one line: number, time, kind, actor, then the correlation IDs present.
fn line(r: &Record) -> String {
    let actor = match (&r.actor.id, r.actor.uid) {
        (Some(id), _) => format!("{} {id}", r.actor.kind),
        (None, Some(uid)) => format!("{} uid={uid}", r.actor.kind),
        _ => r.actor.kind.clone(),
    };
    let mut s = format!("{:>6}  {}  {:<16} by {actor}", r.seq, r.time, r.kind);
    for (k, v) in [
        ("id", &r.spiffe_id),
        ("entry", &r.entry_id),
        ("serial", &r.serial),
        ("jti", &r.jti),
        ("task", &r.task_id),
    ] {
        if let Some(v) = v {
            s.push_str(&format!("  {k}={v}"));
        }
    }
    if let Some(Value::Object(c)) = r.details.get("changes") {
        let keys: Vec<&str> = c.keys().map(String::as_str).collect();
        s.push_str(&format!("  changed={}", keys.join(",")));
    }
    s
}
