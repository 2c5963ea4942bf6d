//! The embedded SQLite store (one file in the data directory).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{KeyRecord, Store, StoreError, TemplateUsage};
use crate::limits::TeamLimits;
use crate::sandbox::{SandboxRecord, SandboxState};
use crate::snapshots::SnapshotRecord;

/// Schema changes, applied in order, each once. Append; never edit.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        team_id TEXT NOT NULL,
        name TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    );
    CREATE TABLE sandboxes (
        id TEXT PRIMARY KEY,
        team_id TEXT NOT NULL,
        template_id TEXT NOT NULL,
        alias TEXT,
        state TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        end_at BIGINT NOT NULL,
        killed_at BIGINT,
        vcpus INTEGER NOT NULL,
        memory_mib BIGINT NOT NULL,
        disk_mib BIGINT NOT NULL,
        metadata TEXT NOT NULL,
        env_vars TEXT NOT NULL,
        envd_access_token TEXT NOT NULL,
        traffic_access_token TEXT,
        auto_pause BOOLEAN NOT NULL,
        internet BOOLEAN NOT NULL,
        envd_version TEXT NOT NULL
    );
    CREATE INDEX sandboxes_team_state ON sandboxes (team_id, state);",
    ),
    (
        2,
        "ALTER TABLE sandboxes ADD COLUMN runtime TEXT NOT NULL DEFAULT 'container';
    ALTER TABLE sandboxes ADD COLUMN pause_mode TEXT;
    ALTER TABLE sandboxes ADD COLUMN end_reason TEXT;
    ALTER TABLE sandboxes ADD COLUMN allow_out TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE sandboxes ADD COLUMN deny_out TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE sandboxes ADD COLUMN auto_pause_memory BOOLEAN NOT NULL DEFAULT TRUE;
    ALTER TABLE sandboxes ADD COLUMN auto_resume BOOLEAN NOT NULL DEFAULT FALSE;",
    ),
    (
        3,
        "CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        team_id TEXT NOT NULL,
        name TEXT,
        source_sandbox_id TEXT NOT NULL,
        runtime TEXT NOT NULL,
        template_id TEXT NOT NULL,
        mode TEXT NOT NULL,
        vcpus INTEGER NOT NULL,
        memory_mib BIGINT NOT NULL,
        disk_mib BIGINT NOT NULL,
        build_id TEXT NOT NULL,
        state TEXT NOT NULL,
        size_bytes BIGINT NOT NULL,
        content_hash TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        internal BOOLEAN NOT NULL
    );
    CREATE INDEX snapshots_team ON snapshots (team_id, created_at);
    CREATE UNIQUE INDEX snapshots_team_name ON snapshots (team_id, name);",
    ),
    (
        4,
        "CREATE TABLE team_limits (
        team_id TEXT PRIMARY KEY,
        sandboxes BIGINT,
        vcpus BIGINT,
        memory_mib BIGINT,
        disk_mib BIGINT
    );",
    ),
    (5, "ALTER TABLE snapshots ADD COLUMN agent_token TEXT;"),
];

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

fn db(context: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Db { context, source }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(v).ok_or_else(|| StoreError::Corrupt(format!("timestamp {v}")))
}

/// Creates `path` as an empty 0600 file if missing; makes it 0600 if not.
fn private_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |source| StoreError::Private {
        path: path.display().to_string(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    let mode = f.metadata().map_err(err)?.permissions().mode();
    if mode & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(err)?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) `<dir>/kiln.db` and applies pending migrations.
    pub fn open_in(dir: &Path) -> Result<Self, StoreError> {
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)
            .map_err(|source| StoreError::Dir {
                path: dir.display().to_string(),
                source,
            })?;
        // The store holds every key's hash and every sandbox's access token:
        // only its owner may read it. SQLite gives the WAL and shared-memory
        // files the database file's mode, so the database is made 0600 before
        // SQLite opens it (and tightened if an older Kiln left it readable).
        let path = dir.join("kiln.db");
        private_file(&path)?;
        for side in ["kiln.db-wal", "kiln.db-shm", "kiln.db-journal"] {
            let p = dir.join(side);
            if p.exists() {
                private_file(&p)?;
            }
        }
        let conn = Connection::open(&path).map_err(db("opening kiln.db"))?;
        // WAL lets `kiln keys` write while kilnd reads; NORMAL sync is safe with WAL.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db("setting journal mode"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db("setting synchronous"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db("setting busy timeout"))?;
        Self::with_connection(conn)
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::with_connection(Connection::open_in_memory().map_err(db("opening memory db"))?)
    }

    fn with_connection(mut conn: Connection) -> Result<Self, StoreError> {
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)",
            [],
        )
        .map_err(db("creating schema_migrations"))?;
        for (version, sql) in MIGRATIONS {
            let tx = conn.transaction().map_err(db("starting migration"))?;
            let done: Option<i64> = tx
                .query_row(
                    "SELECT version FROM schema_migrations WHERE version = ?1",
                    [version],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db("reading schema_migrations"))?;
            if done.is_none() {
                tx.execute_batch(sql).map_err(db("applying a migration"))?;
                tx.execute(
                    "INSERT INTO schema_migrations (version) VALUES (?1)",
                    [version],
                )
                .map_err(db("recording a migration"))?;
            }
            tx.commit().map_err(db("committing a migration"))?;
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection, on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&lock(&conn)))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(|e| e.into_inner())
}

fn key_from_row(r: &Row<'_>) -> rusqlite::Result<(KeyRecord, i64, Option<i64>)> {
    Ok((
        KeyRecord {
            id: r.get(0)?,
            team_id: r.get(1)?,
            name: r.get(2)?,
            hash: r.get(3)?,
            prefix: r.get(4)?,
            created_at: DateTime::UNIX_EPOCH,
            revoked_at: None,
        },
        r.get(5)?,
        r.get(6)?,
    ))
}

fn finish_key(
    (mut k, created, revoked): (KeyRecord, i64, Option<i64>),
) -> Result<KeyRecord, StoreError> {
    k.created_at = from_ms(created)?;
    k.revoked_at = revoked.map(from_ms).transpose()?;
    Ok(k)
}

const KEY_COLUMNS: &str = "id, team_id, name, hash, prefix, created_at, revoked_at";
const SANDBOX_COLUMNS: &str = "id, team_id, template_id, alias, state, started_at, end_at, \
    killed_at, vcpus, memory_mib, disk_mib, metadata, env_vars, envd_access_token, \
    traffic_access_token, auto_pause, internet, envd_version, runtime, pause_mode, end_reason, \
    allow_out, deny_out, auto_pause_memory, auto_resume";

/// The raw columns of a sandbox row, converted outside rusqlite's closure so
/// conversion errors keep their meaning.
struct RawSandbox {
    id: String,
    team_id: String,
    template_id: String,
    alias: Option<String>,
    state: String,
    started_at: i64,
    end_at: i64,
    killed_at: Option<i64>,
    vcpus: u32,
    memory_mib: i64,
    disk_mib: i64,
    metadata: String,
    env_vars: String,
    envd_access_token: String,
    traffic_access_token: Option<String>,
    auto_pause: bool,
    internet: bool,
    envd_version: String,
    runtime: String,
    pause_mode: Option<String>,
    end_reason: Option<String>,
    allow_out: String,
    deny_out: String,
    auto_pause_memory: bool,
    auto_resume: bool,
}

fn raw_sandbox(r: &Row<'_>) -> rusqlite::Result<RawSandbox> {
    Ok(RawSandbox {
        id: r.get(0)?,
        team_id: r.get(1)?,
        template_id: r.get(2)?,
        alias: r.get(3)?,
        state: r.get(4)?,
        started_at: r.get(5)?,
        end_at: r.get(6)?,
        killed_at: r.get(7)?,
        vcpus: r.get(8)?,
        memory_mib: r.get(9)?,
        disk_mib: r.get(10)?,
        metadata: r.get(11)?,
        env_vars: r.get(12)?,
        envd_access_token: r.get(13)?,
        traffic_access_token: r.get(14)?,
        auto_pause: r.get(15)?,
        internet: r.get(16)?,
        envd_version: r.get(17)?,
        runtime: r.get(18)?,
        pause_mode: r.get(19)?,
        end_reason: r.get(20)?,
        allow_out: r.get(21)?,
        deny_out: r.get(22)?,
        auto_pause_memory: r.get(23)?,
        auto_resume: r.get(24)?,
    })
}

impl TryFrom<RawSandbox> for SandboxRecord {
    type Error = StoreError;
    fn try_from(r: RawSandbox) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("{what} of sandbox {}", r.id));
        Ok(SandboxRecord {
            state: r.state.parse().map_err(|_| corrupt("state"))?,
            started_at: from_ms(r.started_at)?,
            end_at: from_ms(r.end_at)?,
            killed_at: r.killed_at.map(from_ms).transpose()?,
            memory_mib: u64::try_from(r.memory_mib).map_err(|_| corrupt("memory"))?,
            disk_mib: u64::try_from(r.disk_mib).map_err(|_| corrupt("disk"))?,
            metadata: serde_json::from_str(&r.metadata).map_err(|_| corrupt("metadata"))?,
            env_vars: serde_json::from_str(&r.env_vars).map_err(|_| corrupt("env vars"))?,
            runtime: r.runtime.parse().map_err(|_| corrupt("runtime"))?,
            pause_mode: r
                .pause_mode
                .map(|m| m.parse())
                .transpose()
                .map_err(|_| corrupt("pause mode"))?,
            allow_out: serde_json::from_str(&r.allow_out).map_err(|_| corrupt("allowOut"))?,
            deny_out: serde_json::from_str(&r.deny_out).map_err(|_| corrupt("denyOut"))?,
            end_reason: r.end_reason,
            auto_pause_memory: r.auto_pause_memory,
            auto_resume: r.auto_resume,
            id: r.id,
            team_id: r.team_id,
            template_id: r.template_id,
            alias: r.alias,
            vcpus: r.vcpus,
            envd_access_token: r.envd_access_token,
            traffic_access_token: r.traffic_access_token,
            auto_pause: r.auto_pause,
            internet: r.internet,
            envd_version: r.envd_version,
        })
    }
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("maps and lists of strings serialize")
}

const SNAPSHOT_COLUMNS: &str = "id, team_id, name, source_sandbox_id, runtime, template_id, \
    mode, vcpus, memory_mib, disk_mib, build_id, state, size_bytes, content_hash, created_at, \
    internal, agent_token";

type RawSnapshot = (
    (
        String,
        String,
        Option<String>,
        String,
        String,
        String,
        String,
    ),
    (u32, i64, i64, String, String, i64, String, i64, bool),
    Option<String>,
);

fn raw_snapshot(r: &Row<'_>) -> rusqlite::Result<RawSnapshot> {
    Ok((
        (
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ),
        (
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
            r.get(10)?,
            r.get(11)?,
            r.get(12)?,
            r.get(13)?,
            r.get(14)?,
            r.get(15)?,
        ),
        r.get(16)?,
    ))
}

fn snapshot_from_raw(raw: RawSnapshot) -> Result<SnapshotRecord, StoreError> {
    let (
        (id, team_id, name, source_sandbox_id, runtime, template_id, mode),
        (vcpus, memory_mib, disk_mib, build_id, state, size, content_hash, created_at, internal),
        agent_token,
    ) = raw;
    let corrupt = |what: &str| StoreError::Corrupt(format!("{what} of snapshot {id}"));
    Ok(SnapshotRecord {
        runtime: runtime.parse().map_err(|_| corrupt("runtime"))?,
        mode: mode.parse().map_err(|_| corrupt("mode"))?,
        memory_mib: u64::try_from(memory_mib).map_err(|_| corrupt("memory"))?,
        disk_mib: u64::try_from(disk_mib).map_err(|_| corrupt("disk"))?,
        state: state.parse().map_err(|_| corrupt("state"))?,
        size_bytes: u64::try_from(size).map_err(|_| corrupt("size"))?,
        created_at: from_ms(created_at)?,
        id,
        team_id,
        name,
        source_sandbox_id,
        template_id,
        vcpus,
        build_id,
        content_hash,
        internal,
        agent_token,
    })
}

fn insert_sandbox_row(conn: &Connection, s: &SandboxRecord) -> Result<(), StoreError> {
    conn.execute(
        &format!(
            "INSERT INTO sandboxes ({SANDBOX_COLUMNS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
                      ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)"
        ),
        params![
            s.id,
            s.team_id,
            s.template_id,
            s.alias,
            s.state.as_str(),
            ms(s.started_at),
            ms(s.end_at),
            s.killed_at.map(ms),
            s.vcpus,
            s.memory_mib as i64,
            s.disk_mib as i64,
            to_json(&s.metadata),
            to_json(&s.env_vars),
            s.envd_access_token,
            s.traffic_access_token,
            s.auto_pause,
            s.internet,
            s.envd_version,
            s.runtime.as_str(),
            s.pause_mode.map(|m| m.as_str()),
            s.end_reason,
            to_json(&s.allow_out),
            to_json(&s.deny_out),
            s.auto_pause_memory,
            s.auto_resume,
        ],
    )
    .map_err(db("inserting a sandbox"))?;
    Ok(())
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn insert_key(&self, k: &KeyRecord) -> Result<(), StoreError> {
        let k = k.clone();
        self.run(move |conn| {
            conn.execute(
                &format!(
                    "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ),
                params![
                    k.id,
                    k.team_id,
                    k.name,
                    k.hash,
                    k.prefix,
                    ms(k.created_at),
                    k.revoked_at.map(ms)
                ],
            )
            .map_err(db("inserting an API key"))?;
            Ok(())
        })
        .await
    }

    async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        let hash = hash.to_owned();
        self.run(move |conn| {
            let raw = conn
                .query_row(
                    &format!(
                        "SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?1 AND revoked_at IS NULL"
                    ),
                    [hash],
                    key_from_row,
                )
                .optional()
                .map_err(db("looking up an API key"))?;
            raw.map(finish_key).transpose()
        })
        .await
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.run(|conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
                ))
                .map_err(db("listing API keys"))?;
            let rows = stmt
                .query_map([], key_from_row)
                .map_err(db("listing API keys"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db("listing API keys"))?;
            rows.into_iter().map(finish_key).collect()
        })
        .await
    }

    async fn revoke_key(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            let n = conn
                .execute(
                    "UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
                    params![ms(at), id],
                )
                .map_err(db("revoking an API key"))?;
            Ok(n > 0)
        })
        .await
    }

    async fn insert_sandbox(&self, s: &SandboxRecord) -> Result<(), StoreError> {
        let s = s.clone();
        self.run(move |conn| insert_sandbox_row(conn, &s)).await
    }

    async fn update_sandbox(&self, s: &SandboxRecord) -> Result<(), StoreError> {
        let s = s.clone();
        self.run(move |conn| {
            conn.execute(
                "UPDATE sandboxes SET state = ?1, end_at = ?2, killed_at = ?3, auto_pause = ?4, \
                 internet = ?5, allow_out = ?6, deny_out = ?7, pause_mode = ?8, end_reason = ?9, \
                 auto_pause_memory = ?10, auto_resume = ?11 WHERE id = ?12",
                params![
                    s.state.as_str(),
                    ms(s.end_at),
                    s.killed_at.map(ms),
                    s.auto_pause,
                    s.internet,
                    to_json(&s.allow_out),
                    to_json(&s.deny_out),
                    s.pause_mode.map(|m| m.as_str()),
                    s.end_reason,
                    s.auto_pause_memory,
                    s.auto_resume,
                    s.id
                ],
            )
            .map_err(db("updating a sandbox"))?;
            Ok(())
        })
        .await
    }

    async fn reassign_sandbox(&self, s: &SandboxRecord) -> Result<(), StoreError> {
        let s = s.clone();
        self.run(move |conn| {
            let tx = conn
                .unchecked_transaction()
                .map_err(db("reassigning a sandbox"))?;
            tx.execute("DELETE FROM sandboxes WHERE id = ?1", [&s.id])
                .map_err(db("reassigning a sandbox"))?;
            insert_sandbox_row(&tx, &s)?;
            tx.commit().map_err(db("reassigning a sandbox"))
        })
        .await
    }

    async fn get_sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            let raw = conn
                .query_row(
                    &format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = ?1"),
                    [id],
                    raw_sandbox,
                )
                .optional()
                .map_err(db("reading a sandbox"))?;
            raw.map(SandboxRecord::try_from).transpose()
        })
        .await
    }

    async fn list_sandboxes(
        &self,
        team_id: Option<&str>,
        states: &[SandboxState],
    ) -> Result<Vec<SandboxRecord>, StoreError> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        // Placeholders ?2.. for the states; ?1 is the team (NULL = any team).
        let placeholders: Vec<String> = (0..states.len()).map(|i| format!("?{}", i + 2)).collect();
        let sql = format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes \
             WHERE (?1 IS NULL OR team_id = ?1) AND state IN ({}) \
             ORDER BY started_at, id",
            placeholders.join(", ")
        );
        let mut values: Vec<Option<String>> = vec![team_id.map(str::to_owned)];
        values.extend(states.iter().map(|s| Some(s.as_str().to_owned())));
        self.run(move |conn| {
            let mut stmt = conn.prepare(&sql).map_err(db("listing sandboxes"))?;
            let raws = stmt
                .query_map(rusqlite::params_from_iter(values.iter()), raw_sandbox)
                .map_err(db("listing sandboxes"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db("listing sandboxes"))?;
            raws.into_iter().map(SandboxRecord::try_from).collect()
        })
        .await
    }

    async fn template_usage(&self, team_id: &str) -> Result<Vec<TemplateUsage>, StoreError> {
        let team_id = team_id.to_owned();
        self.run(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT template_id, COUNT(*), MAX(started_at) FROM sandboxes \
                     WHERE team_id = ?1 GROUP BY template_id ORDER BY template_id",
                )
                .map_err(db("counting template use"))?;
            let rows = stmt
                .query_map([team_id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(db("counting template use"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db("counting template use"))?;
            rows.into_iter()
                .map(|(template_id, n, last)| {
                    Ok(TemplateUsage {
                        template_id,
                        spawn_count: u64::try_from(n).unwrap_or_default(),
                        last_spawned_at: from_ms(last)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<(), StoreError> {
        let s = s.clone();
        self.run(move |conn| {
            conn.execute(
                &format!(
                    "INSERT INTO snapshots ({SNAPSHOT_COLUMNS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
                ),
                params![
                    s.id,
                    s.team_id,
                    s.name,
                    s.source_sandbox_id,
                    s.runtime.as_str(),
                    s.template_id,
                    s.mode.as_str(),
                    s.vcpus,
                    s.memory_mib as i64,
                    s.disk_mib as i64,
                    s.build_id,
                    s.state.as_str(),
                    s.size_bytes as i64,
                    s.content_hash,
                    ms(s.created_at),
                    s.internal,
                    s.agent_token,
                ],
            )
            .map_err(db("inserting a snapshot"))?;
            Ok(())
        })
        .await
    }

    async fn update_snapshot(&self, s: &SnapshotRecord) -> Result<(), StoreError> {
        let s = s.clone();
        self.run(move |conn| {
            conn.execute(
                "UPDATE snapshots SET mode = ?1, build_id = ?2, state = ?3, size_bytes = ?4, \
                 content_hash = ?5, created_at = ?6, agent_token = ?7 WHERE id = ?8",
                params![
                    s.mode.as_str(),
                    s.build_id,
                    s.state.as_str(),
                    s.size_bytes as i64,
                    s.content_hash,
                    ms(s.created_at),
                    s.agent_token,
                    s.id
                ],
            )
            .map_err(db("updating a snapshot"))?;
            Ok(())
        })
        .await
    }

    async fn get_snapshot(&self, id: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            let raw = conn
                .query_row(
                    &format!("SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id = ?1"),
                    [id],
                    raw_snapshot,
                )
                .optional()
                .map_err(db("reading a snapshot"))?;
            raw.map(snapshot_from_raw).transpose()
        })
        .await
    }

    async fn list_snapshots(
        &self,
        team_id: Option<&str>,
    ) -> Result<Vec<SnapshotRecord>, StoreError> {
        let team = team_id.map(str::to_owned);
        self.run(move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE (?1 IS NULL OR team_id = ?1) \
                     ORDER BY created_at, id"
                ))
                .map_err(db("listing snapshots"))?;
            let raws = stmt
                .query_map([team], raw_snapshot)
                .map_err(db("listing snapshots"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db("listing snapshots"))?;
            raws.into_iter().map(snapshot_from_raw).collect()
        })
        .await
    }

    async fn delete_snapshot(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            let n = conn
                .execute("DELETE FROM snapshots WHERE id = ?1", [id])
                .map_err(db("deleting a snapshot"))?;
            Ok(n > 0)
        })
        .await
    }

    async fn team_limits(&self, team_id: &str) -> Result<Option<TeamLimits>, StoreError> {
        let team_id = team_id.to_owned();
        self.run(move |conn| {
            conn.query_row(
                "SELECT team_id, sandboxes, vcpus, memory_mib, disk_mib FROM team_limits WHERE team_id = ?1",
                [team_id],
                limits_row,
            )
            .optional()
            .map_err(db("reading a team's limits"))
            .map(|r| r.map(|(_, l)| l))
        })
        .await
    }

    async fn set_team_limits(&self, team_id: &str, l: &TeamLimits) -> Result<(), StoreError> {
        let (team_id, l) = (team_id.to_owned(), *l);
        let n = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        self.run(move |conn| {
            if l.is_empty() {
                conn.execute("DELETE FROM team_limits WHERE team_id = ?1", [team_id])
            } else {
                conn.execute(
                    "INSERT INTO team_limits (team_id, sandboxes, vcpus, memory_mib, disk_mib)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (team_id) DO UPDATE SET sandboxes = ?2, vcpus = ?3,
                     memory_mib = ?4, disk_mib = ?5",
                    params![
                        team_id,
                        n(l.sandboxes),
                        n(l.vcpus),
                        n(l.memory_mib),
                        n(l.disk_mib)
                    ],
                )
            }
            .map_err(db("setting a team's limits"))?;
            Ok(())
        })
        .await
    }

    async fn list_team_limits(&self) -> Result<Vec<(String, TeamLimits)>, StoreError> {
        self.run(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT team_id, sandboxes, vcpus, memory_mib, disk_mib FROM team_limits ORDER BY team_id",
                )
                .map_err(db("listing teams' limits"))?;
            let rows = stmt
                .query_map([], limits_row)
                .map_err(db("listing teams' limits"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db("listing teams' limits"))?;
            Ok(rows)
        })
        .await
    }
}

fn limits_row(r: &Row<'_>) -> rusqlite::Result<(String, TeamLimits)> {
    let n = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
    };
    Ok((
        r.get(0)?,
        TeamLimits {
            sandboxes: n(1)?,
            vcpus: n(2)?,
            memory_mib: n(3)?,
            disk_mib: n(4)?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn record(id: &str, team: &str, started_ms: i64) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            team_id: team.into(),
            template_id: "base".into(),
            alias: Some("base".into()),
            state: SandboxState::Running,
            started_at: from_ms(started_ms).unwrap(),
            end_at: from_ms(started_ms + 300_000).unwrap(),
            killed_at: None,
            vcpus: 2,
            memory_mib: 1024,
            disk_mib: 4096,
            metadata: BTreeMap::from([("k".to_string(), "v".to_string())]),
            env_vars: BTreeMap::new(),
            envd_access_token: "tok".into(),
            traffic_access_token: None,
            auto_pause: false,
            auto_pause_memory: true,
            auto_resume: false,
            internet: true,
            allow_out: vec!["10.0.0.0/8".into()],
            deny_out: Vec::new(),
            envd_version: "0.5.7".into(),
            runtime: kiln_runtime::RuntimeKind::Gvisor,
            pause_mode: None,
            end_reason: None,
        }
    }

    #[tokio::test]
    async fn team_limits_round_trip_and_reset() {
        let s = SqliteStore::in_memory().unwrap();
        assert_eq!(s.team_limits("t1").await.unwrap(), None);
        let l = TeamLimits {
            sandboxes: Some(3),
            memory_mib: Some(2048),
            ..Default::default()
        };
        s.set_team_limits("t1", &l).await.unwrap();
        s.set_team_limits("t1", &l).await.unwrap();
        assert_eq!(s.team_limits("t1").await.unwrap(), Some(l));
        assert_eq!(
            s.list_team_limits().await.unwrap(),
            vec![("t1".to_string(), l)]
        );
        s.set_team_limits("t1", &TeamLimits::default())
            .await
            .unwrap();
        assert_eq!(s.team_limits("t1").await.unwrap(), None);
    }

    #[tokio::test]
    async fn sandboxes_round_trip_and_filter_by_team_and_state() {
        let s = SqliteStore::in_memory().unwrap();
        s.insert_sandbox(&record("b", "t1", 2)).await.unwrap();
        s.insert_sandbox(&record("a", "t1", 1)).await.unwrap();
        s.insert_sandbox(&record("c", "t2", 1)).await.unwrap();
        let mut killed = record("d", "t1", 3);
        killed.state = SandboxState::Killed;
        s.insert_sandbox(&killed).await.unwrap();

        assert_eq!(
            s.get_sandbox("a").await.unwrap().unwrap(),
            record("a", "t1", 1)
        );
        let ids = |v: Vec<SandboxRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
        let live = [SandboxState::Running, SandboxState::Paused];
        assert_eq!(
            ids(s.list_sandboxes(Some("t1"), &live).await.unwrap()),
            ["a", "b"]
        );
        assert_eq!(
            ids(s.list_sandboxes(None, &live).await.unwrap()),
            ["a", "c", "b"]
        );
        assert_eq!(
            ids(s
                .list_sandboxes(None, &[SandboxState::Killed])
                .await
                .unwrap()),
            ["d"]
        );

        let usage = s.template_usage("t1").await.unwrap();
        assert_eq!(
            usage,
            [TemplateUsage {
                template_id: "base".into(),
                spawn_count: 3,
                last_spawned_at: from_ms(3).unwrap(),
            }],
            "killed sandboxes count too"
        );
        assert!(s.template_usage("nobody").await.unwrap().is_empty());

        let mut a = s.get_sandbox("a").await.unwrap().unwrap();
        a.state = SandboxState::Paused;
        a.end_at = from_ms(99_000).unwrap();
        a.pause_mode = Some(kiln_runtime::StateMode::Filesystem);
        a.end_reason = Some("why".into());
        a.internet = false;
        a.deny_out = vec!["192.0.2.1".into()];
        s.update_sandbox(&a).await.unwrap();
        assert_eq!(s.get_sandbox("a").await.unwrap().unwrap(), a);
    }

    #[tokio::test]
    async fn keys_are_found_by_hash_until_revoked() {
        let s = SqliteStore::in_memory().unwrap();
        let k = KeyRecord {
            id: "k1".into(),
            team_id: "default".into(),
            name: "first".into(),
            hash: "h".into(),
            prefix: "e2b_12".into(),
            created_at: from_ms(5).unwrap(),
            revoked_at: None,
        };
        s.insert_key(&k).await.unwrap();
        assert_eq!(s.key_by_hash("h").await.unwrap(), Some(k.clone()));
        assert!(s.revoke_key("k1", from_ms(6).unwrap()).await.unwrap());
        assert!(!s.revoke_key("k1", from_ms(7).unwrap()).await.unwrap());
        assert_eq!(s.key_by_hash("h").await.unwrap(), None);
        assert_eq!(
            s.list_keys().await.unwrap()[0].revoked_at,
            Some(from_ms(6).unwrap())
        );
    }

    #[tokio::test]
    async fn snapshots_round_trip_and_names_are_unique_per_team() {
        use crate::snapshots::SnapshotState;
        let s = SqliteStore::in_memory().unwrap();
        let snap = |id: &str, team: &str, name: Option<&str>| SnapshotRecord {
            id: id.into(),
            team_id: team.into(),
            name: name.map(str::to_owned),
            source_sandbox_id: "sb".into(),
            runtime: kiln_runtime::RuntimeKind::Container,
            template_id: "base".into(),
            mode: kiln_runtime::StateMode::Filesystem,
            vcpus: 2,
            memory_mib: 512,
            disk_mib: 1024,
            build_id: format!("b-{id}"),
            state: SnapshotState::Creating,
            size_bytes: 0,
            content_hash: String::new(),
            created_at: from_ms(10).unwrap(),
            internal: false,
            agent_token: (id == "a").then(|| "tok".to_owned()),
        };
        s.insert_snapshot(&snap("a", "t1", Some("n")))
            .await
            .unwrap();
        s.insert_snapshot(&snap("b", "t2", Some("n")))
            .await
            .unwrap();
        s.insert_snapshot(&snap("c", "t1", None)).await.unwrap();
        s.insert_snapshot(&snap("d", "t1", None)).await.unwrap();
        assert!(s
            .insert_snapshot(&snap("e", "t1", Some("n")))
            .await
            .is_err());
        let mut a = s.get_snapshot("a").await.unwrap().unwrap();
        assert_eq!(a, snap("a", "t1", Some("n")));
        a.state = SnapshotState::Ready;
        a.size_bytes = 77;
        a.content_hash = "h".into();
        a.build_id = "b2".into();
        a.agent_token = Some("tok2".into());
        s.update_snapshot(&a).await.unwrap();
        assert_eq!(s.get_snapshot("a").await.unwrap().unwrap(), a);
        let ids: Vec<_> = s
            .list_snapshots(Some("t1"))
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["a", "c", "d"]);
        assert!(s.delete_snapshot("a").await.unwrap());
        assert!(!s.delete_snapshot("a").await.unwrap());
        assert_eq!(s.list_snapshots(None).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn migrations_apply_once_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        SqliteStore::open_in(dir.path())
            .unwrap()
            .insert_sandbox(&record("a", "t", 1))
            .await
            .unwrap();
        let again = SqliteStore::open_in(dir.path()).unwrap();
        assert!(again.get_sandbox("a").await.unwrap().is_some());
    }
}
