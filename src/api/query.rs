//! Typed query strings: a route's parameters are declared once, as a
//! struct made by [`query!`], and that one declaration gives the handler its
//! parsed, bounded values ([`Query`]) and `routes.rs` the parameters'
//! OpenAPI description (`Op::query`), so a name, default or bound cannot
//! differ between the two.
//!
//! Kinds: `int<T>(default, min, max)`, `text("what it is")`,
//! `required_ident("what it is")`, `one_of(VALUES)`, `uuid()`, `time()`,
//! `ident()`, `tenant()`. A bad value is a 422 naming its parameter.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::ApiError;
use super::extract::{Params, path_uuid};
use super::openapi::Op;
use crate::keys::{Ident, TenantId};

/// A query struct: parsed from the query string, and documented.
pub trait QueryParams: Sized {
    fn parse(params: &Params) -> Result<Self, ApiError>;
    /// `op` with these parameters documented.
    fn document(op: Op) -> Op;
}

/// The query string of a request as `T`.
pub struct Query<T>(pub T);

impl<T: QueryParams, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = Params::from_request_parts(parts, state).await?;
        T::parse(&params).map(Query)
    }
}

fn unprocessable(name: &str, why: impl Into<String>) -> ApiError {
    ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, name, why)
}

// The parsers behind each kind (used by `query!`).

pub fn text(p: &Params, name: &str) -> Option<String> {
    p.text(name).map(str::to_string)
}

pub fn required_ident(p: &Params, name: &str) -> Result<Ident, ApiError> {
    let raw = p
        .text(name)
        .ok_or_else(|| unprocessable(name, "required query parameter"))?;
    Ok(Ident::new(name, raw)?)
}

pub fn one_of(p: &Params, name: &str, values: &[&str]) -> Result<Option<String>, ApiError> {
    match p.text(name) {
        None => Ok(None),
        Some(v) if values.contains(&v) => Ok(Some(v.to_string())),
        Some(_) => Err(unprocessable(name, format!("one of {}", values.join(", ")))),
    }
}

pub fn uuid(p: &Params, name: &str) -> Result<Option<Uuid>, ApiError> {
    p.text(name).map(|raw| path_uuid(name, raw)).transpose()
}

pub fn time(p: &Params, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    p.text(name)
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| unprocessable(name, "an RFC 3339 time, e.g. 2026-01-01T00:00:00Z"))
        })
        .transpose()
}

pub fn ident(p: &Params, name: &str) -> Result<Option<Ident>, ApiError> {
    Ok(p.text(name).map(|v| Ident::new(name, v)).transpose()?)
}

pub fn tenant(p: &Params, name: &str) -> Result<Option<TenantId>, ApiError> {
    Ok(p.text(name).map(TenantId::new).transpose()?)
}

/// Declares a query struct: each field with its kind (see the module doc).
macro_rules! query {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($field:ident : $kind:ident $(<$t:ty>)? ( $($arg:expr),* )),* $(,)?
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $(pub $field: query!(@ty $kind $(<$t>)?),)*
        }

        impl $crate::api::query::QueryParams for $name {
            fn parse(p: &$crate::api::extract::Params) -> Result<Self, $crate::api::ApiError> {
                Ok($name {
                    $($field: query!(@parse p, stringify!($field), $kind $(<$t>)? ($($arg),*)),)*
                })
            }

            fn document(op: $crate::api::openapi::Op) -> $crate::api::openapi::Op {
                op $(.param(stringify!($field), query!(@doc $kind ($($arg),*))))*
            }
        }
    };

    (@ty int<$t:ty>) => { $t };
    (@ty text) => { Option<String> };
    (@ty required_ident) => { $crate::keys::Ident };
    (@ty one_of) => { Option<String> };
    (@ty uuid) => { Option<uuid::Uuid> };
    (@ty time) => { Option<chrono::DateTime<chrono::Utc>> };
    (@ty ident) => { Option<$crate::keys::Ident> };
    (@ty tenant) => { Option<$crate::keys::TenantId> };

    (@parse $p:ident, $n:expr, int<$t:ty>($d:expr, $lo:expr, $hi:expr)) => {
        $p.number::<$t>($n, $d, $lo, $hi)?
    };
    (@parse $p:ident, $n:expr, text($desc:expr)) => { $crate::api::query::text($p, $n) };
    (@parse $p:ident, $n:expr, one_of($values:expr)) => {
        $crate::api::query::one_of($p, $n, $values)?
    };
    (@parse $p:ident, $n:expr, required_ident($desc:expr)) => {
        $crate::api::query::required_ident($p, $n)?
    };
    (@parse $p:ident, $n:expr, $kind:ident()) => { $crate::api::query::$kind($p, $n)? };

    (@doc int($d:expr, $lo:expr, $hi:expr)) => {
        $crate::api::openapi::Param::Int($d as i64, $lo as i64, $hi as i64)
    };
    (@doc text($desc:expr)) => { $crate::api::openapi::Param::Text($desc) };
    (@doc required_ident($desc:expr)) => { $crate::api::openapi::Param::RequiredIdent($desc) };
    (@doc one_of($values:expr)) => { $crate::api::openapi::Param::OneOf($values) };
    (@doc uuid()) => { $crate::api::openapi::Param::Uuid };
    (@doc time()) => { $crate::api::openapi::Param::Time };
    (@doc ident()) => { $crate::api::openapi::Param::Ident };
    (@doc tenant()) => { $crate::api::openapi::Param::Ident };
}
pub(crate) use query;

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    query! {
        /// A query of every kind.
        pub struct Sample {
            who: required_ident("who asks"),
            limit: int<usize>(10, 1, 50),
            order: one_of(&["asc", "desc"]),
            job_id: uuid(),
            since: time(),
        }
    }

    async fn refusal(pairs: &[(&str, &str)]) -> (StatusCode, serde_json::Value) {
        let err = match Sample::parse(&Params::of(pairs)) {
            Ok(_) => panic!("{pairs:?} was accepted"),
            Err(e) => e.into_response(),
        };
        let status = err.status();
        let bytes = axum::body::to_bytes(err.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    #[tokio::test]
    async fn one_declaration_parses_bounds_and_documents() {
        let q = Sample::parse(&Params::of(&[("who", "w1")])).expect("defaults");
        assert_eq!((q.who.as_str(), q.limit, q.order), ("w1", 10, None));
        assert!(q.job_id.is_none() && q.since.is_none());
        let id = "6f1c2b8e-2d1a-4c59-9a47-0e3f1e6c7a10";
        let q = Sample::parse(&Params::of(&[
            ("who", "w"),
            ("job_id", id),
            ("since", "2026-01-01T00:00:00Z"),
        ]))
        .expect("typed");
        assert_eq!(q.job_id.map(|u| u.to_string()).as_deref(), Some(id));
        assert_eq!(q.since.map(|t| t.timestamp()), Some(1_767_225_600));
        let q = Sample::parse(&Params::of(&[
            ("who", "w"),
            ("limit", "50"),
            ("order", "asc"),
        ]))
        .expect("bounds are inclusive");
        assert_eq!((q.limit, q.order.as_deref()), (50, Some("asc")));
        for (pairs, field) in [
            (&[("limit", "5")][..], "who"),
            (&[("who", "w"), ("limit", "51")][..], "limit"),
            (&[("who", "w"), ("limit", "0")][..], "limit"),
            (&[("who", "w"), ("limit", "x")][..], "limit"),
            (&[("who", "w"), ("order", "up")][..], "order"),
            (&[("who", "w"), ("job_id", "nope")][..], "job_id"),
            (&[("who", "w"), ("since", "yesterday")][..], "since"),
            (&[("who", "a b")][..], "who"),
        ] {
            let (status, body) = refusal(pairs).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{pairs:?}");
            assert_eq!(body["error"]["field"], field, "{pairs:?}: {body}");
        }
        // The document says what the parser enforces.
        let doc = Sample::document(Op::get("/x", "t", "x")).document_for_test();
        let limit = doc
            .iter()
            .find(|p| p["name"] == "limit")
            .expect("limit documented");
        assert_eq!(
            limit["schema"],
            serde_json::json!({"type": "integer", "default": 10, "minimum": 1, "maximum": 50})
        );
        let who = doc.iter().find(|p| p["name"] == "who").expect("who");
        assert_eq!(who["required"], true);
        let order = doc.iter().find(|p| p["name"] == "order").expect("order");
        assert_eq!(order["schema"]["enum"], serde_json::json!(["asc", "desc"]));
    }
}
