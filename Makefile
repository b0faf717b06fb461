# Two commands do all set-up: `make train` (the main job) and `make test`. Each creates .venv if missing.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: train fit test lint type bench wheel-smoke clean

$(VENV_STAMP): pyproject.toml setup.py
	python3 -m venv .venv
	# torch==2.13.0 on the same command line pins the local CPU wheel (no multi-GB CUDA download).
	.venv/bin/pip install -q torch==2.13.0 -e '.[cpu,dev]'
	touch $(VENV_STAMP)

train: $(VENV_STAMP)  ## main job: train MaskablePPO on the default scenario (10-16 min on 2 cores)
	$(PY) -m greenrl.train

fit: $(VENV_STAMP)
	$(PY) -m greenrl.fit

lint: $(VENV_STAMP)
	.venv/bin/ruff check greenrl tests benchmarks setup.py
	.venv/bin/ruff format --check greenrl tests benchmarks setup.py

type: $(VENV_STAMP)
	.venv/bin/mypy

# -n auto: one pytest-xdist worker per core (CI has 2; about 280 s instead of 670 s on a fresh clone); --dist loadfile
# keeps a file's tests, and its module fixtures, on one worker.
test: $(VENV_STAMP) lint type
	$(PY) -m pytest -q -p no:cacheprovider -ra -n auto --dist loadfile greenrl tests

wheel-smoke: $(VENV_STAMP)  ## build the wheel, install it outside the tree, train tiny + evaluate there (~3 min)
	bash .ci/wheel_smoke $(PY)

bench: $(VENV_STAMP)
	$(PY) benchmarks/bench_surrogate.py
	$(PY) benchmarks/bench_sim.py
	$(PY) benchmarks/bench_env.py

clean:
	rm -rf .venv .mypy_cache .ruff_cache
