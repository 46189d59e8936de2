//! Who may publish and read, against the real server: the publish token, JWT claims, private
//! streams, presence ids from `sub`, tokens that expire mid-connection, and the refusal to
//! run an open publish API on a public address.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!";
const PUBLISH_TOKEN: &str = "backend-publish-token";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(claims: Value) -> String {
    jwt_signed(SECRET, claims)
}

fn jwt_signed(secret: &str, claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// POSTs `data` to a stream with an optional bearer token; the status and the JSON body.
async fn post(server: &Server, stream: &str, bearer: Option<&str>) -> (StatusCode, Value) {
    let mut request = client()
        .post(server.at(&format!("/streams/{stream}")))
        .body("hello");
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// A GET with an optional bearer token; the status and the JSON body (Null for an SSE body).
async fn get(server: &Server, path: &str, bearer: Option<&str>) -> (StatusCode, Value) {
    let mut request = client().get(server.at(path));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let json = if response.headers()["content-type"] == "application/json" {
        response.json().await.unwrap()
    } else {
        Value::Null
    };
    (status, json)
}

fn error_of(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no JSON error in {body}"))
}

async fn length_of(server: &Server, stream: &str) -> u64 {
    let (status, info) = get(server, &format!("/streams/{stream}"), Some(PUBLISH_TOKEN)).await;
    assert_eq!(status, 200);
    info["length"].as_u64().unwrap()
}

#[tokio::test]
async fn the_publish_token_guards_every_write_and_nothing_refused_is_stored() {
    let server = Server::start(&["--publish-token", PUBLISH_TOKEN]);
    let c = client();

    let (status, body) = post(&server, "news", None).await;
    assert_eq!(status, 401);
    assert!(error_of(&body).contains("Authorization: Bearer"));
    let response = c
        .post(server.at("/streams/news"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"herald\""
    );
    let (status, body) = post(&server, "news", Some("backend-publish-tokeN")).await;
    assert_eq!(status, 401);
    assert!(error_of(&body).contains("not the publish token"));
    let basic = c
        .post(server.at("/streams/news"))
        .basic_auth("user", Some(PUBLISH_TOKEN))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    let batch = c
        .post(server.at("/publish"))
        .json(&json!([{"stream": "news", "data": "x"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 401);
    assert_eq!(
        length_of(&server, "news").await,
        0,
        "nothing refused is stored"
    );

    let (status, _) = post(&server, "news", Some(PUBLISH_TOKEN)).await;
    assert_eq!(status, 201);

    // Closing, deleting and retention are writes too.
    let writes = [
        c.post(server.at("/streams/news/close")),
        c.delete(server.at("/streams/news")),
        c.put(server.at("/streams/news/retention"))
            .json(&json!({"max_len": 1})),
    ];
    for request in writes {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let body: Value = response.json().await.unwrap();
        error_of(&body);
    }
    let info = get(&server, "/streams/news", None).await.1;
    assert_eq!(info["length"], 1);
    assert_eq!(info["sealed"], false);

    // Reading a public stream needs nothing.
    let (status, page) = get(&server, "/streams/news/events", None).await;
    assert_eq!(status, 200);
    assert_eq!(page_ids(&page).len(), 1);
    let mut events = subscribe(&server, "stream=news&last_id=0", None).await;
    assert_eq!(take(&mut events, 1).await[0].data, "hello");

    let retention = c
        .put(server.at("/streams/news/retention"))
        .bearer_auth(PUBLISH_TOKEN)
        .json(&json!({"max_len": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(retention.status(), 200);
    let close = c
        .post(server.at("/streams/news/close"))
        .bearer_auth(PUBLISH_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(close.status(), 200);
    let delete = c
        .delete(server.at("/streams/news"))
        .bearer_auth(PUBLISH_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 204);
}

#[tokio::test]
async fn a_token_for_stream_a_fails_on_stream_b() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    let c = client();
    let token = jwt(json!({"publish": ["a", "chat:*"], "exp": now() + 600}));

    assert_eq!(post(&server, "a", Some(&token)).await.0, 201);
    assert_eq!(post(&server, "chat:lobby", Some(&token)).await.0, 201);
    let (status, body) = post(&server, "b", Some(&token)).await;
    assert_eq!(status, 403);
    assert!(error_of(&body).contains("does not cover stream b"));
    let (status, _) = post(&server, "chatter", Some(&token)).await;
    assert_eq!(status, 403, "chat:* is a prefix, not a substring");

    // A batch with one uncovered stream is refused whole.
    let batch = c
        .post(server.at("/publish"))
        .bearer_auth(&token)
        .json(&json!([{"stream": "a", "data": "1"}, {"stream": "b", "data": "2"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 403);
    let body: Value = batch.json().await.unwrap();
    assert!(error_of(&body).starts_with("event #2 (index 1):"), "{body}");
    assert_eq!(get(&server, "/streams/a", None).await.1["length"], 1);
    assert_eq!(get(&server, "/streams/b", None).await.1["length"], 0);

    // Closing or deleting b is not covered either.
    let close = c
        .post(server.at("/streams/b/close"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(close.status(), 403);

    // A subscribe-only token cannot publish.
    let reader = jwt(json!({"subscribe": ["*"]}));
    assert_eq!(post(&server, "a", Some(&reader)).await.0, 403);
}

#[tokio::test]
async fn expired_forged_and_misplaced_tokens_are_401() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    let c = client();
    let claims = json!({"publish": ["*"], "subscribe": ["*"]});

    let expired = jwt(json!({"publish": ["*"], "exp": now() - 120}));
    let (status, body) = post(&server, "a", Some(&expired)).await;
    assert_eq!(status, 401);
    assert!(error_of(&body).contains("expired"));

    let forged = jwt_signed("another-secret-of-at-least-32-bytes", claims.clone());
    let (status, body) = post(&server, "a", Some(&forged)).await;
    assert_eq!(status, 401);
    assert!(error_of(&body).contains("signature"));

    // A signature with the right secret on a tampered payload fails too.
    let good = jwt(json!({"publish": ["a"]}));
    let parts: Vec<&str> = good.split('.').collect();
    let tampered_payload = jwt(claims.clone());
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        tampered_payload.split('.').nth(1).unwrap(),
        parts[2]
    );
    assert_eq!(post(&server, "b", Some(&tampered)).await.0, 401);

    assert_eq!(post(&server, "a", Some("garbage")).await.0, 401);

    // Publishing takes the header only: a cookie or a query token could be abused cross-site.
    let valid = jwt(claims);
    let by_cookie = c
        .post(server.at("/streams/a"))
        .header("cookie", format!("herald_token={valid}"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), 401);
    let by_query = c
        .post(server.at(&format!("/streams/a?token={valid}")))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), 401);
    assert_eq!(get(&server, "/streams/a", None).await.1["length"], 0);

    // An expired token on a read of a public stream is also refused: it is wrong, not absent.
    let (status, body) = get(
        &server,
        &format!("/sse?stream=public&token={expired}"),
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert!(error_of(&body).contains("expired"));
}

#[tokio::test]
async fn private_streams_need_a_covering_subscribe_claim_for_sse_history_and_presence() {
    let server = Server::start(&[
        "--jwt-secret",
        SECRET,
        "--publish-token",
        PUBLISH_TOKEN,
        "--private",
        "user:*",
    ]);
    assert_eq!(post(&server, "user:1", Some(PUBLISH_TOKEN)).await.0, 201);
    assert_eq!(post(&server, "public", Some(PUBLISH_TOKEN)).await.0, 201);
    let mine = jwt(json!({"subscribe": ["user:1"], "exp": now() + 600}));
    let theirs = jwt(json!({"subscribe": ["user:2"]}));

    let paths = [
        "/sse?stream=user:1&last_id=0",
        "/sse?stream=public&stream=user:1",
        "/streams/user:1",
        "/streams/user:1/events",
        "/streams/user:1/events?last=1",
        "/streams/user:1/events/1",
        "/streams/user:1/presence",
        "/streams/user:1/retention",
    ];
    for path in paths {
        let (status, body) = get(&server, path, None).await;
        assert_eq!(status, 401, "{path} without a token");
        assert!(error_of(&body).contains("private"), "{path}: {body}");
        let (status, body) = get(&server, path, Some(&theirs)).await;
        assert_eq!(status, 403, "{path} with a token for user:2");
        assert!(error_of(&body).contains("does not cover"), "{path}: {body}");
        let (status, _) = get(&server, path, Some(&mine)).await;
        assert_eq!(status, 200, "{path} with a covering token");
    }

    // A public stream is readable by anyone, with or without a token.
    assert_eq!(get(&server, "/streams/public/events", None).await.0, 200);
    assert_eq!(
        get(&server, "/streams/public/events", Some(&theirs))
            .await
            .0,
        200
    );

    // The listing leaves out private streams the caller may not read.
    let names = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&get(&server, "/streams", None).await.1), ["public"]);
    assert_eq!(
        names(&get(&server, "/streams", Some(&theirs)).await.1),
        ["public"]
    );
    let mut all = names(&get(&server, "/streams", Some(&mine)).await.1);
    all.sort();
    assert_eq!(all, ["public", "user:1"]);

    // Each way a browser can carry the token works for SSE: header, cookie, query.
    let by_cookie = client()
        .get(server.at("/sse?stream=user:1&last_id=0"))
        .header("cookie", format!("theme=dark; herald_token={mine}"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), 200);
    drop(by_cookie);
    let mut by_query = subscribe(
        &server,
        &format!("stream=user:1&last_id=0&token={mine}"),
        None,
    )
    .await;
    assert_eq!(take(&mut by_query, 1).await[0].data, "hello");
}

#[tokio::test]
async fn presence_ids_come_from_the_token_sub() {
    let server = Server::start(&["--jwt-secret", SECRET, "--presence-grace", "0"]);
    let alice = jwt(json!({"sub": "alice", "subscribe": ["room"]}));

    // The token's sub makes the connection a member, with no client= at all.
    let member = RawSse::open(&server, &format!("stream=room&token={alice}"), None).await;
    assert_eq!(member.status, 200);
    eventually("alice is online", Duration::from_secs(5), || async {
        presence(&server, "room").await["clients"][0]["client"] == "alice"
    })
    .await;

    // Nobody can appear as someone else.
    let (status, body) = get(
        &server,
        &format!("/sse?stream=room&client=mallory&token={alice}"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    assert!(error_of(&body).contains("does not match"));
    let (status, _) = get(&server, "/sse?stream=room&client=alice", None).await;
    assert_eq!(status, 401, "client= without a token");
    let same = RawSse::open(
        &server,
        &format!("stream=room&client=alice&token={alice}"),
        None,
    )
    .await;
    assert_eq!(same.status, 200);

    // Without client= and without a token: an anonymous reader, not a member.
    let anonymous = RawSse::open(&server, "stream=room", None).await;
    assert_eq!(anonymous.status, 200);
    let now = presence(&server, "room").await;
    assert_eq!(now["count"], 1);
    assert_eq!(now["clients"][0]["connections"], 2);
}

#[tokio::test]
async fn an_sse_response_ends_when_its_token_expires() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    // herald allows 10 s of clock skew: this token, expired 8 s ago, is good for 2 s more.
    let short = jwt(json!({"subscribe": ["*"], "exp": now() - 8}));
    let long = jwt(json!({"subscribe": ["*"], "exp": now() + 600}));
    let ending = RawSse::open(&server, &format!("stream=s&token={short}"), None).await;
    let staying = RawSse::open(&server, &format!("stream=s&token={long}"), None).await;
    assert_eq!((ending.status, staying.status), (200, 200));
    let text = ending.wait_end().await;
    assert!(text.contains(": token expired"), "{text:?}");
    assert!(!staying.ended());
    // Its reconnect, with the same token, is refused for good.
    let (status, body) = get(&server, &format!("/sse?stream=s&token={short}"), None).await;
    assert_eq!(status, 401);
    assert!(error_of(&body).contains("expired"));
}

#[test]
fn an_open_publish_api_is_refused_on_a_public_address() {
    let run = |args: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let mut child = common::herald_command()
            .args(["--listen", "0.0.0.0:0", "--memory"])
            .args(args)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A refusal exits at once; a server that started is stopped after its first line.
        let mut first = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first).unwrap();
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        (first, String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (first, stderr) = run(&[]);
    assert_eq!(first, "", "it did not start");
    assert!(
        stderr
            .lines()
            .next()
            .unwrap_or("")
            .contains("refusing to listen on 0.0.0.0"),
        "{stderr}"
    );
    assert!(stderr.contains("--publish-token"));
    let (first, _) = run(&["--publish-token", PUBLISH_TOKEN]);
    assert!(first.starts_with("herald listening"), "{first}");
    let (first, _) = run(&["--allow-public-publish"]);
    assert!(first.starts_with("herald listening"), "{first}");
}

/// `herald token …` with the secret in the environment, as an operator runs it.
fn minted(secret: &str, args: &[&str]) -> String {
    let out = common::herald_command()
        .arg("token")
        .args(args)
        .env("HERALD_JWT_SECRET", secret)
        .output()
        .expect("run herald token");
    assert!(
        out.status.success(),
        "herald token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn herald_token_mints_what_herald_accepts_and_nothing_more() {
    let server = Server::start(&["--jwt-secret", SECRET, "--private", "user:*"]);
    let token = minted(
        SECRET,
        &[
            "--sub",
            "42",
            "--subscribe",
            "user:42",
            "--publish",
            "user:42",
            "--ttl",
            "60",
        ],
    );
    let published = client()
        .post(server.at("/streams/user:42"))
        .bearer_auth(&token)
        .body("for 42")
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), StatusCode::CREATED);
    let elsewhere = client()
        .post(server.at("/streams/user:43"))
        .bearer_auth(&token)
        .body("not for 42")
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), StatusCode::FORBIDDEN);

    let reader = RawSse::open(
        &server,
        &format!("stream=user:42&last_id=0&token={token}"),
        None,
    )
    .await;
    assert_eq!(reader.status, 200);
    reader.wait_for("data: for 42").await;
    let members: Value = client()
        .get(server.at("/streams/user:42/presence"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(members["clients"][0]["client"], "42", "sub is the member");
    let other = client()
        .get(server.at(&format!("/sse?stream=user:43&token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::FORBIDDEN);

    // Signed with another secret: not herald's.
    let forged = minted(&"x".repeat(40), &["--subscribe", "user:42"]);
    let refused = client()
        .get(server.at(&format!("/sse?stream=user:42&token={forged}")))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn metrics_need_a_token_once_any_credential_is_configured_and_healthz_never_does() {
    let status = |server: &Server, path: &str, token: Option<&str>| {
        let mut request = client().get(server.at(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap() }
    };
    let open = Server::start(&[]);
    assert_eq!(
        status(&open, "/metrics", None).await.status(),
        StatusCode::OK
    );

    let with_token = Server::start(&["--publish-token", "p-token"]);
    let refused = status(&with_token, "/metrics", None).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers().contains_key("www-authenticate"));
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("--metrics-token"),
        "{body}"
    );
    assert_eq!(
        status(&with_token, "/metrics", Some("p-token"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        status(&with_token, "/healthz", None).await.status(),
        StatusCode::OK
    );

    let signed = Server::start(&["--jwt-secret", SECRET, "--metrics-token", "m-token"]);
    assert_eq!(
        status(&signed, "/metrics", Some("m-token")).await.status(),
        StatusCode::OK
    );
    let reader = jwt(json!({"subscribe": ["*"], "publish": ["*"]}));
    assert_eq!(
        status(&signed, "/metrics", Some(&reader)).await.status(),
        StatusCode::UNAUTHORIZED,
        "a JWT, even one that may read everything, is not the metrics token"
    );
    assert_eq!(
        status(&signed, "/metrics", Some("wrong")).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&signed, "/healthz", None).await.status(),
        StatusCode::OK
    );
}

/// A fresh key pair made by openssl: (private PEM path, public PEM path).
fn key_pair(dir: &std::path::Path, name: &str, genpkey: &[&str]) -> (String, String) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pem"));
    let made = std::process::Command::new("openssl")
        .arg("genpkey")
        .args(genpkey)
        .arg("-out")
        .arg(&private)
        .output()
        .expect("openssl (scripts/test installs it)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .output()
        .expect("openssl pkey");
    assert!(out.status.success());
    (private.display().to_string(), public.display().to_string())
}

#[tokio::test]
async fn public_key_tokens_are_verified_with_the_keys_own_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = key_pair(
        dir.path(),
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let p256 = key_pair(
        dir.path(),
        "p256",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let ed = key_pair(dir.path(), "ed", &["-algorithm", "ed25519"]);
    let other = key_pair(dir.path(), "other", &["-algorithm", "ed25519"]);
    let server = Server::start(&[
        "--jwt-public-key",
        &rsa.1,
        "--jwt-public-key",
        &p256.1,
        "--jwt-public-key",
        &ed.1,
        "--private",
        "user:*",
    ]);
    for (private, kid) in [(&rsa.0, None), (&p256.0, None), (&ed.0, Some("ed"))] {
        let mut args = vec![
            "--jwt-private-key",
            private.as_str(),
            "--subscribe",
            "user:42",
        ];
        if let Some(kid) = kid {
            args.extend(["--kid", kid]);
        }
        let token = minted_with(&args);
        assert_eq!(
            read_user42(&server, token).await,
            StatusCode::OK,
            "signed with {private}"
        );
    }
    // A key herald does not have, with or without a kid.
    let stranger = minted_with(&["--jwt-private-key", &other.0, "--subscribe", "user:42"]);
    assert_eq!(
        read_user42(&server, stranger).await,
        StatusCode::UNAUTHORIZED
    );
    let wrong_kid = user42_token(&ed.0, "rsa");
    assert_eq!(
        read_user42(&server, wrong_kid).await,
        StatusCode::UNAUTHORIZED
    );
    // Algorithm confusion: HS256 "signed" with the RSA public key as the secret.
    let public_pem = std::fs::read(&rsa.1).unwrap();
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &json!({"subscribe": ["user:42"]}),
        &EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    assert_eq!(
        read_user42(&server, confused).await,
        StatusCode::UNAUTHORIZED
    );
    // alg "none": {"alg":"none","typ":"JWT"}.{"subscribe":["user:42"]}. with no signature.
    let unsigned =
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWJzY3JpYmUiOlsidXNlcjo0MiJdfQ.".to_owned();
    assert_eq!(
        read_user42(&server, unsigned).await,
        StatusCode::UNAUTHORIZED
    );
}

/// A token that may read `user:42`, signed with `private` and naming `kid`.
fn user42_token(private: &str, kid: &str) -> String {
    minted_with(&[
        "--jwt-private-key",
        private,
        "--kid",
        kid,
        "--subscribe",
        "user:42",
    ])
}

/// The status of reading `user:42`'s history with `token`.
async fn read_user42(server: &Server, token: String) -> StatusCode {
    let url = server.at(&format!("/streams/user:42/events?token={token}"));
    client().get(url).send().await.unwrap().status()
}

/// `herald token …` with these flags and no secret in the environment.
fn minted_with(args: &[&str]) -> String {
    let out = common::herald_command()
        .arg("token")
        .args(args)
        .env_remove("HERALD_JWT_SECRET")
        .output()
        .expect("run herald token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_bad_public_key_file_is_one_clear_line_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let ed = key_pair(dir.path(), "ed", &["-algorithm", "ed25519"]);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    let missing = dir.path().join("missing.pem");
    for (path, expected) in [
        (missing.display().to_string(), "cannot read the public key"),
        (garbage.display().to_string(), "is not a PEM public key"),
        (ed.0.clone(), "is a private key"),
    ] {
        let (code, stderr) = serve_refusing(&["--memory", "--jwt-public-key", &path]);
        assert_eq!(code, Some(1), "{stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains(expected), "{first}");
    }
}

/// An Ed25519 key pair for a JWKS: (private key file, the public key as a JWK with this kid).
fn jwk_pair(dir: &std::path::Path, kid: &str) -> (String, Value) {
    use base64::Engine;
    let (private, _) = key_pair(dir, kid, &["-algorithm", "ed25519"]);
    let der = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in", &private])
        .output()
        .unwrap()
        .stdout;
    // The raw Ed25519 public key is the last 32 bytes of its SubjectPublicKeyInfo.
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der[der.len() - 32..]);
    let jwk =
        json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"});
    (private, jwk)
}

/// A local identity provider's JWKS endpoint: answers what `set` holds, counting fetches.
struct Provider {
    url: String,
    set: std::sync::Arc<std::sync::Mutex<String>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Provider {
    async fn start(set: String) -> Provider {
        use std::sync::atomic::Ordering;
        let shared = std::sync::Arc::new(std::sync::Mutex::new(set));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, f) = (shared.clone(), fetches.clone());
        let route = warp::Filter::map(warp::path!("jwks.json"), move || {
            f.fetch_add(1, Ordering::SeqCst);
            let body = s.lock().unwrap().clone();
            warp::http::Response::builder()
                .header("content-type", "application/json")
                .body(body)
                .unwrap()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Provider {
            url: format!("http://{address}/jwks.json"),
            set: shared,
            fetches,
        }
    }

    fn serve(&self, set: String) {
        *self.set.lock().unwrap() = set;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_is_fetched_again_for_a_new_kid_but_not_for_every_made_up_one() {
    let dir = tempfile::tempdir().unwrap();
    let (first, first_jwk) = jwk_pair(dir.path(), "k1");
    let (second, second_jwk) = jwk_pair(dir.path(), "k2");
    let (stranger, _) = jwk_pair(dir.path(), "k3");
    let provider = Provider::start(json!({"keys": [first_jwk.clone()]}).to_string()).await;
    let server = Server::start(&["--jwks-url", &provider.url, "--private", "user:*"]);
    assert_eq!(provider.fetches(), 1, "fetched at start-up");
    assert_eq!(
        read_user42(&server, user42_token(&first, "k1")).await,
        StatusCode::OK
    );
    assert_eq!(provider.fetches(), 1, "a known kid fetches nothing");

    // The provider rotates in a new key: its first token works.
    provider.serve(json!({"keys": [first_jwk.clone(), second_jwk]}).to_string());
    assert_eq!(
        read_user42(&server, user42_token(&second, "k2")).await,
        StatusCode::OK
    );
    assert_eq!(provider.fetches(), 2);
    // Made-up kids right after: refused, and no fetch storm.
    for _ in 0..5 {
        assert_eq!(
            read_user42(&server, user42_token(&stranger, "k3")).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        provider.fetches(),
        2,
        "at most one fetch per 30 s for unknown kids"
    );
    // A key of the set is not a key for another kid's tokens.
    assert_eq!(
        read_user42(&server, user42_token(&first, "k2")).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_that_answers_garbage_at_start_up_is_one_clear_line() {
    let provider = Provider::start("this is not json".into()).await;
    for url in [
        provider.url.clone(),
        format!("http://127.0.0.1:{}/jwks.json", free_port()),
    ] {
        let (code, stderr) = serve_refusing(&["--memory", "--jwks-url", &url]);
        assert_eq!(code, Some(1), "{stderr}");
        let first = stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert!(first.contains("--jwks-url"), "{stderr}");
    }
}

/// The app behind `--auth-url`, as a Django or Rails app would be: it knows users by their
/// session cookie and lets each read only their own `inbox:<user>`. It records what it was
/// asked.
struct App {
    url: String,
    calls: std::sync::Arc<std::sync::Mutex<Vec<Call>>>,
}

/// One question to the app: its query, and the headers it came with.
type Call = (String, Vec<(String, String)>);

impl App {
    async fn start() -> App {
        use warp::Filter;
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = calls.clone();
        let route = warp::path!("auth")
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::headers_cloned())
            .then(move |query: String, headers: warp::http::HeaderMap| {
                let log = log.clone();
                async move {
                    let seen: Vec<(String, String)> = ["cookie", "origin", "x-forwarded-for"]
                        .iter()
                        .filter_map(|h| {
                            Some((h.to_string(), headers.get(*h)?.to_str().ok()?.to_owned()))
                        })
                        .collect();
                    log.lock().unwrap().push((query.clone(), seen));
                    let cookie = headers
                        .get("cookie")
                        .and_then(|c| c.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let user = cookie.strip_prefix("session=").unwrap_or_default();
                    let answer = |status: u16, body: Value| {
                        warp::http::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(body.to_string())
                            .unwrap()
                    };
                    match user {
                        "" => answer(401, json!({"error": "log in first"})),
                        "broken" => answer(500, json!({})),
                        "slow" => {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            answer(200, json!({}))
                        }
                        user => {
                            let own = format!("stream=inbox%3A{user}");
                            if query.split('&').all(|p| p == own) {
                                answer(200, json!({"client": user}))
                            } else {
                                answer(403, json!({"error": "that is not your inbox"}))
                            }
                        }
                    }
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        App {
            url: format!("http://{address}/auth"),
            calls,
        }
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_decides_private_reads_no_token_covers() {
    let app = App::start().await;
    let server = Server::start(&[
        "--auth-url",
        &app.url,
        "--auth-timeout",
        "0.5",
        "--private",
        "inbox:*",
    ]);
    publish(&server, "inbox:alice", "for alice").await;
    let get = |path: &str, cookie: Option<&str>, accept: Option<&str>| {
        let mut request = client()
            .get(server.at(path))
            .header("Origin", "https://app.example.com");
        if let Some(cookie) = cookie {
            request = request.header("Cookie", cookie);
        }
        if let Some(accept) = accept {
            request = request.header("Accept", accept);
        }
        async move { request.send().await.unwrap() }
    };
    // Alice reads her inbox, live and from history; the app's client id is her presence id.
    let sse = get(
        "/sse?stream=inbox:alice&last_id=0",
        Some("session=alice"),
        None,
    )
    .await;
    assert_eq!(sse.status(), 200);
    let mut events = Box::pin(eventsource_stream::Eventsource::eventsource(
        sse.bytes_stream(),
    ));
    let first = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut events),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!(first.data, "for alice");
    let members: Value = get("/streams/inbox:alice/presence", Some("session=alice"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(members["clients"][0]["client"], "alice", "{members}");
    let (_, seen) = app.calls.lock().unwrap()[0].clone();
    assert!(
        seen.iter()
            .any(|(h, v)| h == "origin" && v == "https://app.example.com"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(h, v)| h == "x-forwarded-for" && v.contains("127.0.0.1")),
        "{seen:?}"
    );

    // Bob's inbox: the app's 403, with its words; no session: its 401.
    let bobs = get("/streams/inbox:bob/events", Some("session=alice"), None).await;
    assert_eq!(bobs.status(), StatusCode::FORBIDDEN);
    let body: Value = bobs.json().await.unwrap();
    assert_eq!(body["error"], "that is not your inbox");
    let anonymous = get("/sse?stream=inbox:alice", None, None).await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // The app is broken or slow: an EventSource is told to come back, anything else gets 503.
    for session in ["session=broken", "session=slow"] {
        let started = std::time::Instant::now();
        let browser = get(
            "/sse?stream=inbox:alice",
            Some(session),
            Some("text/event-stream"),
        )
        .await;
        assert_eq!(browser.status(), 200, "{session}");
        let body = browser.text().await.unwrap();
        assert!(body.contains("retry: "), "{session}: {body:?}");
        let plain = get("/streams/inbox:alice/events", Some(session), None).await;
        assert_eq!(plain.status(), StatusCode::SERVICE_UNAVAILABLE, "{session}");
        assert!(plain.headers().contains_key("retry-after"));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{session}: bounded by --auth-timeout"
        );
    }

    // Public streams never ask the app.
    let before = app.calls();
    publish(&server, "news", "public").await;
    assert_eq!(get("/streams/news/events", None, None).await.status(), 200);
    assert_eq!(app.calls(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_answers_are_cached_only_when_asked() {
    let app = App::start().await;
    let server = Server::start(&[
        "--auth-url",
        &app.url,
        "--auth-cache",
        "60",
        "--private",
        "inbox:*",
    ]);
    for _ in 0..3 {
        let response = client()
            .get(server.at("/streams/inbox:carol/events"))
            .header("Cookie", "session=carol")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(app.calls(), 1, "identical requests: one call");
    let other = client()
        .get(server.at("/streams/inbox:carol/events"))
        .header("Cookie", "session=dave")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.calls(), 2, "other headers: asked again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_jwks_refresh_keeps_the_last_good_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (first, first_jwk) = jwk_pair(dir.path(), "k1");
    let (stranger, _) = jwk_pair(dir.path(), "k9");
    let provider = Provider::start(json!({"keys": [first_jwk]}).to_string()).await;
    let server = Server::start(&["--jwks-url", &provider.url, "--private", "user:*"]);
    provider.serve("<html>the provider is down</html>".into());
    // An unknown kid makes herald fetch; the fetch fails.
    assert_eq!(
        read_user42(&server, user42_token(&stranger, "k9")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(provider.fetches(), 2);
    // The keys it had still verify.
    assert_eq!(
        read_user42(&server, user42_token(&first, "k1")).await,
        StatusCode::OK
    );
}
