# ipsec-vip. `make check` and `make demo` install what they need on Debian 12 (as root).
PYTHON   ?= python3
VENV     ?= .venv
PREFIX   ?= /usr
DESTDIR  ?=
PY       := $(VENV)/bin/python
APT_PACKAGES := strongswan-charon strongswan-swanctl libstrongswan-standard-plugins libcharon-extra-plugins \
	libstrongswan-extra-plugins resource-agents pacemaker pacemaker-cli-utils corosync pcs crmsh \
	libxml2-utils iproute2 iputils-ping iputils-arping procps util-linux python3-venv nftables iptables systemd tcpdump keepalived
PYTEST_ARGS ?=
# the fast tier: tests that need neither root nor a daemon (pytest markers, tests/conftest.py)
FAST_TESTS := not root and not charon and not cluster and not packaging and not slow

.PHONY: check deps venv lint test test-fast demo bench install clean

include packaging/packaging.mk

check: deps venv lint test

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/pytest $(PYTEST_ARGS)

# as any user, no daemons, well under a minute: run it before every commit
test-fast: venv
	$(VENV)/bin/pytest -m "$(FAST_TESTS)" $(PYTEST_ARGS)

demo: deps venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m lab.demo

# benchmark table beside the peers (bench/README.md); BENCH_ARGS e.g. --failover-reps 0 --runs 30
bench: deps venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m bench $(BENCH_ARGS)

# install, man, deb, rpm: packaging/packaging.mk

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
