//! The OpenAPI document of `/api/v1`, built together with the router: every
//! route is registered through [`Api::route`] with the description of its
//! operation, so a route cannot exist undocumented. Request bodies are the
//! JSON Schemas (schemars) of the very types the handlers deserialize.
//!
//! Response bodies are described as "any JSON" (their exact shapes are in
//! the README); errors share one documented schema.

use std::collections::BTreeMap;

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodFilter, on};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::AppState;

/// Where the document is served, also outside the authenticated API.
pub const PATH: &str = "/api/v1/openapi.json";
const PREFIX: &str = "/api/v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    fn filter(self) -> MethodFilter {
        match self {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
            Method::Put => MethodFilter::PUT,
            Method::Delete => MethodFilter::DELETE,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
            Method::Put => "put",
            Method::Delete => "delete",
        }
    }
}

/// Who may call an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Tenant,
    Admin,
}

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// A query parameter's kind, for its description (see `api::query`).
pub enum Param {
    /// default, minimum, maximum
    Int(i64, i64, i64),
    Text(&'static str),
    RequiredIdent(&'static str),
    OneOf(&'static [&'static str]),
    Uuid,
    Time,
    Ident,
}

/// The description of one operation.
pub struct Op {
    method: Method,
    path: &'static str,
    summary: &'static str,
    tag: &'static str,
    status: u16,
    access: Access,
    body: Option<(SchemaFn, bool)>,
    query: Vec<Value>,
    links: Map<String, Value>,
}

impl Op {
    fn new(method: Method, path: &'static str, tag: &'static str, summary: &'static str) -> Self {
        Self {
            method,
            path,
            summary,
            tag,
            status: 200,
            access: Access::Tenant,
            body: None,
            query: Vec::new(),
            links: Map::new(),
        }
    }

    pub fn get(path: &'static str, tag: &'static str, summary: &'static str) -> Self {
        Self::new(Method::Get, path, tag, summary)
    }

    pub fn post(path: &'static str, tag: &'static str, summary: &'static str) -> Self {
        Self::new(Method::Post, path, tag, summary)
    }

    pub fn put(path: &'static str, tag: &'static str, summary: &'static str) -> Self {
        Self::new(Method::Put, path, tag, summary)
    }

    pub fn delete(path: &'static str, tag: &'static str, summary: &'static str) -> Self {
        Self::new(Method::Delete, path, tag, summary)
    }

    /// Success answers with `status` instead of 200.
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Only the admin token may call it.
    pub fn admin(mut self) -> Self {
        self.access = Access::Admin;
        self
    }

    /// A JSON body of type `T` is required.
    pub fn body<T: JsonSchema>(mut self) -> Self {
        self.body = Some((schema_of::<T>, true));
        self
    }

    /// A JSON body of type `T` may be sent; absent means all defaults.
    pub fn optional_body<T: JsonSchema>(mut self) -> Self {
        self.body = Some((schema_of::<T>, false));
        self
    }

    /// The success response feeds `parameters` (name, runtime expression) of
    /// the operation `operation_id`, so a client or a stateful fuzzer can
    /// follow it (e.g. spawn, then claim the job it returned).
    pub fn link(mut self, operation_id: &str, parameters: &[(&str, &str)]) -> Self {
        let parameters: Map<String, Value> = parameters
            .iter()
            .map(|(name, expr)| (name.to_string(), json!(expr)))
            .collect();
        self.links.insert(
            operation_id.to_string(),
            json!({ "operationId": operation_id, "parameters": parameters }),
        );
        self
    }

    /// The query parameters documented so far.
    #[cfg(test)]
    pub fn document_for_test(&self) -> Vec<Value> {
        self.query.clone()
    }

    /// The parameters of a query struct (`api::query`), documented from
    /// the same declaration the handler parses with.
    pub fn query<T: super::query::QueryParams>(self) -> Self {
        T::document(self)
    }

    /// One query parameter, as a query struct declares it.
    pub fn param(self, name: &str, param: Param) -> Self {
        match param {
            Param::Int(default, lo, hi) => self.int(name, default, lo, hi),
            Param::Text(description) => self.text(name, description),
            Param::RequiredIdent(description) => self.required_ident(name, description),
            Param::OneOf(values) => self.one_of(name, values),
            Param::Uuid => self.uuid(name),
            Param::Time => self.query_time(name),
            Param::Ident => self.ident(name),
        }
    }

    /// An integer query parameter checked against `lo..=hi`.
    fn int(mut self, name: &str, default: i64, lo: i64, hi: i64) -> Self {
        self.query.push(json!({
            "name": name, "in": "query", "required": false,
            "schema": { "type": "integer", "default": default, "minimum": lo, "maximum": hi },
        }));
        self
    }

    /// A text query parameter.
    fn text(self, name: &str, description: &str) -> Self {
        self.query_param(name, false, description, json!({ "type": "string" }))
    }

    /// A required identifier (`[A-Za-z0-9_.-]`) query parameter.
    fn required_ident(self, name: &str, description: &str) -> Self {
        self.query_param(name, true, description, ident_schema())
    }

    /// A query parameter taking one of `values`.
    fn one_of(self, name: &str, values: &[&str]) -> Self {
        self.query_param(name, false, "", json!({ "type": "string", "enum": values }))
    }

    /// A UUID query parameter.
    fn uuid(self, name: &str) -> Self {
        self.query_param(
            name,
            false,
            "",
            json!({ "type": "string", "format": "uuid" }),
        )
    }

    /// An RFC 3339 time query parameter.
    fn query_time(self, name: &str) -> Self {
        let schema = json!({ "type": "string", "format": "date-time" });
        self.query_param(name, false, "an RFC 3339 time", schema)
    }

    /// An identifier (`[A-Za-z0-9_.-]`) query parameter.
    fn ident(self, name: &str) -> Self {
        self.query_param(name, false, "", ident_schema())
    }

    fn query_param(mut self, name: &str, required: bool, description: &str, schema: Value) -> Self {
        let mut param =
            json!({ "name": name, "in": "query", "required": required, "schema": schema });
        if !description.is_empty() {
            param["description"] = json!(description);
        }
        self.query.push(param);
        self
    }

    fn document(&self, generator: &mut SchemaGenerator) -> Value {
        let mut parameters: Vec<Value> = path_params(self.path)
            .map(|name| {
                json!({ "name": name, "in": "path", "required": true, "schema": path_param_schema(name) })
            })
            .collect();
        parameters.extend(self.query.iter().cloned());
        let mut op = json!({
            "operationId": operation_id(self.method, self.path),
            "summary": self.summary,
            "tags": [self.tag],
            "responses": {
                self.status.to_string(): {
                    "description": "success",
                    "content": { "application/json": { "schema": {} } },
                },
                "default": {
                    "description": "an error; `error.field` names the offending input",
                    "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/Error" },
                    } },
                },
            },
        });
        if !parameters.is_empty() {
            op["parameters"] = Value::Array(parameters);
        }
        if !self.links.is_empty() {
            op["responses"][self.status.to_string()]["links"] = Value::Object(self.links.clone());
        }
        if let Some((schema, required)) = self.body {
            op["requestBody"] = json!({
                "required": required,
                "content": { "application/json": { "schema": schema(generator) } },
            });
        }
        if self.access == Access::Admin {
            op["description"] = json!("Needs the admin token.");
        }
        op
    }
}

fn ident_schema() -> Value {
    json!({ "type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$" })
}

/// The `{name}` segments of a route.
fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

fn path_param_schema(name: &str) -> Value {
    match name {
        "job_id" => json!({ "type": "string", "format": "uuid" }),
        "item_id" => json!({ "type": "string", "pattern": "^[0-9]{1,20}-[0-9]{1,20}$" }),
        // Blackboard keys may also hold ':'.
        "key" => json!({ "type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,512}$" }),
        _ => ident_schema(),
    }
}

/// `post /jobs/{job_id}/cancel` → `post_jobs_job_id_cancel`.
fn operation_id(method: Method, path: &str) -> String {
    let mut id = method.key().to_string();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.extend(
            segment
                .chars()
                .filter(|c| *c != '{' && *c != '}')
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    id
}

/// A router under construction, with the document of what it serves.
pub struct Api {
    router: Router<AppState>,
    generator: SchemaGenerator,
    paths: BTreeMap<String, Map<String, Value>>,
}

impl Default for Api {
    fn default() -> Self {
        Self {
            router: Router::new(),
            generator: SchemaSettings::openapi3().into_generator(),
            paths: BTreeMap::new(),
        }
    }
}

impl Api {
    /// Serves `op` with `handler` and documents it.
    pub fn route<H, T>(mut self, op: Op, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.router = self.router.route(op.path, on(op.method.filter(), handler));
        let doc = op.document(&mut self.generator);
        self.paths
            .entry(format!("{PREFIX}{}", op.path))
            .or_default()
            .insert(op.method.key().to_string(), doc);
        self
    }

    /// The router (paths relative to `/api/v1`) and the OpenAPI document.
    pub fn finish(mut self) -> (Router<AppState>, Value) {
        let mut schemas = self.generator.take_definitions(true);
        schemas.insert("Error".into(), error_schema());
        let mut paths: Map<String, Value> = self
            .paths
            .into_iter()
            .map(|(path, ops)| (path, Value::Object(ops)))
            .collect();
        paths.insert(
            PATH.into(),
            json!({ "get": {
                "operationId": "get_openapi",
                "summary": "This document",
                "tags": ["meta"],
                "security": [],
                "responses": { "200": {
                    "description": "the OpenAPI document",
                    "content": { "application/json": { "schema": { "type": "object" } } },
                } },
            } }),
        );
        let document = json!({
            "openapi": "3.0.3",
            "info": {
                "title": "agentbus",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "Jobs, credits, agent messages, invocations and the blackboard over Redis. \
                    Every call but this document needs `Authorization: Bearer <token>`: a tenant's \
                    token, or the admin token where an operation says so. Requests over the per-token \
                    rate or concurrency limit get 429 with Retry-After.",
            },
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            },
            "security": [{ "bearer": [] }],
        });
        (self.router, document)
    }
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": { "type": "string" },
                    "message": { "type": "string" },
                    "field": { "type": "string", "description": "the input at fault" },
                    "required": { "type": "number", "description": "credits needed (402)" },
                    "available": { "type": "number", "description": "credits available (402)" },
                },
            },
            "current": { "description": "the resource's current state (409)" },
        },
    })
}
