# Two set-up commands for a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config.yaml
# binary:package pairs — the Debian package is installed when its binary is missing (dante's binary is danted)
APT_PACKAGES := redis-server:redis-server microsocks:microsocks tinyproxy:tinyproxy danted:dante-server wrk:wrk systemd-analyze:systemd promtool:prometheus

.PHONY: install system-deps venv-deps run test audit lint check-config bench soak clean constraints

# Debian's python3 lacks ensurepip (package python3-venv): without it `python3 -m venv` fails half-way.
venv-deps:
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian package: python3-venv"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv; \
	  else echo "missing: python3-venv — install it (Debian: apt-get install python3-venv)" >&2; exit 1; fi; }

$(STAMP): pyproject.toml constraints.txt | venv-deps
	test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(STAMP)

# Re-resolve every dependency to its newest release in a scratch venv and rewrite constraints.txt from it
# (then make test, and commit the two together). The file's first four lines, its comment, are kept.
constraints: | venv-deps
	rm -rf .venv-resolve && $(PYTHON) -m venv .venv-resolve
	.venv-resolve/bin/pip install -q -e '.[test]' -r bench/requirements.txt
	{ head -4 constraints.txt; .venv-resolve/bin/pip freeze --exclude-editable | grep -v '^-e'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt && rm -rf .venv-resolve

# Debian packages the test suite talks to for real; installed only where missing and we may (root + apt).
system-deps:
	@missing=""; for pair in $(APT_PACKAGES); do b=$${pair%%:*}; \
	  command -v $$b >/dev/null 2>&1 || test -x /usr/sbin/$$b || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	  else echo "missing:$$missing — install them (Debian: apt-get install$$missing)" >&2; exit 1; fi; \
	fi

run: install
	@echo "Starting the gateway on 127.0.0.1:8080 with $(CONFIG)."
	@echo "First key: with REDIS_URL set, run in another shell"
	@echo "    $(BIN)/python -m gateway keys create --config $(CONFIG) --name me --balance 5"
	@echo "without REDIS_URL (memory store) the gateway prints a starter key below."
	$(BIN)/python -m gateway serve --config $(CONFIG)

# The whole suite, with every log line (debug) kept and searched for the secrets it used at the end
# (tests/secret_audit_plugin.py; ~10 % slower). `make audit` is the same, kept as a name for it.
test: install system-deps
	GW_SECRET_AUDIT=1 $(BIN)/python -m pytest -q -p no:cacheprovider

audit: test

lint: install
	$(BIN)/ruff check gateway providers egress tests bench
	$(BIN)/mypy gateway providers egress

# The benchmark of issue 6 (bench/README.md): ~14 minutes; BENCH_ARGS=--quick for a ~1-2 minute smoke run,
# BENCH_ARGS=--profile to py-spy the gateway too. Writes bench/results/<timestamp>.json and latest.json.
bench: install system-deps
	$(BIN)/pip install -q -c constraints.txt -r bench/requirements.txt
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# Issue 9's soak: minutes of mixed load (aborted streams, BYOK, limited and broke keys, a flapping proxy)
# against a real gateway process, then checks descriptors, RSS, holds and ledger sums. SOAK_ARGS=--minutes 1
soak: install system-deps
	$(BIN)/python tests/soak.py $(SOAK_ARGS)

check-config: install
	$(BIN)/python -m gateway check-config $(CONFIG)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
