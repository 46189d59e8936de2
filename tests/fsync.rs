//! A `201` means the event is on disk: every acknowledgement of a durable publish follows an
//! `fdatasync` of the log file that completed after the previous one, and opening syncs sled's
//! settings file and the data directory. Checked at the system-call level, by running the real
//! binary under `strace` — the one way to see, short of pulling the power, that the store does
//! not stop at a flush that only survives `kill -9` (sled 0.34's own flush is `sync_file_range`,
//! which leaves the file's size and the disk's cache unsynced).
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
    let trace = dir.path().join("trace");
    let pid_file = dir.path().join("pid");
    // `sh` writes its pid and becomes herald, so the pid is herald's, traced from its first
    // instruction. Only the calls that matter are traced: fdatasync, and the writes that carry
    // the answers.
    let script = format!(
        "echo $$ > '{}'; exec '{}' --listen 127.0.0.1:0 --data '{}'",
        pid_file.display(),
        env!("CARGO_BIN_EXE_herald"),
        data.display()
    );
    let mut strace = Command::new("strace");
    common::clean_env(&mut strace);
    let mut strace = strace
        .args([
            "-f",
            "-y",
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

    // A clean stop ends herald, and with it strace, which then has written all it traced.
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    Command::new("kill")
        .args(["-TERM", pid.trim()])
        .status()
        .unwrap();
    assert!(strace.wait().unwrap().success());
    let trace = std::fs::read_to_string(&trace).unwrap();

    // Walk the calls in the order they happened: a completed fdatasync of `…/data/db` must come
    // between any two answers (and before the first).
    let log_file = format!("{}/db>", data.display());
    let mut synced_since_last_answer = false;
    let mut answers = 0;
    let mut syncs = 0;
    for line in trace.lines() {
        if line.contains("fdatasync(") {
            assert!(
                line.contains(&log_file),
                "an fdatasync of another file: {line}"
            );
        }
        // Whole (`fdatasync(9</…/db>) = 0`) or resumed after another thread's line.
        let completed_sync = (line.contains("fdatasync(")
            || line.contains("<... fdatasync resumed>"))
            && line.ends_with("= 0");
        if completed_sync {
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
        trace.contains(&log_file),
        "fdatasync is called on the log file {log_file}:\n{trace}"
    );
    assert!(
        syncs >= PUBLISHES,
        "{syncs} fdatasyncs for {PUBLISHES} answers"
    );
    // Opening syncs sled's settings file and the directory's entries once.
    for synced in [
        format!("{}/conf>", data.display()),
        format!("{}>", data.display()),
    ] {
        assert!(
            trace
                .lines()
                .any(|l| l.contains("fsync(") && l.contains(&synced) && l.ends_with("= 0")),
            "no fsync of {synced} at opening:\n{trace}"
        );
    }
}
