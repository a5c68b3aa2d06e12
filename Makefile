PYTHON ?= python3

.PHONY: install demo test bench

install:
	bash deploy/install.sh

demo: install
	tasksim demo

test: install
	$(PYTHON) -m pytest -q

bench:
	$(PYTHON) bench/metrics.py
