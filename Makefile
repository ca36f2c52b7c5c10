# Foreshard: `make demo` replays a real trace through live shards (report in build/demo-report/), `make test` runs every test.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: bootstrap demo down test check lint typecheck layers cluster-up cluster-down bench traces proto images

bootstrap:
	@scripts/bootstrap.sh

## The main job on the embedded default: control plane, Prometheus with a trace's history, the operator,
## a day of the trace replayed live (about ten minutes), a live view and a report.
demo: bootstrap
	@$(PY) -m foreshard.cli demo

down:
	@$(PY) -m foreshard.cli cluster down

cluster-up: bootstrap
	@$(PY) -m foreshard.cli cluster up

cluster-down: down

## The operator and broker images, localhost/foreshard-{operator,broker}:<version>, with podman from
## a Debian root filesystem (no registry); cached, so a second run builds nothing.
images: bootstrap
	@$(PY) -m foreshard.localcluster.images

## What CI runs: static checks, then every test layer against the real components (the image
## tests run the images built here).
test: bootstrap check images
	@$(PY) -m pytest $(PYTEST_ARGS)

check: lint typecheck layers

lint:
	@$(PY) -m ruff check .
	@$(PY) -m ruff format --check .

typecheck:
	@$(PY) -m mypy operator/foreshard broker-image/foreshard_broker

layers:
	@.venv/bin/lint-imports

traces: bootstrap
	@$(PY) -m foreshard.cli traces prepare

bench: bootstrap traces
	@for b in bench/*.py; do [ $$b = bench/native_tools.py ] && continue; echo "== $$b"; $(PY) $$b || exit 1; done
