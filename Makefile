# One entry point for humans and CI. `make demo` and `make test` are the two commands in the README.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install install-torch cluster-bin node-bin images cluster cluster-down lint test test-fast test-node demo bench bench-quick bench-tools crds help

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: ## install the package with every extra but torch, plus dev tools
	$(PIP) install -q -U pip
	$(PIP) install -q -e ".[all,dev]"

install-torch: ## install PyTorch (large; once per machine)
	$(PYTHON) -c "import torch, torchvision" 2>/dev/null || $(PIP) install -q -e ".[torch]"

cluster-bin: ## build (or find cached) kube-apiserver, etcd, kwok, helm, kubectl from Go modules; fetch the Gateway API CRDs
	bash hack/build-cluster-bins.sh
	bash hack/fetch-gateway-api-crds.sh

node-bin: ## build (or find cached) kubelet, kube-proxy, metrics-server and pause for the real test node
	bash hack/build-node-bins.sh

images: node-bin ## build (or find cached) the runtime, operator and pause images with buildah (Debian base)
	bash hack/build-images.sh

cluster: cluster-bin images ## a local cluster with a real node (root): prints the kubeconfig; stop with make cluster-down
	$(PYTHON) -m tests.kube.local_cluster up

cluster-down: ## stop the local cluster and remove what it created
	$(PYTHON) -m tests.kube.local_cluster down

lint: ## ruff, mypy, import-linter
	ruff check .
	mypy
	lint-imports
	$(PYTHON) -m scoring_operator.crdgen --check

test: lint cluster-bin images ## everything CI runs: lint, then the whole test suite on a real control plane (+ real node)
	$(PYTHON) -m pytest -q

test-node: cluster-bin images ## only the end-to-end tests on real pods (root)
	$(PYTHON) -m pytest -q -m node

test-fast: ## the suite without the control-plane tests
	$(PYTHON) -m pytest -q -m "not cluster"

demo: ## train + register the FAQ model in a temp registry, fetch it, serve it, ask it a question
	bash examples/faq-matching/demo.sh

bench-tools: ## install/check the compiled load generators (wrk from apt, vegeta built from its Go module)
	bash hack/bench-tools.sh

bench: bench-tools ## side-by-side benchmark (floor, this runtime, MLServer, KServe, LitServe, AML server; ResNet), ~10 min
	$(PYTHON) bench/run.py

bench-quick: bench-tools ## the same, fewer and shorter points (~4 min)
	$(PYTHON) bench/run.py --quick

crds: ## regenerate crds/ from the pydantic spec models
	$(PYTHON) -m scoring_operator.crdgen
