//! API keys: `e2b_` followed by 40 lowercase hex digits (the form the E2B SDKs
//! accept), stored as SHA-256 hashes.

use chrono::Utc;

use crate::error::CoreError;
use crate::ids::{random_hex, sha256_hex};
use crate::sandbox::Team;
use crate::store::{KeyRecord, Store};

pub const KEY_PREFIX: &str = "e2b_";
/// The team of keys created without naming one.
pub const DEFAULT_TEAM: &str = "default";

/// A new random key in the SDK's form.
pub fn generate_key() -> String {
    format!("{KEY_PREFIX}{}", random_hex(20))
}

/// Whether `key` has the form the SDKs validate (`e2b_` + lowercase hex).
pub fn is_sdk_form(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(|hex| {
        !hex.is_empty()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn record_for(key: &str, team_id: &str, name: &str) -> KeyRecord {
    KeyRecord {
        id: format!("key_{}", random_hex(6)),
        team_id: team_id.to_owned(),
        name: name.to_owned(),
        hash: sha256_hex(key),
        prefix: key.chars().take(KEY_PREFIX.len() + 6).collect(),
        created_at: Utc::now(),
        revoked_at: None,
    }
}

/// Creates a key for `team_id`; returns the key (shown once, never stored)
/// and its record.
pub async fn create_key(
    store: &dyn Store,
    team_id: &str,
    name: &str,
) -> Result<(String, KeyRecord), CoreError> {
    validate_team(team_id)?;
    let key = generate_key();
    let rec = record_for(&key, team_id, name);
    store.insert_key(&rec).await?;
    Ok((key, rec))
}

/// Makes sure `key` (e.g. from `KILN_API_KEY`) is a valid key of `team_id`;
/// adds it if the store does not know it. Returns whether it was added.
pub async fn ensure_key(
    store: &dyn Store,
    key: &str,
    team_id: &str,
    name: &str,
) -> Result<bool, CoreError> {
    validate_team(team_id)?;
    if key.len() < 16 {
        return Err(CoreError::InvalidArgument(
            "an API key must be at least 16 characters long".into(),
        ));
    }
    if store.key_by_hash(&sha256_hex(key)).await?.is_some() {
        return Ok(false);
    }
    store.insert_key(&record_for(key, team_id, name)).await?;
    Ok(true)
}

/// The team of a valid, unrevoked key.
pub async fn authenticate(store: &dyn Store, key: Option<&str>) -> Result<Team, CoreError> {
    let key = key
        .filter(|k| !k.is_empty())
        .ok_or_else(|| CoreError::Unauthorized("missing API key (X-API-KEY header)".into()))?;
    match store.key_by_hash(&sha256_hex(key)).await? {
        Some(rec) => Ok(Team { id: rec.team_id }),
        None => Err(CoreError::Unauthorized("invalid API key".into())),
    }
}

pub(crate) fn validate_team(team_id: &str) -> Result<(), CoreError> {
    let ok = !team_id.is_empty()
        && team_id.len() <= 64
        && team_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CoreError::InvalidArgument(format!(
            "invalid team name {team_id:?}: use 1-64 letters, digits, '-' or '_'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, Store};

    #[tokio::test]
    async fn keys_have_the_sdk_form_and_authenticate_their_team() {
        let store = SqliteStore::in_memory().unwrap();
        let (key, rec) = create_key(&store, "alpha", "ci").await.unwrap();
        assert!(is_sdk_form(&key), "{key}");
        assert_eq!(key.len(), 44);
        assert_ne!(rec.hash, key);
        assert_eq!(authenticate(&store, Some(&key)).await.unwrap().id, "alpha");
        assert!(matches!(
            authenticate(&store, Some("e2b_0000")).await,
            Err(CoreError::Unauthorized(_))
        ));
        assert!(matches!(
            authenticate(&store, None).await,
            Err(CoreError::Unauthorized(_))
        ));
        store.revoke_key(&rec.id, Utc::now()).await.unwrap();
        assert!(authenticate(&store, Some(&key)).await.is_err());
    }

    #[tokio::test]
    async fn ensure_key_is_idempotent() {
        let store = SqliteStore::in_memory().unwrap();
        let key = generate_key();
        assert!(ensure_key(&store, &key, DEFAULT_TEAM, "env").await.unwrap());
        assert!(!ensure_key(&store, &key, DEFAULT_TEAM, "env").await.unwrap());
        assert_eq!(store.list_keys().await.unwrap().len(), 1);
        assert!(ensure_key(&store, "short", DEFAULT_TEAM, "env")
            .await
            .is_err());
        assert!(!is_sdk_form("e2b_ABC"));
    }
}
