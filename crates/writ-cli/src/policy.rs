//! `writ policy`: validating policy files locally, and asking the server about the set in
//! force (show, check).

use serde_json::json;
use writ_proto::v1 as pb;

use crate::admin::{connect, status};
use crate::args::{Output, PolicyCmd};
use crate::output::{out, rfc3339};
use crate::CliError;

pub(crate) async fn run(cmd: PolicyCmd, output: Output) -> Result<(), CliError> {
    match cmd {
        PolicyCmd::Validate { files } => match writ_policy::PolicyBundle::load(&files) {
            Ok(b) => {
                let v = json!({"valid": true, "policies": b.ids(), "hash": b.hash()});
                match output {
                    Output::Json => out(&format!("{v}\n")),
                    Output::Human => out(&format!(
                        "{} policies valid against the writ schema (sha256 {})\n",
                        b.len(),
                        b.hash()
                    )),
                }
                Ok(())
            }
            Err(e) => {
                if output == Output::Json {
                    out(&format!(
                        "{}\n",
                        json!({"valid": false, "error": e.to_string()})
                    ));
                }
                Err(CliError::Failed(e.to_string()))
            }
        },
        PolicyCmd::Schema => {
            out(writ_policy::schema::SCHEMA);
            Ok(())
        }
        PolicyCmd::Show(socket) => {
            let mut c = connect(&socket.socket).await?;
            let r = c
                .show_policy(pb::ShowPolicyRequest {})
                .await
                .map_err(status)?
                .into_inner();
            let v = json!({
                "configured": r.configured,
                "files": r.files,
                "hash": r.hash,
                "loaded_at": r.configured.then(|| rfc3339(r.loaded_at)),
                "policies": r.policy_ids,
            });
            match output {
                Output::Json => out(&format!("{v}\n")),
                Output::Human if !r.configured => {
                    out("No policy configured: every matching entry is issued\n")
                }
                Output::Human => out(&format!(
                    "Files     : {}\nSHA-256   : {}\nLoaded at : {}\nPolicies  : {}\n",
                    r.files.join(", "),
                    r.hash,
                    rfc3339(r.loaded_at),
                    r.policy_ids.join(", ")
                )),
            }
            Ok(())
        }
        PolicyCmd::Check { socket, request } => {
            serde_json::from_str::<serde_json::Value>(&request)
                .map_err(|e| CliError::Usage(format!("--request is not JSON: {e}")))?;
            let mut c = connect(&socket.socket).await?;
            let r = c
                .check_policy(pb::CheckPolicyRequest {
                    request_json: request,
                })
                .await
                .map_err(status)?
                .into_inner();
            let req: serde_json::Value = serde_json::from_str(&r.request_json).unwrap_or_default();
            let v = json!({
                "configured": r.configured,
                "decision": if r.allowed { "allow" } else { "deny" },
                "policies": r.policies,
                "errors": r.errors,
                "request": req,
            });
            match output {
                Output::Json => out(&format!("{v}\n")),
                Output::Human => out(&format!(
                    "{}{}{}\n",
                    if r.allowed { "ALLOW" } else { "DENY" },
                    if r.policies.is_empty() {
                        String::new()
                    } else {
                        format!(" by {}", r.policies.join(", "))
                    },
                    if r.errors.is_empty() {
                        String::new()
                    } else {
                        format!(" (errors: {})", r.errors.join("; "))
                    }
                )),
            }
            Ok(())
        }
    }
}
