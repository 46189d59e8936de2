//! Real `redis-server` processes (Debian's `redis-server`, installed by `scripts/test`) on free
//! loopback ports, each with a directory of its own: primaries, replicas and Sentinels.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A primary that syncs its AOF before every reply (`appendfsync always`).
    pub fn start() -> RedisServer {
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    /// A server with these extra settings (`--name value` pairs, as on its command line).
    pub fn start_with(settings: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let args = settings.iter().map(|s| s.to_string()).collect();
        let mut server = RedisServer {
            port,
            child: None,
            args,
            dir,
        };
        server.spawn();
        server
    }

    /// A replica of `primary`.
    pub fn replica_of(primary: &RedisServer) -> RedisServer {
        let port = primary.port.to_string();
        RedisServer::start_with(&[
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--replicaof",
            "127.0.0.1",
            &port,
        ])
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", "", "--daemonize", "no", "--loglevel", "warning"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start redis-server (scripts/test installs Debian's redis-server)");
        self.child = Some(child);
        wait_for_ping(self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL: what the AOF holds is what survives.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (so from its AOF).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGSTOP: the process holds its connections but answers nothing.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// Runs one command through `redis-cli` and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill9();
    }
}

/// A Sentinel watching `primary` under the name `master`, with quick failure detection.
pub struct Sentinel {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    pub fn start(primary: &RedisServer, master: &str, quorum: u32) -> Sentinel {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = dir.path().join("sentinel.conf");
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\n\
             sentinel monitor {master} 127.0.0.1 {primary} {quorum}\n\
             sentinel down-after-milliseconds {master} 1000\n\
             sentinel failover-timeout {master} 5000\n\
             sentinel parallel-syncs {master} 1\n",
            dir = dir.path().display(),
            primary = primary.port,
        );
        std::fs::write(&config, text).expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&config)
            .args(["--sentinel", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a Sentinel");
        wait_for_ping(port);
        Sentinel {
            port,
            child,
            _dir: dir,
        }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port of the primary this Sentinel names now.
    pub fn primary_port(&self, master: &str) -> Option<u16> {
        let out = cli(self.port, &["SENTINEL", "get-master-addr-by-name", master]);
        out.lines().nth(1).and_then(|p| p.trim().parse().ok())
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, which: &str) {
    if pid != 0 {
        let _ = Command::new("kill")
            .args([&format!("-{which}"), &pid.to_string()])
            .status();
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli (scripts/test installs Debian's redis-tools)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for_ping(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut answer = [0u8; 7];
            if stream.write_all(b"PING\r\n").is_ok()
                && stream.read_exact(&mut answer).is_ok()
                && (&answer == b"+PONG\r\n" || &answer == b"-NOAUTH")
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not answer PING within 10 s");
}
