//! `flowseg plan` end to end, in-process through `run_cli`: the shipped supervised graph at toy
//! size plans onto two streams with events and buffer reuse, `--verify` runs the plan under
//! random interleavings against the single-stream run, and a bad stream count is a usage error.

use std::process::ExitCode;

fn cli(args: &[&str]) -> (ExitCode, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut full = vec!["flowseg"];
    full.extend_from_slice(args);
    let code = flowseg::run_cli(full, &[], &mut out, &mut err);
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

const GRAPH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/graphs/supervised.yaml");

/// Small and quick: the shipped graph at toy size.
const SMALL: [&str; 6] = [
    "--set",
    "data.size=16",
    "--set",
    "data.batch=2",
    "--set",
    "models.student.params.width=8",
];

/// The number before `word` in `text` (`"22 events"` → 22).
fn count_before(text: &str, word: &str) -> usize {
    let at = text
        .find(&format!(" {word}"))
        .unwrap_or_else(|| panic!("no `{word}` in:\n{text}"));
    let digits: String = text[..at]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no count before `{word}`"))
}

#[test]
fn plan_prints_streams_events_and_peak_memory_of_the_training_step() {
    let mut args = vec!["plan", GRAPH];
    args.extend_from_slice(&SMALL);
    let (code, out, err) = cli(&args);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(out.contains("`supervised`, the training step"), "{out}");
    assert!(out.contains("on 2 of 2 streams"), "{out}");
    let header = out.lines().find(|l| l.starts_with(" step")).unwrap_or("");
    assert!(
        header.contains("stream 0") && header.contains("stream 1"),
        "{header}"
    );
    // Backward nodes are planned too.
    assert!(out.contains("/grad/"), "{out}");
    assert!(count_before(&out, "events") > 0, "{out}");
    let memory = out
        .lines()
        .find(|l| l.starts_with("peak memory:"))
        .unwrap_or_else(|| panic!("no peak memory line:\n{out}"));
    assert!(
        memory.contains("with reuse") && memory.contains("without"),
        "{memory}"
    );
    assert!(
        count_before(memory, "buffers") < count_before(memory, "outputs"),
        "{memory}"
    );

    // One stream: no events at all.
    args.extend_from_slice(&["--streams", "1"]);
    let (code, out, err) = cli(&args);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(
        out.contains("on 1 of 1 streams, 0 events, 0 waits, 0 redundant"),
        "{out}"
    );
}

#[test]
fn verify_runs_the_plan_under_interleavings_bit_for_bit() {
    let mut args = vec!["plan", GRAPH, "--streams", "3", "--verify", "4"];
    args.extend_from_slice(&SMALL);
    let (code, out, err) = cli(&args);
    assert_eq!(code, ExitCode::SUCCESS, "{err}");
    assert!(out.contains("verified: 4 interleavings"), "{out}");
}

#[test]
fn zero_streams_is_a_usage_error() {
    let (code, _, err) = cli(&["plan", GRAPH, "--streams", "0"]);
    assert_eq!(code, ExitCode::from(2), "{err}");
    assert!(err.contains("--streams"), "{err}");
}
