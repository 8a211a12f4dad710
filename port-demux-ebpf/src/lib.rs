#![no_std]
// This file exists to let cargo treat the crate as a library for `cargo check` on the host;
// the program is `src/main.rs`.
