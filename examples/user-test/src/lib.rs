//! A user's service would live here; its integration test is `tests/steering.rs`.
