//! The sandbox's own environment variables (the create's `envVars`), as the
//! agent holds them, for every kernel.
//!
//! The interpreter may have started before its sandbox got those variables:
//! a warm code-interpreter sandbox runs its kernels before kilnd hands it to
//! a team with the team's `envVars`. As E2B's interpreter does, the variables
//! are read from the agent's `GET /envs` (with the caller's access token)
//! and set in a kernel before its next cell; a kernel keeps what it was given
//! ([`crate::kernel::Kernel::sandbox_env`]) so only changes are sent again.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the agent answers inside the sandbox (E2B's envd port).
const AGENT: &str = "127.0.0.1:49983";
/// Longest wait for the agent; without an answer a cell runs with what its
/// kernel has.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Largest `/envs` answer read (the agent caps a sandbox's env far below).
const MAX_BODY: usize = 4 << 20;

/// The variables last read, under the access token they were read with. A
/// hand-over gives the sandbox a new token, so a new token means a new read;
/// without a token (a sandbox created without one) every cell reads them.
#[derive(Default)]
pub struct SandboxEnv {
    agent: Option<String>,
    cached: tokio::sync::Mutex<Option<(String, BTreeMap<String, String>)>>,
    /// A failed read is a warning once, then quiet (an interpreter run on
    /// a host without an agent, in tests, would warn on every cell).
    warned: std::sync::atomic::AtomicBool,
}

impl SandboxEnv {
    /// Reads from the agent at `KILN_AGENT_ADDR` (tests), else its port on
    /// loopback; `KILN_AGENT_ADDR=` (empty) turns reading off.
    pub fn from_env() -> Self {
        let agent = match std::env::var("KILN_AGENT_ADDR") {
            Ok(a) if a.is_empty() => None,
            Ok(a) => Some(a),
            Err(_) => Some(AGENT.to_owned()),
        };
        SandboxEnv {
            agent,
            ..SandboxEnv::default()
        }
    }

    /// A reader that never asks (tests of the server without an agent).
    pub fn off() -> Self {
        SandboxEnv::default()
    }

    /// The sandbox's variables as the agent has them now; empty if it does
    /// not answer (a warning says so).
    pub async fn current(&self, token: Option<&str>) -> BTreeMap<String, String> {
        let Some(agent) = &self.agent else {
            return BTreeMap::new();
        };
        let mut cached = self.cached.lock().await;
        if let (Some(t), Some((ct, vars))) = (token, cached.as_ref()) {
            if t == ct {
                return vars.clone();
            }
        }
        let failure = match tokio::time::timeout(TIMEOUT, fetch(agent, token)).await {
            Ok(Ok(vars)) => {
                if let Some(t) = token {
                    *cached = Some((t.to_owned(), vars.clone()));
                }
                return vars;
            }
            Ok(Err(e)) => format!("reading the sandbox's env vars from the agent failed: {e}"),
            Err(_) => format!("the agent did not answer GET /envs within {TIMEOUT:?}"),
        };
        if self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::debug!("{failure}");
        } else {
            tracing::warn!("{failure} (said once)");
        }
        BTreeMap::new()
    }
}

async fn fetch(agent: &str, token: Option<&str>) -> std::io::Result<BTreeMap<String, String>> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut stream = TcpStream::connect(agent).await?;
    let auth = token
        .filter(|t| !t.contains(['\r', '\n']))
        .map(|t| format!("X-Access-Token: {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET /envs HTTP/1.0\r\nHost: {agent}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream
        .take(MAX_BODY as u64 + 16 * 1024)
        .read_to_end(&mut answer)
        .await?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers in the agent's answer".into()))?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(bad(format!("GET /envs answered {status}")));
    }
    serde_json::from_slice(&answer[split + 4..])
        .map_err(|e| bad(format!("GET /envs answered no string map: {e}")))
}

/// What of `sandbox` a kernel that already has `given` must be sent: the
/// variables that differ from what it has (its inherited process
/// environment, overlaid by what it was given).
pub fn changes(
    sandbox: &BTreeMap<String, String>,
    given: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    sandbox
        .iter()
        .filter(|(k, v)| match given.get(*k) {
            Some(g) => g != *v,
            None => std::env::var(k).ok().as_ref() != Some(*v),
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn only_changes_are_sent() {
        let sandbox = BTreeMap::from([
            ("KILN_T_A".to_owned(), "1".to_owned()),
            ("KILN_T_B".to_owned(), "2".to_owned()),
        ]);
        let given = BTreeMap::from([("KILN_T_A".to_owned(), "1".to_owned())]);
        assert_eq!(
            changes(&sandbox, &given),
            BTreeMap::from([("KILN_T_B".to_owned(), "2".to_owned())])
        );
        let given = BTreeMap::from([("KILN_T_A".to_owned(), "0".to_owned())]);
        assert_eq!(changes(&sandbox, &given).len(), 2);
    }

    /// One canned answer per connection; counts the requests and keeps the
    /// last one.
    async fn agent(answer: &'static str) -> (String, tokio::sync::mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let _ = tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn reads_once_per_token() {
        let (addr, mut requests) =
            agent("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"K\":\"v\"}").await;
        let env = SandboxEnv {
            agent: Some(addr),
            ..SandboxEnv::default()
        };
        let want = BTreeMap::from([("K".to_owned(), "v".to_owned())]);
        assert_eq!(env.current(Some("t1")).await, want);
        assert!(requests
            .recv()
            .await
            .unwrap()
            .contains("X-Access-Token: t1\r\n"));
        assert_eq!(env.current(Some("t1")).await, want);
        assert_eq!(env.current(Some("t2")).await, want);
        assert!(requests
            .recv()
            .await
            .unwrap()
            .contains("X-Access-Token: t2\r\n"));
        assert!(requests.try_recv().is_err(), "t1's second read was cached");
        env.current(None).await;
        env.current(None).await;
        assert!(requests.recv().await.is_some() && requests.recv().await.is_some());
    }

    #[tokio::test]
    async fn a_refusal_gives_nothing() {
        let (addr, _requests) = agent("HTTP/1.1 401 Unauthorized\r\n\r\nno").await;
        let env = SandboxEnv {
            agent: Some(addr),
            ..SandboxEnv::default()
        };
        assert!(env.current(Some("t")).await.is_empty());
        assert!(SandboxEnv::off().current(Some("t")).await.is_empty());
    }
}
