//! What the kernel lets a process start with (`execve`), checked before
//! the agent forks so that a request over it answers `invalid_argument`
//! naming the limit.

use kiln_api::agent::Code;

use crate::error::RpcError;

/// Longest single argument or `NAME=value` environment entry, its NUL
/// included (Linux's MAX_ARG_STRLEN, 32 pages).
pub const MAX_ARG_STRLEN: usize = 32 * 4096;
/// Most bytes of environment entries all together (with their NULs). The
/// kernel's own bound on arguments and environment together is a quarter of
/// the stack limit (2 MiB under the usual 8 MiB): this leaves room for the
/// arguments.
pub const MAX_ENV_TOTAL: usize = 1 << 20;

/// Checks an environment: names non-empty without `=` or NUL, values
/// without NUL, each entry and the whole within the limits.
pub fn check_env<'a>(
    env: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), RpcError> {
    let mut total = 0usize;
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(RpcError::invalid(format!(
                "invalid environment variable name {k:?}"
            )));
        }
        if v.contains('\0') {
            return Err(RpcError::invalid(format!(
                "the value of environment variable {k:?} contains a NUL byte"
            )));
        }
        let len = k.len() + 1 + v.len() + 1;
        if len > MAX_ARG_STRLEN {
            return Err(RpcError::invalid(format!(
                "environment variable {k:?} is {len} bytes: over the limit of {MAX_ARG_STRLEN} bytes per variable"
            )));
        }
        total += len;
        if total > MAX_ENV_TOTAL {
            return Err(RpcError::invalid(format!(
                "the environment is over the limit of {MAX_ENV_TOTAL} bytes in all"
            )));
        }
    }
    Ok(())
}

/// Checks a command and its arguments: no NUL, each within the limit.
pub fn check_args<'a>(args: impl IntoIterator<Item = &'a String>) -> Result<(), RpcError> {
    for (i, a) in args.into_iter().enumerate() {
        if a.contains('\0') {
            return Err(RpcError::invalid("process cmd or args contain a NUL byte"));
        }
        if a.len() + 1 > MAX_ARG_STRLEN {
            let what = if i == 0 {
                "the command".to_string()
            } else {
                format!("argument {i}")
            };
            return Err(RpcError::invalid(format!(
                "{what} is {} bytes: over the limit of {MAX_ARG_STRLEN} bytes per argument",
                a.len() + 1
            )));
        }
    }
    Ok(())
}

/// The error for an `execve` that failed with E2BIG all the same (the
/// arguments and environment together over the kernel's bound).
pub fn too_big(cmd: &str) -> RpcError {
    RpcError::new(
        Code::InvalidArgument,
        format!(
            "starting {cmd:?} failed: the arguments and environment are over the kernel's limit \
             (each at most {MAX_ARG_STRLEN} bytes; all together at most a quarter of the stack \
             limit, usually 2 MiB)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        let k = "K".to_string();
        let ok = "v".repeat(MAX_ARG_STRLEN - 3);
        assert!(check_env([(&k, &ok)]).is_ok());
        let big = "v".repeat(MAX_ARG_STRLEN - 2);
        let e = check_env([(&k, &big)]).unwrap_err();
        assert!(e.message.contains("131072"), "{}", e.message);
        let nul = "a\0b".to_string();
        assert_eq!(
            check_env([(&k, &nul)]).unwrap_err().code,
            Code::InvalidArgument
        );
        let many: Vec<(String, String)> = (0..20)
            .map(|i| (format!("K{i}"), "v".repeat(100_000)))
            .collect();
        let e = check_env(many.iter().map(|(a, b)| (a, b))).unwrap_err();
        assert!(e.message.contains("in all"), "{}", e.message);
        assert!(check_args([&"x".repeat(MAX_ARG_STRLEN)]).is_err());
        assert!(check_args([&"x".repeat(MAX_ARG_STRLEN - 1)]).is_ok());
    }
}
