//! Admission: what a team may hold at once, and what the host can honour.
//!
//! A sandbox holds what its limits say, not what it uses at the moment:
//! its vCPUs and memory while it runs (memory also while paused with it),
//! its disk while it exists, and one of its team's concurrent sandboxes
//! while it runs. A new sandbox (or a resume) is admitted only if its
//! team's holdings plus its own stay within the team's [`Limits`] (the
//! store's per-team values, else the defaults) and everyone's holdings plus
//! its own within the host's capacity (the host's CPUs, memory and data
//! file system, each times an overcommit factor: limits are ceilings, not
//! what sandboxes use). Otherwise [`CoreError::LimitExceeded`], which kilnd
//! answers as 429 naming the limit.
//!
//! Warm sandboxes (of the pool, no team's) hold host room like any other
//! and count for a team once handed over. Admissions in flight are counted
//! too (a reservation from the check until the sandbox is in the live map,
//! or its create failed), so concurrent creates cannot all pass one check.

use std::sync::Arc;

use kiln_runtime::StateMode;
use serde::{Deserialize, Serialize};

use crate::error::CoreError;
use crate::lifecycle::lock;
use crate::sandbox::{SandboxRecord, SandboxState};

/// Amounts of each limited resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Amounts {
    /// Concurrent (running or starting) sandboxes.
    pub sandboxes: u64,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_mib: u64,
}

impl Amounts {
    fn add(&mut self, o: &Amounts) {
        self.sandboxes += o.sandboxes;
        self.vcpus += o.vcpus;
        self.memory_mib += o.memory_mib;
        self.disk_mib += o.disk_mib;
    }

    /// What a sandbox record holds in its current state.
    pub fn held_by(r: &SandboxRecord) -> Amounts {
        match r.state {
            SandboxState::Creating | SandboxState::Running => Amounts::of(r),
            SandboxState::Paused => Amounts {
                sandboxes: 0,
                vcpus: 0,
                memory_mib: if r.pause_mode == Some(StateMode::Memory) {
                    r.memory_mib
                } else {
                    0
                },
                disk_mib: r.disk_mib,
            },
            SandboxState::Killed => Amounts::default(),
        }
    }

    /// What a running sandbox of this record's size holds.
    pub fn of(r: &SandboxRecord) -> Amounts {
        Amounts::sized(r.vcpus, r.memory_mib, r.disk_mib)
    }

    pub fn sized(vcpus: u32, memory_mib: u64, disk_mib: u64) -> Amounts {
        Amounts {
            sandboxes: 1,
            vcpus: u64::from(vcpus),
            memory_mib,
            disk_mib,
        }
    }
}

/// A team's limits as set for it (`kiln teams set`); `None`: the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TeamLimits {
    pub sandboxes: Option<u64>,
    pub vcpus: Option<u64>,
    pub memory_mib: Option<u64>,
    pub disk_mib: Option<u64>,
}

impl TeamLimits {
    pub fn is_empty(&self) -> bool {
        *self == TeamLimits::default()
    }

    /// These values over `default`.
    pub fn over(&self, default: &Amounts) -> Amounts {
        Amounts {
            sandboxes: self.sandboxes.unwrap_or(default.sandboxes),
            vcpus: self.vcpus.unwrap_or(default.vcpus),
            memory_mib: self.memory_mib.unwrap_or(default.memory_mib),
            disk_mib: self.disk_mib.unwrap_or(default.disk_mib),
        }
    }
}

/// The core's admission settings (filled by kilnd from its config and the
/// host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// A team's limits unless the store has its own.
    pub team_default: Amounts,
    /// What the host can honour (its resources times the overcommit
    /// factors); `sandboxes` is not limited at the host level.
    pub host: Amounts,
    /// How `host` was sized, for messages: (CPUs, memory MiB, disk MiB of
    /// the data file system) and the factors as text.
    pub host_note: String,
}

impl Default for AdmissionConfig {
    /// No limits (tests of the core that are not about admission).
    fn default() -> Self {
        let all = Amounts {
            sandboxes: u64::MAX,
            vcpus: u64::MAX,
            memory_mib: u64::MAX,
            disk_mib: u64::MAX,
        };
        Self {
            team_default: all,
            host: all,
            host_note: String::new(),
        }
    }
}

/// Admissions between their check and their sandbox's entry in the live map.
#[derive(Default)]
pub(crate) struct Pending {
    next: u64,
    held: Vec<(u64, Option<String>, Amounts)>,
}

/// A pending admission; dropping it releases the reservation.
pub(crate) struct Reservation {
    pending: Arc<std::sync::Mutex<Pending>>,
    id: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        lock(&self.pending).held.retain(|(i, _, _)| *i != self.id);
    }
}

/// Which limit a new holding would pass, as a message; `None` if none.
fn over(
    what: &str,
    limits: &Amounts,
    held: &Amounts,
    want: &Amounts,
    hint: &str,
) -> Option<String> {
    let checks: [(&str, u64, u64, u64, &str); 4] = [
        (
            "concurrent sandboxes",
            limits.sandboxes,
            held.sandboxes,
            want.sandboxes,
            "",
        ),
        ("vCPUs", limits.vcpus, held.vcpus, want.vcpus, ""),
        (
            "memory",
            limits.memory_mib,
            held.memory_mib,
            want.memory_mib,
            " MiB",
        ),
        (
            "disk",
            limits.disk_mib,
            held.disk_mib,
            want.disk_mib,
            " MiB",
        ),
    ];
    for (name, limit, held, want, unit) in checks {
        if want > 0 && held.saturating_add(want) > limit {
            return Some(format!(
                "{what} limit of {limit}{unit} {name} reached: {held}{unit} held, this sandbox needs {want}{unit}{hint}"
            ));
        }
    }
    None
}

/// Checks `want` for `team` (`None`: a warm sandbox of no team) against the
/// team's `limits` and the host's, counting `live` (every sandbox that
/// exists) and the admissions in flight; reserves it if it fits.
pub(crate) fn admit(
    pending: &Arc<std::sync::Mutex<Pending>>,
    config: &AdmissionConfig,
    team: Option<(&str, Amounts)>,
    want: Amounts,
    live: impl Iterator<Item = (String, Amounts)>,
) -> Result<Reservation, CoreError> {
    let mut p = lock(pending);
    let mut host = Amounts::default();
    let mut mine = Amounts::default();
    for (owner, h) in live {
        host.add(&h);
        if team.is_some_and(|(t, _)| t == owner) {
            mine.add(&h);
        }
    }
    for (_, t, h) in &p.held {
        host.add(h);
        if let (Some((team, _)), Some(t)) = (team, t) {
            if team == t {
                mine.add(h);
            }
        }
    }
    if let Some((name, limits)) = team {
        let hint = format!(
            " (kill or pause one of the team's sandboxes, or raise the limit: `kiln teams set {name} ...`)"
        );
        if let Some(m) = over(&format!("team {name:?}:"), &limits, &mine, &want, &hint) {
            return Err(CoreError::LimitExceeded(m));
        }
    }
    let host_want = Amounts {
        sandboxes: 0,
        ..want
    };
    let hint = format!(
        " (the host cannot honour this sandbox's limits; {}; try later or a smaller sandbox)",
        config.host_note
    );
    if let Some(m) = over("host:", &config.host, &host, &host_want, &hint) {
        return Err(CoreError::LimitExceeded(m));
    }
    p.next += 1;
    let id = p.next;
    p.held.push((id, team.map(|(t, _)| t.to_owned()), want));
    Ok(Reservation {
        pending: pending.clone(),
        id,
    })
}

/// Sets `team`'s own limits (all `None`: the defaults again).
pub async fn set_team_limits(
    store: &dyn crate::store::Store,
    team: &str,
    limits: &TeamLimits,
) -> Result<(), CoreError> {
    crate::keys::validate_team(team)?;
    store.set_team_limits(team, limits).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(team: &str, state: SandboxState, mem: u64) -> SandboxRecord {
        let now = chrono::Utc::now();
        SandboxRecord {
            id: "s".into(),
            team_id: team.into(),
            template_id: "base".into(),
            alias: None,
            state,
            started_at: now,
            end_at: now,
            killed_at: None,
            vcpus: 1,
            memory_mib: mem,
            disk_mib: 100,
            metadata: Default::default(),
            env_vars: Default::default(),
            envd_access_token: "tok".into(),
            traffic_access_token: None,
            auto_pause: false,
            auto_pause_memory: true,
            auto_resume: false,
            internet: true,
            allow_out: Vec::new(),
            deny_out: Vec::new(),
            envd_version: "0.5.7".into(),
            runtime: kiln_runtime::RuntimeKind::Container,
            pause_mode: None,
            end_reason: None,
        }
    }

    fn held(recs: &[SandboxRecord]) -> impl Iterator<Item = (String, Amounts)> + '_ {
        recs.iter()
            .map(|r| (r.team_id.clone(), Amounts::held_by(r)))
    }

    fn config(team_sandboxes: u64, host_mem: u64) -> AdmissionConfig {
        AdmissionConfig {
            team_default: Amounts {
                sandboxes: team_sandboxes,
                vcpus: 100,
                memory_mib: 100_000,
                disk_mib: 100_000,
            },
            host: Amounts {
                sandboxes: u64::MAX,
                vcpus: 100,
                memory_mib: host_mem,
                disk_mib: 100_000,
            },
            host_note: "2 CPUs, 1000 MiB".into(),
        }
    }

    #[test]
    fn a_team_at_its_limit_is_refused_and_others_are_not() {
        let pending = Arc::new(std::sync::Mutex::new(Pending::default()));
        let c = config(2, 100_000);
        let live = vec![
            rec("a", SandboxState::Running, 256),
            rec("a", SandboxState::Running, 256),
            rec("a", SandboxState::Paused, 256),
        ];
        let want = Amounts::sized(1, 256, 100);
        let e = admit(&pending, &c, Some(("a", c.team_default)), want, held(&live))
            .err()
            .unwrap();
        let m = e.to_string();
        assert!(m.contains("limit of 2 concurrent sandboxes"), "{m}");
        assert!(m.contains("team \"a\""), "{m}");
        let r = admit(&pending, &c, Some(("b", c.team_default)), want, held(&live));
        assert!(r.is_ok());
        // A per-team value over the default.
        let raised = TeamLimits {
            sandboxes: Some(3),
            ..Default::default()
        }
        .over(&c.team_default);
        assert!(admit(&pending, &c, Some(("a", raised)), want, held(&live)).is_ok());
    }

    #[test]
    fn the_host_refuses_what_it_cannot_honour_counting_reservations() {
        let pending = Arc::new(std::sync::Mutex::new(Pending::default()));
        let c = config(100, 1000);
        let want = Amounts::sized(1, 400, 100);
        let warm = vec![rec(".warm-pool", SandboxState::Running, 400)];
        let live = || held(&warm);
        // The warm sandbox holds host room for no team.
        let first = admit(&pending, &c, Some(("a", c.team_default)), want, live()).unwrap();
        let e = admit(&pending, &c, Some(("b", c.team_default)), want, live())
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("host: limit of 1000 MiB memory"),
            "{e}"
        );
        drop(first);
        assert!(admit(&pending, &c, Some(("b", c.team_default)), want, live()).is_ok());
        // A filesystem-paused sandbox holds its disk only.
        let mut p = rec("a", SandboxState::Paused, 900);
        assert_eq!(Amounts::held_by(&p).memory_mib, 0);
        p.pause_mode = Some(StateMode::Memory);
        assert_eq!(Amounts::held_by(&p).memory_mib, 900);
    }
}
