//! `receiptd demo`, the README's first command: the engine on its
//! in-process Kafka, fed by synthetic chat traffic.

use std::process::Command;

/// The number after `word` in `line`, as in "folded 12345 in".
fn number_after(line: &str, word: &str) -> u64 {
    let rest = line.split_once(word).unwrap_or_else(|| panic!("no `{word}` in {line:?}")).1;
    rest.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after `{word}` in {line:?}"))
}

/// The demo folds the traffic it generates, sends deltas, reports itself
/// ready, and exits 0 when its time is up.
#[test]
fn the_demo_folds_its_traffic_and_exits_cleanly() {
    let out = Command::new(env!("CARGO_BIN_EXE_receiptd"))
        .args(["demo", "--seconds", "8", "--rate", "20000"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let seconds: Vec<&str> = stdout.lines().filter(|l| l.starts_with("t=")).collect();
    assert!(seconds.len() >= 4, "a line a second:\n{stdout}");
    assert!(seconds.iter().any(|l| l.ends_with("ready=true")), "never ready:\n{stdout}");
    let summary = stdout.lines().find(|l| l.starts_with("receiptd demo: generated")).expect("a summary line");
    assert!(number_after(summary, "folded") > 0, "{summary}");
    assert!(number_after(summary, "),") > 0, "no delta records: {summary}");
}
