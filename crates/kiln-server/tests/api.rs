//! The control API through the router (no socket), over the fake runtime.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;

use common::env;

fn is_error_body(v: &serde_json::Value, code: u16) -> bool {
    v["code"] == code && v["message"].as_str().is_some_and(|m| !m.is_empty())
}

#[tokio::test]
async fn create_get_list_kill() {
    let e = env().await;
    let created = e
        .create(
            &e.key_a,
            json!({"templateID": "base", "timeout": 120, "metadata": {"app": "x"}, "envVars": {"A": "1"}}),
        )
        .await;
    for field in [
        "sandboxID",
        "templateID",
        "clientID",
        "envdVersion",
        "envdAccessToken",
        "domain",
    ] {
        assert!(
            created[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field}: {created}"
        );
    }
    assert!(created["trafficAccessToken"].is_null(), "public by default");
    assert_eq!(created["templateID"], "base");
    let id = created["sandboxID"].as_str().unwrap().to_owned();
    assert_eq!(e.runtime.count(), 1);

    let (status, _, detail) = e
        .json("GET", &format!("/sandboxes/{id}"), &e.key_a, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["sandboxID"], id.as_str());
    assert_eq!(detail["state"], "running");
    assert_eq!(detail["cpuCount"], 2);
    assert_eq!(detail["memoryMB"], 512);
    assert_eq!(detail["diskSizeMB"], 1024);
    assert_eq!(detail["metadata"]["app"], "x");
    assert_eq!(detail["envdAccessToken"], created["envdAccessToken"]);
    let started =
        chrono::DateTime::parse_from_rfc3339(detail["startedAt"].as_str().unwrap()).unwrap();
    let end = chrono::DateTime::parse_from_rfc3339(detail["endAt"].as_str().unwrap()).unwrap();
    assert!(((end - started).num_seconds() - 120).abs() <= 1);

    let (status, _, list) = e.json("GET", "/v2/sandboxes", &e.key_a, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, _, list_v1) = e.json("GET", "/sandboxes", &e.key_a, None).await;
    assert_eq!(list_v1[0]["sandboxID"], id.as_str());

    let (status, _, _) = e
        .json("DELETE", &format!("/sandboxes/{id}"), &e.key_a, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(e.runtime.count(), 0);
    let (status, _, body) = e
        .json("GET", &format!("/sandboxes/{id}"), &e.key_a, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(is_error_body(&body, 404), "{body}");
    let (status, _, _) = e
        .json("DELETE", &format!("/sandboxes/{id}"), &e.key_a, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn v1_create_and_templates() {
    let e = env().await;
    let (status, _, created) = e
        .json(
            "POST",
            "/sandboxes",
            &e.key_a,
            Some(json!({"templateID": "default", "secure": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["templateID"], "base");
    assert_eq!(created["alias"], "default");
    let (status, _, templates) = e.json("GET", "/templates", &e.key_a, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(templates[0]["templateID"], "base");
    assert_eq!(templates[0]["aliases"][0], "default");
}

#[tokio::test]
async fn auth_is_required() {
    let e = env().await;
    let (status, _, body) = e
        .json("GET", "/v2/sandboxes", "e2b_0123456789abcdef", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(is_error_body(&body, 401), "{body}");
    let req = Request::get("/v2/sandboxes").body(Body::empty()).unwrap();
    let (status, _, _) = e.call(req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = e
        .json(
            "POST",
            "/v2/sandboxes",
            "wrong",
            Some(json!({"templateID": "base"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(e.runtime.count(), 0);
}

#[tokio::test]
async fn bad_input_is_a_clear_4xx_and_leaves_nothing() {
    let e = env().await;
    let cases = [
        (json!({"templateID": "nope"}), StatusCode::NOT_FOUND, "nope"),
        (
            json!({"templateID": "base", "timeout": -5}),
            StatusCode::BAD_REQUEST,
            "timeout",
        ),
        (
            json!({"templateID": "base", "timeout": 3601}),
            StatusCode::BAD_REQUEST,
            "timeout",
        ),
        (
            json!({"templateID": "base", "metadata": {"k": 1}}),
            StatusCode::BAD_REQUEST,
            "invalid request body",
        ),
        (
            json!({"timeout": 10}),
            StatusCode::BAD_REQUEST,
            "templateID",
        ),
    ];
    for (body, status, needle) in cases {
        let (got, _, resp) = e
            .json("POST", "/v2/sandboxes", &e.key_a, Some(body.clone()))
            .await;
        assert_eq!(got, status, "{body} -> {resp}");
        assert!(is_error_body(&resp, status.as_u16()), "{resp}");
        assert!(resp["message"].as_str().unwrap().contains(needle), "{resp}");
    }
    let req = Request::post("/v2/sandboxes")
        .header("x-api-key", &e.key_a)
        .header("content-type", "application/json")
        .body(Body::from("{\"templateID\": "))
        .unwrap();
    let (status, _, body) = e.call(req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(is_error_body(&body, 400), "{body}");

    let huge = format!(
        "{{\"templateID\": \"base\", \"metadata\": {{\"k\": \"{}\"}}}}",
        "x".repeat(3 << 20)
    );
    let req = Request::post("/v2/sandboxes")
        .header("x-api-key", &e.key_a)
        .header("content-type", "application/json")
        .body(Body::from(huge))
        .unwrap();
    let (status, _, body) = e.call(req).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(is_error_body(&body, 413), "{body}");

    e.runtime.fail_next_create("disk full");
    let (status, _, body) = e
        .json(
            "POST",
            "/v2/sandboxes",
            &e.key_a,
            Some(json!({"templateID": "base"})),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        !body["message"].as_str().unwrap().contains("disk full"),
        "internals leak: {body}"
    );

    assert_eq!(e.runtime.count(), 0);
    let (_, _, list) = e.json("GET", "/v2/sandboxes", &e.key_a, None).await;
    assert_eq!(list, json!([]));

    let (status, _, body) = e.json("GET", "/no/such/thing", &e.key_a, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(is_error_body(&body, 404));
    let (status, _, body) = e.json("PUT", "/v2/sandboxes", &e.key_a, None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(is_error_body(&body, 405));
}

#[tokio::test]
async fn other_teams_sandboxes_are_not_found() {
    let e = env().await;
    let id = e.create(&e.key_a, json!({"templateID": "base"})).await["sandboxID"]
        .as_str()
        .unwrap()
        .to_owned();
    for (method, path, body) in [
        ("GET", format!("/sandboxes/{id}"), None),
        ("DELETE", format!("/sandboxes/{id}"), None),
        (
            "POST",
            format!("/sandboxes/{id}/timeout"),
            Some(json!({"timeout": 60})),
        ),
        (
            "POST",
            format!("/sandboxes/{id}/refreshes"),
            Some(json!({})),
        ),
        (
            "POST",
            format!("/v2/sandboxes/{id}/connect"),
            Some(json!({"timeout": 60})),
        ),
        ("POST", format!("/sandboxes/{id}/pause"), None),
        ("GET", format!("/sandboxes/{id}/metrics"), None),
    ] {
        let (status, _, resp) = e.json(method, &path, &e.key_b, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {resp}");
    }
    let (_, _, list) = e.json("GET", "/v2/sandboxes", &e.key_b, None).await;
    assert_eq!(list, json!([]));
    assert_eq!(e.runtime.count(), 1);
}

#[tokio::test]
async fn list_pages_with_next_token_and_filters_metadata() {
    let e = env().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let c = e
            .create(
                &e.key_a,
                json!({"templateID": "base", "metadata": {"n": i.to_string(), "who": "a b&c=d"}}),
            )
            .await;
        ids.push(c["sandboxID"].as_str().unwrap().to_owned());
    }
    // Newest first unless asked otherwise (E2B's default), every page in
    // the order asked for.
    let newest: Vec<String> = ids.iter().rev().cloned().collect();
    for (order, want) in [
        ("", &newest),
        ("&order=desc", &newest),
        ("&order=asc", &ids),
    ] {
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let path = match &token {
                Some(t) => format!("/v2/sandboxes?limit=2{order}&nextToken={t}"),
                None => format!("/v2/sandboxes?limit=2{order}"),
            };
            let (status, headers, page) = e.json("GET", &path, &e.key_a, None).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            assert_eq!(headers["x-total-running"], "5");
            seen.extend(
                page.as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["sandboxID"].as_str().unwrap().to_owned()),
            );
            token = headers
                .get("x-next-token")
                .map(|v| v.to_str().unwrap().to_owned());
            if token.is_none() {
                break;
            }
        }
        assert_eq!(&seen, want, "order {order:?}");
    }
    let (status, _, body) = e
        .json("GET", "/v2/sandboxes?order=sideways", &e.key_a, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(is_error_body(&body, 400), "{body}");

    // startedAfter (as the Python SDK sends it: isoformat with an offset),
    // the Kiln extension startedBefore, and template by id or alias.
    let (_, _, d) = e
        .json("GET", &format!("/sandboxes/{}", ids[2]), &e.key_a, None)
        .await;
    let started = chrono::DateTime::parse_from_rfc3339(d["startedAt"].as_str().unwrap()).unwrap();
    let iso = percent_encoding::utf8_percent_encode(
        &started.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string(),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string();
    let listed = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["sandboxID"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, _, page) = e
        .json(
            "GET",
            &format!("/v2/sandboxes?startedAfter={iso}"),
            &e.key_a,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(listed(&page), newest[..3]);
    let (_, _, page) = e
        .json(
            "GET",
            &format!("/v2/sandboxes?startedBefore={iso}"),
            &e.key_a,
            None,
        )
        .await;
    assert_eq!(listed(&page), newest[2..]);
    for t in ["base", "default"] {
        let (_, _, page) = e
            .json(
                "GET",
                &format!("/v2/sandboxes?template={t}"),
                &e.key_a,
                None,
            )
            .await;
        assert_eq!(listed(&page).len(), 5, "{t}");
    }
    let (status, headers, page) = e
        .json("GET", "/v2/sandboxes?template=elsewhere", &e.key_a, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(listed(&page).is_empty());
    assert_eq!(headers["x-total-running"], "0");
    for bad in [
        "startedAfter=yesterday",
        "startedAfter=2026-01-01T00:00:00",
        "template=base:v1",
    ] {
        let (status, _, body) = e
            .json("GET", &format!("/v2/sandboxes?{bad}"), &e.key_a, None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(is_error_body(&body, 400), "{body}");
    }

    // As the Python SDK encodes it: urlencode({quote(k): quote(v)}), then
    // the whole string as one query value.
    let inner = "n=3&who=a%2520b%2526c%253Dd";
    let path = format!(
        "/v2/sandboxes?metadata={}",
        percent_encoding::utf8_percent_encode(inner, percent_encoding::NON_ALPHANUMERIC)
    );
    let (status, _, page) = e.json("GET", &path, &e.key_a, None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let page = page.as_array().unwrap();
    assert_eq!(page.len(), 1, "{page:?}");
    assert_eq!(page[0]["sandboxID"], ids[3].as_str());

    let (status, _, _) = e
        .json("GET", "/v2/sandboxes?state=dead", &e.key_a, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = e.json("GET", "/v2/sandboxes?limit=0", &e.key_a, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = e.json("GET", "/v2/sandboxes?limit=x", &e.key_a, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = e
        .json("GET", "/v2/sandboxes?nextToken=zz", &e.key_a, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn timeout_refresh_connect_pause_resume_metrics() {
    let e = env().await;
    let id = e
        .create(&e.key_a, json!({"templateID": "base", "timeout": 60}))
        .await["sandboxID"]
        .as_str()
        .unwrap()
        .to_owned();
    let end_at = |d: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(d["endAt"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let (status, _, _) = e
        .json(
            "POST",
            &format!("/sandboxes/{id}/timeout"),
            &e.key_a,
            Some(json!({"timeout": 600})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, _, d) = e
        .json("GET", &format!("/sandboxes/{id}"), &e.key_a, None)
        .await;
    let remaining = (end_at(&d) - chrono::Utc::now()).num_seconds();
    assert!((595..=600).contains(&remaining), "{remaining}");

    for bad in [
        json!({"timeout": -1}),
        json!({"timeout": 999_999}),
        json!({}),
    ] {
        let (status, _, body) = e
            .json(
                "POST",
                &format!("/sandboxes/{id}/timeout"),
                &e.key_a,
                Some(bad.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} -> {body}");
    }

    let (status, _, _) = e
        .json(
            "POST",
            &format!("/sandboxes/{id}/refreshes"),
            &e.key_a,
            Some(json!({"duration": 10})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, _, d2) = e
        .json("GET", &format!("/sandboxes/{id}"), &e.key_a, None)
        .await;
    assert_eq!(end_at(&d2), end_at(&d), "refresh never shortens");

    let (status, _, c) = e
        .json(
            "POST",
            &format!("/v2/sandboxes/{id}/connect"),
            &e.key_a,
            Some(json!({"timeout": 60})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(c["sandboxID"], id.as_str());

    let (status, _, m) = e
        .json("GET", &format!("/sandboxes/{id}/metrics"), &e.key_a, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(m[0]["cpuCount"], 2);
    assert_eq!(m[0]["memTotal"], 512 * 1024 * 1024);

    let (status, _, _) = e
        .json("POST", &format!("/sandboxes/{id}/pause"), &e.key_a, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, body) = e
        .json("POST", &format!("/sandboxes/{id}/pause"), &e.key_a, None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (_, _, paused) = e
        .json("GET", "/v2/sandboxes?state=paused", &e.key_a, None)
        .await;
    assert_eq!(paused[0]["state"], "paused");
    let (status, _, c) = e
        .json(
            "POST",
            &format!("/sandboxes/{id}/connect"),
            &e.key_a,
            Some(json!({"timeout": 60})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "resumed: {c}");
    let (status, _, _) = e
        .json(
            "POST",
            &format!("/sandboxes/{id}/resume"),
            &e.key_a,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn openapi_is_served() {
    let e = env().await;
    let req = Request::get("/openapi.json").body(Body::empty()).unwrap();
    let (status, _, doc) = e.call(req).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/v2/sandboxes"]["post"].is_object());
    assert!(doc["components"]["schemas"]["SandboxDetail"].is_object());
}

/// docs/openapi.json must match what the code generates. Regenerate with
/// `KILN_UPDATE_OPENAPI=1 cargo test -p kiln-server --test api openapi`.
#[test]
fn openapi_document_in_docs_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let generated = kiln_server::rest::openapi::document();
    if std::env::var_os("KILN_UPDATE_OPENAPI").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json is stale: run KILN_UPDATE_OPENAPI=1 cargo test -p kiln-server --test api openapi"
    );
}

#[tokio::test]
async fn runtime_choice_and_pause_modes_through_the_api() {
    let e = env().await;
    // An unknown runtime, or one this server does not run, is a 400 naming it.
    for (name, says) in [("bsd-jail", "bsd-jail"), ("gvisor", "gvisor")] {
        let (status, _, body) = e
            .json(
                "POST",
                "/v2/sandboxes",
                &e.key_a,
                Some(json!({"templateID": "base", "runtime": name})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            is_error_body(&body, 400) && body["message"].as_str().unwrap().contains(says),
            "{body}"
        );
    }
    assert_eq!(e.runtime.count(), 0);
    let created = e
        .create(
            &e.key_a,
            json!({"templateID": "base", "runtime": "fake", "autoPause": true, "autoResume": {"enabled": true}}),
        )
        .await;
    let id = created["sandboxID"].as_str().unwrap().to_owned();
    let d = detail(&e, &id).await;
    assert_eq!(d["runtime"], "fake");
    assert_eq!(d["lifecycle"]["onTimeout"], "pause");
    assert_eq!(d["lifecycle"]["autoResume"], true);
    assert!(d.get("pauseMode").is_none(), "{d}");

    // Filesystem-only pause, as the SDK asks for it.
    let (status, _, body) = e
        .json(
            "POST",
            &format!("/sandboxes/{id}/pause"),
            &e.key_a,
            Some(json!({"memory": false})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let d = detail(&e, &id).await;
    assert_eq!(d["state"], "paused");
    assert_eq!(d["pauseMode"], "filesystem");
    let (status, _, body) = e
        .json("POST", &format!("/sandboxes/{id}/pause"), &e.key_a, None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _, _) = e
        .json(
            "POST",
            &format!("/v2/sandboxes/{id}/connect"),
            &e.key_a,
            Some(json!({"timeout": 60})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // Resuming a running sandbox is a conflict.
    let (status, _, body) = e
        .json("POST", &format!("/sandboxes/{id}/resume"), &e.key_a, None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // A memory pause (the default).
    let (status, _, _) = e
        .json("POST", &format!("/sandboxes/{id}/pause"), &e.key_a, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(detail(&e, &id).await["pauseMode"], "full");
}

async fn detail(e: &common::Env, id: &str) -> serde_json::Value {
    e.json("GET", &format!("/sandboxes/{id}"), &e.key_a, None)
        .await
        .2
}

#[tokio::test]
async fn snapshots_and_forks_through_the_api() {
    let e = env().await;
    let created = e.create(&e.key_a, json!({"templateID": "base"})).await;
    let id = created["sandboxID"].as_str().unwrap().to_owned();
    let (status, _, snap) = e
        .json(
            "POST",
            &format!("/sandboxes/{id}/snapshots"),
            &e.key_a,
            Some(json!({"name": "first"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{snap}");
    let snap_id = snap["snapshotID"].as_str().unwrap().to_owned();
    assert!(snap_id.ends_with(":default"), "{snap}");
    assert_eq!(snap["names"][0], "team-a/first:default");
    assert_eq!(snap["sandboxID"], id.as_str());
    // Two sandboxes from it.
    for _ in 0..2 {
        let made = e.create(&e.key_a, json!({"templateID": snap_id})).await;
        assert_ne!(made["sandboxID"], id.as_str());
    }
    assert_eq!(e.runtime.count(), 3);
    // Listing, with filters; team b sees none.
    let (_, _, list) = e.json("GET", "/snapshots", &e.key_a, None).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let (_, _, list) = e
        .json(
            "GET",
            &format!("/snapshots?sandboxID={id}&name=first"),
            &e.key_a,
            None,
        )
        .await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let (_, _, list) = e.json("GET", "/snapshots", &e.key_b, None).await;
    assert!(list.as_array().unwrap().is_empty(), "{list}");
    let (status, _, _) = e.json("GET", "/snapshots?limit=0", &e.key_a, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Fork: three copies, then bad counts.
    let (status, _, forks) = e
        .json(
            "POST",
            &format!("/sandboxes/{id}/fork"),
            &e.key_a,
            Some(json!({"count": 3, "timeout": 60})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{forks}");
    let forks = forks.as_array().unwrap();
    assert_eq!(forks.len(), 3);
    assert!(forks.iter().all(|f| f["sandbox"]["sandboxID"].is_string()));
    assert_eq!(e.runtime.count(), 6);
    for count in [0, 101] {
        let (status, _, body) = e
            .json(
                "POST",
                &format!("/sandboxes/{id}/fork"),
                &e.key_a,
                Some(json!({"count": count})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    let (status, _, _) = e
        .json("POST", &format!("/sandboxes/{id}/fork"), &e.key_b, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another team's sandbox");
    // Delete (as the SDK does, through /templates); then it is gone.
    let enc = snap_id.replace(':', "%3A");
    let (status, _, _) = e
        .json("DELETE", &format!("/templates/{enc}"), &e.key_b, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another team's snapshot");
    let (status, _, _) = e
        .json("DELETE", &format!("/templates/{enc}"), &e.key_a, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, body) = e
        .json(
            "POST",
            "/v2/sandboxes",
            &e.key_a,
            Some(json!({"templateID": snap_id})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, _) = e.json("DELETE", "/templates/base", &e.key_a, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn ids_timeout_zero_metrics_and_error_shapes() {
    let e = env().await;
    let created = e.create(&e.key_a, json!({"templateID": "base"})).await;
    let id = created["sandboxID"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 20);
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    assert_eq!(created["clientID"], "kiln");
    assert_eq!(created["envdVersion"], "0.6.4");
    assert_eq!(created["domain"], "localhost:3000");

    // The older SDKs' <id>-<clientID> names the same sandbox.
    let composite = format!("{id}-{}", created["clientID"].as_str().unwrap());
    let (status, _, d) = e
        .json("GET", &format!("/sandboxes/{composite}"), &e.key_a, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["sandboxID"], id.as_str());
    // A malformed id is a 400, an unknown one a 404, both {code, message}.
    for (path, code) in [
        ("/sandboxes/NOT-an-id", 400),
        ("/sandboxes/nosuchsandbox", 404),
        ("/sandboxes/%FF%FE", 400),
        ("/no/such/endpoint", 404),
        ("/v3/sandboxes", 404),
    ] {
        let (status, _, body) = e.json("GET", path, &e.key_a, None).await;
        assert_eq!(status.as_u16(), code, "{path}: {body}");
        assert!(is_error_body(&body, code), "{path}: {body}");
    }

    // Metrics: a range of samples, and the latest of several at once.
    let (status, _, m) = e
        .json("GET", &format!("/sandboxes/{id}/metrics"), &e.key_a, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{m}");
    let ts = m[0]["timestampUnix"].as_i64().unwrap();
    e.state.core.sample_metrics().await;
    let (_, _, m) = e
        .json(
            "GET",
            &format!("/sandboxes/{id}/metrics?start={ts}&end={}", ts + 60),
            &e.key_a,
            None,
        )
        .await;
    assert_eq!(m.as_array().unwrap().len(), 2, "{m}");
    let (_, _, m) = e
        .json(
            "GET",
            &format!("/sandboxes/{id}/metrics?start=0&end={}", ts - 1),
            &e.key_a,
            None,
        )
        .await;
    assert_eq!(m, json!([]));
    for bad in ["start=10&end=5", "start=-1", "start=x"] {
        let (status, _, body) = e
            .json(
                "GET",
                &format!("/sandboxes/{id}/metrics?{bad}"),
                &e.key_a,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, _, many) = e
        .json(
            "GET",
            &format!("/sandboxes/metrics?sandbox_ids={id},nosuchsandbox"),
            &e.key_a,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{many}");
    assert_eq!(many["sandboxes"].as_object().unwrap().len(), 1);
    assert_eq!(many["sandboxes"][&id]["cpuCount"], 2);
    let (_, _, theirs) = e
        .json(
            "GET",
            &format!("/sandboxes/metrics?sandbox_ids={id}"),
            &e.key_b,
            None,
        )
        .await;
    assert_eq!(theirs, json!({"sandboxes": {}}));
    let (status, _, _) = e.json("GET", "/sandboxes/metrics", &e.key_a, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // timeout 0: ends it now (kill, the default on-timeout action).
    let (status, _, body) = e
        .json(
            "POST",
            &format!("/sandboxes/{id}/timeout"),
            &e.key_a,
            Some(json!({"timeout": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(e.runtime.count(), 0);
    let (status, _, _) = e
        .json("GET", &format!("/sandboxes/{id}"), &e.key_a, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn templates_aliases_and_builds_in_the_spec_shapes() {
    let e = env().await;
    e.create(&e.key_a, json!({"templateID": "default"})).await;
    let (status, _, list) = e.json("GET", "/templates", &e.key_a, None).await;
    assert_eq!(status, StatusCode::OK);
    let t = &list[0];
    for key in [
        "templateID",
        "buildID",
        "cpuCount",
        "memoryMB",
        "diskSizeMB",
        "public",
        "aliases",
        "names",
        "createdAt",
        "updatedAt",
        "createdBy",
        "lastSpawnedAt",
        "spawnCount",
        "buildCount",
        "envdVersion",
        "buildStatus",
    ] {
        assert!(t.get(key).is_some(), "missing {key}: {t}");
    }
    assert_eq!(t["buildStatus"], "ready");
    assert_eq!(t["spawnCount"], 1);
    assert!(t["lastSpawnedAt"].is_string());
    let build_id = t["buildID"].as_str().unwrap();
    assert_eq!(build_id.len(), 36, "a UUID: {build_id}");
    let (_, _, other_team) = e.json("GET", "/templates", &e.key_b, None).await;
    assert_eq!(other_team[0]["spawnCount"], 0, "counts are per team");

    for name in ["base", "default"] {
        let (status, _, found) = e
            .json("GET", &format!("/templates/aliases/{name}"), &e.key_a, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{found}");
        assert_eq!(found, json!({"templateID": "base", "public": true}));
        let (status, _, with_builds) = e
            .json("GET", &format!("/templates/{name}"), &e.key_a, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{with_builds}");
        assert_eq!(with_builds["templateID"], "base");
        assert_eq!(with_builds["builds"][0]["buildID"], build_id);
        assert_eq!(with_builds["builds"][0]["status"], "ready");
    }
    for path in ["/templates/aliases/nope", "/templates/nope"] {
        let (status, _, body) = e.json("GET", path, &e.key_a, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(is_error_body(&body, 404), "{body}");
    }
}
