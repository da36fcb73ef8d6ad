//! The library's error type: what went wrong, in terms a caller can act on.

use rust_decimal::Decimal;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: names the offending field.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },

    /// The thing asked for does not exist (or belongs to another tenant).
    #[error("{0} not found")]
    NotFound(String),

    /// A reservation or charge that does not fit the tenant's balance.
    #[error("insufficient credits: required {required}, available {available}")]
    InsufficientCredits {
        required: Decimal,
        available: Decimal,
    },

    /// An invocation refused before it started (`unknown_target`,
    /// `target_stopped`, `insufficient_credits`): nothing was reserved, and
    /// it is audited as failed under `invoke_id`.
    #[error("{source} (invocation {invoke_id} refused: {reason})")]
    InvokeRefused {
        invoke_id: String,
        reason: &'static str,
        source: Box<Error>,
    },

    /// The operation does not apply to the current state (e.g. cancelling a finished job).
    #[error("{message}")]
    Conflict {
        message: String,
        /// The resource's current state, as JSON.
        state: Option<Box<serde_json::value::RawValue>>,
    },

    /// A per-tenant quota is used up (e.g. registered instances): 429.
    #[error("limit reached: {what} (at most {max})")]
    LimitReached { what: &'static str, max: usize },

    /// Missing or unknown credentials.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),

    /// Authenticated, but not allowed to do this.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),

    /// A configuration value that cannot be used, naming its variable.
    #[error("{var}: {reason}")]
    Config { var: String, reason: String },

    #[error("redis: {0}")]
    Redis(redis::RedisError),

    #[error("postgres: {0}")]
    Postgres(sqlx::Error),

    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// A payload that cannot be encoded or decoded.
    #[error("codec: {0}")]
    Codec(String),

    /// Redis or a script answered something this version does not understand.
    #[error("unexpected reply: {0}")]
    Protocol(String),

    #[error("timed out: {0}")]
    Timeout(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Error::NotFound(what.into())
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Error::Conflict {
            message: message.into(),
            state: None,
        }
    }

    /// A conflict that shows the resource's current state.
    pub fn conflict_with<T: serde::Serialize>(message: impl Into<String>, state: &T) -> Self {
        Error::Conflict {
            message: message.into(),
            state: serde_json::value::to_raw_value(state).ok(),
        }
    }

    pub fn protocol(what: impl Into<String>) -> Self {
        Error::Protocol(what.into())
    }

    /// True for failures of a backing service (worth a retry later), as opposed to bad input.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Redis(_) | Error::Postgres(_) | Error::Timeout(_)
        )
    }
}

/// The server's error code (`NOGROUP`, `LOADING`, …), also for an error that
/// came back from inside a pipeline (where `RedisError::code` knows only
/// the codes the client has names for).
pub fn redis_code(err: &redis::RedisError) -> Option<String> {
    if let Some(code) = err.code() {
        return Some(code.to_string());
    }
    let errors = err.clone().into_server_errors()?;
    errors.first().map(|(_, e)| e.code().to_string())
}

/// Which backing service failed and how, for `agentbus_backend_errors_total`.
/// Answers the code expects (a group or stream gone, a blocked read ended
/// because its stream was deleted) are outcomes, not failures: `None`.
fn backend_failure(err: &Error) -> Option<(&'static str, &'static str)> {
    Some(match err {
        Error::Redis(e) if matches!(e.code(), Some("NOGROUP" | "UNBLOCKED" | "BUSYGROUP")) => {
            return None;
        }
        Error::Redis(e)
            if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() =>
        {
            ("redis", "io")
        }
        Error::Redis(e) if e.is_timeout() => ("redis", "timeout"),
        Error::Redis(_) => ("redis", "server"),
        Error::Timeout(_) => ("redis", "timeout"),
        Error::Postgres(e) => (
            "postgres",
            match e {
                sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => "io",
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => "pool",
                sqlx::Error::Database(_) => "server",
                _ => "other",
            },
        ),
        _ => return None,
    })
}

impl Error {
    /// Counts this error in `agentbus_backend_errors_total` when it is a
    /// backing service's failure. Called where an operation really failed
    /// (a request answered 5xx, a background pass or a worker's call given
    /// up), not where an error is converted, so an error that is handled
    /// (a missing group re-created, a read retried inside an operation) is
    /// not counted.
    pub fn count_failure(&self) {
        if let Some((service, kind)) = backend_failure(self) {
            crate::metrics::backend_error(service, kind);
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(err: redis::RedisError) -> Self {
        Error::Redis(err)
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        Error::Postgres(err)
    }
}
