//! End-to-end: the demo network trains on the procedural data (loss falls, held-out accuracy
//! beats the all-background baseline), deterministically, and the binary reports bad flags.

use flowseg::demo::{run, DemoConfig};
use flowseg_sources::shapes::shapes_sample;
use std::process::Command;

fn small() -> DemoConfig {
    DemoConfig {
        iterations: 100,
        batch: 8,
        size: 24,
        width: 12,
        lr: 0.05,
        seed: 3,
        eval_images: 32,
    }
}

#[test]
fn demo_trains_and_is_deterministic() {
    let a = run(&small(), |_| {}).unwrap();
    let first: f32 = a.losses[..10].iter().sum::<f32>() / 10.0;
    let last: f32 = a.losses[90..].iter().sum::<f32>() / 10.0;
    assert!(last < 0.7 * first, "loss did not fall: {first} -> {last}");
    // The share of background pixels is what predicting "background" everywhere would score.
    let (mut bg, mut all) = (0usize, 0usize);
    for i in 0..32u64 {
        let (_, lab) = shapes_sample(3, (1u64 << 40) + i, 24);
        bg += lab.iter().filter(|&&l| l == 0).count();
        all += lab.len();
    }
    let baseline = bg as f64 / all as f64;
    assert!(
        a.pixel_acc > baseline + 0.02,
        "acc {} vs baseline {baseline}",
        a.pixel_acc
    );
    let b = run(&small(), |_| {}).unwrap();
    assert_eq!(a.losses, b.losses, "same seed must give identical losses");
}

#[test]
fn bad_config_is_an_error_not_a_panic() {
    let e = run(&DemoConfig { size: 7, ..small() }, |_| {}).unwrap_err();
    assert!(e.to_string().contains("size must be even"), "{e}");
    let out = Command::new(env!("CARGO_BIN_EXE_flowseg"))
        .args(["demo", "--size", "7", "--iterations", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("size must be even"));
    let out = Command::new(env!("CARGO_BIN_EXE_flowseg"))
        .args(["demo", "--batch", "x"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap reports bad flags with exit code 2"
    );
}
