//! Compiles proto/ with protox (pure Rust), so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "spiffe/workload.proto",
        "writ/v1/types.proto",
        "writ/v1/agent.proto",
        "writ/v1/admin.proto",
        "writ/v1/agent_admin.proto",
        "writ/task/v1/task.proto",
    ];
    let fds = protox::compile(files.iter().map(|f| root.join(f)), [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    for f in files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    Ok(())
}
