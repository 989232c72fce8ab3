//! `writ wit fetch|bundle|proof|validate`: WIT-SVIDs from the Workload API, Workload Proof
//! Tokens made with their key, and checking a WIT-SVID + WPT pair through the agent.

use serde_json::{json, Value};
use writ_client::workload::{connect, connect_tasks};
use writ_proto::task as tk;
use writ_proto::workload as wl;

use crate::args::{Output, WitCmd};
use crate::output::out;
use crate::CliError;

fn status(s: tonic::Status) -> CliError {
    CliError::Failed(format!("{:?}: {}", s.code(), s.message()))
}

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

/// The first FetchWITSVID answer (the default WIT-SVID first).
async fn first_wit(
    socket: Option<&str>,
    spiffe_id: Option<String>,
) -> Result<wl::Witsvid, CliError> {
    let mut c = connect(socket).await.map_err(failed)?;
    let mut st = c
        .fetch_witsvid(wl::WitsvidRequest {
            spiffe_id: spiffe_id.unwrap_or_default(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let r = st.message().await.map_err(status)?.ok_or_else(|| {
        CliError::Failed("the Workload API closed the stream without an answer".into())
    })?;
    r.svids
        .into_iter()
        .next()
        .ok_or_else(|| CliError::Failed("no WIT-SVID for this workload".into()))
}

/// The `exp` claim of a compact JWT (display only).
fn exp_of(token: &str) -> Option<i64> {
    use base64::Engine;
    let p = token.split('.').nth(1)?;
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p)
        .ok()?;
    serde_json::from_slice::<Value>(&b)
        .ok()?
        .get("exp")?
        .as_i64()
}

/// Runs the WIT commands.
pub(crate) async fn run(cmd: WitCmd, output: Output) -> Result<(), CliError> {
    match cmd {
        WitCmd::Fetch {
            socket,
            spiffe_id,
            timeout,
        } => {
            let w = crate::workload::within_value(
                timeout.timeout,
                first_wit(socket.socket.as_deref(), spiffe_id.map(|s| s.to_string())),
            )
            .await?;
            match output {
                Output::Json => out(&format!(
                    "{}\n",
                    json!({"spiffe_id": w.spiffe_id, "hint": w.hint, "wit_svid": w.wit_svid, "wit_svid_key": w.wit_svid_key, "expires_at": exp_of(&w.wit_svid)})
                )),
                Output::Human => out(&format!("{}\n{}\n", w.spiffe_id, w.wit_svid)),
            }
            Ok(())
        }
        WitCmd::Bundle { socket } => {
            let mut c = connect(socket.socket.as_deref()).await.map_err(failed)?;
            let mut st = c
                .fetch_wit_bundles(wl::WitBundlesRequest {})
                .await
                .map_err(status)?
                .into_inner();
            let r = st
                .message()
                .await
                .map_err(status)?
                .ok_or_else(|| CliError::Failed("no WIT bundles".into()))?;
            let m: serde_json::Map<String, Value> = r
                .bundles
                .into_iter()
                .map(|(td, j)| (td, serde_json::from_str(&j).unwrap_or(Value::String(j))))
                .collect();
            out(&format!("{}\n", Value::Object(m)));
            Ok(())
        }
        WitCmd::Proof {
            socket,
            audience,
            ttl,
            spiffe_id,
            wit_file,
            key_file,
        } => {
            let read = |p: &std::path::Path| {
                std::fs::read_to_string(p)
                    .map(|s| s.trim().to_owned())
                    .map_err(|e| CliError::Failed(format!("cannot read `{}`: {e}", p.display())))
            };
            let (wit, key_jwk) = match (wit_file, key_file) {
                (Some(w), Some(k)) => (read(&w)?, read(&k)?),
                (None, None) => {
                    let w = first_wit(socket.socket.as_deref(), spiffe_id).await?;
                    (w.wit_svid, w.wit_svid_key)
                }
                _ => {
                    return Err(CliError::Usage(
                        "--wit-file and --key-file go together (or neither: fetch from the Workload API)"
                            .into(),
                    ))
                }
            };
            let key = writ_ca::wit::key_from_private_jwk(&key_jwk).map_err(failed)?;
            let secs = ttl.map_or(60, |d| d.as_secs() as i64);
            let wpt = writ_ca::wit::make_wpt(&wit, &key, &audience, secs, writ_core::now_unix())
                .map_err(|e| {
                    CliError::Usage(format!(
                        "cannot make a proof: {e} (ttl at most {}s)",
                        writ_ca::wit::MAX_WPT_TTL
                    ))
                })?;
            match output {
                Output::Json => out(&format!("{}\n", json!({"wit_svid": wit, "wpt": wpt}))),
                Output::Human => out(&format!(
                    "Workload-Identity-Token: {wit}\nWorkload-Proof-Token: {wpt}\n"
                )),
            }
            Ok(())
        }
        WitCmd::Validate {
            socket,
            audience,
            wit,
            wpt,
        } => {
            let mut c = connect_tasks(socket.socket.as_deref())
                .await
                .map_err(failed)?;
            let r = c
                .validate_wit(tk::ValidateWitRequest {
                    wit_svid: wit,
                    wpt,
                    audience,
                })
                .await
                .map_err(status)?
                .into_inner();
            let claims: Value = serde_json::from_str(&r.claims_json).unwrap_or(Value::Null);
            match output {
                Output::Json => out(&format!(
                    "{}\n",
                    json!({"spiffe_id": r.spiffe_id, "claims": claims})
                )),
                Output::Human => out(&format!("{}\n{claims}\n", r.spiffe_id)),
            }
            Ok(())
        }
    }
}
