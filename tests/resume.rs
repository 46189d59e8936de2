//! Resume by id: across random disconnects, across restarts, and across `kill -9`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::Value;

#[tokio::test]
async fn random_disconnects_lose_and_repeat_nothing_over_5000_events() {
    let server = Server::start(&[]);
    let url = server.url.clone();
    // The publisher runs throughout, in batches of random size, while the subscriber keeps
    // dropping its connection at random points and resuming with Last-Event-ID.
    let publisher = tokio::spawn(async move {
        let c = client();
        let mut ids = Vec::new();
        let mut n = 0;
        while n < 5000 {
            let size = fastrand::usize(1..40).min(5000 - n);
            let batch: Vec<Value> = (n..n + size)
                .map(|i| serde_json::json!({"stream": if i % 4 == 0 { "y" } else { "x" }, "data": format!("event {i}")}))
                .collect();
            let r = c
                .post(format!("{url}/publish"))
                .json(&batch)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let body: Value = r.json().await.unwrap();
            ids.extend(body["ids"].as_array().unwrap().iter().map(id_of));
            n += size;
        }
        ids
    });

    let mut received: Vec<(u64, String)> = Vec::new();
    let mut reconnects = 0;
    while received.len() < 5000 {
        let last = received.last().map_or(0, |(id, _)| *id);
        let mut events = subscribe(&server, "stream=x&stream=y", Some(last)).await;
        let read_now = fastrand::usize(1..400);
        for _ in 0..read_now {
            if received.len() == 5000 {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(30), events.next()).await {
                Ok(Some(event)) => received.push((event.id.parse().unwrap(), event.data)),
                other => panic!("stream stalled after {} events: {other:?}", received.len()),
            }
        }
        drop(events);
        reconnects += 1;
    }
    let published = publisher.await.unwrap();
    assert!(
        reconnects > 10,
        "the test really disconnected ({reconnects} times)"
    );
    let got: Vec<u64> = received.iter().map(|(id, _)| *id).collect();
    assert_eq!(got, published, "every event once, in order");
    for (i, (_, data)) in received.iter().enumerate() {
        assert_eq!(data, &format!("event {i}"));
    }
}

#[tokio::test]
async fn resumes_from_last_event_id_after_a_clean_restart() {
    let mut server = Server::start(&[]);
    let batch: Vec<(&str, String)> = (0..100).map(|i| ("r", format!("{i}"))).collect();
    let first = publish_batch(&server, &batch).await;
    let mut events = subscribe(&server, "stream=r&last_id=0", None).await;
    let seen = take(&mut events, 40).await;
    let last_seen = ids(&seen)[39];
    drop(events);

    let took = server.terminate();
    assert!(took < Duration::from_secs(10), "clean stop took {took:?}");
    assert_eq!(server.exit_code_within(Duration::from_secs(1)), Some(0));
    server.restart();
    let more = publish_batch(&server, &batch[..10]).await;
    assert!(more[0] > first[99], "ids keep rising after a restart");
    let mut events = subscribe(&server, "stream=r", Some(last_seen)).await;
    let mut expected = first[40..].to_vec();
    expected.extend(&more);
    assert_eq!(ids(&take(&mut events, expected.len()).await), expected);
}

#[tokio::test]
async fn shutdown_tells_subscribers_when_to_come_back_and_ends_their_response() {
    let mut server = Server::start(&["--shutdown-retry-window", "3"]);
    let response = client()
        .get(server.at("/sse?stream=s"))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let _opening = body.next().await;
    let pid = server.pid();
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let text = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("response ended")
        .unwrap();
    let retry: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("retry: "))
        .expect("a retry line")
        .parse()
        .unwrap();
    assert!(
        (1000..4000).contains(&retry),
        "jittered retry within the window: {retry}"
    );
    let code = server.exit_code_within(Duration::from_secs(10));
    assert_eq!(
        code,
        Some(0),
        "herald exits by itself, successfully, after one SIGTERM"
    );
}

/// Publishes single events on `workers` connections until stopped; returns what was
/// acknowledged with 201, by id.
async fn publish_until_killed(url: String, worker: usize) -> Vec<(u64, String, String)> {
    let c = client();
    let mut acked = Vec::new();
    for i in 0.. {
        let stream = format!("crash{}", worker % 3);
        let data = format!("worker {worker} event {i}\nsecond line");
        let sent = c
            .post(format!("{url}/streams/{stream}"))
            .body(data.clone())
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let Ok(response) = sent else { break };
        if response.status() != 201 {
            break;
        }
        let Ok(body) = response.json::<Value>().await else {
            break;
        };
        acked.push((id_of(&body["id"]), stream, data));
    }
    acked
}

#[tokio::test]
async fn kill_9_during_concurrent_publishing_loses_no_acknowledged_event() {
    let mut server = Server::start(&[]);
    let mut all_acked: BTreeMap<u64, (String, String)> = BTreeMap::new();
    for round in 0..3 {
        let workers: Vec<_> = (0..4)
            .map(|w| tokio::spawn(publish_until_killed(server.url.clone(), w)))
            .collect();
        tokio::time::sleep(Duration::from_millis(700 + fastrand::u64(0..600))).await;
        server.kill9();
        let mut acked_this_round = 0;
        for worker in workers {
            for (id, stream, data) in worker.await.unwrap() {
                assert!(
                    all_acked.insert(id, (stream, data)).is_none(),
                    "id {id} handed out twice"
                );
                acked_this_round += 1;
            }
        }
        assert!(
            acked_this_round > 20,
            "round {round}: only {acked_this_round} publishes acknowledged"
        );
        eprintln!("round {round}: {acked_this_round} publishes acknowledged before kill -9");

        server.restart();
        // Every acknowledged event is there, byte for byte, in every round so far.
        let c = client();
        for (id, (stream, data)) in &all_acked {
            let r = c
                .get(server.at(&format!("/streams/{stream}/events/{id}")))
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status(),
                200,
                "acknowledged event {id} of {stream} lost after kill -9 (round {round})"
            );
            let event: Value = r.json().await.unwrap();
            assert_eq!(event["data"].as_str().unwrap(), data);
        }
        // Each stream's counters agree with the events it holds, after every crash.
        let (_, list) = get_json(&server, "/streams").await;
        for info in list.as_array().unwrap() {
            let stream = info["name"].as_str().unwrap();
            let mut held = 0;
            let mut after = "0".to_string();
            loop {
                let path = format!("/streams/{stream}/events?after={after}&limit=1000");
                let (status, page) = get_json(&server, &path).await;
                assert_eq!(status, 200);
                let n = page["events"].as_array().unwrap().len();
                if n == 0 {
                    break;
                }
                held += n as u64;
                after = page["next"].as_str().unwrap().to_string();
            }
            assert_eq!(
                info["length"].as_u64().unwrap(),
                held,
                "{stream}: counted length against events held after kill -9 (round {round})"
            );
            let last = info["last_id"].as_str().unwrap();
            assert_eq!(last, after, "{stream}: last_id (round {round})");
        }
        let max_acked = *all_acked.keys().last().unwrap();
        let next = publish(&server, "crash0", "after restart").await;
        assert!(
            next > max_acked,
            "new id {next} must rise above {max_acked}"
        );
        all_acked.insert(next, ("crash0".into(), "after restart".into()));
    }
    // The counters agree with the events: lengths add up after three crashes.
    let (_, list) = get_json(&server, "/streams").await;
    let total: u64 = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["length"].as_u64().unwrap())
        .sum();
    assert!(
        total >= all_acked.len() as u64,
        "{total} stored < {} acknowledged",
        all_acked.len()
    );
}
