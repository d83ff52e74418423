#![no_main]
//! Raw server bytes (preamble, WELCOME or REJECT, then anything) into a client connection.
use libfuzzer_sys::fuzz_target;
use wharf_core::Role;

fuzz_target!(|data: &[u8]| wharf_fuzz::handshake::run(Role::Client, data));
