# amzguard: `make run` starts the milter on the shipped config, `make test` runs the whole suite, `make demo`
# shows what it decides on a throwaway Postfix (demo/; KEEP=1 keeps it running), `make bench` measures it on a
# real Postfix (bench/), `make deb` builds the Debian package (build/, docs/install.md). All set up what they
# need on a fresh Debian machine: apt packages (as root, or via sudo) and a venv.

PYTHON      ?= python3
VENV        := .venv
VENV_PY     := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
RUN_DIR     := $(CURDIR)/var/run
RUN_SOCKET  ?= unix:$(RUN_DIR)/amzguard.sock


# libmilter-dev, gcc and python3-dev let pip compile pymilter, python3-venv makes the venv (Debian's python3
# has no venv module without it); postfix and swaks drive the end-to-end tests and the demo; python3-yaml lets
# the system Python run `amzguard optout learn` from a Postfix pipe as an unprivileged user (the venv may be
# out of its reach); m4 and libwrap0 let the Sendmail test build its .cf and run the sendmail binary it unpacks
# itself (it cannot be installed beside postfix); systemd provides systemd-analyze for the unit checks; man-db
# and groff-base render the man pages (the tests check they render without warnings); python3-prometheus-client
# is Debian's 0.16, on which a test checks that the _created series stay off; postgresql gives the tests a
# throwaway cluster (initdb, pg_ctl) for the PostgreSQL store, libpq5 is what psycopg loads, and
# python3-psycopg / python3-psycopg-pool (3.1, the floors) let the system Python's `optout learn` reach it.
RUN_PACKAGES  := libmilter-dev gcc python3-dev python3-venv
DEMO_PACKAGES := $(RUN_PACKAGES) postfix swaks python3-yaml
# `make deb`: debhelper with pybuild's pyproject plugin (the same setuptools build as `pip install .`), and
# lintian to check the result.
DEB_PACKAGES  := debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools python3-wheel lintian
# tests/deb builds the package and installs it into a copy of this system booted with systemd-nspawn
# (systemd-container), where it needs the Debian packages the .deb depends on.
# dovecot-core: tests/e2e/test_recognise.py authenticates SMTP clients (SASL) against a Dovecot it runs itself
# (tests/e2e/sasl.py: own config and directory, auth only); the package's own service is not used.
# faketime (brings libfaketime): tests/e2e/test_daily_limit.py moves the milter's wall clock to the next UTC
# day without sleeping (tests/support/faketime.py preloads the library with a timestamp file).
TEST_PACKAGES := $(DEMO_PACKAGES) m4 libwrap0 systemd systemd-container man-db groff-base $(DEB_PACKAGES) \
                 python3-milter python3-prometheus-client postgresql libpq5 python3-psycopg python3-psycopg-pool \
                 dovecot-core faketime

.PHONY: run test demo soak bench check-config docs deb system-run system-demo system-test system-deb venv clean

# The shipped config keeps its store in /var/lib/amzguard (the package's StateDirectory): made here, as the
# package would, so the critical channel's restriction check and the review channel find a writable store.
STORE_DIR   := /var/lib/amzguard

run: system-run $(STAMP)
	@mkdir -p $(RUN_DIR)
	@test -d $(STORE_DIR) || if [ "$$(id -u)" = 0 ]; then install -d -m 0750 $(STORE_DIR); \
	    else sudo install -d -m 0750 -o "$$(id -u)" $(STORE_DIR); fi
	@echo "amzguard: shipped config etc/amzguard.yml, socket $(RUN_SOCKET) (Ctrl-C stops)"
	exec $(VENV)/bin/amzguard run -c etc/amzguard.yml --socket $(RUN_SOCKET)

test: system-test $(STAMP)
	$(VENV_PY) -m pytest $(PYTEST_ARGS)

# A throwaway Postfix with amzguard and the story of what it decided (demo/story.py); needs root. KEEP=1 keeps
# it running afterwards to send own messages (it prints the swaks/sendmail lines) until Ctrl-C or SIGTERM.
demo: system-demo $(STAMP)
	$(VENV_PY) -m demo $(if $(filter 1 yes true,$(KEEP)),--keep) $(DEMO_ARGS)

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

# The pages generated from the config key table (milter/amzguard/config_keys.py); a test fails when the
# committed ones are stale.
docs: $(STAMP)
	$(VENV_PY) -m amzguard.config_keys --man > man/amzguard.yml.5
	$(VENV_PY) -m amzguard.config_keys --markdown > docs/configuration.md

# The Debian package, built from a copy of this checkout in build/src (nothing is written into the checkout):
# build/amzguard_<version>_all.deb. The PATH is Debian's own: pybuild runs `python3.11` from PATH and must
# get /usr/bin's (with Debian's setuptools), not a pyenv or venv interpreter that comes first in a shell.
DEB_VERSION = $(shell dpkg-parsechangelog -l debian/changelog -S Version 2>/dev/null)
deb: system-deb
	rm -rf build/src && mkdir -p build/src
	tar -c --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./var --exclude=.pytest_cache \
	    --exclude=.hypothesis --exclude=__pycache__ --exclude='*.egg-info' -f - . | tar -x -C build/src
	cd build/src && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/nonexistent LC_ALL=C.UTF-8 \
	    dpkg-buildpackage -b -us -uc --no-sign >../dpkg-buildpackage.log 2>&1 \
	    || { tail -40 ../dpkg-buildpackage.log; exit 1; }
	rm -rf build/src
	@echo "built build/amzguard_$(DEB_VERSION)_all.deb"

system-deb:
	@./.ci/ensure-packages $(DEB_PACKAGES)

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
