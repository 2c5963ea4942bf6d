//! Shared setup: kilnd's router over the fake runtime and an in-memory store,
//! with two teams' keys.

#![allow(dead_code)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use chrono::Utc;
use http_body_util::BodyExt;
use kiln_core::keys;
use kiln_core::store::{SqliteStore, Store};
use kiln_core::templates::{TemplateCatalog, TemplateInfo};
use kiln_core::{Core, CoreConfig, NoAgent, Runtimes};
use kiln_runtime::fake::FakeRuntime;
use kiln_runtime::TemplateRef;
use kiln_server::AppState;
use tower::ServiceExt;

pub struct Env {
    pub state: AppState,
    pub runtime: Arc<FakeRuntime>,
    pub store: Arc<SqliteStore>,
    pub key_a: String,
    pub key_b: String,
}

pub async fn env() -> Env {
    env_with_templates(&[]).await
}

/// [`env`] with more templates besides `base` (same sizes, no aliases).
pub async fn env_with_templates(more: &[&str]) -> Env {
    let runtime = Arc::new(FakeRuntime::new());
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let (key_a, _) = keys::create_key(store.as_ref(), "team-a", "a")
        .await
        .unwrap();
    let (key_b, _) = keys::create_key(store.as_ref(), "team-b", "b")
        .await
        .unwrap();
    let templates = TemplateCatalog::new();
    templates.add(TemplateInfo {
        template: TemplateRef {
            id: "base".into(),
            rootfs: "/nonexistent".into(),
        },
        aliases: vec!["default".into()],
        vcpus: 2,
        memory_mib: 512,
        disk_mib: 1024,
        created_at: Utc::now(),
        runtime: None,
        start: None,
    });
    for name in more {
        templates.add(TemplateInfo {
            template: TemplateRef {
                id: (*name).into(),
                rootfs: "/nonexistent".into(),
            },
            aliases: vec![],
            vcpus: 2,
            memory_mib: 512,
            disk_mib: 1024,
            created_at: Utc::now(),
            runtime: None,
            start: None,
        });
    }
    let core = Core::new(
        CoreConfig {
            max_timeout_secs: 3600,
            ..CoreConfig::default()
        },
        store.clone() as Arc<dyn Store>,
        Runtimes::single(runtime.clone(), Arc::new(NoAgent)),
        Arc::new(templates),
    );
    Env {
        state: AppState::new(core, "localhost:3000".into()),
        runtime,
        store,
        key_a,
        key_b,
    }
}

impl Env {
    pub async fn call(
        &self,
        req: Request<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let resp: Response<Body> = kiln_server::app(self.state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            })
        };
        (status, headers, json)
    }

    pub async fn json(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("x-api-key", key);
        let body = match body {
            Some(v) => {
                b = b.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.call(b.body(body).unwrap()).await
    }

    pub async fn create(&self, key: &str, body: serde_json::Value) -> serde_json::Value {
        let (status, _, json) = self.json("POST", "/v2/sandboxes", key, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{json}");
        json
    }
}
