//! A stream's life against the real server: delete, seal (and the `204` that stops browsers),
//! per-stream retention, and all of it surviving restarts, clean or kill -9.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn delete(server: &Server, stream: &str) -> (u16, Value) {
    status_of(
        client()
            .delete(server.at(&format!("/streams/{stream}")))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn put_retention(server: &Server, stream: &str, body: &str) -> (u16, Value) {
    status_of(
        client()
            .put(server.at(&format!("/streams/{stream}/retention")))
            .body(body.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn try_publish(server: &Server, stream: &str, data: &str) -> (u16, Value) {
    status_of(
        client()
            .post(server.at(&format!("/streams/{stream}")))
            .body(data.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn history(server: &Server, stream: &str) -> Vec<u64> {
    let (status, page) = get_json(server, &format!("/streams/{stream}/events?limit=1000")).await;
    assert_eq!(status, 200);
    page_ids(&page)
}

#[tokio::test]
async fn delete_removes_history_and_tells_subscribers() {
    let server = Server::start(&[]);
    let old = [
        publish(&server, "doomed", "1").await,
        publish(&server, "doomed", "2").await,
    ];
    let kept = publish(&server, "other", "stays").await;
    let live = RawSse::open(&server, "stream=doomed&stream=other", None).await;

    let (status, _) = delete(&server, "doomed").await;
    assert_eq!(status, 204);
    let text = live.wait_for("event: close").await;
    assert!(
        frames(&text).contains(&"event: close\ndata: doomed".to_string()),
        "{text:?}"
    );
    assert!(history(&server, "doomed").await.is_empty());
    let (status, _) = get_json(&server, &format!("/streams/doomed/events/{}", old[0])).await;
    assert_eq!(status, 404);
    let (_, info) = get_json(&server, "/streams/doomed").await;
    assert_eq!(
        (info["length"].clone(), info["last_id"].clone()),
        (json!(0), Value::Null)
    );
    assert_eq!(history(&server, "other").await, [kept]);

    // The name lives again, with new, higher ids; the open connection gets the new events.
    let reborn = publish(&server, "doomed", "again").await;
    assert!(reborn > old[1]);
    live.wait_for(&format!("id: {reborn}")).await;
    assert_eq!(history(&server, "doomed").await, [reborn]);
    // Resuming from before the delete finds only the new life (and no gap: nothing was trimmed).
    let resumed = RawSse::open(&server, "stream=doomed", Some(old[0] - 1)).await;
    let text = resumed.wait_for(&format!("id: {reborn}")).await;
    assert!(!text.contains("gap") && !text.contains(&format!("id: {}", old[1])));

    // Deleting what never existed is fine too.
    assert_eq!(delete(&server, "never-was").await.0, 204);
    assert_eq!(delete(&server, "bad%2Fname").await.0, 400);
}

#[tokio::test]
async fn sealing_ends_subscriptions_and_new_ones_get_204() {
    let server = Server::start(&[]);
    let ids = [
        publish(&server, "quiz", "q1").await,
        publish(&server, "quiz", "q2").await,
    ];
    let live = RawSse::open(&server, "stream=quiz", None).await;
    let from_start = RawSse::open(&server, "stream=quiz&last_id=0", None).await;
    let mixed = RawSse::open(&server, "stream=quiz&stream=chat", None).await;
    from_start.wait_for(&format!("id: {}", ids[1])).await;

    let (status, info) = seal(&server, "quiz").await;
    assert_eq!(status, 200);
    assert_eq!(info["sealed"], true);
    assert_eq!(info["last_id"], ids[1].to_string());

    // Every subscriber is told, and the response ends.
    let text = live.wait_end().await;
    assert_eq!(frames(&text), ["event: close\ndata: quiz"]);
    let text = from_start.wait_end().await;
    let got = frames(&text);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2], "event: close\ndata: quiz");
    // A subscriber of a sealed and an open stream is told, and stays for the open one.
    mixed.wait_for("event: close\ndata: quiz").await;
    let chat = publish(&server, "chat", "still talking").await;
    mixed.wait_for(&format!("id: {chat}")).await;
    assert!(!mixed.ended());

    // Nothing more can be published, singly or in a batch; nothing of the batch is stored.
    let (status, body) = try_publish(&server, "quiz", "late").await;
    assert_eq!(status, 409);
    assert!(body["error"].as_str().unwrap().contains("quiz"), "{body}");
    let response = client()
        .post(server.at("/publish"))
        .json(&json!([{"stream": "chat", "data": "x"}, {"stream": "quiz", "data": "late"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(history(&server, "chat").await, [chat]);
    assert_eq!(
        history(&server, "quiz").await,
        ids,
        "history stays readable"
    );

    // New subscriptions: nothing to wait for → 204, which makes EventSource stop.
    for (query, last) in [
        ("stream=quiz", None),
        ("stream=quiz", Some(ids[1])),
        ("stream=quiz&last_id=999999", None),
    ] {
        let response = RawSse::open(&server, query, last).await;
        assert_eq!(response.status, 204, "{query} {last:?}");
    }
    // ...unless it still has events to catch up on: those, then close, then the end.
    let behind = RawSse::open(&server, "stream=quiz", Some(ids[0])).await;
    assert_eq!(behind.status, 200);
    let text = behind.wait_end().await;
    let got = frames(&text);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].starts_with(&format!("id: {}\n", ids[1])));
    assert_eq!(got[1], "event: close\ndata: quiz");

    // Closing again is harmless.
    assert_eq!(seal(&server, "quiz").await.0, 200);
    let (_, listing) = get_json(&server, "/streams").await;
    let quiz = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "quiz")
        .unwrap();
    assert_eq!(quiz["sealed"], true);
}

#[tokio::test]
async fn a_stream_sealed_before_its_first_event_takes_none() {
    let server = Server::start(&[]);
    assert_eq!(seal(&server, "never-opened").await.0, 200);
    assert_eq!(try_publish(&server, "never-opened", "x").await.0, 409);
    let response = RawSse::open(&server, "stream=never-opened&last_id=0", None).await;
    assert_eq!(response.status, 204);
    // A deleted stream is open again.
    assert_eq!(delete(&server, "never-opened").await.0, 204);
    assert_eq!(try_publish(&server, "never-opened", "x").await.0, 201);
}

#[tokio::test]
async fn per_stream_retention_overrides_the_server_default() {
    let server = Server::start(&["--max-len", "5"]);
    let (status, body) = put_retention(&server, "short", r#"{"max_len": 2}"#).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"stream": "short", "max_len": 2, "max_age": null,
               "effective": {"max_len": 2, "max_age": null}})
    );
    let (status, body) = put_retention(&server, "forever", r#"{"max_len": 0}"#).await;
    assert_eq!(status, 200);
    assert_eq!(body["effective"], json!({"max_len": null, "max_age": null}));
    let (_, body) = get_json(&server, "/streams/default/retention").await;
    assert_eq!(
        body,
        json!({"stream": "default", "max_len": null, "max_age": null,
               "effective": {"max_len": 5, "max_age": null}})
    );

    let mut published = std::collections::HashMap::new();
    for stream in ["short", "forever", "default"] {
        let mut ids = Vec::new();
        for i in 0..8 {
            ids.push(publish(&server, stream, &i.to_string()).await);
        }
        published.insert(stream, ids);
    }
    let want = [("short", 2), ("default", 5), ("forever", 8)];
    eventually(
        "each stream trimmed to its own limit",
        Duration::from_secs(10),
        || async {
            let mut ok = true;
            for (stream, keep) in want {
                ok &= history(&server, stream).await.len() == keep;
            }
            ok
        },
    )
    .await;
    for (stream, keep) in want {
        let ids = &published[stream];
        assert_eq!(history(&server, stream).await, ids[ids.len() - keep..]);
    }

    // A subscriber resuming from a trimmed id is told once, then gets what is left.
    let short = &published["short"];
    let resumed = RawSse::open(&server, "stream=short", Some(short[0])).await;
    let text = resumed.wait_for(&format!("id: {}", short[7])).await;
    let got = frames(&text);
    assert!(got[0].starts_with("event: gap\ndata: "), "{got:?}");
    let gap: Value = serde_json::from_str(
        got[0]
            .lines()
            .nth(1)
            .unwrap()
            .strip_prefix("data: ")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        gap,
        json!({"stream": "short", "requested_after": short[0].to_string(),
               "oldest_available": short[6].to_string()})
    );
    assert_eq!(got.iter().filter(|f| f.contains("event: gap")).count(), 1);

    // Back to the server's limit with null; age limits in seconds.
    let (_, body) = put_retention(&server, "short", r#"{"max_len": null, "max_age": 0.5}"#).await;
    assert_eq!(body["effective"], json!({"max_len": 5, "max_age": 0.5}));
    eventually("age limit applied", Duration::from_secs(10), || async {
        history(&server, "short").await.is_empty()
    })
    .await;

    for bad in [
        r#"{"max_len": -1}"#,
        r#"{"max_age": "1h"}"#,
        r#"{"keep": 3}"#,
        "3",
        "{",
    ] {
        let (status, body) = put_retention(&server, "short", bad).await;
        assert_eq!(status, 400, "{bad}");
        assert!(body["error"].is_string());
    }
    let (_, body) = get_json(&server, "/streams/short/retention").await;
    assert_eq!(body["max_age"], 0.5, "a refused change changes nothing");
}

#[tokio::test]
async fn seals_deletes_and_settings_survive_restarts_clean_or_killed() {
    let mut server = Server::start(&[]);
    let sealed = publish(&server, "sealed", "last words").await;
    publish(&server, "deleted", "gone").await;
    let deleted_last = publish(&server, "deleted", "gone too").await;
    assert_eq!(seal(&server, "sealed").await.0, 200);
    assert_eq!(delete(&server, "deleted").await.0, 204);
    assert_eq!(
        put_retention(&server, "tuned", r#"{"max_len": 3, "max_age": 60}"#)
            .await
            .0,
        200
    );

    for how in ["kill -9", "SIGTERM"] {
        if how == "kill -9" {
            server.kill9();
        } else {
            server.terminate();
        }
        server.restart();
        assert_eq!(
            try_publish(&server, "sealed", "x").await.0,
            409,
            "after {how}"
        );
        assert_eq!(
            RawSse::open(&server, "stream=sealed", Some(sealed))
                .await
                .status,
            204,
            "after {how}"
        );
        assert_eq!(history(&server, "sealed").await, [sealed]);
        assert!(history(&server, "deleted").await.is_empty(), "after {how}");
        let (_, info) = get_json(&server, "/streams/deleted").await;
        assert_eq!(info["length"], 0);
        let (_, tuned) = get_json(&server, "/streams/tuned/retention").await;
        assert_eq!(tuned["max_len"], 3, "after {how}");
        assert_eq!(tuned["max_age"], 60.0);
    }
    // A deleted name takes events again, above every id handed out before.
    let (status, body) = try_publish(&server, "deleted", "new life").await;
    assert_eq!(status, 201);
    assert!(id_of(&body["id"]) > deleted_last);
}

/// `GET /streams` pages by name: `prefix`, `after`, `limit` (default and most 1,000), and a
/// `Link: rel="next"` while more remain, which a client follows to the end.
#[tokio::test]
async fn the_stream_list_is_paged_by_prefix_with_a_link_to_the_next_page() {
    let server = Server::start(&[]);
    for name in ["room:c", "room:a", "other", "room:e", "room:b", "room:d"] {
        publish(&server, name, "x").await;
    }
    let client = client();
    let mut next = Some(format!("{}/streams?prefix=room:&limit=2", server.url));
    let mut pages: Vec<Vec<String>> = Vec::new();
    while let Some(url) = next.take() {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        next = response.headers().get("link").map(|link| {
            let link = link.to_str().unwrap();
            assert!(link.ends_with(r#">; rel="next""#), "{link}");
            let path = &link[1..link.find('>').unwrap()];
            format!("{}{path}", server.url)
        });
        let page: Value = response.json().await.unwrap();
        pages.push(
            page.as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap().to_owned())
                .collect(),
        );
        assert!(pages.len() <= 3, "the links end");
    }
    assert_eq!(
        pages,
        [
            vec!["room:a", "room:b"],
            vec!["room:c", "room:d"],
            vec!["room:e"]
        ]
    );
    // Without parameters: everything, in name order, and no link.
    let all = client
        .get(format!("{}/streams", server.url))
        .send()
        .await
        .unwrap();
    assert!(all.headers().get("link").is_none());
    let all: Value = all.json().await.unwrap();
    assert_eq!(all.as_array().unwrap().len(), 6);
    assert_eq!(all[0]["name"], "other");
    // `after` alone starts past a name.
    let (_, rest) = get_json(&server, "/streams?after=room:c").await;
    let rest: Vec<&str> = rest
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(rest, ["room:d", "room:e"]);
    for bad in ["limit=0", "limit=1001", "limit=x", "after=a%2Fb"] {
        let (status, body) = get_json(&server, &format!("/streams?{bad}")).await;
        assert_eq!(status, 400, "{bad}");
        assert!(body["error"].is_string(), "{bad}");
    }
}
