//! Browser behaviour, in a real headless Chromium driven by playwright-core
//! (`tests/browser/eventsource.mjs`). `scripts/test` installs Chromium and the npm package.
//! Set `HERALD_SKIP_BROWSER=1` to skip deliberately; otherwise a missing browser is a failure,
//! not a silent pass.

mod common;

use std::path::Path;
use std::process::Command;

fn run_browser_script(script: &str) {
    run_browser_script_with(script, &[]);
}

fn run_browser_script_with(script: &str, env: &[(&str, &str)]) {
    if std::env::var_os("HERALD_SKIP_BROWSER").is_some() {
        eprintln!("HERALD_SKIP_BROWSER is set: {script} not run");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists()
            && Path::new("/usr/bin/chromium").exists(),
        "browser tests need Chromium and playwright-core: run scripts/test, which installs them"
    );
    let mut node = Command::new("node");
    common::clean_env(&mut node);
    let status = node
        .arg(script)
        .current_dir(&dir)
        .env("HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
        .envs(env.iter().copied())
        .status()
        .expect("run node");
    assert!(status.success(), "{script} failed");
}

#[test]
fn eventsource_in_chromium_gets_exact_data_and_resumes_after_kill_9() {
    run_browser_script("eventsource.mjs");
}

#[test]
fn eventsource_in_chromium_stops_for_good_after_a_seal() {
    run_browser_script("seal.mjs");
}

#[test]
fn a_listed_origin_reads_a_private_stream_with_its_cookie_and_others_get_nothing() {
    run_browser_script("cors.mjs");
}

#[test]
fn the_web_ui_dashboard_qa_htmx_and_timer_work_in_chromium() {
    run_browser_script("ui.mjs");
}

#[test]
fn ten_eventsources_share_one_http2_connection_where_http1_stalls_at_six() {
    // A throwaway certificate for 127.0.0.1; Chromium runs with --ignore-certificate-errors.
    // (Not passed as HERALD_TLS_*: herald would read those, and the plain server too.)
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("certificate");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    run_browser_script_with(
        "h2.mjs",
        &[
            ("TEST_TLS_CERT", cert_path.to_str().expect("path")),
            ("TEST_TLS_KEY", key_path.to_str().expect("path")),
        ],
    );
}
