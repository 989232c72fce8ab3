//! The command tree of contract.md, as clap types. Values from the command line are parsed into
//! writ-core's types here, so a malformed SPIFFE ID, selector or duration is a usage error
//! (exit 2) that names the problem, before anything is sent anywhere.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use writ_core::{Selector, SpiffeId, TrustDomain};

/// writ: workload identity issuer (SPIFFE).
#[derive(Debug, Parser)]
#[command(name = "writ", version, propagate_version = true)]
pub(crate) struct Cli {
    /// Output format: human-readable text, or one JSON value on stdout.
    #[arg(long, global = true, value_enum, default_value_t = Output::Human)]
    pub(crate) output: Output,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Text for people.
    Human,
    /// One JSON value on stdout.
    Json,
}

/// Log formats of the long-running commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Text for people.
    Human,
    /// One JSON object per line.
    Json,
}

// Parsed once per process; boxing the large variants would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// The issuing server.
    #[command(subcommand)]
    Server(ServerCmd),
    /// The node agent (serves the Workload API).
    #[command(subcommand)]
    Agent(AgentCmd),
    /// Embedded server and agent in one process, for trying writ out.
    Dev {
        /// Directory for data and sockets.
        #[arg(long, default_value = ".writ-dev")]
        dir: PathBuf,
    },
    /// Join tokens for agent attestation.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Registration entries.
    #[command(subcommand)]
    Entry(EntryCmd),
    /// Attested nodes (agents).
    #[command(subcommand)]
    Node(NodeCmd),
    /// Trust bundles.
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// X509-SVIDs minted directly by the server.
    #[command(subcommand)]
    X509(X509Cmd),
    /// JWT-SVIDs.
    #[command(subcommand)]
    Jwt(JwtCmd),
    /// X509-SVIDs from the Workload API.
    #[command(subcommand)]
    Svid(SvidCmd),
    /// The audit journal: who got which identity, when, and what changed.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Policy-as-code: Cedar policies decided at every mint.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// The CA's X.509 authorities and JWT keys: rotation on demand.
    #[command(subcommand)]
    Authority(AuthorityCmd),
    /// Federation relationships: trust domains whose bundles the server fetches.
    #[command(subcommand)]
    Federation(FederationCmd),
    /// WIT-SVIDs (key-bound workload identity tokens) and Workload Proof Tokens.
    #[command(subcommand)]
    Wit(WitCmd),
    /// Task identities: short-lived identities a workload starts for one task of its own.
    #[command(subcommand)]
    Task(TaskCmd),
    /// Sidecar that keeps SVID files fresh.
    Helper {
        /// Helper config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ServerCmd {
    /// Runs the server.
    Run {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Human)]
        log_format: LogFormat,
        /// Only check the config file (keys and values) and exit.
        #[arg(long)]
        check: bool,
    },
    /// Exits 0 when the server answers on its admin socket.
    Healthcheck(AdminSocket),
}

#[derive(Debug, Subcommand)]
pub(crate) enum AgentCmd {
    /// Runs the agent.
    Run {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Join token for first attestation.
        #[arg(long)]
        join_token: Option<String>,
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Human)]
        log_format: LogFormat,
        /// Only check the config file (keys and values) and exit.
        #[arg(long)]
        check: bool,
    },
    /// Exits 0 when the agent answers on its admin socket and has an identity.
    Healthcheck(AgentAdminSocket),
}

/// Where the agent's admin socket is.
#[derive(Debug, Args)]
pub(crate) struct AgentAdminSocket {
    /// Agent admin socket path.
    #[arg(
        long,
        env = "WRIT_AGENT_SOCKET",
        default_value = "/run/writ/agent/private/admin.sock"
    )]
    pub(crate) socket: PathBuf,
}

/// Where the server's (or agent's) admin socket is.
#[derive(Debug, Args)]
pub(crate) struct AdminSocket {
    /// Admin socket path.
    #[arg(
        long,
        env = "WRIT_SERVER_SOCKET",
        default_value = "/run/writ/server/admin.sock"
    )]
    pub(crate) socket: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCmd {
    /// Generates a single-use join token.
    Generate {
        #[command(flatten)]
        socket: AdminSocket,
        /// Node alias the attesting agent is also known by.
        #[arg(long, value_parser = parse_id)]
        spiffe_id: Option<SpiffeId>,
        /// Lifetime.
        #[arg(long, value_parser = parse_ttl, default_value = "10m")]
        ttl: Duration,
    },
}

/// Fields shared by `entry create` and `entry update`.
#[derive(Debug, Args)]
pub(crate) struct EntryFields {
    /// The SPIFFE ID to grant.
    #[arg(long, value_parser = parse_workload_id)]
    pub(crate) spiffe_id: Option<SpiffeId>,
    /// Parent: an agent, node alias or workload ID.
    #[arg(long, value_parser = parse_id, conflicts_with = "node")]
    pub(crate) parent_id: Option<SpiffeId>,
    /// Make a node alias entry (parent is the server; selectors are node selectors).
    #[arg(long)]
    pub(crate) node: bool,
    /// Selector `type:value`; repeat for several (all must match).
    #[arg(long = "selector", value_parser = parse_selector)]
    pub(crate) selectors: Vec<Selector>,
    /// X509-SVID lifetime.
    #[arg(long, value_parser = parse_ttl)]
    pub(crate) x509_ttl: Option<Duration>,
    /// JWT-SVID lifetime.
    #[arg(long, value_parser = parse_ttl)]
    pub(crate) jwt_ttl: Option<Duration>,
    /// DNS SAN; repeat for several.
    #[arg(long = "dns")]
    pub(crate) dns_names: Vec<String>,
    /// Workload API hint.
    #[arg(long)]
    pub(crate) hint: Option<String>,
    /// May use the admin API.
    #[arg(long)]
    pub(crate) admin: bool,
    /// A downstream server.
    #[arg(long)]
    pub(crate) downstream: bool,
    /// Federated trust domain; repeat for several.
    #[arg(long = "federates-with", value_parser = parse_td)]
    pub(crate) federates_with: Vec<TrustDomain>,
    /// Expiry (RFC 3339); the entry is not served after it.
    #[arg(long)]
    pub(crate) expires_at: Option<String>,
    /// Owner (team, person).
    #[arg(long)]
    pub(crate) owner: Option<String>,
    /// Purpose.
    #[arg(long)]
    pub(crate) purpose: Option<String>,
    /// Break-glass: passes the `[governance]` owner and purpose rules, needs `--reason`, ends
    /// within `break_glass_max_lifetime` (default 1h), and every use is journalled and logged.
    #[arg(long, requires = "reason")]
    pub(crate) break_glass: bool,
    /// Why break-glass is used (with `--break-glass`).
    #[arg(long, requires = "break_glass")]
    pub(crate) reason: Option<String>,
    /// Let a workload holding this identity start task identities
    /// (`<spiffe-id>/task/<id>`): `max_ttl=DUR,max_active=N,audiences=a|b`; `none` removes it.
    #[arg(long, value_parser = parse_delegate)]
    pub(crate) delegate: Option<DelegateArg>,
}

/// `--delegate`: a delegation, or `none` to remove one.
#[derive(Debug, Clone)]
pub(crate) enum DelegateArg {
    /// Set.
    Set(writ_core::Delegation),
    /// Remove.
    None,
}

fn parse_delegate(s: &str) -> Result<DelegateArg, String> {
    if s.trim() == "none" {
        return Ok(DelegateArg::None);
    }
    writ_core::Delegation::parse(s).map(DelegateArg::Set)
}

/// Access review filters for `entry list`.
#[derive(Debug, Args)]
pub(crate) struct EntryReview {
    /// Only entries that expire within this long (e.g. `7d`), not yet expired.
    #[arg(long, value_parser = parse_ttl, conflicts_with = "expired")]
    pub(crate) expiring: Option<Duration>,
    /// Only entries past their `expires_at` (no longer served).
    #[arg(long)]
    pub(crate) expired: bool,
    /// Only entries without an owner.
    #[arg(long, conflicts_with = "owner")]
    pub(crate) no_owner: bool,
    /// Only entries owned by this owner.
    #[arg(long)]
    pub(crate) owner: Option<String>,
    /// Only break-glass entries.
    #[arg(long)]
    pub(crate) break_glass: bool,
}

impl EntryReview {
    /// Whether `e` passes every filter given, at `now`.
    pub(crate) fn keeps(&self, e: &writ_core::Entry, now: i64) -> bool {
        let expired = e.expires_at.is_some_and(|t| t <= now);
        self.expiring
            .is_none_or(|d| !expired && e.expires_at.is_some_and(|t| t <= now + d.as_secs() as i64))
            && (!self.expired || expired)
            && (!self.no_owner || e.owner.trim().is_empty())
            && self.owner.as_ref().is_none_or(|o| &e.owner == o)
            && (!self.break_glass || e.break_glass)
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum EntryCmd {
    /// Creates an entry.
    Create {
        #[command(flatten)]
        socket: AdminSocket,
        #[command(flatten)]
        fields: EntryFields,
    },
    /// Shows one entry.
    Show {
        #[command(flatten)]
        socket: AdminSocket,
        /// Entry ID.
        id: String,
    },
    /// Lists entries.
    List {
        #[command(flatten)]
        socket: AdminSocket,
        /// Only entries granting this ID.
        #[arg(long, value_parser = parse_id)]
        spiffe_id: Option<SpiffeId>,
        /// Only entries with this parent.
        #[arg(long, value_parser = parse_id)]
        parent_id: Option<SpiffeId>,
        /// Only entries with this selector.
        #[arg(long, value_parser = parse_selector)]
        selector: Option<Selector>,
        #[command(flatten)]
        review: EntryReview,
    },
    /// Updates an entry (given fields replace the old values).
    Update {
        #[command(flatten)]
        socket: AdminSocket,
        /// Entry ID.
        id: String,
        #[command(flatten)]
        fields: EntryFields,
    },
    /// Deletes entries.
    Delete {
        #[command(flatten)]
        socket: AdminSocket,
        /// Entry IDs.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

/// Which audit records (at most one correlation ID; `--kind` and `--since` narrow further).
#[derive(Debug, Args)]
pub(crate) struct AuditFilter {
    /// Records about this SPIFFE ID.
    #[arg(long, conflicts_with_all = ["serial", "jti", "entry"])]
    pub(crate) spiffe_id: Option<String>,
    /// Records about this X509-SVID serial (hex).
    #[arg(long, conflicts_with_all = ["jti", "entry"])]
    pub(crate) serial: Option<String>,
    /// Records about this JWT-SVID `jti`.
    #[arg(long, conflicts_with = "entry")]
    pub(crate) jti: Option<String>,
    /// Records about this entry ID.
    #[arg(long)]
    pub(crate) entry: Option<String>,
    /// Only records of this kind (`x509.issued`, `entry.created`, ...); repeatable.
    #[arg(long = "kind")]
    pub(crate) kinds: Vec<String>,
    /// Only records since this time: RFC 3339, or a duration back from now (`1h`, `7d`).
    #[arg(long)]
    pub(crate) since: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuthorityCmd {
    /// X.509 CAs (sign X509-SVIDs).
    #[command(subcommand)]
    X509(AuthorityAction),
    /// JWT signing keys.
    #[command(subcommand)]
    Jwt(AuthorityAction),
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuthorityAction {
    /// Lists the authorities: key ID, state (prepared, active, old), tainted, validity.
    Show(AdminSocket),
    /// Makes a prepared authority now (published in the bundle, not signing yet).
    Prepare(AdminSocket),
    /// Activates the prepared authority now; the active one becomes old (still published).
    Activate(AdminSocket),
    /// Taints an old authority: agents re-sign at once (with jitter) every SVID it signed,
    /// and drop JWT-SVIDs it signed.
    Taint {
        #[command(flatten)]
        socket: AdminSocket,
        /// The authority's key ID (from `show`).
        key_id: String,
    },
    /// Revokes a tainted authority: it leaves the bundle and its key is destroyed.
    Revoke {
        #[command(flatten)]
        socket: AdminSocket,
        /// The authority's key ID.
        key_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCmd {
    /// Checks policy files against the writ schema, without a server. Exit 1 with the errors
    /// (file, line, policy).
    Validate {
        /// Policy files (`.cedar`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Asks the server for a decision under the set in force, without minting.
    Check {
        #[command(flatten)]
        socket: AdminSocket,
        /// The request, JSON: {"action": "mint_x509", "spiffe_id": "...", "entry_id"?,
        /// "node_id"?, "uid"?, "ttl"?, "audiences"?, "now"?}.
        #[arg(long)]
        request: String,
    },
    /// The set in force: files, hash, load time, policy ids.
    Show(AdminSocket),
    /// Prints the Cedar schema policies are validated against.
    Schema,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCmd {
    /// Lists audit records, oldest first.
    List {
        #[command(flatten)]
        socket: AdminSocket,
        #[command(flatten)]
        filter: AuditFilter,
        /// Most records to print (0: all).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Shows one record by its number.
    Show {
        #[command(flatten)]
        socket: AdminSocket,
        /// Record number (`seq`).
        seq: u64,
    },
    /// One identity's lifecycle in order: a serial, a `jti` or a SPIFFE ID.
    Trace {
        #[command(flatten)]
        socket: AdminSocket,
        /// X509-SVID serial (hex), JWT-SVID `jti`, or `spiffe://` ID.
        what: String,
    },
    /// Checks the whole journal: hashes, chain, signed checkpoints, the tail. Exits 1 naming
    /// the first bad record.
    Verify(AdminSocket),
    /// Every record (or those since `--since`) as JSON lines, for a SIEM.
    Export {
        #[command(flatten)]
        socket: AdminSocket,
        /// RFC 3339, or a duration back from now.
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCmd {
    /// Lists attested nodes.
    List(AdminSocket),
    /// Shows one node.
    Show {
        #[command(flatten)]
        socket: AdminSocket,
        /// Agent SPIFFE ID.
        #[arg(value_parser = parse_id)]
        id: SpiffeId,
    },
    /// Evicts a node: it must attest again.
    Evict {
        #[command(flatten)]
        socket: AdminSocket,
        /// Agent SPIFFE ID.
        #[arg(value_parser = parse_id)]
        id: SpiffeId,
    },
    /// Bans a node: every call is refused and it cannot attest again.
    Ban {
        #[command(flatten)]
        socket: AdminSocket,
        /// Agent SPIFFE ID.
        #[arg(value_parser = parse_id)]
        id: SpiffeId,
    },
}

/// Bundle output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BundleFormat {
    /// Concatenated PEM CA certificates.
    Pem,
    /// SPIFFE bundle JSON (JWK Set).
    Jwks,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BundleCmd {
    /// Shows the server's own bundle.
    Show {
        #[command(flatten)]
        socket: AdminSocket,
        /// Format.
        #[arg(long, value_enum, default_value_t = BundleFormat::Pem)]
        format: BundleFormat,
        /// Print the CA's current CRL (PEM) instead; with `--output json`, the CRL and the
        /// revoked credentials.
        #[arg(long)]
        crl: bool,
    },
    /// Lists federated bundles.
    List(AdminSocket),
    /// Sets a federated bundle from a file (SPIFFE bundle JSON or PEM).
    Set {
        #[command(flatten)]
        socket: AdminSocket,
        /// Trust domain of the bundle.
        #[arg(long, value_parser = parse_td)]
        trust_domain: TrustDomain,
        /// File to read.
        #[arg(long)]
        file: PathBuf,
    },
    /// Deletes a federated bundle.
    Delete {
        #[command(flatten)]
        socket: AdminSocket,
        /// Trust domain.
        #[arg(value_parser = parse_td)]
        trust_domain: TrustDomain,
    },
}

/// The fields of `federation create` and `federation update`.
#[derive(Debug, Args)]
pub(crate) struct FederationFields {
    #[command(flatten)]
    pub(crate) socket: AdminSocket,
    /// The partner trust domain.
    #[arg(long, value_parser = parse_td)]
    pub(crate) trust_domain: TrustDomain,
    /// Its bundle endpoint (`https://host:port/path`).
    #[arg(long)]
    pub(crate) bundle_endpoint_url: String,
    /// How the endpoint authenticates (run-time relationships: https_spiffe).
    #[arg(long, default_value = "https_spiffe")]
    pub(crate) profile: String,
    /// The endpoint's SPIFFE ID (e.g. `spiffe://partner.example/writ/server`).
    #[arg(long)]
    pub(crate) endpoint_spiffe_id: String,
    /// The partner's first bundle (SPIFFE bundle JSON or PEM), to authenticate its endpoint
    /// until the first fetch; required on create unless its bundle is already set.
    #[arg(long)]
    pub(crate) trust_domain_bundle: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum FederationCmd {
    /// Creates a relationship; its bundle is fetched at once and then at its refresh hint.
    Create(FederationFields),
    /// Changes a relationship made with `create`.
    Update(FederationFields),
    /// Lists the relationships (config file and run time).
    List(AdminSocket),
    /// Shows one relationship.
    Show {
        #[command(flatten)]
        socket: AdminSocket,
        /// Trust domain.
        #[arg(value_parser = parse_td)]
        trust_domain: TrustDomain,
    },
    /// Deletes a run-time relationship (its bundle stays until `writ bundle delete`).
    Delete {
        #[command(flatten)]
        socket: AdminSocket,
        /// Trust domain.
        #[arg(value_parser = parse_td)]
        trust_domain: TrustDomain,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum X509Cmd {
    /// Mints an X509-SVID directly from the server.
    Mint {
        #[command(flatten)]
        socket: AdminSocket,
        /// Identity.
        #[arg(long, value_parser = parse_workload_id)]
        spiffe_id: SpiffeId,
        /// Lifetime.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        /// Write svid.pem, svid.key and bundle.pem here.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Revokes X509-SVIDs: one serial, or every outstanding SVID of a SPIFFE ID or an entry.
    /// Agents stop serving them at once and the CRL lists them until they expire.
    Revoke {
        #[command(flatten)]
        socket: AdminSocket,
        /// Serial (hex; `AB:CD` and `0x` forms accepted).
        #[arg(long, required_unless_present_any = ["spiffe_id", "entry"], conflicts_with_all = ["spiffe_id", "entry"])]
        serial: Option<String>,
        /// Every outstanding SVID of this SPIFFE ID.
        #[arg(long, conflicts_with = "entry")]
        spiffe_id: Option<String>,
        /// Every outstanding SVID (and JWT-SVID) of this entry.
        #[arg(long)]
        entry: Option<String>,
        /// Why (required): an RFC 5280 reason (key_compromise, superseded,
        /// cessation_of_operation, privilege_withdrawn, affiliation_changed) or any text.
        #[arg(long)]
        reason: String,
    },
}

/// Where the Workload API is.
#[derive(Debug, Args)]
pub(crate) struct WorkloadSocket {
    /// Workload API address (`unix:///path`).
    #[arg(long = "socket", env = "SPIFFE_ENDPOINT_SOCKET")]
    pub(crate) socket: Option<String>,
}

/// How long a one-shot Workload API command waits for its answer.
#[derive(Debug, Args)]
pub(crate) struct WorkloadTimeout {
    /// Give up after this long (the agent may hold no SVID for the caller yet).
    #[arg(long, value_parser = parse_ttl, default_value = "5s")]
    pub(crate) timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub(crate) enum JwtCmd {
    /// Mints a JWT-SVID directly from the server.
    Mint {
        #[command(flatten)]
        socket: AdminSocket,
        /// Identity.
        #[arg(long, value_parser = parse_workload_id)]
        spiffe_id: SpiffeId,
        /// Audience; repeat for several.
        #[arg(long = "audience", required = true)]
        audience: Vec<String>,
        /// Lifetime.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
    },
    /// Fetches JWT-SVIDs from the Workload API.
    Fetch {
        #[command(flatten)]
        socket: WorkloadSocket,
        /// Audience; repeat for several.
        #[arg(long = "audience", required = true)]
        audience: Vec<String>,
        /// Only this identity.
        #[arg(long, value_parser = parse_workload_id)]
        spiffe_id: Option<SpiffeId>,
        #[command(flatten)]
        timeout: WorkloadTimeout,
    },
    /// Revokes one JWT-SVID by its `jti`: `ValidateJWTSVID` refuses it until it expires.
    Revoke {
        #[command(flatten)]
        socket: AdminSocket,
        /// The token's `jti` claim.
        #[arg(long)]
        jti: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// Validates a JWT-SVID through the Workload API.
    Validate {
        #[command(flatten)]
        socket: WorkloadSocket,
        /// Audience the token must be for.
        #[arg(long)]
        audience: String,
        /// The token.
        token: String,
        #[command(flatten)]
        timeout: WorkloadTimeout,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum WitCmd {
    /// Fetches this workload's WIT-SVID and its private key (a JWK) from the Workload API.
    Fetch {
        #[command(flatten)]
        socket: WorkloadSocket,
        /// Only this identity.
        #[arg(long, value_parser = parse_workload_id)]
        spiffe_id: Option<SpiffeId>,
        #[command(flatten)]
        timeout: WorkloadTimeout,
    },
    /// Prints the WIT bundles (JWK Sets, `use` `wit-svid`) per trust domain.
    Bundle {
        #[command(flatten)]
        socket: WorkloadSocket,
    },
    /// Makes a Workload Proof Token for one audience with the WIT-SVID's key (fetched from the
    /// Workload API, or read from --wit-file and --key-file, e.g. a task's `wit` and `wit.jwk`)
    /// and prints both tokens.
    Proof {
        #[command(flatten)]
        socket: WorkloadSocket,
        /// The audience (the target's URI).
        #[arg(long)]
        audience: String,
        /// Lifetime of the proof (default 60s, at most 5m).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        /// Only this identity (when fetching).
        #[arg(long)]
        spiffe_id: Option<String>,
        /// A file holding a WIT-SVID (e.g. a task's `wit`), instead of fetching one.
        #[arg(long, requires = "key_file")]
        wit_file: Option<PathBuf>,
        /// A file holding its private key, a JWK (e.g. a task's `wit.jwk`). Never on the
        /// command line: any local user can read another process's arguments.
        #[arg(long, requires = "wit_file")]
        key_file: Option<PathBuf>,
    },
    /// Checks a WIT-SVID and its proof for an audience through the agent (keys, revocation,
    /// replay cache); exit 0 and the claims when valid.
    Validate {
        #[command(flatten)]
        socket: WorkloadSocket,
        /// The audience the proof must be for.
        #[arg(long)]
        audience: String,
        /// The Workload-Identity-Token.
        #[arg(long)]
        wit: String,
        /// The Workload-Proof-Token.
        #[arg(long)]
        wpt: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TaskCmd {
    /// Starts a task identity (`<this workload's SPIFFE ID>/task/<id>`) and prints it with its
    /// credentials, writes them to `--out-dir`, or runs `--exec` with them and ends the task
    /// when the command exits.
    Start {
        #[command(flatten)]
        socket: WorkloadSocket,
        /// What the task is for (required; journalled and given to policy).
        #[arg(long)]
        purpose: String,
        /// Lifetime (default: as long as allowed).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        /// JWT-SVID audience; repeat for several (default: all the task may have).
        #[arg(long = "audience")]
        audience: Vec<String>,
        /// Credentials: x509, jwt, wit (comma-separated or repeated; default x509).
        #[arg(long, value_delimiter = ',')]
        want: Vec<String>,
        /// Start a sub-task of this running task (it only narrows).
        #[arg(long)]
        parent: Option<String>,
        /// Which of this workload's identities starts it (when several may).
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Write svid.pem, svid.key, bundle.pem, jwt here (a 0700 directory).
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Run this command with the task's credentials, then end the task.
        #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "CMD")]
        exec: Vec<String>,
    },
    /// Ends a task: everything it and its sub-tasks hold is revoked at once.
    End {
        #[command(flatten)]
        socket: WorkloadSocket,
        /// Task ID.
        id: String,
        /// Why (journalled).
        #[arg(long)]
        reason: Option<String>,
    },
    /// This workload's tasks (running, and ended in the last day).
    List {
        #[command(flatten)]
        socket: WorkloadSocket,
    },
    /// One task of this workload.
    Show {
        #[command(flatten)]
        socket: WorkloadSocket,
        /// Task ID.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SvidCmd {
    /// Fetches X509-SVIDs once.
    Fetch {
        #[command(flatten)]
        socket: WorkloadSocket,
        /// Write svid.pem, svid.key, bundle.pem (and federated/<td>.pem) here.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Use the SVID with this hint instead of the default (first) one.
        #[arg(long)]
        hint: Option<String>,
        #[command(flatten)]
        timeout: WorkloadTimeout,
    },
    /// Prints every update of the X.509 stream; waits (and says so) while no SVID is available.
    Watch {
        #[command(flatten)]
        socket: WorkloadSocket,
    },
}

fn parse_id(s: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse(s).map_err(|e| e.to_string())
}

fn parse_workload_id(s: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse_workload(s).map_err(|e| e.to_string())
}

fn parse_td(s: &str) -> Result<TrustDomain, String> {
    TrustDomain::new(s).map_err(|e| e.to_string())
}

fn parse_selector(s: &str) -> Result<Selector, String> {
    Selector::parse(s).map_err(|e| e.to_string())
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = writ_core::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("ttl must be greater than zero".into());
    }
    Ok(d)
}
