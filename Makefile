# `make test` and `make demo` do all the set-up on a fresh machine: each creates .venv and installs first.
# Override TORCH_SPEC for a CUDA build, e.g.  make TORCH_SPEC="torch==2.11.0" test
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
MEDIAPIPE_SPEC ?= mediapipe==0.10.21
# Triton Inference Server 2.51 (tritonserver + Python backend, CPU) for the `triton` tests; see docs/triton.md.
TRITON_SPEC ?= nvidia-pytriton==0.7.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.stylestream-installed

.PHONY: venv test demo lint serve clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[dev]"
	# MediaPipe pins protobuf<5 and numpy<2; its runtime works with ours, so install it without deps.
	$(PIP) install --no-deps "$(MEDIAPIPE_SPEC)"
	# Only the wheel's server binary is used, not pytriton's Python API, whose deps pin numpy<2: no deps.
	$(PIP) install --no-deps "$(TRITON_SPEC)"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/stylestream demo

serve: $(STAMP)
	$(VENV)/bin/stylestream serve

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) demo_out .pytest_cache
