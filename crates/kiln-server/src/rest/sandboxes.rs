//! `/sandboxes` and `/v2/sandboxes`.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use kiln_api::rest::{
    ConnectSandbox, NewSandbox, OnTimeout, PauseMode, Sandbox, SandboxDetail, SandboxLifecycle,
    SandboxMetric, SandboxPauseRequest, SandboxRefreshRequest, SandboxState as WireState,
    SandboxTimeoutRequest, SandboxesWithMetrics,
};
use kiln_core::{CreateSandbox, ListFilter, Order, SandboxRecord, SandboxState};
use kiln_runtime::{ResumeMode, RuntimeKind, StateMode};
use percent_encoding::percent_decode_str;
use serde::Deserialize;

use super::{json_body, required_json_body, SandboxId};
use crate::auth::Auth;
use crate::error::ApiError;
use crate::state::AppState;

pub const NEXT_TOKEN_HEADER: &str = "x-next-token";
/// How many running sandboxes match a listing's filters, over all pages.
pub const TOTAL_RUNNING_HEADER: &str = "x-total-running";

pub(crate) fn sandbox_body(state: &AppState, r: &SandboxRecord) -> Sandbox {
    Sandbox {
        template_id: r.template_id.clone(),
        sandbox_id: r.id.clone(),
        client_id: state.core.config().client_id.clone(),
        envd_version: r.envd_version.clone(),
        alias: r.alias.clone(),
        envd_access_token: r.envd_access_token.clone(),
        traffic_access_token: r.traffic_access_token.clone(),
        domain: Some(state.domain.clone()),
    }
}

fn detail_body(state: &AppState, r: &SandboxRecord, with_secrets: bool) -> SandboxDetail {
    SandboxDetail {
        template_id: r.template_id.clone(),
        sandbox_id: r.id.clone(),
        client_id: state.core.config().client_id.clone(),
        alias: r.alias.clone(),
        started_at: r.started_at,
        end_at: r.end_at,
        state: if r.state == SandboxState::Paused {
            WireState::Paused
        } else {
            WireState::Running
        },
        cpu_count: r.vcpus,
        memory_mb: r.memory_mib,
        disk_size_mb: r.disk_mib,
        envd_version: r.envd_version.clone(),
        metadata: r.metadata.clone(),
        envd_access_token: with_secrets.then(|| r.envd_access_token.clone()),
        allow_internet_access: with_secrets.then_some(r.internet),
        domain: with_secrets.then(|| state.domain.clone()),
        lifecycle: with_secrets.then_some(SandboxLifecycle {
            auto_resume: r.auto_resume,
            on_timeout: if r.auto_pause {
                OnTimeout::Pause
            } else {
                OnTimeout::Kill
            },
        }),
        pause_mode: r.pause_mode.map(|m| match m {
            StateMode::Memory => PauseMode::Full,
            StateMode::Filesystem => PauseMode::Filesystem,
        }),
        runtime: Some(r.runtime.to_string()),
    }
}

/// Create a sandbox (SDK 2.45 and earlier).
#[utoipa::path(post, path = "/sandboxes", tag = "sandboxes",
    request_body = NewSandbox,
    responses(
        (status = 201, body = Sandbox),
        (status = 400, body = kiln_api::rest::Error),
        (status = 401, body = kiln_api::rest::Error),
        (status = 404, description = "Unknown template", body = kiln_api::rest::Error),
        (status = 429, description = "The team's limits, or what the host can honour, leave no room for it (the message names the limit)", body = kiln_api::rest::Error),
    ))]
pub async fn create_v1(
    state: State<AppState>,
    auth: Auth,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Sandbox>), ApiError> {
    create(state, auth, body).await
}

/// Create a sandbox.
#[utoipa::path(post, path = "/v2/sandboxes", tag = "sandboxes",
    request_body = NewSandbox,
    responses(
        (status = 201, body = Sandbox),
        (status = 400, body = kiln_api::rest::Error),
        (status = 401, body = kiln_api::rest::Error),
        (status = 404, description = "Unknown template", body = kiln_api::rest::Error),
        (status = 429, description = "The team's limits, or what the host can honour, leave no room for it (the message names the limit)", body = kiln_api::rest::Error),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Auth(team): Auth,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Sandbox>), ApiError> {
    let req: NewSandbox = required_json_body(&body?)?;
    if req.template_id.is_empty() {
        return Err(ApiError::bad_request("templateID must not be empty"));
    }
    let private = req
        .network
        .as_ref()
        .and_then(|n| n.allow_public_traffic)
        .is_some_and(|public| !public);
    let runtime = match req.runtime.as_deref() {
        None | Some("") => None,
        Some(name) => Some(
            name.parse::<RuntimeKind>()
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
        ),
    };
    let network = req.network.unwrap_or_default();
    let rec = state
        .core
        .create(
            &team,
            CreateSandbox {
                template: req.template_id,
                timeout_secs: req.timeout,
                auto_pause: req.auto_pause.unwrap_or(false),
                auto_pause_memory: req.auto_pause_memory.unwrap_or(true),
                auto_resume: req.auto_resume.is_some_and(|a| a.enabled),
                internet: req.allow_internet_access.unwrap_or(true),
                private_traffic: private,
                metadata: req.metadata.unwrap_or_default(),
                env_vars: req.env_vars.unwrap_or_default(),
                allow_out: network.allow_out.unwrap_or_default(),
                deny_out: network.deny_out.unwrap_or_default(),
                runtime,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(sandbox_body(&state, &rec))))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Metadata filter, URL-encoded `key=value&key2=value2`.
    pub metadata: Option<String>,
    /// Comma-separated states: `running`, `paused`.
    pub state: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Token from the `x-next-token` header of the previous page.
    pub next_token: Option<String>,
    /// By start time: `desc` (newest first, the default) or `asc`.
    pub order: Option<String>,
    /// Only sandboxes started at or after this time (RFC 3339).
    #[param(format = DateTime)]
    pub started_after: Option<String>,
    /// Kiln extension: only sandboxes started at or before this time (RFC 3339).
    #[param(format = DateTime)]
    pub started_before: Option<String>,
    /// Only sandboxes of this template: an id or alias (untagged), or the
    /// snapshot id or name they were created from.
    pub template: Option<String>,
}

fn parse_time(name: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(raw)
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|e| {
            ApiError::bad_request(format!(
                "{name} {raw:?} is not an RFC 3339 date-time with an offset: {e}"
            ))
        })
}

/// The SDK double-encodes: `urlencode({quote(k): quote(v)})`.
fn parse_metadata_filter(raw: Option<&str>) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(out);
    };
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| ApiError::bad_request("metadata filter is not valid UTF-8"))
        };
        out.insert(decode(&k)?, decode(&v)?);
    }
    Ok(out)
}

fn parse_states(raw: Option<&str>) -> Result<Vec<SandboxState>, ApiError> {
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(Vec::new());
    };
    raw.split(',')
        .map(|s| match s.trim() {
            "running" => Ok(SandboxState::Running),
            "paused" => Ok(SandboxState::Paused),
            other => Err(ApiError::bad_request(format!(
                "unknown state {other:?}: use running or paused"
            ))),
        })
        .collect()
}

/// List the team's sandboxes, paginated (`x-next-token` header).
#[utoipa::path(get, path = "/v2/sandboxes", tag = "sandboxes",
    params(ListQuery),
    responses(
        (status = 200, body = Vec<SandboxDetail>,
            headers(("x-next-token" = String, description = "Token of the next page, absent on the last"),
                    ("x-total-running" = usize, description = "Running sandboxes matching the filters, over all pages (when running ones are listed)"))),
        (status = 400, body = kiln_api::rest::Error),
        (status = 401, body = kiln_api::rest::Error),
    ))]
pub async fn list_v2(
    State(state): State<AppState>,
    Auth(team): Auth,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let filter = ListFilter {
        metadata: parse_metadata_filter(q.metadata.as_deref())?,
        states: parse_states(q.state.as_deref())?,
        limit: q.limit,
        next_token: q.next_token.filter(|t| !t.is_empty()),
        order: match q.order.as_deref() {
            None | Some("") | Some("desc") => Order::NewestFirst,
            Some("asc") => Order::OldestFirst,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "invalid order parameter {other:?}: use asc or desc"
                )))
            }
        },
        started_after: parse_time("startedAfter", q.started_after.as_deref())?,
        started_before: parse_time("startedBefore", q.started_before.as_deref())?,
        template: q.template.filter(|t| !t.is_empty()),
    };
    let list = state.core.list(&team, &filter)?;
    let body: Vec<SandboxDetail> = list
        .page
        .items
        .iter()
        .map(|r| detail_body(&state, r, false))
        .collect();
    let mut headers = HeaderMap::new();
    if let Some(tok) = list.page.next_token {
        if let Ok(v) = HeaderValue::from_str(&tok) {
            headers.insert(NEXT_TOKEN_HEADER, v);
        }
    }
    if let Some(n) = list.total_running {
        headers.insert(TOTAL_RUNNING_HEADER, HeaderValue::from(n));
    }
    Ok((headers, Json(body)).into_response())
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListV1Query {
    /// Metadata filter, URL-encoded `key=value&key2=value2`.
    pub metadata: Option<String>,
}

/// List the team's running sandboxes (v1, unpaginated).
#[utoipa::path(get, path = "/sandboxes", tag = "sandboxes",
    params(ListV1Query),
    responses((status = 200, body = Vec<SandboxDetail>), (status = 401, body = kiln_api::rest::Error)))]
pub async fn list_v1(
    State(state): State<AppState>,
    Auth(team): Auth,
    query: Result<Query<ListV1Query>, QueryRejection>,
) -> Result<Json<Vec<SandboxDetail>>, ApiError> {
    let Query(q) = query?;
    let mut filter = ListFilter {
        metadata: parse_metadata_filter(q.metadata.as_deref())?,
        states: vec![SandboxState::Running],
        limit: Some(1000),
        ..ListFilter::default()
    };
    let mut out = Vec::new();
    loop {
        let page = state.core.list(&team, &filter)?.page;
        out.extend(page.items.iter().map(|r| detail_body(&state, r, false)));
        match page.next_token {
            Some(t) => filter.next_token = Some(t),
            None => break,
        }
    }
    Ok(Json(out))
}

/// One sandbox.
#[utoipa::path(get, path = "/sandboxes/{sandboxID}", tag = "sandboxes",
    params(("sandboxID" = String, Path)),
    responses((status = 200, body = SandboxDetail), (status = 404, body = kiln_api::rest::Error)))]
pub async fn get(
    State(state): State<AppState>,
    Auth(team): Auth,
    SandboxId(id): SandboxId,
) -> Result<Json<SandboxDetail>, ApiError> {
    let rec = state.core.get(&team, &id)?;
    Ok(Json(detail_body(&state, &rec, true)))
}

/// Kill a sandbox.
#[utoipa::path(delete, path = "/sandboxes/{sandboxID}", tag = "sandboxes",
    params(("sandboxID" = String, Path)),
    responses((status = 204), (status = 404, body = kiln_api::rest::Error)))]
pub async fn kill(
    State(state): State<AppState>,
    Auth(team): Auth,
    SandboxId(id): SandboxId,
) -> Result<StatusCode, ApiError> {
    state.core.kill(&team, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set the sandbox to end `timeout` seconds from now; `0` ends it now (its
/// on-timeout action, kill or pause, has run when this answers).
#[utoipa::path(post, path = "/sandboxes/{sandboxID}/timeout", tag = "sandboxes",
    params(("sandboxID" = String, Path)), request_body = SandboxTimeoutRequest,
    responses((status = 204), (status = 400, body = kiln_api::rest::Error), (status = 404, body = kiln_api::rest::Error)))]
pub async fn set_timeout(
    State(state): State<AppState>,
    Auth(team): Auth,
    SandboxId(id): SandboxId,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let req: SandboxTimeoutRequest = required_json_body(&body?)?;
    state.core.set_timeout(&team, &id, req.timeout).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Keep the sandbox alive at least `duration` more seconds.
#[utoipa::path(post, path = "/sandboxes/{sandboxID}/refreshes", tag = "sandboxes",
    params(("sandboxID" = String, Path)), request_body = SandboxRefreshRequest,
    responses((status = 204), (status = 404, body = kiln_api::rest::Error)))]
pub async fn refresh(
    State(state): State<AppState>,
    Auth(team): Auth,
    SandboxId(id): SandboxId,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let req: SandboxRefreshRequest = json_body(&body?)?;
    state.core.refresh(&team, &id, req.duration).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Connect to a sandbox (SDK 2.45 and earlier); resumes a paused one.
#[utoipa::path(post, path = "/sandboxes/{sandboxID}/connect", tag = "sandboxes",
    params(("sandboxID" = String, Path)), request_body = ConnectSandbox,
    responses((status = 200, description = "Running", body = Sandbox),
              (status = 201, description = "Resumed", body = Sandbox),
              (status = 404, body = kiln_api::rest::Error),
              (status = 429, description = "The team's limits, or what the host can honour, leave no room for it (the message names the limit)", body = kiln_api::rest::Error)))]
pub async fn connect_v1(
    state: State<AppState>,
    auth: Auth,
    id: SandboxId,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Sandbox>), ApiError> {
    connect(state, auth, id, body).await
}

/// Connect to a sandbox; resumes a paused one.
#[utoipa::path(post, path = "/v2/sandboxes/{sandboxID}/connect", tag = "sandboxes",
    params(("sandboxID" = String, Path)), request_body = ConnectSandbox,
    responses((status = 200, description = "Running", body = Sandbox),
              (status = 201, description = "Resumed", body = Sandbox),
              (status = 404, body = kiln_api::rest::Error),
              (status = 429, description = "The team's limits, or what the host can honour, leave no room for it (the message names the limit)", body = kiln_api::rest::Error)))]
pub async fn connect(
    State(state): State<AppState>,
    Auth(team): Auth,
    SandboxId(id): SandboxId,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Sandbox>), ApiError> {
    let req: ConnectSandbox = json_body(&body?)?;
    let (rec, resumed) = state
        .core
        .connect(&team, &id, req.timeout, resume_mode(&req))
        .await?;
    let status = if resumed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(sandbox_body(&state, &rec))))
}

/// Pause a sandbox, keeping its memory (the default) or only its
/// filesystem (`{"memory": false}`: processes end, resume boots anew). Its
/// timeout stops while paused.
#[utoipa::path(post, path = "/sandboxes/{sandboxID}/pause", tag = "sandboxes",
    params(("sandboxID" = String, Path)), request_body = SandboxPauseRequest,
    responses((status = 204), (status = 400, description = "The sandbox's runtime cannot pause that way", body = kiln_api::rest::Error), (status = 404, body = kiln_api::rest::Error), (status = 409, body = kiln_api::rest::Error)))]
pub async fn pause(
    State(state): State<AppState>,
    Auth(team): Auth,
    SandboxId(id): SandboxId,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let req: SandboxPauseRequest = json_body(&body?)?;
    let mode = if req.memory.unwrap_or(true) {
        StateMode::Memory
    } else {
        StateMode::Filesystem
    };
    state.core.pause(&team, &id, mode).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Resume a paused sandbox (deprecated in E2B in favour of connect).
#[utoipa::path(post, path = "/sandboxes/{sandboxID}/resume", tag = "sandboxes",
    params(("sandboxID" = String, Path)), request_body = ConnectSandbox,
    responses((status = 201, body = Sandbox), (status = 404, body = kiln_api::rest::Error), (status = 409, body = kiln_api::rest::Error), (status = 429, description = "The team's limits, or what the host can honour, leave no room for it (the message names the limit)", body = kiln_api::rest::Error)))]
pub async fn resume(
    State(state): State<AppState>,
    Auth(team): Auth,
    SandboxId(id): SandboxId,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Sandbox>), ApiError> {
    let req: ConnectSandbox = json_body(&body?)?;
    let rec = state
        .core
        .resume(&team, &id, req.timeout, req.auto_pause, resume_mode(&req))
        .await?;
    Ok((StatusCode::CREATED, Json(sandbox_body(&state, &rec))))
}

fn resume_mode(req: &ConnectSandbox) -> ResumeMode {
    if req.reboot() {
        ResumeMode::Reboot
    } else {
        ResumeMode::Restore
    }
}

fn metric_body(m: &kiln_core::Metrics) -> SandboxMetric {
    SandboxMetric {
        timestamp: m.at,
        timestamp_unix: m.at.timestamp(),
        cpu_count: m.cpu_count,
        cpu_used_pct: (m.cpu_used_pct * 100.0).round() / 100.0,
        mem_used: m.mem_used,
        mem_total: m.mem_total,
        mem_cache: 0,
        disk_used: m.disk_used,
        disk_total: m.disk_total,
    }
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// Start of the range, Unix seconds (default: when the sandbox started).
    #[param(minimum = 0)]
    pub start: Option<i64>,
    /// End of the range, Unix seconds (default: now).
    #[param(minimum = 0)]
    pub end: Option<i64>,
}

/// The sandbox's resource use over a time range: the samples kilnd takes
/// every few seconds (`KILN_METRICS_INTERVAL`) of every running sandbox,
/// the last hour's kept, oldest first.
#[utoipa::path(get, path = "/sandboxes/{sandboxID}/metrics", tag = "sandboxes",
    params(("sandboxID" = String, Path), MetricsQuery),
    responses((status = 200, body = Vec<SandboxMetric>),
              (status = 400, description = "start after end", body = kiln_api::rest::Error),
              (status = 404, body = kiln_api::rest::Error)))]
pub async fn metrics(
    State(state): State<AppState>,
    Auth(team): Auth,
    SandboxId(id): SandboxId,
    query: Result<Query<MetricsQuery>, QueryRejection>,
) -> Result<Json<Vec<SandboxMetric>>, ApiError> {
    let Query(q) = query?;
    if q.start.is_some_and(|t| t < 0) || q.end.is_some_and(|t| t < 0) {
        return Err(ApiError::bad_request("start and end must not be negative"));
    }
    let samples = state.core.metrics(&team, &id, q.start, q.end).await?;
    Ok(Json(samples.iter().map(metric_body).collect()))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricsOfQuery {
    /// Comma-separated sandbox ids, at most 100.
    pub sandbox_ids: Option<String>,
}

/// The latest resource-use sample of each of several sandboxes; ids that
/// are not the caller's running or paused sandboxes are left out.
#[utoipa::path(get, path = "/sandboxes/metrics", tag = "sandboxes",
    params(MetricsOfQuery),
    responses((status = 200, body = SandboxesWithMetrics),
              (status = 400, description = "No ids, more than 100, or a malformed one", body = kiln_api::rest::Error),
              (status = 401, body = kiln_api::rest::Error)))]
pub async fn metrics_of(
    State(state): State<AppState>,
    Auth(team): Auth,
    query: Result<Query<MetricsOfQuery>, QueryRejection>,
) -> Result<Json<SandboxesWithMetrics>, ApiError> {
    let Query(q) = query?;
    let mut ids: Vec<String> = q
        .sandbox_ids
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if ids.is_empty() {
        return Err(ApiError::bad_request(
            "sandbox_ids is required: comma-separated sandbox ids",
        ));
    }
    ids.dedup();
    let found = state.core.metrics_of(&team, &ids).await?;
    Ok(Json(SandboxesWithMetrics {
        sandboxes: found
            .iter()
            .map(|(id, m)| (id.clone(), metric_body(m)))
            .collect(),
    }))
}
