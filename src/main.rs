//! The `agentbus` binary: the operator tools (`src/cli/`) over the library.

mod cli;

/// mimalloc: per-thread heaps without glibc's arena locks, which the
/// request path contended on (bench/RESULTS.md, "The request path"), and
/// freed memory returned without arenas kept per thread.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        if let Err(e) = agentbus::telemetry::init_logging() {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
        let cli = cli::Cli::parse_or_exit();
        match cli::run(cli).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}
