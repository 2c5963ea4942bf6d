//! The NDJSON lines of `POST /execute`, and how Jupyter messages become them.
//!
//! Each line is one JSON object with a `type`: `stdout`, `stderr`, `result`,
//! `error`, `number_of_executions`, `end_of_execution` or `keepalive` (sent
//! while a cell is silent, so that a client that went away is noticed). The
//! field names are those the `e2b-code-interpreter` SDKs read.

use jupyter_protocol::{JupyterMessage, JupyterMessageContent, ReplyStatus, Stdio};
use serde::Serialize;
use serde_json::{Map, Value};

/// One line of the `/execute` stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Output {
    Stdout {
        text: String,
        /// Unix epoch in nanoseconds, from the kernel's message header.
        timestamp: i64,
    },
    Stderr {
        text: String,
        timestamp: i64,
    },
    Result(Box<ResultData>),
    Error {
        name: String,
        value: String,
        traceback: String,
    },
    NumberOfExecutions {
        execution_count: usize,
    },
    EndOfExecution,
    Keepalive,
}

impl Output {
    /// The line as sent: compact JSON and a newline.
    pub fn to_line(&self) -> String {
        // Serialising these plain structs cannot fail: every key is a string.
        let mut line = serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned());
        line.push('\n');
        line
    }

    pub fn error(name: &str, value: impl Into<String>) -> Self {
        Output::Error {
            name: name.to_owned(),
            value: value.into(),
            traceback: String::new(),
        }
    }
}

/// A display or the cell's value, every MIME type the kernel gave.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResultData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub markdown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub svg: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub png: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jpeg: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdf: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub javascript: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chart: Option<Value>,
    /// MIME types with no field of their own, under their MIME name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra: Option<Map<String, Value>>,
    pub is_main_result: bool,
}

impl ResultData {
    /// Sorts a Jupyter MIME bundle (`{"text/plain": …, "image/png": …}`) into
    /// the SDK's fields. Text values that kernels split into lists of lines are
    /// joined.
    pub fn from_mime_bundle(bundle: Map<String, Value>, is_main_result: bool) -> Self {
        let mut result = ResultData {
            is_main_result,
            ..Default::default()
        };
        let mut extra = Map::new();
        for (mime, value) in bundle {
            let slot = match mime.as_str() {
                "text/plain" => &mut result.text,
                "text/html" => &mut result.html,
                "text/markdown" => &mut result.markdown,
                "image/svg+xml" => &mut result.svg,
                "image/png" => &mut result.png,
                "image/jpeg" => &mut result.jpeg,
                "application/pdf" => &mut result.pdf,
                "text/latex" => &mut result.latex,
                "application/javascript" => &mut result.javascript,
                "application/json" => {
                    result.json = Some(value);
                    continue;
                }
                "e2b/data" => {
                    result.data = Some(value);
                    continue;
                }
                "e2b/chart" => {
                    result.chart = Some(value);
                    continue;
                }
                _ => {
                    extra.insert(mime, value);
                    continue;
                }
            };
            *slot = Some(text_of(value));
        }
        if let Some(text) = result.text.take() {
            result.text = Some(strip_string_quotes(text));
        }
        if !extra.is_empty() {
            result.extra = Some(extra);
        }
        result
    }
}

/// Jupyter allows a text value as a string or as a list of lines.
fn text_of(value: Value) -> String {
    match value {
        Value::String(s) => s,
        Value::Array(lines) => lines
            .into_iter()
            .map(|l| match l {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        other => other.to_string(),
    }
}

/// A string value's repr (`'abc'`) is given as its contents (`abc`), as E2B's
/// own server does: SDK users compare `execution.text` with the plain string.
fn strip_string_quotes(text: String) -> String {
    let quoted = text.len() >= 2
        && ((text.starts_with('\'') && text.ends_with('\''))
            || (text.starts_with('"') && text.ends_with('"')));
    if quoted {
        text[1..text.len() - 1].to_owned()
    } else {
        text
    }
}

/// What one kernel message means for the execution it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A line (or several) for the client.
    Output(Output),
    /// The kernel went idle after this request: all its output has been sent.
    Idle,
    /// The shell reply: `Some` carries the error of a failed or aborted cell.
    Reply(Option<Output>),
    /// Nothing for the client (busy status, comm messages, …).
    Ignore,
}

/// Maps one message from iopub or shell to an [`Event`].
pub fn event_of(message: &JupyterMessage) -> Event {
    // Kernels on old protocol versions (IJavascript) send no date: use ours.
    let timestamp = match message.header.date.timestamp_nanos_opt() {
        Some(ns) if ns > 0 => ns,
        _ => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or_default(),
    };
    match &message.content {
        JupyterMessageContent::StreamContent(stream) => {
            let text = stream.text.clone();
            Event::Output(match stream.name {
                Stdio::Stdout => Output::Stdout { text, timestamp },
                Stdio::Stderr => Output::Stderr { text, timestamp },
            })
        }
        JupyterMessageContent::ExecuteResult(result) => Event::Output(Output::Result(Box::new(
            ResultData::from_mime_bundle(bundle_of(&result.data), true),
        ))),
        JupyterMessageContent::DisplayData(display) => Event::Output(Output::Result(Box::new(
            ResultData::from_mime_bundle(bundle_of(&display.data), false),
        ))),
        JupyterMessageContent::ErrorOutput(error) => Event::Output(Output::Error {
            name: error.ename.clone(),
            value: error.evalue.clone(),
            traceback: error.traceback.join("\n"),
        }),
        JupyterMessageContent::ExecuteInput(input) => Event::Output(Output::NumberOfExecutions {
            execution_count: input.execution_count.0,
        }),
        JupyterMessageContent::Status(status) => {
            if status.execution_state == jupyter_protocol::ExecutionState::Idle {
                Event::Idle
            } else {
                Event::Ignore
            }
        }
        JupyterMessageContent::ExecuteReply(reply) => Event::Reply(match reply.status {
            ReplyStatus::Ok => None,
            ReplyStatus::Error => Some(match &reply.error {
                Some(e) => Output::Error {
                    name: e.ename.clone(),
                    value: e.evalue.clone(),
                    traceback: e.traceback.join("\n"),
                },
                None => Output::error("Error", "the kernel reported an error"),
            }),
            ReplyStatus::Aborted => Some(Output::error(
                "ExecutionAborted",
                "the kernel aborted the execution",
            )),
        }),
        _ => Event::Ignore,
    }
}

/// A `display_data` without Kiln's mark: with IRkernel, a value rather than
/// an explicit display (see [`crate::language::MainResult`]).
pub fn is_unmarked_display(message: &JupyterMessage) -> bool {
    match &message.content {
        JupyterMessageContent::DisplayData(display) => {
            !display.metadata.contains_key(crate::language::DISPLAY_MARK)
        }
        _ => false,
    }
}

fn bundle_of(media: &jupyter_protocol::Media) -> Map<String, Value> {
    match serde_json::to_value(media) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(msg_type: &str, content: Value) -> JupyterMessage {
        JupyterMessage::from_value(json!({
            "header": {
                "msg_id": "m1", "username": "k", "session": "s",
                "date": "2026-01-02T03:04:05.000000006Z",
                "msg_type": msg_type, "version": "5.3"
            },
            "parent_header": {
                "msg_id": "p1", "username": "c", "session": "s",
                "date": "2026-01-02T03:04:05Z",
                "msg_type": "execute_request", "version": "5.3"
            },
            "metadata": {},
            "content": content,
        }))
        .expect("valid message")
    }

    fn line_json(output: &Output) -> Value {
        let line = output.to_line();
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
        serde_json::from_str(&line).expect("valid json")
    }

    #[test]
    fn stdout_carries_text_and_nanosecond_timestamp() {
        let event = event_of(&message(
            "stream",
            json!({"name": "stdout", "text": "hi\n"}),
        ));
        let Event::Output(out) = event else {
            panic!("{event:?}")
        };
        assert_eq!(
            line_json(&out),
            json!({"type": "stdout", "text": "hi\n", "timestamp": 1767323045000000006i64})
        );
    }

    #[test]
    fn stderr_is_its_own_type() {
        let event = event_of(&message("stream", json!({"name": "stderr", "text": "w"})));
        assert!(matches!(event, Event::Output(Output::Stderr { ref text, .. }) if text == "w"));
    }

    #[test]
    fn execute_result_sorts_every_mime_type() {
        let event = event_of(&message(
            "execute_result",
            json!({
                "execution_count": 3,
                "data": {
                    "text/plain": "2",
                    "text/html": "<b>2</b>",
                    "text/markdown": "**2**",
                    "image/svg+xml": "<svg/>",
                    "image/png": "iVBOR",
                    "image/jpeg": "/9j/",
                    "application/pdf": "JVBER",
                    "text/latex": "$2$",
                    "application/json": {"a": 1},
                    "application/javascript": "1+1",
                    "application/x-custom": "z"
                },
                "metadata": {}
            }),
        ));
        let Event::Output(out) = event else {
            panic!("{event:?}")
        };
        assert_eq!(
            line_json(&out),
            json!({
                "type": "result", "is_main_result": true,
                "text": "2", "html": "<b>2</b>", "markdown": "**2**", "svg": "<svg/>",
                "png": "iVBOR", "jpeg": "/9j/", "pdf": "JVBER", "latex": "$2$",
                "json": {"a": 1}, "javascript": "1+1",
                "extra": {"application/x-custom": "z"}
            })
        );
    }

    #[test]
    fn display_data_is_not_the_main_result() {
        let event = event_of(&message(
            "display_data",
            json!({"data": {"image/png": "iVBOR", "text/plain": "<Figure>"}, "metadata": {}}),
        ));
        let Event::Output(Output::Result(r)) = event else {
            panic!("{event:?}")
        };
        assert!(!r.is_main_result);
        assert_eq!(r.png.as_deref(), Some("iVBOR"));
    }

    #[test]
    fn only_displays_without_the_mark_are_values() {
        let value = message(
            "display_data",
            json!({"data": {"text/plain": "[1] 3"}, "metadata": {}}),
        );
        let plot = message(
            "display_data",
            json!({"data": {"image/png": "iVBOR"}, "metadata": {"kiln_display": true}}),
        );
        let result = message(
            "execute_result",
            json!({"execution_count": 1, "data": {"text/plain": "3"}, "metadata": {}}),
        );
        assert!(is_unmarked_display(&value));
        assert!(!is_unmarked_display(&plot));
        assert!(!is_unmarked_display(&result));
    }

    #[test]
    fn string_reprs_lose_their_quotes_but_other_text_does_not() {
        let r = ResultData::from_mime_bundle(
            json!({"text/plain": "'abc'"}).as_object().unwrap().clone(),
            true,
        );
        assert_eq!(r.text.as_deref(), Some("abc"));
        let r = ResultData::from_mime_bundle(
            json!({"text/plain": "'a' + 'b"})
                .as_object()
                .unwrap()
                .clone(),
            true,
        );
        assert_eq!(r.text.as_deref(), Some("'a' + 'b"));
        let r = ResultData::from_mime_bundle(
            json!({"text/plain": "'"}).as_object().unwrap().clone(),
            true,
        );
        assert_eq!(r.text.as_deref(), Some("'"));
    }

    #[test]
    fn error_joins_traceback_lines() {
        let event = event_of(&message(
            "error",
            json!({"ename": "ZeroDivisionError", "evalue": "division by zero",
                   "traceback": ["line 1", "line 2"]}),
        ));
        let Event::Output(out) = event else {
            panic!("{event:?}")
        };
        assert_eq!(
            line_json(&out),
            json!({"type": "error", "name": "ZeroDivisionError",
                   "value": "division by zero", "traceback": "line 1\nline 2"})
        );
    }

    #[test]
    fn execute_input_gives_the_execution_count() {
        let event = event_of(&message(
            "execute_input",
            json!({"code": "1", "execution_count": 7}),
        ));
        let Event::Output(out) = event else {
            panic!("{event:?}")
        };
        assert_eq!(
            line_json(&out),
            json!({"type": "number_of_executions", "execution_count": 7})
        );
    }

    #[test]
    fn idle_status_ends_and_busy_is_ignored() {
        assert_eq!(
            event_of(&message("status", json!({"execution_state": "idle"}))),
            Event::Idle
        );
        assert_eq!(
            event_of(&message("status", json!({"execution_state": "busy"}))),
            Event::Ignore
        );
    }

    #[test]
    fn replies_carry_errors_and_aborts() {
        assert_eq!(
            event_of(&message(
                "execute_reply",
                json!({"status": "ok", "execution_count": 1})
            )),
            Event::Reply(None)
        );
        let Event::Reply(Some(Output::Error { name, .. })) = event_of(&message(
            "execute_reply",
            json!({"status": "aborted", "execution_count": 1}),
        )) else {
            panic!("abort gives an error")
        };
        assert_eq!(name, "ExecutionAborted");
        let Event::Reply(Some(Output::Error {
            name, traceback, ..
        })) = event_of(&message(
            "execute_reply",
            json!({"status": "error", "execution_count": 1, "ename": "E",
                   "evalue": "v", "traceback": ["a", "b"]}),
        ))
        else {
            panic!("error reply gives an error")
        };
        assert_eq!((name.as_str(), traceback.as_str()), ("E", "a\nb"));
    }

    #[test]
    fn fixed_lines_have_their_wire_form() {
        assert_eq!(
            Output::EndOfExecution.to_line(),
            "{\"type\":\"end_of_execution\"}\n"
        );
        assert_eq!(Output::Keepalive.to_line(), "{\"type\":\"keepalive\"}\n");
    }
}
