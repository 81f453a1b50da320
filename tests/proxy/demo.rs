//! `tidegate demo`, as a user runs it: the whole rollout story under load, through the real binary.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// One row of the demo's phase table: `phase "<label>" <seconds> <requests> <failed> <shares>`.
struct Phase {
    requests: u64,
    failed: u64,
    /// Version → percent of the phase's responses.
    shares: BTreeMap<String, f64>,
}

fn phases(stdout: &str) -> BTreeMap<String, Phase> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("phase \""))
        .map(|rest| {
            let (label, rest) = rest.split_once('"').unwrap();
            let mut fields = rest.split_whitespace();
            let _seconds = fields.next().unwrap();
            let requests = fields.next().unwrap().parse().unwrap();
            let failed = fields.next().unwrap().parse().unwrap();
            let shares = fields
                .collect::<Vec<_>>()
                .join(" ")
                .split(" · ")
                .filter_map(|s| s.split_once(' '))
                .map(|(v, pct)| (v.to_owned(), pct.trim_end_matches('%').parse().unwrap()))
                .collect();
            (
                label.to_owned(),
                Phase {
                    requests,
                    failed,
                    shares,
                },
            )
        })
        .collect()
}

/// `share` (percent) of `n` requests is within 4.5 standard deviations of `expected` percent.
fn assert_share(phase: &str, p: &Phase, version: &str, expected: f64) {
    let got = p.shares.get(version).copied().unwrap_or(0.0);
    let q = expected / 100.0;
    let sigma = (q * (1.0 - q) / p.requests.max(1) as f64).sqrt() * 100.0;
    assert!(
        (got - expected).abs() <= 4.5 * sigma + 0.5,
        "{phase}: {version} must get {expected}% of {} requests (±{:.1}), got {got}%",
        p.requests,
        4.5 * sigma + 0.5
    );
}

#[test]
fn fast_demo_rolls_v1_to_v2_canary_v10_and_back_with_nothing_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("demo.json");
    let started = Instant::now();
    let demo = |extra: &[&std::ffi::OsStr]| {
        Command::new(binary())
            .args(["demo", "--fast", "--no-report", "--listen", "127.0.0.1:0"])
            .args(["--admin", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The same story with retries and ejection off, side by side: the pods die abruptly and the
    // endpoints lag behind, so without tidegate's protection some requests must fail.
    let unprotected = demo(&["--unprotected".as_ref()]);
    let out = demo(&["--json".as_ref(), json.as_os_str()])
        .wait_with_output()
        .unwrap();
    let bare = unprotected.wait_with_output().unwrap();
    let bare_stdout = String::from_utf8_lossy(&bare.stdout);
    assert_eq!(
        bare.status.code(),
        Some(1),
        "without retries the abrupt pod deaths must cost requests (else this test proves nothing):\n{bare_stdout}"
    );
    assert!(
        bare_stdout
            .lines()
            .any(|l| l.contains(" requests, ") && !l.ends_with(" 0 failed")),
        "{bare_stdout}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the demo must finish with no failed request:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "--fast is about 15 s"
    );

    let phases = phases(&stdout);
    let labels: Vec<&str> = phases.keys().map(String::as_str).collect();
    for label in [
        "v1 steady",
        "set image v2",
        "paused, canary 10%",
        "canary 50%",
        "resume to v2",
        "set image v10 (never ready)",
        "undo to v2",
    ] {
        assert!(labels.contains(&label), "phase {label} ran: {stdout}");
    }
    for (label, p) in &phases {
        assert_eq!(p.failed, 0, "phase {label}: nothing may fail");
        assert!(
            !p.shares.contains_key("v10"),
            "{label}: v10's pods never become ready, so it gets nothing"
        );
    }
    assert_share("v1 steady", &phases["v1 steady"], "v1", 100.0);
    let canary = &phases["paused, canary 10%"];
    assert!(canary.requests >= 200, "enough load to judge the split");
    assert_share("paused at 10%", canary, "v2", 10.0);
    assert_share("paused at 50%", &phases["canary 50%"], "v2", 50.0);
    assert_share(
        "v10 stalled",
        &phases["set image v10 (never ready)"],
        "v2",
        100.0,
    );
    assert_share("undone", &phases["undo to v2"], "v2", 100.0);

    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(data["failed"], 0);
    let marks: Vec<&str> = data["marks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["label"].as_str().unwrap())
        .collect();
    assert_eq!(marks.len(), 7, "every phase is marked on the timeline");
    assert_eq!(marks[2], "paused, canary 10%");
    assert!(
        stdout.lines().any(|l| l.ends_with(" requests, 0 failed")),
        "the summary says N requests, 0 failed: {stdout}"
    );
}
