# sixpn: `make test` and `make demo` set up everything they need on a fresh Debian machine (as root).
VENV      ?= .venv
PY        := $(VENV)/bin/python
STAMPS    := .make
APT_PACKAGES := wireguard-tools wireguard-go nftables iproute2 iputils-ping dnsutils curl wrk \
                nginx-light nsd dnsperf procps qrencode kmod openresolv \
                gcc libc6-dev python3-dev

.PHONY: all setup test lint typecheck unit demo bench clean
all: test

setup: $(STAMPS)/apt $(STAMPS)/venv

# Debian packages: installed only when one is missing, so a second run costs nothing.
$(STAMPS)/apt: Makefile
	@mkdir -p $(STAMPS)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install: $$missing" >&2; exit 1; fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@touch $@

# setup.py builds edge_proxy's one C extension (_simple.c) in place; editing it rebuilds.
$(STAMPS)/venv: pyproject.toml setup.py edge_proxy/http1/_simple.c
	@mkdir -p $(STAMPS)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

lint: $(STAMPS)/venv
	$(VENV)/bin/ruff check .

typecheck: $(STAMPS)/venv
	$(VENV)/bin/mypy catalog edge_proxy dns6pn wgmesh litefs_proxy netns_lab sixpn tests bench

unit: setup
	$(VENV)/bin/pytest -q -ra

test: setup lint typecheck unit

demo: setup
	$(VENV)/bin/sixpn demo $(DEMO_ARGS)

bench: setup
	@for b in bench/*.py; do echo "== $$b"; PYTHONPATH=. $(PY) $$b || exit 1; done

clean:
	rm -rf $(STAMPS) $(VENV) .mypy_cache .ruff_cache .pytest_cache
