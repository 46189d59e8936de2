//! Load tool: drives herald (or nginx+nchan, the reference peer) over real HTTP and reports
//! medians and tails. Run the server pinned to one core and this tool to the other:
//!
//! ```text
//! taskset -c 0 target/release/herald --data /tmp/bench &
//! taskset -c 1 cargo bench --bench load -- publish --connections 16 --seconds 10
//! taskset -c 1 cargo bench --bench load -- latency --subscribers 200 --rate 250 --server-pid PID
//! ```
//! `--target nchan --url http://127.0.0.1:8090` speaks nchan's `/pub/{channel}` and
//! `/sub/{channel}` instead. See BENCHMARKS.md for the figures and the nchan configuration.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use eventsource_stream::Eventsource;
use futures::StreamExt;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Target {
    Herald,
    Nchan,
}

#[derive(Subcommand)]
enum Mode {
    /// Single-event POSTs on N keep-alive connections, as fast as answers come.
    Publish {
        #[arg(long, value_enum, default_value = "herald")]
        target: Target,
        #[arg(long, default_value = "http://127.0.0.1:7070")]
        url: String,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 100)]
        size: usize,
    },
    /// S subscribers on one stream, a publisher at R events/s stamping each event with its send
    /// time: publish→receive latency, and server CPU per 1,000 deliveries.
    Latency {
        #[arg(long, value_enum, default_value = "herald")]
        target: Target,
        #[arg(long, default_value = "http://127.0.0.1:7070")]
        url: String,
        #[arg(long, default_value_t = 200)]
        subscribers: usize,
        #[arg(long, default_value_t = 250)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Server processes whose CPU time to report (from /proc/PID/stat); repeatable, e.g.
        /// each herald node and Redis.
        #[arg(long)]
        server_pid: Vec<u32>,
        /// Herald base URLs the subscribers are spread over, round robin (repeatable; default:
        /// --url). The publisher always posts to --url: several nodes over one Redis.
        #[arg(long)]
        subscribe_at: Vec<String>,
        /// With an `https://` url: the PEM certificate to trust. Subscribers then speak HTTP/2
        /// (ALPN), `--per-connection` of them sharing each connection, unless `--http1`.
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
        #[arg(long)]
        http1: bool,
        #[arg(long, default_value_t = 1)]
        per_connection: usize,
    },
    /// S idle SSE streams over HTTP/2 (TLS), `--streams-per-connection` of them sharing each
    /// connection as a browser's `EventSource`s do: server RSS per stream, then one event
    /// published to prove every stream is a live subscription.
    IdleH2 {
        #[arg(long, value_enum, default_value = "herald")]
        target: Target,
        #[arg(long, default_value = "https://127.0.0.1:7443")]
        url: String,
        #[arg(long, default_value_t = 10_000)]
        streams: usize,
        #[arg(long, default_value_t = 100)]
        streams_per_connection: usize,
        #[arg(long)]
        server_pid: u32,
        /// The PEM certificate to trust (herald's `--tls-cert`).
        #[arg(long)]
        ca: std::path::PathBuf,
    },
    /// N idle SSE connections held open: server RSS per connection (from /proc/PID/status),
    /// then one event published to prove every connection is a live subscription.
    Idle {
        #[arg(long, value_enum, default_value = "herald")]
        target: Target,
        #[arg(long, default_value = "http://127.0.0.1:7070")]
        url: String,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long)]
        server_pid: u32,
        /// With an `https://` url: the PEM certificate to trust (herald's `--tls-cert`).
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
    },
    /// S subscribers that only count frames (no parsing, so the load tool keeps up), and P
    /// publishers posting single events as fast as answers come: deliveries/s, which is where
    /// writing every queued frame at once shows.
    Burst {
        #[arg(long, value_enum, default_value = "herald")]
        target: Target,
        #[arg(long, default_value = "http://127.0.0.1:7070")]
        url: String,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// K subscribers that never read (their sockets fill, then TCP pushes back), one that reads
    /// and counts, and batch publishing as fast as answers come (herald only): server RSS each
    /// second, to show a stalled subscriber costs bounded memory.
    Stalled {
        #[arg(long, default_value = "http://127.0.0.1:7070")]
        url: String,
        #[arg(long, default_value_t = 100)]
        stalled: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value_t = 100)]
        batch: usize,
        #[arg(long, default_value_t = 1000)]
        size: usize,
        #[arg(long)]
        server_pid: u32,
    },
    /// N clients arrive in one room at once, each a member (`client=`) and a watcher
    /// (`presence=1`), as a live Q&A's audience does when the talk starts (herald only): how
    /// long until every watcher has seen the full count, the join frames that took, and the
    /// server's CPU for the whole arrival.
    Presence {
        #[arg(long, default_value = "http://127.0.0.1:7070")]
        url: String,
        #[arg(long, default_value_t = 2000)]
        clients: usize,
        /// Connections being opened at any moment (the rest wait their turn).
        #[arg(long, default_value_t = 200)]
        connecting: usize,
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Batch publishing (`POST /publish`, herald only) of N events, then one subscriber that
    /// replays them all from the log (`last_id=0`), counting frames.
    Replay {
        #[arg(long, default_value = "http://127.0.0.1:7070")]
        url: String,
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        #[arg(long, default_value_t = 10_000)]
        batch: usize,
        /// Concurrent batch requests.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Replay this existing stream's first EVENTS events instead of publishing new ones.
        #[arg(long)]
        stream: Option<String>,
        /// Replays, one after the other (the first may read from disk, later ones from cache).
        #[arg(long, default_value_t = 1)]
        passes: usize,
        #[arg(long)]
        server_pid: Option<u32>,
    },
}

// The CLI's `bench` harness passes `--bench`; accept and drop it.
fn args() -> Args {
    Args::parse_from(std::env::args().filter(|a| a != "--bench"))
}

fn publish_url(target: Target, base: &str, stream: &str) -> String {
    match target {
        Target::Herald => format!("{base}/streams/{stream}"),
        Target::Nchan => format!("{base}/pub/{stream}"),
    }
}

fn subscribe_url(target: Target, base: &str, stream: &str) -> String {
    match target {
        Target::Herald => format!("{base}/sse?stream={stream}"),
        Target::Nchan => format!("{base}/sub/{stream}"),
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// utime + stime of a process, in milliseconds.
fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 * 1000.0 / 100.0) // USER_HZ is 100 on Linux
}

async fn publish_mode(target: Target, url: String, connections: usize, seconds: u64, size: usize) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let body = "x".repeat(size);
    let workers: Vec<_> = (0..connections)
        .map(|i| {
            let url = publish_url(target, &url, &format!("pub{i}"));
            let body = body.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .expect("client");
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let started = Instant::now();
                    match client.post(&url).body(body.clone()).send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            latencies.push(started.elapsed().as_micros() as u64);
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (latencies, e) = worker.await.expect("worker");
        all.extend(latencies);
        errors += e;
    }
    all.sort_unstable();
    println!(
        "publish: {:.0} events/s acknowledged ({} in {seconds} s, {errors} errors), latency p50 {} µs, p99 {} µs",
        all.len() as f64 / seconds as f64,
        all.len(),
        percentile(&all, 50.0),
        percentile(&all, 99.0)
    );
}

/// Where the subscribers of a latency run connect, and whose CPU time to report.
struct Nodes {
    server_pids: Vec<u32>,
    subscribe_at: Vec<String>,
    clients: Clients,
}

/// How a latency run's HTTP clients speak: which certificate they trust, HTTP/1.1 only or
/// HTTP/2 when offered, and how many subscribers share one client (so one HTTP/2 connection).
struct Clients {
    ca: Option<std::path::PathBuf>,
    http1: bool,
    per_connection: usize,
}

impl Clients {
    fn client(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder();
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).expect("read --ca");
            builder = builder.add_root_certificate(
                reqwest::Certificate::from_pem(&pem).expect("a PEM certificate"),
            );
        }
        if self.http1 {
            builder = builder.http1_only();
        }
        builder.build().expect("client")
    }
}

async fn latency_mode(
    target: Target,
    url: String,
    subscribers: usize,
    rate: u64,
    seconds: u64,
    size: usize,
    nodes: Nodes,
) {
    let Nodes {
        server_pids,
        subscribe_at,
        clients,
    } = nodes;
    let stream = format!("lat{}", micros_now() % 1_000_000);
    let mut readers = Vec::new();
    let bases = if subscribe_at.is_empty() {
        vec![url.clone()]
    } else {
        subscribe_at
    };
    let mut shared = clients.client();
    for i in 0..subscribers {
        if i > 0 && i % clients.per_connection.max(1) == 0 {
            shared = clients.client();
        }
        let response = shared
            .get(subscribe_url(target, &bases[i % bases.len()], &stream))
            .header("Accept", "text/event-stream")
            .send()
            .await
            .expect("subscribe");
        assert!(
            response.status().is_success(),
            "subscribe: {}",
            response.status()
        );
        readers.push(tokio::spawn(async move {
            let mut events = response.bytes_stream().eventsource();
            let mut latencies = Vec::new();
            while let Some(Ok(event)) = events.next().await {
                if event.data == "end" {
                    break;
                }
                if let Some(sent) = event.data.get(..20).and_then(|t| t.parse::<u64>().ok()) {
                    latencies.push(micros_now().saturating_sub(sent));
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_before: Vec<Option<f64>> = server_pids.iter().map(|p| cpu_ms(*p)).collect();
    let client = clients.client();
    let publish = publish_url(target, &url, &stream);
    let padding = "x".repeat(size.saturating_sub(21));
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    let total = rate * seconds;
    for _ in 0..total {
        tick.tick().await;
        let data = format!("{:020} {padding}", micros_now());
        let _ = client.post(&publish).body(data).send().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_after: Vec<Option<f64>> = server_pids.iter().map(|p| cpu_ms(*p)).collect();
    let _ = client.post(&publish).body("end").send().await;
    let mut all = Vec::new();
    for reader in readers {
        if let Ok(Ok(latencies)) = tokio::time::timeout(Duration::from_secs(10), reader).await {
            all.extend(latencies);
        }
    }
    all.sort_unstable();
    let deliveries = all.len() as f64;
    println!(
        "latency: {subscribers} subscribers x {rate} events/s for {seconds} s: {} of {} deliveries; p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        all.len(),
        total as usize * subscribers,
        percentile(&all, 50.0) as f64 / 1000.0,
        percentile(&all, 99.0) as f64 / 1000.0,
        percentile(&all, 99.9) as f64 / 1000.0,
    );
    for (pid, (before, after)) in server_pids.iter().zip(cpu_before.iter().zip(&cpu_after)) {
        if let (Some(before), Some(after)) = (before, after) {
            println!(
                "server cpu (pid {pid}): {:.0} ms in all, {:.2} ms per 1,000 deliveries (of all)",
                after - before,
                (after - before) / (deliveries / 1000.0)
            );
        }
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A raw `GET` of an event stream: the socket, once the response head has been read (any bytes
/// read past it are counted as frames by the caller).
async fn open_raw(url: &str) -> std::io::Result<(tokio::net::TcpStream, Vec<u8>)> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let socket = tokio::net::TcpStream::connect(host).await?;
    socket.set_nodelay(true)?;
    sse_request(socket, host, path).await
}

/// The same over TLS (HTTP/1.1: no ALPN is offered), trusting `tls`'s roots.
async fn open_tls(
    url: &str,
    tls: &tokio_rustls::TlsConnector,
) -> std::io::Result<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Vec<u8>,
)> {
    use tokio_rustls::rustls::pki_types::ServerName;
    let rest = url.strip_prefix("https://").unwrap_or(url);
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let socket = tokio::net::TcpStream::connect(host).await?;
    socket.set_nodelay(true)?;
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    let name = ServerName::try_from(name.to_owned()).map_err(std::io::Error::other)?;
    let socket = tls.connect(name, socket).await?;
    sse_request(socket, host, path).await
}

/// A TLS client that trusts the certificates in one PEM file.
fn tls_connector(ca: &std::path::Path) -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read --ca") {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("trust --ca");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

async fn sse_request<S>(mut socket: S, host: &str, path: &str) -> std::io::Result<(S, Vec<u8>)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n");
    socket.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if !head.starts_with(b"HTTP/1.1 200") {
                let line = String::from_utf8_lossy(&head[..head.len().min(40)]).into_owned();
                return Err(std::io::Error::other(line));
            }
            return Ok((socket, head.split_off(end + 4)));
        }
    }
}

/// Counts SSE frames (`\n\n`) in a byte stream read in arbitrary pieces.
#[derive(Default)]
struct FrameCounter {
    last: u8,
    frames: u64,
}

impl FrameCounter {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' && self.last == b'\n' {
                self.frames += 1;
            }
            self.last = b;
        }
    }
}

async fn idle_h2(
    target: Target,
    url: String,
    streams: usize,
    per_connection: usize,
    pid: u32,
    ca: &std::path::Path,
) {
    let pem = std::fs::read(ca).expect("read --ca");
    let cert = reqwest::Certificate::from_pem(&pem).expect("a PEM certificate");
    // One client is one HTTP/2 connection; its requests are streams on it.
    let new_client = || {
        reqwest::Client::builder()
            .add_root_certificate(cert.clone())
            .http2_prior_knowledge()
            .build()
            .expect("http client")
    };
    let stream = format!("idleh2{}", micros_now() % 1_000_000);
    let sub = subscribe_url(target, &url, &stream);
    let open = |client: reqwest::Client| {
        let sub = sub.clone();
        async move {
            let response = client
                .get(&sub)
                .header("accept", "text/event-stream")
                .send()
                .await?;
            if response.version() != reqwest::Version::HTTP_2 || !response.status().is_success() {
                return Err(format!("{:?} {}", response.version(), response.status()).into());
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(response)
        }
    };
    // One stream first, so the baseline includes a connection, the stream's channel and warm
    // buffers.
    let mut clients = vec![new_client()];
    let first = open(clients[0].clone()).await.expect("first subscriber");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid).expect("server rss");
    let started = Instant::now();
    let mut responses = vec![first];
    while responses.len() < streams {
        if responses.len() % per_connection == 0 {
            clients.push(new_client());
        }
        let client = clients.last().expect("a client").clone();
        // The rest of this connection's share, opened concurrently.
        let room = per_connection - responses.len() % per_connection;
        let opening: Vec<_> = (0..room.min(streams - responses.len()))
            .map(|_| tokio::spawn(open(client.clone())))
            .collect();
        for opened in opening {
            match opened.await {
                Ok(Ok(response)) => responses.push(response),
                Ok(Err(e)) => {
                    println!("idle-h2: stream {} failed: {e}", responses.len());
                    return;
                }
                Err(e) => {
                    println!("idle-h2: stream {} failed: {e}", responses.len());
                    return;
                }
            }
        }
    }
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid).expect("server rss");
    let held = responses.len();
    let _ = new_client()
        .post(publish_url(target, &url, &stream))
        .body(PROBE)
        .send()
        .await;
    let readers: Vec<_> = responses
        .into_iter()
        .map(|mut response| {
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                let mut seen = Vec::new();
                while !seen.windows(PROBE.len()).any(|w| w == PROBE.as_bytes()) {
                    match tokio::time::timeout_at(deadline, response.chunk()).await {
                        Ok(Ok(Some(chunk))) => seen.extend_from_slice(&chunk),
                        _ => return false,
                    }
                }
                true
            })
        })
        .collect();
    let live = count_live(readers).await;
    println!(
        "idle-h2: {held} streams on {} connections opened in {:.1} s, {live} received the event; server rss {before} KiB → {after} KiB: {:.2} KiB per stream",
        clients.len(),
        opened.as_secs_f64(),
        (after.saturating_sub(before)) as f64 / (held.max(2) - 1) as f64
    );
}

/// The event published to idle subscribers to prove each is a live subscription.
const PROBE: &str = "are you there";

/// How many of the readers saw the probe.
async fn count_live(readers: Vec<tokio::task::JoinHandle<bool>>) -> usize {
    let mut live = 0;
    for reader in readers {
        if reader.await.unwrap_or(false) {
            live += 1;
        }
    }
    live
}

/// Idle subscribers, over TLS when the url is `https://` (trusting `ca`).
async fn idle(
    target: Target,
    url: String,
    connections: usize,
    pid: u32,
    ca: Option<&std::path::Path>,
) {
    let stream = format!("idle{}", micros_now() % 1_000_000);
    let sub = subscribe_url(target, &url, &stream);
    if url.starts_with("https://") {
        let tls = tls_connector(ca.expect("--ca: the certificate to trust over https"));
        idle_mode(target, &url, &stream, connections, pid, || {
            open_tls(&sub, &tls)
        })
        .await
    } else {
        idle_mode(target, &url, &stream, connections, pid, || open_raw(&sub)).await
    }
}

async fn idle_mode<S, F, O>(
    target: Target,
    url: &str,
    stream: &str,
    connections: usize,
    pid: u32,
    open: O,
) where
    S: tokio::io::AsyncRead + Unpin + Send + 'static,
    F: std::future::Future<Output = std::io::Result<(S, Vec<u8>)>>,
    O: Fn() -> F,
{
    use tokio::io::AsyncReadExt;
    // One connection first, so the baseline includes the stream's channel and warm buffers.
    let first = open().await.expect("first subscriber");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid).expect("server rss");
    let started = Instant::now();
    let mut sockets = vec![first];
    for i in 1..connections {
        match open().await {
            Ok(s) => sockets.push(s),
            Err(e) => {
                println!("idle: connection {i} failed: {e}");
                break;
            }
        }
    }
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid).expect("server rss");
    let held = sockets.len();
    // Prove they are live: one event must reach every one of them.
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("http client");
    let _ = client
        .post(publish_url(target, url, stream))
        .body(PROBE)
        .send()
        .await;
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|(mut socket, mut seen)| {
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while !seen.windows(PROBE.len()).any(|w| w == PROBE.as_bytes()) {
                    match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
                        _ => return false,
                    }
                }
                true
            })
        })
        .collect();
    let live = count_live(readers).await;
    println!(
        "idle: {held} connections opened in {:.1} s, {live} received the event; server rss {before} KiB → {after} KiB: {:.2} KiB per connection",
        opened.as_secs_f64(),
        (after.saturating_sub(before)) as f64 / (held.max(2) - 1) as f64
    );
}

async fn burst_mode(
    target: Target,
    url: String,
    subscribers: usize,
    publishers: usize,
    seconds: u64,
    size: usize,
    server_pid: Option<u32>,
) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    let stream = format!("burst{}", micros_now() % 1_000_000);
    let sub = subscribe_url(target, &url, &stream);
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let (mut socket, rest) = open_raw(&sub).await.expect("subscribe");
        let delivered = delivered.clone();
        readers.push(tokio::spawn(async move {
            let mut counter = FrameCounter::default();
            counter.feed(&rest);
            let opening = counter.frames;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match socket.read(&mut buf).await {
                    Ok(n) if n > 0 => {
                        let before = counter.frames;
                        counter.feed(&buf[..n]);
                        delivered.fetch_add(counter.frames - before, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
            counter.frames - opening
        }));
    }
    // Let every opening frame arrive, then count from zero.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    delivered.store(0, Ordering::Relaxed);
    let cpu_before = server_pid.and_then(cpu_ms);
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let body = "x".repeat(size);
    let posters: Vec<_> = (0..publishers)
        .map(|_| {
            let (url, body, stop) = (
                publish_url(target, &url, &stream),
                body.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(r) = client.post(&url).body(body.clone()).send().await {
                        if r.status().is_success() {
                            sent += 1;
                        }
                    }
                }
                sent
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let in_window = delivered.load(Ordering::Relaxed);
    let cpu_window = server_pid.and_then(cpu_ms);
    stop.store(true, Ordering::Relaxed);
    let mut published = 0;
    for poster in posters {
        published += poster.await.unwrap_or(0);
    }
    let window = started.elapsed().as_secs_f64();
    // Wait for the backlog to drain: no new frame for a second.
    let mut last = delivered.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let drained = started.elapsed().as_secs_f64() - 1.0;
    let cpu_after = server_pid.and_then(cpu_ms);
    let expected = published * subscribers as u64;
    println!(
        "burst: {subscribers} subscribers, {published} events published in {seconds} s ({:.0}/s); deliveries {in_window} in the window ({:.0}/s), {last} of {expected} in all by {drained:.1} s ({:.0}/s)",
        published as f64 / window,
        in_window as f64 / window,
        last as f64 / drained
    );
    if let (Some(before), Some(at_window), Some(after)) = (cpu_before, cpu_window, cpu_after) {
        println!(
            "server cpu: {:.0} ms in the window ({:.0}% of a core), {:.2} ms per 1,000 deliveries in all",
            at_window - before,
            (at_window - before) / (window * 10.0),
            (after - before) / (last as f64 / 1000.0)
        );
    }
    for reader in readers {
        reader.abort();
    }
}

/// One `POST /publish` of a JSON array; panics unless it is accepted.
/// Reads one watcher's frames and remembers the `count` of the newest presence frame.
#[derive(Default)]
struct CountTracker {
    pending: Vec<u8>,
    /// Presence frames read whole.
    frames: u64,
    count: u64,
}

impl CountTracker {
    fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let Some(end) = memchr::memmem::rfind(&self.pending, b"\n\n") else {
            return;
        };
        let whole = &self.pending[..end];
        self.frames += memchr::memmem::find_iter(whole, b"\nevent: ").count() as u64
            + u64::from(whole.starts_with(b"event: "));
        if let Some(at) = memchr::memmem::rfind(whole, b"\"count\":") {
            let digits = &whole[at + 8..];
            let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
            if let Some(n) = std::str::from_utf8(&digits[..len])
                .ok()
                .and_then(|d| d.parse().ok())
            {
                self.count = n;
            }
        }
        self.pending.drain(..end + 2);
    }
}

async fn presence_mode(url: String, clients: usize, connecting: usize, server_pid: Option<u32>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    let room = format!("room{}", micros_now() % 1_000_000);
    let frames = Arc::new(AtomicU64::new(0));
    let cpu_before = server_pid.and_then(cpu_ms);
    let started = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(connecting.max(1)));
    let (settled_tx, mut settled) = tokio::sync::mpsc::unbounded_channel();
    let (connected_tx, mut connected) = tokio::sync::mpsc::unbounded_channel();
    let target = clients as u64;
    let readers: Vec<_> = (0..clients)
        .map(|i| {
            let sub = format!("{url}/sse?stream={room}&client=c{i}&presence=1");
            let (gate, settled_tx, connected_tx, frames) = (
                gate.clone(),
                settled_tx.clone(),
                connected_tx.clone(),
                frames.clone(),
            );
            tokio::spawn(async move {
                let permit = gate.acquire_owned().await.expect("gate");
                let (mut socket, rest) = open_raw(&sub).await.expect("subscribe");
                drop(permit);
                let _ = connected_tx.send(started.elapsed());
                let mut tracker = CountTracker::default();
                let mut told = false;
                let mut bytes = rest;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let before = tracker.frames;
                    tracker.feed(&bytes);
                    frames.fetch_add(tracker.frames - before, Ordering::Relaxed);
                    if !told && tracker.count == target {
                        told = true;
                        let _ = settled_tx.send(started.elapsed());
                    }
                    match socket.read(&mut buf).await {
                        Ok(n) if n > 0 => bytes = buf[..n].to_vec(),
                        _ => break,
                    }
                }
            })
        })
        .collect();
    drop((settled_tx, connected_tx));
    let mut last_connected = Duration::ZERO;
    for _ in 0..clients {
        match connected.recv().await {
            Some(at) => last_connected = last_connected.max(at),
            None => break,
        }
    }
    let mut times = Vec::with_capacity(clients);
    while times.len() < clients {
        match tokio::time::timeout(Duration::from_secs(120), settled.recv()).await {
            Ok(Some(at)) => times.push(at.as_micros() as u64),
            _ => break,
        }
    }
    let cpu_after = server_pid.and_then(cpu_ms);
    times.sort_unstable();
    let all = times.last().copied().unwrap_or(0);
    // Every frame is in by now; close the connections.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for reader in &readers {
        reader.abort();
    }
    println!(
        "presence: {clients} clients in one room, all connected by {:.0} ms; {} of {clients} watchers saw count {clients}, the median by {:.0} ms, the last by {:.0} ms; {} join frames received",
        last_connected.as_secs_f64() * 1e3,
        times.len(),
        percentile(&times, 50.0) as f64 / 1e3,
        all as f64 / 1e3,
        frames.load(Ordering::Relaxed),
    );
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        // Each watcher is told of its own join and every later one.
        let told = target * (target + 1) / 2;
        println!(
            "presence server cpu: {:.0} ms for the arrival, {:.2} µs per join frame ({told} of them)",
            after - before,
            (after - before) * 1e3 / told as f64,
        );
    }
}

async fn post_batch(client: &reqwest::Client, url: &str, body: &bytes::Bytes) {
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("publish");
    assert!(r.status().is_success(), "publish: {}", r.status());
    let _ = r.bytes().await;
}

async fn stalled_mode(
    url: String,
    stalled: usize,
    seconds: u64,
    batch: usize,
    size: usize,
    pid: u32,
) {
    use tokio::io::AsyncReadExt;
    let stream = format!("stalled{}", micros_now() % 1_000_000);
    let sub = format!("{url}/sse?stream={stream}");
    let mut sleepers = Vec::new();
    for _ in 0..stalled {
        sleepers.push(open_raw(&sub).await.expect("subscribe").0);
    }
    let (mut reader, rest) = open_raw(&sub).await.expect("subscribe");
    let frames = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = frames.clone();
    let counting = tokio::spawn(async move {
        let mut counter = FrameCounter::default();
        counter.feed(&rest);
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(n @ 1..) = reader.read(&mut buf).await {
            counter.feed(&buf[..n]);
            // The opening `retry:` frame is not an event.
            counted.store(counter.frames - 1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let item = serde_json::json!({"stream": stream, "data": "x".repeat(size)});
    let body: bytes::Bytes = serde_json::to_vec(&vec![item; batch]).expect("json").into();
    let start_rss = rss_kib(pid).unwrap_or(0);
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut published = 0;
    let mut samples = Vec::new();
    let mut next_sample = Duration::from_secs(1);
    while started.elapsed() < Duration::from_secs(seconds) {
        post_batch(&client, &format!("{url}/publish"), &body).await;
        published += batch;
        if started.elapsed() >= next_sample {
            samples.push(rss_kib(pid).unwrap_or(0));
            next_sample += Duration::from_secs(1);
        }
    }
    let rss = |kib: u64| format!("{:.0} MB", kib as f64 / 1024.0);
    println!(
        "stalled: {stalled} stalled subscribers + 1 reading, {published} events of {size} B ({:.0} MB) published in {seconds} s; server rss {} at start, by second: {}",
        (published * size) as f64 / 1e6,
        rss(start_rss),
        samples.iter().map(|&k| rss(k)).collect::<Vec<_>>().join(" ")
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while frames.load(std::sync::atomic::Ordering::Relaxed) < published as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "stalled: the reading subscriber got {} of {published}; server rss after {}",
        frames.load(std::sync::atomic::Ordering::Relaxed),
        rss(rss_kib(pid).unwrap_or(0))
    );
    counting.abort();
    let _ = counting.await;
    drop(sleepers);
}

/// Publishes `events` events to a new stream in batches; returns the stream's name.
async fn batch_publish(
    url: &str,
    events: usize,
    batch: usize,
    connections: usize,
    size: usize,
) -> String {
    let stream = format!("replay{}", micros_now() % 1_000_000);
    let data = "x".repeat(size);
    let item = serde_json::json!({"stream": stream, "data": data});
    let body: bytes::Bytes = serde_json::to_vec(&vec![item; batch]).expect("json").into();
    let requests = events.div_ceil(batch);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (url, body, next) = (format!("{url}/publish"), body.clone(), next.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                    post_batch(&client, &url, &body).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("publisher");
    }
    let published = requests * batch;
    let took = started.elapsed().as_secs_f64();
    println!(
        "batch publish: {published} events in batches of {batch} on {connections} connections in {took:.2} s: {:.0} events/s",
        published as f64 / took
    );
    stream
}

/// One subscriber reads the first `published` events of `stream` from the log (`last_id=0`).
async fn replay_mode(url: String, stream: String, published: usize, server_pid: Option<u32>) {
    use tokio::io::AsyncReadExt;
    let cpu_before = server_pid.and_then(cpu_ms);
    let own_before = cpu_ms(std::process::id());
    let started = Instant::now();
    let (mut socket, rest) = open_raw(&format!("{url}/sse?stream={stream}&last_id=0"))
        .await
        .expect("subscribe");
    let mut counter = FrameCounter::default();
    counter.feed(&rest);
    let mut buf = vec![0u8; 256 * 1024];
    // The opening `retry:` frame is one frame more than the events.
    while counter.frames < published as u64 + 1 {
        match socket.read(&mut buf).await {
            Ok(n) if n > 0 => counter.feed(&buf[..n]),
            _ => break,
        }
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "replay: {} of {published} events from the log to one subscriber in {took:.2} s: {:.0} events/s",
        counter.frames.saturating_sub(1),
        counter.frames.saturating_sub(1) as f64 / took
    );
    let delivered = counter.frames.saturating_sub(1).max(1) as f64;
    if let (Some(pid), Some(before)) = (server_pid, cpu_before) {
        if let Some(after) = cpu_ms(pid) {
            let cpu = after - before;
            println!(
                "replay server cpu: {cpu:.0} ms, {:.0} ns per event",
                cpu * 1e6 / delivered
            );
        }
    }
    if let (Some(before), Some(after)) = (own_before, cpu_ms(std::process::id())) {
        println!(
            "replay load tool cpu: {:.0} ms, {:.0} ns per event",
            after - before,
            (after - before) * 1e6 / delivered
        );
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // Thousands of connections need thousands of descriptors.
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
    runtime.block_on(async {
        match args().mode {
            Mode::Publish {
                target,
                url,
                connections,
                seconds,
                size,
            } => publish_mode(target, url, connections, seconds, size).await,
            Mode::Latency {
                target,
                url,
                subscribers,
                rate,
                seconds,
                size,
                server_pid,
                subscribe_at,
                ca,
                http1,
                per_connection,
            } => {
                latency_mode(
                    target,
                    url,
                    subscribers,
                    rate,
                    seconds,
                    size,
                    Nodes {
                        server_pids: server_pid,
                        subscribe_at,
                        clients: Clients {
                            ca,
                            http1,
                            per_connection,
                        },
                    },
                )
                .await
            }
            Mode::Idle {
                target,
                url,
                connections,
                server_pid,
                ca,
            } => idle(target, url, connections, server_pid, ca.as_deref()).await,
            Mode::IdleH2 {
                target,
                url,
                streams,
                streams_per_connection,
                server_pid,
                ca,
            } => {
                idle_h2(
                    target,
                    url,
                    streams,
                    streams_per_connection,
                    server_pid,
                    &ca,
                )
                .await
            }
            Mode::Burst {
                target,
                url,
                subscribers,
                publishers,
                seconds,
                size,
                server_pid,
            } => {
                burst_mode(
                    target,
                    url,
                    subscribers,
                    publishers,
                    seconds,
                    size,
                    server_pid,
                )
                .await
            }
            Mode::Stalled {
                url,
                stalled,
                seconds,
                batch,
                size,
                server_pid,
            } => stalled_mode(url, stalled, seconds, batch, size, server_pid).await,
            Mode::Presence {
                url,
                clients,
                connecting,
                server_pid,
            } => presence_mode(url, clients, connecting, server_pid).await,
            Mode::Replay {
                url,
                events,
                batch,
                connections,
                size,
                stream,
                passes,
                server_pid,
            } => {
                let stream = match stream {
                    Some(stream) => stream,
                    None => batch_publish(&url, events, batch, connections, size).await,
                };
                for _ in 0..passes {
                    replay_mode(url.clone(), stream.clone(), events, server_pid).await
                }
            }
        }
    });
}
