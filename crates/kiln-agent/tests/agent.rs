//! kiln-agent driven over Connect (HTTP/1.1 and h2c) by a Rust client.

mod harness;

use std::io::Read;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use harness::{bash, collect_output, envelope, split_envelopes, Agent, Conn, Opts};
use http_body_util::BodyExt;
use serde_json::json;

#[tokio::test]
async fn start_streams_output_and_exit_code_over_h1_and_h2c() {
    let agent = Agent::start();
    for h2 in [false, true] {
        let mut c = Conn::open(&agent.addr, h2).await;
        let ev = c
            .stream(
                "process.Process/Start",
                bash("echo hello; echo oops >&2; exit 3"),
            )
            .await;
        assert!(ev[0]
            .1
            .pointer("/event/start/pid")
            .and_then(|p| p.as_u64())
            .is_some());
        let (out, end, fin) = collect_output(&ev);
        assert_eq!(out, b"hello\n");
        assert_eq!(end["exitCode"], 3);
        assert_eq!(end["exited"], true);
        assert_eq!(end["status"], "exit status 3");
        assert_eq!(fin, json!({}));
        let stderr: Vec<u8> = ev
            .iter()
            .filter_map(|(_, m)| m.pointer("/event/data/stderr"))
            .flat_map(harness::b64)
            .collect();
        assert_eq!(stderr, b"oops\n");
    }
}

#[tokio::test]
async fn many_lines_arrive_complete_and_in_order_over_h2c() {
    let agent = Agent::start();
    let mut c = Conn::open(&agent.addr, true).await;
    let ev = c
        .stream("process.Process/Start", bash("seq 1 200000"))
        .await;
    let (out, end, _) = collect_output(&ev);
    assert_eq!(end["exitCode"], 0);
    let text = String::from_utf8(out).expect("utf8");
    let mut n = 0u32;
    for (i, line) in text.lines().enumerate() {
        assert_eq!(
            line.parse::<usize>().ok(),
            Some(i + 1),
            "line {i} out of order"
        );
        n += 1;
    }
    assert_eq!(n, 200_000);
}

#[tokio::test]
async fn client_stream_input_in_order_then_close_stdin() {
    let agent = Agent::start();
    let mut c = Conn::open(&agent.addr, true).await;
    let mut start = json!({"process": {"cmd": "/bin/cat"}, "stdin": true, "tag": "cat-1"});
    start["process"]["cwd"] = json!("/");
    let resp = c
        .open_stream("process.Process/Start", envelope(&start))
        .await;
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    let pid = loop {
        let f = body.frame().await.expect("frame").expect("ok");
        buf.extend_from_slice(f.data_ref().expect("data"));
        if let Some((_, m)) = split_envelopes(&mut buf).into_iter().next() {
            break m
                .pointer("/event/start/pid")
                .and_then(|p| p.as_u64())
                .expect("pid");
        }
    };

    let mut input = envelope(&json!({"start": {"process": {"tag": "cat-1"}}}));
    let mut want = Vec::new();
    for i in 0..50 {
        let chunk = format!("chunk{i}\n");
        want.extend_from_slice(chunk.as_bytes());
        input.extend(envelope(
            &json!({"data": {"input": {"stdin": base64_of(chunk.as_bytes())}}}),
        ));
    }
    input.extend(harness::end_envelope());
    let mut c2 = Conn::open(&agent.addr, false).await;
    let resp = c2.open_stream("process.Process/StreamInput", input).await;
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let ev = split_envelopes(&mut BytesMut::from(&bytes[..]));
    assert_eq!(ev.last().map(|e| e.0), Some(2));
    assert_eq!(ev.last().map(|e| e.1.clone()), Some(json!({})));

    let (st, _) = c2
        .unary(
            "process.Process/CloseStdin",
            json!({"process": {"pid": pid}}),
        )
        .await;
    assert_eq!(st, 200);
    let mut rest = Vec::new();
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.expect("frame").into_data() {
            rest.extend_from_slice(&d);
        }
    }
    buf.extend_from_slice(&rest);
    let (out, end, _) = collect_output(&split_envelopes(&mut buf));
    assert_eq!(out, want);
    assert_eq!(end["exitCode"], 0);
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test]
async fn reattach_by_tag_after_stream_dropped_and_signal() {
    let agent = Agent::start();
    {
        let mut c = Conn::open(&agent.addr, false).await;
        let mut req = bash("i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.05; done");
        req["tag"] = json!("ticker");
        let resp = c.open_stream("process.Process/Start", envelope(&req)).await;
        let mut body = resp.into_body();
        let _ = body.frame().await; // start event, then drop the stream and connection
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = Conn::open(&agent.addr, true).await;
    let (st, list) = c.unary("process.Process/List", json!({})).await;
    assert_eq!(st, 200);
    let p = &list["processes"][0];
    assert_eq!(p["tag"], "ticker");
    let pid = p["pid"].as_u64().expect("pid");

    let resp = c
        .open_stream(
            "process.Process/Connect",
            envelope(&json!({"process": {"tag": "ticker"}})),
        )
        .await;
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    let mut ticks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ticks.len() < 5 && Instant::now() < deadline {
        let f = body.frame().await.expect("frame").expect("ok");
        buf.extend_from_slice(f.data_ref().expect("data"));
        for (_, m) in split_envelopes(&mut buf) {
            if let Some(d) = m.pointer("/event/data/stdout") {
                ticks.extend(
                    String::from_utf8(harness::b64(d))
                        .expect("utf8")
                        .lines()
                        .map(str::to_string),
                );
            }
        }
    }
    let nums: Vec<u32> = ticks
        .iter()
        .map(|t| t[4..].parse().expect("tick"))
        .collect();
    assert!(
        nums.len() >= 5 && nums.windows(2).all(|w| w[1] == w[0] + 1),
        "{nums:?}"
    );

    let mut c2 = Conn::open(&agent.addr, false).await;
    let (st, _) = c2
        .unary(
            "process.Process/SendSignal",
            json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await;
    assert_eq!(st, 200);
    let mut rest = Vec::new();
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.expect("frame").into_data() {
            rest.extend_from_slice(&d);
        }
    }
    buf.extend_from_slice(&rest);
    let (_, end, fin) = collect_output(&split_envelopes(&mut buf));
    assert_eq!(end["exited"], false);
    assert_eq!(end["status"], "signal: killed");
    assert_eq!(fin, json!({}));
    let (_, list) = c2.unary("process.Process/List", json!({})).await;
    assert_eq!(list["processes"], json!([]));
}

#[tokio::test]
async fn pty_size_follows_update() {
    let agent = Agent::start();
    let mut c = Conn::open(&agent.addr, true).await;
    let req = json!({"process": {"cmd": "/bin/bash", "args": ["-c", "stty size; read x; stty size"]},
                     "pty": {"size": {"cols": 91, "rows": 17}}});
    let resp = c.open_stream("process.Process/Start", envelope(&req)).await;
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    let mut screen = Vec::new();
    let mut pid = 0;
    let mut resized = false;
    while let Some(f) = body.frame().await {
        buf.extend_from_slice(&f.expect("frame").into_data().unwrap_or_default());
        for (_, m) in split_envelopes(&mut buf) {
            if let Some(p) = m.pointer("/event/start/pid") {
                pid = p.as_u64().expect("pid");
            }
            if let Some(d) = m.pointer("/event/data/pty") {
                screen.extend(harness::b64(d));
            }
        }
        if !resized && String::from_utf8_lossy(&screen).contains("17 91") {
            resized = true;
            let mut c2 = Conn::open(&agent.addr, false).await;
            let (st, _) = c2
                .unary(
                    "process.Process/Update",
                    json!({"process": {"pid": pid}, "pty": {"size": {"cols": 120, "rows": 40}}}),
                )
                .await;
            assert_eq!(st, 200);
            let (st, _) = c2
                .unary(
                    "process.Process/SendInput",
                    json!({"process": {"pid": pid}, "input": {"pty": base64_of(b"go\n")}}),
                )
                .await;
            assert_eq!(st, 200);
        }
    }
    let s = String::from_utf8_lossy(&screen);
    assert!(s.contains("17 91") && s.contains("40 120"), "{s:?}");
}

#[tokio::test]
async fn filesystem_rpcs_and_errors() {
    let agent = Agent::start();
    let mut c = Conn::open(&agent.addr, false).await;
    let (st, r) = c
        .unary("filesystem.Filesystem/MakeDir", json!({"path": "a/b"}))
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["entry"]["type"], "FILE_TYPE_DIRECTORY");
    assert_eq!(r["entry"]["owner"], "user");
    let home = agent.home.display().to_string();
    assert_eq!(r["entry"]["path"], format!("{home}/a/b"));
    let (st, r) = c
        .unary("filesystem.Filesystem/MakeDir", json!({"path": "a/b"}))
        .await;
    assert_eq!((st, r["code"].as_str()), (409, Some("already_exists")));
    std::fs::write(agent.home.join("a/b/f.txt"), b"12345").expect("write");
    let (_, r) = c
        .unary(
            "filesystem.Filesystem/ListDir",
            json!({"path": "~", "depth": 3}),
        )
        .await;
    let paths: Vec<&str> = r["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        [
            format!("{home}/a"),
            format!("{home}/a/b"),
            format!("{home}/a/b/f.txt")
        ]
    );
    let (_, r) = c
        .unary("filesystem.Filesystem/Stat", json!({"path": "a/b/f.txt"}))
        .await;
    assert_eq!(r["entry"]["size"], "5");
    let (st, r) = c
        .unary("filesystem.Filesystem/Stat", json!({"path": "nope"}))
        .await;
    assert_eq!((st, r["code"].as_str()), (404, Some("not_found")));
    let (st, r) = c
        .unary(
            "filesystem.Filesystem/ListDir",
            json!({"path": "a/b/f.txt"}),
        )
        .await;
    assert_eq!((st, r["code"].as_str()), (400, Some("invalid_argument")));
    let (st, r) = c
        .unary("filesystem.Filesystem/ListDir", json!({"path": "/root"}))
        .await;
    assert_eq!(
        (st, r["code"].as_str()),
        (403, Some("permission_denied")),
        "{r}"
    );
    let (st, _) = c
        .unary(
            "filesystem.Filesystem/Move",
            json!({"source": "a/b/f.txt", "destination": "c/g.txt"}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        std::fs::read(agent.home.join("c/g.txt")).expect("moved"),
        b"12345"
    );
    let (st, _) = c
        .unary("filesystem.Filesystem/Remove", json!({"path": "a"}))
        .await;
    assert_eq!(st, 200);
    assert!(!agent.home.join("a").exists());
}

#[tokio::test]
async fn watch_stream_reports_events_and_missing_path_fails() {
    let agent = Agent::start();
    let mut c = Conn::open(&agent.addr, true).await;
    let ev = c
        .stream(
            "filesystem.Filesystem/WatchDir",
            json!({"path": "/nonexistent/dir"}),
        )
        .await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].1["error"]["code"], "not_found");

    let resp = c
        .open_stream(
            "filesystem.Filesystem/WatchDir",
            envelope(&json!({"path": "~"})),
        )
        .await;
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    let mut seen = Vec::new();
    let f = body.frame().await.expect("frame").expect("ok");
    buf.extend_from_slice(f.data_ref().expect("data"));
    assert!(split_envelopes(&mut buf)[0].1.get("start").is_some());
    std::fs::write(agent.home.join("x"), b"1").expect("write");
    std::fs::rename(agent.home.join("x"), agent.home.join("y")).expect("rename");
    std::fs::remove_file(agent.home.join("y")).expect("remove");
    let want = [
        ("EVENT_TYPE_CREATE", "x"),
        ("EVENT_TYPE_WRITE", "x"),
        ("EVENT_TYPE_RENAME", "x"),
        ("EVENT_TYPE_CREATE", "y"),
        ("EVENT_TYPE_REMOVE", "y"),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !want
        .iter()
        .all(|w| seen.contains(&(w.0.to_string(), w.1.to_string())))
        && Instant::now() < deadline
    {
        let f = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("event in time")
            .expect("frame")
            .expect("ok");
        buf.extend_from_slice(f.data_ref().expect("data"));
        for (_, m) in split_envelopes(&mut buf) {
            if let Some(fe) = m.get("filesystem") {
                seen.push((
                    fe["type"].as_str().unwrap_or("").to_string(),
                    fe["name"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
    }
    assert!(
        want.iter()
            .all(|w| seen.contains(&(w.0.to_string(), w.1.to_string()))),
        "{seen:?}"
    );
}

#[tokio::test]
async fn as_pid1_reaps_orphans_keeps_exit_codes_and_shuts_down() {
    let (rd, wr) = rustix::pipe::pipe().expect("pipe");
    use std::os::fd::AsRawFd;
    let agent = Agent::start_with(Opts {
        pid_ns: true,
        extra_env: vec![("KILN_SECRET".into(), "leak".into())],
        ready_fd: Some(wr.as_raw_fd()),
    });
    drop(wr);
    let mut ready = [0u8; 2];
    let n = std::fs::File::from(rd)
        .read(&mut ready)
        .expect("ready byte");
    assert_eq!(n, 1, "exactly one readiness byte, then EOF");

    let mut c = Conn::open(&agent.addr, false).await;
    let ev = c
        .stream(
            "process.Process/Start",
            bash("echo $$ $PPID; env | grep -c KILN_ || true"),
        )
        .await;
    let (out, _, _) = collect_output(&ev);
    let out = String::from_utf8(out).expect("utf8");
    let mut lines = out.lines();
    assert_eq!(
        lines.next().and_then(|l| l.split(' ').nth(1)),
        Some("1"),
        "parent is the agent as PID 1"
    );
    assert_eq!(lines.next(), Some("0"), "no KILN_ variables passed on");

    // Orphans (double-forked sleeps) get reparented to the agent and reaped,
    // while the agent's own children keep their exit codes.
    for i in 0..20 {
        let ev = c
            .stream(
                "process.Process/Start",
                bash(&format!("(sleep 0.05 &); (true &); exit {}", i % 7)),
            )
            .await;
        assert_eq!(collect_output(&ev).1["exitCode"], i % 7);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ev = c
        .stream(
            "process.Process/Start",
            bash("grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l"),
        )
        .await;
    let (out, _, _) = collect_output(&ev);
    assert_eq!(String::from_utf8_lossy(&out).trim(), "0", "zombies left");

    // A background child that ignores nothing: SIGTERM to the agent ends it.
    let resp = c
        .open_stream("process.Process/Start", envelope(&bash("sleep 1000")))
        .await;
    drop(resp);
    let t0 = Instant::now();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.agent_pid()),
        nix::sys::signal::Signal::SIGTERM,
    );
    let mut agent = agent;
    let status = loop {
        if let Some(s) = agent.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "agent did not shut down"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn bad_requests_keep_the_agent_serving() {
    let agent = Agent::start();
    let mut c = Conn::open(&agent.addr, true).await;
    // An unknown RPC is a 404 (connect-go's mux has no route), never a 5xx.
    let (st, r) = c.unary("process.Process/Bogus", json!({})).await;
    assert_eq!((st, r["code"].as_str()), (404, Some("unimplemented")));
    let (st, r) = c
        .unary(
            "process.Process/SendInput",
            json!({"process": {"pid": "x"}}),
        )
        .await;
    assert_eq!((st, r["code"].as_str()), (400, Some("invalid_argument")));
    let ev = c
        .stream(
            "process.Process/Start",
            json!({"process": {"cmd": "/bin/true", "cwd": "/etc/passwd"}}),
        )
        .await;
    assert_eq!(ev[0].1["error"]["code"], "invalid_argument");
    // 1 MiB header over h2c: refused, and the agent keeps serving.
    let mut c2 = Conn::open(&agent.addr, true).await;
    let req = hyper::Request::get("http://agent/health")
        .header("x-big", "a".repeat(1 << 20))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let refused = match &mut c2 {
        Conn::H2(s) => match s.send_request(req).await {
            Ok(r) => r.status() == 431,
            Err(_) => true,
        },
        Conn::H1(_) => unreachable!(),
    };
    assert!(refused);
    let (st, r) = c.unary("process.Process/List", json!({})).await;
    assert_eq!((st, r["processes"].clone()), (200, json!([])));
}

/// The exec round trip of `true` (Start → end), p50 over 1,000 runs on
/// loopback. A measurement, not a check: run with
/// `cargo test -p kiln-agent --release --test agent -- --ignored --nocapture exec_round_trip`.
#[tokio::test]
#[ignore]
async fn exec_round_trip_p50() {
    let agent = Agent::start();
    let mut c = Conn::open(&agent.addr, false).await;
    let req = json!({"process": {"cmd": "/bin/true"}, "stdin": false});
    let mut times = Vec::new();
    for _ in 0..1000 {
        let t0 = Instant::now();
        let ev = c.stream("process.Process/Start", req.clone()).await;
        times.push(t0.elapsed());
        assert_eq!(collect_output(&ev).1["exitCode"], 0);
    }
    times.sort();
    let rss =
        std::fs::read_to_string(format!("/proc/{}/status", agent.agent_pid())).unwrap_or_default();
    let rss = rss
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap_or("")
        .to_string();
    println!(
        "exec round trip of /bin/true: p50 {:?}, p90 {:?}, p99 {:?}; agent {rss}",
        times[500], times[900], times[990]
    );
    let mut c = Conn::open(&agent.addr, false).await;
    let req = bash("true");
    let mut times = Vec::new();
    for _ in 0..200 {
        let t0 = Instant::now();
        c.stream("process.Process/Start", req.clone()).await;
        times.push(t0.elapsed());
    }
    times.sort();
    println!(
        "exec round trip of bash -l -c true (what the SDK sends): p50 {:?}",
        times[100]
    );
}
