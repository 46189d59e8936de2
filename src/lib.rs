//! # herald
//!
//! Durable Server-Sent Events streams in one process: apps `POST` events, browsers subscribe with
//! `EventSource`, and a browser that reconnects with `Last-Event-ID` gets exactly what it missed.
//! It replaces the "async web process + Redis Streams + glue" stack.
//!
//! ## Where an event goes
//! ```text
//! POST /streams/a ─► http::publish ─► Broker::publish ─► Engine::append ─► committed (sled, fsync)
//!                                                                              │
//!                                        the engine's tail (committed records) ◄┘
//!                                                     │
//!                     tailer: raise the watermark, then fanout (broadcast channel per topic)
//!                                                     │
//! GET /sse?stream=a ◄── http::sse ◄── Subscription (catch up from the engine, then live) ◄┘
//! ```
//!
//! ## Modules
//! - [`broker`] — the core, with no HTTP in it: [`broker::event`] (names, ids, SSE encoding),
//!   [`broker::engine`] (the boundary every log implements, its contract suite, and the local
//!   engine on sled or memory: the writer's group commit, seals, deletes, retention), the node's
//!   tailer (what was committed → watermark and live channels), [`broker::fanout`] (live
//!   channels), [`broker::subscription`] (catch-up + live), [`broker::presence`] (who is online).
//! - [`http`] — warp filters, one file per surface, and the one JSON error type; who may publish
//!   and read ([`http::auth`]), subscription caps ([`http::limits`]), and the accept loop that
//!   serves them ([`http::listener`]).
//! - [`config`] — flags and environment variables into one [`config::Config`].
//! - [`server`] — `herald serve`: listen, shut down cleanly.
//! - [`cli`] — `herald publish`, `subscribe` and `relay`: clients of the HTTP API.
//! - [`demo`] — `--demo`: the timer publisher behind `/demo/timer`.
//!
//! ## Embedding
//! ```no_run
//! use warp::Filter;
//! use herald::broker::{Broker, BrokerOptions, StartAt, Delivery};
//! use herald::broker::event::{NewEvent, StreamName};
//! use herald::broker::presence::ClientId;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = Broker::open(BrokerOptions::default())?; // in memory
//! let room = StreamName::new("room")?;
//! let mut sub = broker.subscribe(vec![room.clone()], StartAt::After(Default::default()));
//! broker.publish(NewEvent { stream: room.clone(), kind: None, data: "hello".into() }).await?;
//! if let Some(Ok(Delivery::Event(event))) = sub.next().await {
//!     assert_eq!(event.data, "hello");
//! }
//! // Presence: alice is a member of the room until the guard is dropped (plus the grace period).
//! let alice = broker.presence().clone().connect(&[room.clone()], ClientId::new("alice")?);
//! assert_eq!(broker.presence().online(&room).await?, 1);
//! drop(alice);
//! // Sealing: subscribers get `Delivery::Closed`, then their subscription ends.
//! broker.seal(&room).await?;
//! assert!(matches!(sub.next().await, Some(Ok(Delivery::Closed(_)))));
//! assert!(sub.next().await.is_none());
//! // Any engine can be served: `Broker::on_engine(Arc<dyn Engine>, NodeOptions)`.
//! // Serve the same broker over HTTP beside your own warp routes, with the layers the binary
//! // gives them (client address, request ids, CORS); see examples/embedded.rs:
//! let (api, _shutdown) = herald::http::Api::new(broker.clone(), Default::default());
//! let herald_api = warp::path("herald").and(herald::http::embed(api));
//! # let _ = herald_api;
//! # Ok(()) }
//! ```

pub mod broker;
pub mod cli;
pub mod config;
pub mod demo;
pub mod http;
pub mod server;

pub use broker::{Broker, BrokerOptions};
