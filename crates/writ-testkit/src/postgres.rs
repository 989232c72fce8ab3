//! A private PostgreSQL cluster for a test: Debian's `postgresql` binaries, `initdb` into a temp
//! dir, started on a free loopback port (its Unix socket in that dir, not in `/tmp`), password
//! authentication (scram) for the user `writ`, stopped when dropped. Never a mock.
//!
//! PostgreSQL refuses to run as root; when the tests run as root (CI), the cluster runs as the
//! `postgres` user the package creates (else `nobody`), which owns the temp dir.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::poll::free_port;

/// The password of the `writ` user in test clusters.
pub const PG_PASSWORD: &str = "writ-test-password";

/// A running private cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    uid: Option<(u32, u32)>,
    tls: bool,
}

/// Where the PostgreSQL binaries are (`WRIT_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`).
fn bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("WRIT_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed: `apt-get install postgresql` (Debian), or set \
             WRIT_PG_BIN to the directory holding initdb and pg_ctl"
        )
    })
}

/// The (uid, gid) to run PostgreSQL as, when we are root.
fn unprivileged() -> Option<(u32, u32)> {
    if crate::my_uid() != 0 {
        return None;
    }
    for name in ["postgres", "nobody"] {
        if let Ok(Some(u)) = nix::unistd::User::from_name(name) {
            return Some((u.uid.as_raw(), u.gid.as_raw()));
        }
    }
    panic!("running as root and there is no `postgres` or `nobody` user to run PostgreSQL as");
}

impl PgCluster {
    /// Makes and starts a cluster with the database `writ`.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// [`PgCluster::start`] serving TLS too (`ssl = on`) with a server certificate for
    /// `127.0.0.1` from a test CA made with `openssl` ([`PgCluster::ca_file`]).
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("writ-pg")
            .tempdir()
            .unwrap();
        let uid = unprivileged();
        if let Some((u, g)) = uid {
            std::os::unix::fs::chown(dir.path(), Some(u), Some(g)).unwrap();
        }
        let pw = dir.path().join("pw");
        std::fs::write(&pw, PG_PASSWORD).unwrap();
        if let Some((u, g)) = uid {
            std::os::unix::fs::chown(&pw, Some(u), Some(g)).unwrap();
        }
        let c = PgCluster {
            port: free_port(),
            dir,
            bin,
            uid,
            tls,
        };
        if tls {
            c.make_certificates();
        }
        c.run(
            "initdb",
            &[
                "-D",
                c.data().to_str().unwrap(),
                "-U",
                "writ",
                "--auth=scram-sha-256",
                "--pwfile",
                pw.to_str().unwrap(),
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ],
        );
        std::fs::remove_file(&pw).unwrap();
        c.start_again();
        let out = Command::new(c.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &c.port.to_string(),
                "-U",
                "writ",
                "writ",
            ])
            .env("PGPASSWORD", PG_PASSWORD)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    /// The test CA's certificate (PEM), for `ca_file` (clusters from [`PgCluster::start_tls`]).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("tls/ca.crt")
    }

    /// A CA and a server certificate for 127.0.0.1 under `tls/`, made with `openssl`.
    fn make_certificates(&self) {
        let d = self.dir.path().join("tls");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        for args in [
            [
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=writ-test-pg-ca",
                ],
            ]
            .concat(),
            [
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
            vec![
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "ext",
            ],
        ] {
            let out = Command::new("openssl")
                .args(&args)
                .current_dir(&d)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        use std::os::unix::fs::PermissionsExt;
        let key = d.join("server.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some((u, g)) = self.uid {
            for f in ["", "server.key", "server.crt"] {
                std::os::unix::fs::chown(d.join(f), Some(u), Some(g)).unwrap();
            }
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a PostgreSQL tool as the cluster's user; panics with its output on failure.
    fn run(&self, tool: &str, args: &[&str]) {
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        if let Some((u, g)) = self.uid {
            cmd.uid(u).gid(g).env("HOME", self.dir.path());
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the cluster (again, after [`PgCluster::stop`]); returns once it accepts connections.
    pub fn start_again(&self) {
        // fsync off: these clusters only live for a test; a killed *writ* process (what the
        // tests kill) loses nothing PostgreSQL committed either way. pg_stat_statements lets
        // the benchmark count writ's own statements (not autovacuum's).
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 \
             -c shared_preload_libraries=pg_stat_statements",
            self.port,
            self.dir.path().display()
        );
        if self.tls {
            let d = self.dir.path().join("tls");
            opts += &format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                d.join("server.crt").display(),
                d.join("server.key").display()
            );
        }
        let log = self.dir.path().join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Stops the cluster (fast shutdown: connections are cut).
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    /// The connection URL of database `writ` (password not included; see [`PgCluster::password_file`]).
    pub fn url(&self) -> String {
        format!("postgres://writ@127.0.0.1:{}/writ", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Writes the password to a 0600 file in `dir` and returns its path.
    pub fn password_file(&self, dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("pg-password");
        std::fs::write(&p, format!("{PG_PASSWORD}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    /// Runs SQL through `psql` (for tests that look at or tamper with the database directly).
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "writ",
                "-d",
                "writ",
                "-At",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", PG_PASSWORD)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.args([
            "-D",
            self.data().to_str().unwrap_or(""),
            "-m",
            "immediate",
            "stop",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some((u, g)) = self.uid {
            cmd.uid(u).gid(g);
        }
        let _ = cmd.status();
    }
}
