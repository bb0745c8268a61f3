# The two commands: `make run` (the agent on its default config) and `make test` (the whole suite, with the
# real peers it needs: the OpenTelemetry SDKs, Node packages, Prometheus and VictoriaMetrics from Debian's packages).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?=

.PHONY: run test venv peers proto bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $@

venv: $(BIN)/.installed

run: venv
	$(BIN)/headwater run $(if $(CONFIG),-c $(CONFIG))

peers:
	tests/peers/install-prometheus.sh
	tests/peers/install-node.sh
	tests/peers/install-victoriametrics.sh

test: venv peers
	$(BIN)/pytest -q

# Regenerates the protobuf modules from the .proto files in this repository.
proto: venv
	PYTHON=$(BIN)/python agent/receivers/proto/generate.sh
	PYTHON=$(BIN)/python exporters/remote_write/proto/generate.sh

bench: venv peers
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .cache
