# Clearline: the commands a newcomer and CI run. `make test` builds everything it needs from a
# fresh clone (virtual environment, pinned packages, generated protobuf code), then runs pytest.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard proto/clearline/v1/*.proto)
GEN    := proto/clearline/v1/.generated
PYTEST_ARGS ?=

.PHONY: all install proto test test-all lint fmt run sim sim-node bench bench-ledger bench-sync bench-statesync bench-prune chaos clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

# Generated code of the wire contract; rebuilt when any .proto changes.
$(GEN): $(STAMP) $(PROTOS) proto/generate.py
	$(PY) proto/generate.py
	touch $@

proto: $(GEN)

# The CI subset: everything but tests marked slow.
test: $(GEN)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(GEN)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(GEN)
	$(PY) -m ruff check node cluster tests proto/generate.py
	$(PY) -m ruff format --check node cluster tests proto/generate.py
	$(PY) -m mypy

fmt: $(STAMP)
	$(PY) -m ruff check --fix node cluster tests proto/generate.py
	$(PY) -m ruff format node cluster tests proto/generate.py

# The main job: a fresh 4-validator network in .clearline/net, a demo of every capability, then the
# live chain until Ctrl-C. RUN_SECONDS=N makes it stop by itself (for tests and CI).
RUN_HOME ?= .clearline/net
run: $(GEN)
	$(PY) -m cluster.demo --home $(RUN_HOME) $(if $(RUN_SECONDS),--seconds $(RUN_SECONDS))

# Throughput and latency on a fresh 4-validator network (prints a table and one JSON object).
bench: $(GEN)
	$(PY) -m cluster.bench --validators 4 --duration 30 --max $(ARGS)

# Deterministic consensus simulation: make sim ARGS="--validators 4 --byzantine 1 --seeds 1000 --seed-start 0"
ARGS ?=
sim: $(GEN)
	$(PY) -m cluster.sim $(ARGS)

# The whole node (real runtime) on a simulated network, disk and clock:
# make sim-node ARGS="--validators 4 --byzantine 1 --seeds 200 --seed-start 0 [--mutant NAME]"
sim-node: $(GEN)
	$(PY) -m cluster.simnode $(ARGS)

# Throughput and latency for 4, 7 and 10 validators (one JSON line each).
bench-scaling: $(GEN)
	@for v in 4 7 10; do $(PY) -m cluster.bench --validators $$v --duration 20 --max --json; \
	  $(PY) -m cluster.bench --validators $$v --duration 20 --rate 1000 --json; done

# Restart cost at heights 1,000 and 50,000 on four validators (one killed with -9, then restarted;
# building 50,000 heights takes about 10 minutes).
bench-restart: $(GEN)
	$(PY) -m cluster.restart_bench --validators 4 --heights 1000,50000

# Block sync against the live commit rate on the same chain (built at --max for 20 s).
bench-sync: $(GEN)
	$(PY) -m cluster.sync_bench --validators 4 --duration 20 --max $(ARGS)

# A new node joining by state sync against one joining by block sync from genesis, on a chain of
# 200,000 accounts and 20,000 blocks (about 15 minutes); prints one JSON object.
bench-statesync: $(GEN)
	$(PY) -m cluster.statesync_bench --accounts 200000 --blocks 20000 $(ARGS)

# Disk use under a constant load (300 tx/s, 10 minutes each): nodes keeping the last 1,000 blocks
# ([storage] retain_blocks), then nodes keeping every block; data directory sizes over time as JSON.
bench-prune: $(GEN)
	$(PY) -m cluster.prune_bench --minutes 10 --retain-blocks 1000 $(ARGS)

# Ledger throughput and state-root cost; prints one JSON object.
bench-ledger: $(GEN)
	$(PY) -m cluster.bench_ledger $(ARGS)

# A longer fault campaign: several seeds on 4 and 7 validators (about 30 minutes).
CHAOS_SECONDS ?= 300
chaos: $(GEN)
	@set -e; for v in 4 7; do for seed in 1 2 3; do \
	  echo "== chaos: $$v validators, seed $$seed, $(CHAOS_SECONDS)s"; \
	  $(PY) -m cluster.chaos --validators $$v --seed $$seed --duration $(CHAOS_SECONDS); \
	done; done

clean:
	rm -rf $(VENV) proto/clearline/v1/*_pb2*.py proto/clearline/v1/*_pb2*.pyi $(GEN) .pytest_cache .mypy_cache .ruff_cache
