# alliedium — set-up, demo, tests. Everything the project needs is installed here:
# the Python packages (pinned) into .venv, the Ignite jars (Maven) into ignite/lib.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.setup-done
DL_STAMP := $(VENV)/.setup-dl-done
JAR_STAMP := ignite/lib/.resolved
THICK_JAR := ignite/lib/alliedium-ignite.jar
JAVA_SRC := $(shell find ignite/src -name '*.java' 2>/dev/null)
MVN := mvn -q -B

.PHONY: setup setup-dl demo lint test fuzz lab bench export clean distclean help
.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

setup: $(PY_STAMP) $(JAR_STAMP) $(THICK_JAR)  ## install everything (idempotent; fast when already done)

$(PY_STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: Python 3.11+ is needed (set PYTHON=...)"; exit 1; }
	@echo "==> Python packages into $(VENV) (pinned by requirements.lock)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --no-cache-dir --upgrade pip==26.3
	@$(BIN)/python -m pip install -q --no-cache-dir -c requirements.lock -e '.[dev]'
	@! git rev-parse --git-dir >/dev/null 2>&1 || git config --local merge.nbdev-merge.driver '$(BIN)/nbdev-merge %O %A %B %P'
	@touch $@

$(JAR_STAMP): ignite/pom.xml
	@command -v java >/dev/null || { echo "error: java not found: install JDK 17 (apt-get install openjdk-17-jdk-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "error: mvn not found: install Maven (apt-get install maven)"; exit 1; }
	@echo "==> Ignite jars into ignite/lib (Maven)"
	@rm -rf ignite/lib
	@$(MVN) -f ignite/pom.xml dependency:copy-dependencies
	@touch $@

# the thick client's gateway and the server-side job classes (ignite/src), next to the Ignite jars
$(THICK_JAR): $(JAR_STAMP) ignite/pom.xml $(JAVA_SRC)
	@echo "==> alliedium-ignite.jar (thick-client gateway, colocated jobs) into ignite/lib (Maven)"
	@$(MVN) -f ignite/pom.xml package
	@cp ignite/target/alliedium-ignite.jar $@.tmp && mv -f $@.tmp $@

setup-dl: $(DL_STAMP)  ## also install PyTorch (extra [dl]; PyPI's CUDA build, ~4 GB, minutes): bench compare's torch rows

$(DL_STAMP): $(PY_STAMP)
	@echo "==> PyTorch (the optional extra [dl]) into $(VENV): about 4 GB with its nvidia-* wheels, a few minutes once"
	@$(BIN)/python -m pip install -q --no-cache-dir -c requirements.lock -e '.[dev,dl]' || { df -h $(VENV); \
		echo "error: installing PyTorch failed; it needs about 7 GB free beside .venv (df above)"; exit 1; }
	@touch $@

demo: setup  ## install, then run the main job on the embedded default (local Ignite node)
	@$(BIN)/alliedium demo

lint: setup  ## ruff (pyflakes, syntax, 120 columns) on the package, serve/ and tests/
	@$(BIN)/ruff check alliedium serve tests

test: setup setup-dl lint  ## install (with PyTorch), lint, then run the whole test suite (real Ignite node, notebooks too)
	@$(BIN)/python -m pytest -m 'not bench' tests nbs/index.ipynb --nbval-lax

fuzz: setup  ## long fuzz runs: the Jira parsers, every API route, schemathesis on the live service (counts printed)
	@ALLIEDIUM_FUZZ=long $(BIN)/python -m pytest -s -p no:cacheprovider tests/test_fuzz_parsers.py tests/test_fuzz_api.py \
		tests/test_schemathesis.py

lab: setup  ## JupyterLab on the notebooks (the package is installed editable)
	@$(BIN)/jupyter lab --notebook-dir=nbs

bench: setup setup-dl  ## the benchmarks' end-to-end and multi-node kill tests (pytest -m bench), then the benchmarks
	@$(BIN)/python -m pytest -s -m bench tests
	@$(BIN)/alliedium bench ingest
	@$(BIN)/alliedium bench train --all
	@$(BIN)/alliedium bench serve
	@$(BIN)/alliedium bench compare

export: setup  ## notebooks -> package and README, notebook outputs stripped (run before committing)
	@$(BIN)/nbdev-export && $(BIN)/nbdev-clean
	@$(BIN)/jupyter nbconvert --log-level=ERROR --to markdown --execute nbs/index.ipynb --output-dir . --output README

clean:  ## stop the local node
	@test ! -x $(BIN)/alliedium || $(BIN)/alliedium ignite stop

distclean: clean  ## also remove .venv, jars and var/ (all local data)
	rm -rf $(VENV) ignite/lib var
