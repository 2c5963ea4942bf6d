//! `/templates`.

use axum::extract::State;
use axum::Json;
use kiln_api::rest::Template;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::state::AppState;

/// Templates sandboxes can be created from.
#[utoipa::path(get, path = "/templates", tag = "templates",
    responses((status = 200, body = Vec<Template>), (status = 401, body = kiln_api::rest::Error)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(_team): Auth,
) -> Result<Json<Vec<Template>>, ApiError> {
    let envd = state.core.config().envd_version.clone();
    Ok(Json(
        state
            .core
            .templates()
            .into_iter()
            .map(|t| Template {
                template_id: t.template.id.clone(),
                build_id: t.template.id.clone(),
                cpu_count: t.vcpus,
                memory_mb: t.memory_mib,
                disk_size_mb: t.disk_mib,
                public: true,
                names: t.aliases.clone(),
                aliases: t.aliases,
                created_at: t.created_at,
                updated_at: t.created_at,
                created_by: None,
                last_spawned_at: None,
                spawn_count: 0,
                build_count: 1,
                envd_version: envd.clone(),
                build_status: "ready".into(),
            })
            .collect(),
    ))
}
