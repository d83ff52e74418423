//! wharf embedded in an async-std application: a server and a client in one
//! program, on async-std's own executor.
//!
//! A sensor task of the application publishes temperature readings through
//! the server's broker; a dashboard client subscribes to them by prefix and
//! also answers a call *from* the server (peer mode: the server asks the
//! dashboard for its alarm threshold). Then the server shuts down with a
//! reconnect hint, which the client is told, and the program exits.
//!
//! `cargo run --example async_std_app` (the examples turn the `async-std`
//! feature on).

use std::time::Duration;

use wharf::{Context, Endpoint, Error, Router, SubscriptionEvent};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const ROOMS: [&str; 2] = ["temp/lab", "temp/server-room"];

fn main() -> Result<()> {
    async_std::task::block_on(app())
}

async fn app() -> Result<()> {
    let endpoint = Endpoint::named("wharf-async-std-app")?;
    let server = wharf::async_std::server()
        .on_connect(|info| println!("[server] {:?} connected", info.client_name))
        .bind(&endpoint)
        .await?;
    println!("[server] listening on {endpoint}");

    // The dashboard answers calls from the server as well as making its own.
    let answers = Router::new().unary("alarm_threshold", |room: String, _: Context| async move {
        Ok::<_, Error>(if room.ends_with("server-room") { 27.5f32 } else { 30.0 })
    });
    let dashboard = wharf::async_std::client().name("dashboard").router(answers).connect(&endpoint).await?;
    let mut readings = dashboard.subscribe_prefix::<f32>("temp/").await?;

    // Peer mode: the server calls the client it just accepted.
    let session = server.session(dashboard.connection_id()).ok_or("the server lost the dashboard")?;
    let threshold: f32 = session.call("alarm_threshold", ROOMS[1]).await?;
    println!("[server] the dashboard alarms above {threshold} °C in the server room");

    // The application's sensor task publishes through the server's broker.
    let sensors = {
        let server = server.clone();
        async_std::task::spawn(async move {
            for i in 0..3u8 {
                for room in ROOMS {
                    let reading = 24.0 + f32::from(i) * 2.0;
                    server.publish(room, &reading)?;
                }
                async_std::task::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, Error>(())
        })
    };

    for _ in 0..ROOMS.len() * 3 {
        match readings.next().await {
            Some(Ok(SubscriptionEvent::Message { topic, value })) => {
                let alarm = if topic.ends_with("server-room") && value > threshold { "  ALARM" } else { "" };
                println!("[dashboard] {topic}: {value} °C{alarm}");
            }
            other => return Err(format!("expected a reading, got {other:?}").into()),
        }
    }
    sensors.await?;

    server.shutdown("maintenance", Some(Duration::from_secs(30))).await;
    let goodbye = dashboard.goodbye().ok_or("the dashboard was not told why the server left")?;
    println!(
        "[dashboard] server left: {} (reconnect after {:?})",
        goodbye.message,
        goodbye.reconnect_after.unwrap_or_default()
    );
    Ok(())
}
