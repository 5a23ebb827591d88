# amzguard: `make run` starts the milter on the shipped config, `make test` runs the whole suite, `make demo`
# shows what it decides on a throwaway Postfix (demo/; KEEP=1 keeps it running), `make bench` measures it on a
# real Postfix (bench/). All set up what they need on a fresh Debian machine: apt packages (as root, or via
# sudo) and a venv.

PYTHON      ?= python3
VENV        := .venv
VENV_PY     := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
RUN_DIR     := $(CURDIR)/var/run
RUN_SOCKET  ?= unix:$(RUN_DIR)/amzguard.sock


# libmilter-dev builds pymilter; postfix and swaks drive the end-to-end tests; python3-yaml lets the system
# Python run `amzguard optout learn` from a Postfix pipe as an unprivileged user (the venv may be out of its
# reach); m4 and libwrap0 let the Sendmail test build its .cf and run the sendmail binary it unpacks itself
# (it cannot be installed beside postfix); systemd provides systemd-analyze for the unit checks; man-db and
# groff-base render the man pages (the tests check they render without warnings); python3-prometheus-client
# is Debian's 0.16, on which a test checks that the _created series stay off.
RUN_PACKAGES  := libmilter-dev gcc
DEMO_PACKAGES := $(RUN_PACKAGES) postfix swaks python3-yaml
TEST_PACKAGES := $(DEMO_PACKAGES) m4 libwrap0 systemd man-db groff-base python3-prometheus-client

.PHONY: run test demo soak bench check-config docs system-run system-demo system-test venv clean

run: system-run $(STAMP)
	@mkdir -p $(RUN_DIR)
	@echo "amzguard: shipped config etc/amzguard.yml, socket $(RUN_SOCKET) (Ctrl-C stops)"
	exec $(VENV)/bin/amzguard run -c etc/amzguard.yml --socket $(RUN_SOCKET)

test: system-test $(STAMP)
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

# A throwaway Postfix with amzguard and the story of what it decided (demo/story.py); needs root. KEEP=1 keeps
# it running afterwards to send own messages (it prints the swaks/sendmail lines) until Ctrl-C or SIGTERM.
demo: system-demo $(STAMP)
	$(VENV_PY) -m demo $(if $(filter 1 yes true,$(KEEP)),--keep) $(DEMO_ARGS)

# The long soak (the test suite runs a short one): memory and descriptors of the milter over 10,000 messages.
soak: system-test $(STAMP)
	SOAK_MESSAGES=$${SOAK_MESSAGES:-10000} $(VENV_PY) -m pytest -s tests/e2e/test_soak.py

# Benchmarks, not tests: minutes on a quiet machine; BENCH_ARGS=... goes to `python -m bench` (see --help).
bench: system-test $(STAMP)
	$(VENV_PY) -m bench $(BENCH_ARGS)

check-config: $(STAMP)
	@for f in $$(find etc -name '*.yml' -not -path 'etc/prometheus/*'); do $(VENV)/bin/amzguard check-config -c $$f || exit 1; done

# The pages generated from the config key table (milter/amzguard/config_keys.py); a test fails when the
# committed ones are stale.
docs: $(STAMP)
	$(VENV_PY) -m amzguard.config_keys --man > man/amzguard.yml.5
	$(VENV_PY) -m amzguard.config_keys --markdown > docs/configuration.md

system-run:
	@./.ci/ensure-packages $(RUN_PACKAGES)

system-demo:
	@./.ci/ensure-packages $(DEMO_PACKAGES)

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
