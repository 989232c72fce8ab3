//! writ-agent-tasks-demo: an orchestrator that runs each job under its own task identity, and a
//! tool service that checks the credential it is shown.
//!
//! ```sh
//! writ-agent-tasks-demo tool --listen 127.0.0.1:8080 --audience http://127.0.0.1:8080/tool
//! writ-agent-tasks-demo orchestrator --tool 127.0.0.1:8080 --audience http://127.0.0.1:8080/tool --jobs 4
//! ```
//! Both read `SPIFFE_ENDPOINT_SOCKET` (or `--socket`). For each job the orchestrator starts a
//! task (`writ.task.v1.Tasks/StartTask`, purpose "job N"), alternating a JWT-SVID (sent as
//! `Authorization: Bearer`) and a WIT-SVID with a fresh Workload Proof Token per request
//! (`Workload-Identity-Token`, `Workload-Proof-Token`); calls the tool; ends the task; calls the
//! tool again with the same credential; and prints one JSON line per job with both answers.
//! The tool checks JWT-SVIDs with `ValidateJWTSVID` and WIT + WPT with `ValidateWIT` on its
//! own agent, and answers 200 with the caller's SPIFFE ID or 401 with the reason.

use clap::{Parser, Subcommand};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use writ_client::tasks::{StartedTask, Tasks, Want};
use writ_proto::task as tk;
use writ_proto::workload as wl;

#[derive(Parser)]
#[command(
    name = "writ-agent-tasks-demo",
    about = "Jobs under task identities, checked by a tool service"
)]
struct Cli {
    /// Workload API address (default: SPIFFE_ENDPOINT_SOCKET).
    #[arg(long, global = true)]
    socket: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the tool: check each request's credential for `audience`.
    Tool {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        audience: String,
    },
    /// Run `jobs` jobs, each under its own task identity.
    Orchestrator {
        /// The tool's address (host:port).
        #[arg(long)]
        tool: String,
        #[arg(long)]
        audience: String,
        #[arg(long, default_value_t = 2)]
        jobs: u32,
    },
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Tool { listen, audience } => tool(cli.socket, &listen, &audience).await,
        Cmd::Orchestrator {
            tool,
            audience,
            jobs,
        } => orchestrator(cli.socket, &tool, &audience, jobs).await,
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Reads one HTTP/1.1 request head (at most 64 KiB) and returns its headers, lowercased names.
async fn read_head(s: &mut tokio::net::TcpStream) -> Result<Vec<(String, String)>, Error> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Err("request head not complete".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect())
}

async fn check(
    socket: Option<&str>,
    audience: &str,
    h: &[(String, String)],
) -> Result<String, String> {
    let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if let (Some(wit), Some(wpt)) = (get("workload-identity-token"), get("workload-proof-token")) {
        let mut c = writ_client::workload::connect_tasks(socket)
            .await
            .map_err(|e| e.to_string())?;
        let r = c
            .validate_wit(tk::ValidateWitRequest {
                wit_svid: wit,
                wpt,
                audience: audience.to_owned(),
            })
            .await
            .map_err(|s| s.message().to_owned())?;
        return Ok(r.into_inner().spiffe_id);
    }
    let token = get("authorization")
        .and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned))
        .ok_or("no credential: send a JWT-SVID as Bearer, or a WIT-SVID with a proof")?;
    let mut c = writ_client::workload::connect(socket)
        .await
        .map_err(|e| e.to_string())?;
    let r = c
        .validate_jwtsvid(wl::ValidateJwtsvidRequest {
            audience: audience.to_owned(),
            svid: token,
        })
        .await
        .map_err(|s| s.message().to_owned())?;
    Ok(r.into_inner().spiffe_id)
}

async fn tool(socket: Option<String>, listen: &str, audience: &str) -> Result<(), Error> {
    let l = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("tool listening on {}", l.local_addr()?);
    loop {
        let (mut s, _) = l.accept().await?;
        let (socket, audience) = (socket.clone(), audience.to_owned());
        tokio::spawn(async move {
            let (code, body) = match read_head(&mut s).await {
                Ok(h) => match check(socket.as_deref(), &audience, &h).await {
                    Ok(id) => ("200 OK", id),
                    Err(e) => ("401 Unauthorized", e),
                },
                Err(e) => ("400 Bad Request", e.to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

/// One request to the tool with `headers`; (status code, body).
async fn call(tool: &str, headers: &[(&str, &str)]) -> Result<(u16, String), Error> {
    let mut s = tokio::net::TcpStream::connect(tool).await?;
    let mut req = format!("GET /tool HTTP/1.1\r\nhost: {tool}\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("bad response")?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// The request headers carrying a task's credential (a fresh proof each time for a WIT).
fn headers(t: &StartedTask, audience: &str) -> Result<Vec<(&'static str, String)>, Error> {
    match &t.wit {
        None => Ok(vec![("authorization", format!("Bearer {}", t.jwt_svid))]),
        Some(w) => Ok(vec![
            ("workload-identity-token", w.wit_svid.clone()),
            ("workload-proof-token", w.proof(audience, 30)?),
        ]),
    }
}

async fn orchestrator(
    socket: Option<String>,
    tool: &str,
    audience: &str,
    jobs: u32,
) -> Result<(), Error> {
    let mut tasks = Tasks::connect(socket.as_deref()).await?;
    for job in 0..jobs {
        let (kind, want) = if job % 2 == 0 {
            ("jwt", Want::JWT)
        } else {
            ("wit", Want::WIT)
        };
        let r = tasks
            .start(&format!("job {job}"), 120, &[audience], want)
            .await?;
        let task = r.task.clone();
        let send = |h: Vec<(&'static str, String)>| async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            call(tool, &h).await
        };
        let before = send(headers(&r, audience)?).await?;
        let (_, revoked) = tasks.end(&task.id, &format!("job {job} done")).await?;
        // The tool must refuse the credential now; agents learn of the revocation within
        // milliseconds, so look for a short while.
        let mut after = send(headers(&r, audience)?).await?;
        for _ in 0..200 {
            if after.0 != 200 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            after = send(headers(&r, audience)?).await?;
        }
        println!(
            "{}",
            json!({
                "job": job,
                "task_id": task.id,
                "spiffe_id": task.spiffe_id,
                "credential": kind,
                "before": {"status": before.0, "body": before.1},
                "revoked": revoked,
                "after": {"status": after.0, "body": after.1},
            })
        );
    }
    Ok(())
}
