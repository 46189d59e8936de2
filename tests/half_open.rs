//! A subscriber whose machine vanishes — no FIN, no RST, its packets just stop — is noticed
//! within about two heartbeat intervals, so its presence ends.
//!
//! This needs a network whose packets the test can drop: the test re-runs itself inside a fresh
//! network namespace (`unshare --net`, as root or with user namespaces), where an nftables rule
//! drops everything sent to the client's port. `scripts/test` installs `nftables`. Set
//! `HERALD_SKIP_NETNS=1` to skip deliberately; otherwise a missing tool is a failure.

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const TEST: &str = "a_vanished_subscriber_is_noticed_within_about_two_heartbeats";
const INSIDE: &str = "HERALD_IN_NETNS";

#[test]
fn a_vanished_subscriber_is_noticed_within_about_two_heartbeats() {
    if std::env::var_os(INSIDE).is_some() {
        return inside_the_namespace();
    }
    if std::env::var_os("HERALD_SKIP_NETNS").is_some() {
        eprintln!("HERALD_SKIP_NETNS is set: the half-open test was not run");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("unshare")
        .args(["--net", "--map-root-user", "--"])
        .arg(exe)
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .status()
        .expect("run unshare (util-linux)");
    assert!(
        status.success(),
        "the half-open test failed inside its network namespace (it needs unshare and nft: \
         scripts/test installs them)"
    );
}

fn sh(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

/// Subscribes with a raw socket; returns it and its local port.
fn subscriber(server: &Server, client: &str) -> (TcpStream, u16) {
    let socket = raw_subscriber(server, &format!("stream=room&client={client}"));
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

/// From now on, every packet to `port` is lost: to the server, that peer has vanished.
fn vanish(port: u16) {
    sh("nft", &["add", "table", "inet", "herald_test"]);
    sh(
        "nft",
        &[
            "add",
            "chain",
            "inet",
            "herald_test",
            "out",
            "{ type filter hook output priority 0; }",
        ],
    );
    let port = port.to_string();
    sh(
        "nft",
        &[
            "add",
            "rule",
            "inet",
            "herald_test",
            "out",
            "tcp",
            "dport",
            &port,
            "drop",
        ],
    );
}

async fn online(server: &Server) -> u64 {
    presence(server, "room").await["count"].as_u64().unwrap()
}

fn inside_the_namespace() {
    sh("ip", &["link", "set", "lo", "up"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let heartbeat = Duration::from_secs(1);
        let server = Server::start(&["--memory", "--heartbeat", "1", "--presence-grace", "0"]);
        let (_vanished, port) = subscriber(&server, "vanished");
        let (_control, control_port) = subscriber(&server, "control");
        assert_ne!(port, control_port);
        assert_eq!(online(&server).await, 2);

        vanish(port);
        let since = Instant::now();
        eventually(
            "the vanished subscriber is noticed",
            heartbeat * 4,
            || async { online(&server).await == 1 },
        )
        .await;
        let took = since.elapsed();
        eprintln!("half-open connection noticed after {took:?} (heartbeat {heartbeat:?})");
        let left = presence(&server, "room").await;
        assert_eq!(
            left["clients"][0]["client"], "control",
            "the live one stays"
        );

        // The same with TCP_USER_TIMEOUT off: the kernel keeps retransmitting for many minutes,
        // so nothing is noticed in the same time — which is why herald sets it.
        sh("nft", &["flush", "ruleset"]);
        let server = Server::start(&[
            "--memory",
            "--heartbeat",
            "1",
            "--presence-grace",
            "0",
            "--peer-timeout",
            "0",
        ]);
        let (_vanished, port) = subscriber(&server, "vanished");
        vanish(port);
        tokio::time::sleep(heartbeat * 5).await;
        assert_eq!(
            online(&server).await,
            1,
            "without a peer timeout the ghost stays"
        );
    });
}
