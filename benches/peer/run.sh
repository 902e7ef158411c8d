#!/usr/bin/env bash
# Peer benchmark: flowseg against PyTorch on benches/peer/graphs/supervised.yaml and benches/peer/graphs/cutmix_seg.yaml
# (deeplab_lite), same machine, same run, same thread count; the result is docs/BENCHMARKS.md,
# "Peer: PyTorch, same machine".
#
#   benches/peer/run.sh                 # check + 3 alternating rounds of 20 timed steps
#   ROUNDS=5 STEPS=30 benches/peer/run.sh
#   PROFILE=1 benches/peer/run.sh       # also: per-op-kind time of both sides
#   RESNET=0 benches/peer/run.sh        # without the resnet18_deeplabv3plus steps (minutes less)
#   COMPILE=1 benches/peer/run.sh       # also: PyTorch through torch.compile (inductor), after
#                                       # each eager round; its first step compiles (minutes on
#                                       # 2 cores; later rounds reuse inductor's on-disk cache)
#
# 1. A Python venv OUTSIDE the repository ($FLOWSEG_PEER_VENV, default
#    ~/.cache/flowseg-peer-venv), reused when it imports torch, safetensors and numpy; otherwise
#    `pip install torch safetensors numpy` from PyPI (the CUDA build, ~3 GB; it runs on the CPU).
# 2. `cargo bench --bench peer_step --no-run` (release), then the numerical cross-check:
#    flowseg exports its initial weights, one batch and the logits, loss, gradients and updated
#    BN statistics of one train-mode forward+backward, and every ReLU's input;
#    benches/peer/deeplab_lite.py loads the weights, repeats the step and compares flowseg with
#    an f64 replay that takes flowseg's side of 0 at every ReLU (logits and loss 1e-4 relative,
#    gradients 1e-3): a ReLU input within float32 rounding of 0 may land on either side.
# 3. Timing, alternating flowseg and PyTorch for $ROUNDS rounds (the order flips every round), each
#    $STEPS timed steps after 3 warm-up: supervised step at batch 16 of 64×64 and 128×128,
#    CutMix-Seg step at batch 16 labeled + 2 × 16 unlabeled of 64×64, eval forward at batch 16
#    of 64×64 — and, unless RESNET=0, resnet18_deeplabv3plus (torchvision names; its PyTorch twin
#    is benches/peer/resnet18_deeplabv3plus.py, cross-checked like deeplab_lite) supervised and
#    CutMix-Seg steps at batch 8 (+ 2 × 8) of 128×128; medians over rounds and the ratio flowseg / PyTorch. PyTorch starts from flowseg's
#    exported initial weights (`--init`), so both build the network from one state; the report
#    asserts equal parameter counts.
#
# Threads: RAYON_NUM_THREADS (flowseg) = torch.set_num_threads (PyTorch) = $THREADS (default 2),
# OMP/MKL likewise. On a machine with a GPU, TORCH_DEVICE=auto (the default) times PyTorch on
# CUDA — this benchmark times flowseg's CPU executor only (its CUDA executor is not timed here
# yet), so that ratio is flowseg-CPU against PyTorch-GPU;
# TORCH_DEVICE=cpu keeps both on the CPU. The cross-check always runs on the CPU.
#
# Both sides allocate their activations afresh every step, and glibc's malloc hands large freed
# blocks back to the kernel, so each step page-faults them in again (a third of a 128×128 step
# on the reference machine). The environment is passed to both sides unchanged; for the
# allocation-warm variant in docs/BENCHMARKS.md run
#   MALLOC_MMAP_THRESHOLD_=4294967295 MALLOC_TRIM_THRESHOLD_=4294967295 benches/peer/run.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${FLOWSEG_PEER_VENV:-$HOME/.cache/flowseg-peer-venv}"
ROUNDS="${ROUNDS:-3}"
STEPS="${STEPS:-20}"
THREADS="${THREADS:-2}"
TORCH_DEVICE="${TORCH_DEVICE:-auto}"
RESNET="${RESNET:-1}"
PY="$VENV/bin/python"
PEER="$ROOT/benches/peer/deeplab_lite.py"

say() { printf '\n== %s\n' "$*"; }

say "python venv: $VENV"
if [ -x "$PY" ] && "$PY" -c 'import torch, safetensors, numpy' 2>/dev/null; then
    echo "reusing it"
else
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --upgrade pip
    "$VENV/bin/pip" install torch safetensors numpy
fi

say "building the Rust bench (release)"
cd "$ROOT"
cargo bench --bench peer_step --no-run
BIN="$(cargo bench --bench peer_step --no-run --message-format=json 2>/dev/null |
    "$PY" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "peer_step" and m.get("executable"):
        print(m["executable"])')"
[ -x "$BIN" ] || { echo "peer_step binary not found" >&2; exit 1; }

export RAYON_NUM_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/flowseg-peer.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

say "versions"
echo "cpu:    $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') ($(nproc) cores visible)"
echo "rustc:  $(rustc -V)"
"$PY" -c 'import platform, torch, numpy, safetensors
print("python:", platform.python_version())
print("torch: ", torch.__version__, "| mkldnn:", torch.backends.mkldnn.is_available(),
      "| cuda available:", torch.cuda.is_available())
print("numpy: ", numpy.__version__, "| safetensors:", safetensors.__version__)'
echo "threads: RAYON_NUM_THREADS=$THREADS, torch.set_num_threads($THREADS); torch device: $TORCH_DEVICE"
echo "malloc:  MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-default} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-default}"
# Other work on the machine (a CI job) shows here; rerun if the load is above the thread count.
echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min)"

say "numerical cross-check (batch 16 of 64×64, one train-mode forward + backward, CPU)"
"$BIN" export "$WORK"
"$PY" "$PEER" check "$WORK"
R18=()
if [ "$RESNET" = 1 ]; then
    say "numerical cross-check: resnet18_deeplabv3plus, batch 8 of 128×128"
    mkdir -p "$WORK/r18"
    "$BIN" export "$WORK/r18" --set models.student.arch=resnet18_deeplabv3plus \
        --set "models.student.params={classes: 6}" --set data.batch=8 --set data.size=128
    "$PY" "$PEER" check "$WORK/r18"
    R18=(--init-r18 "$WORK/r18/init.safetensors")
fi

say "timing: $ROUNDS alternating rounds of $STEPS steps (after 3 warm-up)"
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then order="flowseg pytorch"; else order="pytorch flowseg"; fi
    for side in $order; do
        if [ "$side" = flowseg ]; then
            "$BIN" time "$STEPS" ${R18:+resnet} | tee -a "$WORK/times.jsonl"
        else
            "$PY" "$PEER" time "$STEPS" --threads "$THREADS" --device "$TORCH_DEVICE" \
                --init "$WORK/init.safetensors" "${R18[@]}" | tee -a "$WORK/times.jsonl"
            if [ "${COMPILE:-0}" = 1 ]; then
                "$PY" "$PEER" time "$STEPS" --threads "$THREADS" --device "$TORCH_DEVICE" \
                    --init "$WORK/init.safetensors" "${R18[@]}" --compile | tee -a "$WORK/times.jsonl"
            fi
        fi
    done
done

say "result (lower ratio is better for flowseg); load now $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" "$PEER" report "$WORK/times.jsonl"

if [ "${PROFILE:-0}" = 1 ]; then
    say "profile: flowseg per op kind (each node alone, median of $STEPS passes)"
    "$BIN" profile "$STEPS"
    say "profile: PyTorch self time per aten op (torch.profiler, mean of $STEPS steps)"
    "$PY" "$PEER" profile "$STEPS" --threads "$THREADS" --device cpu --init "$WORK/init.safetensors"
fi
