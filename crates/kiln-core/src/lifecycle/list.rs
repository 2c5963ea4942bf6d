//! `get` and `list`: the sandboxes a team sees.

use super::Core;
use crate::error::CoreError;
use crate::ids::is_sandbox_id;
use crate::sandbox::{ListFilter, Order, Page, SandboxList, SandboxRecord, SandboxState, Team};
use crate::snapshots::strip_tag;

impl Core {
    /// The sandbox as its team sees it.
    pub fn get(&self, team: &Team, id: &str) -> Result<SandboxRecord, CoreError> {
        Ok(self.owned(team, id)?.record())
    }

    /// The team's sandboxes (running and paused unless `filter.states` says
    /// otherwise), by start time in `filter.order`, one page at a time.
    ///
    /// Running and paused sandboxes are one sequence, sorted and paged by
    /// the same key (start time, then id), so a page token taken in one
    /// order goes on in that order whatever changed state in between.
    pub fn list(&self, team: &Team, filter: &ListFilter) -> Result<SandboxList, CoreError> {
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
        if let (Some(after), Some(before)) = (filter.started_after, filter.started_before) {
            if after > before {
                return Err(CoreError::InvalidArgument(format!(
                    "startedAfter ({after}) is later than startedBefore ({before})"
                )));
            }
        }
        let template = match filter.template.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => Some(self.template_filter(t)?),
            None => None,
        };
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
            // On the microsecond grid of the page key (and of the times a
            // client read from RFC 3339 with microseconds), so that a
            // sandbox's own startedAt, fed back, includes it.
            .filter(|r| {
                filter
                    .started_after
                    .is_none_or(|t| r.started_at.timestamp_micros() >= t.timestamp_micros())
            })
            .filter(|r| {
                filter
                    .started_before
                    .is_none_or(|t| r.started_at.timestamp_micros() <= t.timestamp_micros())
            })
            .filter(|r| template.as_ref().is_none_or(|t| t.matches(r)))
            .collect();
        let total_running = states.contains(&SandboxState::Running).then(|| {
            all.iter()
                .filter(|r| r.state == SandboxState::Running)
                .count()
        });
        let key = |r: &SandboxRecord| (r.started_at.timestamp_micros(), r.id.clone());
        all.sort_by_key(key);
        if filter.order == Order::NewestFirst {
            all.reverse();
        }
        let start = match after {
            Some(after) if filter.order == Order::NewestFirst => {
                all.partition_point(|r| key(r) >= after)
            }
            Some(after) => all.partition_point(|r| key(r) <= after),
            None => 0,
        };
        let rest = &all[start..];
        let items: Vec<SandboxRecord> = rest.iter().take(limit).cloned().collect();
        let next_token = (rest.len() > limit)
            .then(|| items.last().map(encode_token))
            .flatten();
        Ok(SandboxList {
            page: Page { items, next_token },
            total_running,
        })
    }

    /// What a `template` filter matches: a template of the catalog by id or
    /// alias, else the name sandboxes were created with (a snapshot's id or
    /// name). A tagged name is refused, as E2B does: sandboxes do not
    /// record the tag they were started from.
    fn template_filter(&self, name: &str) -> Result<TemplateFilter, CoreError> {
        if name.contains(':') {
            return Err(CoreError::InvalidArgument(format!(
                "invalid template {name:?}: tags are not supported here because sandboxes are not tag-scoped"
            )));
        }
        Ok(match self.inner.templates.resolve(name) {
            Some(t) => TemplateFilter::Id(t.template.id),
            None => TemplateFilter::CreatedAs(name.to_owned()),
        })
    }
}

enum TemplateFilter {
    Id(String),
    CreatedAs(String),
}

impl TemplateFilter {
    fn matches(&self, r: &SandboxRecord) -> bool {
        match self {
            TemplateFilter::Id(id) => r.template_id == *id,
            TemplateFilter::CreatedAs(name) => r
                .alias
                .as_deref()
                .and_then(strip_tag)
                .is_some_and(|a| a == name),
        }
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
