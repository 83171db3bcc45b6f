# diffattr: install, run, test. Everything installs from the pinned files in requirements/.
VENV        ?= .venv
PYTHON      ?= python3
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
STAMP       := $(VENV)/.installed
CORES       ?= all
# Experiment for restore/resume/estimate/spent: quickstart (config.yaml) or the name of a file in experiments/; for
# estimate/resume also an experiment and its overlays, merged in order (EXP="cifar2 cifar2/headline").
EXP         ?= quickstart
EXP_CONFIG  := $(if $(filter quickstart,$(EXP)),config.yaml,$(foreach e,$(EXP),experiments/$(e).yaml))
# Its results folder's name: the `experiment` key of the last file that sets one (an overlay renames its study).
EXP_NAME     = $(lastword $(shell sed -n 's/^experiment: *//p' $(EXP_CONFIG)))

.PHONY: install run resume test test-all lint bench lock clean restore estimate spent

$(STAMP): pyproject.toml requirements/base.txt requirements/nodeps.txt $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q pip==26.3
	$(PIP) install -c $(CONSTRAINTS) -r requirements/base.txt
	# curvlinops without its torchvision-pulling dependency (see requirements/base.txt)
	$(PIP) install --no-deps -c $(CONSTRAINTS) -r requirements/nodeps.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

install: $(STAMP)

## The default study (config.yaml) end to end.
run: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES)

## After a run was killed: release Snakemake's stale lock (only when no Snakemake of this directory is alive) and
## finish the study; jobs cut off mid-way are redone (--rerun-incomplete), training resumes from its checkpoints.
resume: $(STAMP)
	@for p in $$(pgrep -f snakemake || true); do \
	  if [ "$$p" != "$$$$" ] && [ "$$(readlink /proc/$$p/cwd 2>/dev/null)" = "$(CURDIR)" ]; then \
	    echo "make resume: Snakemake (pid $$p) is still running in $(CURDIR); let it finish or stop it first" >&2; exit 1; \
	  fi; done
	$(VENV)/bin/snakemake --unlock --configfile $(EXP_CONFIG)
	$(VENV)/bin/snakemake --cores $(CORES) --rerun-incomplete --configfile $(EXP_CONFIG)

## The test suite without GPU tests (what CI runs): unit tests, the smoke study through real Snakemake, DVC, SLURM.
test: $(STAMP)
	$(VENV)/bin/pytest -m "not gpu"

## Every test, GPU ones included (they skip without CUDA).
test-all: $(STAMP)
	$(VENV)/bin/pytest

## Fetch an experiment's artefacts from the DVC remote (dvc.yaml, .dvc/config) and mark them up to date for
## Snakemake: pulled files get fresh mtimes, which `--touch` puts back in the DAG's order.
restore: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" dvc pull study@$(EXP)
	$(VENV)/bin/snakemake --cores 1 --touch --quiet rules --configfile $(EXP_CONFIG)

## Jobs per rule and estimated GPU-hours of an experiment (dry run; reference timings in diffattr.cost).
estimate: $(STAMP)
	$(PY) -m diffattr.cost $(EXP_CONFIG)

## What a run of an experiment cost, by rule (job-seconds from results/<experiment>/benchmarks/).
spent: $(STAMP)
	$(PY) -m diffattr.cost --spent results/$(EXP_NAME)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts bench
	$(VENV)/bin/snakemake --lint

bench: $(STAMP)  # every benchmark (bench/gpu_bundle.py packs wheels for a GPU machine: not one of them)
	@for b in $(filter-out bench/gpu_bundle.py,$(wildcard bench/*.py)); do echo "== $$b"; $(PY) $$b || exit 1; done

## Refresh the lock file from the current environment.
lock: $(STAMP)
	( echo "# Lock file: every package of the tested environment, used as pip constraints (make install)."; \
	  echo "# Regenerate with: make lock"; \
	  $(PIP) freeze --exclude-editable | grep -v '^diffattr' | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/' ) > $(CONSTRAINTS)

clean:
	rm -rf $(VENV) .snakemake .pytest_cache
