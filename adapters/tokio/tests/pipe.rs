//! The tokio adapter over Windows named pipes (run under Wine in CI).
#![cfg(windows)]

use std::time::Duration;

use wharf_async::{Context, Error, Router, SubscriptionEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_pubsub_over_a_named_pipe() {
    let ep = format!("pipe:wharf-tokio-test-{}", std::process::id());
    let router = Router::new().unary("add", |(a, b): (i64, i64), _: Context| async move { Ok::<_, Error>(a + b) });
    let server = wharf_tokio::server().router(router).bind(ep.as_str()).await.unwrap();

    // A second server on the same name is refused (first-instance flag).
    // Wine does not enforce FILE_FLAG_FIRST_PIPE_INSTANCE, so only real
    // Windows can check this.
    if !under_wine() {
        assert!(wharf_tokio::server().bind(ep.as_str()).await.is_err());
    }

    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(wharf_tokio::connect(ep.as_str()).await.unwrap());
    }
    for (i, c) in clients.iter().enumerate() {
        let sum: i64 = c.call("add", &(i as i64, 1i64)).await.unwrap();
        assert_eq!(sum, i as i64 + 1);
        assert_eq!(c.peer().pid, Some(std::process::id()), "server pid from the kernel");
    }
    let mut sub = clients[0].subscribe::<u32>("t").await.unwrap();
    assert_eq!(server.publish("t", &7u32).unwrap().queued, 1);
    match tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap() {
        Some(Ok(SubscriptionEvent::Message { value, .. })) => assert_eq!(value, 7),
        other => panic!("{other:?}"),
    }
    server.shutdown("bye", Some(Duration::from_millis(10))).await;
    for c in &clients {
        assert_eq!(c.closed().await.reconnect_after(), Some(Duration::from_millis(10)));
    }
}

/// Whether this process runs under Wine (its ntdll exports `wine_get_version`).
fn under_wine() -> bool {
    use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};
    // SAFETY: both strings are NUL-terminated literals; ntdll is always
    // loaded, and a null module handle is checked before use.
    unsafe {
        let ntdll = GetModuleHandleA(c"ntdll.dll".as_ptr().cast());
        !ntdll.is_null() && GetProcAddress(ntdll, c"wine_get_version".as_ptr().cast()).is_some()
    }
}

/// The tokio adapter's pipe instances carry wharf's DACL (network logons
/// denied, the current user and SYSTEM only, protected), read back from the pipe through a client's
/// handle: the first instance and the ones created after each accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_instances_carry_the_owner_and_system_dacl() {
    let name = format!(r"\\.\pipe\wharf-tokio-dacl-{}", std::process::id());
    let server = wharf_tokio::server().bind(format!("pipe:{name}").as_str()).await.unwrap();
    let want = wharf_transport::pipe_security().unwrap().sddl().to_string();
    for _ in 0..3 {
        // Each open takes the waiting instance; the listener creates the next.
        let client = wharf_transport::open_pipe_client(&name).unwrap();
        let got = wharf_transport::dacl_sddl(&client).unwrap();
        assert!(got.starts_with("D:P"), "{got}");
        assert_eq!(got.matches('(').count(), 3, "{got} (wanted {want})");
        assert!(got.contains("(D;;GA;;;NU)"), "{got}");
        assert!(got.contains(";;;SY)"), "{got}");
        let user = want.rsplit(";;;").next().unwrap();
        assert!(got.contains(&format!(";;;{user}")), "{got}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.abort().await;
}
