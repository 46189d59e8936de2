//! A `201` means the event is on disk: every acknowledgement of a durable publish follows an
//! `fdatasync` of the write-ahead log (`data/wal/*.wal`) that completed after the previous one,
//! and opening syncs sled's settings file, the data directory and the log's directory. Checked
//! at the system-call level, by running the real binary under `strace` — the one way to see,
//! short of pulling the power, that the store does not stop at a flush that only survives
//! `kill -9` (sled 0.34's own flush is `sync_file_range`, which leaves the file's size and the
//! disk's cache unsynced).
//!
//! `scripts/test` installs `strace`. Set `HERALD_SKIP_STRACE=1` to skip deliberately; otherwise a
//! missing `strace` is a failure.

mod common;

use std::process::{Command, Stdio};

use common::{client, listening_url};

const PUBLISHES: usize = 20;

#[tokio::test]
async fn every_durable_publish_is_answered_only_after_an_fdatasync_of_the_log() {
    if std::env::var_os("HERALD_SKIP_STRACE").is_some() {
        eprintln!("HERALD_SKIP_STRACE is set: the fsync test was not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut traced, url) = Traced::start(dir.path(), &[]);

    let http = client();
    for i in 0..PUBLISHES {
        let response = http
            .post(format!("{url}/streams/kept"))
            .json(&serde_json::json!({ "data": format!("event {i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }

    let trace = traced.stop();

    // Walk the calls in the order they happened: a completed fdatasync of the write-ahead log
    // must come between any two answers (and before the first). (sled's own file is synced too,
    // at checkpoints, by another thread; that does not count.)
    let wal = format!("{}/wal/", data.display());
    let synced = wal_syncs(&trace, &wal);
    let mut synced_since_last_answer = false;
    let mut answers = 0;
    let mut syncs = 0;
    for (i, line) in trace.lines().enumerate() {
        if synced.contains(&i) {
            synced_since_last_answer = true;
            syncs += 1;
        } else if line.contains("HTTP/1.1 201") {
            assert!(
                synced_since_last_answer,
                "answer {} was written without an fdatasync of the log since the previous one:\n{line}\n\nthe trace:\n{trace}",
                answers + 1
            );
            synced_since_last_answer = false;
            answers += 1;
        }
    }
    assert_eq!(answers, PUBLISHES, "every answer is in the trace:\n{trace}");
    assert!(
        syncs >= PUBLISHES,
        "{syncs} fdatasyncs of the write-ahead log for {PUBLISHES} answers:\n{trace}"
    );
    // Opening syncs sled's settings file and the directory's entries once, and the log's first
    // segment and its directory when it is made.
    for synced in [
        format!("{}/conf>", data.display()),
        format!("{}>", data.display()),
        format!("{}/wal>", data.display()),
        format!("{}/wal/00000000000000000000.wal>", data.display()),
    ] {
        assert!(
            trace
                .lines()
                .any(|l| l.contains("fsync(") && l.contains(&synced) && l.ends_with("= 0")),
            "no fsync of {synced} at opening:\n{trace}"
        );
    }
}

/// herald under `strace`, tracing the calls that matter: fsync, fdatasync, and the writes that
/// carry the answers (with `-tt` times).
struct Traced {
    strace: std::process::Child,
    pid_file: std::path::PathBuf,
    trace: std::path::PathBuf,
}

impl Traced {
    fn start(dir: &std::path::Path, flags: &[&str]) -> (Traced, String) {
        let data = dir.join("data");
        let trace = dir.join("trace");
        let pid_file = dir.join("pid");
        // `sh` writes its pid and becomes herald, so the pid is herald's, traced from its first
        // instruction.
        let script = format!(
            "echo $$ > '{}'; exec '{}' --listen 127.0.0.1:0 --data '{}' {}",
            pid_file.display(),
            env!("CARGO_BIN_EXE_herald"),
            data.display(),
            flags.join(" ")
        );
        let mut strace = Command::new("strace");
        common::clean_env(&mut strace);
        let mut strace = strace
            .args([
                "-f",
                "-y",
                "-tt",
                "-s",
                "32",
                "-e",
                "trace=fsync,fdatasync,write,writev,sendto",
            ])
            .arg("-o")
            .arg(&trace)
            .args(["sh", "-c", &script])
            .env("RUST_LOG", "herald=warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("run strace (scripts/test installs it)");
        let url = listening_url(&mut strace);
        (
            Traced {
                strace,
                pid_file,
                trace,
            },
            url,
        )
    }

    /// A clean stop ends herald, and with it strace, which then has written all it traced.
    fn stop(&mut self) -> String {
        let pid = std::fs::read_to_string(&self.pid_file).unwrap();
        Command::new("kill")
            .args(["-TERM", pid.trim()])
            .status()
            .unwrap();
        assert!(self.strace.wait().unwrap().success());
        std::fs::read_to_string(&self.trace).unwrap()
    }
}

/// The lines (by index) where an `fdatasync` of a file under `dir` completed: whole
/// (`PID time fdatasync(9</…/wal/….wal>) = 0`) or resumed after another thread's line
/// (`PID time <... fdatasync resumed>) = 0`, whose file is the one that thread started on).
fn wal_syncs(trace: &str, dir: &str) -> std::collections::HashSet<usize> {
    let mut started: std::collections::HashMap<&str, bool> = std::collections::HashMap::new();
    let mut done = std::collections::HashSet::new();
    for (i, line) in trace.lines().enumerate() {
        let pid = line.split_whitespace().next().unwrap_or_default();
        if line.contains("fdatasync(") {
            let ours = line.contains(dir);
            if line.ends_with("= 0") {
                if ours {
                    done.insert(i);
                }
            } else {
                started.insert(pid, ours);
            }
        } else if line.contains("<... fdatasync resumed>")
            && started.remove(pid) == Some(true)
            && line.ends_with("= 0")
        {
            done.insert(i);
        }
    }
    done
}

/// Seconds since midnight of a `strace -tt` line (`PID HH:MM:SS.micros ...`).
fn time_of(line: &str) -> f64 {
    let time = line.split_whitespace().nth(1).unwrap_or_default();
    time.split(':')
        .map(|part| part.parse::<f64>().unwrap_or(0.0))
        .fold(0.0, |total, part| total * 60.0 + part)
}

/// With `--flush-interval`, answers do not wait for a sync, and the writer syncs the
/// write-ahead log by itself afterwards.
#[tokio::test]
async fn with_a_flush_interval_answers_come_first_and_a_sync_follows_unasked() {
    if std::env::var_os("HERALD_SKIP_STRACE").is_some() {
        eprintln!("HERALD_SKIP_STRACE is set: the fsync test was not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut traced, url) = Traced::start(dir.path(), &["--flush-interval", "200"]);
    let http = client();
    for i in 0..PUBLISHES {
        let response = http
            .post(format!("{url}/streams/kept"))
            .body(format!("event {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    // Well past the interval, with nothing published: the sync must come from the writer.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let trace = traced.stop();
    let lines: Vec<&str> = trace.lines().collect();
    let answers: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("HTTP/1.1 201"))
        .collect();
    assert_eq!(answers.len(), PUBLISHES, "{trace}");
    let mut syncs: Vec<usize> = wal_syncs(&trace, &format!("{}/wal/", data.display()))
        .into_iter()
        .collect();
    syncs.sort_unstable();
    let between = |a: usize, b: usize| syncs.iter().filter(|&&s| s > a && s < b).count();
    let unsynced = answers
        .windows(2)
        .filter(|w| between(w[0], w[1]) == 0)
        .count();
    assert!(
        unsynced > 0,
        "some answers followed each other with no sync between: they do not wait for one\n{trace}"
    );
    let last = *answers.last().unwrap();
    let next_sync = syncs
        .iter()
        .find(|&&s| s > last)
        .unwrap_or_else(|| panic!("no sync of the log after the last answer:\n{trace}"));
    let after = time_of(lines[*next_sync]) - time_of(lines[last]);
    assert!(
        after < 1.5,
        "the log was synced {after:.3} s after the last answer, not within the 200 ms interval \
         (and before the stop 2 s later):\n{trace}"
    );
}
