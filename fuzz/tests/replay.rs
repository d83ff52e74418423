//! Replays inputs through the same code the fuzz targets run.
//!
//! - `regressions`: every file under `regressions/<target>/` must pass
//!   (each one is a minimized crash; it fails until the bug is fixed).
//! - `seeds`: every committed seed passes.
//! - `replay_one`: `WHARF_REPLAY=<target>:<file> cargo test --test replay replay_one -- --nocapture`
//!   runs one file (add `WHARF_FUZZ_TRACE=1` to print every step and event).

use std::fs;
use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use wharf_core::Role;
use wharf_fuzz::session::{Driver, SessionInput};

fn run(target: &str, data: &[u8]) {
    match target {
        "frame_decode" => wharf_fuzz::frame::run(data),
        "handshake_server" => wharf_fuzz::handshake::run(Role::Server, data),
        "handshake_client" => wharf_fuzz::handshake::run(Role::Client, data),
        "session_server" | "session_client" => {
            let Ok(input) = SessionInput::arbitrary_take_rest(Unstructured::new(data)) else { return };
            if std::env::var_os("WHARF_FUZZ_TRACE").is_some() {
                eprintln!("{input:#?}");
            }
            let role = if target == "session_server" { Role::Server } else { Role::Client };
            Driver::run_session(role, &input);
        }
        "pubsub_fanout" => {
            let Ok(input) = wharf_fuzz::pubsub::PubsubInput::arbitrary_take_rest(Unstructured::new(data)) else {
                return;
            };
            wharf_fuzz::pubsub::run(&input);
        }
        other => panic!("unknown target {other}"),
    }
}

fn replay_dir(dir: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut failures = Vec::new();
    let Ok(targets) = fs::read_dir(&root) else { return failures };
    for target in targets.flatten() {
        let name = target.file_name().to_string_lossy().into_owned();
        for file in fs::read_dir(target.path()).unwrap().flatten() {
            let data = fs::read(file.path()).unwrap();
            let t = name.clone();
            if std::panic::catch_unwind(move || run(&t, &data)).is_err() {
                failures.push(format!("{name}/{}", file.file_name().to_string_lossy()));
            }
        }
    }
    failures
}

#[test]
fn seeds() {
    let failures = replay_dir("seeds");
    assert!(failures.is_empty(), "seeds failing: {failures:#?}");
}

#[test]
fn regressions() {
    let failures = replay_dir("regressions");
    assert!(failures.is_empty(), "regressions still failing: {failures:#?}");
}

#[test]
fn replay_one() {
    let Some(spec) = std::env::var_os("WHARF_REPLAY") else { return };
    let spec = spec.to_string_lossy().into_owned();
    let (target, file) = spec.split_once(':').expect("WHARF_REPLAY=<target>:<file>");
    run(target, &fs::read(file).unwrap());
}
