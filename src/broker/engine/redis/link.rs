//! The way to Redis: one multiplexed connection shared by every call of a node, made again
//! after any failure — through the Sentinels when they manage the primary, so a failover is
//! followed by asking them where the primary is now.
//!
//! Every call is bounded in time. A Redis that is down, stopped or partitioned costs a caller at
//! most the call timeout, never a hang; the caller answers `503` and the next call connects anew.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, RedisError, RedisResult};

use crate::broker::engine::EngineError;

/// Where the primary is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    Url(String),
    /// Sentinels (`host:port` or `redis://…` each) that know the primary by this name.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

impl std::fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::Url(url) => f.write_str(&redacted(url)),
            RedisTarget::Sentinel { sentinels, master } => {
                write!(
                    f,
                    "the primary {master:?} of Sentinels {}",
                    sentinels.join(",")
                )
            }
        }
    }
}

/// A URL with its password replaced, for messages and for what herald keeps (a relay's
/// position names its upstream).
pub fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

enum Source {
    Direct(Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

pub(crate) struct Link {
    source: Source,
    target: RedisTarget,
    timeout: Duration,
    current: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    reachable: AtomicBool,
}

impl Link {
    /// Checks the target's form; connects only when first used.
    pub fn new(target: RedisTarget, timeout: Duration) -> Result<Link, EngineError> {
        let source = match &target {
            RedisTarget::Url(url) => Source::Direct(Client::open(url.as_str()).map_err(|e| {
                EngineError::unavailable(format!("{} is not a Redis URL: {e}", redacted(url)))
            })?),
            RedisTarget::Sentinel { sentinels, master } => {
                let addresses: Vec<String> = sentinels
                    .iter()
                    .map(|s| {
                        if s.contains("://") {
                            s.clone()
                        } else {
                            format!("redis://{s}")
                        }
                    })
                    .collect();
                let client = SentinelClient::build(
                    addresses,
                    master.clone(),
                    None,
                    SentinelServerType::Master,
                )
                .map_err(|e| EngineError::unavailable(format!("bad Sentinel addresses: {e}")))?;
                Source::Sentinel(tokio::sync::Mutex::new(client))
            }
        };
        Ok(Link {
            source,
            target,
            timeout,
            current: tokio::sync::Mutex::new(None),
            reachable: AtomicBool::new(false),
        })
    }

    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the last call reached Redis.
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }

    /// A connection of its own (for a blocking read), to the primary as it is now; replies may
    /// take up to `response_timeout`.
    pub async fn dedicated(
        &self,
        response_timeout: Duration,
    ) -> Result<MultiplexedConnection, EngineError> {
        let connect = self.connect(response_timeout);
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(e)) => Err(self.failed(&e)),
            Err(_) => Err(self.timed_out()),
        }
    }

    /// A client for the primary as it is now.
    async fn client(&self) -> RedisResult<Client> {
        match &self.source {
            Source::Direct(client) => Ok(client.clone()),
            Source::Sentinel(sentinel) => sentinel.lock().await.async_get_client().await,
        }
    }

    /// A connection for Pub/Sub, to the primary as it is now.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, EngineError> {
        let connect = async { self.client().await?.get_async_pubsub().await };
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(e)) => Err(self.failed(&e)),
            Err(_) => Err(self.timed_out()),
        }
    }

    async fn connect(&self, response_timeout: Duration) -> RedisResult<MultiplexedConnection> {
        let client = self.client().await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(response_timeout));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    async fn shared(&self) -> RedisResult<MultiplexedConnection> {
        let mut current = self.current.lock().await;
        if let Some(connection) = &*current {
            return Ok(connection.clone());
        }
        let connection = self.connect(self.timeout).await?;
        *current = Some(connection.clone());
        Ok(connection)
    }

    /// Runs one call on the shared connection, within the call timeout. A failure of the
    /// connection (or of the server's role: a primary demoted to a replica refuses writes) drops
    /// it, so the next call connects again, to wherever the primary is by then.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, EngineError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let attempt = async {
            let connection = self.shared().await?;
            f(connection).await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(value)) => {
                self.reachable.store(true, Ordering::Release);
                Ok(value)
            }
            Ok(Err(e)) => Err(self.failed(&e)),
            Err(_) => Err(self.timed_out()),
        }
    }

    fn timed_out(&self) -> EngineError {
        self.forget();
        EngineError::unavailable(format!(
            "Redis ({}) did not answer within {:?}",
            self.target, self.timeout
        ))
    }

    fn failed(&self, e: &RedisError) -> EngineError {
        if matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
            || e.kind() == redis::ErrorKind::AuthenticationFailed
        {
            self.forget();
            return EngineError::unavailable(format!(
                "Redis ({}) refused herald's credentials ({e}); give them in the URL: \
                 redis://user:password@host:port",
                self.target
            ));
        }
        if is_unreachable(e) {
            self.forget();
            EngineError::unavailable(format!("Redis ({}) cannot be reached: {e}", self.target))
        } else {
            // Redis answered, with an error: it is reachable, the call is wrong.
            self.reachable.store(true, Ordering::Release);
            EngineError::store(e.clone())
        }
    }

    /// Drops the shared connection (unless a call is making a new one right now).
    fn forget(&self) {
        self.reachable.store(false, Ordering::Release);
        if let Ok(mut current) = self.current.try_lock() {
            *current = None;
        }
    }
}

/// Whether an error means "Redis is not there to serve this" (try again later, elsewhere)
/// rather than "Redis refused this call".
pub(crate) fn is_unreachable(e: &RedisError) -> bool {
    let not_serving = matches!(
        e.code(),
        Some("READONLY" | "MASTERDOWN" | "LOADING" | "BUSY" | "TRYAGAIN" | "NOREPLICAS")
    );
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || not_serving
        || matches!(
            e.kind(),
            redis::ErrorKind::MasterNameNotFoundBySentinel
                | redis::ErrorKind::EmptySentinelList
                | redis::ErrorKind::Io
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redacted("redis://app:s3cret@db:6379/2"),
            "redis://app:***@db:6379/2"
        );
        assert_eq!(redacted("redis://:s3cret@db:6379"), "redis://:***@db:6379");
        assert_eq!(redacted("redis://db:6379"), "redis://db:6379");
    }
}
