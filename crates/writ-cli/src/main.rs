//! The `writ` binary: parses the command line and dispatches into the library crates.
//!
//! Exit codes (contract.md): 0 success; 1 the operation failed (one line on stderr); 2 usage error
//! (clap's own exit code for bad flags and values, and input the server refused as invalid).

mod admin;
mod agent;
mod args;
mod audit;
mod authority;
mod dev;
mod federation;
mod files;
mod output;
mod policy;
mod server;
mod signals;
mod task;
mod wit;
mod workload;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{AgentCmd, Cli, Command, JwtCmd, LogFormat, ServerCmd, SvidCmd};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("writ: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("writ: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Errors that end a command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The operation failed (exit 1).
    #[error("{0}")]
    Failed(String),
    /// The input was refused (exit 2).
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WRIT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Human => b.init(),
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let out = cli.output;
    match cli.command {
        Command::Server(ServerCmd::Run {
            config,
            check: true,
            ..
        }) => {
            let cfg = writ_server::ServerConfig::load(&config)
                .map_err(|e| CliError::Failed(e.to_string()))?;
            // The policy files are part of the config: a set that would stop the server
            // fails the check too.
            if let Some(p) = &cfg.policy {
                writ_policy::policy_files(&p.files, p.dir.as_deref())
                    .and_then(|f| writ_policy::PolicyBundle::load(&f))
                    .map_err(|e| CliError::Failed(e.to_string()))?;
            }
            output::out(&format!("config `{}` is valid\n", config.display()));
            Ok(())
        }
        Command::Server(ServerCmd::Run {
            config, log_format, ..
        }) => {
            init_logging(log_format);
            server::run(&config).await
        }
        Command::Server(ServerCmd::Healthcheck(s)) => admin::healthcheck(&s.socket).await,
        Command::Agent(AgentCmd::Run {
            config,
            check: true,
            ..
        }) => {
            writ_agent::AgentConfig::load(&config).map_err(|e| CliError::Failed(e.to_string()))?;
            output::out(&format!("config `{}` is valid\n", config.display()));
            Ok(())
        }
        Command::Agent(AgentCmd::Run {
            config,
            join_token,
            log_format,
            ..
        }) => {
            init_logging(log_format);
            agent::run(&config, join_token).await
        }
        Command::Agent(AgentCmd::Healthcheck(s)) => agent::healthcheck(&s.socket).await,
        Command::Dev { dir } => {
            init_logging(LogFormat::Human);
            dev::run(&dir).await
        }
        Command::Token(c) => admin::token(c, out).await,
        Command::Entry(c) => admin::entry(c, out).await,
        Command::Node(c) => admin::node(c, out).await,
        Command::Audit(c) => audit::run(c, out).await,
        Command::Policy(c) => policy::run(c, out).await,
        Command::Authority(c) => authority::run(c, out).await,
        Command::Task(c) => task::run(c, out).await,
        Command::Wit(c) => wit::run(c, out).await,
        Command::Federation(c) => federation::run(c, out).await,
        Command::Bundle(c) => admin::bundle(c, out).await,
        Command::X509(c) => admin::x509(c, out).await,
        Command::Jwt(JwtCmd::Mint {
            socket,
            spiffe_id,
            audience,
            ttl,
        }) => admin::jwt_mint(&socket.socket, &spiffe_id, audience, ttl, out).await,
        Command::Jwt(JwtCmd::Revoke {
            socket,
            jti,
            reason,
        }) => admin::jwt_revoke(&socket.socket, jti, reason, out).await,
        Command::Jwt(JwtCmd::Fetch {
            socket,
            audience,
            spiffe_id,
            timeout,
        }) => {
            workload::within(
                timeout.timeout,
                workload::jwt_fetch(
                    socket.socket.as_deref(),
                    audience,
                    spiffe_id.map(|i| i.to_string()),
                    out,
                ),
            )
            .await
        }
        Command::Jwt(JwtCmd::Validate {
            socket,
            audience,
            token,
            timeout,
        }) => {
            workload::within(
                timeout.timeout,
                workload::jwt_validate(socket.socket.as_deref(), audience, token, out),
            )
            .await
        }
        Command::Svid(SvidCmd::Fetch {
            socket,
            out_dir,
            hint,
            timeout,
        }) => {
            workload::within(
                timeout.timeout,
                workload::svid_fetch(
                    socket.socket.as_deref(),
                    out_dir.as_deref(),
                    hint.as_deref(),
                    out,
                ),
            )
            .await
        }
        Command::Svid(SvidCmd::Watch { socket }) => {
            workload::svid_watch(socket.socket.as_deref(), out).await
        }
        Command::Helper { config } => {
            init_logging(LogFormat::Human);
            workload::helper(&config).await
        }
    }
}
