//! The Runtime trait, the container backend and a fake for tests.
