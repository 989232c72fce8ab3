//! `writ task start|end|list|show`: task identities from the Workload API socket's
//! `writ.task.v1.Tasks` service. `start --exec` runs a command holding the task's credentials
//! (files and environment) and ends the task when the command exits, whatever its exit.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use writ_client::workload::{connect_tasks, TasksClient};
use writ_proto::task as tk;

use crate::args::{Output, TaskCmd};
use crate::output::{out, rfc3339};
use crate::CliError;

async fn client(socket: Option<&str>) -> Result<TasksClient, CliError> {
    connect_tasks(socket)
        .await
        .map_err(|e| CliError::Failed(e.to_string()))
}

fn status(s: tonic::Status) -> CliError {
    CliError::Failed(format!("{:?}: {}", s.code(), s.message()))
}

fn task_json(t: &tk::TaskInfo) -> Value {
    json!({
        "task_id": t.id,
        "spiffe_id": t.spiffe_id,
        "owner": t.owner,
        "parent_task_id": (!t.parent_task_id.is_empty()).then_some(&t.parent_task_id),
        "purpose": t.purpose,
        "audiences": t.audiences,
        "state": t.state,
        "created_at": rfc3339(t.created_at),
        "expires_at": rfc3339(t.expires_at),
        "ended_at": (t.ended_at != 0).then(|| rfc3339(t.ended_at)),
        "end_reason": (!t.end_reason.is_empty()).then_some(&t.end_reason),
    })
}

fn task_text(t: &tk::TaskInfo) -> String {
    let mut s = format!(
        "Task ID       : {}\nSPIFFE ID     : {}\nOwner         : {}\nPurpose       : {}\nState         : {}\nExpires at    : {}\n",
        t.id, t.spiffe_id, t.owner, t.purpose, t.state, rfc3339(t.expires_at)
    );
    if !t.parent_task_id.is_empty() {
        s += &format!("Parent task   : {}\n", t.parent_task_id);
    }
    if !t.audiences.is_empty() {
        s += &format!("Audiences     : {}\n", t.audiences.join(", "));
    }
    if t.ended_at != 0 {
        s += &format!(
            "Ended at      : {} ({})\n",
            rfc3339(t.ended_at),
            t.end_reason
        );
    }
    s
}

/// The task's credentials in PEM / text form.
struct Creds {
    cert_pem: String,
    key_pem: String,
    bundle_pem: String,
    jwt: String,
    wit: String,
    wit_key: String,
}

fn creds(r: &tk::StartTaskResponse) -> Result<Creds, CliError> {
    let pem_certs = |der: &[u8]| -> Result<String, CliError> {
        if der.is_empty() {
            return Ok(String::new());
        }
        let certs = writ_core::bundle::split_der_certs(der, 64)
            .map_err(|e| CliError::Failed(format!("agent sent malformed certificates: {e}")))?;
        Ok(writ_core::pem::encode_many(
            "CERTIFICATE",
            certs.iter().map(Vec::as_slice),
        ))
    };
    Ok(Creds {
        cert_pem: pem_certs(&r.x509_svid)?,
        key_pem: if r.x509_svid_key.is_empty() {
            String::new()
        } else {
            writ_core::pem::encode("PRIVATE KEY", &r.x509_svid_key)
        },
        bundle_pem: pem_certs(&r.bundle)?,
        jwt: r.jwt_svid.clone(),
        wit: r.wit_svid.clone(),
        wit_key: r.wit_svid_key.clone(),
    })
}

/// Runs `command` to its end. SIGINT, SIGTERM and SIGHUP sent to `writ` go to the command
/// instead of killing `writ`, so the task is still ended (and its files removed) however the
/// job stops.
async fn run_forwarding_signals(
    command: &mut tokio::process::Command,
) -> std::io::Result<std::process::ExitStatus> {
    use rustix::process::{kill_process, Pid, Signal};
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers first: a signal that arrives between the spawn and their installation would
    // otherwise kill `writ` outright and leave the task active until it expires (seen under
    // load: the command printed its task ID, the caller sent SIGTERM at once).
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut child = command.spawn()?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .and_then(Pid::from_raw);
    loop {
        let sig = tokio::select! {
            status = child.wait() => return status,
            _ = int.recv() => Signal::INT,
            _ = term.recv() => Signal::TERM,
            _ = hup.recv() => Signal::HUP,
        };
        if let Some(pid) = pid {
            let _ = kill_process(pid, sig);
        }
    }
}

/// The directory for `--out-dir`: created 0700 if absent; if present it must be a real
/// directory (not a symlink) owned by this user and not writable by group or others, and is
/// left as it is (never chmod-ed: `--out-dir .` must not change the current directory).
fn prepare_dir(dir: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let fail = |why: String| CliError::Failed(format!("`{}`: {why}", dir.display()));
    match std::fs::symlink_metadata(dir) {
        Ok(m) => {
            if m.file_type().is_symlink() || !m.is_dir() {
                return Err(fail("is not a directory (or is a symlink)".into()));
            }
            let me = rustix::process::geteuid().as_raw();
            if m.uid() != me {
                return Err(fail(format!("is owned by uid {}, not {me}", m.uid())));
            }
            if m.mode() & 0o022 != 0 {
                return Err(fail(format!(
                    "is writable by group or others (mode {:o}): someone else could swap the files",
                    m.mode() & 0o777
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(e.to_string())),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// Writes the credentials to `dir` (see [`prepare_dir`]): `svid.pem`, `svid.key` (0600),
/// `bundle.pem`, `jwt`, `wit`, `wit.jwk` (0600), whichever the task holds.
fn write_files(dir: &Path, c: &Creds) -> Result<(), CliError> {
    let fail = |p: &Path, e: std::io::Error| {
        CliError::Failed(format!("cannot write `{}`: {e}", p.display()))
    };
    prepare_dir(dir)?;
    let w = |name: &str, data: &str, mode: u32| {
        if data.is_empty() {
            return Ok(());
        }
        let p = dir.join(name);
        writ_ca::keys::write_atomic(&p, data.as_bytes(), mode).map_err(|e| fail(&p, e))
    };
    w("svid.key", &c.key_pem, 0o600)?;
    w("svid.pem", &c.cert_pem, 0o644)?;
    w("bundle.pem", &c.bundle_pem, 0o644)?;
    w("jwt", &c.jwt, 0o600)?;
    w("wit", &c.wit, 0o600)?;
    w("wit.jwk", &c.wit_key, 0o600)?;
    Ok(())
}

/// Runs the task commands.
pub(crate) async fn run(cmd: TaskCmd, output: Output) -> Result<(), CliError> {
    match cmd {
        TaskCmd::Start {
            socket,
            purpose,
            ttl,
            audience,
            want,
            parent,
            spiffe_id,
            out_dir,
            exec,
        } => {
            let sock = socket.socket.as_deref();
            // Refuse an unsafe directory before a task exists, not after.
            if let Some(dir) = &out_dir {
                prepare_dir(dir)?;
            }
            let mut c = client(sock).await?;
            let r = c
                .start_task(tk::StartTaskRequest {
                    purpose,
                    ttl: ttl.map_or(0, |d| d.as_secs() as i64),
                    audiences: audience,
                    want,
                    parent_task_id: parent.unwrap_or_default(),
                    spiffe_id: spiffe_id.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            let task = r
                .task
                .clone()
                .ok_or_else(|| CliError::Failed("the agent answered without a task".into()))?;
            let cr = creds(&r)?;
            if !exec.is_empty() {
                return exec_under(c, &task, &cr, out_dir, &exec).await;
            }
            if let Some(dir) = &out_dir {
                write_files(dir, &cr)?;
            }
            match output {
                Output::Json => {
                    let mut v = task_json(&task);
                    if out_dir.is_none() {
                        v["x509_svid_pem"] = json!(cr.cert_pem);
                        v["x509_svid_key_pem"] = json!(cr.key_pem);
                        v["bundle_pem"] = json!(cr.bundle_pem);
                    }
                    v["jwt_svid"] = json!(cr.jwt);
                    if out_dir.is_none() {
                        v["wit_svid"] = json!(cr.wit);
                        v["wit_svid_key"] = json!(cr.wit_key);
                    }
                    out(&format!("{v}\n"));
                }
                Output::Human => {
                    let mut t = task_text(&task);
                    if let Some(dir) = &out_dir {
                        t += &format!("Files         : {}\n", dir.display());
                    }
                    if !cr.jwt.is_empty() {
                        t += &format!("JWT-SVID      : {}\n", cr.jwt);
                    }
                    out(&t);
                }
            }
            Ok(())
        }
        TaskCmd::End { socket, id, reason } => {
            let mut c = client(socket.socket.as_deref()).await?;
            let r = c
                .end_task(tk::EndTaskRequest {
                    task_id: id,
                    reason: reason.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            let t = r.task.unwrap_or_default();
            match output {
                Output::Json => {
                    let mut v = task_json(&t);
                    v["revoked"] = json!(r.revoked);
                    out(&format!("{v}\n"));
                }
                Output::Human => out(&format!(
                    "{}Revoked       : {} credential(s)\n",
                    task_text(&t),
                    r.revoked
                )),
            }
            Ok(())
        }
        TaskCmd::List { socket } => {
            let tasks = list(socket.socket.as_deref()).await?;
            match output {
                Output::Json => out(&format!(
                    "{}\n",
                    Value::Array(tasks.iter().map(task_json).collect())
                )),
                Output::Human => {
                    out(&tasks.iter().map(task_text).collect::<Vec<_>>().join("\n"));
                }
            }
            Ok(())
        }
        TaskCmd::Show { socket, id } => {
            let t = list(socket.socket.as_deref())
                .await?
                .into_iter()
                .find(|t| t.id == id)
                .ok_or_else(|| CliError::Failed(format!("no task `{id}` of this workload")))?;
            match output {
                Output::Json => out(&format!("{}\n", task_json(&t))),
                Output::Human => out(&task_text(&t)),
            }
            Ok(())
        }
    }
}

async fn list(socket: Option<&str>) -> Result<Vec<tk::TaskInfo>, CliError> {
    let mut c = client(socket).await?;
    Ok(c.list_tasks(tk::ListTasksRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .tasks)
}

/// Runs `cmd` with the task's credentials, then ends the task. The files go to `out_dir` or
/// a fresh 0700 directory under `$XDG_RUNTIME_DIR` (else the system temp dir), removed after.
/// The command sees `WRIT_TASK_ID`, `WRIT_TASK_SPIFFE_ID`, `WRIT_TASK_DIR` and, when the task
/// holds them, `WRIT_TASK_JWT` and `WRIT_TASK_JWT_FILE`. Exits with the command's status.
async fn exec_under(
    c: TasksClient,
    task: &tk::TaskInfo,
    cr: &Creds,
    out_dir: Option<PathBuf>,
    cmd: &[String],
) -> Result<(), CliError> {
    // A fresh directory of our own (created, never reused: the name holds the random task
    // ID and creation fails if it exists), removed when the task ends.
    let temp = match &out_dir {
        Some(_) => None,
        None => {
            use std::os::unix::fs::DirBuilderExt;
            let base = std::env::var_os("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .filter(|p| p.is_dir())
                .unwrap_or_else(std::env::temp_dir);
            let d = base.join(format!("writ-task-{}", task.id));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&d)
                .map_err(|e| CliError::Failed(format!("cannot make `{}`: {e}", d.display())))?;
            Some(d)
        }
    };
    let dir = out_dir
        .clone()
        .or_else(|| temp.clone())
        .ok_or_else(|| CliError::Failed("no task directory".into()))?;
    let end = |mut c: TasksClient, reason: String| {
        let id = task.id.clone();
        async move {
            c.end_task(tk::EndTaskRequest {
                task_id: id,
                reason,
            })
            .await
        }
    };
    if let Err(e) = write_files(&dir, cr) {
        let _ = end(c, "could not write the task's files".into()).await;
        return Err(e);
    }
    let mut command = tokio::process::Command::new(&cmd[0]);
    command
        .args(&cmd[1..])
        .env("WRIT_TASK_ID", &task.id)
        .env("WRIT_TASK_SPIFFE_ID", &task.spiffe_id)
        .env("WRIT_TASK_DIR", &dir);
    if !cr.jwt.is_empty() {
        command
            .env("WRIT_TASK_JWT", &cr.jwt)
            .env("WRIT_TASK_JWT_FILE", dir.join("jwt"));
    }
    if !cr.wit.is_empty() {
        command
            .env("WRIT_TASK_WIT_FILE", dir.join("wit"))
            .env("WRIT_TASK_WIT_KEY_FILE", dir.join("wit.jwk"));
    }
    let result = run_forwarding_signals(&mut command).await;
    let code = match &result {
        Ok(s) => s.code().unwrap_or(1),
        Err(_) => 127,
    };
    let reason = match &result {
        Ok(_) => format!("command exited ({code})"),
        Err(e) => format!("command could not start: {e}"),
    };
    let ended = end(c, reason).await;
    if let Some(d) = temp {
        let _ = std::fs::remove_dir_all(d);
    }
    if let Err(s) = ended {
        if s.code() != tonic::Code::FailedPrecondition {
            return Err(CliError::Failed(format!(
                "task `{}` could not be ended: {}",
                task.id,
                s.message()
            )));
        }
    }
    if let Err(e) = result {
        return Err(CliError::Failed(format!("cannot run `{}`: {e}", cmd[0])));
    }
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}
