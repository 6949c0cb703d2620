# Two entry points a newcomer needs: `make serve` and `make test`.
# Each sets up everything it needs first (virtualenv, packages, example models).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FRONT := $(BIN)/modelyard-grpc-front
HOST ?= 127.0.0.1

MODELS := model-settings/iris/model.joblib model-settings/iris/reference.parquet \
          model-settings/breast-cancer/model.ubj model-settings/breast-cancer/reference.parquet \
          model-settings/sentiment/model.safetensors \
          examples/customer-profile/model.joblib examples/customer-profile/reference.parquet

.PHONY: serve test lint format bench generate models install clean checkov
.PHONY: kube kube-binaries postgres-server promtool perf-analyzer kserve-client

serve: models $(FRONT)
	$(BIN)/modelyard serve model-settings --host $(HOST) --http-port 8080 --grpc-port 8081 --metrics-port 8082

test: models
test: $(FRONT)
test: kube-binaries
test: postgres-server
test: promtool
test: perf-analyzer
test: kserve-client
	$(BIN)/pytest -q

# ruff over the repository, mypy over the package (pyproject.toml's [tool.mypy] names
# modelyard, the runtimes and the operator), hadolint over the Dockerfiles.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint images/*/Dockerfile
lint: checkov

# checkov (framework kubernetes) over what a cluster gets: every example Model as
# `modelyard render` renders it, and the chart as Helm does (scripts/checkov/). It has
# many dependencies that clash with this project's pins, so it lives in a virtualenv of
# its own under the cache. The checks it skips are listed in docs/kubernetes.md.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := $(HOME)/.cache/modelyard/checkov
CHECKOV := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)
$(CHECKOV):
	test -d $(CHECKOV_VENV) || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $@
checkov: $(CHECKOV) $(STAMP)
	@out=$$(mktemp -d) && trap 'rm -rf "$$out"' EXIT && \
		$(BIN)/python scripts/checkov/render.py "$$out" && \
		nice -n 10 $(CHECKOV_VENV)/bin/checkov --config-file scripts/checkov/config.yaml \
			--directory "$$out"

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "modelyard needs Python 3.11 ($(PYTHON) not found)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 is the CPU build; pip finds it where the machine keeps it.
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# The gRPC front end (front/, Go), built from Debian's Go and gRPC packages (no module
# download), next to the virtualenv's python, where `modelyard serve` finds it.
$(FRONT): front/main.go $(STAMP)
	@{ command -v go >/dev/null && test -d /usr/share/gocode/src/google.golang.org/grpc; } || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			--no-install-recommends golang-go golang-google-grpc-dev; }
	cd front && GO111MODULE=off GOPATH=/usr/share/gocode go build -o $(CURDIR)/$@ .

# Files made from the declaration schema; a test fails when they drift from it.
generate: $(STAMP)
	$(BIN)/python -m modelyard.declarations.schema.docs docs/declaration.md

models: $(MODELS)

# Each train.py writes its model and its drift reference (reference.parquet) at once.
model-settings/iris/model.joblib model-settings/iris/reference.parquet &: examples/iris/train.py $(STAMP)
	$(BIN)/python $<
model-settings/breast-cancer/model.ubj model-settings/breast-cancer/reference.parquet &: \
		examples/breast-cancer/train.py $(STAMP)
	$(BIN)/python $<
model-settings/sentiment/model.safetensors: examples/sentiment/train.py $(STAMP)
	$(BIN)/python $<
# The customer-profile example is served from its own folder: a synthetic database,
# then the preprocess object and classifier trained on it (train.py pins their hashes
# in model.yaml).
examples/customer-profile/features.db: examples/customer-profile/make_data.py $(STAMP)
	$(BIN)/python $<
examples/customer-profile/model.joblib examples/customer-profile/reference.parquet &: \
		examples/customer-profile/train.py examples/customer-profile/features.sql \
		examples/customer-profile/features.db $(STAMP)
	$(BIN)/python $<

clean:
	rm -rf $(VENV) $(MODELS) model-settings/sentiment/*.json.tmp
	rm -f examples/customer-profile/features.db examples/customer-profile/preprocess.pkl

# Benchmarks (not part of `make test`): modelyard against plain `mlserver start`, and
# (the peers part) against KServe, BentoML and Ray Serve, whose virtualenvs the first
# run builds under ~/.cache/modelyard/peers (minutes, once); perf_analyzer likewise.
# One part, shorter: python -m benchmarks.run --only peers --duration 3
bench: models $(FRONT)
	command -v wrk >/dev/null && command -v h2load >/dev/null || apt-get install -y -q wrk nghttp2-client
	$(BIN)/python -m benchmarks.run

# The operator and chart tests run a real kube-apiserver; this builds it once from
# Debian's source package (about 4 minutes) into ~/.cache, then takes a second.
kube: kube-binaries
kube-binaries:
	scripts/kube/build.sh

# The runtime, batch and metrics tests start a real PostgreSQL server (initdb, pg_ctl);
# a fresh machine gets them from the distribution.
postgres-server:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; }

# NVIDIA perf_analyzer under the cache, runnable on Debian 12 (the script says how).
perf-analyzer: $(STAMP)
	scripts/perf_analyzer/install.sh

# The KServe SDK's clients in a virtualenv of their own under the cache: kserve 0.21
# needs a newer FastAPI than MLServer 1.7 runs on (tests/support/kserve_sdk.py).
kserve-client: $(STAMP)
	$(BIN)/python -m tests.support.kserve_sdk

# The alert rules of the chart are checked and unit-tested with promtool, from
# Debian's prometheus package.
promtool:
	@command -v promtool >/dev/null || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; }

# The Model CRD's schema is generated from the declaration schema (a test checks it).
.PHONY: generate-crd
generate: generate-crd
generate-crd: $(STAMP)
	$(BIN)/python -m modelyard_operator.crd

# Container images with no registry needed: base images made from Debian's packages
# (debootstrap, Debian's python3.11), then images/*/Dockerfile built on them with build
# arguments (elsewhere they build from python:3.11-slim). Cached in ~/.cache/modelyard:
# the base images and a wheelhouse of the virtualenv's versions. Needs root (dockerd).
REGISTRY ?= ghcr.io/modelyard
VERSION ?= 0.1.0
.PHONY: images test-cluster
images: models $(STAMP)
	REGISTRY=$(REGISTRY) VERSION=$(VERSION) nice -n 19 scripts/images/build.sh serving operator examples

# A real single-node Kubernetes 1.20 (etcd, apiserver, controller-manager, scheduler, a
# kubelet on Docker, kube-proxy) on a bridge of its own: the chart installed, the example
# Models served from a local S3, rollouts, batch Jobs. Torn down, host rules and sysctls
# restored, whatever happens (tests/support/node.py).
test-cluster: images kube-binaries postgres-server
	MODELYARD_CLUSTER_TESTS=1 REGISTRY=$(REGISTRY) VERSION=$(VERSION) \
		nice -n 19 $(BIN)/pytest -q --timeout=900 tests/cluster; \
		rc=$$?; $(BIN)/python -m tests.support.node down; exit $$rc
