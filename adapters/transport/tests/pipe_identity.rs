//! Windows named pipes: both ends read the other's pid and token user SID
//! from the kernel (X13), a failed lookup is refused, and a pipe's
//! instances are bounded (X14). Run under Wine in CI.
#![cfg(windows)]

use std::io;
use std::time::{Duration, Instant};

use wharf_transport::{
    Endpoint, PeerPolicy, PipeOptions, PipeRetry, Sid, TransportError, check_server, create_pipe_instance,
    current_user_sid, open_pipe_client, pipe_client_identity, pipe_server_identity, process_identity, process_sid,
};

fn name(what: &str) -> String {
    format!(r"\\.\pipe\wharf-identity-test-{}-{what}", std::process::id())
}

/// The text form Windows itself gives a SID (`ConvertSidToStringSidW`).
fn windows_text(sid: &Sid) -> String {
    use windows_sys::Win32::Foundation::LocalFree;
    use windows_sys::Win32::Security::Authorization::ConvertSidToStringSidW;
    let mut bytes = sid.as_bytes().to_vec();
    let mut text: *mut u16 = std::ptr::null_mut();
    // SAFETY: `bytes` holds a valid SID for the call; `text` is a valid
    // out-pointer.
    assert_ne!(unsafe { ConvertSidToStringSidW(bytes.as_mut_ptr().cast(), &mut text) }, 0, "convert {sid}");
    let mut n = 0;
    // SAFETY: a NUL-terminated string allocated by the call, freed once.
    unsafe {
        while *text.add(n) != 0 {
            n += 1;
        }
        let s = String::from_utf16_lossy(std::slice::from_raw_parts(text, n));
        LocalFree(text.cast());
        s
    }
}

#[test]
fn our_own_sid_reads_the_same_by_pid_and_as_windows_writes_it() {
    let own = current_user_sid().expect("our own token's SID");
    eprintln!("our SID: {own}");
    assert_eq!(process_sid(std::process::id()).expect("our SID through our pid"), own);
    assert_eq!(windows_text(&own), own.to_string(), "the text form matches ConvertSidToStringSidW");
    assert_eq!(windows_text(&Sid::LOCAL_SYSTEM), "S-1-5-18");
    assert_eq!(own.to_string().parse::<Sid>().unwrap(), own);
}

#[test]
fn each_end_reads_the_others_pid_and_sid_from_the_kernel() {
    let name = name("both-ends");
    let own = current_user_sid().unwrap();
    let server = create_pipe_instance(&name, true, &PipeOptions::default()).unwrap();
    let client = open_pipe_client(&name).unwrap();
    let seen_by_server = pipe_client_identity(&server).expect("the client's identity");
    let seen_by_client = pipe_server_identity(&client).expect("the server's identity");
    for (who, peer) in [("server", seen_by_server), ("client", seen_by_client)] {
        assert_eq!(peer.pid, Some(std::process::id()), "{who}: {peer:?}");
        assert_eq!(peer.sid, Some(own), "{who}: {peer:?}");
        assert_eq!((peer.uid, peer.gid, peer.addr), (None, None, None), "{who}: {peer:?}");
    }
    // Both pass the default policies: the server's of its clients, the
    // client's of its server.
    let ep = Endpoint::pipe(&name).unwrap();
    PeerPolicy::default().check(&ep, &seen_by_server).unwrap();
    check_server(None, &ep, &seen_by_client).unwrap();
    // An allow-list naming only another account refuses both.
    let other: Sid = "S-1-5-21-1-2-3-4242".parse().unwrap();
    let only_other = PeerPolicy::allow_list().allow_sid(other);
    match only_other.check(&ep, &seen_by_server) {
        Err(TransportError::PipePeerRefused { sid, pid, endpoint }) => {
            assert_eq!((sid, pid, endpoint), (Some(own), Some(std::process::id()), ep.to_string()));
        }
        other => panic!("expected PipePeerRefused, got {other:?}"),
    }
    assert!(matches!(
        check_server(Some(&only_other), &ep, &seen_by_client),
        Err(TransportError::ServerRefused { sid: Some(s), .. }) if s == own
    ));
    PeerPolicy::allow_list().allow_sid(own).check(&ep, &seen_by_server).unwrap();
}

/// A process that does not exist (pids are multiples of 4; this one is far
/// beyond any Wine or Windows hands out) has no readable SID: its identity
/// has none, and every policy but `any` refuses it, as a server and as a
/// client would.
#[test]
fn a_failed_sid_lookup_is_refused() {
    let gone = 0x7fff_fff0;
    let e = process_sid(gone).expect_err("no such process");
    eprintln!("reading the SID of pid {gone}: {e}");
    let peer = process_identity(gone);
    assert_eq!((peer.pid, peer.sid), (Some(gone), None));
    let ep = Endpoint::pipe("failed-lookup").unwrap();
    assert!(matches!(
        PeerPolicy::default().check(&ep, &peer),
        Err(TransportError::PipePeerRefused { sid: None, pid: Some(p), .. }) if p == gone
    ));
    assert!(PeerPolicy::default().allow_sid(Sid::LOCAL_SYSTEM).check(&ep, &peer).is_err());
    assert!(matches!(check_server(None, &ep, &peer), Err(TransportError::ServerRefused { sid: None, .. })));
    assert!(PeerPolicy::any().check(&ep, &peer).is_ok(), "only `any` admits an unknown peer");
}

/// With `max_instances` 2, a third instance cannot be created (typed
/// `PipeFull`), a third client finds the pipe busy and, retrying with
/// `PipeRetry`, gets a typed `PipeBusy` naming the pipe at its deadline;
/// once an instance is closed, a new one can be created and a client
/// connects to it.
#[test]
fn instances_are_bounded_by_max_instances() {
    let name = name("bounded");
    let options = PipeOptions { max_instances: 2 };
    let a = create_pipe_instance(&name, true, &options).unwrap();
    let b = create_pipe_instance(&name, false, &options).unwrap();
    match create_pipe_instance(&name, false, &options) {
        Err(TransportError::PipeFull { pipe }) => assert_eq!(pipe, name),
        other => panic!("a third instance: expected PipeFull, got {other:?}"),
    }
    let ca = open_pipe_client(&name).unwrap();
    let _cb = open_pipe_client(&name).unwrap();
    let e = open_pipe_client(&name).expect_err("a third client finds every instance busy");
    assert_eq!(e.raw_os_error(), Some(wharf_transport::ERROR_PIPE_BUSY), "{e:?}");
    let mut retry = PipeRetry::new(Instant::now(), Duration::from_millis(200));
    let err = loop {
        match open_pipe_client(&name) {
            Ok(_) => panic!("connected although every instance is taken"),
            Err(e) => match retry.after_open_error(&name, e, Instant::now()) {
                Ok(pause) => std::thread::sleep(pause),
                Err(e) => break e,
            },
        }
    };
    match &err {
        TransportError::PipeBusy { pipe, waited } => {
            assert_eq!(pipe, &name);
            assert!(*waited >= Duration::from_millis(200), "gave up before the deadline: {waited:?}");
        }
        other => panic!("expected PipeBusy, got {other:?}"),
    }
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    // Free one instance: a new one can be created, and a client gets in.
    drop((a, ca));
    let _c = create_pipe_instance(&name, false, &options).expect("an instance was freed");
    open_pipe_client(&name).expect("a client connects to the new instance");
    drop(b);
}

#[test]
fn instance_limits_out_of_range_are_typed_errors() {
    for requested in [0, 255, 1000] {
        match create_pipe_instance(&name("limits"), true, &PipeOptions { max_instances: requested }) {
            Err(TransportError::InvalidPipeInstances { requested: r, pipe }) => {
                assert_eq!(r, requested);
                assert!(pipe.contains("limits"));
            }
            other => panic!("{requested}: expected InvalidPipeInstances, got {other:?}"),
        }
    }
    let unlimited =
        create_pipe_instance(&name("unlimited"), true, &PipeOptions { max_instances: PipeOptions::UNLIMITED });
    assert!(unlimited.is_ok(), "{unlimited:?}");
}

/// A client that found the pipe busy keeps trying through a moment when
/// the pipe is missing (its server restarting), until its deadline; one
/// that finds no pipe on its first try fails at once with `NotFound`.
#[test]
fn a_missing_pipe_is_retried_only_after_it_was_seen_busy() {
    let busy = || io::Error::from_raw_os_error(wharf_transport::ERROR_PIPE_BUSY);
    let missing = || io::Error::from(io::ErrorKind::NotFound);
    let name = r"\\.\pipe\restarting";
    let now = Instant::now();
    let mut fresh = PipeRetry::new(now, Duration::from_secs(5));
    assert!(matches!(fresh.after_open_error(name, missing(), now), Err(TransportError::NotFound { .. })));
    let mut waiting = PipeRetry::new(now, Duration::from_secs(5));
    assert!(waiting.after_open_error(name, busy(), now).is_ok());
    assert!(waiting.after_open_error(name, missing(), now).is_ok(), "a restart gap is waited through");
    let late = now + Duration::from_secs(5);
    assert!(matches!(waiting.after_open_error(name, missing(), late), Err(TransportError::NotFound { .. })));
    let mut waiting = PipeRetry::new(now, Duration::from_secs(5));
    assert!(waiting.after_open_error(name, busy(), now).is_ok());
    assert!(matches!(waiting.after_open_error(name, busy(), late), Err(TransportError::PipeBusy { .. })));
    let denied = io::Error::from(io::ErrorKind::PermissionDenied);
    assert!(matches!(waiting.after_open_error(name, denied, now), Err(TransportError::Io { .. })));
}
