//! `kiln mcp`: an MCP server (rmcp, stdio or streamable HTTP) whose tools
//! create sandboxes, run commands and code, move files and kill sandboxes.
//!
//! A session keeps a current sandbox: the first tool that needs one creates
//! it (or `create_sandbox` does), later calls reuse it unless they name
//! another `sandbox_id`. Sandboxes a session created are killed when the
//! session ends (stdio: the client disconnects; HTTP: the MCP session is
//! closed or expires), except those created with `keep: true`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use kiln_api::agent::filesystem::FileType;
use kiln_api::rest::NewSandbox;
use kiln_client::{Client, Error as ClientError, SandboxConn, StartOptions};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, ServerHandler, ServiceExt};
use serde::Deserialize;
use tokio::signal::unix::{signal, SignalKind};

use super::connection::ClientArgs;

#[derive(clap::Args, Debug, Clone)]
pub struct McpArgs {
    /// Serve streamable HTTP on this address (path /mcp) instead of stdio.
    /// Loopback only unless you put an authenticating proxy in front.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Template of the sandboxes the tools create when none is named.
    #[arg(long, default_value = "base")]
    pub template: String,
    /// Timeout in seconds of the sandboxes the tools create.
    #[arg(long, default_value_t = 600)]
    pub timeout: i64,
}

const INSTRUCTIONS: &str = "Kiln sandboxes: isolated Linux machines (Debian, user `user`, home /home/user, python3, bash, curl, git) to run untrusted commands and code safely. \
The session has a current sandbox: the first tool that needs one creates it, and later calls reuse it (files and processes persist between calls) unless you pass another sandbox_id. \
Use run_command for shell commands, run_code for Python/JS cells with rich results (needs a code-interpreter template), write_file/read_file/list_files for files, get_port_url to reach a server you started. \
Sandboxes created in this session are killed when the session ends unless created with keep=true.";

/// The sandboxes of one MCP session.
struct Session {
    client: Client,
    template: String,
    timeout: i64,
    current: Mutex<Option<SandboxConn>>,
    /// Created by this session and to be killed at its end.
    owned: Mutex<Vec<String>>,
}

impl Session {
    fn current(&self) -> Option<SandboxConn> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Kills the session's sandboxes (once).
    async fn cleanup(&self) {
        let ids = std::mem::take(&mut *self.owned.lock().unwrap_or_else(|p| p.into_inner()));
        for id in ids {
            if let Err(e) = self.client.kill(&id).await {
                if !e.is_not_found() {
                    tracing::warn!("could not kill sandbox {id} at the end of the session: {e}");
                }
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut *self.owned.lock().unwrap_or_else(|p| p.into_inner()));
        if ids.is_empty() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            handle.spawn(async move {
                for id in ids {
                    let _ = client.kill(&id).await;
                }
            });
        }
    }
}

#[derive(Clone)]
pub struct KilnMcp {
    session: Arc<Session>,
    tool_router: ToolRouter<Self>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CreateSandboxParams {
    /// Template id or alias, e.g. "base" (Debian with python3) or a code-interpreter template. Default: the server's configured template.
    pub template: Option<String>,
    /// Seconds the sandbox lives before it is killed (default 600).
    pub timeout_seconds: Option<i64>,
    /// Keep the sandbox running after this session ends (default false).
    pub keep: Option<bool>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RunCommandParams {
    /// A bash command line, e.g. "ls -la /tmp && python3 -V". Runs with `bash -l -c`.
    pub command: String,
    /// Working directory (default /home/user).
    pub cwd: Option<String>,
    /// Kill the command after this many seconds (default 60).
    pub timeout_seconds: Option<u64>,
    /// Run as this user, e.g. "root" (default "user", who has passwordless sudo).
    pub user: Option<String>,
    /// Sandbox to use (default: this session's current sandbox, created if needed).
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RunCodeParams {
    /// The code to run, like a notebook cell; state persists between calls.
    pub code: String,
    /// "python" (default), "javascript", "typescript", "r", "java" or "bash".
    pub language: Option<String>,
    /// Sandbox to use (default: this session's current sandbox).
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct WriteFileParams {
    /// Absolute path, or relative to /home/user. Parent directories are created.
    pub path: String,
    /// The file's content.
    pub content: String,
    /// "utf8" (default) or "base64" for binary content.
    pub encoding: Option<String>,
    /// Sandbox to use (default: this session's current sandbox).
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ReadFileParams {
    /// Absolute path, or relative to /home/user.
    pub path: String,
    /// Sandbox to use (default: this session's current sandbox).
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ListFilesParams {
    /// Directory to list (default /home/user).
    pub path: Option<String>,
    /// How many levels down to list (default 1).
    pub depth: Option<u32>,
    /// Sandbox to use (default: this session's current sandbox).
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PortUrlParams {
    /// The port a server listens on inside the sandbox (it must listen on 0.0.0.0).
    pub port: u16,
    /// Sandbox to use (default: this session's current sandbox).
    pub sandbox_id: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct KillParams {
    /// Sandbox to kill (default: this session's current sandbox).
    pub sandbox_id: Option<String>,
}

fn text(s: impl Into<String>) -> Result<CallToolResult, ErrorData> {
    Ok(CallToolResult::success(vec![ContentBlock::text(s)]))
}

fn tool_error(s: impl Into<String>) -> Result<CallToolResult, ErrorData> {
    Ok(CallToolResult::error(vec![ContentBlock::text(s)]))
}

/// Turns a client error into the text a model can act on.
fn explain(e: &ClientError) -> String {
    match e {
        ClientError::SandboxUnreachable { sandbox_id, .. } => format!(
            "{e}. The sandbox {sandbox_id} may have timed out or been killed: call create_sandbox for a new one."
        ),
        _ => e.to_string(),
    }
}

/// Most bytes of one stream put into a tool result (the model's context is
/// precious); the rest is summarised.
const MAX_OUTPUT: usize = 64 << 10;

/// Largest file read_file returns.
const MAX_READ: usize = 4 << 20;

fn clip(b: &[u8]) -> String {
    if b.len() <= MAX_OUTPUT {
        return String::from_utf8_lossy(b).into_owned();
    }
    let head = MAX_OUTPUT / 4;
    let tail = MAX_OUTPUT - head;
    format!(
        "{}\n… [{} bytes omitted of {}; redirect the output to a file and read parts of it] …\n{}",
        String::from_utf8_lossy(&b[..head]),
        b.len() - MAX_OUTPUT,
        b.len(),
        String::from_utf8_lossy(&b[b.len() - tail..])
    )
}

fn is_png(b: &[u8]) -> bool {
    b.starts_with(b"\x89PNG\r\n\x1a\n")
}

impl KilnMcp {
    fn new(client: Client, template: String, timeout: i64) -> Self {
        Self {
            session: Arc::new(Session {
                client,
                template,
                timeout,
                current: Mutex::new(None),
                owned: Mutex::new(Vec::new()),
            }),
            tool_router: Self::tool_router(),
        }
    }

    async fn create(
        &self,
        template: Option<String>,
        timeout: Option<i64>,
        keep: bool,
    ) -> Result<SandboxConn, ClientError> {
        let s = &self.session;
        let created = s
            .client
            .create(&NewSandbox {
                template_id: template.unwrap_or_else(|| s.template.clone()),
                timeout: Some(timeout.unwrap_or(s.timeout)),
                ..Default::default()
            })
            .await?;
        let conn = s.client.sandbox_from(&created);
        if !keep {
            s.owned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(created.sandbox_id.clone());
        }
        *s.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// The named sandbox, else the current one, else a new one.
    async fn target(&self, id: Option<String>) -> Result<SandboxConn, String> {
        if let Some(id) = id.filter(|i| !i.is_empty()) {
            if let Some(c) = self.session.current().filter(|c| c.id == id) {
                return Ok(c);
            }
            return self
                .session
                .client
                .sandbox(&id)
                .await
                .map_err(|e| explain(&e));
        }
        if let Some(c) = self.session.current() {
            return Ok(c);
        }
        self.create(None, None, false)
            .await
            .map_err(|e| format!("could not create a sandbox: {}", explain(&e)))
    }
}

#[tool_router]
impl KilnMcp {
    #[tool(
        description = "Create a new sandbox (an isolated Linux machine) and make it this session's current sandbox. Usually unnecessary: other tools create one on first use. Use it to pick a template (e.g. a code-interpreter template for run_code), a longer timeout, or to start fresh. Returns the sandbox id."
    )]
    async fn create_sandbox(
        &self,
        Parameters(p): Parameters<CreateSandboxParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let keep = p.keep.unwrap_or(false);
        match self.create(p.template, p.timeout_seconds, keep).await {
            Ok(c) => text(format!(
                "Created sandbox {} (now the current sandbox{}).",
                c.id,
                if keep {
                    "; it is kept after this session ends — kill it with kill_sandbox when done"
                } else {
                    "; it is killed when this session ends"
                }
            )),
            Err(e) => tool_error(format!("could not create a sandbox: {}", explain(&e))),
        }
    }

    #[tool(
        description = "Run a shell command in the sandbox and wait for it. Returns the exit code, stdout and stderr. Files and installed packages persist between calls. Use for installing packages (pip install, sudo apt-get install), running scripts, git, builds. Not interactive: do not start editors or prompts; start servers in the background (`nohup cmd >log 2>&1 &`)."
    )]
    async fn run_command(
        &self,
        Parameters(p): Parameters<RunCommandParams>,
    ) -> Result<CallToolResult, ErrorData> {
        if p.command.trim().is_empty() {
            return tool_error("command is empty");
        }
        let sbx = match self.target(p.sandbox_id).await {
            Ok(s) => s.with_user(p.user),
            Err(e) => return tool_error(e),
        };
        let opts = StartOptions {
            command: p.command,
            cwd: p.cwd,
            timeout: Some(Duration::from_secs(p.timeout_seconds.unwrap_or(60).max(1))),
            ..Default::default()
        };
        match sbx.run(&opts).await {
            Ok(out) => {
                let mut s = format!("exit code: {}", out.exit.code);
                if out.exit.code >= 128 {
                    s.push_str(&format!(" ({})", out.exit.status));
                }
                if let Some(e) = &out.exit.error {
                    s.push_str(&format!("\nerror: {e}"));
                }
                s.push_str(&format!("\nstdout:\n{}", clip(&out.stdout)));
                if !out.stderr.is_empty() {
                    s.push_str(&format!("\nstderr:\n{}", clip(&out.stderr)));
                }
                text(s)
            }
            Err(e) => tool_error(explain(&e)),
        }
    }

    #[tool(
        description = "Run code in the sandbox's code interpreter (a Jupyter-style kernel: variables and imports persist between calls; the last expression is returned). Returns stdout, stderr, the results (text, and PNG charts as images) and any error with its traceback. Needs a sandbox from a code-interpreter template; for plain scripts use run_command with python3."
    )]
    async fn run_code(
        &self,
        Parameters(p): Parameters<RunCodeParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let sbx = match self.target(p.sandbox_id).await {
            Ok(s) => s,
            Err(e) => return tool_error(e),
        };
        let exec = match sbx.run_code(&p.code, p.language.as_deref()).await {
            Ok(x) => x,
            Err(e @ ClientError::NoInterpreter { .. }) => {
                return tool_error(format!(
                    "{e}. Create one with create_sandbox(template=\"<a code-interpreter template>\"), or run the code with run_command, e.g. python3 -c '...' or by writing a file and running it."
                ))
            }
            Err(e) => return tool_error(explain(&e)),
        };
        let mut parts = Vec::new();
        let mut s = String::new();
        if !exec.stdout.is_empty() {
            s.push_str(&format!("stdout:\n{}\n", exec.stdout));
        }
        if !exec.stderr.is_empty() {
            s.push_str(&format!("stderr:\n{}\n", exec.stderr));
        }
        for r in &exec.results {
            if let Some(t) = &r.text {
                s.push_str(&format!(
                    "{}:\n{t}\n",
                    if r.is_main_result { "result" } else { "output" }
                ));
            }
            if let Some(png) = &r.png {
                parts.push(ContentBlock::image(png.clone(), "image/png"));
            }
            if let Some(jpeg) = &r.jpeg {
                parts.push(ContentBlock::image(jpeg.clone(), "image/jpeg"));
            }
        }
        let failed = exec.error.is_some();
        if let Some(e) = &exec.error {
            s.push_str(&format!(
                "error: {}: {}\n{}\n",
                e.name, e.value, e.traceback
            ));
        }
        if s.is_empty() && parts.is_empty() {
            s.push_str("(no output)");
        }
        parts.insert(0, ContentBlock::text(s));
        Ok(if failed {
            CallToolResult::error(parts)
        } else {
            CallToolResult::success(parts)
        })
    }

    #[tool(
        description = "Write a file in the sandbox (created or overwritten; parent directories are created). Content is UTF-8 text unless encoding is \"base64\"."
    )]
    async fn write_file(
        &self,
        Parameters(p): Parameters<WriteFileParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let data = match p.encoding.as_deref().unwrap_or("utf8") {
            "utf8" | "utf-8" | "text" => p.content.into_bytes(),
            "base64" => match base64::engine::general_purpose::STANDARD.decode(p.content.trim()) {
                Ok(b) => b,
                Err(e) => return tool_error(format!("content is not valid base64: {e}")),
            },
            other => return tool_error(format!("unknown encoding {other:?}: use utf8 or base64")),
        };
        let sbx = match self.target(p.sandbox_id).await {
            Ok(s) => s,
            Err(e) => return tool_error(e),
        };
        let n = data.len();
        match sbx.write_bytes(&p.path, data).await {
            Ok(()) => text(format!("wrote {n} bytes to {}", p.path)),
            Err(e) => tool_error(explain(&e)),
        }
    }

    #[tool(
        description = "Read a file from the sandbox. Text files come back as text; PNG images as images; other binary files as base64."
    )]
    async fn read_file(
        &self,
        Parameters(p): Parameters<ReadFileParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let sbx = match self.target(p.sandbox_id).await {
            Ok(s) => s,
            Err(e) => return tool_error(e),
        };
        match sbx.stat(&p.path).await {
            Ok(e) if e.kind == FileType::Directory => {
                return tool_error(format!("{} is a directory: use list_files", p.path))
            }
            Ok(e) if e.size > MAX_READ as i64 => {
                return tool_error(format!(
                    "{} is {} bytes, more than read_file returns ({MAX_READ}): read parts with run_command (head -c, tail, sed -n, grep)",
                    p.path, e.size
                ))
            }
            Ok(_) => {}
            Err(e) => return tool_error(explain(&e)),
        }
        let data = match sbx.read_bytes(&p.path).await {
            Ok(d) => d,
            Err(e) => return tool_error(explain(&e)),
        };
        if is_png(&data) {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
            return Ok(CallToolResult::success(vec![
                ContentBlock::text(format!("{} ({} bytes, PNG image)", p.path, data.len())),
                ContentBlock::image(b64, "image/png"),
            ]));
        }
        match String::from_utf8(data) {
            Ok(s) => text(s),
            Err(e) => {
                let bytes = e.into_bytes();
                text(format!(
                    "{} is binary ({} bytes); base64:\n{}",
                    p.path,
                    bytes.len(),
                    base64::engine::general_purpose::STANDARD.encode(&bytes)
                ))
            }
        }
    }

    #[tool(
        description = "List a directory in the sandbox: one line per entry with type (d = directory, f = file, l = symlink), size in bytes and path."
    )]
    async fn list_files(
        &self,
        Parameters(p): Parameters<ListFilesParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let sbx = match self.target(p.sandbox_id).await {
            Ok(s) => s,
            Err(e) => return tool_error(e),
        };
        let path = p.path.unwrap_or_else(|| "/home/user".into());
        match sbx.list_dir(&path, p.depth.unwrap_or(1).clamp(1, 10)).await {
            Ok(entries) => {
                let mut s = String::new();
                for e in &entries {
                    let t = if e.is_symlink {
                        'l'
                    } else {
                        match e.kind {
                            FileType::Directory => 'd',
                            FileType::File => 'f',
                            _ => '?',
                        }
                    };
                    s.push_str(&format!("{t} {:>10} {}\n", e.size, e.path));
                }
                if s.is_empty() {
                    s = format!("{path} is empty");
                }
                text(s)
            }
            Err(e) => tool_error(explain(&e)),
        }
    }

    #[tool(
        description = "Get a URL that reaches a TCP port inside the sandbox from outside (for a web server or API you started there; it must listen on 0.0.0.0)."
    )]
    async fn get_port_url(
        &self,
        Parameters(p): Parameters<PortUrlParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let sbx = match self.target(p.sandbox_id).await {
            Ok(s) => s,
            Err(e) => return tool_error(e),
        };
        let base = &sbx.client().config().api_url;
        let mut s = match sbx.host_url(p.port) {
            Some(u) => format!("{u}\n"),
            None => String::new(),
        };
        s.push_str(&format!(
            "or: {base} with headers E2b-Sandbox-Id: {} and E2b-Sandbox-Port: {}",
            sbx.id, p.port
        ));
        text(s)
    }

    #[tool(
        description = "Kill a sandbox now (default: the current one). Its files and processes are gone; the next tool that needs a sandbox creates a new one."
    )]
    async fn kill_sandbox(
        &self,
        Parameters(p): Parameters<KillParams>,
    ) -> Result<CallToolResult, ErrorData> {
        let s = &self.session;
        let id = match p.sandbox_id.filter(|i| !i.is_empty()) {
            Some(id) => id,
            None => match s.current() {
                Some(c) => c.id,
                None => return tool_error("there is no current sandbox to kill"),
            },
        };
        match s.client.kill(&id).await {
            Ok(()) => {
                s.owned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|o| o != &id);
                let mut cur = s.current.lock().unwrap_or_else(|p| p.into_inner());
                if cur.as_ref().is_some_and(|c| c.id == id) {
                    *cur = None;
                }
                text(format!("killed sandbox {id}"))
            }
            Err(e) => tool_error(explain(&e)),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for KilnMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("kiln", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}

pub async fn run(args: McpArgs, client_args: &ClientArgs) -> anyhow::Result<()> {
    let client = client_args.client()?;
    // Serve anyway: the tools answer with the same advice until kilnd is up.
    if let Err(e) = client.health().await {
        eprintln!("kiln mcp: warning: {e}");
    }
    match args.http {
        None => {
            let server = KilnMcp::new(client, args.template.clone(), args.timeout);
            let session = server.session.clone();
            let running = server.serve(rmcp::transport::stdio()).await?;
            // The client closing stdin ends the session; so do SIGTERM and
            // Ctrl-C, which clients send too: clean up in every case.
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            tokio::select! {
                _ = running.waiting() => {}
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            session.cleanup().await;
            Ok(())
        }
        Some(addr) => serve_http(addr, client, args).await,
    }
}

async fn serve_http(addr: SocketAddr, client: Client, args: McpArgs) -> anyhow::Result<()> {
    use rmcp::transport::streamable_http_server::{
        session::local::LocalSessionManager, StreamableHttpServerConfig, StreamableHttpService,
    };
    let ct = tokio_util::sync::CancellationToken::new();
    let template = args.template.clone();
    let timeout = args.timeout;
    let service: StreamableHttpService<KilnMcp, LocalSessionManager> = StreamableHttpService::new(
        move || Ok(KilnMcp::new(client.clone(), template.clone(), timeout)),
        Default::default(),
        StreamableHttpServerConfig::default().with_cancellation_token(ct.child_token()),
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!(
        "kiln mcp: streamable HTTP at http://{}/mcp",
        listener.local_addr()?
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            ct.cancel();
        })
        .await?;
    Ok(())
}
