# Two commands do all set-up on a fresh machine (see README):
#   make quickstart   create .venv if needed, run the main job on the embedded defaults
#   make test         create .venv if needed, run the whole test suite (slow tests included)
# Extra targets: make test-fast (skips slow tests), make check-disk, make clean (removes .venv, keeps results).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
QUICKSTART_ARGS ?=
ARTIFACTS ?= artifacts
# pytest-xdist: one worker per core, at most 4 (each may hold an SD1.5-sized model); PARALLEL= runs serially
PARALLEL ?= -n auto --maxprocesses=4 --dist worksteal
# a new .venv takes about 6.2 GB (torch's CUDA build is most of it), and pip unpacks beside it
MIN_FREE_GB ?= 7

.PHONY: quickstart test test-fast install check-disk clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || { $(MAKE) -s check-disk && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The whole pipeline in miniature on the embedded defaults (synthetic data, tiny model, CPU, offline),
# ending with the report in $(ARTIFACTS)/report/report.md.
# (stage=inspect gets QUICKSTART_ARGS less the pipeline's settings, which it does not read)
quickstart: $(STAMP)
	$(PY) -m stablesdg.train +experiment=quickstart stage=inspect paths.artifacts=$(ARTIFACTS) \
		$(filter-out pipeline.%,$(QUICKSTART_ARGS))
	$(PY) -m stablesdg.train +experiment=quickstart paths.artifacts=$(ARTIFACTS) $(QUICKSTART_ARGS)
	$(PY) -m stablesdg.report --artifacts $(ARTIFACTS) --dataset synthetic

test: $(STAMP)
	$(PY) -m pytest $(PARALLEL) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest $(PARALLEL) -m "not slow" $(PYTEST_ARGS)

# one clear line, not pip's OSError halfway through torch, when the disk cannot hold a new .venv
check-disk:
	@where=$(dir $(abspath $(VENV))); while [ ! -d "$$where" ]; do where=$$(dirname "$$where"); done; \
	free_kb=$$(df -Pk "$$where" | awk 'NR == 2 {print $$4}'); \
	if [ "$$free_kb" -lt $$(( $(MIN_FREE_GB) * 1024 * 1024 )) ]; then \
	  echo "error: a new $(VENV) needs about $(MIN_FREE_GB) GB free on its disk, and $$(( free_kb / 1024 / 1024 )) GB are (df -h $$where); free some space, or set MIN_FREE_GB=N to try with less" >&2; \
	  exit 1; \
	fi

# what `make install` made; never artifacts/ or logs/, which hold results (paths.artifacts, paths.logs)
clean:
	rm -rf $(VENV) stablesdg.egg-info
