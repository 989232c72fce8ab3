//! writ-bench: one table of measurements, each next to a baseline measured in the same run.
//!
//! ```sh
//! cargo build --release && cargo run --release -p writ-bench -- all --write
//! ```
//! Sections: `issuance`, `latency`, `propagation`, `scale` (`agent`: its agent rows alone), `storm`, `governance`, `tasks`, `ha`
//! (several servers on a private PostgreSQL), `streams` (10,000 streaming workloads), `peers`
//! (or `all`); `smoke` runs every section with tiny sizes (CI uses it to keep the benchmark working). `--write` replaces
//! the generated block of docs/benchmarks.md with the table.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod governance;
mod ha;
mod peers;
mod procs;
mod scale;
mod sections;
mod storm;
mod streams;
mod tasks;

use std::time::Instant;

/// Problem sizes.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub secs: f64,
    pub clients: usize,
    pub batch: usize,
    pub lat_iters: usize,
    pub concurrent: usize,
    pub trials: usize,
    pub scale_total: usize,
    pub small_total: usize,
    pub sim_agents: usize,
    pub measured: usize,
    pub agent_svids: usize,
    /// Entries in the largest `scale` run.
    pub huge_total: usize,
    pub storm: usize,
    /// Agent processes the storm's SVIDs are spread over.
    pub storm_agents: usize,
    pub storm_ttl: u64,
    pub audit_records: usize,
    /// Workload API connections held open in the `streams` section.
    pub streams: usize,
}

impl Sizes {
    fn full() -> Self {
        Sizes {
            secs: 5.0,
            clients: 4,
            batch: 100,
            lat_iters: 1000,
            concurrent: 1000,
            trials: 100,
            scale_total: 100_000,
            small_total: 10_000,
            sim_agents: 1000,
            measured: 1000,
            agent_svids: 10_000,
            huge_total: 1_000_000,
            storm: 100_000,
            storm_agents: 100,
            storm_ttl: 180,
            audit_records: 1_000_000,
            streams: 10_000,
        }
    }

    fn smoke() -> Self {
        Sizes {
            secs: 0.3,
            clients: 2,
            batch: 10,
            lat_iters: 10,
            concurrent: 20,
            trials: 3,
            scale_total: 2000,
            small_total: 500,
            sim_agents: 10,
            measured: 100,
            agent_svids: 50,
            huge_total: 5000,
            storm: 50,
            storm_agents: 2,
            storm_ttl: 8,
            audit_records: 2000,
            streams: 20,
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub section: &'static str,
    pub what: String,
    pub value: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
}

impl Row {
    pub fn new(section: &'static str, what: impl Into<String>, value: impl Into<String>) -> Self {
        Row {
            section,
            what: what.into(),
            value: value.into(),
            baseline: String::new(),
            ratio: String::new(),
            target: String::new(),
        }
    }

    pub fn vs(mut self, baseline: impl Into<String>, ratio: f64) -> Self {
        self.baseline = baseline.into();
        self.ratio = format!("{ratio:.2}");
        self
    }

    pub fn target(mut self, t: impl Into<String>) -> Self {
        self.target = t.into();
        self
    }
}

fn table(rows: &[Row]) -> String {
    let mut t = String::from("| section | measurement | value | baseline (same run) | ratio | target |\n|---|---|---:|---:|---:|---|\n");
    for r in rows {
        t += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.section, r.what, r.value, r.baseline, r.ratio, r.target
        );
    }
    t
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    / 1024
                    / 1024
            })
        })
        .unwrap_or(0);
    format!(
        "{cores} cores ({cpu}), {mem} GiB RAM, {}",
        std::env::consts::ARCH
    )
}

/// The sections, in the order they run.
const SECTIONS: [&str; 13] = [
    "issuance",
    "latency",
    "propagation",
    "scale",
    "agent",
    "storm",
    "governance",
    "tasks",
    "ha",
    "streams",
    "peers",
    "all",
    "smoke",
];

/// writ's benchmark suite: one table, every figure next to a baseline measured in the same run.
#[derive(clap::Parser)]
#[command(name = "writ-bench")]
struct Cli {
    /// Sections to run (default: all). `smoke` runs every section with tiny sizes (numbers not
    /// meaningful; CI uses it to keep the suite working). `peers` needs cfssl
    /// (`apt-get install golang-cfssl`) and says so without it.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(SECTIONS))]
    sections: Vec<String>,
    /// Replace the generated block of docs/benchmarks.md with the table (not in smoke mode).
    #[arg(long)]
    write: bool,
}

fn main() {
    if let Ok(f) = std::env::var("WRIT_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(f))
            .with_writer(std::io::stderr)
            .init();
    }
    let cli = <Cli as clap::Parser>::parse();
    let write = cli.write;
    let what: Vec<&str> = cli.sections.iter().map(String::as_str).collect();
    let smoke = what.contains(&"smoke");
    let sizes = if smoke { Sizes::smoke() } else { Sizes::full() };
    // `smoke` alone runs every section; `smoke ha` runs one section with the tiny sizes.
    let all = what.is_empty() || what.contains(&"all") || (smoke && what.len() == 1);
    let want = |s: &str| all || what.contains(&s);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut rows = Vec::new();
    rt.block_on(async {
        if want("issuance") {
            eprintln!("== issuance");
            rows.extend(sections::issuance(&sizes).await);
        }
        if want("latency") {
            eprintln!("== latency");
            rows.extend(sections::latency(&sizes).await);
        }
        if want("propagation") {
            eprintln!("== propagation");
            rows.extend(sections::propagation(&sizes).await);
        }
        if want("scale") {
            eprintln!("== scale");
            rows.extend(scale::scale(&sizes).await);
        }
        // The agent rows of `scale` alone (part of `scale`; not run again by `all`).
        if what.contains(&"agent") && !want("scale") {
            eprintln!("== agent");
            rows.extend(scale::agent_rows(&sizes).await);
        }
        if want("storm") {
            eprintln!("== storm");
            rows.extend(storm::storm(&sizes).await);
        }
        if want("governance") {
            eprintln!("== governance");
            rows.extend(governance::governance(&sizes).await);
        }
        if want("tasks") {
            eprintln!("== tasks");
            rows.extend(tasks::tasks(&sizes).await);
        }
        if want("ha") {
            eprintln!("== ha");
            rows.extend(ha::ha(&sizes).await);
        }
        if want("streams") {
            eprintln!("== streams");
            rows.extend(streams::streams(&sizes).await);
        }
        if want("peers") {
            eprintln!("== peers");
            rows.extend(peers::peers(&sizes).await);
        }
    });
    let t = table(&rows);
    let header = format!(
        "Machine: {}. Mode: {}. Total bench time {:.0} s.\n\n",
        machine(),
        if smoke {
            "smoke (tiny sizes, not meaningful)"
        } else {
            "full"
        },
        started.elapsed().as_secs_f64()
    );
    println!("{header}{t}");
    if write && !smoke {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/benchmarks.md");
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        let (start, end) = ("<!-- writ-bench:start -->", "<!-- writ-bench:end -->");
        let block = format!("{start}\n{header}{t}{end}");
        let new = match (doc.find(start), doc.find(end)) {
            (Some(a), Some(b)) if b > a => {
                format!("{}{}{}", &doc[..a], block, &doc[b + end.len()..])
            }
            _ => format!("{doc}\n{block}\n"),
        };
        std::fs::write(&path, new).unwrap();
        eprintln!("wrote {}", path.display());
    }
}
