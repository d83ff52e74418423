#![no_main]
//! Raw bytes into the frame decoder; every decoded frame must round-trip.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wharf_fuzz::frame::run(data));
