# The two commands a newcomer needs: `make demo` and `make test` (both install on first use).
SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export WOO_MIRAKL_HOME := $(CURDIR)
export PYTHONPATH := $(CURDIR)
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__TEST_CONNECTION := Enabled
# woo_mirakl_flows: the REST API user the flows pause DAGs and save rotated refresh tokens as (include/woo_mirakl/flows_api_user.py)
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS := admin:admin,woo_mirakl_flows:op
export SANDBOX_HOST ?= 127.0.0.1
export SANDBOX_MIRAKL_PORT ?= 8081
export SANDBOX_WOO_PORT ?= 8082
export PATH := $(BIN):$(PATH)

.PHONY: help install settings demo test test-fast airflow sandbox lock clean

help:
	@echo "make demo     run every flow once against the local sandbox and print a summary"
	@echo "make test     run the whole test suite"
	@echo "make airflow  Airflow UI (standalone) with the sandbox running"
	@echo "make sandbox  only the sandbox servers (Mirakl :$(SANDBOX_MIRAKL_PORT), WooCommerce :$(SANDBOX_WOO_PORT))"

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

install: $(STAMP)

# Airflow's metadata DB (SQLite in .airflow/) plus the connections, pools and variables.
settings: install
	mkdir -p $(CURDIR)/var $(AIRFLOW_HOME)
	$(BIN)/airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || (cat $(AIRFLOW_HOME)/db-migrate.log; exit 1)
	$(BIN)/python -m include.woo_mirakl.settings_loader airflow_settings.yaml

demo: settings
	$(BIN)/python -m include.demo

test: install
	bash scripts/install-browser.sh
	$(BIN)/python -m pytest -q -ra -n 2 --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -q -ra -n 2 --dist loadfile -m "not slow"

sandbox: install
	$(BIN)/python -m include.sandbox --mirakl-port $(SANDBOX_MIRAKL_PORT) --woo-port $(SANDBOX_WOO_PORT) --scenario demo --state-file $(CURDIR)/var/sandbox-state.json

airflow: settings
	$(BIN)/python -m include.woo_mirakl.flows_api_user --api-url http://localhost:8080
	@echo "Airflow UI: http://localhost:8080  (user admin, password in $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated)"
	$(BIN)/python -m include.sandbox --mirakl-port $(SANDBOX_MIRAKL_PORT) --woo-port $(SANDBOX_WOO_PORT) --scenario demo --state-file $(CURDIR)/var/sandbox-state.json --alert-sinks & \
	  SANDBOX_PID=$$!; trap "kill $$SANDBOX_PID" EXIT; $(BIN)/airflow standalone

# Re-resolve requirements.in into the fully pinned requirements.txt.
lock:
	rm -rf $(CURDIR)/.lockenv && $(PYTHON) -m venv $(CURDIR)/.lockenv
	$(CURDIR)/.lockenv/bin/pip install --quiet -r requirements.in
	{ head -2 requirements.txt; $(CURDIR)/.lockenv/bin/pip freeze; } > requirements.txt.new && mv requirements.txt.new requirements.txt
	rm -rf $(CURDIR)/.lockenv

clean:
	rm -rf $(CURDIR)/.airflow $(CURDIR)/var $(CURDIR)/reports
