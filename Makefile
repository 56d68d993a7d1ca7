# Bastion developer tasks. `make test` and `make demo` work on a fresh clone: each creates
# the virtualenv (.venv) first and reinstalls only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv test lint demo docs bench bench-deps bench-quick bench-profile clean distclean

help:
	@echo "make venv       create .venv and install bastion[dev] (editable)"
	@echo "make test       lint, type-check, import contracts, then pytest"
	@echo "make lint       ruff check, ruff format --check, mypy, lint-imports, docs check"
	@echo "make demo       run the reference system (bastion demo; options: make demo ARGS='--attack')"
	@echo "make docs       regenerate the settings tables in docs/configuration.md"
	@echo "make bench      Bastion vs Mosquitto benchmarks (~15 min; writes benchmarks/results/)"
	@echo "make bench-quick  the same, ~2 s per scenario and 1 run (a smoke run)"
	@echo "make bench-profile  Bastion alone under cProfile (writes benchmarks/results/profiles/)"
	@echo "make clean      remove caches and build output (distclean: also .venv)"

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python scripts/gen_config_docs.py --check

# pytest exits 5 when it collects no tests: that is not a failure here.
test: lint
	@status=0; $(BIN)/pytest || status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest: no tests collected (treated as success)"; \
	else exit $$status; fi

# The README's first command: the whole reference system, secured, from nothing (state in
# ./bastion-demo, reused by the next run). Pass options through ARGS, e.g. ARGS='--attack'.
demo: venv
	$(BIN)/bastion demo $(ARGS)

docs: venv
	$(BIN)/python scripts/gen_config_docs.py

# Needs Debian's mosquitto (apt-get install mosquitto). Not part of `make test`.
# Debian's mosquitto (and mosquitto_passwd) is the reference broker; installed if missing.
bench-deps:
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || \
	  { echo "installing Debian's mosquitto (the reference broker)"; \
	    $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	    $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq mosquitto mosquitto-clients; }

bench: venv bench-deps
	$(BIN)/python benchmarks/run.py

bench-quick: venv bench-deps
	$(BIN)/python benchmarks/run.py --quick

bench-profile: venv bench-deps
	$(BIN)/python benchmarks/run.py --profile --repeat 1

clean:
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name "*.egg-info" -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
