# The two commands: `make run` (the agent on its default config) and `make test` (the whole suite, with the
# real peers it needs: the OpenTelemetry SDKs, Node packages, Prometheus and VictoriaMetrics from Debian's packages).
# `make demo`: Prometheus, the agent and an instrumented app together (demo/run.py); Ctrl-C stops them all.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?=

.PHONY: run demo test venv peers proto dashboards bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $@

venv: $(BIN)/.installed

run: venv
	@echo "headwater is in $(BIN)/: '. $(BIN)/activate' puts it on PATH (or 'pipx install .' for your user)"
	$(BIN)/headwater run $(if $(CONFIG),-c $(CONFIG))

# Ports and the state directory: DEMO_PROMETHEUS_PORT, DEMO_OTLP_GRPC_PORT, DEMO_OTLP_HTTP_PORT,
# DEMO_TELEMETRY_PORT, DEMO_STATE_DIR, DEMO_RATE (or `$(BIN)/python demo/run.py --help`).
demo: venv
	tests/peers/install-prometheus.sh
	$(BIN)/python demo/run.py

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

# Writes configs/grafana/*.json from configs/grafana/dashboards.py (tests/test_dashboards.py checks they agree).
dashboards:
	$(PYTHON) configs/grafana/dashboards.py

bench: venv peers
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .cache
