# Replika's development tasks. `make test` is what CI runs (.ci/run).

CARGO ?= cargo
# Where `make control-plane` keeps its long-lived control plane.
LOCAL_DIR ?= .local
TESTENV := $(CARGO) run --quiet --package testenv --bin testenv --

.DEFAULT_GOAL := test

## Local control plane (etcd, kube-apiserver, kube-controller-manager) ########

.PHONY: control-plane-binaries control-plane down

# Builds the pinned binaries once into a cache outside the repository
# (15-25 minutes cold on 2 cores; instant afterwards).
control-plane-binaries:
	control-plane/build.sh >/dev/null

# Starts a long-lived plane in $(LOCAL_DIR), or reuses the one running there.
# Admin kubeconfig: $(LOCAL_DIR)/kubeconfig; kubectl: $(LOCAL_DIR)/bin/kubectl.
# Tests use it instead of their own when REPLIKA_TEST_KUBECONFIG names it.
control-plane: control-plane-binaries
	$(TESTENV) up --dir $(LOCAL_DIR)

down:
	$(TESTENV) down --dir $(LOCAL_DIR)

## Checks ####################################################################

.PHONY: test

# Each test binary starts a private control plane, so no `make control-plane`.
test: control-plane-binaries
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace

## Operator tasks (run, crd, ...) ############################################
# Add the operator's own targets below this line.

.PHONY: run crd

# Runs the operator against the current cluster, or a local control plane.
run:
	scripts/run.sh

# Regenerates the committed CRD from the Rust types.
crd:
	$(CARGO) run --quiet --bin replika -- crd > deploy/base/crd.yaml
