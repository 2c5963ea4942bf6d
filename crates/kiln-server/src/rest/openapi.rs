//! The OpenAPI document, generated from the handlers' annotations. Served at
//! `/openapi.json` and checked into the repository as `docs/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{sandboxes, snapshots, templates};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Kiln control API",
        description = "E2B-compatible control API of kilnd. Every endpoint needs an `X-API-KEY` header.",
        license(name = "Apache-2.0")
    ),
    paths(
        sandboxes::create_v1,
        sandboxes::create,
        sandboxes::list_v1,
        sandboxes::list_v2,
        sandboxes::get,
        sandboxes::kill,
        sandboxes::set_timeout,
        sandboxes::refresh,
        sandboxes::connect_v1,
        sandboxes::connect,
        sandboxes::pause,
        sandboxes::resume,
        sandboxes::metrics,
        sandboxes::metrics_of,
        snapshots::create,
        snapshots::list,
        snapshots::delete,
        snapshots::fork,
        templates::list,
        templates::get,
        templates::alias,
    ),
    components(schemas(kiln_api::rest::Error)),
    modifiers(&ApiKeyAuth),
    security(("ApiKeyAuth" = [])),
)]
pub struct ApiDoc;

struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "ApiKeyAuth",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-KEY"))),
        );
    }
}

/// The document as checked in (pretty JSON, trailing newline).
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    // The crate version would make the file change with every release bump.
    doc.info.version = "1".into();
    let mut s = doc.to_pretty_json().unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

pub async fn serve() -> Json<serde_json::Value> {
    Json(serde_json::from_str(&document()).unwrap_or_default())
}
