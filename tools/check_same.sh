#!/usr/bin/env bash
# Does a change alter any result? Trains one epoch of make exp1-bce and one of make best's recipe (seed 0, with
# validation) at a git revision and in the working tree, on the CPU, and compares history.csv (all but the
# timings), test_metrics.json and test_per_image.csv digit for digit. Training on the CPU is deterministic, so a
# refactor must print "identical" for both.
#   bash check_same.sh DATA_DIR ENCODER_WEIGHTS [REVISION (default HEAD)]      (make check-same BASE=...)
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: bash check_same.sh DATA_DIR ENCODER_WEIGHTS [REVISION]" >&2; exit 2; fi
data=$(realpath "$1") weights=$(realpath "$2") base=${3:-HEAD}
py=${PY:-.venv/bin/python}
[[ $py == */* ]] && py=$(cd "$(dirname "$py")" && pwd)/$(basename "$py")  # absolute, the venv's link kept
work=$(mktemp -d)
trap 'git worktree remove --force "$work/base" 2>/dev/null; rm -rf "$work"' EXIT
git worktree add --detach "$work/base" "$base" > /dev/null
common="--data-dir $data --encoder-weights $weights --epochs 1 --seed 0 --device cpu --cache-dir $work/cache"
exp1="--freeze-encoder --loss bce --optimizer rmsprop --lr 1e-3"
best="--skips --loss bce+dice --optimizer adam --lr 1e-3 --encoder-lr-scale 0.3 --schedule cosine --warmup-epochs 1
  --random-aug --shift-aug 0.25 --ema 0.99"
for tree in "$work/base" "$PWD"; do
  name=$([ "$tree" = "$PWD" ] && echo new || echo base)
  for run in exp1 best; do
    flags=$([ $run = exp1 ] && echo "$exp1" || echo "$best")
    (cd "$tree" && "$py" train.py $common $flags --out "$work/$name-$run" > "$work/$name-$run.log" 2>&1) \
      || { echo "$name $run failed:"; tail -5 "$work/$name-$run.log"; exit 1; }
  done
done
"$py" - "$work" <<'PY'
import csv, json, sys
from pathlib import Path
work, same = Path(sys.argv[1]), True
for run in ("exp1", "best"):
    def results(tree):
        folder = work / f"{tree}-{run}"
        rows = csv.DictReader(open(folder / "history.csv"))
        history = [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]
        return history, json.load(open(folder / "test_metrics.json")), (folder / "test_per_image.csv").read_text()
    base, new = results("base"), results("new")
    parts = [name for name, b, n in zip(("history.csv", "test_metrics.json", "test_per_image.csv"), base, new) if b != n]
    print(f"{run}: {'identical' if base == new else 'DIFFERENT: ' + ', '.join(parts)}; test IoU {new[1]['iou']!r} "
          f"(was {base[1]['iou']!r}), Dice {new[1]['dice']!r}, train loss {new[0][0]['train_loss']}, val IoU "
          f"{new[0][0]['val_iou']}")
    same &= base == new
sys.exit(0 if same else 1)
PY
