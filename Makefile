# One target per experiment; each sets up .venv first. Override any variable on the command line, e.g.
#   make exp1-bce DATA_DIR=../shared/isic2016 ENCODER_WEIGHTS=../shared/weights/mobilenet_v2_imagenet.pth
PYTHON ?= python3
PY := .venv/bin/python
DATA_DIR ?= data
ENCODER_WEIGHTS ?= imagenet
EPOCHS ?= 15
BATCH_SIZE ?= 32
DEVICE ?= auto
SEED ?= 0
RUNS ?= runs
CHECKPOINT ?= $(RUNS)/best/best.pt
INPUT ?= $(DATA_DIR)/ISBI2016_ISIC_Part1_Test_Data
OUT ?= predictions
ONNX ?= model.onnx
COMMON = --data-dir $(DATA_DIR) --encoder-weights $(ENCODER_WEIGHTS) --epochs $(EPOCHS) \
	--batch-size $(BATCH_SIZE) --device $(DEVICE) --seed $(SEED) --out $(RUNS)/$@ \
	$(if $(RESUME),--resume) $(if $(OVERWRITE),--overwrite)

.PHONY: setup data exp1-bce exp1-iou exp2-finetune best demo report eda bench test predict export

setup: .venv/installed
.venv/installed: requirements.txt
	$(PYTHON) -m venv .venv
	$(PY) -m pip install -r requirements.txt
	touch $@

# Optional: ONNX export and its check (onnx, onnxruntime). The tests use it too.
.venv/export-installed: requirements-export.txt .venv/installed
	$(PY) -m pip install -r requirements-export.txt
	touch $@

data: setup
	$(PY) data.py --download --data-dir $(DATA_DIR)

exp1-bce: data
	$(PY) train.py $(COMMON) --freeze-encoder --loss bce --optimizer rmsprop --lr 1e-3

exp1-iou: data
	$(PY) train.py $(COMMON) --freeze-encoder --loss iou --optimizer adam --lr 1e-3

exp2-finetune: data
	$(PY) train.py $(COMMON) --loss bce --optimizer adam --lr 1e-4

# Beyond the report (README, "Beyond the report"): skip connections, BCE + Dice, a lower encoder learning rate,
# warm-up and cosine decay, random rotation/zoom/colour augmentation.
best: data
	$(PY) train.py $(COMMON) --skips --loss bce+dice --optimizer adam --lr 1e-3 --encoder-lr-scale 0.1 \
		--schedule cosine --warmup-epochs 1 --random-aug

# Kept apart from runs/ so that `make report` compares real experiments only.
demo: setup
	rm -rf demo
	$(PY) data.py --synthetic demo/data
	$(PY) train.py --data-dir demo/data --cache-dir demo/cache --encoder-weights none \
		--image-size 64 --epochs 2 --batch-size 8 --lr 2e-3 --device $(DEVICE) --out demo/run --overwrite

bench: setup
	$(PY) bench.py --device $(DEVICE)

report: setup
	$(PY) visualize.py report --runs $(RUNS) --data-dir $(DATA_DIR)

eda: data
	$(PY) visualize.py eda --data-dir $(DATA_DIR) --out $(RUNS)/eda

predict: setup
	$(PY) predict.py --checkpoint $(CHECKPOINT) $(INPUT) --out $(OUT) --overlay

export: .venv/export-installed
	$(PY) export.py --checkpoint $(CHECKPOINT) --out $(ONNX)

test: setup .venv/export-installed
	$(PY) -m pytest -q tests
