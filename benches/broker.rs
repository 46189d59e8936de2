//! Micro-benchmarks of the hot paths: SSE encoding, sled's append (with and without fsync), and
//! the catch-up read from sled. `cargo bench --bench broker`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use herald::broker::engine::local::{SledStore, Store};
use herald::broker::event::{EventId, EventType, NewEvent, StreamName};
use herald::http::wire::encode_frame;

fn events(n: usize, size: usize) -> Vec<NewEvent> {
    let stream = StreamName::new("bench").expect("valid name");
    (0..n)
        .map(|i| NewEvent {
            stream: stream.clone(),
            kind: None,
            data: format!("{i:08}{}", "x".repeat(size.saturating_sub(8))),
        })
        .collect()
}

fn encode(c: &mut Criterion) {
    let kind = EventType::new("update").ok();
    let one_line = "x".repeat(100);
    let multi_line = "a line of text\n".repeat(20);
    let mut group = c.benchmark_group("encode_frame");
    group.bench_function("100 B, one line", |b| {
        b.iter(|| encode_frame(EventId(123_456), kind.as_ref(), black_box(&one_line)))
    });
    group.bench_function("300 B, 20 lines", |b| {
        b.iter(|| encode_frame(EventId(123_456), kind.as_ref(), black_box(&multi_line)))
    });
    group.finish();
}

/// An append is settled into sled each time (an append alone only leaves its events pending in
/// memory: `src/broker/engine/local/sled/pending.rs`), so these measure sled's own cost, with and
/// without its flush and `fdatasync`.
fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = SledStore::open(dir.path(), 64 << 20).expect("open log");
    let mut group = c.benchmark_group("sled_append");
    for batch in [1usize, 100] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("{batch} x 100 B, no fsync"), |b| {
            b.iter_batched(
                || events(batch, 100),
                |e| {
                    let appended = log.append(e, 1);
                    log.settle().expect("settle");
                    appended
                },
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("{batch} x 100 B, fsync"), |b| {
            b.iter_batched(
                || events(batch, 100),
                |e| {
                    let appended = log.append(e, 1);
                    log.sync().expect("sync");
                    appended
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn catch_up(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = SledStore::open(dir.path(), 256 << 20).expect("open log");
    for _ in 0..100 {
        log.append(events(1000, 100), 1).expect("append");
    }
    // Read from sled's runs, not from events still pending in memory.
    log.settle().expect("settle");
    let stream = StreamName::new("bench").expect("valid name");
    let upto = log.last_id();
    let mut group = c.benchmark_group("catch_up_read");
    group.throughput(Throughput::Elements(100_000));
    group.sample_size(10);
    group.bench_function("100k x 100 B in pages of 512", |b| {
        b.iter(|| {
            let mut after = EventId(0);
            let mut n = 0;
            loop {
                let page = log.read(&stream, after, upto, 512).expect("read");
                match page.last() {
                    Some(last) => after = last.id,
                    None => break,
                }
                n += page.len();
            }
            assert_eq!(n, 100_000);
        })
    });
    group.finish();
}

criterion_group!(benches, encode, append, catch_up);
criterion_main!(benches);
