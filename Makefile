# Two commands: `make demo` (install + the main job end to end) and `make test` (install + the suite).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
SHARED_DATA := $(abspath ../shared/data)
export MLFLOW_DISABLE_TELEMETRY := true
export CODECARBON_LOG_LEVEL := error

.PHONY: install demo report test lint system-deps clean bench

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(VENV)/.installed: pyproject.toml $(BIN)/activate
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# the default MLflow store (sqlite:///mlflow.db here) created and migrated once, before any parallel run
install: $(VENV)/.installed
	$(BIN)/greenstudy store init sqlite:///mlflow.db

system-deps:
	bash .ci/system-deps.sh

demo: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m greenstudy.demo --shared-data "$(SHARED_DATA)"

report: install
	$(BIN)/python mlproject/report.py --experiment greenstudy-cifar100

test: install system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# the training grid (usual recipe vs fp32/bf16 x eager/compiled, channels_last) per model, < 10 min each on 2 cores
BENCH_MODELS ?= resnet18 efficientnet_b0
bench: install
	for model in $(BENCH_MODELS); do \
		$(BIN)/python benchmarks/throughput.py --model $$model --compile true --only channels_last --steps 8 --budget-min 9 || exit 1; \
	done

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) mlruns mlflow.db mlflow.db.lock optuna.db

# results/ regenerated from MLflow (MLFLOW_TRACKING_URI): make results EXPERIMENT=a[,b] [STUDY=name] [STORAGE=optuna-url]
EXPERIMENT ?= greenstudy-cifar100
.PHONY: results
results: install
	$(BIN)/python -m greenstudy.results --experiment "$(EXPERIMENT)" --out results $(if $(STUDY),--study-name "$(STUDY)") $(if $(STORAGE),--storage "$(STORAGE)")
