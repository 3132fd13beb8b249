# One entry point. `make demo` and `make test` each set up .venv first when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATA := data/demo
DEMO_FEATURES := features/demo
DEMO_CONFIG := configs/demo.json

.PHONY: setup demo test bench clean-demo

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m audioclf.demo_data --out $(DEMO_DATA) --long_recording $(DEMO_DATA)/long.wav
	$(PY) preprocessingBabyCrying.py --csv_file $(DEMO_DATA)/metadata.csv --data_dir $(DEMO_DATA)/audio \
		--save_dir $(DEMO_FEATURES) --n_mels 64 --n_frames 200

test: $(STAMP)
	$(PY) -m pytest -q

clean-demo:
	rm -rf $(DEMO_DATA) $(DEMO_FEATURES) runs/demo
