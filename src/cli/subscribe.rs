//! `herald subscribe <stream>…`: prints events as they arrive, like a browser's `EventSource`
//! would see them — and reconnects like one: after a drop it comes back with `Last-Event-ID`
//! (after a jittered, growing pause), so nothing is missed and nothing is printed twice. It
//! stops on Ctrl-C, when every stream it reads is sealed (herald answers `204`), and on a
//! refusal retrying cannot fix (`400`, `401`, `403`).

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::Value;

use super::{
    http_client, pause, refusal, sse_events, unreachable, Backoff, CliError, StreamEnd, Target,
};
use crate::broker::event::EventId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The data of each event, as published (multi-line data prints several lines).
    Text,
    /// One JSON object per line: {"id", "stream", "event", "data", "time"}.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct SubscribeArgs {
    /// The streams to read (one connection reads them all, in id order).
    #[arg(required = true)]
    pub streams: Vec<String>,

    /// Start after this event id (0: all retained history). Default: only new events.
    #[arg(long)]
    pub last_id: Option<String>,

    /// How to print each event.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,

    /// Be online as this presence client while subscribed.
    #[arg(long)]
    pub client: Option<String>,

    /// Reconnect when nothing, not even a heartbeat, arrives for this many seconds.
    #[arg(long, default_value_t = 90)]
    pub idle: u64,

    #[command(flatten)]
    pub target: Target,
}

/// How a response ended, when it ended well.
enum Ending {
    /// Every stream was closed, then the response ended: sealed, most likely (a delete also
    /// sends `close`, but keeps the response open). Asking again at once tells: `204` if so.
    AllClosed,
    /// Ctrl-C, or stdout closed (`| head`).
    Stopped,
}

pub async fn run(args: SubscribeArgs) -> Result<(), CliError> {
    let mut last_id = match args.last_id.as_deref() {
        Some(id) => Some(
            EventId::parse(id)
                .ok_or_else(|| {
                    CliError::Input(format!("--last-id must be a decimal id, got {id:?}"))
                })?
                .to_string(),
        ),
        None => None,
    };
    let client = http_client()?;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let url = subscribe_url(&args);
    let mut ask_again_at_once = false;
    loop {
        let mut request = client
            .get(&url)
            .header("accept", "text/event-stream")
            .header("cache-control", "no-cache");
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id.as_str());
        }
        let outcome = tokio::select! {
            response = args.target.authorize(request).send() => response,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let failure = match outcome {
            Err(e) => unreachable(&url, e),
            Ok(response) if response.status() == reqwest::StatusCode::NO_CONTENT => {
                eprintln!("herald subscribe: every stream is sealed; nothing more will come");
                return Ok(());
            }
            Ok(response) if !response.status().is_success() => {
                let refused = refusal(response).await;
                if refused.is_permanent() {
                    return Err(refused);
                }
                refused
            }
            Ok(response) => match read(response, &args, &mut last_id, &mut backoff).await {
                Ok(Ending::AllClosed) if !ask_again_at_once => {
                    ask_again_at_once = true;
                    continue;
                }
                Ok(Ending::AllClosed) => CliError::Input("the server ended the response".into()),
                Ok(Ending::Stopped) => return Ok(()),
                Err(reason) => CliError::Input(reason),
            },
        };
        ask_again_at_once = false;
        let delay = backoff.next_delay();
        eprintln!(
            "herald subscribe: {failure}; reconnecting in {:.1} s{}",
            delay.as_secs_f64(),
            last_id
                .as_deref()
                .map(|id| format!(" from id {id}"))
                .unwrap_or_default()
        );
        if !pause(delay).await {
            return Ok(());
        }
    }
}

fn subscribe_url(args: &SubscribeArgs) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for stream in &args.streams {
        query.append_pair("stream", stream);
    }
    // The envelope says which stream each event is from, and carries its time.
    query.append_pair("envelope", "1");
    if let Some(client) = &args.client {
        query.append_pair("client", client);
    }
    args.target.at(&format!("/sse?{}", query.finish()))
}

/// Prints a response's events until it ends; `Err` says why it ended badly.
async fn read(
    response: reqwest::Response,
    args: &SubscribeArgs,
    last_id: &mut Option<String>,
    backoff: &mut Backoff,
) -> Result<Ending, String> {
    let wanted: HashSet<&str> = args.streams.iter().map(String::as_str).collect();
    let mut closed: HashSet<String> = HashSet::new();
    let mut events = sse_events(
        response,
        Duration::from_secs(args.idle.max(1)),
        backoff.retry_hint(),
    );
    loop {
        let next = tokio::select! {
            next = futures::StreamExt::next(&mut events) => next,
            _ = tokio::signal::ctrl_c() => return Ok(Ending::Stopped),
        };
        let event = match next {
            Some(Ok(event)) => event,
            // herald ends a response whose streams are all sealed.
            Some(Err(StreamEnd::Closed)) | None if wanted.iter().all(|s| closed.contains(*s)) => {
                return Ok(Ending::AllClosed)
            }
            Some(Err(StreamEnd::Closed)) | None => {
                return Err("the server ended the response".into())
            }
            Some(Err(StreamEnd::Failed(reason))) => return Err(reason),
        };
        match serde_json::from_str::<Value>(&event.data) {
            // An event, in its envelope.
            Ok(envelope) if envelope.get("id").is_some() && envelope.get("stream").is_some() => {
                backoff.reset();
                let line = match args.format {
                    // herald's own compact JSON, in its field order, is already one line.
                    Format::Json => event.data.clone(),
                    Format::Text => envelope["data"].as_str().unwrap_or_default().to_owned(),
                };
                let mut stdout = std::io::stdout().lock();
                if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
                    return Ok(Ending::Stopped);
                }
                *last_id = envelope["id"].as_str().map(str::to_owned);
            }
            // herald's own frames carry no envelope.
            _ => match event.event.as_str() {
                "close" => {
                    eprintln!("herald subscribe: stream {} was closed or deleted", event.data);
                    closed.insert(event.data);
                }
                "gap" => eprintln!(
                    "herald subscribe: some events were trimmed by retention before you read them: {}",
                    event.data
                ),
                _ => {}
            },
        }
    }
}
