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

pub(super) fn validate_env(env: &BTreeMap<String, String>) -> Result<(), CoreError> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(CoreError::InvalidArgument(format!(
                "invalid environment variable name {k:?}: it must be non-empty, without '=' or NUL"
            )));
        }
        if v.contains('\0') {
            return Err(CoreError::InvalidArgument(format!(
                "the value of environment variable {k:?} contains a NUL byte"
            )));
        }
    }
    Ok(())
}
