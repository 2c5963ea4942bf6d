//! The router: control API plus the proxy in front of it.

use axum::routing::{get, post};
use axum::Router;

use crate::rest::{openapi, sandboxes, snapshots, templates};
use crate::state::AppState;
use crate::{error, proxy};

/// The whole HTTP surface of kilnd. Requests for a sandbox (E2B headers or
/// `<port>-<id>.<domain>` Host) are proxied before routing; everything else is
/// the control API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/openapi.json", get(openapi::serve))
        .route(
            "/sandboxes",
            post(sandboxes::create_v1).get(sandboxes::list_v1),
        )
        .route(
            "/v2/sandboxes",
            post(sandboxes::create).get(sandboxes::list_v2),
        )
        .route(
            "/sandboxes/{id}",
            get(sandboxes::get).delete(sandboxes::kill),
        )
        .route("/sandboxes/{id}/timeout", post(sandboxes::set_timeout))
        .route("/sandboxes/{id}/refreshes", post(sandboxes::refresh))
        .route("/sandboxes/{id}/connect", post(sandboxes::connect_v1))
        .route("/v2/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/sandboxes/{id}/pause", post(sandboxes::pause))
        .route("/sandboxes/{id}/resume", post(sandboxes::resume))
        .route("/sandboxes/{id}/metrics", get(sandboxes::metrics))
        .route("/sandboxes/metrics", get(sandboxes::metrics_of))
        .route("/sandboxes/{id}/snapshots", post(snapshots::create))
        .route("/sandboxes/{id}/fork", post(snapshots::fork))
        .route("/snapshots", get(snapshots::list))
        .route("/templates", get(templates::list))
        .route(
            "/templates/{id}",
            get(templates::get).delete(snapshots::delete),
        )
        .route("/templates/aliases/{alias}", get(templates::alias))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            proxy::dispatch,
        ))
        .with_state(state)
}
