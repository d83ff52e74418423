#![no_main]
//! Raw client bytes (preamble, HELLO, then anything) into a server connection.
use libfuzzer_sys::fuzz_target;
use wharf_core::Role;

fuzz_target!(|data: &[u8]| wharf_fuzz::handshake::run(Role::Server, data));
