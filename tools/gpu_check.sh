#!/usr/bin/env bash
# Everything the GPU numbers in docs/speed.md come from, in one command (make gpu-check):
#   bash tools/gpu_check.sh DATA_DIR ENCODER_WEIGHTS OUT_DIR      (make gpu-check)
# 1. the GPU, driver and torch version; 2. bench.py with mixed precision on and off, at batch 32 and 256, and a
# profile of make best's training step; 3. make best's recipe for seed 0 with mixed precision (the default),
# with --no-amp and with --compile, then exp1-bce and exp2-finetune, each timed end to end and per epoch
# (history.csv), each scoring its test split as usual. Every log, history and metrics file goes to OUT_DIR and,
# packed, to OUT_DIR/gpu-check.tar.gz. Variables: PY (python), DEVICE (cuda), EPOCHS (15), EXTRA (more train.py
# flags, e.g. for a quick try on the CPU), BENCH (more bench.py flags), BUDGET (seconds after which the remaining
# steps are skipped), COMPILE_LIMIT (seconds the --compile run may take; 124 in the summary: it was stopped).
set -u
if [ $# -ne 3 ]; then echo "usage: bash tools/gpu_check.sh DATA_DIR ENCODER_WEIGHTS OUT_DIR" >&2; exit 2; fi
data=$1 weights=$2 out=$3
py=${PY:-python3} device=${DEVICE:-cuda} epochs=${EPOCHS:-15} extra=${EXTRA:-} bench=${BENCH:-}
budget=${BUDGET:-1000000000}
mkdir -p "$out/runs" || exit 1
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1   # plain lines in the logs
start=$SECONDS
summary="$out/summary.txt"
: > "$summary"

# step NAME COMMAND...: run it with its output in OUT_DIR/NAME.log; one summary line (exit code, seconds).
step() {
  local name=$1; shift
  if [ $((SECONDS - start)) -ge "$budget" ]; then
    echo "$name: skipped (budget of ${budget}s spent)" | tee -a "$summary"; return
  fi
  local t0=$SECONDS
  timeout "${LIMIT:-1000000}" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc, $((SECONDS - t0)) s end to end" | tee -a "$summary"
  tail -n 4 "$out/$name.log"
  (cd "$out" && tar czf gpu-check.tar.gz --exclude='*.pt' --exclude='gpu-check.tar.gz' .)
}

train() {  # train NAME FLAGS...: one train.py run in OUT_DIR/runs/NAME
  local name=$1; shift
  step "$name" "$py" train.py --data-dir "$data" --encoder-weights "$weights" --cache-dir "$out/cache" \
    --out "$out/runs/$name" --device "$device" --epochs "$epochs" --workers 8 --overwrite "$@" $extra
}

best="--skips --loss bce+dice --optimizer adam --lr 1e-3 --encoder-lr-scale 0.3 --schedule cosine
  --warmup-epochs 1 --random-aug --shift-aug 0.25 --ema 0.99 --val-fraction 0 --seed 0"  # the Makefile's BEST
step env bash -c "nvidia-smi; $py -c 'import torch, torchvision; print(\"torch\", torch.__version__, \"cuda\",
  torch.version.cuda, \"cudnn\", torch.backends.cudnn.version(), \"torchvision\", torchvision.__version__)'"
train best-seed0-amp $best
step profile-best-step "$py" tools/bench.py --device "$device" --profile --profile-rows 25 $bench
step profile-best-step-cudnn-benchmark "$py" tools/bench.py --device "$device" --profile --profile-rows 5 \
  --cudnn-benchmark $bench
train exp1-bce --freeze-encoder --loss bce --optimizer rmsprop --lr 1e-3 --seed 0
train exp2-finetune --loss bce --optimizer adam --lr 1e-4 --seed 0
train best-seed0-noamp $best --no-amp
step bench-amp-b256 "$py" tools/bench.py --device "$device" --seconds 1.5 --workers 8 $bench --batch-size 256
step bench-amp-b32 "$py" tools/bench.py --device "$device" --seconds 1.5 --workers 8 $bench
step bench-noamp-b32 "$py" tools/bench.py --device "$device" --seconds 1.5 --workers 8 $bench --no-amp
LIMIT=${COMPILE_LIMIT:-600} train best-seed0-compile $best --compile
for run in "$out"/runs/*/; do  # one line per run: epochs, seconds per epoch, images per second, test scores
  [ -f "$run/test_metrics.json" ] && "$py" - "$run" <<'EOF' | tee -a "$summary"
import csv, json, re, statistics, sys
from pathlib import Path
run = Path(sys.argv[1])
seconds = [float(h["seconds"]) for h in csv.DictReader(open(run / "history.csv"))]
test = json.load(open(run / "test_metrics.json"))
images = int(re.search(r"= (\d+), ", (run.parent.parent / f"{run.name}.log").read_text())[1])  # per epoch
later = statistics.median(seconds[1:] or seconds)
print(f"{run.name}: {len(seconds)} epochs of {images} images, first {seconds[0]:.2f} s, then median {later:.2f} s "
      f"({images / later:.0f} img/s), all epochs {sum(seconds):.1f} s; test IoU {test['iou']:.4f}, Dice "
      f"{test['dice']:.4f}, full res + TTA + largest region IoU {test.get('fullres_lcc_tta_iou', float('nan')):.4f}")
EOF
done
(cd "$out" && tar czf gpu-check.tar.gz --exclude='*.pt' --exclude='gpu-check.tar.gz' .)
echo "total $((SECONDS - start)) s; logs in $out"
