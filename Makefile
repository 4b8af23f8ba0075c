# vit-plasticity: `make demo` (the offline study) and `make test` (everything CI checks) do their own set-up.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
NB_WORKERS ?= 2
# One BLAS/OpenMP thread per process: notebooks run two at a time on 2 cores, and tiny models lose more to
# thread contention than they gain from threads.
export OMP_NUM_THREADS ?= 1

.PHONY: install constraints data sync-check nbtest pytest test demo study rehearse readme clean-venv

install: $(VENV)/.installed

# Reinstall when the package metadata or the pins change; `pip install -e` keeps the library editable. Every
# extra: the tests and the demo use them all (dev: nbdev and pytest; demo: the benchmark's corruptions; slurm;
# hf: transformers and PEFT; lab: Jupyter). constraints.txt pins the versions `make test` passed with.
EXTRAS := dev,demo,slurm,hf,lab
$(VENV)/.installed: settings.ini setup.py constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $@

# Pin the environment that `make test` passed in (torch, torchvision, triton and CUDA: the machine's choice).
constraints: install
	@{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --exclude-editable \
	  | grep -viE '^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)=='; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt

data:
	@bash scripts/ensure_data.sh

# The notebooks are the source: exporting and cleaning them must not change what git tracks.
sync-check: install
	@bash scripts/check_sync.sh $(BIN)

nbtest: install data
	$(BIN)/nbdev_test --n_workers $(NB_WORKERS) --timing

pytest: install data
	$(PY) -m pytest tests --durations=25

test: install data sync-check nbtest pytest

# The offline study: every run of the `demo` grid not yet complete (two at a time), then the report. Running it
# again finetunes nothing and only re-renders the report; it exits non-zero if a run failed.
demo: install data
	@$(BIN)/vitp grid run demo --jobs 2 --rerun-stale; status=$$?; $(BIN)/vitp report demo && exit $$status

readme: install
	$(PY) scripts/make_readme.py

clean-venv:
	rm -rf $(VENV)

# The offline study that can answer the paper's question (six targets, six configurations, five LRs, three seeds;
# 3 h 51 min of runs measured on 2 AVX2 cores): resumable, stopped and run again it goes on where it was; then the report.
study: install data
	@$(BIN)/vitp grid run study --jobs 2 --rerun-stale; status=$$?; $(BIN)/vitp report study && exit $$status

# The paper's three grids rehearsed whole on this machine (stand-in models, synthetic data, small sizes), then
# reported: everything the real grids exercise, in runs/rehearsal/, on a CPU.
rehearse: install data
	@status=0; for g in paper ablation-adamw ablation-size; do \
	  $(BIN)/vitp grid run $$g --rehearse --jobs $(NB_WORKERS) || status=1; \
	  $(BIN)/vitp report $$g --rehearse || status=1; \
	done; exit $$status
