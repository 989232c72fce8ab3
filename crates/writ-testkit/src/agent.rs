//! A `writ agent run` process attached to a [`TestServer`].

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::poll::eventually;
use crate::process::writ_bin;
use crate::run::{cli, to_run, Run};
use crate::server::TestServer;

/// A `writ agent run` process attached to a [`TestServer`].
pub struct TestAgent {
    /// Its directory (config, data, sockets, log).
    pub dir: tempfile::TempDir,
    /// Its config file.
    pub config: PathBuf,
    /// The process, while running.
    pub child: Option<Child>,
    /// Command the agent is started through (empty: none).
    pub wrapper: Vec<String>,
}

impl TestAgent {
    /// Starts an agent that attests with a fresh join token (alias `spiffe://<td>/node/<name>`).
    pub fn start(server: &TestServer, name: &str) -> TestAgent {
        Self::start_with(server, name, "", &[])
    }

    /// Like [`TestAgent::start`], with `extra` appended to the config and the process started
    /// through `wrapper` (e.g. `["prlimit", "--nofile=64:64"]`).
    pub fn start_with(server: &TestServer, name: &str, extra: &str, wrapper: &[&str]) -> TestAgent {
        Self::start_listing(server, &[server.addr()], name, extra, wrapper)
    }

    /// An agent whose `server_address` is the list `servers` (the join token comes from
    /// `server`; all of them must share one store).
    pub fn start_ha(server: &TestServer, servers: &[String], name: &str) -> TestAgent {
        Self::start_listing(server, servers, name, "", &[])
    }

    fn start_listing(
        server: &TestServer,
        servers: &[String],
        name: &str,
        extra: &str,
        wrapper: &[&str],
    ) -> TestAgent {
        let server_address = if servers.len() == 1 {
            format!("\"{}\"", servers[0])
        } else {
            format!(
                "[{}]",
                servers
                    .iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bootstrap.pem");
        std::fs::write(&bundle, server.bundle().x509_pem()).unwrap();
        let token = server.cli_json(&[
            "token",
            "generate",
            "--spiffe-id",
            &format!("spiffe://{}/node/{name}", server.trust_domain),
        ])["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "trust_domain = \"{}\"\nserver_address = {server_address}\nsocket_path = \"{}\"\nadmin_socket = \"{}\"\ndata_dir = \"{}\"\ntrust_bundle_path = \"{}\"\n[node_attestor.join_token]\ntoken = \"{token}\"\n[workload_attestor.unix]\n{extra}\n",
                server.trust_domain,
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
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
        };
        a.spawn();
        a
    }

    /// Starts (or restarts) the process and waits until it has attested.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let mut cmd = match self.wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(writ_bin());
                c
            }
            None => Command::new(writ_bin()),
        };
        let child = cmd
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

    /// Everything the agent logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Its Workload API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("public/api.sock")
    }

    /// `unix://<socket>`, as `SPIFFE_ENDPOINT_SOCKET` wants it.
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

    /// SIGKILL.
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

impl TestAgent {
    /// Starts an agent whose node attestor is `attestor`, a TOML section such as
    /// `[node_attestor.x509pop]\ncert = "..."\nkey = "..."\n`, instead of a join token.
    pub fn start_with_attestor(server: &TestServer, attestor: &str) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bootstrap.pem");
        std::fs::write(&bundle, server.bundle().x509_pem()).unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "trust_domain = \"{}\"\nserver_address = \"{}\"\nsocket_path = \"{}\"\nadmin_socket = \"{}\"\ndata_dir = \"{}\"\ntrust_bundle_path = \"{}\"\n{attestor}\n[workload_attestor.unix]\n",
                server.trust_domain,
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
            wrapper: Vec::new(),
        };
        a.spawn();
        a
    }

    /// The agent's health report from its admin socket, if it answers. Runs its own runtime on
    /// a helper thread, so it can be called from sync and async tests alike.
    pub fn health(&self) -> Option<writ_proto::v1::AgentHealthResponse> {
        let admin = self.dir.path().join("private/admin.sock");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let ch = writ_server::client::unix_channel(&admin).await.ok()?;
                writ_proto::v1::agent_admin_client::AgentAdminClient::new(ch)
                    .health(writ_proto::v1::AgentHealthRequest {})
                    .await
                    .ok()
                    .map(|r| r.into_inner())
            })
        })
        .join()
        .ok()
        .flatten()
    }
}
