//! Running the `writ` CLI and reading what it printed.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::process::writ_bin;

/// Result of a CLI run.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    /// Standard output parsed as JSON (panics with both streams when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts exit code 0 and returns the run.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "command failed: stdout={} stderr={}",
            self.stdout, self.stderr
        );
        self
    }
}

pub(crate) fn to_run(o: Output) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
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
