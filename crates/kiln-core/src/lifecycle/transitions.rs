//! The one table of which operation is legal in which state.
//!
//! ```text
//! creating ──▶ running ◀──▶ paused
//!     │           │            │
//!     └───────────┴────────────┴──▶ killed
//! ```
//!
//! Every verb asks [`check`] before it acts, under the sandbox's lock; a
//! verb the table does not list for the current state is refused: with 404
//! when the sandbox no longer exists for its users (creating, killed), with
//! 409 when it exists but is in the wrong state.

use crate::error::CoreError;
use crate::sandbox::SandboxState::{self, Creating, Killed, Paused, Running};

/// What a caller (or a timer, or the runtime) asks of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Kill,
    Pause,
    Resume,
    /// Extends a running sandbox, resumes a paused one.
    Connect,
    SetTimeout,
    Refresh,
    Metrics,
    Snapshot,
    Fork,
    SetNetwork,
    /// The sandbox's deadline passed.
    Expire,
    /// The runtime says the sandbox ended on its own.
    Exit,
    /// `create` finished starting it.
    Started,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Kill => "kill",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Connect => "connect to",
            Op::SetTimeout => "set the timeout of",
            Op::Refresh => "refresh",
            Op::Metrics => "read the metrics of",
            Op::Snapshot => "snapshot",
            Op::Fork => "fork",
            Op::SetNetwork => "change the network of",
            Op::Expire => "expire",
            Op::Exit => "end",
            Op::Started => "start",
        }
    }
}

/// (operation, state it is legal in, states it may lead to).
pub const LEGAL: &[(Op, SandboxState, &[SandboxState])] = &[
    (Op::Started, Creating, &[Running]),
    (Op::Kill, Running, &[Killed]),
    (Op::Kill, Paused, &[Killed]),
    (Op::Pause, Running, &[Paused]),
    (Op::Resume, Paused, &[Running]),
    (Op::Connect, Running, &[Running]),
    (Op::Connect, Paused, &[Running]),
    (Op::SetTimeout, Running, &[Running, Killed, Paused]),
    (Op::SetTimeout, Paused, &[Paused]),
    (Op::Refresh, Running, &[Running]),
    (Op::Refresh, Paused, &[Paused]),
    (Op::Metrics, Running, &[Running]),
    (Op::Metrics, Paused, &[Paused]),
    (Op::Snapshot, Running, &[Running]),
    (Op::Snapshot, Paused, &[Paused]),
    (Op::Fork, Running, &[Running]),
    (Op::SetNetwork, Running, &[Running]),
    (Op::Expire, Running, &[Killed, Paused]),
    (Op::Exit, Creating, &[Killed]),
    (Op::Exit, Running, &[Killed]),
    (Op::Exit, Paused, &[Killed]),
];

/// Whether `op` may run on sandbox `id` in `state`; the refusal otherwise.
pub fn check(op: Op, id: &str, state: SandboxState) -> Result<(), CoreError> {
    if LEGAL.iter().any(|(o, from, _)| *o == op && *from == state) {
        return Ok(());
    }
    Err(match (op, state) {
        (_, Creating | Killed) => CoreError::sandbox_not_found(id),
        (Op::Pause, Paused) => CoreError::Conflict(format!("sandbox {id} is already paused")),
        (Op::Resume, Running) => CoreError::Conflict(format!("sandbox {id} is not paused")),
        (op, state) => CoreError::Conflict(format!(
            "cannot {} sandbox {id} while it is {state}",
            op.verb()
        )),
    })
}

/// Whether `op` may take a sandbox from `from` to `to` (checked in debug
/// builds where a verb changes the state).
pub fn leads_to(op: Op, from: SandboxState, to: SandboxState) -> bool {
    LEGAL
        .iter()
        .any(|(o, f, tos)| *o == op && *f == from && tos.contains(&to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_what_is_wrong() {
        assert!(check(Op::Pause, "s", Running).is_ok());
        assert!(matches!(
            check(Op::Pause, "s", Paused),
            Err(CoreError::Conflict(m)) if m.contains("already paused")
        ));
        assert!(matches!(
            check(Op::Resume, "s", Running),
            Err(CoreError::Conflict(m)) if m.contains("not paused")
        ));
        assert!(matches!(
            check(Op::Fork, "s", Paused),
            Err(CoreError::Conflict(m)) if m.contains("fork") && m.contains("paused")
        ));
        for op in [Op::Kill, Op::Pause, Op::Resume, Op::Metrics] {
            assert!(matches!(
                check(op, "s", Killed),
                Err(CoreError::NotFound(_))
            ));
            assert!(matches!(
                check(op, "s", Creating),
                Err(CoreError::NotFound(_))
            ));
        }
    }

    #[test]
    fn nothing_leaves_killed() {
        assert!(LEGAL.iter().all(|(_, from, _)| *from != Killed));
        assert!(leads_to(Op::Expire, Running, Paused));
        assert!(!leads_to(Op::Resume, Paused, Killed));
    }
}
