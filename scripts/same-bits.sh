#!/usr/bin/env bash
# Two flowseg binaries (an earlier build and this one) train every shipped graph for a few
# iterations, with an evaluation and checkpoints, and must log the same values (every key of
# metrics.jsonl but time_s) and write byte-identical checkpoints: the check that a refactor of
# the engine (the update moved into the step's graph, say) computes what it computed before.
# Cheaper than `flowseg bench methods --carry`, which replays whole evaluation windows.
#
#   scripts/same-bits.sh OLD_BINARY NEW_BINARY [ITERATIONS]    (default 12; from the repo root)
#
# Not here: other seeds or data than the graphs' own, iterations beyond the window.
set -euo pipefail
old=${1:?usage: scripts/same-bits.sh OLD_BINARY NEW_BINARY [ITERATIONS]}
new=${2:?usage: scripts/same-bits.sh OLD_BINARY NEW_BINARY [ITERATIONS]}
its=${3:-12}
half=$(( its / 2 > 0 ? its / 2 : 1 ))
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for graph in graphs/*.yaml; do
  name=$(basename "$graph" .yaml)
  for side in old new; do
    bin=$old; [ "$side" = new ] && bin=$new
    if ! "$bin" run "$graph" --out "$out/$side/$name" --set "train.iterations=$its" \
        --set "train.eval_every=$half" --set "train.checkpoint_every=$half" >"$out/$side.$name.log" 2>&1; then
      echo "$name: the $side binary failed (log: $(tail -n 3 "$out/$side.$name.log"))"; status=1; continue 2
    fi
  done
  verdict=$(python3 - "$out/old/$name" "$out/new/$name" <<'PY'
import glob, hashlib, json, sys
def load(root):
    run = glob.glob(f"{root}/*/*/")[0]
    rows = [{k: v for k, v in json.loads(l).items() if k != "time_s"} for l in open(run + "metrics.jsonl")]
    ckpts = {c.rsplit("/", 1)[1]: hashlib.sha1(open(c, "rb").read()).hexdigest()
             for c in glob.glob(run + "checkpoints/*.safetensors")}
    return rows, ckpts
(ra, ca), (rb, cb) = load(sys.argv[1]), load(sys.argv[2])
same = ra == rb and ca == cb
print(("same" if same else "DIFFER") + f": {len(ra)} logged lines, checkpoints {sorted(ca)}"
      + ("" if ca == cb else " (checkpoint bytes differ)") + ("" if ra == rb else " (logged values differ)"))
PY
)
  echo "$name: $verdict"
  [[ $verdict == same* ]] || status=1
done
exit $status
