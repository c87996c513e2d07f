# yurt developer entry points.
#
#   make demo    install system packages (as root) and yurt, build demo.sif from busybox, run it
#   make test    install test deps and run the whole suite (as root: rootless pass as $(TEST_USER),
#                then the root-only pass)
#   make lint    ruff check
#   make bench   start-up benchmark against peer runtimes (bench/startup; BENCH_ARGS=...)
#   make clean   remove build products (distclean: also the venv)
#
# As root the venv is $(VENV) = /opt/yurt-venv (world-readable, so the unprivileged test user can
# use it) built from /usr/bin/python3; otherwise it is .venv in the source tree.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.ONESHELL:
# Recipes say what they do with '==>' lines; the scripts they call print their own steps.
.SILENT:
.SUFFIXES:

IS_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo 1 || echo 0)

ifeq ($(IS_ROOT),1)
VENV ?= /opt/yurt-venv
VENV_PYTHON ?= /usr/bin/python3
else
VENV ?= $(CURDIR)/.venv
VENV_PYTHON ?= python3
endif

TEST_USER ?= yurttest
# A second unprivileged user: the site-policy tests attack one user's files as the other.
OTHER_USER ?= yurtother
# Where the tree is copied for the unprivileged test user (the clone may live in a 0700 /root).
STAGE_PARENT ?= /var/tmp/yurt-ci
STAGE ?= $(STAGE_PARENT)/src
SUBID_RANGE_START ?= 100000
SUBID_RANGE_COUNT ?= 65536
PYTEST_TIMEOUT ?= 300
PYTEST_ARGS ?=
PYTEST_FLAGS := -ra -p no:cacheprovider --timeout=$(PYTEST_TIMEOUT) $(PYTEST_ARGS)
BENCH_ARGS ?=
SYS_PATH := /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# A clean, predictable environment for the test passes (no pyenv shims, no stray PYTHON*).
TEST_ENV_COMMON := PATH=$(VENV)/bin:$(SYS_PATH) LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 \
	CI="$${CI:-}" TERM="$${TERM:-dumb}"
YURT := $(VENV)/bin/yurt

.PHONY: help deps install demo test test-setup test-user stage lint bench clean distclean

help:
	@sed -n '3,9s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))

# ---------------------------------------------------------------- system packages

deps:
ifeq ($(IS_ROOT),1)
	bash scripts/install-system-deps
else
	bash scripts/install-system-deps --check || \
		echo "warning: some system packages are missing; run 'sudo make deps' (or as root: make deps)" >&2
endif

# ---------------------------------------------------------------- venv + yurt

# $(call install_yurt,SRC): create $(VENV) if needed and `pip install -e SRC[test]` into it,
# skipped when the same SRC with the same pyproject.toml is already installed there.
define install_yurt
	umask 022
	want="$(1) $$(sha256sum '$(1)/pyproject.toml' | cut -d' ' -f1)"
	if [ ! -x '$(VENV)/bin/python' ]; then
		echo "==> creating venv $(VENV) with $(VENV_PYTHON)"
		'$(VENV_PYTHON)' -m venv '$(VENV)'
	fi
	if [ "$$(cat '$(VENV)/.yurt-install' 2>/dev/null)" != "$$want" ]; then
		echo "==> pip install -e '$(1)[test]' into $(VENV)"
		rm -f '$(VENV)/.yurt-install'
		'$(VENV)/bin/python' -m pip install --disable-pip-version-check -q -e '$(1)[test]'
		echo "$$want" > '$(VENV)/.yurt-install'
	else
		echo "==> yurt from $(1) already installed in $(VENV)"
	fi
endef

install:
	$(call install_yurt,$(CURDIR))

# ---------------------------------------------------------------- demo

demo:
ifeq ($(IS_ROOT),1)
	bash scripts/install-system-deps
else
	bash scripts/install-system-deps --check || \
		echo "warning: some system packages are missing; the demo may fail (run 'sudo make deps')" >&2
endif
	$(call install_yurt,$(CURDIR))
	tmp=$$(mktemp -d)
	trap 'rm -rf "$$tmp"' EXIT
	echo "==> scripts/make-busybox-rootfs $$tmp/rootfs"
	sh scripts/make-busybox-rootfs "$$tmp/rootfs"
	rm -f demo.sif
	echo "==> yurt build demo.sif $$tmp/rootfs"
	'$(YURT)' build demo.sif "$$tmp/rootfs"
	echo "==> yurt inspect demo.sif"
	'$(YURT)' inspect demo.sif
	echo "==> yurt run demo.sif"
	'$(YURT)' run demo.sif
	echo "==> yurt exec demo.sif cat /etc/os-release"
	'$(YURT)' exec demo.sif cat /etc/os-release || { '$(YURT)' exec demo.sif busybox || true; } | head -1
	echo "==> demo done: try '$(YURT) shell demo.sif'"

# ---------------------------------------------------------------- tests

ifeq ($(IS_ROOT),1)

# The unprivileged test user, with a subordinate id range for --fakeroot / newuidmap.
test-user:
	for u in '$(TEST_USER)' '$(OTHER_USER)'; do
		if ! id -u "$$u" >/dev/null 2>&1; then
			echo "==> useradd -m $$u"
			useradd -m -U -s /bin/bash "$$u"
		fi
	done
	# A supplementary group, so the tests can check that groups survive the user namespace.
	if ! id -nG '$(TEST_USER)' | grep -qw users; then
		echo "==> usermod -aG users $(TEST_USER)"
		usermod -aG users '$(TEST_USER)'
	fi
	for f in /etc/subuid /etc/subgid; do
		touch "$$f"
		if ! grep -q '^$(TEST_USER):' "$$f"; then
			# 100000:65536 unless another user holds it: then the first free range above all.
			start=$$(awk -F: -v s=$(SUBID_RANGE_START) -v c=$(SUBID_RANGE_COUNT) \
				'{ if ($$2 < s + c && $$2 + $$3 > s) clash = 1; e = $$2 + $$3; if (e > m) m = e }
				 END { print (clash ? (m > s ? m : s) : s) }' "$$f")
			echo "==> $$f: $(TEST_USER):$$start:$(SUBID_RANGE_COUNT)"
			echo "$(TEST_USER):$$start:$(SUBID_RANGE_COUNT)" >> "$$f"
		fi
	done
	if [ -e /dev/fuse ] && [ "$$(stat -c %a /dev/fuse)" != 666 ]; then
		echo "==> chmod 0666 /dev/fuse (squashfuse for $(TEST_USER))"
		chmod 0666 /dev/fuse
	fi

# Copy the tree to a world-readable place the test user can read.
stage:
	umask 022
	src=$$(realpath '$(CURDIR)')
	if [ "$$src" = "$$(realpath -m '$(STAGE)')" ]; then
		echo "==> already running from $(STAGE)"
		exit 0
	fi
	echo "==> staging $$src -> $(STAGE)"
	mkdir -p '$(STAGE)'
	chmod 0755 '$(STAGE_PARENT)' '$(STAGE)'
	excludes=(--exclude=/.git/ --exclude=/.venv/ --exclude=__pycache__/ --exclude=.pytest_cache/ \
		--exclude=.ruff_cache/ --exclude=/demo.sif --exclude=/build/ --exclude='*.egg-info/')
	if command -v rsync >/dev/null 2>&1; then
		rsync -a --delete "$${excludes[@]}" "$$src/" '$(STAGE)/'
	else
		find '$(STAGE)' -mindepth 1 -maxdepth 1 ! -name '*.egg-info' -exec rm -rf {} +
		(cd "$$src" && tar -cf - --exclude=./.git --exclude=./.venv --exclude=__pycache__ .) \
			| tar -xf - -C '$(STAGE)'
	fi
	chmod -R a+rX '$(STAGE)'

test-setup: deps test-user stage
	$(call install_yurt,$(STAGE))
	chmod -R a+rX '$(VENV)'
	echo "==> checking that $(TEST_USER) can import yurt and pytest from $(VENV)"
	cd '$(STAGE)'
	runuser -u '$(TEST_USER)' -- env -i HOME=/home/$(TEST_USER) $(TEST_ENV_COMMON) \
		'$(VENV)/bin/python' -c 'import sys, yurt, pytest; print(sys.executable, "yurt", yurt.__version__, "from", yurt.__file__, "pytest", pytest.__version__)'

test: test-setup
	rootless=0 root=0
	cd '$(STAGE)'
	echo "==> [1/2] rootless tests as $(TEST_USER) in $(STAGE): pytest -m 'not root' tests"
	runuser -u '$(TEST_USER)' -- env -i HOME=/home/$(TEST_USER) USER=$(TEST_USER) LOGNAME=$(TEST_USER) \
		$(TEST_ENV_COMMON) '$(VENV)/bin/python' -m pytest -m 'not root' $(PYTEST_FLAGS) tests || rootless=$$?
	echo "==> [2/2] root-only tests as root in $(STAGE): pytest -m root tests"
	env -i HOME=/root USER=root LOGNAME=root $(TEST_ENV_COMMON) \
		'$(VENV)/bin/python' -m pytest -m root $(PYTEST_FLAGS) tests || root=$$?
	if [ "$$root" = 5 ]; then echo "==> (no root-only tests collected)"; root=0; fi
	echo "==> rootless pass: exit $$rootless; root pass: exit $$root"
	[ "$$rootless" = 0 ] && [ "$$root" = 0 ]

else

test-setup: deps
	$(call install_yurt,$(CURDIR))

test: test-setup
	echo "==> pytest tests (root-only tests skip themselves)"
	'$(VENV)/bin/python' -m pytest $(PYTEST_FLAGS) tests

endif

# ---------------------------------------------------------------- lint, bench, clean

lint: install
	echo "==> ruff check . bench/startup bench/pull"
	'$(VENV)/bin/ruff' check . bench/startup bench/pull

bench: install
	echo "==> bench/startup $(BENCH_ARGS)"
	'$(VENV)/bin/python' bench/startup $(BENCH_ARGS)

clean:
	echo "==> removing build products"
	rm -rf demo.sif build dist .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
ifeq ($(IS_ROOT),1)
	rm -rf '$(STAGE_PARENT)'
endif

distclean: clean
	rm -rf .venv
ifeq ($(IS_ROOT),1)
	rm -rf '$(VENV)'
endif
