# Blender extension rules, included from the top-level Makefile (`include mk/blender.mk`).
#   make extension      one installable zip per platform in dist/ (wheels fetched with pip download)
#   make blender-venvs  bpy 5.2 (Python 3.13) and 4.2 LTS (Python 3.11), each in its own venv
#   make test-blender   tests/blender under each bpy venv, against a backend from the main venv
#   make bench-blender  bench/results/blender-cpu.json (keyframe throughput, end-to-end frames/s)
# Uses $(PYTHON), $(BIN) and the `install` target of the main Makefile when they exist.

PYTHON ?= python3.11
BIN ?= .venv/bin
# The tested range: 4.2 LTS (the oldest the manifest allows, Python 3.11) and the newest bpy on PyPI
# (Blender 5.1 and later run Python 3.13). `make test-blender BPY_VERSIONS="5.0 4.2 5.2"` adds 5.0.
BPY_VERSIONS ?= 4.2 5.2
# numpy pinned as the matching Blender releases ship it (bpy 4.2 on PyPI does not pin it)
BPY_SPEC_4.2 ?= bpy==4.2.23 numpy==1.26.4
BPY_SPEC_5.0 ?= bpy==5.0.1 numpy==1.26.4
BPY_SPEC_5.2 ?= bpy==5.2.3
# Python 3.13 for bpy 5.1+: python3.13 on PATH when it runs (a pyenv shim may not), else the newest
# 3.13 under pyenv's root. Override with PYTHON313=/path/to/python3.13.
ifndef PYTHON313
PYTHON313 := $(shell for p in python3.13 $$(ls -d "$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)"/versions/3.13.*/bin/python3.13 2>/dev/null | sort -rV); do \
  "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 13); print(sys.executable)' 2>/dev/null && break; done)
endif
BPY_PYTHON_4.2 ?= $(PYTHON)
BPY_PYTHON_5.0 ?= $(PYTHON)
BPY_PYTHON_5.2 ?= $(PYTHON313)
BLENDER_BUILD ?= build/extension
EXT_PLATFORMS ?= linux-x64 windows-x64 macos-arm64 macos-x64
# the builder needs only Python >= 3.11 with pip: the main venv's when it exists
EXT_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
# the backend the Blender tests start comes from the main venv (ffavatar installed)
BACKEND_DEPS ?= install
BLENDER_TEST_ARGS ?=

.PHONY: extension blender-venvs test-blender bench-blender

$(BLENDER_BUILD)/.wheels: blender_manifest.toml
	$(EXT_PYTHON) blender_addon/tools/build_extension.py wheels --build $(BLENDER_BUILD) --pip "$(EXT_PYTHON) -m pip"
	touch $@

extension: $(BLENDER_BUILD)/.wheels
	$(EXT_PYTHON) blender_addon/tools/build_extension.py zip --build $(BLENDER_BUILD) --dist dist \
	  --platforms $(EXT_PLATFORMS)

.venv-blender-%/.installed:
	@test -n "$(BPY_PYTHON_$*)" || { echo "error: bpy $* needs Python 3.13, which was not found: install it" \
	  "(e.g. 'pyenv install 3.13') or pass PYTHON313=/path/to/python3.13" >&2; exit 1; }
	$(BPY_PYTHON_$*) -m venv .venv-blender-$*
	.venv-blender-$*/bin/python -m pip install -q --upgrade pip
	.venv-blender-$*/bin/python -m pip install -q $(BPY_SPEC_$*) "pytest>=8" "pytest-timeout>=2.2"
	touch $@

blender-venvs: $(foreach v,$(BPY_VERSIONS),.venv-blender-$(v)/.installed)

test-blender: blender-venvs extension $(BACKEND_DEPS)
	@set -e; for v in $(BPY_VERSIONS); do \
	  echo "== bpy $$v =="; \
	  FFAVATAR_BACKEND_PYTHON=$(abspath $(BIN))/python FFAVATAR_DIST=$(abspath dist) \
	    .venv-blender-$$v/bin/python -m pytest -q -p no:cacheprovider tests/blender $(BLENDER_TEST_ARGS); \
	done

bench-blender: blender-venvs extension $(BACKEND_DEPS)
	FFAVATAR_BACKEND_PYTHON=$(abspath $(BIN))/python .venv-blender-$(lastword $(BPY_VERSIONS))/bin/python bench/blender.py \
	  --dist dist --out bench/results/blender-cpu.json
