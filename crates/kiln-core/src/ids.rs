//! Random identifiers and secrets.

use rand::Rng;
use sha2::{Digest, Sha256};

const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A sandbox id: 20 lowercase letters and digits, so that it fits in a DNS
/// label of `<port>-<id>.<domain>` and has no `-` of its own.
pub fn new_sandbox_id() -> String {
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())] as char)
        .collect()
}

/// Whether `s` has the form of a sandbox id (checked before any lookup).
pub fn is_sandbox_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| ID_ALPHABET.contains(&b))
}

/// The sandbox id that `s` names: the id itself, or E2B's older composite
/// form `<sandbox id>-<client id>` (the SDKs before 1.0 joined the create's
/// `sandboxID` and `clientID` so, and E2B's API still takes it). Sandbox
/// ids have no `-`, so the id is what comes before the first one. `None`
/// when that is not a sandbox id.
pub fn short_id(s: &str) -> Option<&str> {
    let id = s.split_once('-').map_or(s, |(id, _client)| id);
    is_sandbox_id(id).then_some(id)
}

/// `bytes` random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill(&mut buf[..]);
    hex::encode(buf)
}

/// SHA-256 of `s`, lowercase hex. Fine for high-entropy secrets such as API
/// keys (no salt or stretching needed).
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Compares two strings in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids_are_dns_label_safe_and_distinct() {
        let a = new_sandbox_id();
        let b = new_sandbox_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 20);
        assert!(is_sandbox_id(&a));
        assert!(!is_sandbox_id("abc-def"));
        assert!(!is_sandbox_id(""));
    }

    #[test]
    fn composite_ids_name_their_sandbox() {
        assert_eq!(short_id("abc123"), Some("abc123"));
        assert_eq!(short_id("abc123-6532622b"), Some("abc123"));
        assert_eq!(short_id("abc123-node-1"), Some("abc123"));
        assert_eq!(short_id("-abc"), None);
        assert_eq!(short_id("ABC"), None);
        assert_eq!(short_id(""), None);
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}
