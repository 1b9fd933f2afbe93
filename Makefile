# make train: fresh venv, install, train configs/default.py (no download), evaluate it.
# make test:  fresh venv with test extras, run the suite.
# make ablation-demo: the papers' ablations in miniature on digits (CPU, < 30 min): the
#   demo sweeps of configs/sweeps/, three seeds a cell, then their report (tables with
#   confidence intervals, comparisons paired by seed, plots, results.json).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/default
CONFIG ?= configs/default.py
# Eight simulated CPU devices so that sharded code paths run in tests.
TEST_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=8 TF_CPP_MIN_LOG_LEVEL=2
DEMO_ROOT ?= workdirs/ablation-demo
DEMO_SWEEPS := demo_mobilenet_width_resolution demo_shufflenet_groups_shuffle \
	demo_distillation
# demo_distillation's teacher: configs/default.py's 0.5 MobileNet (make train's model),
# trained first; its final evaluation, $(DEMO_TEACHER).json, marks it finished.
DEMO_TEACHER := $(DEMO_ROOT)/teacher

.PHONY: install install-test train eval test ablation-demo clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt requirements-test-nodeps.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-test-nodeps.txt
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

train: install
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) train.py --config $(CONFIG) --workdir $(WORKDIR)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) eval.py --config $(CONFIG) --workdir $(WORKDIR)

eval: install
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) eval.py --config $(CONFIG) --workdir $(WORKDIR)

test: install-test
	$(TEST_ENV) $(PY) -m pytest -n 2 -q tests

# Finished cells are skipped and interrupted ones resume: rerunning continues the demo.
ablation-demo: install
	mkdir -p $(DEMO_ROOT)
	test -f $(DEMO_TEACHER).json || { \
	  TF_CPP_MIN_LOG_LEVEL=2 $(PY) train.py --config configs/default.py \
	      --workdir $(DEMO_TEACHER) | tail -n 1 > $(DEMO_TEACHER).json.tmp && \
	  grep -q '"top1"' $(DEMO_TEACHER).json.tmp && \
	  mv $(DEMO_TEACHER).json.tmp $(DEMO_TEACHER).json; }
	for sweep in $(DEMO_SWEEPS); do \
	  TF_CPP_MIN_LOG_LEVEL=2 DEMO_TEACHER=$(DEMO_TEACHER) $(PY) -m mobileshuffle_jax.sweep \
	      configs/sweeps/$$sweep.py --workdir $(DEMO_ROOT)/$$sweep || exit 1; \
	done
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m mobileshuffle_jax.report $(DEMO_ROOT) --out $(DEMO_ROOT)/report

clean:
	rm -rf $(VENV) .pytest_cache
