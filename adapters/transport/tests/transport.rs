//! wharf-transport against the real OS: files, modes, locks, sockets.

use std::time::{Duration, Instant};

use wharf_transport::{Endpoint, PipeRetry, TcpOptions, TransportError, bind_tcp};

#[test]
fn endpoint_strings_round_trip() {
    for s in ["unix:/run/app.sock", "tcp:127.0.0.1:4000", r"pipe:\\.\pipe\app"] {
        let e: Endpoint = s.parse().unwrap();
        assert_eq!(e.to_string(), s);
    }
    assert_eq!(Endpoint::parse("pipe:app").unwrap(), Endpoint::Pipe(r"\\.\pipe\app".into()));
    assert_eq!(Endpoint::parse("./rel/app.sock").unwrap(), Endpoint::unix("./rel/app.sock"));
    assert!(matches!(Endpoint::parse("tcp:nohost"), Err(TransportError::InvalidName { .. })));
    assert!(matches!(Endpoint::parse("unix:"), Err(TransportError::InvalidName { .. })));
}

#[test]
fn short_names_are_validated() {
    for bad in ["", ".hidden", "a/b", "white space", &"x".repeat(65)] {
        assert!(matches!(Endpoint::named(bad), Err(TransportError::InvalidName { .. })), "{bad:?} accepted");
    }
    assert!(Endpoint::pipe(&"p".repeat(300)).is_err());
    assert!(Endpoint::pipe(r"a\b").is_err());
}

#[cfg(unix)]
#[test]
fn named_endpoint_lives_in_the_private_runtime_dir() {
    let e = Endpoint::named("my-app").unwrap();
    let Endpoint::Unix(path) = e else { panic!("not a unix endpoint: {e:?}") };
    assert_eq!(path.parent().unwrap(), wharf_transport::runtime_dir().unwrap());
    assert!(path.ends_with("my-app.sock"));
    assert!(path.as_os_str().len() < wharf_transport::SUN_PATH_LEN);
}

#[test]
fn busy_pipe_retry_never_passes_the_deadline() {
    let t0 = Instant::now();
    let mut r = PipeRetry::new(t0, Duration::from_millis(100));
    let mut now = t0;
    let mut total = Duration::ZERO;
    while let Some(d) = r.next_delay(now) {
        assert!(d > Duration::ZERO && d <= Duration::from_millis(50));
        now += d;
        total += d;
    }
    assert_eq!(total, Duration::from_millis(100));
    assert_eq!(r.waited(now), Duration::from_millis(100));
}

#[test]
fn tcp_refuses_non_loopback_unless_allowed() {
    match bind_tcp("0.0.0.0:0", &TcpOptions::default()) {
        Err(TransportError::NonLoopback { addr }) => assert!(addr.ip().is_unspecified()),
        other => panic!("expected NonLoopback, got {other:?}"),
    }
    let l = bind_tcp("127.0.0.1:0", &TcpOptions::default()).unwrap();
    assert!(l.local_addr().unwrap().ip().is_loopback());
    let l = bind_tcp("0.0.0.0:0", &TcpOptions { allow_remote: true }).unwrap();
    assert!(l.local_addr().unwrap().ip().is_unspecified());
}

#[test]
fn remote_tcp_servers_need_an_auth_hook() {
    use wharf_transport::require_auth_for_remote;
    match require_auth_for_remote(&Endpoint::tcp("0.0.0.0:0"), false) {
        Err(e @ TransportError::RemoteWithoutAuth { .. }) => {
            assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
            assert!(e.to_string().contains("0.0.0.0"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(require_auth_for_remote(&Endpoint::tcp("0.0.0.0:0"), true).is_ok());
    assert!(require_auth_for_remote(&Endpoint::tcp("127.0.0.1:0"), false).is_ok());
    assert!(require_auth_for_remote(&Endpoint::tcp("[::1]:0"), false).is_ok());
    assert!(require_auth_for_remote(&Endpoint::unix("/tmp/x.sock"), false).is_ok());
}

#[cfg(unix)]
mod unix {
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt, symlink};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::PathBuf;

    use wharf_transport::{TransportError, UnixBindOptions, bind_unix, check_unix_path, lock_path, peer_credentials};

    fn dir() -> tempfile::TempDir {
        let d = tempfile::Builder::new().prefix("wt").tempdir_in("/tmp").unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    /// A server that stopped accepting, with its listen backlog full: a
    /// blocking connect would wait without bound; `connect_unix_within`
    /// gives up at its deadline with a timeout naming the path, and
    /// connects once the server takes a connection off the backlog.
    #[test]
    fn a_full_backlog_times_out_at_the_deadline_then_connects() {
        use std::time::{Duration, Instant};
        let d = dir();
        let path = d.path().join("full.sock");
        let options = UnixBindOptions { backlog: 2, ..UnixBindOptions::default() };
        let (listener, _guard) = bind_unix(&path, &options).unwrap();
        // Fill the backlog: non-blocking connects until one is refused
        // with EAGAIN.
        let mut held = Vec::new();
        loop {
            match wharf_transport::connect_unix_within(&path, Duration::ZERO) {
                Ok(s) => held.push(s),
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
                    break;
                }
            }
            assert!(held.len() < 64, "the backlog of 2 never filled");
        }
        let t = Instant::now();
        let e = wharf_transport::connect_unix_within(&path, Duration::from_millis(300)).unwrap_err();
        let waited = t.elapsed();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(e.to_string().contains("full.sock"), "the error names the path: {e}");
        assert!(waited >= Duration::from_millis(300), "gave up early, after {waited:?}");
        // Room again: the server accepts one.
        let (_accepted, _) = listener.accept().unwrap();
        let s = wharf_transport::connect_unix_within(&path, Duration::from_secs(10)).unwrap();
        assert!(s.peer_addr().is_ok(), "connected");
        drop(held);
    }

    #[test]
    fn too_long_path_names_path_and_limit() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
        match check_unix_path(&long) {
            Err(e @ TransportError::PathTooLong { .. }) => {
                let TransportError::PathTooLong { len, limit, .. } = &e else { unreachable!() };
                assert_eq!(*len, 205);
                assert_eq!(*limit, wharf_transport::SUN_PATH_LEN);
                let msg = e.to_string();
                assert!(msg.contains("xxxx") && msg.contains(&limit.to_string()), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(bind_unix(&long, &UnixBindOptions::default()), Err(TransportError::PathTooLong { .. })));
    }

    #[test]
    fn abstract_namespace_names_are_refused() {
        for bad in ["unix:@wharf", "@wharf"] {
            let e = wharf_transport::Endpoint::parse(bad).and_then(|e| e.validate().map(|()| e));
            assert!(matches!(e, Err(TransportError::InvalidName { .. })), "{bad:?}: {e:?}");
        }
        for bad in ["\0wharf", "/tmp/a\0b"] {
            let p = PathBuf::from(bad);
            match bind_unix(&p, &UnixBindOptions::default()) {
                Err(TransportError::InvalidName { reason, .. }) => assert!(reason.contains("abstract"), "{reason}"),
                other => panic!("{bad:?}: {other:?}"),
            }
            assert!(matches!(check_unix_path(&p), Err(TransportError::InvalidName { .. })));
        }
        // A file really named `@x` is still reachable by a path that does
        // not start with '@'.
        assert!(check_unix_path(std::path::Path::new("./@x")).is_ok());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn fd_passing_is_off_descriptors_sent_to_us_are_never_installed() {
        use std::io::IoSlice;
        use std::mem::MaybeUninit;
        use std::os::fd::AsFd;

        use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};

        // A file only this test opens, to count the descriptors naming it.
        let f = tempfile::NamedTempFile::new().unwrap();
        let target = fs::canonicalize(f.path()).unwrap();
        let open_copies = || {
            fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .filter(|l| *l == target)
                .count()
        };
        assert_eq!(open_copies(), 1);
        let (a, b) = UnixStream::pair().unwrap();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [f.as_file().as_fd()];
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        sendmsg(&a, &[IoSlice::new(b"frame")], &mut control, SendFlags::empty()).unwrap();
        // wharf reads with plain recv: no control buffer, so the kernel
        // discards the descriptor instead of installing it in our table.
        let mut buf = bytes::BytesMut::new();
        assert_eq!(wharf_transport::recv_buf(&b, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..], b"frame");
        assert_eq!(open_copies(), 1, "a descriptor passed over the socket was installed");
    }

    #[test]
    fn socket_is_0600_as_soon_as_bind_returns_and_is_removed_on_drop() {
        let d = dir();
        let p = d.path().join("s.sock");
        let (listener, guard) = bind_unix(&p, &UnixBindOptions::default()).unwrap();
        let meta = fs::symlink_metadata(&p).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let _c = UnixStream::connect(&p).unwrap();
        let (_s, _) = listener.accept().unwrap();
        drop(listener);
        drop(guard);
        assert!(!p.exists(), "socket file left behind");
    }

    #[test]
    fn a_live_server_is_never_displaced() {
        let d = dir();
        let p = d.path().join("live.sock");
        // A live server that is not wharf (no lock file held).
        let _other = UnixListener::bind(&p).unwrap();
        match bind_unix(&p, &UnixBindOptions::default()) {
            Err(TransportError::AddrInUse { path }) => assert_eq!(path, p),
            other => panic!("{other:?}"),
        }
        assert!(UnixStream::connect(&p).is_ok(), "the live server lost its socket");
    }

    #[test]
    fn two_servers_exactly_one_wins_via_the_lock() {
        let d = dir();
        let p = d.path().join("race.sock");
        let first = bind_unix(&p, &UnixBindOptions::default()).unwrap();
        match bind_unix(&p, &UnixBindOptions::default()) {
            Err(TransportError::Locked { lock, .. }) => assert_eq!(lock, lock_path(&p)),
            other => panic!("{other:?}"),
        }
        drop(first);
        // Once released, the next server binds.
        let _second = bind_unix(&p, &UnixBindOptions::default()).unwrap();
    }

    #[test]
    fn concurrent_binds_from_threads_exactly_one_wins() {
        let d = dir();
        let p = d.path().join("many.sock");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (p, b) = (p.clone(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    bind_unix(&p, &UnixBindOptions::default())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "{results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(matches!(e, TransportError::Locked { .. } | TransportError::AddrInUse { .. }), "{e:?}");
            }
        }
    }

    #[test]
    fn stale_socket_from_a_dead_server_is_reclaimed() {
        let d = dir();
        let p = d.path().join("stale.sock");
        drop(UnixListener::bind(&p).unwrap()); // std leaves the file behind
        assert!(p.exists());
        let (_l, _g) = bind_unix(&p, &UnixBindOptions::default()).unwrap();
        assert!(UnixStream::connect(&p).is_ok());
        // Without reclaim, the same situation is refused.
        let p2 = d.path().join("stale2.sock");
        drop(UnixListener::bind(&p2).unwrap());
        let opts = UnixBindOptions { reclaim_stale: false, ..Default::default() };
        assert!(matches!(bind_unix(&p2, &opts), Err(TransportError::AddrInUse { .. })));
    }

    #[test]
    fn something_that_is_not_a_socket_is_left_alone() {
        let d = dir();
        let p = d.path().join("file.sock");
        fs::write(&p, b"precious").unwrap();
        assert!(matches!(bind_unix(&p, &UnixBindOptions::default()), Err(TransportError::NotASocket { .. })));
        assert_eq!(fs::read(&p).unwrap(), b"precious");
    }

    #[test]
    fn unsafe_directories_are_refused() {
        let d = dir();
        let open = d.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            bind_unix(&open.join("s.sock"), &UnixBindOptions::default()),
            Err(TransportError::UnsafeDirectory { .. })
        ));
        let link = d.path().join("link");
        symlink(d.path(), &link).unwrap();
        assert!(matches!(
            bind_unix(&link.join("s.sock"), &UnixBindOptions::default()),
            Err(TransportError::UnsafeDirectory { .. })
        ));
        // A missing parent is created private.
        let fresh = d.path().join("fresh");
        let (_l, _g) = bind_unix(&fresh.join("s.sock"), &UnixBindOptions::default()).unwrap();
        assert_eq!(fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_directory_owned_by_another_user_is_refused() {
        use std::os::unix::fs::MetadataExt;
        let d = dir();
        let foreign = d.path().join("foreign");
        fs::create_dir(&foreign).unwrap();
        fs::set_permissions(&foreign, fs::Permissions::from_mode(0o700)).unwrap();
        if let Err(e) = std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)) {
            println!("SKIPPED a_directory_owned_by_another_user_is_refused: cannot chown (not root?): {e}");
            return;
        }
        assert_eq!(fs::metadata(&foreign).unwrap().uid(), 65534);
        match bind_unix(&foreign.join("s.sock"), &UnixBindOptions::default()) {
            Err(TransportError::UnsafeDirectory { path, reason }) => {
                assert_eq!(path, foreign);
                assert!(reason.contains("65534"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!foreign.join("s.sock").exists());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_umask_is_never_touched_while_other_threads_create_files() {
        let umask = || {
            let status = fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("Umask:")).expect("Umask in /proc/self/status");
            u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
        };
        let before = umask();
        let d = dir();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (files, stop2) = (d.path().join("files"), stop.clone());
        fs::create_dir(&files).unwrap();
        let creator = std::thread::spawn(move || {
            let mut modes = Vec::new();
            let mut i = 0;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) || i < 50 {
                let p = files.join(i.to_string());
                fs::write(&p, b"x").unwrap();
                modes.push(fs::metadata(&p).unwrap().permissions().mode() & 0o777);
                i += 1;
            }
            modes
        });
        for i in 0..50 {
            let p = d.path().join(format!("{i}.sock"));
            let (_l, _g) = bind_unix(&p, &UnixBindOptions::default()).unwrap();
            assert_eq!(fs::symlink_metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let modes = creator.join().unwrap();
        // Every file the other thread created got the process umask, never
        // one a bind had swapped in.
        assert!(modes.iter().all(|m| *m == 0o666 & !before), "modes {modes:?} with umask {before:o}");
        assert_eq!(umask(), before);
    }

    #[test]
    fn drop_does_not_remove_a_successors_socket() {
        let d = dir();
        let p = d.path().join("succ.sock");
        let (l, g) = bind_unix(&p, &UnixBindOptions::default()).unwrap();
        drop(l);
        fs::remove_file(&p).unwrap();
        let _other = UnixListener::bind(&p).unwrap();
        drop(g);
        assert!(p.exists(), "the guard removed a file it did not create");
    }

    #[test]
    fn peer_credentials_come_from_the_kernel() {
        let (a, _b) = UnixStream::pair().unwrap();
        let who = peer_credentials(&a).unwrap();
        assert_eq!(who.uid, Some(rustix_uid()));
        #[cfg(target_os = "linux")]
        assert_eq!(who.pid, Some(std::process::id()));
    }

    fn rustix_uid() -> u32 {
        // Compare with the uid std reports for a file we create.
        use std::os::unix::fs::MetadataExt;
        let f = tempfile::NamedTempFile::new().unwrap();
        fs::metadata(f.path()).unwrap().uid()
    }
}

#[cfg(unix)]
#[test]
fn the_lock_file_goes_away_with_the_server_and_binds_still_exclude_each_other() {
    let d = tempfile::Builder::new().prefix("wt").tempdir_in("/tmp").unwrap();
    let p = d.path().join("l.sock");
    let lock = wharf_transport::lock_path(&p);
    for _ in 0..3 {
        let first = wharf_transport::bind_unix(&p, &Default::default()).unwrap();
        assert!(lock.exists());
        assert!(matches!(wharf_transport::bind_unix(&p, &Default::default()), Err(TransportError::Locked { .. })));
        drop(first);
        assert!(!lock.exists(), "lock file left behind");
        assert!(!p.exists(), "socket file left behind");
    }
}
