//! A wharf service embedded in a tokio application, with graceful shutdown.
//!
//! The application has work of its own (a periodic task). The wharf server
//! runs alongside it with a few handlers and an auth hook, and a client
//! (in this process, standing in for another program) calls it. On Ctrl-C
//! the application shuts the service down gracefully: the server stops
//! accepting, tells every client to reconnect in 2 s, lets the calls in
//! flight finish, and only then does the application exit.
//!
//! `cargo run --example tokio_service` runs until Ctrl-C;
//! `cargo run --example tokio_service -- --autostop` (or with the
//! environment variable `WHARF_EXAMPLE_AUTOSTOP` set) stops by itself
//! after a second, as if Ctrl-C had been pressed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wharf::{AuthReject, AuthRequest, Context, Endpoint, Error, Router};

/// What clients must present in the handshake.
const TOKEN: &str = "let-me-in";

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    id: u32,
    work_ms: u64,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Result<()> {
    let autostop = std::env::var_os("WHARF_EXAMPLE_AUTOSTOP").is_some() || std::env::args().any(|a| a == "--autostop");

    // The application's own work goes on whatever the service does.
    let housekeeping = tokio::spawn(async {
        let mut interval = tokio::time::interval(Duration::from_millis(500));
        for round in 1.. {
            interval.tick().await;
            println!("[app] housekeeping, round {round}");
        }
    });

    // The service: handlers are async closures; state they share is
    // captured like in any tokio task.
    let jobs_done = Arc::new(AtomicU32::new(0));
    let done = jobs_done.clone();
    let router = Router::new()
        .unary("hello", |name: String, ctx: Context| async move {
            Ok::<_, Error>(format!("hello {name}, you are connection {}", ctx.connection_id()))
        })
        .unary("run_job", move |job: Job, _: Context| {
            let done = done.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(job.work_ms)).await;
                println!("[service] finished job {}", job.id);
                done.fetch_add(1, Ordering::Relaxed);
                Ok::<_, Error>(format!("job {} done", job.id))
            }
        });
    let server = wharf::tokio::server()
        .router(router)
        // The auth hook sees the client's token and its kernel-checked
        // identity (uid, pid) and decides whether it may connect.
        .auth(|req: AuthRequest| async move {
            if req.auth == TOKEN {
                Ok(())
            } else {
                println!("[service] refusing {:?} (pid {:?}): bad token", req.client_name, req.peer.pid);
                Err(AuthReject::new("unknown token"))
            }
        })
        .on_connect(|info| println!("[service] {:?} connected as connection {}", info.client_name, info.connection_id))
        .on_disconnect(|info, why| println!("[service] {:?} left: {why}", info.client_name))
        .bind(Endpoint::named("wharf-tokio-service")?)
        .await?;
    println!("[app] service listening on {}", server.endpoint());

    let client = tokio::spawn(client(server.endpoint().clone()));

    if autostop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!("[app] autostop: acting as if Ctrl-C was pressed");
    } else {
        println!("[app] press Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
        println!("[app] Ctrl-C");
    }

    // Graceful shutdown: new connections are refused, clients are told to
    // come back in 2 s, calls in flight finish (each connection waits at
    // most the config's `close_timeout`), then every connection ends.
    println!("[app] shutting down the service");
    let start = Instant::now();
    server.shutdown("maintenance", Some(Duration::from_secs(2))).await;
    println!(
        "[app] service stopped in {} ms after {} job(s)",
        start.elapsed().as_millis(),
        jobs_done.load(Ordering::Relaxed)
    );
    housekeeping.abort();
    client.await??;
    Ok(())
}

/// Another program using the service.
async fn client(endpoint: Endpoint) -> Result<()> {
    // Without the right token the handshake is rejected.
    match wharf::tokio::client().name("intruder").auth("guess").connect(&endpoint).await {
        Err(e) => println!("[client] intruder turned away: {e}"),
        Ok(_) => return Err("the intruder got in".into()),
    }

    let client = wharf::tokio::client().name("worker").auth(TOKEN).connect(&endpoint).await?;
    let greeting: String = client.call("hello", "worker").await?;
    println!("[client] {greeting}");

    // Submit jobs one after another until the service says goodbye. The
    // job in flight when it does still completes.
    let mut id = 0;
    while client.goodbye().is_none() && !client.is_closed() {
        id += 1;
        match client.call::<_, String>("run_job", &Job { id, work_ms: 400 }).await {
            Ok(reply) => println!("[client] {reply}"),
            Err(e) => println!("[client] job {id} failed: {e}"),
        }
    }
    if let Some(goodbye) = client.goodbye() {
        println!("[client] the service is closing: {:?} ({})", goodbye.message, goodbye.code);
    }

    // What the connection ended with, and when to come back.
    let end = client.closed().await;
    println!("[client] connection closed: {end}");
    match end.reconnect_after() {
        Some(after) => println!("[client] the service asks to reconnect after {after:?}"),
        None => println!("[client] no reconnect hint"),
    }
    Ok(())
}
