//! `herald relay <upstream> --to <stream>`: a robust SSE client of any upstream — a Mastodon
//! streaming API, another herald, anything that speaks `text/event-stream` — that republishes
//! the chosen event types into a herald stream. With a `redis://` upstream it imports a Redis
//! stream instead ([`redis`]): the entries an app `XADD`s. Without herald this takes a Django
//! management command and Redis; here it is one process with no state of its own.
//!
//! Exactly once, across drops and the relay's own restarts: each relayed event is published in
//! one atomic batch together with the upstream position (its id) into a small state stream in
//! herald itself. On start the relay reads that position back and sends it upstream as
//! `Last-Event-ID`; recently relayed ids are remembered, so an upstream that resends its last
//! event is not relayed twice; and when a publish fails without an answer (did it land?), the
//! state stream is asked before trying again.

mod redis;

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use clap::Args;
use eventsource_stream::Event;
use futures::StreamExt;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use super::{
    http_client, pause, refusal, sse_events, unreachable, Backoff, CliError, StreamEnd, Target,
};
use crate::broker::engine::redis::redacted;
use crate::broker::event::StreamName;

#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// The upstream SSE URL, e.g. https://mastodon.social/api/v1/streaming/public — or a
    /// Redis, `redis://[user:password@]host:port[/db]`, whose stream --key to import.
    pub upstream: String,

    /// With a Redis upstream: the Redis stream key the app `XADD`s to.
    #[arg(long, value_name = "REDIS_KEY")]
    pub key: Option<String>,

    /// With a Redis upstream: the entry field whose value is the event's data.
    #[arg(long, default_value = "v", value_name = "NAME")]
    pub field: String,

    /// With a Redis upstream, on its first start (no position kept yet): import from after
    /// this entry id; `0` imports every entry the key holds, `$` only new ones.
    #[arg(long, default_value = "0", value_name = "ENTRY_ID")]
    pub from: String,

    /// The herald stream to publish into.
    #[arg(long)]
    pub to: String,

    /// A header for the upstream request, as 'Name: value' (repeatable), e.g.
    /// 'Authorization: Bearer <access token>'.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// Relay only events of this type (repeatable; `message` is an untyped event). Default:
    /// every event.
    #[arg(long = "event", value_name = "TYPE")]
    pub events: Vec<String>,

    /// When an upstream event has no SSE id, use its data's JSON "id" field (a Mastodon
    /// status's id), so it is still relayed once only.
    #[arg(long)]
    pub map_id: bool,

    /// The herald stream that keeps the relay's position. Default: relay-state.<to>.
    #[arg(long)]
    pub state_stream: Option<String>,

    /// First pause before reconnecting, in seconds; it doubles (with jitter) up to
    /// --max-backoff while the upstream keeps failing.
    #[arg(long, default_value_t = 1.0)]
    pub backoff: f64,

    /// Longest pause between reconnections, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub max_backoff: f64,

    /// Reconnect when the upstream sends nothing, not even a heartbeat, for this many seconds.
    #[arg(long, default_value_t = 90)]
    pub idle: u64,

    /// Print nothing per relayed event (stdout stays empty); problems still go to stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,

    #[command(flatten)]
    pub target: Target,
}

/// Upstream ids relayed lately; an upstream that resumes inclusively resends one of these.
const REMEMBERED: usize = 1024;

/// Where the relay is, kept in herald.
struct Position {
    state_stream: String,
    last_id: Option<String>,
    recent: VecDeque<String>,
    recent_set: HashSet<String>,
}

impl Position {
    fn remember(&mut self, id: &str) {
        if self.recent_set.insert(id.to_owned()) {
            self.recent.push_back(id.to_owned());
        }
        while self.recent.len() > REMEMBERED {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
        self.last_id = Some(id.to_owned());
    }
}

pub async fn run(args: RelayArgs) -> Result<(), CliError> {
    if args.upstream.starts_with("redis://") || args.upstream.starts_with("rediss://") {
        return redis::run(args).await;
    }
    if args.key.is_some() {
        return Err(CliError::Input(
            "--key names a Redis stream: the upstream must then be a redis:// URL".into(),
        ));
    }
    let headers = parse_headers(&args.headers)?;
    let (client, mut position) = start(&args).await?;
    if let Some(id) = &position.last_id {
        eprintln!("herald relay: resuming after upstream id {id}");
    }
    let mut backoff = backoff_of(&args);
    loop {
        let mut request = client
            .get(&args.upstream)
            .headers(headers.clone())
            .header("accept", "text/event-stream")
            .header("cache-control", "no-cache");
        if let Some(id) = &position.last_id {
            request = request.header("last-event-id", id.as_str());
        }
        let sent = tokio::select! {
            sent = request.send() => sent,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let failure = match sent {
            Err(e) => unreachable(&args.upstream, e).to_string(),
            Ok(response) if !response.status().is_success() => {
                let refused = refusal(response).await;
                if refused.is_permanent() {
                    return Err(CliError::Input(format!("upstream refused: {refused}")));
                }
                format!("upstream answered {refused}")
            }
            Ok(response) if !is_event_stream(&response) => format!(
                "upstream answered {} instead of text/event-stream",
                response
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("no content type")
            ),
            Ok(response) => {
                match relay_response(response, &args, &client, &mut position, &mut backoff).await? {
                    Some(reason) => reason,
                    None => return Ok(()), // Ctrl-C
                }
            }
        };
        if !wait_to_reconnect(&mut backoff, &failure).await {
            return Ok(());
        }
    }
}

/// Says why the relay reconnects and waits its turn; false on Ctrl-C.
async fn wait_to_reconnect(backoff: &mut Backoff, failure: &str) -> bool {
    let delay = backoff.next_delay();
    eprintln!(
        "herald relay: {failure}; reconnecting in {:.1} s",
        delay.as_secs_f64()
    );
    pause(delay).await
}

/// Checks what both kinds of relay share, and reads the position back from herald.
async fn start(args: &RelayArgs) -> Result<(reqwest::Client, Position), CliError> {
    StreamName::new(&args.to).map_err(|e| CliError::Input(format!("--to: {}", e.0)))?;
    let state_stream = args
        .state_stream
        .clone()
        .unwrap_or_else(|| format!("relay-state.{}", args.to));
    StreamName::new(&state_stream).map_err(|e| {
        CliError::Input(format!(
            "state stream {state_stream:?}: {}; name one with --state-stream",
            e.0
        ))
    })?;
    let valid = |secs: f64| secs.is_finite() && secs > 0.0 && secs < 1e6;
    if !valid(args.backoff) || !valid(args.max_backoff) {
        return Err(CliError::Input(
            "--backoff and --max-backoff must be positive numbers of seconds".into(),
        ));
    }
    let client = http_client()?;
    let position = load_position(&client, &args.target, state_stream).await?;
    Ok((client, position))
}

fn backoff_of(args: &RelayArgs) -> Backoff {
    Backoff::new(
        Duration::from_secs_f64(args.backoff),
        Duration::from_secs_f64(args.max_backoff),
    )
}

fn is_event_stream(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

fn parse_headers(headers: &[String]) -> Result<reqwest::header::HeaderMap, CliError> {
    let mut map = reqwest::header::HeaderMap::new();
    for header in headers {
        let bad = || CliError::Input(format!("--header {header:?} is not 'Name: value'"));
        let (name, value) = header.split_once(':').ok_or_else(bad)?;
        let name =
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
        let value = reqwest::header::HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
        map.append(name, value);
    }
    Ok(map)
}

/// Reads the relay's position back from its state stream, and keeps that stream short.
async fn load_position(
    client: &reqwest::Client,
    target: &Target,
    state_stream: String,
) -> Result<Position, CliError> {
    let path = utf8_percent_encode(&state_stream, NON_ALPHANUMERIC).to_string();
    let url = target.at(&format!("/streams/{path}/events?last={}", 1000));
    let response = target
        .authorize(client.get(&url))
        .send()
        .await
        .map_err(|e| unreachable(&url, e))?;
    if !response.status().is_success() {
        return Err(refusal(response).await);
    }
    let page: Value = response.json().await.map_err(|e| unreachable(&url, e))?;
    let mut position = Position {
        state_stream,
        last_id: None,
        recent: VecDeque::new(),
        recent_set: HashSet::new(),
    };
    for event in page["events"].as_array().into_iter().flatten() {
        let state: Value =
            serde_json::from_str(event["data"].as_str().unwrap_or("")).unwrap_or_default();
        if let Some(id) = state["last_id"].as_str() {
            position.remember(id);
        }
    }
    // The state stream needs only its newest entries; a failure here costs disk, not safety.
    let retention_url = target.at(&format!("/streams/{path}/retention"));
    let trimmed = target
        .authorize(client.put(&retention_url))
        .json(&json!({"max_len": REMEMBERED}))
        .send()
        .await;
    if !matches!(&trimmed, Ok(r) if r.status().is_success()) {
        eprintln!(
            "herald relay: could not limit the state stream's retention; it grows with the relay"
        );
    }
    Ok(position)
}

/// Relays one upstream response until it ends: `Some(why)` to reconnect, `None` on Ctrl-C.
async fn relay_response(
    response: reqwest::Response,
    args: &RelayArgs,
    client: &reqwest::Client,
    position: &mut Position,
    backoff: &mut Backoff,
) -> Result<Option<String>, CliError> {
    let mut events = sse_events(
        response,
        Duration::from_secs(args.idle.max(1)),
        backoff.retry_hint(),
    );
    // The parser carries an id forward to later events that have none (the SSE last event id);
    // only an id that changed is a new event's own.
    let mut previous_id = String::new();
    loop {
        let next = tokio::select! {
            next = events.next() => next,
            _ = tokio::signal::ctrl_c() => return Ok(None),
        };
        let event = match next {
            Some(Ok(event)) => event,
            Some(Err(StreamEnd::Failed(reason))) => return Ok(Some(reason)),
            Some(Err(StreamEnd::Closed)) | None => {
                return Ok(Some("upstream ended the response".into()))
            }
        };
        let own_id = (!event.id.is_empty() && event.id != previous_id).then(|| event.id.clone());
        previous_id = event.id.clone();
        let id = own_id.or_else(|| args.map_id.then(|| data_id(&event.data)).flatten());
        if !args.events.is_empty() && !args.events.contains(&event.event) {
            continue;
        }
        if let Some(id) = &id {
            if position.recent_set.contains(id) {
                continue; // already relayed: the upstream resent it
            }
        }
        match publish(client, args, position, &event, id.as_deref(), backoff).await? {
            Published::Done(herald_ids) => {
                let herald_id = herald_ids
                    .first()
                    .map_or("(stored before the connection failed)", String::as_str);
                if !args.quiet {
                    println!(
                        "relayed {} {} as {herald_id}",
                        event.event,
                        id.as_deref().unwrap_or("-")
                    );
                }
                if let Some(id) = &id {
                    position.remember(id);
                }
                backoff.reset();
            }
            Published::Skipped(reason) => {
                eprintln!("herald relay: skipped an upstream event herald refused: {reason}")
            }
            Published::Stopped => return Ok(None),
        }
    }
}

/// A Mastodon status (and most JSON payloads) carries its own `id`.
fn data_id(data: &str) -> Option<String> {
    match serde_json::from_str::<Value>(data).ok()?.get("id")? {
        Value::String(id) if !id.is_empty() => Some(id.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

enum Published {
    /// The herald ids of what was relayed (none when only the state stream told it landed).
    Done(Vec<String>),
    /// herald refused this one event for good (too large, say); the relay goes on.
    Skipped(String),
    Stopped,
}

/// Publishes one upstream event — with its position, in one atomic batch — retrying until
/// herald has it. After a failure with no answer, the state stream says whether it landed.
async fn publish(
    client: &reqwest::Client,
    args: &RelayArgs,
    position: &Position,
    event: &Event,
    upstream_id: Option<&str>,
    backoff: &mut Backoff,
) -> Result<Published, CliError> {
    let mut item = json!({"stream": args.to, "data": event.data});
    if event.event != "message" {
        item["event"] = json!(event.event);
    }
    let mut batch = vec![item];
    if let Some(id) = upstream_id {
        batch.push(state_item(args, position, id));
    }
    send(client, args, position, &batch, None, upstream_id, backoff).await
}

/// The batch item that moves the relay's position to `id`, in the same atomic batch as what it
/// relays.
fn state_item(args: &RelayArgs, position: &Position, id: &str) -> Value {
    let state = json!({"upstream": redacted(&args.upstream), "last_id": id}).to_string();
    json!({"stream": position.state_stream, "data": state})
}

/// Sends one batch (with an `Idempotency-Key`, when given) until herald has it. After a failure
/// with no answer, the state stream says whether it landed (when the batch moves the position
/// to `upstream_id`).
async fn send(
    client: &reqwest::Client,
    args: &RelayArgs,
    position: &Position,
    batch: &[Value],
    key: Option<&str>,
    upstream_id: Option<&str>,
    backoff: &mut Backoff,
) -> Result<Published, CliError> {
    let url = args.target.at("/publish");
    // herald's own retries: the upstream's `retry:` is not for them.
    let mut retry = backoff.fresh();
    loop {
        let mut request = args.target.authorize(client.post(&url)).json(&batch);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let sent = request.send().await;
        let failure = match sent {
            Ok(response) if response.status().is_success() => {
                let body: Value = response.json().await.unwrap_or_default();
                let ids = body["ids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|id| id.as_str().map(str::to_owned))
                    .collect();
                return Ok(Published::Done(ids));
            }
            Ok(response) => {
                let refused = refusal(response).await;
                match refused {
                    CliError::Refused { status, .. }
                        if status == reqwest::StatusCode::UNAUTHORIZED
                            || status == reqwest::StatusCode::FORBIDDEN =>
                    {
                        return Err(refused)
                    }
                    _ if refused.is_permanent() => {
                        return Ok(Published::Skipped(refused.to_string()))
                    }
                    _ => refused.to_string(),
                }
            }
            Err(e) => {
                let failure = unreachable(&url, e).to_string();
                if let Some(id) = upstream_id {
                    if stored_position(client, args, position).await.as_deref() == Some(id) {
                        return Ok(Published::Done(Vec::new()));
                    }
                }
                failure
            }
        };
        let delay = retry.next_delay();
        eprintln!(
            "herald relay: publishing failed ({failure}); retrying in {:.1} s",
            delay.as_secs_f64()
        );
        if !pause(delay).await {
            return Ok(Published::Stopped);
        }
    }
}

/// The upstream id herald holds as the relay's newest position, if herald answers.
async fn stored_position(
    client: &reqwest::Client,
    args: &RelayArgs,
    position: &Position,
) -> Option<String> {
    let path = utf8_percent_encode(&position.state_stream, NON_ALPHANUMERIC);
    let url = args.target.at(&format!("/streams/{path}/events?last=1"));
    let page: Value = args
        .target
        .authorize(client.get(&url))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let state: Value = serde_json::from_str(page["events"][0]["data"].as_str()?).ok()?;
    state["last_id"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_name_colon_value() {
        let map = parse_headers(&["Authorization: Bearer abc".into(), "X-A:1".into()]).unwrap();
        assert_eq!(map["authorization"], "Bearer abc");
        assert_eq!(map["x-a"], "1");
        assert!(parse_headers(&["no colon".into()]).is_err());
        assert!(parse_headers(&["bad name: x".into()]).is_err());
    }

    #[test]
    fn ids_come_from_json_data_when_mapped() {
        assert_eq!(
            data_id(r#"{"id":"1095","content":"hi"}"#).as_deref(),
            Some("1095")
        );
        assert_eq!(data_id(r#"{"id":42}"#).as_deref(), Some("42"));
        assert_eq!(data_id("1095"), None);
        assert_eq!(data_id(r#"{"id":""}"#), None);
    }

    #[test]
    fn positions_remember_a_bounded_set_of_recent_ids() {
        let mut position = Position {
            state_stream: "s".into(),
            last_id: None,
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
        };
        for i in 0..REMEMBERED + 10 {
            position.remember(&i.to_string());
        }
        assert_eq!(position.recent.len(), REMEMBERED);
        assert!(!position.recent_set.contains("0"));
        assert!(position.recent_set.contains(&(REMEMBERED + 9).to_string()));
        assert_eq!(
            position.last_id.as_deref(),
            Some(&*(REMEMBERED + 9).to_string())
        );
    }
}
