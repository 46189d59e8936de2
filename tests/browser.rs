//! Browser behaviour, in a real headless Chromium driven by playwright-core
//! (`tests/browser/eventsource.mjs`). `scripts/test` installs Chromium and the npm package.
//! Set `HERALD_SKIP_BROWSER=1` to skip deliberately; otherwise a missing browser is a failure,
//! not a silent pass.

use std::path::Path;
use std::process::Command;

fn run_browser_script(script: &str) {
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
    let status = Command::new("node")
        .arg(script)
        .current_dir(&dir)
        .env("HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
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
