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
