//! The code interpreter on port 49999 of code-interpreter sandboxes:
//! `POST /execute` answered with NDJSON lines (stdout, stderr, result,
//! error, number_of_executions, end_of_execution).

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sandbox::SandboxConn;

/// The interpreter's port.
pub const INTERPRETER_PORT: u16 = 49999;

#[derive(Debug, Clone, Serialize)]
struct ExecuteRequest<'a> {
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    language: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context_id: Option<&'a str>,
}

/// One rich result (`display()` output or the cell's value): each present
/// field is one representation of it.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct RichResult {
    pub text: Option<String>,
    pub html: Option<String>,
    pub markdown: Option<String>,
    pub svg: Option<String>,
    /// Base64 PNG.
    pub png: Option<String>,
    /// Base64 JPEG.
    pub jpeg: Option<String>,
    pub latex: Option<String>,
    pub json: Option<serde_json::Value>,
    #[serde(default)]
    pub is_main_result: bool,
}

/// An exception the code raised.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ExecutionError {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub traceback: String,
}

/// What running a cell produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Execution {
    pub stdout: String,
    pub stderr: String,
    pub results: Vec<RichResult>,
    pub error: Option<ExecutionError>,
    pub execution_count: Option<i64>,
}

#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

impl Execution {
    fn apply(&mut self, line: Line) {
        match line.kind.as_str() {
            "stdout" => self.stdout.push_str(line.text.as_deref().unwrap_or("")),
            "stderr" => self.stderr.push_str(line.text.as_deref().unwrap_or("")),
            "result" => {
                let mut m = line.rest;
                if let Some(t) = line.text {
                    m.insert("text".into(), t.into());
                }
                if let Ok(r) = serde_json::from_value(serde_json::Value::Object(m)) {
                    self.results.push(r);
                }
            }
            "error" => {
                self.error = serde_json::from_value(serde_json::Value::Object(line.rest)).ok();
            }
            "number_of_executions" => {
                self.execution_count = line.rest.get("execution_count").and_then(|v| v.as_i64());
            }
            _ => {}
        }
    }
}

impl SandboxConn {
    /// Runs `code` in the sandbox's interpreter (default language python).
    pub async fn run_code(&self, code: &str, language: Option<&str>) -> Result<Execution> {
        let path = "/execute";
        let rb = self
            .port_request(Method::POST, INTERPRETER_PORT, path)
            .json(&ExecuteRequest {
                code,
                language,
                context_id: None,
            });
        let resp = match self.send(rb, INTERPRETER_PORT, path).await {
            Err(Error::SandboxUnreachable { .. }) => {
                return Err(Error::NoInterpreter {
                    sandbox_id: self.id.clone(),
                    port: INTERPRETER_PORT,
                })
            }
            other => other?,
        };
        let url = self.client.url(path);
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(Error::NoInterpreter {
                sandbox_id: self.id.clone(),
                port: INTERPRETER_PORT,
            });
        }
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let message = resp.text().await.unwrap_or_default();
            return Err(Error::Agent {
                code: status.to_string(),
                message,
            });
        }
        let mut exec = Execution::default();
        let mut buf = Vec::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::Http {
                url: url.clone(),
                source: e,
            })?;
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                parse_line(&mut exec, &line, &url)?;
            }
        }
        parse_line(&mut exec, &buf, &url)?;
        Ok(exec)
    }
}

fn parse_line(exec: &mut Execution, line: &[u8], url: &str) -> Result<()> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return Ok(());
    }
    let l: Line = serde_json::from_slice(line).map_err(|e| Error::Protocol {
        url: url.to_string(),
        message: format!("invalid NDJSON line ({e})"),
    })?;
    exec.apply(l);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_lines_fill_an_execution() {
        let mut e = Execution::default();
        for l in [
            r#"{"type":"stdout","text":"hi\n","timestamp":1}"#,
            r#"{"type":"result","text":"2","png":"iVBO","is_main_result":true}"#,
            r#"{"type":"error","name":"ValueError","value":"x","traceback":"tb"}"#,
            r#"{"type":"number_of_executions","execution_count":3}"#,
            r#"{"type":"end_of_execution"}"#,
        ] {
            parse_line(&mut e, l.as_bytes(), "u").unwrap();
        }
        assert_eq!(e.stdout, "hi\n");
        assert_eq!(e.results[0].text.as_deref(), Some("2"));
        assert_eq!(e.results[0].png.as_deref(), Some("iVBO"));
        assert_eq!(e.error.as_ref().unwrap().name, "ValueError");
        assert_eq!(e.execution_count, Some(3));
    }
}
