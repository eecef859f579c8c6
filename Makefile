# lmdeploy-kit: the user's interface. `make` (or `make help`) lists every target.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

# Settings profile: default, seed (the homework), fc (function call), multi-gpu, homework-pins.
PROFILE ?= default
# Ansible inventory; the default provisions this machine over a local connection.
INVENTORY ?= ansible/inventory/localhost.yml
# Kubernetes context and namespace (empty = current context / settings' namespace).
CONTEXT ?=
NAMESPACE ?=
# Extra arguments passed to the client/tool a target runs, e.g. ARGS="--prompt hi".
# `make quantize` passes them to all three jobs: settings flags such as ARGS="--set quantization.device=cpu".
ARGS ?=
# The kit's own environment (created by `make venv`).
VENV ?= .venv
PY := $(VENV)/bin/python
# Stamp written once the environment matches the pinned requirements.
VENV_STAMP := $(VENV)/.kit-installed
KUBECTL := $(VENV)/bin/kubectl
export PROFILE

# Guard: $(call need,path,what) exits 2 when a part of the kit is missing.
need = @test -e $(1) || { echo "make: $(2) is not built yet ($(1) missing)" >&2; exit 2; }
CLUSTER_FLAGS = $(if $(CONTEXT),--context $(CONTEXT)) $(if $(NAMESPACE),--namespace $(NAMESPACE))

##@ General
help: ## Show this help
	@if test -t 1 && test -z "$${NO_COLOR:-}"; then c=$$'\033[36m' b=$$'\033[1m' r=$$'\033[0m'; else c= b= r=; fi; \
	awk -v c="$$c" -v b="$$b" -v r="$$r" 'BEGIN {FS = ":.*##"; printf "Usage: make <target> [PROFILE=default|seed|fc|multi-gpu] [VAR=value]\n"} \
	  /^[a-zA-Z_-]+:.*?##/ { printf "  %s%-12s%s %s\n", c, $$1, r, $$2 } \
	  /^##@/ { printf "\n%s%s%s\n", b, substr($$0, 5), r }' $(MAKEFILE_LIST)

##@ Setup
venv: $(VENV_STAMP) ## Create the kit's Python environment (pinned tools, CPU torch, lmdeploy)

$(VENV_STAMP): requirements/*.txt pyproject.toml
	bash .ci/setup-venv.sh $(VENV)
	@touch $@

deps: ## Install the Debian packages the tests use (root) or list the missing ones
	bash .ci/install-deps.sh

render: $(VENV_STAMP) ## Write generated Ansible vars and kustomize params from settings.yaml
	$(PY) -m kit render

settings: $(VENV_STAMP) ## Show the effective settings of PROFILE
	$(PY) -m kit show

provision: render ## Provision INVENTORY hosts (GPU preflight, env, model store, services)
	$(call need,ansible/site.yml,the Ansible playbook)
	@$(PY) -m kit validate >/dev/null  # an unknown PROFILE: one line naming the valid ones
	$(VENV)/bin/ansible-playbook -i $(INVENTORY) ansible/site.yml -e @ansible/vars/profiles/$(PROFILE).yml $(ARGS)

##@ Quantize
quantize: ## Fetch, AWQ-quantize and verify the model on this host (no Kubernetes)
	$(call need,jobs/quantize.py,the quantize job)
	$(PY) -m jobs.fetch $(ARGS) && $(PY) -m jobs.quantize $(ARGS) && $(PY) -m jobs.verify $(ARGS)

##@ Deploy
plan: ## Predict KV capacity and concurrency per quant policy before deploying
	$(call need,kit/plan/__init__.py,the capacity planner)
	$(PY) -m kit.plan $(ARGS)

deploy: render ## Plan, apply the PROFILE overlay, wait for the Jobs and the rollout
	$(call need,kit/cluster/__init__.py,the Kubernetes deploy tool)
	$(PY) -m kit.cluster $(CLUSTER_FLAGS) deploy $(ARGS)

undeploy: ## Remove the PROFILE overlay (keeps the model PVC unless ARGS=--delete-pvc)
	$(call need,kit/cluster/__init__.py,the Kubernetes deploy tool)
	$(PY) -m kit.cluster $(CLUSTER_FLAGS) undeploy $(ARGS)

status: ## Pods, Jobs, events, endpoints and GPU memory of the deployment
	$(call need,kit/cluster/__init__.py,the Kubernetes deploy tool)
	$(PY) -m kit.cluster $(CLUSTER_FLAGS) status $(ARGS)

logs: ## Tail the serving pods' logs
	$(call need,kit/cluster/__init__.py,the Kubernetes deploy tool)
	$(PY) -m kit.cluster $(CLUSTER_FLAGS) logs $(ARGS)

##@ Use
chat: ## Chat with the served model (ARGS="--prompt ..." for one shot)
	$(call need,clients/chat.py,the chat client)
	$(PY) -m clients.chat $(ARGS)

gradio: ## Run the Gradio chat page locally (port from settings)
	$(call need,clients/webui.py,the Gradio app)
	$(PY) -m clients.webui $(ARGS)

fc-check: ## Run the add/mul function-call check against the server
	$(call need,clients/funcall.py,the function-call check)
	$(PY) -m clients.funcall $(ARGS)

gpu: ## GPU usage of the serving pods (ARGS=--local for this host)
	$(call need,clients/gpu_report.py,the GPU reporter)
	$(if $(findstring --local,$(ARGS)),$(PY) -m clients.gpu_report $(filter-out --local,$(ARGS)),$(PY) -m kit.cluster $(CLUSTER_FLAGS) gpu $(ARGS))

report: ## Build the evidence report (Markdown + PNG) from the live service or ARGS="--from FILE"
	$(call need,clients/report/__main__.py,the report builder)
	$(PY) -m clients.report $(ARGS)

##@ Build
images: ## Build the runtime and client images (docker or podman)
	$(call need,images/build.py,the image build)
	$(PY) images/build.py $(ARGS)

bench: ## GPU benchmark against bare lmdeploy (needs a GPU)
	$(call need,tests/gpu/bench_tm.py,the GPU benchmark)
	$(PY) -m tests.gpu.bench_tm $(ARGS)  # TurboMind; the PyTorch run: python -m tests.gpu.bench

##@ Check
lint: $(VENV_STAMP) ## Lint Python, YAML and generated files
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check kit jobs clients tests
	$(VENV)/bin/yamllint -s .
	$(PY) -m kit render --check
	bash .ci/lint-extra.sh $(VENV)

test: deps lint ## Run linters and the CPU test suite
	$(PY) -m pytest $(ARGS)

rehearse: render ## Run the PROFILE overlay's pods as local processes, kubelet-style (ARGS="--model-source DIR")
	$(call need,kit/rehearse/__main__.py,the pod rehearsal)
	$(PY) -m kit.rehearse --profile $(PROFILE) $(ARGS)

PY_TARGETS := quantize plan undeploy status logs chat gradio fc-check gpu report images bench
$(PY_TARGETS): $(VENV_STAMP)

.PHONY: help venv deps render settings provision quantize plan deploy undeploy status logs chat gradio fc-check gpu report images bench lint test rehearse
