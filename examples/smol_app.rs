//! wharf embedded in a smol application: a server and a client in one
//! program, on an executor the application runs itself.
//!
//! The application owns a `smol::Executor` and runs it on two threads;
//! `wharf::smol::backend_on` makes wharf spawn its connection tasks there,
//! so no executor thread of smol's own is started. The server resizes
//! "images" (a typed call, an error reply) and reports progress of a batch
//! as a server stream; the client uses both, then the server shuts down
//! gracefully and the program exits.
//!
//! `cargo run --example smol_app` (the examples turn the `smol` feature on).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wharf::{CallOptions, ClientBuilder, Code, Context, Endpoint, Error, Router, Sender, ServerBuilder};

#[derive(Debug, Serialize, Deserialize)]
struct Resize {
    name: String,
    width: u32,
    height: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Resized {
    name: String,
    pixels: u64,
}

/// The application's error code for a size it refuses.
const TOO_BIG: Code = Code(1001);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Result<()> {
    // The application's executor: this thread runs it inside `block_on`,
    // and so does one more thread until the application is done.
    let executor = Arc::new(smol::Executor::new());
    let (done, finished) = smol::channel::bounded::<()>(1);
    let helper = {
        let executor = executor.clone();
        // Runs until `done` is dropped (the receive then fails).
        std::thread::spawn(move || {
            let _ = smol::block_on(executor.run(finished.recv()));
        })
    };
    let result = smol::block_on(executor.run(app(wharf::smol::backend_on(&executor))));
    drop(done);
    helper.join().map_err(|_| "the executor thread panicked")?;
    result
}

async fn app(backend: wharf::Backend) -> Result<()> {
    let router = Router::new()
        .unary("resize", |req: Resize, _: Context| async move {
            if req.width > 10_000 || req.height > 10_000 {
                return Err(Error::new(TOO_BIG, format!("{} is too big", req.name)));
            }
            smol::Timer::after(Duration::from_millis(10)).await; // the "work"
            Ok(Resized { name: req.name, pixels: u64::from(req.width) * u64::from(req.height) })
        })
        .server_stream("batch", |count: u32, _: Context, mut progress: Sender<u32>| async move {
            for done in 1..=count {
                smol::Timer::after(Duration::from_millis(5)).await;
                progress.send(&(done * 100 / count)).await?;
            }
            Ok(())
        });

    // A short name: a socket in the user's private runtime directory, or a
    // named pipe on Windows (served by the pipe reactor).
    let endpoint = Endpoint::named("wharf-smol-app")?;
    let server = ServerBuilder::new(backend.clone())
        .router(router)
        .on_disconnect(|info, why| println!("[server] {:?} left: {why}", info.client_name))
        .bind(&endpoint)
        .await?;
    println!("[server] listening on {endpoint}");

    let client = ClientBuilder::new(backend).name("smol-app").connect(&endpoint).await?;
    println!("[client] connected as connection {}", client.connection_id());

    let thumb: Resized = client.call("resize", &Resize { name: "cat.png".into(), width: 64, height: 48 }).await?;
    println!("[client] resized {} to {} pixels", thumb.name, thumb.pixels);

    match client.call::<_, Resized>("resize", &Resize { name: "sky.png".into(), width: 99_999, height: 2 }).await {
        Err(Error::Remote { code, message, .. }) if code == TOO_BIG => println!("[client] refused: {message}"),
        other => return Err(format!("expected TOO_BIG, got {other:?}").into()),
    }

    let mut progress = client.server_stream::<_, u32>("batch", &4u32, CallOptions::new()).await?;
    while let Some(percent) = progress.recv().await {
        println!("[client] batch {}% done", percent?);
    }

    let end = client.close("finished").await;
    println!("[client] closed: {end}");
    server.shutdown("application exiting", None).await;
    println!("[server] shut down");
    Ok(())
}
