# `make test` and `make demo` create .venv if it is missing and install the project into it.
# `make test` also needs a headless Chromium for the MLflow UI tests: it installs Debian's chromium and
# chromium-driver when they are missing and it can (root with apt-get), and otherwise stops with the
# command to run.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg

.PHONY: install browser test lint demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, from the local wheels; a bare `torch` would pull a multi-GB build
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	# colossalai 0.5.0 pins torch<=2.5.1 and transformers 4.51; its Booster runs fine on the pins above
	$(PY) -m pip install -q --no-deps colossalai==0.5.0
	# rapidocr-onnxruntime pulls in GUI OpenCV (needs libGL); the two share the cv2 folder, so remove it
	# and put the headless build back
	$(PY) -m pip uninstall -q -y opencv-python
	$(PY) -m pip install -q --force-reinstall --no-deps opencv-python-headless==5.0.0.93
	touch $(STAMP)

install: $(STAMP)

CHROMIUM_PACKAGES := chromium chromium-driver

browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		exit 0; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "make: installing $(CHROMIUM_PACKAGES) (headless browser for the MLflow UI tests)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CHROMIUM_PACKAGES) \
			>/dev/null && command -v chromium >/dev/null; \
	else \
		echo "make test needs a headless Chromium for the MLflow UI tests; install it with:" >&2; \
		if command -v apt-get >/dev/null 2>&1; then \
			echo "    sudo apt-get update && sudo apt-get install -y $(CHROMIUM_PACKAGES)" >&2; \
		else \
			echo "    your system's chromium package (Debian/Ubuntu: apt-get install $(CHROMIUM_PACKAGES))" >&2; \
		fi; \
		exit 1; \
	fi

test: $(STAMP) browser
	$(PY) -m ruff check src tests benchmarks pipelines
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks pipelines

demo: $(STAMP)
	$(PY) -m opensora_mlops demo

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b --quick || exit 1; done

clean:
	rm -rf $(VENV)
