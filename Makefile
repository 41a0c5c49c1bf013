# `make repro` and `make test` work on a fresh machine: they create .venv first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# One stamp per install, named after the md5 of what it installed: editing a requirements file
# changes the name, so the next make reinstalls. make repro, poster, predict and profile need the
# runtime packages (requirements.txt); make test the test packages too (requirements-dev.txt,
# which includes requirements.txt), so `make test` after `make repro` installs pytest and selenium.
STAMP := $(VENV)/.installed-run-$(shell cat requirements.txt | md5sum | cut -c1-8)
DEV_STAMP := $(VENV)/.installed-dev-$(shell cat requirements.txt requirements-dev.txt | md5sum | cut -c1-8)
# pip byte-compiles every module of every package, most never imported (the install took 202 s
# with it, 113 s without, on the 2-core development VM with another job running); Python compiles
# what a stage imports, once, on first use (about 20 s). Only where Python writes
# bytecode: with PYTHONDONTWRITEBYTECODE set it would compile in every process.
PIP_COMPILE := $(if $(PYTHONDONTWRITEBYTECODE),,--no-compile)
# Stage commands say `python`: make it the venv's.
export PATH := $(BIN):$(PATH)

# $(call pip_install,<requirements file>): into .venv, created first if needed.
define pip_install
	test -x $(BIN)/python || python3 -m venv $(VENV)
	@# The machine's pip config names extra local indexes that may be absent; hide that noise.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIP_COMPILE) -r $(1) 2>&1 \
	  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
endef

.PHONY: install install-dev repro test poster predict profile browser clean-venv

install: $(STAMP)
install-dev: $(DEV_STAMP)

$(STAMP): requirements.txt
	$(call pip_install,requirements.txt)
	rm -f $(VENV)/.installed-run-*
	touch $@

# The dev install holds the runtime one, so it stamps both.
$(DEV_STAMP): requirements.txt requirements-dev.txt
	$(call pip_install,requirements-dev.txt)
	rm -f $(VENV)/.installed-run-* $(VENV)/.installed-dev-*
	touch $@ $(STAMP)

# Then the run's numbers as reports/default-run.md.
repro: $(STAMP)
	dvc repro
	PYTHONPATH=src python -m kd_pipeline.summary

# Every experiment of the poster as DVC experiments, then reports/poster.md.
# Options: make poster ARGS="--parts mnist --seeds 0 1 2 3" (see python -m kd_study.poster --help).
poster: $(STAMP)
	PYTHONPATH=src python -m kd_study.poster $(ARGS)

# Classify images with the exported student: make predict ARGS="photo.jpg some_folder/"
# (or another model: ARGS="models/teacher.pt photo.jpg"; see python -m kd.predict --help).
predict: $(STAMP)
	PYTHONPATH=src python -m kd.predict $(if $(filter %.onnx %.pt,$(firstword $(ARGS))),,models/student.onnx) $(ARGS)

# params.yaml for another dataset or scale: make profile P=cifar10-cpu (P=default goes back).
# profiles/default.yaml holds the defaults; every other profile only what it changes.
profile: $(STAMP)
	@test -n "$(P)" || { echo "make profile P=<name>: one of $(basename $(notdir $(wildcard profiles/*.yaml)))" >&2; exit 2; }
	PYTHONPATH=src python -m kd.profiles $(P)

test: $(DEV_STAMP) browser
	python -m pytest

# The MLflow UI test drives Debian's chromium through chromium-driver: no browser
# download. Installed once; without root or sudo the test is skipped (under CI=true it fails).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	  { $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q \
	      --no-install-recommends chromium chromium-driver; } \
	  || echo "make: could not install chromium + chromium-driver; the MLflow UI test will be skipped" >&2; \
	fi

clean-venv:
	rm -rf $(VENV)
