pub mod keys;
pub mod up;
