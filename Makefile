# One target per experiment; each sets up .venv first. Override any variable on the command line, e.g.
#   make exp1-bce DATA_DIR=../shared/isic2016 ENCODER_WEIGHTS=../shared/weights/mobilenet_v2_imagenet.pth
PYTHON ?= python3
PY := .venv/bin/python
DATA_DIR ?= data
DATASET ?= isic2016
ENCODER_WEIGHTS ?= imagenet
EPOCHS ?= 15
BATCH_SIZE ?= 32
DEVICE ?= auto
SEED ?= 0
SEEDS ?= 0 1 2
RUNS ?= runs
BEST_CHECKPOINTS = $(foreach seed,$(SEEDS),"$(RUNS)/$(or $(RUN),best)/seed$(seed)/best.pt")
RELEASED = models/lesion_segmenter.pt
RELEASED_ONNX = models/lesion_segmenter.onnx
# CHECKPOINT: a model of yours; unset, every target uses the released model (predict and serve its .onnx on ONNX
# Runtime, the targets that need PyTorch its .pt)
CHECKPOINT ?=
PT = $(or $(CHECKPOINT),$(RELEASED))
MODEL_FLAG = $(if $(CHECKPOINT),--checkpoint "$(CHECKPOINT)")
INPUT ?=
OUT ?= predictions
ONNX ?= model.onnx
SPLIT ?= test
# FLAGS: more flags for a training target's train.py (after the recipe's: the last of a flag given twice wins),
# or for make predict-cluster's predict.py (FLAGS=--skip-existing)
FLAGS ?=
TRAIN = $(PY) train.py --data-dir "$(DATA_DIR)" --encoder-weights "$(ENCODER_WEIGHTS)" --epochs $(EPOCHS) \
	--batch-size $(BATCH_SIZE) --device $(DEVICE) $(if $(RESUME),--resume) $(if $(OVERWRITE),--overwrite)
# RUN: the run's folder under RUNS (default: the target's name), so that a second run of a target keeps the first
COMMON = --seed $(SEED) --out "$(RUNS)/$(or $(RUN),$@)"

.PHONY: help setup data dataset cross-dataset robustness robustness-compare worst-best exp1-bce exp1-iou exp2-finetune best release \
	two-source clinic-table adapt calibrate labelled adapt-experiment adapt-clinic unsure-experiment calibration-experiment demo report eda bench bench-predict bench-scale bench-watch bench-cluster bench-folder gpu-check check-same test \
	predict predict-cluster cluster-setup export quantize release-onnx release-rescore release-seal serve site page-model page-screenshot
.DEFAULT_GOAL := help

help:
	@echo "make predict INPUT=my_images/ OUT=masks     masks for your own images with the released model (no training)"
	@echo "make serve                                  the same in your browser, nothing uploaded (http://127.0.0.1:8000)"
	@echo "make predict-cluster INPUT=... CLUSTER=local the same as a Ray Data pipeline (make cluster-setup; docs/scale.md)"
	@echo "make calibrate DATA_DIR=my_labelled/        move the model's edge to your annotators' (no PyTorch)"
	@echo "make adapt DATA_DIR=my_labelled/            fit the released model to your own annotators (docs/adapt.md)"
	@echo "make best DATA_DIR=... ENCODER_WEIGHTS=...  train the most accurate model (3 seeds) and score it"
	@echo "make exp1-bce | exp1-iou | exp2-finetune    the report's three experiments"
	@echo "make test                                   the tests; make demo: 2 epochs on synthetic data"
	@echo "Every target and variable: README.md (Quick start)."

# Two steps into one .venv: what prediction needs (ONNX Runtime, no PyTorch: make predict, make serve), then
# PyTorch and the rest (training, evaluation, the tests)
.venv/predict-installed: requirements-predict.txt
	test -x $(PY) || $(PYTHON) -m venv .venv
	$(PY) -m pip install -r requirements-predict.txt
	touch $@
setup: .venv/installed
.venv/installed: requirements.txt .venv/predict-installed
	$(PY) -m pip install -r requirements.txt
	touch $@

# Optional: predict.py --cluster on Ray Data (docs/scale.md), on top of the light install. The tests use it too.
cluster-setup: .venv/cluster-installed
.venv/cluster-installed: requirements-cluster.txt .venv/predict-installed
	$(PY) -m pip install -r requirements-cluster.txt
	touch $@

# Optional: writing ONNX files (onnx). The tests use it too.
.venv/export-installed: requirements-export.txt .venv/installed
	$(PY) -m pip install -r requirements-export.txt
	touch $@

# Downloads DATASET (isic2016, isic2017, isic2018) into DATA_DIR unless DATA_DIR already holds data
data: setup
	$(PY) tools/download.py --dataset $(DATASET) --data-dir "$(DATA_DIR)"

# What the experiments train on: the default DATA_DIR is downloaded when empty; any other DATA_DIR must exist
# (a mistyped path is never filled with a download: `make data DATA_DIR=...` downloads there on purpose)
dataset: setup
ifeq ($(DATA_DIR),data)
	$(PY) tools/download.py --dataset $(DATASET) --data-dir "$(DATA_DIR)"
else
	@test -d "$(DATA_DIR)" || { echo "error: DATA_DIR=$(DATA_DIR): no such folder; check the path, or run" \
		"make data DATA_DIR=$(DATA_DIR) to download $(DATASET) there" >&2; exit 2; }
endif

exp1-bce: dataset
	$(TRAIN) $(COMMON) --freeze-encoder --loss bce --optimizer rmsprop --lr 1e-3 $(FLAGS)

exp1-iou: dataset
	$(TRAIN) $(COMMON) --freeze-encoder --loss iou --optimizer adam --lr 1e-3 $(FLAGS)

exp2-finetune: dataset
	$(TRAIN) $(COMMON) --loss bce --optimizer adam --lr 1e-4 $(FLAGS)

# Beyond the report (docs/experiments.md): skip connections, BCE + Dice, a lower encoder learning rate,
# warm-up and cosine decay, random rotation/zoom/colour augmentation with SHIFT_SHARE of the images under the
# robustness suite's kinds of shift instead (docs/robustness.md; SHIFT_SHARE=0: the recipe before), an average of
# the weights (EMA), all chosen on the validation split, then trained on all training images (--val-fraction 0:
# the last epoch); one model per seed in SEEDS, then their ensemble scored with flip TTA at full resolution
# (fullres_lcc_tta_*: only the largest region kept).
SHIFT_SHARE ?= 0.25
BEST = --skips --loss bce+dice --optimizer adam --lr 1e-3 --encoder-lr-scale 0.3 --schedule cosine --warmup-epochs 1 \
	--random-aug --shift-aug $(SHIFT_SHARE) --ema 0.99 --val-fraction 0
best: dataset
	for seed in $(SEEDS); do \
		$(TRAIN) --seed $$seed --out "$(RUNS)/$(or $(RUN),best)/seed$$seed" $(BEST) $(FLAGS) || exit 1; \
	done
	$(PY) evaluate.py --checkpoint $(BEST_CHECKPOINTS) --split test --data-dir "$(DATA_DIR)" --device $(DEVICE) \
		--tta --full-res --out "$(RUNS)/$(or $(RUN),best)"

# The released model (models/, its card models/README.md): make two-source's model (ISIC 2016 and HAM10000), trained
# unless that run has finished (RESUME=1 continues it), stored in float16, scored once on ISIC 2016's test split and
# under the robustness suite. Until 2026-12-05 it was make best's seed 0, ISIC 2016 alone (docs/clinics.md).
release: dataset .venv/export-installed
	test -f "$(RUNS)/$(or $(RUN),two-source)/test-$(notdir $(HAM_DIR))/test_metrics.json" || $(MAKE) two-source
	$(PY) tools/release.py --checkpoint "$(RUNS)/$(or $(RUN),two-source)/best.pt" --data-dir "$(DATA_DIR)" \
		--device $(DEVICE) --out models

# Two sources (docs/clinics.md): make best's recipe on ISIC 2016's and HAM10000's training splits together, chosen on
# both validation splits (ISIC's seeded tenth, HAM's own), ISIC's photos with 3 fixed flipped copies each and HAM's
# without (--aug-copies 3 0: 9,889 images an epoch, 2,900 of them ISIC's), 12 epochs; then scored once on
# each test split at full resolution with flip TTA and the largest region. Before 2026-12-05: --aug-copies 0.
# HAM_DIR: HAM10000 with masks in plain folders (train/, val/, test/ of images/ + masks/).
HAM_DIR ?= ham10000
TWO_SOURCE = $(BEST) --val-fraction 0.1 --aug-copies 3 0
two-source: EPOCHS = 12
two-source: dataset
	@test -d "$(HAM_DIR)" || { echo "error: HAM_DIR=$(HAM_DIR): no such folder; name HAM10000's folder with masks:" \
		"make two-source HAM_DIR=../shared/ham10000" >&2; exit 2; }
	$(TRAIN) $(COMMON) $(TWO_SOURCE) --data-dir "$(DATA_DIR)" "$(HAM_DIR)" --no-test $(FLAGS)
	for d in "$(DATA_DIR)" "$(HAM_DIR)"; do \
		$(PY) evaluate.py --checkpoint "$(RUNS)/$(or $(RUN),$@)/best.pt" --data-dir "$$d" --device $(DEVICE) --tta \
			--full-res --out "$(RUNS)/$(or $(RUN),$@)/test-$$(basename "$$d")" || exit 1; \
	done

# docs/clinics.md's table: MODELS (NAME=FILE, .onnx or .pt) on DATA_DIR's and HAM_DIR's test splits as make predict
# masks photos, HAM's by diagnosis, and the first model's worst HAM photos -> $(RUNS)/clinic-table
MODELS ?= released=$(RELEASED_ONNX) two-source=$(RUNS)/two-source/best.pt
clinic-table: setup
	$(PY) tools/cross_dataset.py --model $(MODELS) --data-dir "$(DATA_DIR)" "$(HAM_DIR)" --device $(DEVICE) \
		--out "$(RUNS)/clinic-table"

# The first ablation table of docs/experiments.md, one run per row (seed 0; hours on a CPU): make ablations
ABL_B = --skips --loss bce+dice --encoder-lr-scale 0.1 --schedule cosine --warmup-epochs 1
ABLATIONS = abl-frozen-skips abl-finetune-skips abl-size192 abl-aug abl-aug-e30 abl-aug-wide abl-aug-lovasz \
	abl-aug-size192
abl-frozen-skips: ABL = --skips --freeze-encoder
abl-finetune-skips: ABL = $(ABL_B)
abl-size192: ABL = $(ABL_B) --image-size 192
abl-aug: ABL = $(ABL_B) --random-aug
abl-aug-e30: ABL = $(ABL_B) --random-aug --epochs 30
abl-aug-wide: ABL = $(ABL_B) --random-aug --decoder-widths 256 128 64 32 16
abl-aug-lovasz: ABL = $(subst bce+dice,bce+lovasz,$(ABL_B)) --random-aug
abl-aug-size192: ABL = $(ABL_B) --random-aug --image-size 192
$(ABLATIONS): dataset
	$(TRAIN) $(COMMON) $(ABL) $(FLAGS)
ablations: $(ABLATIONS)
.PHONY: ablations $(ABLATIONS)

# Your own annotators (docs/adapt.md): adapt.py calibrates ADAPT_FROM's (the released model's) edge move on
# DATA_DIR, your labelled images in any layout, then fine-tunes it (train.py) on them with their masks moved back by
# that move, with few epochs, a low learning rate, the encoder frozen and the shift augmentation; it scores the
# model before and after on DATA_DIR's held-out images (one test IoU per model, one protocol: train.py --no-test)
# and writes $(RUNS)/adapt/model.pt and its card. It trains, so it needs PyTorch (installed first).
ADAPT_FROM ?= $(RELEASED)
ADAPT = --freeze-encoder --random-aug --shift-aug 0.25 --loss bce+dice --optimizer adam --lr 1e-4 --epochs 10 \
	--batch-size 8 --val-fraction 0 --ema 0.9 --no-test
adapt: labelled
	@test -f .venv/installed || echo "make adapt fine-tunes the model, so it needs PyTorch: installing it into .venv" \
		"first (gigabytes with its CUDA libraries; make calibrate needs none)"
	@$(MAKE) --no-print-directory setup
	$(PY) tools/adapt.py --checkpoint "$(ADAPT_FROM)" --data-dir "$(DATA_DIR)" --device $(DEVICE) --out "$(RUNS)/adapt" \
		$(if $(OVERWRITE),--overwrite) \
		--train-flags "$(ADAPT) --seed $(SEED) $(if $(RESUME),--resume) $(if $(OVERWRITE),--overwrite) $(FLAGS)"
# make calibrate: how far the masks' edge of CHECKPOINT (an .onnx; default the released one) moves in or out,
# calibrated on DATA_DIR, written as $(RUNS)/calibrate/model.onnx; on the light install (ONNX Runtime, no PyTorch)
calibrate: .venv/predict-installed labelled
	$(PY) tools/calibrate.py --checkpoint "$(or $(CHECKPOINT),$(RELEASED_ONNX))" --data-dir "$(DATA_DIR)" \
		--device $(DEVICE) --out "$(RUNS)/calibrate" $(if $(OVERWRITE),--overwrite)
labelled:
	@test -d "$(DATA_DIR)" || { echo "error: DATA_DIR=$(DATA_DIR): no such folder; name your labelled images:" \
		"make $(MAKECMDGOALS) DATA_DIR=my_labelled/ (images/ + masks/, or any layout of README: Data)" >&2; exit 2; }

# docs/adapt.md's table: make adapt's choice under annotator and camera shifts of ISIC 2016 (SPLIT=val: choices;
# SHIFTS, IMAGES and DRAWS: fewer shifts, adaptation set sizes or seeded draws than all of them)
adapt-experiment: setup
	$(PY) tools/adapt_experiment.py --data-dir "$(DATA_DIR)" --split $(SPLIT) --train-flags "$(ADAPT)" --device $(DEVICE) \
		$(if $(SHIFTS),--shifts $(SHIFTS)) $(if $(IMAGES),--images $(IMAGES)) $(if $(DRAWS),--seeds $(DRAWS)) \
		--out "$(RUNS)/adapt-experiment"

# docs/adapt.md's real clinic: make adapt on seeded draws of CLINIC's training photos (IMAGES per draw, seeds
# DRAWS), each candidate scored on CLINIC's val (choices) and test photos -> $(RUNS)/adapt-experiment/<folder name>
CLINIC ?= ham10000
adapt-clinic: setup
	$(PY) tools/adapt_experiment.py --clinic "$(CLINIC)" --train-flags "$(ADAPT)" --device $(DEVICE) \
		--images $(or $(IMAGES),20) --seeds $(or $(DRAWS),0 1 2 3 4 5 6 7 8 9) --out "$(RUNS)/adapt-experiment"

# docs/page.md's queue: does the unsure score find the masks that need a person? DATA_DIR: a clinic's labelled photos
unsure-experiment: .venv/predict-installed
	$(PY) tools/unsure_experiment.py --data-dir "$(DATA_DIR)" --split $(SPLIT) --device $(DEVICE) --out "$(RUNS)/unsure"

# The calibration rules (thresholds, edge moves) compared on the annotator shifts, 20 images per draw, 9 draws
calibration-experiment: setup
	$(PY) tools/adapt_experiment.py --data-dir "$(DATA_DIR)" --split $(SPLIT) --calibration-only --images 20 \
		--seeds 0 1 2 3 4 5 6 7 8 --shifts none tighter-varying looser-varying clinic tighter looser \
		--device $(DEVICE) --out "$(RUNS)/adapt-experiment"

# Kept apart from runs/ so that `make report` compares real experiments only.
demo: setup
	rm -rf demo
	$(PY) tools/data_folder.py --synthetic demo/data
	$(PY) train.py --data-dir demo/data --cache-dir demo/cache --encoder-weights none \
		--image-size 64 --epochs 2 --batch-size 8 --lr 2e-3 --device $(DEVICE) --out demo/run --overwrite

bench: setup
	$(PY) tools/bench.py --device $(DEVICE)

# make predict on 100 synthetic 1024x768 photos, the released model on ONNX Runtime against PyTorch (BEFORE=rev:
# and predict.py of that revision; INT8=file: and make quantize's file), start-up included, and their forward
# passes; the page (serve.py) in headless Chromium: loading, then such photos
bench-predict: .venv/dev-installed web/node_modules/.package-lock.json
	$(PY) tools/bench_predict.py --device $(DEVICE) $(if $(BEFORE),--before $(BEFORE)) $(if $(INT8),--int8 $(INT8))
	$(PY) tools/bench_page.py

# docs/page.md: a folder of 500 photos of 1024x768 in headless Chromium: time, the tab's peak memory, long tasks
bench-folder: .venv/dev-installed web/node_modules/.package-lock.json
	$(PY) tools/bench_page.py --folder $(or $(PHOTOS),500)

# predict.py --watch on a folder of 806 photos and their masks: its CPU while nothing arrives, then a photo's wait
bench-watch: .venv/predict-installed
	$(PY) tools/bench_watch.py --photos 806 --seconds 10

# predict.py --cluster local against a plain run on the same photos: what Ray costs here (docs/scale.md)
bench-cluster: .venv/cluster-installed
	$(PY) tools/bench_cluster.py --data-dir "$(DATA_DIR)" --photos $(or $(PHOTOS),1000)

# One process against two (torchrun, gloo) on this machine: make predict on 20 photos, training on synthetic data
bench-scale: setup
	$(PY) tools/bench_scale.py --images 20

# On a CUDA machine: bench, make best's seed 0 (AMP, --no-amp, --compile), exp1-bce, exp2-finetune -> $(RUNS)/gpu-check
gpu-check: setup
	PY=$(PY) bash tools/gpu_check.sh "$(DATA_DIR)" "$(ENCODER_WEIGHTS)" "$(RUNS)/gpu-check"

# Refactors must not change a digit: one epoch of exp1-bce and of make best's recipe at BASE and in this tree
BASE ?= HEAD
check-same: setup
	PY=$(PY) bash tools/check_same.sh "$(DATA_DIR)" "$(ENCODER_WEIGHTS)" $(BASE)

# CHECKPOINT scored on DATA_DIR's test split and on OTHER's (default: a plain-folder copy of DATA_DIR, which must
# score the same), each to $(RUNS)/cross-dataset/<folder name>; OTHER may be any layout (README: Data)
OTHER ?= $(RUNS)/plain-copy
cross-dataset: setup
	test -d "$(OTHER)" || $(PY) tools/data_folder.py --data-dir "$(DATA_DIR)" --to-plain "$(OTHER)"
	for d in "$(DATA_DIR)" "$(OTHER)"; do \
		$(PY) evaluate.py --checkpoint "$(PT)" --data-dir "$$d" --device $(DEVICE) --tta --full-res \
			--out "$(RUNS)/cross-dataset/$$(basename "$$d")" || exit 1; \
	done

# The robustness suite (robustness.py) of CHECKPOINT on SPLIT (test, or val for choices) -> $(RUNS)/robustness/$(NAME)
NAME ?= $(if $(CHECKPOINT),best,released)
robustness: setup
	$(PY) tools/robustness.py --checkpoint "$(PT)" --data-dir "$(DATA_DIR)" --split $(SPLIT) --device $(DEVICE) \
		--tta --largest-component --out "$(RUNS)/robustness/$(NAME)"

# Suite results side by side (NAMES: folders under $(RUNS)/robustness): a Markdown table and compare.png
NAMES ?= best
robustness-compare: setup
	$(PY) visualize.py robustness $(foreach n,$(NAMES),"$(RUNS)/robustness/$(n)") --out "$(RUNS)/robustness/compare.png"

# CHECKPOINT's (default: the released model's) six worst and six best test images: docs/worst_best_panel.png
worst-best: setup
	$(PY) visualize.py worst-best --checkpoint "$(PT)" --data-dir "$(DATA_DIR)" \
		--out "$(RUNS)/worst_best_panel.png"

report: setup
	$(PY) visualize.py report --runs "$(RUNS)" --data-dir "$(DATA_DIR)"

eda: setup
	$(PY) visualize.py eda --data-dir "$(DATA_DIR)" --runs "$(RUNS)" --out "$(RUNS)/eda"

# The page (serve.py, web/): the model runs in the browser on ONNX Runtime Web, installed from web/'s lock file.
# make serve: on http://127.0.0.1:PORT; make site: its static files in SITE, for any static host. CHECKPOINT: an
# .onnx file, or a train.py checkpoint that is exported to $(RUNS)/page/model.onnx first.
PORT ?= 8000
SITE ?= site
PAGE_MODEL = $(if $(MODEL_FLAG),--model "$(if $(filter %.onnx,$(CHECKPOINT)),$(CHECKPOINT),$(RUNS)/page/model.onnx)")
web/node_modules/.package-lock.json: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --ignore-scripts  # its packages ship built: no install script needs to run
page-model: .venv/predict-installed web/node_modules/.package-lock.json
ifneq ($(and $(MODEL_FLAG),$(filter-out %.onnx,$(CHECKPOINT))),)
	$(MAKE) -s .venv/export-installed
	mkdir -p "$(RUNS)/page"
	$(PY) tools/export.py --checkpoint "$(CHECKPOINT)" --out "$(RUNS)/page/model.onnx"
endif
serve: page-model
	$(PY) tools/serve.py $(PAGE_MODEL) --port $(PORT) $(if $(HOST),--host $(HOST))
site: page-model
	rm -rf "$(SITE)"
	$(PY) tools/serve.py $(PAGE_MODEL) --write "$(SITE)"

# The pictures of the page (README) and of its editor (docs/page.md): the tests' browser saves its screenshots
page-screenshot: .venv/dev-installed web/node_modules/.package-lock.json
	PAGE_SCREENSHOT=$(CURDIR)/docs/page.png PAGE_EDITOR_SCREENSHOT=$(CURDIR)/docs/page_editor.png \
		PAGE_QUEUE_SCREENSHOT=$(CURDIR)/docs/page_queue.png $(PY) -m pytest -q tests/test_page.py \
		tests/test_page_clinic.py -k "segments_like_predict or brush_stroke or orders_the_queue"

predict: .venv/predict-installed
	@test -n "$(INPUT)" || { echo "error: name your images: make predict INPUT=my_images/ OUT=masks" \
		"(files, folders or quoted patterns; CHECKPOINT=... for your own models)" >&2; exit 2; }
	$(PY) predict.py "$(INPUT)" $(MODEL_FLAG) --out "$(OUT)" --device $(DEVICE) --tta --largest-component --overlay \
		$(if $(WATCH),--watch)

# make predict as a Ray Data pipeline (docs/scale.md): CLUSTER=local (this machine's cores), auto (the cluster
# `ray start` joined here) or a head's host:port; the photos and OUT on storage that every machine sees
predict-cluster: .venv/cluster-installed
	$(PY) predict.py "$(INPUT)" $(MODEL_FLAG) --out "$(OUT)" --tta --largest-component --overlay \
		--cluster $(or $(CLUSTER),local) $(FLAGS)

export: .venv/export-installed
	$(PY) tools/export.py --checkpoint "$(PT)" --out "$(ONNX)"

# The released model's ONNX file and its card's numbers, from models/'s .pt (make release writes both)
release-onnx: .venv/export-installed dataset
	$(PY) tools/release.py --onnx-only --data-dir "$(DATA_DIR)" --device $(DEVICE) --out models

# An int8 copy of the released model, calibrated on training images and measured against the float one (docs/speed.md)
quantize: .venv/export-installed dataset
	$(PY) tools/quantize.py --data-dir "$(DATA_DIR)" $(FLAGS)

# models/'s files, their bytes untouched: scored again on the test split after a change to how scoring reads images
# (release-rescore), or given the checks every load makes, a .pt checksum and an .onnx seal (release-seal)
release-rescore: dataset
	$(PY) tools/release.py --rescore --data-dir "$(DATA_DIR)" --device $(DEVICE) --out models
release-seal: setup
	$(PY) tools/release.py --seal --out models

.venv/dev-installed: requirements-dev.txt .venv/installed
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

test: .venv/dev-installed .venv/export-installed .venv/cluster-installed web/node_modules/.package-lock.json
	$(PY) -m pytest -q --durations=10 tests
