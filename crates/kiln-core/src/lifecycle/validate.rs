//! Checks of a create request's free-form parts.

use std::collections::BTreeMap;

use crate::error::CoreError;

const MAX_METADATA_ENTRIES: usize = 64;
const MAX_METADATA_KEY: usize = 256;
const MAX_METADATA_VALUE: usize = 1024;

pub(super) fn validate_metadata(m: &BTreeMap<String, String>) -> Result<(), CoreError> {
    if m.len() > MAX_METADATA_ENTRIES {
        return Err(CoreError::InvalidArgument(format!(
            "metadata may have at most {MAX_METADATA_ENTRIES} entries"
        )));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > MAX_METADATA_KEY || v.len() > MAX_METADATA_VALUE {
            return Err(CoreError::InvalidArgument(format!(
                "metadata keys must be 1-{MAX_METADATA_KEY} bytes and values at most \
                 {MAX_METADATA_VALUE} bytes (key {k:?})"
            )));
        }
    }
    Ok(())
}

/// The most one `NAME=VALUE` may take: Linux's limit on one string of a
/// process's environment (`MAX_ARG_STRLEN`, 32 pages, with its NUL), which
/// every command the agent starts in the sandbox inherits.
pub const MAX_ENV_VAR_BYTES: usize = 128 * 1024 - 1;
/// The most all of a sandbox's environment may take together, counted as
/// kilnd sends it to the agent (JSON). A quarter of the 2 MiB a process's
/// arguments and environment share at exec, so that commands keep room for
/// their own; well inside the agent's 1 MiB `/init` body.
pub const MAX_ENV_TOTAL_BYTES: usize = 512 * 1024;
/// The most variables a sandbox's environment may have (each costs a
/// pointer at every exec besides its bytes).
pub const MAX_ENV_VARS: usize = 10_000;

/// Checks a sandbox's environment variables: valid names, no NUL, and
/// sizes every process start in the sandbox can take (see the limits
/// above); a breach is a 400 that names the limit.
pub(super) fn validate_env(env: &BTreeMap<String, String>) -> Result<(), CoreError> {
    if env.len() > MAX_ENV_VARS {
        return Err(CoreError::InvalidArgument(format!(
            "{} environment variables given; at most {MAX_ENV_VARS} are allowed",
            env.len()
        )));
    }
    let mut total = 2; // the JSON object's braces
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(CoreError::InvalidArgument(format!(
                "invalid environment variable name {:?}: it must be non-empty, without '=' or NUL",
                shorten(k)
            )));
        }
        if v.contains('\0') {
            return Err(CoreError::InvalidArgument(format!(
                "the value of environment variable {:?} contains a NUL byte",
                shorten(k)
            )));
        }
        let len = k.len() + 1 + v.len();
        if len > MAX_ENV_VAR_BYTES {
            return Err(CoreError::InvalidArgument(format!(
                "environment variable {:?} takes {len} bytes as NAME=VALUE; \
                 the limit is {MAX_ENV_VAR_BYTES} bytes per variable",
                shorten(k)
            )));
        }
        // As sent: "name":"value", plus a comma.
        total += json_len(k) + 1 + json_len(v) + 1;
    }
    if total > MAX_ENV_TOTAL_BYTES {
        return Err(CoreError::InvalidArgument(format!(
            "the environment variables take {total} bytes in all (JSON-encoded); \
             the limit is {MAX_ENV_TOTAL_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The length of `s` as a JSON string, quotes included.
fn json_len(s: &str) -> usize {
    2 + s
        .chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum::<usize>()
}

/// A name fit for an error message (a hostile one may be megabytes long).
fn shorten(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn json_len_matches_serde() {
        for s in [
            "",
            "abc",
            "a\"b\\c",
            "\n\t\u{1}\u{1f}\u{7f}",
            "é漢🙂",
            "\u{8}\u{c}",
        ] {
            assert_eq!(
                json_len(s),
                serde_json::to_string(s).unwrap().len(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn one_variable_up_to_the_exec_string_limit() {
        let at = "x".repeat(MAX_ENV_VAR_BYTES - 2);
        assert!(validate_env(&env(&[("A", at.clone())])).is_ok());
        let over = at + "x";
        let e = validate_env(&env(&[("A", over)])).unwrap_err().to_string();
        assert!(e.contains(&MAX_ENV_VAR_BYTES.to_string()), "{e}");
        assert!(e.contains("\"A\""), "{e}");
    }

    #[test]
    fn the_total_counts_as_sent() {
        let v = "x".repeat(100 * 1024);
        let four: Vec<(String, String)> = (0..4).map(|i| (format!("V{i}"), v.clone())).collect();
        let ok: BTreeMap<_, _> = four.into_iter().collect();
        assert!(validate_env(&ok).is_ok());
        let mut over = ok.clone();
        over.insert("V4".into(), v.clone());
        over.insert("V5".into(), v);
        let e = validate_env(&over).unwrap_err().to_string();
        assert!(e.contains(&MAX_ENV_TOTAL_BYTES.to_string()), "{e}");
        // Control characters take 6 bytes each in JSON: 100 KiB of them is
        // 600 KiB on the wire.
        let ctl = "\u{1}".repeat(100 * 1024);
        assert!(validate_env(&env(&[("C", ctl)])).is_err());
    }

    #[test]
    fn names_and_counts() {
        assert!(validate_env(&env(&[("", "v".into())])).is_err());
        assert!(validate_env(&env(&[("A=B", "v".into())])).is_err());
        assert!(validate_env(&env(&[("A", "a\0b".into())])).is_err());
        let many: BTreeMap<_, _> = (0..=MAX_ENV_VARS)
            .map(|i| (format!("V{i}"), String::new()))
            .collect();
        let e = validate_env(&many).unwrap_err().to_string();
        assert!(e.contains("at most 10000"), "{e}");
        let long_name = "N".repeat(1 << 20);
        let e = validate_env(&env(&[(&long_name, String::new())]))
            .unwrap_err()
            .to_string();
        assert!(
            e.len() < 300,
            "the message repeats a huge name: {} bytes",
            e.len()
        );
    }
}
