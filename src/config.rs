//! Flags and environment variables → one [`Config`]. Every flag has a `HERALD_*` twin; clap
//! writes `--help` from the doc comments below, so they are written for the operator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::broker::engine::redis::{valid_prefix, RedisOptions, RedisTarget};
use crate::broker::engine::Retention;
use crate::broker::{BrokerOptions, Durability, Storage};
use crate::cli::publish::PublishArgs;
use crate::cli::relay::RelayArgs;
use crate::cli::subscribe::SubscribeArgs;
use crate::cli::token::TokenArgs;
use crate::http::auth::{Access, AppAuthOptions, StreamPattern};
use crate::http::rate::PublishRate;
use crate::http::{HeartbeatStyle, HttpOptions};

/// herald: durable Server-Sent Events streams in one binary — publish over HTTP, subscribe with
/// EventSource, resume by id. `herald` alone runs `herald serve`.
#[derive(Debug, Parser)]
#[command(name = "herald", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

// Parsed once at start-up: the size of the serve flags costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Publish one event (from the argument or stdin), or one per line of stdin; prints ids.
    Publish(PublishArgs),
    /// Print events of one or more streams as they arrive, resuming after drops.
    Subscribe(SubscribeArgs),
    /// Republish events from any SSE source (a Mastodon streaming API, say), or a Redis stream
    /// an app XADDs to, into a stream.
    Relay(RelayArgs),
    /// Mint a JWT this herald accepts (signed with its --jwt-secret); prints it.
    Token(TokenArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address and port to listen on. A non-loopback address needs --publish-token or
    /// --jwt-secret (or, to run an open publish API on purpose, --allow-public-publish).
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,

    /// Directory of the event log (created if missing).
    #[arg(long, env = "HERALD_DATA", default_value = "./herald-data")]
    pub data: PathBuf,

    /// Keep events in memory only: nothing survives a restart.
    #[arg(long, env = "HERALD_MEMORY")]
    pub memory: bool,

    /// Seconds of silence after which an idle SSE connection gets a heartbeat (decimals allowed).
    #[arg(long, env = "HERALD_HEARTBEAT", default_value = "15", value_parser = parse_seconds)]
    pub heartbeat: Duration,

    /// Send heartbeats as `event: heartbeat` / `data: ping` (visible to EventSource listeners)
    /// instead of the `: heartbeat` comment.
    #[arg(long, env = "HERALD_HEARTBEAT_EVENT")]
    pub heartbeat_event: bool,

    /// Keep at most this many events per stream; older ones are trimmed in the background.
    /// 0 means no limit.
    #[arg(long, env = "HERALD_MAX_LEN", default_value_t = 100_000)]
    pub max_len: u64,

    /// Trim events older than this many seconds (decimals allowed). Default: keep by length only.
    #[arg(long, env = "HERALD_MAX_AGE", value_parser = parse_seconds)]
    pub max_age: Option<Duration>,

    /// Acknowledge publishes before they are on disk and fsync every N milliseconds instead. A
    /// crash can then lose up to N ms of acknowledged events (ids are still never reused).
    /// Default: every acknowledged event is fsync'd (concurrent publishes share one fsync).
    #[arg(long, env = "HERALD_FLUSH_INTERVAL", value_name = "MS")]
    pub flush_interval: Option<u64>,

    /// Largest event data, in bytes.
    #[arg(long, env = "HERALD_MAX_DATA", default_value_t = 1 << 20)]
    pub max_data: usize,

    /// Largest body of a POST /publish batch, in bytes.
    #[arg(long, env = "HERALD_MAX_BATCH", default_value_t = 16 << 20)]
    pub max_batch: usize,

    /// Most streams one SSE connection may read.
    #[arg(long, env = "HERALD_MAX_STREAMS", default_value_t = 32)]
    pub max_streams: usize,

    /// Memory for the store's page cache, in MiB.
    #[arg(long, env = "HERALD_CACHE_MB", default_value_t = 128)]
    pub cache_mb: u64,

    /// Events buffered per live channel; a subscriber further behind is caught up from the log.
    #[arg(long, env = "HERALD_CHANNEL_CAPACITY", default_value_t = 256)]
    pub channel_capacity: usize,

    /// On shutdown, clients are told to reconnect after a random delay within this many seconds.
    #[arg(long, env = "HERALD_SHUTDOWN_RETRY_WINDOW", default_value = "10", value_parser = parse_seconds)]
    pub shutdown_retry_window: Duration,

    /// Seconds a presence client stays online after its last connection closed, so a page
    /// reload is not a leave and a join (0: leave at once).
    #[arg(long, env = "HERALD_PRESENCE_GRACE", default_value = "5", value_parser = parse_seconds_or_zero)]
    pub presence_grace: Duration,

    /// Seconds a publish request's `Idempotency-Key` is remembered: a retry with the same key
    /// within it stores nothing and gets the first answer. At least 600 (10 minutes). Keys are
    /// kept in the store, so they outlive a restart.
    #[arg(long, env = "HERALD_IDEMPOTENCY_WINDOW", default_value = "600", value_parser = parse_idempotency_window)]
    pub idempotency_window: Duration,

    /// Drop a connection whose peer has acknowledged nothing for this many seconds (a vanished
    /// client, a half-open connection; also a subscriber that stopped reading altogether). Sets
    /// TCP_USER_TIMEOUT. Default: the heartbeat interval, so a vanished subscriber is noticed
    /// within about two heartbeats. 0 leaves it to the operating system (many minutes).
    #[arg(long, env = "HERALD_PEER_TIMEOUT", value_parser = parse_seconds_or_zero)]
    pub peer_timeout: Option<Duration>,

    /// Serve plain-HTTP `GET /sse` through hyper, like every other request, instead of
    /// herald's own SSE writer. Costs about 16 KiB more per idle subscriber; for operators who
    /// want one HTTP implementation on every path.
    #[arg(long, env = "HERALD_NO_DIRECT_SSE")]
    pub no_direct_sse: bool,

    /// Allow listening on a non-loopback address with no --publish-token and no --jwt-secret,
    /// so that anyone who can reach herald may publish, close and delete streams.
    #[arg(long, env = "HERALD_ALLOW_PUBLIC_PUBLISH")]
    pub allow_public_publish: bool,

    /// Publishing, closing, deleting and setting retention need `Authorization: Bearer <token>`
    /// with this token (or a JWT, with --jwt-secret). The token may also read every stream.
    /// Prefer the environment variable: flags show in `ps`.
    #[arg(long, env = "HERALD_PUBLISH_TOKEN", hide_env_values = true)]
    pub publish_token: Option<String>,

    /// The token `GET /metrics` takes (`Authorization: Bearer`) besides the publish token.
    /// Once any credential is configured, /metrics needs one of them, because it names
    /// streams; with none it stays open (on loopback). /healthz is always open.
    #[arg(long, env = "HERALD_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Secret for HS256 JWTs: `publish` and `subscribe` claims (lists of stream names or
    /// `prefix*` patterns), `sub` (the presence client id), `exp`. Prefer the environment
    /// variable: flags show in `ps`.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// A PEM public key whose private half signs JWTs for this herald (an identity provider's,
    /// or your app's): RS256 for an RSA key, ES256 for P-256, EdDSA for Ed25519 — the algorithm
    /// is the key's, never the token's. Repeatable (rotation: old and new side by side); a
    /// token's `kid` picks the key whose file name (without extension) it is. Comma-separated in
    /// the environment variable.
    #[arg(
        long = "jwt-public-key",
        env = "HERALD_JWT_PUBLIC_KEY",
        value_delimiter = ',',
        value_name = "PEM"
    )]
    pub jwt_public_key: Vec<PathBuf>,

    /// An identity provider's JSON Web Key Set (e.g. https://idp.example.com/.well-known/jwks.json):
    /// tokens signed with its keys are accepted, matched by `kid`. Fetched at start-up, every
    /// 10 minutes, and when a token names an unknown kid (at most every 30 s).
    #[arg(long, env = "HERALD_JWKS_URL", value_name = "URL")]
    pub jwks_url: Option<String>,

    /// Ask this URL of your app about reads of private streams no token covers: herald sends
    /// `GET <url>?stream=<name>…` with the reader's Cookie, Authorization, Origin and
    /// X-Forwarded-For; a 2xx allows (its JSON `{"client": "<id>"}` is the presence id), a 401
    /// or 403 is passed on, anything else or no answer in --auth-timeout makes herald ask the
    /// reader to come back later.
    #[arg(long, env = "HERALD_AUTH_URL", value_name = "URL")]
    pub auth_url: Option<String>,

    /// Seconds herald waits for the app's answer (decimals allowed).
    #[arg(long, env = "HERALD_AUTH_TIMEOUT", default_value = "2", value_parser = parse_seconds)]
    pub auth_timeout: Duration,

    /// Seconds an app's answer is kept for identical headers and streams (0: ask every time).
    #[arg(long, env = "HERALD_AUTH_CACHE", default_value = "0", value_parser = parse_seconds_or_zero)]
    pub auth_cache: Duration,

    /// Streams matching this pattern (a name, or a prefix ending in `*`) can only be read with
    /// a token whose subscribe claim covers them: SSE, history and presence alike. Repeatable;
    /// comma-separated in the environment variable.
    #[arg(
        long = "private",
        env = "HERALD_PRIVATE",
        value_delimiter = ',',
        value_name = "PATTERN"
    )]
    pub private: Vec<String>,

    /// A browser origin (`https://app.example.com`) whose pages may call herald, with
    /// credentials; `*` for any origin, without credentials. Repeatable; comma-separated in the
    /// environment variable.
    #[arg(
        long = "cors-origin",
        env = "HERALD_CORS_ORIGIN",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    pub cors_origin: Vec<String>,

    /// Most publish requests (single or batch) per second for each credential (the bearer token
    /// presented) or, without one, each client address; beyond it a 429 with Retry-After.
    /// Decimals allowed (0.5: one every two seconds). Readers are never limited by it. Behind a
    /// reverse proxy without tokens every publisher has the proxy's address. Default: no limit.
    #[arg(long, env = "HERALD_PUBLISH_RATE", value_name = "PER_SECOND")]
    pub publish_rate: Option<f64>,

    /// Publish requests a credential or address may make at once before --publish-rate paces
    /// it. Default: the rate, rounded up (at least 1).
    #[arg(long, env = "HERALD_PUBLISH_BURST", requires = "publish_rate")]
    pub publish_burst: Option<u32>,

    /// Most SSE subscriptions open at once (publishing and reads are not counted). Beyond it an
    /// EventSource is told to retry later. 0: no limit.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Most SSE subscriptions open at once from one client address. Behind a reverse proxy
    /// every client has the proxy's address: leave it at 0 (no limit) there.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Seconds a connection may stay silent before sending a request (keep-alive waits
    /// included), or stall in the middle of a request body, before it is closed.
    #[arg(long, env = "HERALD_IDLE_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub idle_timeout: Duration,

    /// Largest request head (request line and headers), in bytes; larger gets 431.
    #[arg(long, env = "HERALD_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// Publish a counter to the `timer` stream every second, for the /demo/timer page.
    #[arg(long, env = "HERALD_DEMO")]
    pub demo: bool,

    /// PEM certificate chain: serve HTTPS, with HTTP/2 for clients that offer it (all of a
    /// page's EventSources then share one connection). Needs --tls-key.
    #[arg(
        long,
        env = "HERALD_TLS_CERT",
        requires = "tls_key",
        value_name = "PEM"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(
        long,
        env = "HERALD_TLS_KEY",
        requires = "tls_cert",
        value_name = "PEM"
    )]
    pub tls_key: Option<PathBuf>,

    /// Share the log, the id sequence and presence with every herald node that names the same
    /// Redis (7.0 or newer) and --redis-prefix: `redis://[user:password@]host:port[/db]`, or
    /// `rediss://` for TLS. --data, --memory and --flush-interval then do not apply. Prefer
    /// the environment variable when the URL holds a password: flags show in `ps`.
    #[arg(
        long,
        env = "HERALD_REDIS",
        hide_env_values = true,
        value_name = "URL",
        conflicts_with = "redis_sentinel"
    )]
    pub redis: Option<String>,

    /// Sentinels (`host:port`, comma-separated) that manage the Redis primary named by
    /// --redis-master; herald asks them where the primary is, again after every failover.
    #[arg(
        long,
        env = "HERALD_REDIS_SENTINEL",
        value_delimiter = ',',
        value_name = "HOST:PORT",
        requires = "redis_master"
    )]
    pub redis_sentinel: Vec<String>,

    /// The primary's name in the Sentinels' configuration (`sentinel monitor <name> …`).
    #[arg(long, env = "HERALD_REDIS_MASTER", value_name = "NAME")]
    pub redis_master: Option<String>,

    /// Names this cluster's keys in Redis: nodes with the same Redis and prefix are one broker.
    #[arg(long, env = "HERALD_REDIS_PREFIX", default_value = "herald")]
    pub redis_prefix: String,

    /// Answer a publish only once this many Redis replicas have it too (WAIT), so a failover
    /// to one of them loses no acknowledged event.
    #[arg(long, env = "HERALD_REDIS_REPLICAS", default_value_t = 0)]
    pub redis_replicas: usize,

    /// Log lines as `text` (for people) or `json` (one object per line, for log pipelines).
    /// RUST_LOG picks what is logged (default: herald=info,warn).
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything `herald serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub broker: BrokerOptions,
    pub http: HttpOptions,
    pub allow_public_publish: bool,
    /// Run the built-in timer publisher (`--demo`).
    pub demo: bool,
    /// Certificate chain and key, for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Serve the log of several nodes in this Redis rather than a local one.
    pub redis: Option<RedisOptions>,
}

impl ServeArgs {
    /// The Redis engine's options, when --redis or --redis-sentinel is given.
    fn redis_options(&self) -> Result<Option<RedisOptions>, String> {
        let target = match (&self.redis, self.redis_sentinel.is_empty()) {
            (Some(url), _) => RedisTarget::Url(url.trim().to_owned()),
            (None, false) => RedisTarget::Sentinel {
                sentinels: self
                    .redis_sentinel
                    .iter()
                    .map(|s| s.trim().to_owned())
                    .collect(),
                master: self
                    .redis_master
                    .clone()
                    .ok_or("--redis-sentinel needs --redis-master")?,
            },
            (None, true) => {
                if self.redis_replicas > 0 || self.redis_master.is_some() {
                    return Err(
                        "--redis-replicas and --redis-master need --redis or --redis-sentinel"
                            .into(),
                    );
                }
                return Ok(None);
            }
        };
        valid_prefix(&self.redis_prefix)?;
        let mut options = RedisOptions::new(target);
        options.prefix = self.redis_prefix.clone();
        options.replicas = self.redis_replicas;
        options.retention = Retention {
            max_len: (self.max_len > 0).then_some(self.max_len),
            max_age_ms: self.max_age.map(|d| d.as_millis() as u64),
        };
        options.idempotency_window = self.idempotency_window;
        Ok(Some(options))
    }

    pub fn into_config(self) -> Result<Config, String> {
        if self.max_data == 0 {
            return Err("--max-data must be at least 1 byte".into());
        }
        if self.max_streams == 0 {
            return Err("--max-streams must be at least 1".into());
        }
        if self.flush_interval == Some(0) {
            return Err("--flush-interval must be at least 1 ms".into());
        }
        if self.max_header_bytes < 1024 {
            return Err("--max-header-bytes must be at least 1024".into());
        }
        let access = self.access()?;
        let cors_origins = cors_origins(&self.cors_origin)?;
        let redis = self.redis_options()?;
        let publish_rate = match self.publish_rate {
            None => None,
            Some(rate) if !(rate.is_finite() && rate > 0.0 && rate <= 1e9) => {
                return Err("--publish-rate must be a positive number of requests a second".into())
            }
            Some(rate) => Some(PublishRate {
                per_second: rate,
                burst: self.publish_burst.unwrap_or(rate.ceil() as u32).max(1),
            }),
        };
        let storage = if self.memory {
            Storage::Memory
        } else {
            Storage::Disk {
                dir: self.data,
                cache_bytes: self.cache_mb.max(1) << 20,
            }
        };
        let peer_timeout = match self.peer_timeout {
            None => Some(self.heartbeat),
            Some(t) if t.is_zero() => None,
            Some(t) => Some(t),
        };
        Ok(Config {
            listen: self.listen,
            broker: BrokerOptions {
                storage,
                durability: match self.flush_interval {
                    Some(ms) => Durability::Interval(Duration::from_millis(ms)),
                    None => Durability::Fsync,
                },
                retention: Retention {
                    max_len: (self.max_len > 0).then_some(self.max_len),
                    max_age_ms: self.max_age.map(|d| d.as_millis() as u64),
                },
                channel_capacity: self.channel_capacity.max(1),
                trim_every: Duration::from_secs(1),
                presence_grace: self.presence_grace,
                idempotency_window: self.idempotency_window,
            },
            http: HttpOptions {
                max_data_bytes: self.max_data,
                max_batch_bytes: self.max_batch,
                max_streams_per_subscription: self.max_streams,
                heartbeat: self.heartbeat,
                heartbeat_style: if self.heartbeat_event {
                    HeartbeatStyle::Event
                } else {
                    HeartbeatStyle::Comment
                },
                shutdown_retry_window: self.shutdown_retry_window,
                access,
                max_connections: (self.max_connections > 0).then_some(self.max_connections),
                max_connections_per_ip: (self.max_connections_per_ip > 0)
                    .then_some(self.max_connections_per_ip),
                cors_origins,
                idle_timeout: self.idle_timeout,
                max_header_bytes: self.max_header_bytes,
                peer_timeout,
                direct_sse: !self.no_direct_sse,
                publish_rate,
                ..HttpOptions::default()
            },
            allow_public_publish: self.allow_public_publish,
            demo: self.demo,
            tls: self.tls_cert.zip(self.tls_key),
            redis,
        })
    }
}

impl ServeArgs {
    fn access(&self) -> Result<Access, String> {
        let secret = |flag: &str, value: &Option<String>| match value {
            Some(v) if v.trim().is_empty() => Err(format!("{flag} is empty")),
            Some(v) => Ok(Some(v.clone())),
            None => Ok(None),
        };
        let publish_token = secret("--publish-token", &self.publish_token)?;
        let jwt_secret = secret("--jwt-secret", &self.jwt_secret)?;
        if jwt_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err(
                "--jwt-secret must be at least 32 bytes: a short HS256 secret can be guessed \
                 offline from any one token"
                    .into(),
            );
        }
        let private = self
            .private
            .iter()
            .map(|p| StreamPattern::parse(p.trim()).map_err(|e| format!("--private: {}", e.0)))
            .collect::<Result<Vec<_>, _>>()?;
        let tokens = jwt_secret.is_some()
            || !self.jwt_public_key.is_empty()
            || self.jwks_url.is_some()
            || self.auth_url.is_some();
        if !private.is_empty() && publish_token.is_none() && !tokens {
            return Err(
                "--private needs a way to prove a reader (--jwt-secret, --jwt-public-key, --jwks-url, --auth-url or --publish-token): otherwise no one could read \
                 those streams"
                    .into(),
            );
        }
        let metrics_token = secret("--metrics-token", &self.metrics_token)?;
        let unguarded_metrics = tokens && publish_token.is_none() && metrics_token.is_none();
        let access = Access::new(publish_token, jwt_secret, private)
            .with_public_key_files(self.jwt_public_key.clone())?
            .with_jwks_url(self.jwks_url.clone())?
            .with_app_auth(self.auth_url.clone().map(|url| AppAuthOptions {
                url,
                timeout: self.auth_timeout,
                cache: self.auth_cache,
            }))?
            .with_metrics_token(metrics_token);
        // After every check: an error, if any, is the first line of stderr.
        if unguarded_metrics {
            tracing::warn!(
                "/metrics needs --metrics-token (or --publish-token) now that credentials are \
                 configured: without one it answers 401"
            );
        }
        Ok(access)
    }
}

/// Checks each `--cors-origin` is `*` or a bare origin: scheme, host, optional port.
fn cors_origins(origins: &[String]) -> Result<Vec<String>, String> {
    let origins: Vec<String> = origins.iter().map(|o| o.trim().to_owned()).collect();
    if origins.len() > 1 && origins.iter().any(|o| o == "*") {
        return Err("--cors-origin '*' allows every origin; do not list others with it".into());
    }
    for origin in &origins {
        if origin == "*" {
            continue;
        }
        let bad = || {
            format!(
                "--cors-origin {origin:?} is not an origin like https://app.example.com \
                 (scheme and host, optional port, no path)"
            )
        };
        let uri: warp::http::Uri = origin.parse().map_err(|_| bad())?;
        let plain = matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.authority().is_some()
            && uri
                .path_and_query()
                .is_none_or(|p| p.as_str().is_empty() || p == "/")
            && !origin.ends_with('/');
        if !plain {
            return Err(bad());
        }
    }
    Ok(origins)
}

fn parse_idempotency_window(text: &str) -> Result<Duration, String> {
    let window = parse_seconds(text)?;
    if window < crate::broker::engine::local::IDEMPOTENCY_WINDOW {
        return Err(format!(
            "{text:?} is too short: publishers retry for minutes, so keys are kept at least 600 \
             seconds"
        ));
    }
    Ok(window)
}

fn parse_seconds_or_zero(text: &str) -> Result<Duration, String> {
    if text.trim().parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    parse_seconds(text)
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs.is_finite() && secs < 1e9) {
        return Err(format!("{text:?} must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_herald_is_serve_with_defaults() {
        let cli = Cli::try_parse_from(["herald"]).unwrap();
        assert!(cli.command.is_none());
        let config = cli.serve.into_config().unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(config.http.heartbeat, Duration::from_secs(15));
        assert_eq!(config.broker.durability, Durability::Fsync);
        assert_eq!(config.broker.retention.max_len, Some(100_000));
        assert_eq!(config.broker.presence_grace, Duration::from_secs(5));
        assert_eq!(config.http.peer_timeout, Some(Duration::from_secs(15)));
    }

    #[test]
    fn the_peer_timeout_follows_the_heartbeat_unless_set() {
        let config = |args: &[&str]| {
            let mut all = vec!["herald"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all)
                .unwrap()
                .serve
                .into_config()
                .unwrap()
        };
        assert_eq!(
            config(&["--heartbeat", "2.5"]).http.peer_timeout,
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            config(&["--peer-timeout", "40"]).http.peer_timeout,
            Some(Duration::from_secs(40))
        );
        assert_eq!(config(&["--peer-timeout", "0"]).http.peer_timeout, None);
        assert_eq!(
            config(&["--presence-grace", "0"]).broker.presence_grace,
            Duration::ZERO
        );
    }

    #[test]
    fn access_flags_are_checked_at_start() {
        let config = |args: &[&str]| {
            let mut all = vec!["herald"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().serve.into_config()
        };
        let secret = "0123456789abcdef0123456789abcdef";
        let ok = config(&[
            "--jwt-secret",
            secret,
            "--private",
            "user:*",
            "--private",
            "admin",
            "--cors-origin",
            "https://app.example.com",
            "--cors-origin",
            "http://localhost:3000",
        ])
        .unwrap();
        assert!(!ok.http.access.is_open());
        assert_eq!(ok.http.cors_origins.len(), 2);
        assert!(config(&["--jwt-secret", "short"]).is_err());
        assert!(config(&["--publish-token", " "]).is_err());
        assert!(config(&["--private", "a/b", "--jwt-secret", secret]).is_err());
        assert!(
            config(&["--private", "user:*"]).is_err(),
            "no one could read it"
        );
        assert!(config(&["--cors-origin", "https://a.example/path"]).is_err());
        assert!(config(&["--cors-origin", "https://a.example/"]).is_err());
        assert!(config(&["--cors-origin", "a.example"]).is_err());
        assert!(config(&["--cors-origin", "*", "--cors-origin", "https://a.example"]).is_err());
        assert!(config(&["--cors-origin", "*"]).is_ok());
        assert!(config(&["--max-header-bytes", "100"]).is_err());
        let open = config(&[]).unwrap();
        assert!(open.http.access.is_open());
        assert_eq!(open.http.max_connections, None);
        assert_eq!(open.http.idle_timeout, Duration::from_secs(30));
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["herald", "--heartbeat", "0"]).is_err());
        assert!(Cli::try_parse_from(["herald", "--heartbeat", "soon"]).is_err());
        assert!(Cli::try_parse_from(["herald", "--listen", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["herald", "serve", "--max-len", "-1"]).is_err());
        assert!(Cli::try_parse_from(["herald", "--presence-grace", "-1"]).is_err());
        assert!(Cli::try_parse_from(["herald", "--idempotency-window", "60"]).is_err());
        assert!(Cli::try_parse_from(["herald", "--peer-timeout", "never"]).is_err());
    }
}
