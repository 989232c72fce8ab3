//! A `writ server run` process in its own temporary directory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::poll::{eventually, free_port};
use crate::process::writ_bin;
use crate::run::{to_run, Run};

/// Options for a test server.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    /// `[ca] ttl`.
    pub ca_ttl: String,
    /// `[node_attestor.x509pop] ca_bundle`, when set.
    pub x509pop_bundle: Option<PathBuf>,
    /// Whether to serve `[metrics]` on `metrics_port`.
    pub metrics: bool,
    /// Extra top-level config lines.
    pub extra: String,
    /// The trust domain (default `example.org`).
    pub trust_domain: String,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            ca_ttl: "1h".into(),
            x509pop_bundle: None,
            metrics: false,
            extra: String::new(),
            trust_domain: "example.org".into(),
        }
    }
}

/// A `writ server run` process in its own directory.
pub struct TestServer {
    /// Its directory (config, data, admin socket, log).
    pub dir: tempfile::TempDir,
    /// Agent-facing port.
    pub port: u16,
    /// Metrics port (served when `ServerOpts::metrics`).
    pub metrics_port: u16,
    /// Its trust domain.
    pub trust_domain: String,
    /// The process, while running.
    pub child: Option<Child>,
    /// Its config file.
    pub config: PathBuf,
}

impl TestServer {
    /// Starts a server with `opts` in a new temporary directory and waits until it is healthy.
    pub fn start(opts: ServerOpts) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let metrics_port = free_port();
        let mut cfg = format!(
            "trust_domain = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nadmin_socket = \"{}\"\ndata_dir = \"{}\"\ndefault_x509_svid_ttl = \"10m\"\n{}\n[ca]\nttl = \"{}\"\n[node_attestor.join_token]\n",
            opts.trust_domain,
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
            trust_domain: opts.trust_domain.clone(),
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

    /// Everything the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Its admin socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/admin.sock")
    }

    /// `127.0.0.1:<port>`.
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
            writ_core::TrustDomain::new(&self.trust_domain).unwrap(),
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

impl TestServer {
    /// The server process's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }
}
