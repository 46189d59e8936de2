//! `herald serve`: open the broker, listen, and stop cleanly.
//!
//! Shutdown is one small sequence, run on the first SIGTERM or SIGINT: stop accepting, tell every
//! SSE client when to come back (a jittered `retry:`), let responses end, then flush and close
//! the log. A second signal exits at once. If connections linger past the grace period the log is
//! closed anyway — an acknowledged event is already on disk, so waiting longer protects nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::broker::engine::redis::RedisEngine;
use crate::broker::{Broker, Storage};
use crate::config::Config;
use crate::http::{listener, Api};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Refused(String),
    #[error("cannot create the data directory {dir}: {source}")]
    DataDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the event store: {0}")]
    Store(#[source] crate::broker::BrokerError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// How long connections get to finish after the shutdown signal.
const GRACE: Duration = Duration::from_secs(5);

pub async fn run(config: Config) -> Result<(), ServeError> {
    if !config.listen.ip().is_loopback()
        && config.http.access.is_open()
        && !config.allow_public_publish
    {
        return Err(ServeError::Refused(format!(
            "refusing to listen on {}: anyone who can reach it could publish. Set \
             --publish-token or --jwt-secret, listen on a loopback address, or pass \
             --allow-public-publish if an open publish API is what you want",
            config.listen
        )));
    }
    if let (Storage::Disk { dir, .. }, None) = (&config.broker.storage, &config.redis) {
        std::fs::create_dir_all(dir).map_err(|source| ServeError::DataDir {
            dir: dir.clone(),
            source,
        })?;
    }
    let tls = match &config.tls {
        Some((cert, key)) => {
            Some(crate::http::tls::acceptor(cert, key).map_err(ServeError::Refused)?)
        }
        None => None,
    };
    config
        .http
        .access
        .start()
        .await
        .map_err(ServeError::Refused)?;
    raise_file_limit();
    let broker = match &config.redis {
        None => Broker::open(config.broker.clone()).map_err(ServeError::Store)?,
        Some(redis) => {
            let engine = RedisEngine::connect(redis.clone())
                .await
                .map_err(ServeError::Store)?;
            tracing::info!(redis = %engine.target(), prefix = %redis.prefix, "sharing the log in Redis");
            let presence = engine.presence(config.broker.presence_grace);
            Broker::on_engine(Arc::new(engine), config.broker.node())
                .await
                .map_err(ServeError::Store)?
                .with_presence(presence)
        }
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    set_peer_timeout(&listener, config.http.peer_timeout);
    let mut signals = Signals::listen();
    let (api, shutdown) = Api::new(broker.clone(), config.http.clone());
    let (stop_accepting, stopped) = oneshot::channel::<()>();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (tls, certificates) = match tls {
        Some((acceptor, certificates)) => (Some(acceptor), Some(certificates)),
        None => (None, None),
    };
    reload_on_hangup(certificates, config.http.access.clone());
    let server = tokio::spawn(listener::serve(listener, api, tls, async {
        let _ = stopped.await;
    }));

    if config.demo {
        tokio::spawn(crate::demo::run_timer(broker.clone()));
    }
    tracing::info!(%addr, last_id = %broker.last_visible_id(), "herald listening");
    // Scripts and tests read this line to find the port when listening on port 0.
    println!("herald listening on {scheme}://{addr}");

    signals.next().await;
    tracing::info!("shutting down: telling clients when to come back");
    let second = tokio::spawn(async move {
        signals.next().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    shutdown.trigger();
    let _ = stop_accepting.send(());
    if tokio::time::timeout(GRACE, server).await.is_err() {
        tracing::warn!("connections still open after {GRACE:?}; closing the store anyway");
    }
    broker.close().await;
    second.abort();
    tracing::info!("store flushed; bye");
    Ok(())
}

/// On each `SIGHUP`: reads the TLS certificate and key and the JWT public keys again. A file
/// that fails to load keeps what was loaded before, and the log says why; connections stay up.
fn reload_on_hangup(
    certificates: Option<std::sync::Arc<crate::http::tls::Certificates>>,
    access: crate::http::auth::Access,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!(
                "cannot listen for SIGHUP: certificates and keys reload only on restart"
            );
            return;
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                if let Some(certificates) = &certificates {
                    match certificates.reload() {
                        Ok(()) => tracing::info!("SIGHUP: reloaded the TLS certificate and key"),
                        Err(e) => {
                            tracing::warn!(error = %e, "SIGHUP: kept the TLS certificate in use")
                        }
                    }
                }
                match access.reload_public_keys() {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(keys = n, "SIGHUP: reloaded the JWT public keys"),
                    Err(e) => tracing::warn!(error = %e, "SIGHUP: kept the JWT public keys in use"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (certificates, access);
}

/// Every open connection is a file descriptor, and the usual soft limit (1,024) is far below
/// what a broker of SSE connections needs: raise it to the hard limit, and say what it is.
fn raise_file_limit() {
    #[cfg(unix)]
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(
            limit,
            "file descriptor limit: about this many connections can be open at once"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
}

/// Sets TCP_USER_TIMEOUT on the listening socket; Linux hands it down to every accepted
/// connection. A subscriber whose machine vanished (no FIN, no RST) otherwise keeps its
/// connection — and its presence — for as long as the kernel retransmits: many minutes. With
/// it, the heartbeat that goes unacknowledged ends the connection one timeout later.
fn set_peer_timeout(listener: &TcpListener, timeout: Option<std::time::Duration>) {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    if let Err(e) = socket2::SockRef::from(listener).set_tcp_user_timeout(timeout) {
        tracing::warn!(error = %e, "cannot set TCP_USER_TIMEOUT; vanished peers are noticed late");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "fuchsia")))]
    let _ = (listener, timeout);
}

/// SIGTERM and SIGINT, listened to from start-up on. One listener serves both waits: a listener
/// created after a signal was delivered would still see that delivery and take it for a second.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn listen() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
                // `None` from recv means the runtime is shutting down, not that a signal came.
                if let Some(signal) = signal {
                    if signal.recv().await.is_some() {
                        return;
                    }
                }
                std::future::pending().await
            }
            tokio::select! {
                _ = recv(&mut self.term) => {}
                _ = recv(&mut self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
