//! Workload commands: `svid fetch`, `svid watch`, `jwt fetch`, `jwt validate`, and the helper
//! that keeps SVID files fresh.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};
use writ_client::workload::{connect, WorkloadClient};
use writ_proto::workload as wl;

use crate::args::Output;
use crate::output::{out, rfc3339};
use crate::CliError;

async fn client(socket: Option<&str>) -> Result<WorkloadClient, CliError> {
    connect(socket)
        .await
        .map_err(|e| CliError::Failed(e.to_string()))
}

fn status(s: tonic::Status) -> CliError {
    match s.code() {
        tonic::Code::InvalidArgument => CliError::Usage(s.message().to_owned()),
        tonic::Code::PermissionDenied => {
            CliError::Failed(format!("permission denied: {}", s.message()))
        }
        _ => CliError::Failed(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// Runs a one-shot Workload API command with a deadline: without one, a caller for whom the
/// agent holds no SVID (one that expired while the server was unreachable, say) waited forever.
pub(crate) async fn within(
    limit: std::time::Duration,
    f: impl std::future::Future<Output = Result<(), CliError>>,
) -> Result<(), CliError> {
    within_value(limit, f).await
}

/// [`within`] for a call that returns a value.
pub(crate) async fn within_value<T>(
    limit: std::time::Duration,
    f: impl std::future::Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| {
        Err(CliError::Failed(format!(
            "no answer from the Workload API within {}: the agent holds no SVID for this \
             workload yet (it may be unable to reach its server); retry, or raise --timeout",
            writ_core::format_duration(limit)
        )))
    })
}

/// One X509-SVID in PEM form.
pub(crate) struct PemSvid {
    pub(crate) spiffe_id: String,
    pub(crate) hint: String,
    pub(crate) expires_at: i64,
    pub(crate) serial: String,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    pub(crate) bundle_pem: String,
}

fn der_to_pem(ders: &[u8]) -> Result<(String, Vec<Vec<u8>>), CliError> {
    let certs = writ_core::bundle::split_der_certs(ders, 64)
        .map_err(|e| CliError::Failed(format!("agent sent malformed certificates: {e}")))?;
    Ok((
        writ_core::pem::encode_many("CERTIFICATE", certs.iter().map(Vec::as_slice)),
        certs,
    ))
}

/// Federated bundles as (trust domain name, PEM).
type PemBundles = Vec<(String, String)>;

pub(crate) fn pem_svids(r: &wl::X509svidResponse) -> Result<(Vec<PemSvid>, PemBundles), CliError> {
    let mut svids = Vec::new();
    for s in &r.svids {
        let (cert_pem, certs) = der_to_pem(&s.x509_svid)?;
        let (expires_at, serial) = certs
            .first()
            .and_then(|c| {
                use x509_parser::prelude::{FromDer, X509Certificate};
                X509Certificate::from_der(c)
                    .ok()
                    .map(|(_, c)| (c.validity().not_after.timestamp(), hex_of(c.raw_serial())))
            })
            .unwrap_or_default();
        svids.push(PemSvid {
            spiffe_id: s.spiffe_id.clone(),
            hint: s.hint.clone(),
            expires_at,
            serial,
            cert_pem,
            key_pem: writ_core::pem::encode("PRIVATE KEY", &s.x509_svid_key),
            bundle_pem: der_to_pem(&s.bundle)?.0,
        });
    }
    let mut fed = Vec::new();
    for (td, der) in &r.federated_bundles {
        let name = td.strip_prefix("spiffe://").unwrap_or(td).to_owned();
        // Federated names become file names: only trust domain characters are allowed.
        if writ_core::TrustDomain::new(&name).is_ok() {
            fed.push((name, der_to_pem(der)?.0));
        }
    }
    fed.sort();
    Ok((svids, fed))
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn first_x509(socket: Option<&str>) -> Result<wl::X509svidResponse, CliError> {
    let mut c = client(socket).await?;
    let mut st = c
        .fetch_x509svid(wl::X509svidRequest {})
        .await
        .map_err(status)?
        .into_inner();
    st.message().await.map_err(status)?.ok_or_else(|| {
        CliError::Failed("the Workload API closed the stream without an answer".into())
    })
}

fn svid_json(s: &PemSvid) -> Value {
    json!({"spiffe_id": s.spiffe_id, "hint": s.hint, "expires_at": rfc3339(s.expires_at), "serial": s.serial, "cert_pem": s.cert_pem, "bundle_pem": s.bundle_pem})
}

pub(crate) async fn svid_fetch(
    socket: Option<&str>,
    out_dir: Option<&Path>,
    hint: Option<&str>,
    output: Output,
) -> Result<(), CliError> {
    let r = first_x509(socket).await?;
    let (mut svids, fed) = pem_svids(&r)?;
    if let Some(h) = hint {
        svids.retain(|s| s.hint == h);
        if svids.is_empty() {
            return Err(CliError::Failed(format!(
                "no SVID with hint `{h}` for this workload"
            )));
        }
    }
    let Some(default) = svids.first() else {
        return Err(CliError::Failed("the Workload API returned no SVID".into()));
    };
    if let Some(dir) = out_dir {
        crate::files::write_svid_files(
            dir,
            &default.cert_pem,
            &default.key_pem,
            &default.bundle_pem,
            &fed,
            &r.crl,
        )?;
    }
    match output {
        Output::Json => out(&format!(
            "{}\n",
            json!({"svids": svids.iter().map(svid_json).collect::<Vec<_>>()})
        )),
        Output::Human => {
            let mut t = String::new();
            for s in &svids {
                t += &format!("SPIFFE ID : {}\n", s.spiffe_id);
                if !s.hint.is_empty() {
                    t += &format!("Hint      : {}\n", s.hint);
                }
                t += &format!(
                    "Expires   : {}\nSerial    : {}\n",
                    rfc3339(s.expires_at),
                    s.serial
                );
            }
            if let Some(dir) = out_dir {
                t += &format!(
                    "Wrote svid.pem, svid.key, bundle.pem to {}\n",
                    dir.display()
                );
            }
            out(&t);
        }
    }
    Ok(())
}

pub(crate) async fn svid_watch(socket: Option<&str>, output: Output) -> Result<(), CliError> {
    let mut c = client(socket).await?;
    // Watching waits by design: while the agent has no SVID for us yet it answers Unavailable,
    // and the watch says so and asks again.
    let mut st = loop {
        match c.fetch_x509svid(wl::X509svidRequest {}).await {
            Ok(st) => break st.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                eprintln!(
                    "writ: no SVID yet ({}); still waiting (svid watch waits until one arrives)",
                    s.message()
                );
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            Err(s) => return Err(status(s)),
        }
    };
    while let Some(r) = st.message().await.map_err(status)? {
        let (svids, _) = pem_svids(&r)?;
        let now = rfc3339(writ_core::now_unix());
        match output {
            Output::Json => out(&format!(
                "{}\n",
                json!({"received_at": now, "svids": svids.iter().map(|s| json!({"spiffe_id": s.spiffe_id, "expires_at": rfc3339(s.expires_at), "serial": s.serial})).collect::<Vec<_>>()})
            )),
            Output::Human => {
                let mut t = format!("{now}: {} SVID(s)\n", svids.len());
                for s in &svids {
                    t += &format!(
                        "  {} serial {} expires {}\n",
                        s.spiffe_id,
                        s.serial,
                        rfc3339(s.expires_at)
                    );
                }
                out(&t);
            }
        }
    }
    Err(CliError::Failed(
        "the Workload API closed the stream".into(),
    ))
}

pub(crate) async fn jwt_fetch(
    socket: Option<&str>,
    audience: Vec<String>,
    spiffe_id: Option<String>,
    output: Output,
) -> Result<(), CliError> {
    let mut c = client(socket).await?;
    let r = c
        .fetch_jwtsvid(wl::JwtsvidRequest {
            audience,
            spiffe_id: spiffe_id.unwrap_or_default(),
        })
        .await
        .map_err(status)?
        .into_inner();
    match output {
        Output::Json => out(&format!(
            "{}\n",
            json!({"svids": r.svids.iter().map(|s| json!({"spiffe_id": s.spiffe_id, "token": s.svid, "hint": s.hint})).collect::<Vec<_>>()})
        )),
        Output::Human => out(&r
            .svids
            .iter()
            .map(|s| format!("{}\n", s.svid))
            .collect::<String>()),
    }
    Ok(())
}

pub(crate) async fn jwt_validate(
    socket: Option<&str>,
    audience: String,
    token: String,
    output: Output,
) -> Result<(), CliError> {
    let mut c = client(socket).await?;
    let r = c
        .validate_jwtsvid(wl::ValidateJwtsvidRequest {
            audience,
            svid: token,
        })
        .await
        .map_err(|s| match s.code() {
            // An invalid token is an operation failure (exit 1) with the reason, not a usage error.
            tonic::Code::InvalidArgument => {
                CliError::Failed(format!("token is not valid: {}", s.message()))
            }
            _ => status(s),
        })?
        .into_inner();
    let claims = r.claims.as_ref().map(struct_to_json).unwrap_or(Value::Null);
    match output {
        Output::Json => out(&format!(
            "{}\n",
            json!({"spiffe_id": r.spiffe_id, "claims": claims})
        )),
        Output::Human => out(&format!(
            "Token is valid.\nSPIFFE ID : {}\nClaims    : {claims}\n",
            r.spiffe_id
        )),
    }
    Ok(())
}

fn struct_to_json(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                json!(*n as i64)
            } else {
                json!(n)
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::NullValue(_)) | None => Value::Null,
    }
}

/// `writ helper` config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HelperConfig {
    /// Workload API address (default: SPIFFE_ENDPOINT_SOCKET).
    #[serde(default)]
    socket: Option<String>,
    /// Where to write svid.pem, svid.key, bundle.pem.
    out_dir: PathBuf,
    /// Command run (with `sh -c`) after each update.
    #[serde(default)]
    cmd: Option<String>,
    /// Signal sent after each update (e.g. "HUP"), to `pid` or the PID in `pid_file`.
    #[serde(default)]
    signal: Option<String>,
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default)]
    pid_file: Option<PathBuf>,
}

pub(crate) async fn helper(config: &Path) -> Result<(), CliError> {
    let text = std::fs::read_to_string(config).map_err(|e| {
        CliError::Failed(format!(
            "cannot read helper config `{}`: {e}",
            config.display()
        ))
    })?;
    let cfg: HelperConfig = toml::from_str(&text).map_err(|e| {
        CliError::Failed(format!(
            "helper config `{}`: {}",
            config.display(),
            e.message()
        ))
    })?;
    if cfg.signal.is_some() && cfg.pid.is_none() && cfg.pid_file.is_none() {
        return Err(CliError::Failed(
            "helper config key `signal`: needs `pid` or `pid_file`".into(),
        ));
    }
    let signal = match &cfg.signal {
        Some(sig) => Some(parse_signal(sig).ok_or_else(|| {
            CliError::Failed(format!(
                "helper config key `signal`: `{sig}` is not a signal name (HUP, INT, QUIT, TERM, USR1, USR2, WINCH, KILL)"
            ))
        })?),
        None => None,
    };
    if let Some(p) = cfg.pid {
        check_pid(i64::from(p))
            .map_err(|e| CliError::Failed(format!("helper config key `pid`: {e}")))?;
    }
    let mut backoff = std::time::Duration::from_millis(500);
    loop {
        match helper_stream(&cfg, signal).await {
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "Workload API stream ended; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
    }
}

async fn helper_stream(
    cfg: &HelperConfig,
    signal: Option<rustix::process::Signal>,
) -> Result<(), CliError> {
    let mut c = client(cfg.socket.as_deref()).await?;
    let mut st = c
        .fetch_x509svid(wl::X509svidRequest {})
        .await
        .map_err(status)?
        .into_inner();
    while let Some(r) = st.message().await.map_err(status)? {
        let (svids, fed) = pem_svids(&r)?;
        let Some(s) = svids.first() else { continue };
        crate::files::write_svid_files(
            &cfg.out_dir,
            &s.cert_pem,
            &s.key_pem,
            &s.bundle_pem,
            &fed,
            &r.crl,
        )?;
        eprintln!(
            "writ helper: wrote {} (expires {}) to {}",
            s.spiffe_id,
            rfc3339(s.expires_at),
            cfg.out_dir.display()
        );
        if let Some(cmd) = &cfg.cmd {
            match tokio::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .status()
                .await
            {
                Ok(st) if st.success() => {}
                Ok(st) => eprintln!("writ helper: `{cmd}` exited with {st}"),
                Err(e) => eprintln!("writ helper: cannot run `{cmd}`: {e}"),
            }
        }
        if let Some(sig) = signal {
            let pid = match (&cfg.pid, &cfg.pid_file) {
                (Some(p), _) => check_pid(i64::from(*p)),
                (None, Some(f)) => std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read pid_file `{}`: {e}", f.display()))
                    .and_then(|t| {
                        t.trim()
                            .parse::<i64>()
                            .map_err(|_| format!("pid_file `{}` does not hold a PID", f.display()))
                    })
                    .and_then(check_pid),
                _ => Err("no PID to signal".to_owned()),
            };
            match pid {
                Ok(pid) => {
                    if let Err(e) = rustix::process::kill_process(pid, sig) {
                        eprintln!(
                            "writ helper: cannot signal process {}: {e}",
                            pid.as_raw_pid()
                        );
                    }
                }
                Err(e) => eprintln!("writ helper: {e}"),
            }
        }
    }
    Ok(())
}

/// A signal by name (`HUP` or `SIGHUP`, any case).
fn parse_signal(name: &str) -> Option<rustix::process::Signal> {
    use rustix::process::Signal;
    let n = name.to_ascii_uppercase();
    Some(match n.strip_prefix("SIG").unwrap_or(&n) {
        "HUP" => Signal::HUP,
        "INT" => Signal::INT,
        "QUIT" => Signal::QUIT,
        "TERM" => Signal::TERM,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "WINCH" => Signal::WINCH,
        "KILL" => Signal::KILL,
        _ => return None,
    })
}

/// One process to signal: 0 would signal the helper's own process group, negative values a
/// group, and values past `i32::MAX` wrap to negative ones in `kill(2)`; all are refused.
fn check_pid(raw: i64) -> Result<rustix::process::Pid, String> {
    i32::try_from(raw)
        .ok()
        .filter(|p| *p > 0)
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| format!("`{raw}` is not a process ID (1 to {})", i32::MAX))
}
