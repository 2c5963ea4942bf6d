//! `/sandboxes/{id}/snapshots`, `/snapshots`, `/sandboxes/{id}/fork`, and
//! `DELETE /templates/{id}` for snapshots (E2B's snapshots are templates).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_api::rest::{SandboxForkRequest, SandboxForkResult, SandboxSnapshotRequest, SnapshotInfo};
use kiln_core::{SnapshotFilter, SnapshotRecord};
use serde::Deserialize;

use super::sandboxes::{sandbox_body, NEXT_TOKEN_HEADER};
use super::{json_body, required_json_body, PathParam, SandboxId};
use crate::auth::Auth;
use crate::error::ApiError;
use crate::state::AppState;

fn info(s: &SnapshotRecord) -> SnapshotInfo {
    SnapshotInfo {
        snapshot_id: s.tagged_id(),
        names: s.names(),
        sandbox_id: s.source_sandbox_id.clone(),
        mode: s.mode.to_string(),
        size_bytes: s.size_bytes,
        content_hash: s.content_hash.clone(),
        created_at: s.created_at,
    }
}

/// Take a snapshot of a sandbox; it goes on as it was. New sandboxes start
/// from it with `POST /v2/sandboxes {"templateID": "<snapshotID>"}`.
#[utoipa::path(post, path = "/sandboxes/{sandboxID}/snapshots", tag = "snapshots",
    params(("sandboxID" = String, Path)), request_body = SandboxSnapshotRequest,
    responses((status = 201, body = SnapshotInfo),
              (status = 400, description = "Bad name, or a mode the sandbox's runtime cannot snapshot in", body = kiln_api::rest::Error),
              (status = 404, body = kiln_api::rest::Error),
              (status = 409, body = kiln_api::rest::Error)))]
pub async fn create(
    State(state): State<AppState>,
    Auth(team): Auth,
    SandboxId(id): SandboxId,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<SnapshotInfo>), ApiError> {
    let req: SandboxSnapshotRequest = json_body(&body?)?;
    let name = req.name.filter(|n| !n.is_empty());
    let snap = state
        .core
        .create_snapshot(&team, &id, name, req.memory)
        .await?;
    Ok((StatusCode::CREATED, Json(info(&snap))))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only snapshots of this sandbox.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: Option<String>,
    /// Only the snapshot with this id or name (`name`, `team/name`, `name:default`).
    pub name: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Token from the `x-next-token` header of the previous page.
    pub next_token: Option<String>,
}

/// The team's snapshots, newest first, paginated (`x-next-token` header).
#[utoipa::path(get, path = "/snapshots", tag = "snapshots", params(ListQuery),
    responses((status = 200, body = Vec<SnapshotInfo>,
        headers(("x-next-token" = String, description = "Token of the next page, absent on the last"))),
        (status = 400, body = kiln_api::rest::Error)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(team): Auth,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let filter = SnapshotFilter {
        sandbox_id: q.sandbox_id.filter(|s| !s.is_empty()),
        name: q.name.filter(|s| !s.is_empty()),
        limit: q.limit,
        next_token: q.next_token.filter(|t| !t.is_empty()),
    };
    let page = state.core.list_snapshots(&team, &filter).await?;
    let mut headers = HeaderMap::new();
    if let Some(tok) = page.next_token {
        if let Ok(v) = HeaderValue::from_str(&tok) {
            headers.insert(NEXT_TOKEN_HEADER, v);
        }
    }
    let body: Vec<SnapshotInfo> = page.items.iter().map(info).collect();
    Ok((headers, Json(body)).into_response())
}

/// Delete a snapshot (E2B deletes snapshots as templates). Sandboxes
/// started from it are not affected.
#[utoipa::path(delete, path = "/templates/{templateID}", tag = "snapshots",
    params(("templateID" = String, Path, description = "A snapshot's id or name")),
    responses((status = 204),
              (status = 400, description = "A built-in template", body = kiln_api::rest::Error),
              (status = 404, body = kiln_api::rest::Error)))]
pub async fn delete(
    State(state): State<AppState>,
    Auth(team): Auth,
    PathParam(id): PathParam,
) -> Result<StatusCode, ApiError> {
    if state.core.delete_snapshot(&team, &id).await? {
        return Ok(StatusCode::NO_CONTENT);
    }
    if state
        .core
        .templates()
        .iter()
        .any(|t| t.template.id == id || t.aliases.contains(&id))
    {
        return Err(ApiError::bad_request(format!(
            "template {id} is built into this server and cannot be deleted"
        )));
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        format!("template {id} not found"),
    ))
}

/// Fork a running sandbox into `count` new ones from one snapshot of it;
/// it goes on as it was. Each copy succeeds or fails on its own.
#[utoipa::path(post, path = "/sandboxes/{sandboxID}/fork", tag = "sandboxes",
    params(("sandboxID" = String, Path)), request_body = SandboxForkRequest,
    responses((status = 201, body = Vec<SandboxForkResult>),
              (status = 400, description = "count outside 1-100, or a runtime that cannot fork", body = kiln_api::rest::Error),
              (status = 404, body = kiln_api::rest::Error),
              (status = 409, description = "Not running", body = kiln_api::rest::Error),
              (status = 429, description = "The team's limits, or what the host can honour, leave no room for it (the message names the limit)", body = kiln_api::rest::Error)))]
pub async fn fork(
    State(state): State<AppState>,
    Auth(team): Auth,
    SandboxId(id): SandboxId,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Vec<SandboxForkResult>>), ApiError> {
    let bytes = body?;
    let req: SandboxForkRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        SandboxForkRequest::default()
    } else {
        required_json_body(&bytes)?
    };
    let results = state.core.fork(&team, &id, req.count, req.timeout).await?;
    let body = results
        .into_iter()
        .map(|r| match r {
            Ok(rec) => SandboxForkResult {
                sandbox: Some(sandbox_body(&state, &rec)),
                error: None,
            },
            Err(e) => {
                let e = ApiError::from(e);
                SandboxForkResult {
                    sandbox: None,
                    error: Some(kiln_api::rest::Error {
                        code: e.status.as_u16(),
                        message: e.message,
                    }),
                }
            }
        })
        .collect();
    Ok((StatusCode::CREATED, Json(body)))
}
