# Replika's development tasks. `make test` is what CI runs (.ci/run).

CARGO ?= cargo
# Where `make control-plane` keeps its long-lived control plane.
LOCAL_DIR ?= .local
TESTENV := $(CARGO) run --quiet --package testenv --bin testenv --

.DEFAULT_GOAL := test

## Local control plane (etcd, kube-apiserver, kube-controller-manager) ########

.PHONY: control-plane-binaries node-binaries control-plane down

# Builds the pinned binaries once into a cache outside the repository
# (5-10 minutes cold on 2 cores; instant afterwards).
control-plane-binaries:
	control-plane/build.sh >/dev/null

# The same plus kubelet, kube-proxy and kube-scheduler for a worker node
# (1-3 minutes more once the plane's Go build cache is warm).
node-binaries:
	control-plane/build.sh node >/dev/null

# Starts a long-lived plane in $(LOCAL_DIR), or reuses the one running there.
# Admin kubeconfig: $(LOCAL_DIR)/kubeconfig; kubectl: $(LOCAL_DIR)/bin/kubectl.
# Tests use it instead of their own when REPLIKA_TEST_KUBECONFIG names it.
control-plane: control-plane-binaries
	$(TESTENV) --dir $(LOCAL_DIR) up

# Stops the plane or cluster in $(LOCAL_DIR) and removes all it created.
down:
	$(TESTENV) --dir $(LOCAL_DIR) down

## Local cluster with a worker node (docs/install.md) #########################

.PHONY: cluster image deploy

# Where `make image` writes replika.tar (OCI archive) and replika.ref (its name).
IMAGE_DIR ?= target/image
# How `make deploy` installs: self-managed, cert-manager or helm.
INSTALL ?= self-managed

# The plane plus one real node (kubelet, kube-proxy, containerd, CNI bridge)
# in $(LOCAL_DIR), or the one running there. Needs root and the Debian
# packages of .ci/run. One such cluster runs on a machine at a time.
cluster: node-binaries
	$(TESTENV) --dir $(LOCAL_DIR) cluster

# The operator's image from a static release build, without a container
# engine; loaded into the node when a cluster runs.
image:
	node/build-image.sh $(IMAGE_DIR) >/dev/null
	$(TESTENV) --dir $(LOCAL_DIR) import $(IMAGE_DIR)/replika.tar

# Installs Replika into the cluster as docs/install.md says, with the image
# of `make image`, and waits for the Deployment to be Available.
deploy: image
	$(TESTENV) --dir $(LOCAL_DIR) deploy $(INSTALL) $$(cat $(IMAGE_DIR)/replika.ref)

## Checks ####################################################################

.PHONY: test soak

# Each test binary starts a private control plane, so no `make control-plane`;
# tests/in_cluster.rs starts a cluster with a node (none may run: `make down`).
test: node-binaries install-tools
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace
	$(MAKE) --no-print-directory bench-smoke

# 15 minutes of churn (sources, namespaces, Replikas, tampered copies), then
# the invariant check; `make test` runs the same test for 60 seconds.
SOAK_SECONDS ?= 900
soak: control-plane-binaries
	REPLIKA_SOAK_SECONDS=$(SOAK_SECONDS) $(CARGO) test --package replika --test reliability -- \
		--exact soak::a_soak_of_continuous_churn_ends_with_every_copy_right --nocapture

## Operator tasks (run, crd, ...) ############################################
# Add the operator's own targets below this line.

.PHONY: run crd

# Runs the operator against the current cluster, or a local control plane.
run:
	scripts/run.sh

# Regenerates the committed CRD from the Rust types.
crd:
	$(CARGO) run --quiet --bin replika -- crd > deploy/base/crd.yaml
	cp deploy/base/crd.yaml deploy/helm/replika/crds/replikas.replika.prosimcorp.com.yaml

## Install artifacts (docs/install.md) #######################################

.PHONY: bundle install-tools

# Where `make bundle` writes <overlay>/bundle.yaml, one per deploy/overlays/*.
BUNDLE_DIR ?= target/bundle

# Renders the install bundles with the pinned kubectl's Kustomize
# (control-plane/build.sh builds kubectl first if it is missing).
bundle:
	tools/bundle.sh $(BUNDLE_DIR)

# Builds what tests/install/ runs, pinned in tools/versions.env, once into the
# cache: Helm, and cert-manager's controller and cainjector (a few minutes
# each cold on 2 cores; instant afterwards).
install-tools:
	tools/build-helm.sh >/dev/null
	tools/build-cert-manager.sh >/dev/null

## Benchmark (docs/benchmarks.md) #############################################

.PHONY: bench bench-smoke

# More benchmark options, e.g. BENCH_ARGS='--operator-cmd "/path/to/other-operator"'
# (`cargo run -p bench -- --help` lists them all).
BENCH_ARGS ?=

# The full benchmark at the default scale (1000 namespaces, 20 Replikas,
# 50 000 unrelated Secrets, each timed scenario run 5 times and judged on the
# median, a 5-minute idle window: 15 resync periods of 20 s, down from 10
# minutes so the whole run fits in 15) on release builds, against a private
# control plane. Prints the table; writes target/bench/result.json with every
# repetition's figures, and the operator's log and metrics beside it. About
# 11 minutes on 2 cores once everything is built. Both packages are built by
# one cargo call, so their dependencies build once, and the binary is run as
# built (no second build if sources change meanwhile).
# At scale: BENCH_ARGS='--scale 10000' (20 Replikas = 200 000 copies; waits
# scale with the objects waited for; the large-scale targets apply).
bench: control-plane-binaries
	$(CARGO) build --release --package replika --package bench
	target/release/bench $(BENCH_ARGS)

# The same scenarios at a tiny scale on debug builds, in a few minutes: proves
# the benchmark still runs end to end, twice per timed scenario (the medians
# and the API server's admission histogram included; its timings mean
# nothing). Fails only if a step does, never on a missed target.
bench-smoke: control-plane-binaries
	$(CARGO) build --package replika --package bench
	target/debug/bench --scale 20 --replikas 2 --repeats 2 \
		--unrelated-secrets 100 --new-namespaces 5 --idle-window 10 \
		--admission-requests 100 --timeout 60 \
		--operator-cmd "target/debug/replika run --leader-election=true" \
		--json target/bench-smoke/result.json
