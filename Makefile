# yurt developer entry points.
#
#   make demo    install system packages (as root) and the wheel, build demo.sif from busybox, run it
#   make test    run the whole suite (as root, CI: against the wheel, rootless pass as $(TEST_USER),
#                then the root-only pass; otherwise against the editable development install)
#   make dist    build the sdist and, from it, the wheel (python -m build) and check both
#   make install editable development install with the test extras into the venv, and (as root)
#                shell completion for bash, zsh and fish where the system has their directories
#   make lint    ruff check, and lint-imports (the import contracts in pyproject.toml); make test runs both
#   make bench   start-up benchmark of the wheel against peer runtimes (bench/startup; BENCH_ARGS=...)
#   make clean   remove build products (distclean: also the venv)
#
# As root the venv is $(VENV) = /opt/yurt-venv (world-readable, so the unprivileged test user can
# use it) built from /usr/bin/python3; otherwise it is .venv in the source tree.
#
# What `make test` tests as root (CI) is what users install: the wheel built from the sdist, installed
# (not editable) into $(VENV), with the tests run from a copy of tests/ and scripts/ that has no yurt/
# package, so nothing can import the source tree (tests/integration/test_installed_artifact.py).

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
# The sdist and wheel (make dist), and the venv with `build` that makes them.
ifeq ($(IS_ROOT),1)
DIST ?= $(STAGE_PARENT)/dist
BUILD_VENV ?= $(STAGE_PARENT)/build-venv
else
DIST ?= $(CURDIR)/dist
BUILD_VENV ?= $(CURDIR)/.venv-build
endif
# The workflow clients (Snakemake, cwltool, spython) the e2e tests drive, in a venv of their own (never
# yurt's), world-readable for the test user: tests/e2e/clients.py.
CLIENTS_REQUIREMENTS := tests/e2e/clients-requirements.txt
ifeq ($(IS_ROOT),1)
CLIENTS_VENV ?= /opt/yurt-clients-venv
else
CLIENTS_VENV ?= $(CURDIR)/.venv-clients
endif
SUBID_RANGE_START ?= 100000
SUBID_RANGE_COUNT ?= 65536
PYTEST_TIMEOUT ?= 300
PYTEST_ARGS ?=
# What pytest collects (e.g. PYTEST_PATHS='tests/unit tests/integration/test_exec_rootless.py').
PYTEST_PATHS ?= tests
PYTEST_FLAGS := -ra -p no:cacheprovider --timeout=$(PYTEST_TIMEOUT) $(PYTEST_ARGS)
BENCH_ARGS ?=
SYS_PATH := /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# A clean, predictable environment for the test passes (no pyenv shims, no stray PYTHON*).
TEST_ENV_COMMON := PATH=$(VENV)/bin:$(SYS_PATH) LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 \
	CI="$${CI:-}" TERM="$${TERM:-dumb}"
YURT := $(VENV)/bin/yurt
# Each test pass runs in a mount namespace of its own with an empty tmpfs on /etc/yurt: the site file
# the policy tests install (a real /etc/yurt/yurt.toml, read at its fixed path) is seen by that pass
# only, never by other users or jobs of the machine, and a crashed test cannot leave it behind; the
# machine's own /etc/yurt (site hooks, library lists) cannot change what the tests see either.
PRIVATE_SITE_DIR := unshare -m --propagation private -- \
	sh -c 'mount -t tmpfs -o mode=0755 yurt-test-etc /etc/yurt && exec "$$@"' private-site-dir

.PHONY: help deps install install-completions dist demo test test-setup test-user stage clients-venv lint bench clean distclean

help:
	@sed -n '3,12s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))

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
	$(MAKE) --no-print-directory install-completions

# `yurt completion SHELL` into each shell's system completion directory, where the system has one (the
# directories are looked up, never created); as root, or under DESTDIR (packaging).  Otherwise: how to
# enable completion for yourself.
install-completions:
	umask 022
	hint() {
		case $$1 in
			bash) echo "echo 'source <(yurt completion bash)' >> ~/.bashrc" ;;
			zsh) echo 'mkdir -p ~/.zfunc && yurt completion zsh > ~/.zfunc/_yurt, and fpath=(~/.zfunc $$fpath) before compinit in ~/.zshrc' ;;
			fish) echo 'mkdir -p ~/.config/fish/completions && yurt completion fish > ~/.config/fish/completions/yurt.fish' ;;
		esac
	}
	if [ '$(IS_ROOT)' != 1 ] && [ -z '$(DESTDIR)' ]; then
		echo "==> shell completion: installing it for everyone needs root; for yourself:"
		for shell in bash zsh fish; do echo "    $$shell: $$(hint $$shell)"; done
		exit 0
	fi
	first_dir() { for d in "$$@"; do if [ -n "$$d" ] && [ -d '$(DESTDIR)'"$$d" ]; then echo "$$d"; return; fi; done; }
	bash_dir=$$(first_dir "$$(pkg-config --variable=completionsdir bash-completion 2>/dev/null || true)" \
		/usr/share/bash-completion/completions)
	zsh_dir=$$(first_dir $$( (zsh -fc 'print -l -- $$fpath' 2>/dev/null || true) \
		| grep -E '/(site-functions|vendor-completions)$$' || true) \
		/usr/local/share/zsh/site-functions /usr/share/zsh/site-functions /usr/share/zsh/vendor-completions)
	fish_dir=$$(first_dir "$$(pkg-config --variable=completionsdir fish 2>/dev/null || true)" \
		/usr/share/fish/vendor_completions.d /usr/local/share/fish/vendor_completions.d)
	for shell in bash zsh fish; do
		case $$shell in
			bash) dir=$$bash_dir name=yurt ;;
			zsh) dir=$$zsh_dir name=_yurt ;;
			fish) dir=$$fish_dir name=yurt.fish ;;
		esac
		if [ -z "$$dir" ]; then
			echo "==> $$shell completion: this system has no $$shell completion directory; for yourself: $$(hint $$shell)"
			continue
		fi
		dest='$(DESTDIR)'"$$dir/$$name"
		'$(YURT)' completion "$$shell" > "$$dest.tmp-$$$$"
		chmod 0644 "$$dest.tmp-$$$$"
		mv -f "$$dest.tmp-$$$$" "$$dest"
		echo "==> $$shell completion: $$dest"
	done

# ---------------------------------------------------------------- sdist + wheel

# What a release ships: the sdist, and the wheel built from that sdist (python -m build does both, so a
# file the sdist lacks breaks the wheel build here rather than for a user).  scripts/check-dist then
# checks that both carry every file under yurt/ (package data).  Skipped when the sources that go into
# them are unchanged since the last build in $(DIST).
DIST_INPUTS := yurt bin pyproject.toml README.md $(wildcard MANIFEST.in LICENSE*)

dist:
	umask 022
	digest=$$(find $(DIST_INPUTS) -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
		| LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
	if [ "$$(cat '$(DIST)/.source-digest' 2>/dev/null)" = "$$digest" ] \
			&& ls '$(DIST)'/yurt-*.whl '$(DIST)'/yurt-*.tar.gz >/dev/null 2>&1; then
		echo "==> $(DIST): sdist and wheel are up to date"
		exit 0
	fi
	if ! '$(BUILD_VENV)/bin/python' -c 'import build' 2>/dev/null; then
		echo "==> creating $(BUILD_VENV) with $(VENV_PYTHON) and pip install build"
		'$(VENV_PYTHON)' -m venv '$(BUILD_VENV)'
		'$(BUILD_VENV)/bin/python' -m pip install --disable-pip-version-check -q build
	fi
	echo "==> python -m build --outdir $(DIST) (sdist, then the wheel from the sdist)"
	rm -rf '$(DIST)'
	mkdir -p '$(DIST)'
	if ! '$(BUILD_VENV)/bin/python' -m build --outdir '$(DIST)' . >'$(DIST)/build.log' 2>&1; then
		cat '$(DIST)/build.log' >&2
		echo "error: python -m build failed (log above)" >&2
		exit 1
	fi
	'$(VENV_PYTHON)' scripts/check-dist . '$(DIST)'/yurt-*.whl '$(DIST)'/yurt-*.tar.gz
	echo "$$digest" > '$(DIST)/.source-digest'
	chmod -R a+rX '$(DIST)'
	ls -l '$(DIST)'/yurt-*

# $(call install_wheel): create $(VENV) if needed and install $(DIST)'s wheel with the test extras
# into it (not editable); skipped when that very wheel (same sha256) is installed there already.
define install_wheel
	umask 022
	wheel=$$(ls '$(DIST)'/yurt-*.whl)
	want="wheel $$(sha256sum "$$wheel" | cut -d' ' -f1)"
	if [ ! -x '$(VENV)/bin/python' ]; then
		echo "==> creating venv $(VENV) with $(VENV_PYTHON)"
		'$(VENV_PYTHON)' -m venv '$(VENV)'
	fi
	if [ "$$(cat '$(VENV)/.yurt-install' 2>/dev/null)" != "$$want" ]; then
		echo "==> pip install $$wheel[test] into $(VENV) (not editable)"
		rm -f '$(VENV)/.yurt-install'
		'$(VENV)/bin/python' -m pip uninstall --disable-pip-version-check -q -y yurt 2>/dev/null || true
		'$(VENV)/bin/python' -m pip install --disable-pip-version-check -q "$$wheel[test]"
		echo "$$want" > '$(VENV)/.yurt-install'
	else
		echo "==> $$(basename "$$wheel") already installed in $(VENV)"
	fi
endef

# ---------------------------------------------------------------- demo

# The demo installs yurt as users do: the wheel, not an editable tree.
demo: deps dist
	$(call install_wheel)
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

# ---------------------------------------------------------------- lint

# $(call run_lint): ruff, then lint-imports (the layer, cycle and exec-path contracts of pyproject.toml),
# with $(VENV)'s tools, on this source tree.  lint-imports analyses the yurt package it finds first on
# sys.path: PYTHONPATH puts this tree's yurt/ (what the sdist and wheel are built from) before any
# installed copy.  No caches are written into the tree.  Both run; the recipe fails if either fails.
define run_lint
	cd '$(CURDIR)'
	lint=0
	echo "==> ruff check . bench/startup bench/pull scripts/check-dist"
	'$(VENV)/bin/ruff' check --no-cache . bench/startup bench/pull scripts/check-dist || lint=1
	echo "==> lint-imports (import contracts of pyproject.toml) on $(CURDIR)/yurt"
	PYTHONPATH='$(CURDIR)' '$(VENV)/bin/lint-imports' --no-cache || lint=1
	[ "$$lint" = 0 ] || { echo "error: lint failed (output above)" >&2; exit 1; }
endef

# ---------------------------------------------------------------- workflow clients

# $(CLIENTS_VENV) with the pinned clients of $(CLIENTS_REQUIREMENTS) from PyPI, made from $(VENV_PYTHON);
# skipped when it holds that very list already.
clients-venv:
	umask 022
	want="$$(sha256sum '$(CLIENTS_REQUIREMENTS)' | cut -d' ' -f1)"
	if [ "$$(cat '$(CLIENTS_VENV)/.clients-install' 2>/dev/null)" = "$$want" ]; then
		echo "==> workflow clients already installed in $(CLIENTS_VENV)"
		exit 0
	fi
	echo "==> creating $(CLIENTS_VENV): Snakemake, cwltool, spython ($(CLIENTS_REQUIREMENTS))"
	rm -rf '$(CLIENTS_VENV)'
	'$(VENV_PYTHON)' -m venv '$(CLIENTS_VENV)'
	'$(CLIENTS_VENV)/bin/python' -m pip install --disable-pip-version-check -q -r '$(CLIENTS_REQUIREMENTS)'
	echo "$$want" > '$(CLIENTS_VENV)/.clients-install'
	chmod -R a+rX '$(CLIENTS_VENV)'

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

# Copy what the tests need to a world-readable place the test user can read (the clone may live in a
# 0700 /root): tests/, scripts/ and pyproject.toml (pytest's settings), NOT the yurt/ package, so the
# tests can only import the installed wheel.
STAGED := tests scripts pyproject.toml

stage:
	umask 022
	src=$$(realpath '$(CURDIR)')
	if [ "$$src" = "$$(realpath -m '$(STAGE)')" ]; then
		echo "error: the source tree is the staging directory $(STAGE); run make test from a clone" >&2
		exit 1
	fi
	echo "==> staging $(STAGED) of $$src -> $(STAGE) (without the yurt package)"
	mkdir -p '$(STAGE)'
	chmod 0755 '$(STAGE_PARENT)' '$(STAGE)'
	find '$(STAGE)' -mindepth 1 -maxdepth 1 -exec rm -rf {} +
	tar -cf - --exclude=__pycache__ --exclude=.pytest_cache $(STAGED) | tar -xf - -C '$(STAGE)'
	chmod -R a+rX '$(STAGE)'

# The artifacts under test, for tests/integration/test_installed_artifact.py and test_python_versions_root.py.
TEST_ARTIFACTS = YURT_TEST_WHEEL="$$(ls '$(DIST)'/yurt-*.whl)" YURT_TEST_SDIST="$$(ls '$(DIST)'/yurt-*.tar.gz)"

test-setup: deps test-user dist stage clients-venv
	$(call install_wheel)
	chmod -R a+rX '$(VENV)'
	echo "==> checking that $(TEST_USER) runs the installed wheel from $(VENV), not a source tree"
	cd '$(STAGE)'
	runuser -u '$(TEST_USER)' -- env -i HOME=/home/$(TEST_USER) $(TEST_ENV_COMMON) '$(VENV)/bin/python' -c \
		'import sys, yurt, pytest; print(sys.executable, "yurt", yurt.__version__, "from", yurt.__file__, "pytest", pytest.__version__); sys.exit(not yurt.__file__.startswith(sys.prefix + "/"))'
	runuser -u '$(TEST_USER)' -- env -i HOME=/home/$(TEST_USER) $(TEST_ENV_COMMON) '$(YURT)' --version

test: test-setup
	rootless=0 root=0 lint=0
	echo "==> lint (ruff, lint-imports): the tests run after it either way"
	( $(call run_lint) ) || lint=$$?
	cd '$(STAGE)'
	mkdir -p /etc/yurt
	echo "==> [1/2] rootless tests as $(TEST_USER) in $(STAGE): pytest -m 'not root' $(PYTEST_PATHS)"
	$(PRIVATE_SITE_DIR) runuser -u '$(TEST_USER)' -- env -i HOME=/home/$(TEST_USER) USER=$(TEST_USER) LOGNAME=$(TEST_USER) \
		$(TEST_ENV_COMMON) $(TEST_ARTIFACTS) YURT_TEST_CLIENTS_VENV='$(CLIENTS_VENV)' \
		'$(VENV)/bin/python' -m pytest -m 'not root' $(PYTEST_FLAGS) $(PYTEST_PATHS) || rootless=$$?
	echo "==> [2/2] root-only tests as root in $(STAGE): pytest -m root $(PYTEST_PATHS)"
	$(PRIVATE_SITE_DIR) env -i HOME=/root USER=root LOGNAME=root $(TEST_ENV_COMMON) $(TEST_ARTIFACTS) \
		'$(VENV)/bin/python' -m pytest -m root $(PYTEST_FLAGS) $(PYTEST_PATHS) || root=$$?
	if [ "$$root" = 5 ]; then echo "==> (no root-only tests collected)"; root=0; fi
	echo "==> lint: exit $$lint; rootless pass: exit $$rootless; root pass: exit $$root"
	[ "$$lint" = 0 ] && [ "$$rootless" = 0 ] && [ "$$root" = 0 ]

else

# Developers: the editable install of this tree (the wheel-only checks skip themselves).
test-setup: deps clients-venv
	$(call install_yurt,$(CURDIR))

test: test-setup
	lint=0
	( $(call run_lint) ) || lint=$$?
	echo "==> pytest tests against the editable install (root-only tests skip themselves)"
	YURT_TEST_CLIENTS_VENV='$(CLIENTS_VENV)' '$(VENV)/bin/python' -m pytest $(PYTEST_FLAGS) $(PYTEST_PATHS)
	[ "$$lint" = 0 ] || { echo "error: lint failed (output above)" >&2; exit 1; }

endif

# ---------------------------------------------------------------- lint, bench, clean

lint: install
	$(call run_lint)

bench: install dist
	echo "==> bench/startup --wheel $$(ls '$(DIST)'/yurt-*.whl) $(BENCH_ARGS)"
	'$(VENV)/bin/python' bench/startup --wheel "$$(ls '$(DIST)'/yurt-*.whl)" $(BENCH_ARGS)

clean:
	echo "==> removing build products"
	rm -rf demo.sif build dist .pytest_cache .ruff_cache .import_linter_cache *.egg-info .venv-build
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
ifeq ($(IS_ROOT),1)
	rm -rf '$(STAGE_PARENT)'
endif

distclean: clean
	rm -rf .venv .venv-clients
ifeq ($(IS_ROOT),1)
	rm -rf '$(VENV)' '$(CLIENTS_VENV)'
endif
