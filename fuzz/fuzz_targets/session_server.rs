#![no_main]
//! A server connection driven by fuzz-chosen steps (input, time, commands, reactions).
use libfuzzer_sys::fuzz_target;
use wharf_core::Role;
use wharf_fuzz::session::{Driver, SessionInput};

fuzz_target!(|input: SessionInput| Driver::run_session(Role::Server, &input));
