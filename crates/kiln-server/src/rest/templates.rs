//! `/templates`: the catalog's templates (built into this server, public to
//! every team) as E2B's template API shows them, and the caller's
//! snapshots where E2B treats snapshots as templates (`GET
//! /templates/{id}`, `GET /templates/aliases/{alias}`).

use std::collections::HashMap;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use kiln_api::rest::{
    Template, TemplateAliasResponse, TemplateBuild, TemplateBuildStatus, TemplateWithBuilds,
};
use kiln_core::lifecycle::FoundTemplate;
use kiln_core::store::TemplateUsage;
use kiln_core::templates::TemplateInfo;
use sha2::{Digest, Sha256};

use super::PathParam;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::state::AppState;

/// A stable UUID for one build (E2B's build ids are UUIDs; Kiln's are not):
/// the hash of what identifies the build, with UUIDv8's version and
/// variant bits.
fn build_uuid(what: &str) -> String {
    let mut b: [u8; 16] = Sha256::digest(what.as_bytes())[..16]
        .try_into()
        .unwrap_or([0; 16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The build id of a catalog template: its id and when it was built.
fn catalog_build_id(id: &str, created_at: DateTime<Utc>) -> String {
    build_uuid(&format!("{id}@{}", created_at.timestamp_millis()))
}

async fn usage(
    state: &AppState,
    team: &kiln_core::Team,
) -> Result<HashMap<String, TemplateUsage>, ApiError> {
    Ok(state
        .core
        .template_usage(team)
        .await?
        .into_iter()
        .map(|u| (u.template_id.clone(), u))
        .collect())
}

/// A catalog template as the listing shows it, with the caller's use.
fn catalog_body(t: &TemplateInfo, envd: &str, usage: &HashMap<String, TemplateUsage>) -> Template {
    let used = usage.get(&t.template.id);
    Template {
        build_id: catalog_build_id(&t.template.id, t.created_at),
        template_id: t.template.id.clone(),
        cpu_count: t.vcpus,
        memory_mb: t.memory_mib,
        disk_size_mb: t.disk_mib,
        public: true,
        names: t.aliases.clone(),
        aliases: t.aliases.clone(),
        created_at: t.created_at,
        updated_at: t.created_at,
        created_by: None,
        last_spawned_at: used.map(|u| u.last_spawned_at),
        spawn_count: used.map_or(0, |u| u.spawn_count),
        build_count: 1,
        envd_version: envd.to_owned(),
        build_status: TemplateBuildStatus::Ready,
        is_default: Some(true),
    }
}

/// Templates sandboxes can be created from.
#[utoipa::path(get, path = "/templates", tag = "templates",
    responses((status = 200, body = Vec<Template>), (status = 401, body = kiln_api::rest::Error)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(team): Auth,
) -> Result<Json<Vec<Template>>, ApiError> {
    let envd = state.core.config().envd_version.clone();
    let usage = usage(&state, &team).await?;
    Ok(Json(
        state
            .core
            .templates()
            .iter()
            .map(|t| catalog_body(t, &envd, &usage))
            .collect(),
    ))
}

/// A template and its builds: one of the catalog's (by id or alias) or
/// one of the caller's snapshots (by id or name).
#[utoipa::path(get, path = "/templates/{templateID}", tag = "templates",
    params(("templateID" = String, Path, description = "Template id or alias, or a snapshot's id or name")),
    responses((status = 200, body = TemplateWithBuilds),
              (status = 401, body = kiln_api::rest::Error),
              (status = 404, body = kiln_api::rest::Error)))]
pub async fn get(
    State(state): State<AppState>,
    Auth(team): Auth,
    PathParam(id): PathParam,
) -> Result<Json<TemplateWithBuilds>, ApiError> {
    let found = state
        .core
        .find_template(&team, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Template {id} not found")))?;
    let envd = state.core.config().envd_version.clone();
    let template = match found {
        FoundTemplate::Catalog(t) => catalog_body(&t, &envd, &usage(&state, &team).await?),
        FoundTemplate::Snapshot(s) => Template {
            template_id: s.tagged_id(),
            build_id: build_uuid(&s.build_id),
            cpu_count: s.vcpus,
            memory_mb: s.memory_mib,
            disk_size_mb: s.disk_mib,
            public: false,
            aliases: s.name.iter().cloned().collect(),
            names: s.names(),
            created_at: s.created_at,
            updated_at: s.created_at,
            created_by: None,
            // Sandboxes started from a snapshot are counted under the
            // template it was taken on.
            last_spawned_at: None,
            spawn_count: 0,
            build_count: 1,
            envd_version: envd.clone(),
            build_status: TemplateBuildStatus::Ready,
            is_default: Some(false),
        },
    };
    let build = TemplateBuild {
        build_id: template.build_id.clone(),
        status: TemplateBuildStatus::Ready,
        created_at: template.created_at,
        updated_at: template.updated_at,
        finished_at: Some(template.created_at),
        cpu_count: template.cpu_count,
        memory_mb: template.memory_mb,
        disk_size_mb: template.disk_size_mb,
        envd_version: envd,
    };
    Ok(Json(TemplateWithBuilds {
        template,
        builds: vec![build],
    }))
}

/// Whether a template of this name exists for the caller (what the SDKs'
/// `Template.exists` asks): a built-in template's id or alias, or one of
/// the caller's snapshots. Another team's snapshot is not found (E2B
/// answers 403 there; Kiln does not tell teams about each other).
#[utoipa::path(get, path = "/templates/aliases/{alias}", tag = "templates",
    params(("alias" = String, Path)),
    responses((status = 200, body = TemplateAliasResponse),
              (status = 401, body = kiln_api::rest::Error),
              (status = 404, body = kiln_api::rest::Error)))]
pub async fn alias(
    State(state): State<AppState>,
    Auth(team): Auth,
    PathParam(alias): PathParam,
) -> Result<Json<TemplateAliasResponse>, ApiError> {
    let found = state
        .core
        .find_template(&team, &alias)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("template '{alias}' not found")))?;
    Ok(Json(TemplateAliasResponse {
        template_id: found.id(),
        public: found.public(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_ids_are_stable_uuids() {
        let a = build_uuid("base@1");
        assert_eq!(a, build_uuid("base@1"));
        assert_ne!(a, build_uuid("base@2"));
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('8'), "version 8: {a}");
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{a}");
    }
}
