//! Helpers for the end-to-end suites: run the real `writ` binary (server, CLI) in a temporary
//! directory, talk to it over its real sockets, and poll with deadlines instead of sleeping.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `writ` binary under test.
pub fn writ_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_writ"))
}

/// Polls `f` until it returns `Some`, failing the test after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// A free TCP port on loopback (bound then released; the tiny race is acceptable in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Result of a CLI run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "command failed: stdout={} stderr={}",
            self.stdout, self.stderr
        );
        self
    }
}

fn to_run(o: Output) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Options for a test server.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    pub ca_ttl: String,
    pub x509pop_bundle: Option<PathBuf>,
    pub metrics: bool,
    pub extra: String,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            ca_ttl: "1h".into(),
            x509pop_bundle: None,
            metrics: false,
            extra: String::new(),
        }
    }
}

/// A `writ server run` process in its own directory.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub metrics_port: u16,
    pub child: Option<Child>,
    pub config: PathBuf,
}

impl TestServer {
    pub fn start(opts: ServerOpts) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let metrics_port = free_port();
        let mut cfg = format!(
            "trust_domain = \"example.org\"\nlisten = \"127.0.0.1:{port}\"\nadmin_socket = \"{}\"\ndata_dir = \"{}\"\ndefault_x509_svid_ttl = \"10m\"\n{}\n[ca]\nttl = \"{}\"\n[node_attestor.join_token]\n",
            dir.path().join("run/admin.sock").display(),
            dir.path().join("data").display(),
            opts.extra,
            opts.ca_ttl,
        );
        if let Some(b) = &opts.x509pop_bundle {
            cfg += &format!("[node_attestor.x509pop]\nca_bundle = \"{}\"\n", b.display());
        }
        if opts.metrics {
            cfg += &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n");
        }
        let config = dir.path().join("server.toml");
        std::fs::write(&config, cfg).unwrap();
        let mut s = TestServer {
            dir,
            port,
            metrics_port,
            child: None,
            config,
        };
        s.spawn();
        s
    }

    /// Starts (or restarts) the process and waits until it is healthy.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let child = Command::new(writ_bin())
            .args(["server", "run", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        eventually("server healthy", Duration::from_secs(60), || {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("server exited with {st}: {}", self.log());
            }
            (self.cli(&["server", "healthcheck"]).code == 0).then_some(())
        });
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/admin.sock")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Run {
        let o = Command::new(writ_bin())
            .args(args)
            .env("WRIT_SERVER_SOCKET", self.socket())
            .output()
            .unwrap();
        to_run(o)
    }

    /// Runs the CLI with `--output json` and parses stdout.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        self.cli(&a).ok().json()
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The trust bundle (own trust domain).
    pub fn bundle(&self) -> writ_core::Bundle {
        let r = self.cli(&["bundle", "show", "--format", "jwks"]).ok();
        writ_core::Bundle::from_json(
            writ_core::TrustDomain::new("example.org").unwrap(),
            r.stdout.as_bytes(),
        )
        .unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the CLI without a server.
pub fn cli(args: &[&str], env: &[(&str, &Path)]) -> Run {
    let mut c = Command::new(writ_bin());
    c.args(args);
    // Help output shows the values of these; keep it independent of the caller's shell.
    for k in [
        "WRIT_SERVER_SOCKET",
        "WRIT_AGENT_SOCKET",
        "SPIFFE_ENDPOINT_SOCKET",
    ] {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    to_run(c.output().unwrap())
}

/// A `writ agent run` process attached to a [`TestServer`].
pub struct TestAgent {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub child: Option<Child>,
}

impl TestAgent {
    /// Starts an agent that attests with a fresh join token (alias `spiffe://example.org/node/<name>`).
    pub fn start(server: &TestServer, name: &str) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bootstrap.pem");
        std::fs::write(&bundle, server.bundle().x509_pem()).unwrap();
        let token = server.cli_json(&[
            "token",
            "generate",
            "--spiffe-id",
            &format!("spiffe://example.org/node/{name}"),
        ])["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "trust_domain = \"example.org\"\nserver_address = \"{}\"\nsocket_path = \"{}\"\nadmin_socket = \"{}\"\ndata_dir = \"{}\"\ntrust_bundle_path = \"{}\"\n[node_attestor.join_token]\ntoken = \"{token}\"\n[workload_attestor.unix]\n",
                server.addr(),
                dir.path().join("public/api.sock").display(),
                dir.path().join("private/admin.sock").display(),
                dir.path().join("data").display(),
                bundle.display(),
            ),
        )
        .unwrap();
        let mut a = TestAgent {
            dir,
            config,
            child: None,
        };
        a.spawn();
        a
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let child = Command::new(writ_bin())
            .args(["agent", "run", "--config"])
            .arg(&self.config)
            .env("WRIT_LOG", "info,writ_agent=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let admin = self.dir.path().join("private/admin.sock");
        eventually("agent attested", Duration::from_secs(60), || {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("agent exited with {st}: {}", self.log());
            }
            (cli(
                &["agent", "healthcheck", "--socket", admin.to_str().unwrap()],
                &[],
            )
            .code
                == 0)
                .then_some(())
        });
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("public/api.sock")
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Runs a workload command against this agent.
    pub fn cli(&self, args: &[&str]) -> Run {
        let o = Command::new(writ_bin())
            .args(args)
            .env("SPIFFE_ENDPOINT_SOCKET", self.endpoint())
            .output()
            .unwrap();
        to_run(o)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// This process's effective uid (what the unix attestor reports for it).
pub fn my_uid() -> u32 {
    writ_agent::attestor::own_ids().unwrap().0
}

/// Verifies an X509-SVID chain (leaf first) against CA roots with rustls-webpki, an
/// implementation independent of writ's own validator.
pub fn webpki_verify(chain: &[Vec<u8>], roots: &[Vec<u8>]) -> Result<(), String> {
    use rustls_pki_types::{CertificateDer, UnixTime};
    let anchors: Vec<_> = roots
        .iter()
        .filter_map(|r| {
            webpki::anchor_from_trusted_cert(&CertificateDer::from(r.as_slice()))
                .ok()
                .map(|a| a.to_owned())
        })
        .collect();
    let leaf = CertificateDer::from(chain[0].as_slice());
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(|e| e.to_string())?;
    let inter: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &inter,
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}
