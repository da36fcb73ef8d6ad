use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    agentbus::telemetry::init_logging();
    let cli = agentbus::cli::Cli::parse();
    match agentbus::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
