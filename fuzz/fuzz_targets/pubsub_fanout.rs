#![no_main]
//! Structure-aware operations on a Broker, checked against a model.
use libfuzzer_sys::fuzz_target;
use wharf_fuzz::pubsub::{PubsubInput, run};

fuzz_target!(|input: PubsubInput| run(&input));
