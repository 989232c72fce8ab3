//! `writ federation create|update|list|show|delete`: federation relationships at run time
//! (those of the server's config file are listed, not changed).

use serde_json::{json, Value};
use writ_proto::v1 as pb;

use crate::admin::{connect, status};
use crate::args::{FederationCmd, FederationFields, Output};
use crate::output::out;
use crate::CliError;

fn rel_json(r: &pb::FederationRelationship) -> Value {
    json!({
        "trust_domain": r.trust_domain,
        "bundle_endpoint_url": r.bundle_endpoint_url,
        "profile": r.profile,
        "endpoint_spiffe_id": r.endpoint_spiffe_id,
        "source": r.source,
        "bundle_sequence": r.bundle_sequence,
    })
}

fn rel_text(r: &pb::FederationRelationship) -> String {
    format!(
        "Trust domain        : {}\nBundle endpoint URL : {}\nProfile             : {}\nEndpoint SPIFFE ID  : {}\nSource              : {}\nBundle sequence     : {}\n",
        r.trust_domain,
        r.bundle_endpoint_url,
        r.profile,
        r.endpoint_spiffe_id,
        r.source,
        if r.bundle_sequence == 0 {
            "none yet".to_owned()
        } else {
            r.bundle_sequence.to_string()
        }
    )
}

fn print(output: Output, rels: &[pb::FederationRelationship], one: bool) {
    match output {
        Output::Json if one => out(&format!(
            "{}\n",
            rels.first().map(rel_json).unwrap_or(Value::Null)
        )),
        Output::Json => out(&format!(
            "{}\n",
            Value::Array(rels.iter().map(rel_json).collect())
        )),
        Output::Human => out(&rels.iter().map(rel_text).collect::<Vec<_>>().join("\n")),
    }
}

async fn set(f: FederationFields, create: bool, output: Output) -> Result<(), CliError> {
    let bundle = match &f.trust_domain_bundle {
        Some(p) => std::fs::read(p)
            .map_err(|e| CliError::Failed(format!("cannot read `{}`: {e}", p.display())))?,
        None => Vec::new(),
    };
    let mut c = connect(&f.socket.socket).await?;
    let r = c
        .set_federation(pb::SetFederationRequest {
            relationship: Some(pb::FederationRelationship {
                trust_domain: f.trust_domain.to_string(),
                bundle_endpoint_url: f.bundle_endpoint_url,
                profile: f.profile,
                endpoint_spiffe_id: f.endpoint_spiffe_id,
                ..Default::default()
            }),
            create,
            trust_domain_bundle: bundle,
        })
        .await
        .map_err(status)?
        .into_inner();
    print(output, &[r], true);
    Ok(())
}

async fn list(socket: &std::path::Path) -> Result<Vec<pb::FederationRelationship>, CliError> {
    let mut c = connect(socket).await?;
    Ok(c.list_federations(pb::ListFederationsRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .relationships)
}

/// Runs the federation commands.
pub(crate) async fn run(cmd: FederationCmd, output: Output) -> Result<(), CliError> {
    match cmd {
        FederationCmd::Create(f) => set(f, true, output).await,
        FederationCmd::Update(f) => set(f, false, output).await,
        FederationCmd::List(socket) => {
            print(output, &list(&socket.socket).await?, false);
            Ok(())
        }
        FederationCmd::Show {
            socket,
            trust_domain,
        } => {
            let want = trust_domain.to_string();
            let found: Vec<_> = list(&socket.socket)
                .await?
                .into_iter()
                .filter(|x| x.trust_domain == want)
                .collect();
            if found.is_empty() {
                return Err(CliError::Failed(format!("no relationship with `{want}`")));
            }
            print(output, &found, true);
            Ok(())
        }
        FederationCmd::Delete {
            socket,
            trust_domain,
        } => {
            let mut c = connect(&socket.socket).await?;
            c.delete_federation(pb::DeleteFederationRequest {
                trust_domain: trust_domain.to_string(),
            })
            .await
            .map_err(status)?;
            match output {
                Output::Json => out(&format!(
                    "{}\n",
                    json!({"deleted": trust_domain.to_string()})
                )),
                Output::Human => out(&format!("Deleted the relationship with {trust_domain}\n")),
            }
            Ok(())
        }
    }
}
