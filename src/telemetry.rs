//! Logging: `tracing` to stderr, level from `RUST_LOG` (default `info`),
//! as text or as JSON lines (`AGENTBUS_LOG_FORMAT=json`).

use tracing_subscriber::EnvFilter;

/// Sets up logging; a format other than `text` or `json` is an error naming
/// `AGENTBUS_LOG_FORMAT` (nothing is logged yet, so the caller prints it).
pub fn init_logging() -> Result<(), String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match std::env::var("AGENTBUS_LOG_FORMAT") {
        Err(_) => false,
        Ok(f) if f.eq_ignore_ascii_case("json") => true,
        Ok(f) if f.eq_ignore_ascii_case("text") || f.is_empty() => false,
        Ok(f) => {
            return Err(format!(
                "AGENTBUS_LOG_FORMAT: invalid value '{f}': expected text or json"
            ));
        }
    };
    // Colours only for a terminal: a log file or journal gets plain text,
    // and each request's span is not formatted twice.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    Ok(())
}
