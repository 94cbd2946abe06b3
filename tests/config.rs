//! Start-up refuses bad configuration, naming the key.

use std::process::Command;

fn run_with(env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_receiptd"))
        .arg("run")
        .env("RECEIPTD_STATE__DIR", dir.path())
        .envs(env.iter().copied())
        .output()
        .unwrap();
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
