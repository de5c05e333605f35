# `make test` and `make demo` work on a fresh clone: they build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lorakit-installed

.PHONY: test demo demo-sd sdworld-assets ditworld-assets bench lint clean fuzz docs ui

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,hf,quickstart,ui]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# >= 10,000 mutated LoRA/LyCORIS/PEFT files through every reader and tool, and mutated run configs
# through validate (+ a 1-step train of the accepted ones); `make test` runs a few dozen of each.
fuzz: $(STAMP)
	LORAKIT_FUZZ_EXAMPLES=3400 $(PY) -m pytest -q -p no:cacheprovider tests/formats/test_fuzz_files.py \
		tests/train/test_fuzz_config.py

demo: $(STAMP)
	$(PY) -m lorakit quickstart --overwrite

# The SD demo: a LoRA learns a new shape on the shipped toy base model (assets/), with the real trainer.
demo-sd: $(STAMP)
	$(PY) -m lorakit.demos.sdworld.demo --out runs/sdworld-demo --replace

# The web UI on a workspace holding the sdworld example (dataset, prompts, config on the shipped base): press Train.
UI_WORKSPACE ?= ui-workspace
ui: $(STAMP)
	$(PY) -m lorakit ui $(UI_WORKSPACE) --example

# Rebuild assets/sdworld-base and the probe from scratch (about 33 min on 2 CPU cores).
sdworld-assets: $(STAMP)
	$(PY) -m lorakit.demos.sdworld.build --out assets

# Rebuild assets/ditworld-flux, the tiny FLUX.1-shaped base of the flow-matching learning test (about 30 min
# on 2 busy CPU cores; it reuses assets/sdworld-base's VAE and text encoder).
ditworld-assets: $(STAMP)
	$(PY) -m lorakit.demos.ditworld.pretrain --out assets/ditworld-flux --steps 5000

bench: $(STAMP)
	$(PY) benchmarks/train_step.py

# The documentation site (MkDocs, offline; the `docs` extra, also in `dev`) in site/: the config reference is regenerated first, and
# --strict turns a broken link or anchor into an error.
docs: $(STAMP)
	$(PY) docs/gen_config.py
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples

clean:
	rm -rf $(VENV) build site *.egg-info
