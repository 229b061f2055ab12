# Thin wrappers; the real work is in infra/setup.sh, infra/services.py and the ecos CLI.
#   make setup                  # .venv with the pinned environment + infra/bin/rclone
#   make up [SERVICES="s3 prefect worker gpu-worker"]   # default: s3 prefect worker
#   make status | make down [SERVICES=...]
#   make test [PYTEST_ARGS="-m 'not slow'"]
#   make run [ARGS="--budget 500"]   # one ECOS round; uses the services that are up
PYTHON ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)
SERVICES ?=
ARGS ?=
PYTEST_ARGS ?= -q

.PHONY: setup rclone up down status env test run

setup:
	bash infra/setup.sh
	PIP="$(PYTHON) -m pip" bash infra/get_rclone.sh

rclone:
	PIP="$(PYTHON) -m pip" bash infra/get_rclone.sh

up:
	$(PYTHON) -m infra.services up $(SERVICES)

down:
	$(PYTHON) -m infra.services down $(SERVICES)

status:
	@$(PYTHON) -m infra.services status

env:
	@$(PYTHON) -m infra.services env

test:
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# Points the round at the S3 store / Prefect server when they are up (env --running),
# else it runs embedded (local folder store, ephemeral Prefect).
run:
	eval "$$($(PYTHON) -m infra.services env --running)" && $(PYTHON) -m ecos_cli run $(ARGS)
