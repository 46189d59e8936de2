//! The floor: the least a server can do for the load tool's fan-out test, to put a limit beside
//! herald's and nchan's figures. It speaks just enough HTTP/1.1 for `benches/load.rs`:
//! `GET /sse?stream=…` (headers, then frames) and `POST /streams/{s}` (201). Each published
//! event is encoded once and broadcast; each subscriber's task writes everything queued for it
//! in one `write` call. No storage, no ids across restarts, no parsing beyond the request line —
//! deliberately not a server anyone should use.
//!
//! ```text
//! taskset -c 0 cargo bench --bench floor -- 127.0.0.1:7080
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

fn main() {
    let addr = std::env::args()
        .skip(1)
        .find(|a| a != "--bench")
        .unwrap_or_else(|| "127.0.0.1:7080".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(&addr).await.expect("bind");
        println!("floor listening on http://{addr}");
        let (events, _) = broadcast::channel::<Bytes>(4096);
        let ids = Arc::new(AtomicU64::new(0));
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let _ = socket.set_nodelay(true);
            tokio::spawn(connection(socket, events.clone(), ids.clone()));
        }
    });
}

/// Reads one request head (and, for a POST, its Content-Length body).
async fn request(socket: &mut TcpStream, buf: &mut BytesMut) -> Option<(String, Bytes)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                if socket.read_buf(buf).await.ok()? == 0 {
                    return None;
                }
            }
            let _ = buf.split_to(end + 4);
            let body = buf.split_to(length).freeze();
            return Some((head, body));
        }
        if socket.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

async fn connection(mut socket: TcpStream, events: broadcast::Sender<Bytes>, ids: Arc<AtomicU64>) {
    let mut buf = BytesMut::with_capacity(4096);
    while let Some((head, body)) = request(&mut socket, &mut buf).await {
        if head.starts_with("GET /sse") {
            let mut live = events.subscribe();
            let opening = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\nretry: 3000\n\n";
            if socket.write_all(opening).await.is_err() {
                return;
            }
            let mut out = BytesMut::with_capacity(16 * 1024);
            loop {
                match live.recv().await {
                    Ok(frame) => out.extend_from_slice(&frame),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
                // Everything else already queued goes out in the same write.
                while let Ok(frame) = live.try_recv() {
                    out.extend_from_slice(&frame);
                }
                if socket.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        } else if head.starts_with("POST ") {
            let id = ids.fetch_add(1, Ordering::Relaxed) + 1;
            let mut frame = format!("id: {id}\n").into_bytes();
            for line in String::from_utf8_lossy(&body).split('\n') {
                frame.extend_from_slice(b"data: ");
                frame.extend_from_slice(line.as_bytes());
                frame.push(b'\n');
            }
            frame.push(b'\n');
            let _ = events.send(Bytes::from(frame));
            let json = format!("{{\"id\":\"{id}\"}}");
            let answer = format!(
                "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
                json.len()
            );
            if socket.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        } else {
            let _ = socket
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    }
}
