# One entry point. `make demo` and `make test` each set up .venv first when needed.
PYTHON ?= python3
VENV := .venv
# PY=python uses an existing environment instead of .venv (the Docker image does this).
PY ?= $(VENV)/bin/python
STAMP := $(VENV)/.installed
ifeq ($(PY),$(VENV)/bin/python)
SETUP := $(STAMP)
else
SETUP :=
endif
DEMO_DATA := data/demo
DEMO_FEATURES := features/demo
DEMO_CONFIG := configs/demo.json
DEMO_FEATURE_FLAGS := --config_path $(DEMO_CONFIG)
# DCASE 2017 task 2-style soundscapes: training ones add training crops (train_soundscapes), validation ones
# tune detection (configs/demo.json names both; predict.py then takes the settings from
# scores/operating_point.json), evaluation ones (30 min) measure it.
DEMO_SOUNDSCAPES := $(DEMO_DATA)/soundscapes
DEMO_SOUNDSCAPE_FLAGS := --csv_file $(DEMO_DATA)/metadata.csv --data_dir $(DEMO_DATA)/audio --target_class babycry

.PHONY: setup demo test bench bench-accuracy clean-demo

setup: $(SETUP)

$(STAMP): requirements.txt requirements-dev.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

demo: $(SETUP)
	$(PY) -m tools.demo_data --out $(DEMO_DATA) --clips_per_class 80 --long_recording $(DEMO_DATA)/long.wav
	$(PY) preprocessingBabyCrying.py --csv_file $(DEMO_DATA)/metadata.csv --data_dir $(DEMO_DATA)/audio \
		--save_dir $(DEMO_FEATURES) $(DEMO_FEATURE_FLAGS)
# (the training soundscapes build on one core while the other builds the validation and evaluation ones)
	$(PY) -m tools.soundscapes $(DEMO_SOUNDSCAPE_FLAGS) --list $(DEMO_FEATURES)/filenames/train.txt \
		--out $(DEMO_SOUNDSCAPES)/train --n_mixtures 240 --seed 3 & train=$$!; \
	$(PY) -m tools.soundscapes $(DEMO_SOUNDSCAPE_FLAGS) --list $(DEMO_FEATURES)/filenames/validation.txt \
		--out $(DEMO_SOUNDSCAPES)/validation --n_mixtures 80 --seed 1 && \
	$(PY) -m tools.soundscapes $(DEMO_SOUNDSCAPE_FLAGS) --list $(DEMO_FEATURES)/filenames/evaluation.txt \
		--out $(DEMO_SOUNDSCAPES)/evaluation --n_mixtures 60 --seed 2; status=$$?; \
	wait $$train && exit $$status
# YAMNet's AudioSet weights, converted offline from the installed package (the demo fine-tunes them, and
# uses them as they are for the zero-shot run below)
	$(PY) -m models.convert yamnet
	$(PY) train.py --config_path $(DEMO_CONFIG) --no_progress --resume
	$(PY) evaluation.py --config_path $(DEMO_CONFIG) --no_progress
	$(PY) predict.py --checkpoint runs/demo/checkpoints/model_best.pth.tar --long $(DEMO_DATA)/long.wav \
		--reference $(DEMO_DATA)/long_events.csv --no_progress
	@echo "--- the same recording, zero-shot: AudioSet-pretrained YAMNet as it is, no fine-tuning:"
	$(PY) predict.py --checkpoint audioset:yamnet --long $(DEMO_DATA)/long.wav --target_class "Baby cry, infant cry" \
		--reference $(DEMO_DATA)/long_events.csv --reference_class babycry --no_progress --threshold 0.1
	@echo "--- the trained detector on 30 min of soundscapes from the evaluation clips (DCASE 2017 task 2 style):"
	$(PY) predict.py --checkpoint runs/demo/checkpoints/model_best.pth.tar --long $(DEMO_SOUNDSCAPES)/evaluation \
		--reference $(DEMO_SOUNDSCAPES)/evaluation/events.csv --no_progress

test: $(SETUP)
	$(PY) -m pytest -q

# Speed benchmarks (a few minutes) and the FSDD accuracy benchmark (about 20 minutes, needs ../shared).
bench: $(SETUP)
	$(PY) -m bench.bench_preprocess
	$(PY) -m bench.bench_train
	$(PY) -m bench.bench_loader
	$(PY) -m bench.bench_predict
	$(PY) -m bench.bench_stream
	$(PY) -m bench.bench_export

bench-accuracy: $(SETUP)
	$(PY) -m bench.bench_accuracy

clean-demo:
	rm -rf $(DEMO_DATA) $(DEMO_FEATURES) runs/demo
