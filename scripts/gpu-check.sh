#!/usr/bin/env bash
# Builds the CUDA test binaries here (no GPU or CUDA toolkit needed: everything CUDA is dlopened)
# and packs them into .gpu/cuda-check/ (git-ignored) with a run.sh, then prints the one command
# that runs them on a GPU machine without a Rust toolchain. What it runs: the device unit tests
# (Device::cuda opens), the NVRTC compile check, every CPU-vs-GPU parity test (each
# kernels/tests/cuda_parity*.rs), each with FLOWSEG_REQUIRE_GPU=1 / FLOWSEG_REQUIRE_NVRTC=1 so
# nothing can skip silently, then the kernel benchmark (kernels/benches/cuda_kernels.rs), which
# prints one markdown table.
#
# Needs on the GPU machine: a CUDA 13 driver (580+) and libnvrtc.so.13 (the CUDA toolkit's
# lib64, or the nvidia-cuda-nvrtc wheel); run.sh looks in the usual places, and for
# libcublas.so.13 too (optional: without it the benchmark's cuBLAS column says n/a).
# Then the engine's CUDA executor: ops/tests/cuda_ops.rs (every op's twin against its CPU code,
# op alone, and a loss's backward) and ops/tests/cuda_step.rs (the supervised step on the GPU against
# the CPU, one stream against three), and `flowseg` built with `--features cuda`: run.sh trains
# graphs/supervised.yaml 40 iterations with `--device cuda` and with `--device cpu` and prints
# both runs' last losses and mIoU side by side (both must finish), then 3 CutMix-Seg iterations
# with `--sync-each-op --validate-cpu`, and the step benchmark (`peer_step gpu`, PyTorch's
# `deeplab_lite.py time-gpu` beside it when torch sees the GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu/cuda-check
rm -rf "$out"
mkdir -p "$out"

# Release binaries: debug ones are ~50x larger and the carry budget to a GPU machine is 64 MiB.
targets=(--lib --test cuda_compile --bench cuda_kernels)
for f in kernels/tests/cuda_parity*.rs; do targets+=(--test "$(basename "$f" .rs)"); done
json=$(cargo test --release -p flowseg-kernels --features cuda --no-run --message-format=json \
  "${targets[@]}")
printf '%s\n' "$json" |
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and (
            m["profile"]["test"] or "bench" in m["target"]["kind"]):
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
  cp "$exe" "$out/$name"
  strip "$out/$name" 2>/dev/null || true
done

json=$(cargo test --release -p flowseg-ops --features cuda --no-run --message-format=json \
  --test cuda_step --test cuda_ops)
printf '%s\n' "$json" | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
  cp "$exe" "$out/$name"
  strip "$out/$name" 2>/dev/null || true
done

cargo build --release --features cuda --bin flowseg
cp target/release/flowseg "$out/flowseg"
strip "$out/flowseg" 2>/dev/null || true
cp graphs/supervised.yaml "$out/supervised.yaml"
cp graphs/cutmix_seg.yaml "$out/cutmix_seg.yaml"
# The step benchmark: flowseg's side (peer_step gpu) and PyTorch's (deeplab_lite.py time-gpu).
json=$(cargo bench --features cuda --bench peer_step --no-run --message-format=json)
exe=$(printf '%s\n' "$json" | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m["target"]["name"] == "peer_step":
        print(m["executable"])
')
cp "$exe" "$out/peer_step"
strip "$out/peer_step" 2>/dev/null || true
mkdir -p "$out/peer"
cp benches/peer/graphs/*.yaml benches/peer/*.py "$out/peer/"

cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs flowseg's CUDA checks on a GPU machine; exits non-zero when any fails or skips.
set -uo pipefail
cd "$(dirname "$0")"
if ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc.so.13'; then
  for d in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda/targets/*/lib \
           $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
    if [ -e "$d/libnvrtc.so.13" ]; then export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; break; fi
  done
fi
if ! ldconfig -p 2>/dev/null | grep -q 'libcublas.so.13'; then
  for d in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda/targets/*/lib \
           $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
    if [ -e "$d/libcublas.so.13" ]; then export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; break; fi
  done
fi
nvidia-smi -L || true
ldconfig -p | grep -E 'libcuda\.so|libnvrtc' || echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
export FLOWSEG_REQUIRE_GPU=1 FLOWSEG_REQUIRE_NVRTC=1
status=0
./flowseg_kernels cuda:: --nocapture --test-threads=1 || status=1
ptxas=$(command -v ptxas || ls /usr/local/cuda/bin/ptxas 2>/dev/null || true)
if [ -n "$ptxas" ]; then
  FLOWSEG_PTXAS="$ptxas" ./cuda_compile --nocapture --test-threads=1 || status=1
else
  # Without ptxas the register/spill table is skipped (CI prints it); NVRTC still compiles.
  FLOWSEG_REQUIRE_NVRTC=0 ./cuda_compile --nocapture --test-threads=1 || status=1
fi
for t in ./cuda_parity*; do
  "$t" --nocapture --test-threads=1 || status=1
done
# The engine's CUDA executor on a whole training step.
./cuda_ops --nocapture --test-threads=1 || status=1
FLOWSEG_GRAPHS="$PWD/../../graphs" ./cuda_step --nocapture --test-threads=1 || status=1
# The CLI: the supervised graph trains on the GPU and on the CPU; both must finish.
runs="${TMPDIR:-/tmp}/flowseg-device-check"
rm -rf "$runs"
for dev in cuda cpu; do
  if ./flowseg run supervised.yaml --device "$dev" --set train.iterations=40 \
      --set train.eval_every=20 --out "$runs/$dev" >"$runs.$dev.log" 2>&1; then
    echo "flowseg run --device $dev: $(grep -E 'eval after 40|done in' "$runs.$dev.log" | tr '\n' ' ')"
  else
    echo "flowseg run --device $dev FAILED:"; tail -5 "$runs.$dev.log"; status=1
  fi
done
# The debug switches on the real device: CutMix-Seg (an EMA teacher, box masks drawn on the
# host) for 3 iterations, each op synchronised and shadowed on the CPU; the first node outside
# tolerance is named.
if ./flowseg run cutmix_seg.yaml --device cuda --sync-each-op --validate-cpu \
    --set train.iterations=3 --set train.eval_every=3 --out "$runs/validate" \
    >"$runs.validate.log" 2>&1; then
  echo "flowseg run --validate-cpu: every node of 3 CutMix-Seg steps within tolerance"
else
  echo "flowseg run --validate-cpu FAILED:"; tail -5 "$runs.validate.log"; status=1
fi
# The step benchmark (issue 15's table): flowseg's CutMix-Seg step at batch 16 (+ 2 x 16) of
# 256x256 on 1 and 3 streams and resnet50_deeplabv3plus's supervised step at batch 8 of 512x512,
# then PyTorch eager on the same card (random weights: timing only). CUDA-graph replay is not
# built, so there is no replay column.
FLOWSEG_PEER_GRAPHS="$PWD/peer" ./peer_step gpu 20 || status=1
if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  (cd peer && python3 deeplab_lite.py time-gpu 20) || status=1
else
  echo "PyTorch peer: no torch with CUDA here; its column is missing"
fi
# After the checks: the benchmark table (it checks each kernel against the CPU before timing).
./cuda_kernels || status=1
echo "cuda checks: $([ $status = 0 ] && echo PASSED || echo FAILED)"
exit $status
RUN
chmod +x "$out/run.sh"
du -sh "$out"
echo
echo "Carry $out to the GPU machine and run, from the repository root:"
echo "  bash $out/run.sh"
