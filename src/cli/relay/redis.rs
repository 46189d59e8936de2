//! `herald relay redis://… --key <k> --to <stream>`: imports a Redis stream that an app
//! `XADD`s to (a Django app's `XADD <key> * v <json>`, say), so the app keeps publishing as
//! it does and herald serves its browsers.
//!
//! Exactly once, across drops and restarts of the relay: each `XREAD` answer is published as
//! one atomic batch — its entries' events and the relay's new position (the last entry id) in
//! the state stream — with an `Idempotency-Key` made from that position, so a retry of a batch
//! whose answer was lost stores nothing twice, and a restarted relay reads its position back
//! and goes on after it.

use std::time::Duration;

use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use serde_json::json;

use super::{backoff_of, send, start, state_item, wait_to_reconnect, Published, RelayArgs};
use crate::broker::engine::redis::{redacted, text};
use crate::cli::CliError;

/// Entries per `XREAD` (and so per published batch) at most, and how long one waits.
const BATCH: usize = 100;
const BLOCK: Duration = Duration::from_secs(5);

pub async fn run(args: RelayArgs) -> Result<(), CliError> {
    let key = args.key.clone().ok_or_else(|| {
        CliError::Input(
            "a Redis upstream needs --key <the Redis stream key the app XADDs to>".into(),
        )
    })?;
    let source = redacted(&args.upstream);
    let redis = redis::Client::open(args.upstream.as_str())
        .map_err(|e| CliError::Input(format!("{source} is not a Redis URL: {e}")))?;
    let (client, mut position) = start(&args).await?;
    let mut after = match &position.last_id {
        Some(id) => {
            eprintln!("herald relay: resuming after Redis entry {id} of {key}");
            id.clone()
        }
        None => args.from.clone(),
    };
    let mut backoff = backoff_of(&args);
    loop {
        let failure = match connect(&redis).await {
            Err(e) => format!("cannot reach Redis at {source}: {e}"),
            Ok(mut connection) => loop {
                if after == "$" {
                    // "Only new ones" means after the newest now, kept across reconnections.
                    let newest = connection
                        .xrevrange_count::<_, _, _, _, redis::streams::StreamRangeReply>(
                            &key, "+", "-", 1,
                        )
                        .await;
                    match newest {
                        Ok(reply) => {
                            after = reply
                                .ids
                                .first()
                                .map_or_else(|| "0".into(), |e| e.id.clone())
                        }
                        Err(e) => {
                            break format!("reading {key} from Redis at {source} failed: {e}")
                        }
                    }
                }
                let options = StreamReadOptions::default()
                    .count(BATCH)
                    .block(BLOCK.as_millis() as usize);
                let (keys, ids) = ([&key], [&after]);
                let read = tokio::select! {
                    read = connection.xread_options::<_, _, Option<StreamReadReply>>(&keys, &ids, &options) => read,
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                };
                let reply = match read {
                    Ok(reply) => reply,
                    Err(e) => break format!("reading {key} from Redis at {source} failed: {e}"),
                };
                let entries = reply
                    .and_then(|r| r.keys.into_iter().next())
                    .map(|k| k.ids)
                    .unwrap_or_default();
                let Some(last) = entries.last().map(|e| e.id.clone()) else {
                    continue; // nothing new within BLOCK
                };
                let mut batch = Vec::with_capacity(entries.len() + 1);
                let mut relayed = Vec::with_capacity(entries.len());
                for entry in &entries {
                    match entry.map.get(&args.field).map(text) {
                        Some(Some(data)) => {
                            batch.push(json!({"stream": args.to, "data": data}));
                            relayed.push(entry.id.as_str());
                        }
                        Some(None) => eprintln!(
                            "herald relay: skipped Redis entry {}: its field {:?} is not UTF-8 text",
                            entry.id, args.field
                        ),
                        None => eprintln!(
                            "herald relay: skipped Redis entry {}: it has no field {:?}",
                            entry.id, args.field
                        ),
                    }
                }
                batch.push(state_item(&args, &position, &last));
                let idempotency = uuid::Uuid::new_v5(
                    &uuid::Uuid::NAMESPACE_URL,
                    format!("{source}\n{key}\n{}\n{last}", args.to).as_bytes(),
                );
                let idempotency = format!("relay-{idempotency}");
                let published = send(
                    &client,
                    &args,
                    &position,
                    &batch,
                    Some(&idempotency),
                    Some(&last),
                    &mut backoff,
                )
                .await?;
                match published {
                    Published::Done(_) if args.quiet => {}
                    Published::Done(ids) => {
                        for (i, entry) in relayed.iter().enumerate() {
                            let id = ids.get(i).map_or("(stored before)", String::as_str);
                            println!("relayed {key} {entry} as {id}");
                        }
                    }
                    Published::Skipped(reason) => eprintln!(
                        "herald relay: herald refused the entries up to {last}: {reason}; skipping them"
                    ),
                    Published::Stopped => return Ok(()),
                }
                position.remember(&last);
                after = last;
                backoff.reset();
            },
        };
        if !wait_to_reconnect(&mut backoff, &failure).await {
            return Ok(());
        }
    }
}

async fn connect(redis: &redis::Client) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(BLOCK + Duration::from_secs(5)));
    redis
        .get_multiplexed_async_connection_with_config(&config)
        .await
}
