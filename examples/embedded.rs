//! An app that embeds herald: its own warp routes, and herald's API mounted under `/herald` in
//! the same server, with every layer the `herald` binary gives its routes (the client's address
//! for the per-address cap, request ids, CORS, body limits). The app also publishes straight
//! through the broker, with no HTTP in between.
//!
//! ```text
//! cargo run --example embedded            # listens on 127.0.0.1:3000 (PORT to change)
//! curl -N 'localhost:3000/herald/sse?stream=orders' &
//! curl -X POST localhost:3000/orders/42   # the app's own route; it publishes to `orders`
//! curl -X POST localhost:3000/herald/streams/orders -d 'straight to herald'
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use herald::broker::event::{NewEvent, StreamName};
use herald::broker::{Broker, BrokerOptions};
use herald::http::{embed, Api, HttpOptions};
use warp::Filter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    // In memory here; `Storage::Disk { .. }` keeps the log across restarts, as `herald` does.
    let broker = Broker::open(BrokerOptions::default())?;
    let options = HttpOptions {
        max_connections_per_ip: Some(20),
        cors_origins: vec!["http://localhost:8000".into()],
        ..HttpOptions::default()
    };
    let (api, shutdown) = Api::new(broker.clone(), options);

    // The app's own routes.
    let hello = warp::path::end().map(|| "the app; herald is under /herald\n");
    let order = {
        let broker = broker.clone();
        warp::path!("orders" / u64)
            .and(warp::post())
            .then(move |id: u64| {
                let broker = broker.clone();
                async move {
                    let event = NewEvent {
                        stream: StreamName::new("orders").expect("a valid name"),
                        kind: None,
                        data: format!(r#"{{"order":{id},"status":"paid"}}"#),
                    };
                    match broker.publish(event).await {
                        Ok(event) => format!("order {id} published as event {}\n", event.id),
                        Err(e) => format!("could not publish: {e}\n"),
                    }
                }
            })
    };
    let app = hello
        .or(order)
        .or(warp::path("herald").and(embed(api)))
        .with(warp::log("app"));

    let port = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("the app listens on http://{}", listener.local_addr()?);
    warp::serve(app)
        .incoming(listener)
        .graceful(async move {
            let _ = tokio::signal::ctrl_c().await;
            // Tell every SSE client when to come back, then let the server drain.
            shutdown.trigger();
            tokio::time::sleep(Duration::from_millis(100)).await;
        })
        .run()
        .await;
    broker.close().await;
    Ok(())
}
