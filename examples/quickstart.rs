//! The wharf quickstart: a server and a client in two processes.
//!
//! `cargo run --example quickstart` starts the server, which runs this same
//! program a second time as `quickstart client <endpoint>`. They talk over
//! a Unix socket (a named pipe on Windows) and each prints what it sees:
//! a typed call, an error reply, pub/sub, a server-streaming call and a
//! graceful close.

use serde::{Deserialize, Serialize};
use wharf::{CallOptions, Code, Context, Endpoint, Error, Router, Sender, SubscriptionEvent};

/// Requests and responses are plain serde types (postcard on the wire).
#[derive(Debug, Serialize, Deserialize)]
struct Order {
    item: String,
    quantity: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    order_id: u64,
    total_cents: u64,
}

/// Codes below 1000 belong to wharf; applications use 1000 and up.
const OUT_OF_STOCK: Code = Code(1001);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("client") => client(&args[2]).await,
        _ => server().await,
    }
}

async fn server() -> Result<()> {
    // Handlers share state with the rest of the program like any tokio
    // task: this channel tells the code below when the client subscribed.
    let (subscribed_tx, mut subscribed) = tokio::sync::mpsc::unbounded_channel();

    let router = Router::new()
        // A unary method: typed request in, typed response (or error) out.
        .unary("order", |order: Order, ctx: Context| async move {
            println!("[server] connection {} orders {order:?}", ctx.connection_id());
            if order.item == "unicorn" {
                return Err(Error::new(OUT_OF_STOCK, "no unicorns left"));
            }
            Ok(Receipt { order_id: 42, total_cents: 350 * u64::from(order.quantity) })
        })
        // A server-streaming method: send items, return to end the stream.
        .server_stream("countdown", |from: u32, _: Context, mut tx: Sender<u32>| async move {
            for n in (0..=from).rev() {
                tx.send(&n).await?;
            }
            Ok(())
        })
        // A notification: no reply.
        .notification("subscribed", move |(): (), _: Context| {
            let _ = subscribed_tx.send(());
            async {}
        });

    // A short name becomes a socket in the user's private runtime directory
    // (`$XDG_RUNTIME_DIR/wharf/` or `/tmp/wharf-<uid>/`), or a named pipe on
    // Windows. Clients connect with the same name.
    let endpoint = Endpoint::named("wharf-quickstart")?;
    let server = wharf::tokio::server()
        .router(router)
        .on_disconnect(|info, why| println!("[server] {:?} left: {why}", info.client_name))
        .bind(&endpoint)
        .await?;
    println!("[server] listening on {endpoint}");

    // Start the client: this same program, in a second process.
    let mut child =
        tokio::process::Command::new(std::env::current_exe()?).arg("client").arg(endpoint.to_string()).spawn()?;

    // Once the client has subscribed, publish to it through the broker;
    // then wait for the client process to finish.
    let news = [("news/weather", "sunny"), ("sport/chess", "not for you"), ("news/tech", "wharf 0.1")];
    let status = tokio::select! {
        status = child.wait() => status?, // the client ended early
        Some(()) = subscribed.recv() => {
            for (topic, headline) in news {
                let report = server.publish(topic, headline)?;
                println!("[server] published {topic:?} to {} subscription(s)", report.queued);
            }
            child.wait().await?
        }
    };
    server.shutdown("quickstart over", None).await;
    println!("[server] done (client {status})");
    if !status.success() {
        return Err("the client process failed".into());
    }
    Ok(())
}

async fn client(endpoint: &str) -> Result<()> {
    let client = wharf::tokio::client().name("quickstart-client").connect(endpoint).await?;
    println!("[client] connected as connection {}", client.connection_id());

    // 1. A typed call.
    let order = Order { item: "coffee".into(), quantity: 2 };
    let receipt: Receipt = client.call("order", &order).await?;
    println!("[client] got {receipt:?}");

    // 2. An error reply carries the application's code and message.
    let order = Order { item: "unicorn".into(), quantity: 1 };
    match client.call::<_, Receipt>("order", &order).await {
        Err(Error::Remote { code, message, .. }) if code == OUT_OF_STOCK => {
            println!("[client] order refused: {message} ({code})")
        }
        other => return Err(format!("expected OUT_OF_STOCK, got {other:?}").into()),
    }

    // 3. Pub/sub: subscribe to every topic starting with "news/".
    let mut news = client.subscribe_prefix::<String>("news/").await?;
    client.notify("subscribed", &()).await?;
    for _ in 0..2 {
        match news.next().await {
            Some(Ok(SubscriptionEvent::Message { topic, value })) => println!("[client] {topic}: {value}"),
            other => return Err(format!("expected a message, got {other:?}").into()),
        }
    }
    drop(news); // dropping a subscription unsubscribes

    // 4. A server-streaming call: the items arrive as they are sent.
    let mut countdown = client.server_stream::<_, u32>("countdown", &3u32, CallOptions::new()).await?;
    while let Some(n) = countdown.recv().await {
        println!("[client] countdown {}", n?);
    }

    // 5. A graceful close: calls in flight finish, then the connection ends.
    let end = client.close("bye").await;
    println!("[client] closed: {end}");
    Ok(())
}
