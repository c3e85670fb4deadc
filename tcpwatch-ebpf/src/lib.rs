#![no_std]
// This file exists to enable the library target, so the user-space crate can
// name this one as a dependency (rebuild tracking); the programs are in main.rs.
