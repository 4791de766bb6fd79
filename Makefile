# The two commands of the README, with all set-up included:
#   make demo   - install, fetch Kafka once, run the whole pipeline on the embedded defaults
#   make test   - install, then every test (the integration tests start a real broker)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test install bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/finops demo

# pytest exits 5 when it collected no tests: that is a failure here, not a pass.
test: install
	@$(BIN)/pytest -v; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# every benchmark at its --quick size, into one JSON (about 5 min on 2 cores): bench/README.md
bench: install
	$(BIN)/finops bench all --quick --json bench/results/all-quick.json

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
