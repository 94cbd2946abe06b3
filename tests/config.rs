//! Start-up refuses bad configuration, naming the key.

use crate::support::proc_status_field;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `receiptd run` with its state in `state_dir` and `env` on top.
fn receiptd_run(state_dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_receiptd"));
    command.arg("run").env("RECEIPTD_STATE__DIR", state_dir).envs(env.iter().copied());
    command
}

fn run_with(env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = receiptd_run(dir.path(), env).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn unknown_keys_and_invalid_values_stop_start_up_naming_the_key() {
    let (code, err) = run_with(&[("RECEIPTD_KAFKA__BROKERZ", "x")]);
    assert_ne!(code, 0);
    assert!(err.contains("brokerz") && err.contains("RECEIPTD_KAFKA__BROKERZ"), "{err}");
    let (code, err) = run_with(&[("RECEIPTD_FLUSH__INTERVAL_MS", "-5")]);
    assert_ne!(code, 0);
    assert!(err.contains("flush.interval_ms"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("receiptd.toml");
    std::fs::write(&file, "[http]\naddr = \"nowhere\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_receiptd")).args(["run", "--config"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http.addr"));
}

#[test]
fn a_state_dir_of_another_format_stops_start_up_naming_both_formats() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(receiptd_store::FORMAT_FILE), "1\n").unwrap();
    let out = receiptd_run(dir.path(), &[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let expected = format!("holds format 1 and this build reads format {}", receiptd_store::STORE_FORMAT);
    assert!(err.contains("state.dir") && err.contains(&expected), "{err}");
}

/// The kernel's view of the worker's transparent-huge-page flag (the
/// `THP_enabled` line of /proc/PID/status), read once the worker has opened
/// its store, which it does after applying the setting.
fn thp_enabled_of_worker(env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut child = receiptd_run(&state, env)
        // Nothing listens there: the worker starts and keeps retrying.
        .env("RECEIPTD_KAFKA__BROKERS", "127.0.0.1:1")
        .env("RECEIPTD_HTTP__ADDR", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !state.join("CURRENT").exists() {
        assert!(child.try_wait().unwrap().is_none(), "receiptd exited before opening its store");
        assert!(Instant::now() < deadline, "receiptd did not open its store in 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let thp_enabled = proc_status_field(child.id(), "THP_enabled");
    child.kill().unwrap();
    child.wait().unwrap();
    thp_enabled
}

#[test]
fn transparent_huge_pages_are_off_unless_configured_on() {
    assert_eq!(thp_enabled_of_worker(&[]), "0", "off by default");
    assert_eq!(
        thp_enabled_of_worker(&[("RECEIPTD_STATE__TRANSPARENT_HUGE_PAGES", "true")]),
        proc_status_field("self", "THP_enabled"),
        "opted in, the worker keeps what it inherited"
    );
}
