//! The pipe reactor against real named pipes (run under Wine in CI).
#![cfg(windows)]

use std::io::IoSlice;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_io::{AsyncRead, AsyncWrite};
use smol::io::{AsyncReadExt, AsyncWriteExt};
use wharf_pipe_reactor::{PipeListener, PipeStream, connect};
use wharf_transport::TransportError;

fn name(what: &str) -> String {
    format!(r"\\.\pipe\wharf-pipe-reactor-test-{}-{what}", std::process::id())
}

async fn sleep(pause: Duration) {
    smol::Timer::after(pause).await;
}

#[test]
fn clients_talk_both_ways_and_see_pids() {
    let name = name("talk");
    smol::block_on(async {
        let mut listener = PipeListener::bind(&name, &Default::default()).unwrap();
        let server = smol::spawn(async move {
            let mut sums = Vec::new();
            for _ in 0..3 {
                let (mut s, peer) = listener.accept().await.unwrap();
                assert_eq!(peer.pid, Some(std::process::id()));
                let mut len = [0u8; 4];
                s.read_exact(&mut len).await.unwrap();
                let mut body = vec![0; u32::from_le_bytes(len) as usize];
                s.read_exact(&mut body).await.unwrap();
                let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
                s.write_all(&sum.to_le_bytes()).await.unwrap();
                sums.push(sum);
            }
            sums
        });
        for size in [1usize, 70_000, 1 << 20] {
            let (mut c, peer) = connect(&name, Duration::from_secs(5), sleep).await.unwrap();
            assert_eq!(peer.pid, Some(std::process::id()));
            let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            // Header and body as one vectored write (gathered when small).
            let header = (size as u32).to_le_bytes();
            let mut sent = 0;
            while sent < 4 + size {
                let bufs = if sent < 4 {
                    vec![IoSlice::new(&header[sent..]), IoSlice::new(&body)]
                } else {
                    vec![IoSlice::new(&body[sent - 4..])]
                };
                sent +=
                    std::future::poll_fn(|cx| std::pin::Pin::new(&mut c).poll_write_vectored(cx, &bufs)).await.unwrap();
            }
            let mut sum = BytesMut::with_capacity(8);
            while sum.len() < 8 {
                let n = std::future::poll_fn(|cx| c.poll_read_buf(cx, &mut sum)).await.unwrap();
                assert!(n > 0, "end of stream before the answer");
            }
            let expected: u64 = body.iter().map(|&b| u64::from(b)).sum();
            assert_eq!(u64::from_le_bytes(sum[..8].try_into().unwrap()), expected, "size {size}");
        }
        assert_eq!(server.await.len(), 3);
    });
}

#[test]
fn end_of_stream_when_the_other_end_drops() {
    let name = name("eof");
    smol::block_on(async {
        let mut listener = PipeListener::bind(&name, &Default::default()).unwrap();
        let accept = smol::spawn(async move { listener.accept().await.unwrap().0 });
        let (c, _) = connect(&name, Duration::from_secs(5), sleep).await.unwrap();
        let mut s: PipeStream = accept.await;
        let mut c = c;
        c.write_all(b"last words").await.unwrap();
        drop(c);
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        let mut buf = [0u8; 1];
        assert_eq!(std::future::poll_fn(|cx| std::pin::Pin::new(&mut s).poll_read(cx, &mut buf)).await.unwrap(), 0);
    });
}

#[test]
fn busy_pipe_retried_until_the_deadline() {
    let name = name("busy");
    smol::block_on(async {
        // One instance, taken by the first client and never accepted: the
        // second finds every instance busy.
        let _listener = PipeListener::bind(&name, &Default::default()).unwrap();
        let _first = connect(&name, Duration::from_secs(5), sleep).await.unwrap();
        let start = Instant::now();
        match connect(&name, Duration::from_millis(200), sleep).await {
            Err(TransportError::PipeBusy { pipe, waited }) => {
                assert_eq!(pipe, name);
                assert!(waited >= Duration::from_millis(150), "{waited:?}");
                assert!(start.elapsed() < Duration::from_secs(5));
            }
            other => panic!("expected PipeBusy, got {:?}", other.map(|_| ())),
        }
    });
}

#[test]
fn missing_pipe_is_not_found() {
    let name = name("missing");
    smol::block_on(async {
        match connect(&name, Duration::from_secs(1), sleep).await {
            Err(TransportError::NotFound { endpoint, .. }) => assert_eq!(endpoint, format!("pipe:{name}")),
            other => panic!("expected NotFound, got {:?}", other.map(|_| ())),
        }
    });
}
