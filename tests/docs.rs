//! The shell examples of the README and the docs, run as a reader pastes them, against the real
//! binary — so an example that stopped being true fails here, not in a newcomer's terminal.
//!
//! Every ```` ```sh ```` block of README.md, SECURITY.md and docs/*.md runs in bash with `set -e`,
//! unless the line before its fence is `<!-- docs-test: skip (why) -->`. What the harness adds,
//! and only that:
//! - `127.0.0.1:7070` becomes a free port, and `herald` (and `target/release/herald`) is the
//!   binary under test; a `herald` that serves gets `--listen` on that port and a fresh
//!   `--data`, and the block goes on once it answers. A block that starts no server gets one.
//! - `curl -N …` (a subscriber the reader leaves running in another terminal) runs in the
//!   background for a few seconds; `herald subscribe` and `tail -f` stop after a moment.
//! - every other `curl` fails the block on an HTTP error (`--fail-with-body`), and each
//!   `#  → <output>` comment must be printed, in the comments' order (a `since` time aside).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{free_port, Server};

struct Block {
    file: String,
    line: usize,
    text: String,
}

/// The `sh` blocks of one Markdown file, with whether each is to be skipped.
fn blocks(path: &Path) -> Vec<(Block, Option<String>)> {
    let text = std::fs::read_to_string(path).expect("read the docs");
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() == "```sh" {
            let skip = i
                .checked_sub(1)
                .and_then(|p| lines[p].trim().strip_prefix("<!-- docs-test: skip"))
                .map(|why| why.trim_end_matches("-->").trim().to_owned());
            let start = i + 1;
            let mut end = start;
            while end < lines.len() && lines[end].trim() != "```" {
                end += 1;
            }
            found.push((
                Block {
                    file: path.display().to_string(),
                    line: start,
                    text: lines[start..end].join("\n"),
                },
                skip,
            ));
            i = end;
        }
        i += 1;
    }
    found
}

fn doc_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md"), root.join("SECURITY.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// Whether a line of the block starts a herald server.
fn serves(line: &str) -> bool {
    let line = line.trim_start();
    let Some(rest) = line.strip_prefix("herald") else {
        return false;
    };
    let rest = rest.trim_start();
    rest.is_empty() || rest.starts_with('-') || rest.starts_with("serve") || rest.starts_with('&')
}

/// The block as the harness runs it (see the module's comment).
fn instrument(block: &Block, port: u16) -> String {
    let text = block
        .text
        .replace("127.0.0.1:7070", &format!("127.0.0.1:{port}"));
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split(" #").next().unwrap_or(line);
        if code.trim_start().starts_with("curl -N") {
            out.push(format!("{} &", code.trim_end().trim_end_matches('&')));
            out.push("subscribers+=($!); sleep 0.5".to_owned());
        } else {
            out.push(line.to_owned());
        }
        if serves(line) {
            out.push(format!(
                "until command curl -s -o /dev/null http://127.0.0.1:{port}/healthz; do sleep 0.05; done"
            ));
        }
    }
    out.join("\n")
}

const PRELUDE: &str = r#"
set -euo pipefail
subscribers=()
curl() {
  case " $* " in
    *" -N "*) command curl -sS --max-time 4 "$@" || [ $? = 28 ] ;;
    *) command curl -sS --fail-with-body "$@"; echo ;;
  esac
}
tail() {
  case " $* " in
    *" -f "*) timeout 1 tail "$@" || [ $? = 124 ] ;;
    *) command tail "$@" ;;
  esac
}
"#;

/// A `herald` on PATH that is the binary under test, serving on the harness's port.
fn wrapper(dir: &Path, port: u16) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let script = format!(
        r#"#!/usr/bin/env bash
real={real}
case "${{1:-}}" in
  publish|relay|token|help|--help|--version|-V) exec "$real" "$@" ;;
  subscribe) timeout 2 "$real" "$@" || [ $? = 124 ] ;;
  serve) shift; exec "$real" serve --listen 127.0.0.1:{port} --data {data} "$@" ;;
  *) exec "$real" serve --listen 127.0.0.1:{port} --data {data} "$@" ;;
esac
"#,
        real = env!("CARGO_BIN_EXE_herald"),
        data = dir.join("herald-data").display(),
    );
    let path = bin.join("herald");
    std::fs::write(&path, script).expect("write the wrapper");
    let _ = Command::new("chmod").arg("+x").arg(&path).status();
    let release = dir.join("target/release");
    std::fs::create_dir_all(&release).expect("target/release");
    let _ = std::os::unix::fs::symlink(&path, release.join("herald"));
    bin
}

/// Each `#  → <output>` comment of the block, as the text the output must contain.
fn expected_outputs(block: &Block) -> Vec<String> {
    block
        .text
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("#  → "))
        .map(|e| e.split("  —").next().unwrap_or(e).trim().to_owned())
        .collect()
}

/// `"since":1795321089333` → `"since":0`: a time cannot match.
fn without_times(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\"since\":") {
        out.push_str(&rest[..at + 8]);
        rest = rest[at + 8..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('0');
    }
    out.push_str(rest);
    out
}

fn run(block: &Block) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let starts_its_own = block.text.lines().any(serves);
    let _server = (!starts_its_own).then(|| {
        let listen = format!("127.0.0.1:{port}");
        Server::start(&["--listen", &listen])
    });
    let bin = wrapper(dir.path(), port);
    std::fs::write(dir.path().join("app.log"), "a log line\n").map_err(|e| e.to_string())?;
    // Waits for the subscribers only: a server the block started is stopped with the block.
    let script = format!(
        "{PRELUDE}\n{}\nfor s in \"${{subscribers[@]}}\"; do wait \"$s\" || true; done\n",
        instrument(block, port)
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = {
        use std::os::unix::process::CommandExt;
        let mut bash = Command::new("bash");
        common::clean_env(&mut bash);
        bash.arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .env("PATH", path)
            .env("HERALD_URL", format!("http://127.0.0.1:{port}"))
            .env_remove("HERALD_JWT_SECRET")
            .env_remove("HERALD_PUBLISH_TOKEN")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| e.to_string())?
    };
    let pid = child.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever the block left running (its own herald, say) goes with it.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status();
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let said = || format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    match status {
        None => return Err(format!("did not finish within 60 s\n{}", said())),
        Some(status) if !status.success() => {
            return Err(format!("exited with {status}\n{}", said()))
        }
        Some(_) => {}
    }
    // In order: each expected output after the one before it.
    let printed = without_times(&stdout);
    let mut from = 0;
    for expected in expected_outputs(block) {
        let want = without_times(&expected);
        match printed[from..].find(&want) {
            Some(at) => from += at + want.len(),
            None => return Err(format!("printed no {expected} (in order)\n{}", said())),
        }
    }
    Ok(())
}

#[test]
fn the_shell_examples_of_the_docs_run_as_written() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for file in doc_files() {
        for (block, skip) in blocks(&file) {
            if let Some(why) = skip {
                assert!(
                    !why.is_empty(),
                    "{}:{}: a skipped example says why",
                    block.file,
                    block.line
                );
                continue;
            }
            ran += 1;
            let started = std::time::Instant::now();
            let result = run(&block);
            eprintln!("{}:{}: {:?}", block.file, block.line, started.elapsed());
            if let Err(e) = result {
                failures.push(format!(
                    "{}:{}:\n{}\n{e}",
                    block.file, block.line, block.text
                ));
            }
        }
    }
    assert!(ran >= 4, "only {ran} examples ran");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
