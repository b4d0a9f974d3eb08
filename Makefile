# Kiln's entry points. `make demo` and `make test` do all the set-up on a fresh Debian machine.
CARGO ?= cargo
export KILN_INIT := $(CURDIR)/target/guest/kiln-init

.PHONY: setup build init demo test unit lint bench soak fuzz clean

setup:
	./scripts/setup.sh

init:
	./scripts/build-init.sh

build: init
	$(CARGO) build --release -p kiln

demo: setup build
	./scripts/demo.sh

test: setup init lint
	$(CARGO) build -p kiln
	# The default (tiny) kernel, the one with UFS (the BSD image test), the one with ext4, erofs
	# and squashfs (roots on a drive) and the one with PCI (ISO and netboot), once: minutes each
	# from a clean cache, then cached; compiling them here keeps the tests' VMs off a loaded machine.
	target/debug/kiln kernel build
	target/debug/kiln kernel build --fragment crates/kernel/fragments/ufs.config
	target/debug/kiln kernel build --with roots
	target/debug/kiln kernel build --with pc
	$(CARGO) test --workspace --no-fail-fast

unit:
	$(CARGO) test --workspace --lib --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: setup build
	./scripts/bench.sh

# Not part of `make test`: 20 VMs started and stopped 10 times, 100 idle VMs held for 10 minutes
# (SOAK_MINUTES), then a check that nothing leaked (RELIABILITY.md).
soak: setup build
	./scripts/soak.sh

# Not part of `make test`: every fuzz target for FUZZ_SECONDS each (cargo-fuzz on nightly; without
# it, the property tests with FUZZ_CASES cases), the corpus kept in fuzz/corpus/ (RELIABILITY.md).
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) ./fuzz/run.sh

clean:
	$(CARGO) clean
	rm -rf out
