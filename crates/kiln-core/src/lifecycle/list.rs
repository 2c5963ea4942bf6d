//! `get` and `list`: the sandboxes a team sees.

use super::Core;
use crate::error::CoreError;
use crate::ids::is_sandbox_id;
use crate::sandbox::{ListFilter, Page, SandboxRecord, SandboxState, Team};

impl Core {
    /// The sandbox as its team sees it.
    pub fn get(&self, team: &Team, id: &str) -> Result<SandboxRecord, CoreError> {
        Ok(self.owned(team, id)?.record())
    }

    /// The team's sandboxes (running and paused unless `filter.states` says
    /// otherwise), oldest first, one page at a time.
    pub fn list(&self, team: &Team, filter: &ListFilter) -> Result<Page<SandboxRecord>, CoreError> {
        let limit = filter.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(CoreError::InvalidArgument(format!(
                "limit must be between 1 and 1000, got {limit}"
            )));
        }
        let states = if filter.states.is_empty() {
            vec![SandboxState::Running, SandboxState::Paused]
        } else {
            filter.states.clone()
        };
        if states.iter().any(|s| !s.is_live()) {
            return Err(CoreError::InvalidArgument(
                "state must be running or paused".into(),
            ));
        }
        let after = filter.next_token.as_deref().map(decode_token).transpose()?;
        let mut all: Vec<SandboxRecord> = self
            .inner
            .live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|l| l.record())
            .filter(|r| r.team_id == team.id && states.contains(&r.state))
            .filter(|r| {
                filter
                    .metadata
                    .iter()
                    .all(|(k, v)| r.metadata.get(k) == Some(v))
            })
            .collect();
        let key = |r: &SandboxRecord| (r.started_at.timestamp_micros(), r.id.clone());
        all.sort_by_key(key);
        if filter.newest_first {
            all.reverse();
        }
        let start = match after {
            Some(after) if filter.newest_first => all.partition_point(|r| key(r) >= after),
            Some(after) => all.partition_point(|r| key(r) <= after),
            None => 0,
        };
        let rest = &all[start..];
        let items: Vec<SandboxRecord> = rest.iter().take(limit).cloned().collect();
        let next_token = (rest.len() > limit)
            .then(|| items.last().map(encode_token))
            .flatten();
        Ok(Page { items, next_token })
    }
}

/// Page tokens are `<started_at micros>.<id>`: opaque to callers, stable
/// across kilnd restarts.
fn encode_token(r: &SandboxRecord) -> String {
    format!("{}.{}", r.started_at.timestamp_micros(), r.id)
}

fn decode_token(token: &str) -> Result<(i64, String), CoreError> {
    let bad = || CoreError::InvalidArgument(format!("invalid next token {token:?}"));
    let (t, id) = token.split_once('.').ok_or_else(bad)?;
    let t = t.parse().map_err(|_| bad())?;
    if !is_sandbox_id(id) {
        return Err(bad());
    }
    Ok((t, id.to_owned()))
}
