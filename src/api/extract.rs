//! Request extractors that reject with JSON errors naming the field:
//! bodies, query parameters, path ids, and the caller's identity.

use std::collections::HashMap;
use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::caller::Caller;
use super::{ApiError, AppState};
use crate::error::Error;
use crate::tenant::TenantBus;

/// A JSON body; errors name the offending field (`items[3]`, `parallelism`).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        if bytes.is_empty() {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "body",
                "a JSON body is required",
            ));
        }
        parse_json(&bytes).map(ApiJson)
    }
}

/// A JSON body that may be absent (then `T::default()`).
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        parse_json(&bytes).map(OptionalJson)
    }
}

/// Reads a body whole within the body timeout (a client that trickles its
/// body is cut off). Its memory is accounted for by [`super::body_budget`].
async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let config = &state.config;
    if declared_length(&req).is_some_and(|n| n > config.max_body_bytes) {
        return Err(too_large(config.max_body_bytes));
    }
    match tokio::time::timeout(config.body_timeout, Bytes::from_request(req, state)).await {
        Err(_) => Err(ApiError::field(
            StatusCode::REQUEST_TIMEOUT,
            "body",
            format!(
                "the body did not arrive within {} s",
                config.body_timeout.as_secs()
            ),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(rejection)) => {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                Err(too_large(config.max_body_bytes))
            } else {
                Err(ApiError::field(status, "body", rejection.body_text()))
            }
        }
    }
}

/// The body length a request announces (`Content-Length`), if any.
pub(super) fn declared_length(req: &Request) -> Option<usize> {
    req.headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

fn too_large(max: usize) -> ApiError {
    ApiError::field(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body",
        format!("request body larger than {max} bytes"),
    )
}

/// Path parameters; a malformed path (e.g. invalid UTF-8) is a JSON 400.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(t)) => Ok(ApiPath(t)),
            Err(e) => Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "path",
                e.body_text(),
            )),
        }
    }
}

/// A body read whole but not parsed: the handler parses it (with bounds of
/// its own) straight from the bytes, never through a tree of values.
pub struct RawJson(pub Bytes);

impl FromRequest<AppState> for RawJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "body",
                "a JSON body is required",
            ));
        }
        Ok(RawJson(bytes))
    }
}

/// Parses JSON text; errors name the field under `prefix`.
pub fn parse_json_at<T: DeserializeOwned>(bytes: &[u8], prefix: &str) -> Result<T, ApiError> {
    parse_json(bytes).map_err(|mut e| {
        if !prefix.is_empty()
            && let Some(field) = e.body.error.field.as_mut()
        {
            *field = if field == "body" {
                prefix.to_string()
            } else {
                format!("{prefix}{field}")
            };
        }
        e
    })
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let status = if inner.is_syntax() || inner.is_eof() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        let field = if path == "." || path.is_empty() {
            field_of_message(&inner.to_string()).unwrap_or_else(|| "body".into())
        } else {
            path
        };
        ApiError::field(status, &field, inner.to_string())
    })
}

/// serde reports a missing or unknown top-level field only in its message.
fn field_of_message(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_string())
}

/// Query parameters, parsed one by one so an error names its parameter.
pub struct Params(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(map) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::field(StatusCode::BAD_REQUEST, "query", e.body_text()))?;
        Ok(Params(map))
    }
}

impl Params {
    #[cfg(test)]
    pub fn of(pairs: &[(&str, &str)]) -> Self {
        Params(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// An optional parameter of type `T`, checked against `lo..=hi`.
    pub fn number<T>(&self, name: &str, default: T, lo: T, hi: T) -> Result<T, ApiError>
    where
        T: FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(raw) = self.0.get(name) else {
            return Ok(default);
        };
        let value: T = raw.parse().map_err(|_| {
            ApiError::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                name,
                format!("{raw:?} is not a number"),
            )
        })?;
        if value < lo || value > hi {
            return Err(ApiError::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                name,
                format!("must be between {lo} and {hi}"),
            ));
        }
        Ok(value)
    }
}

/// A UUID from the path; malformed ids are a 422 naming the parameter.
pub fn path_uuid(name: &str, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::field(
            StatusCode::UNPROCESSABLE_ENTITY,
            name,
            format!("{raw:?} is not a UUID"),
        )
    })
}

/// The engine scoped to the tenant the request's bearer token belongs to
/// (set by [`super::caller`]): a handler reaches that tenant's data only.
pub struct Tenant(pub TenantBus);

impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match parts.extensions.get::<Caller>() {
            Some(Caller::Tenant(t)) => Ok(Tenant(state.bus.tenant(t))),
            Some(Caller::Admin) => Err(Error::Forbidden("this call needs a tenant's token").into()),
            None => Err(Error::Unauthorized("missing bearer token").into()),
        }
    }
}

/// A request made with the admin token.
pub struct Admin;

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.extensions.get::<Caller>() {
            Some(Caller::Admin) => Ok(Admin),
            _ => Err(Error::Forbidden("admin token required").into()),
        }
    }
}
