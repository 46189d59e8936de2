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
        /// Server process whose CPU time to report (from /proc/PID/stat).
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

async fn latency_mode(
    target: Target,
    url: String,
    subscribers: usize,
    rate: u64,
    seconds: u64,
    size: usize,
    server_pid: Option<u32>,
) {
    let stream = format!("lat{}", micros_now() % 1_000_000);
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let response = reqwest::Client::new()
            .get(subscribe_url(target, &url, &stream))
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
    let cpu_before = server_pid.and_then(cpu_ms);
    let client = reqwest::Client::new();
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
    let cpu_after = server_pid.and_then(cpu_ms);
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
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        println!(
            "server cpu: {:.0} ms in all, {:.2} ms per 1,000 deliveries",
            after - before,
            (after - before) / (deliveries / 1000.0)
        );
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
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
            } => latency_mode(target, url, subscribers, rate, seconds, size, server_pid).await,
        }
    });
}
