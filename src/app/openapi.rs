//! The OpenAPI 3.1 document of the whole HTTP API, generated from the handlers' own
//! annotations and types (`#[utoipa::path]` beside each handler, `ToSchema` on the bodies),
//! served at `/openapi.json`, with an interactive Swagger UI at `/docs` whose assets are
//! compiled into the binary (no CDN: it works offline). Neither needs a token.
//!
//! It is part of `app` because it documents the routes of several adapters (ingress and
//! the SSE bridge), which may not import each other; `app` serves it with the REST API.

use crate::http::openapi::{
    ACCESS_TOKEN, BEARER, BadRequest, Conflict, ErrorBody, Forbidden, NotFound, PayloadTooLarge,
    TooManyRequests, Unauthorized, Unavailable, Unprocessable,
};
use crate::{ingress, sse};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;
use std::sync::Arc;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::{Config, SwaggerUi};

/// Where the document is served.
pub const SPEC_PATH: &str = "/openapi.json";
/// Where the interactive docs page is served.
pub const DOCS_PATH: &str = "/docs";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "orderflow",
        description = "Order processing: every status change is a job, applied by one state machine; events are streamed live and published to RabbitMQ. Errors are always `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    paths(
        ingress::orders::create,
        ingress::orders::list,
        ingress::orders::read,
        ingress::orders::read_history,
        ingress::orders::valid_actions,
        ingress::orders::change_status,
        ingress::docs::documentation,
        ingress::inventory::read,
        ingress::inventory::write,
        ingress::jobs::read,
        ingress::admin::list,
        ingress::admin::retry,
        ingress::admin::retry_matching,
        ingress::admin::discard,
        ingress::overview::read,
        ingress::bulk::filter,
        ingress::bulk::preview,
        ingress::bulk::status_update,
        ingress::bulk::read,
        ingress::bulk::results,
        ingress::bulk::cancel,
        sse::subscribe,
        sse::stats,
        healthz,
        ingress::health::ready,
        metrics,
    ),
    components(
        schemas(ErrorBody),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            PayloadTooLarge,
            Unprocessable,
            TooManyRequests,
            Unavailable
        )
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "orders", description = "Create and read orders; queue status changes"),
        (name = "inventory", description = "Stock levels per sku"),
        (name = "jobs", description = "The outcome of a queued change"),
        (name = "bulk", description = "One change over many orders"),
        (name = "events", description = "Live events over Server-Sent Events"),
        (name = "admin", description = "Operating the job pipeline"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
pub struct ApiDoc;

/// The two ways to present a token: the header everywhere, the query parameter on the
/// SSE stream (EventSource cannot set headers).
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 JWT signed with JWT_SECRET; claims `sub` (uuid), `role` (customer, support, admin, system), `exp`. Mint one with `orderflow token --role admin --sub <uuid>`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            ACCESS_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "The same JWT as a query parameter; only on /orders/events/subscribe.",
            ))),
        );
    }
}

/// The process is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses((status = 200, description = "Alive", body = inline(Alive)))
)]
#[allow(dead_code)] // documents the closure `ingress::health::router` serves
fn healthz() {}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct Alive {
    /// Always `ok`.
    status: String,
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "Every orderflow metric (see README)", body = String, content_type = "text/plain"))
)]
#[allow(dead_code)] // documents the closure `crate::metrics::router` serves
fn metrics() {}

/// The document as served. utoipa 5 writes a link's fields in snake case
/// (`operation_id`), which OpenAPI does not know; they are renamed here.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
    let responses = doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|operations| operations.values_mut())
        .filter_map(|operation| operation.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut());
    for response in responses {
        let links = response.get_mut("links").and_then(Value::as_object_mut);
        for link in links.into_iter().flat_map(|l| l.values_mut()) {
            let Some(link) = link.as_object_mut() else {
                continue;
            };
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = link.remove(snake) {
                    link.insert(camel.to_owned(), value);
                }
            }
        }
    }
    doc
}

/// `/openapi.json` and the Swagger UI at `/docs`, for any router state.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let doc = Arc::new(document());
    // No `validatorUrl`: Swagger UI would otherwise fetch a badge from validator.swagger.io.
    let config = Config::new([SPEC_PATH])
        .validator_url("none")
        .persist_authorization(true)
        .display_request_duration(true);
    Router::new()
        .route(
            SPEC_PATH,
            get(move || {
                let doc = doc.clone();
                async move { Json(doc) }
            }),
        )
        .merge(SwaggerUi::new(DOCS_PATH).config(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_every_route() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 24, "{:?}", paths.keys().collect::<Vec<_>>());
        let operations: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(operations, 26);
        assert!(doc["components"]["securitySchemes"][BEARER].is_object());
        assert!(doc["components"]["securitySchemes"][ACCESS_TOKEN].is_object());
        let link = &doc["paths"]["/orders"]["post"]["responses"]["201"]["links"]["get_order"];
        assert_eq!(link["operationId"], "get_order", "{link}");
        assert!(link.get("operation_id").is_none(), "{link}");
    }
}
