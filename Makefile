# amzguard: `make run` starts the milter on the shipped config, `make test` runs the whole suite, `make bench`
# measures it on a real Postfix (bench/). All set up what they need on a fresh Debian machine: apt packages
# (as root, or via sudo) and a venv.

PYTHON      ?= python3
VENV        := .venv
VENV_PY     := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
RUN_DIR     := $(CURDIR)/var/run
RUN_SOCKET  ?= unix:$(RUN_DIR)/amzguard.sock


# libmilter-dev builds pymilter; postfix and swaks drive the end-to-end tests; m4 and libwrap0 let the
# Sendmail test build its .cf and run the sendmail binary it unpacks itself (it cannot be installed beside
# postfix); systemd provides systemd-analyze for the unit checks.
RUN_PACKAGES  := libmilter-dev gcc
TEST_PACKAGES := $(RUN_PACKAGES) postfix swaks m4 libwrap0 systemd

.PHONY: run test soak bench check-config system-run system-test venv clean

run: system-run $(STAMP)
	@mkdir -p $(RUN_DIR)
	@echo "amzguard: shipped config etc/amzguard.yml, socket $(RUN_SOCKET) (Ctrl-C stops)"
	exec $(VENV)/bin/amzguard run -c etc/amzguard.yml --socket $(RUN_SOCKET)

test: system-test $(STAMP)
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

# The long soaks (the test suite runs short ones): memory and descriptors of the milter over 10,000 messages;
# the oracle test with 5,000 seeded spellings per path on Postfix and on Sendmail (docs/testing-oracle.md).
soak: system-test $(STAMP)
	SOAK_MESSAGES=$${SOAK_MESSAGES:-10000} $(VENV_PY) -m pytest -s tests/e2e/test_soak.py
	ORACLE_CASES=$${ORACLE_CASES:-5000} ORACLE_SEED=$${ORACLE_SEED:-1} $(VENV_PY) -m pytest tests/e2e/test_oracle.py tests/e2e/test_oracle_sendmail.py

# Benchmarks, not tests: minutes on a quiet machine; BENCH_ARGS=... goes to `python -m bench` (see --help).
bench: system-test $(STAMP)
	$(VENV_PY) -m bench $(BENCH_ARGS)

check-config: $(STAMP)
	@for f in $$(find etc -name '*.yml' -not -path 'etc/prometheus/*'); do $(VENV)/bin/amzguard check-config -c $$f || exit 1; done

system-run:
	@./.ci/ensure-packages $(RUN_PACKAGES)

system-test:
	@./.ci/ensure-packages $(TEST_PACKAGES)

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "amzguard needs Python 3.11+")'
	$(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet -e '.[test]'
	@touch $@

clean:
	rm -rf $(VENV) var build *.egg-info milter/*.egg-info .pytest_cache
