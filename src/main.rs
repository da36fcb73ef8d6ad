//! The `agentbus` binary: the operator tools (`src/cli/`) over the library.

mod cli;

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
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

/// glibc gives each thread that allocates under contention an arena of its
/// own and keeps what they free: heavy requests on the blocking pool then
/// doubled peak memory under attack (bench/RESULTS.md, "Under attack").
/// Two arenas keep it bounded at no measured cost. `MALLOC_ARENA_MAX`, when
/// set, still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called before any other thread exists; mallopt only sets a
        // tunable of the allocator.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
