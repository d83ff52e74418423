//! Windows named pipes get an explicit DACL: network logons denied, full
//! access for the current user and SYSTEM, protected from inheritance,
//! nobody else (X10). Read
//! back from the pipe object itself, through the server's handle and
//! through a client's.
#![cfg(windows)]

use wharf_transport::{create_pipe_instance, dacl_sddl, open_pipe_client, pipe_security};

/// The access entries of an SDDL DACL string.
fn aces(sddl: &str) -> Vec<String> {
    sddl.split('(').skip(1).map(|a| a.trim_end_matches(')').to_string()).collect()
}

fn check(sddl: &str, user_sid: &str) {
    eprintln!("DACL read back: {sddl}");
    assert!(sddl.starts_with("D:P"), "the DACL is not protected: {sddl}");
    let aces = aces(sddl);
    assert_eq!(aces.len(), 3, "expected exactly three entries (deny network, allow SYSTEM and the user): {sddl}");
    assert!(aces[0].starts_with("D;") && aces[0].ends_with(";;;NU"), "network logons are not denied first: {sddl}");
    assert!(aces[1..].iter().all(|a| a.starts_with("A;")), "only allow entries after the deny: {sddl}");
    assert!(aces.iter().any(|a| a.ends_with(";;;SY")), "SYSTEM is missing: {sddl}");
    assert!(aces.iter().any(|a| a.ends_with(&format!(";;;{user_sid}"))), "the user is missing: {sddl}");
    for wide in [";;;WD", ";;;AN", ";;;BU", ";;;AU"] {
        assert!(!sddl.contains(wide), "{wide} must not be granted: {sddl}");
    }
}

#[test]
fn pipe_instances_grant_only_the_user_and_system() {
    let security = pipe_security().expect("a security descriptor");
    let user_sid = security.sddl().rsplit(";;;").next().unwrap().trim_end_matches(')').to_string();
    assert!(user_sid.starts_with("S-1-"), "{}", security.sddl());

    let name = format!(r"\\.\pipe\wharf-dacl-{}", std::process::id());
    let server = create_pipe_instance(&name, true, &Default::default()).expect("create the pipe");
    check(&dacl_sddl(&server).expect("read the server's DACL"), &user_sid);
    let next = create_pipe_instance(&name, false, &Default::default()).expect("a second instance");
    check(&dacl_sddl(&next).expect("read the second instance's DACL"), &user_sid);

    let client = open_pipe_client(&name).expect("connect as the same user");
    check(&dacl_sddl(&client).expect("read the DACL through the client"), &user_sid);
}
