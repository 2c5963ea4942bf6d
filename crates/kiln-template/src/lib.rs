//! Base templates: mmdebstrap rootfs builds, cached by recipe hash.
