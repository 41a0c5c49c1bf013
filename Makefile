# `make repro` and `make test` work on a fresh machine: they create .venv first.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-$(shell md5sum requirements.txt | cut -c1-8)
# pip byte-compiles every module of every package, most never imported (the install
# took 202 s with it, 113 s without, here with another job running); Python compiles
# what a stage imports, once, on first use (about 20 s). Only where Python writes
# bytecode: with PYTHONDONTWRITEBYTECODE set it would compile in every process.
PIP_COMPILE := $(if $(PYTHONDONTWRITEBYTECODE),,--no-compile)
# Stage commands say `python`: make it the venv's.
export PATH := $(BIN):$(PATH)

.PHONY: install repro test poster predict browser clean-venv

install: $(STAMP)

$(STAMP): requirements.txt
	test -x $(BIN)/python || python3 -m venv $(VENV)
	@# The machine's pip config names extra local indexes that may be absent; hide that noise.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIP_COMPILE) -r requirements.txt 2>&1 \
	  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	rm -f $(VENV)/.installed-*
	touch $@

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

test: $(STAMP) browser
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
