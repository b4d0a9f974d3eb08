#!/bin/sh
# Fuzz Kiln's parsers of untrusted input, each target for FUZZ_SECONDS (default 60).
#
# With a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`): libFuzzer with
# AddressSanitizer and debug assertions, one target after the other. What a target finds is
# kept in fuzz/corpus/TARGET (the next run starts from it), crashes in fuzz/artifacts/TARGET,
# the log in fuzz/logs/TARGET.log. Without them: the property tests with FUZZ_CASES cases each
# (default 20000), the same properties on random input, on stable.
#
#   make fuzz                              # every target, 60 s each
#   FUZZ_SECONDS=30 FUZZ_TARGETS="cpio_reader elf_reader" make fuzz
#   cargo +nightly fuzz run cpio_reader fuzz/artifacts/cpio_reader/crash-…   # replay a crash
set -u
cd "$(dirname "$0")"

SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-"recipe_toml vm_toml port_spec index_glob elf_reader cpio_reader console_line control_command api_create exec_frames"}

if ! cargo +nightly --version >/dev/null 2>&1 || ! cargo fuzz --version >/dev/null 2>&1; then
    cases=${FUZZ_CASES:-20000}
    echo "fuzz: no nightly toolchain or cargo-fuzz here: running the property tests with $cases cases each instead"
    cd ..
    export PROPTEST_CASES="$cases"
    cargo test -p kiln-recipe -p kiln-rootfs -p kiln-image -p kiln-init --lib --bins proptests &&
        cargo test -p kiln-vm --test console_props &&
        cargo test -p kiln-fleet --test config_props &&
        cargo test -p kiln-serve --test api_props
    exit $?
fi

# Seeds made from this host (binaries, an archive) and the repository (recipes, indexes).
host_seeds() {
    dir=target/seeds/$1
    mkdir -p "$dir"
    case $1 in
    recipe_toml)
        for f in ../recipes/*/kiln.toml ../examples/*/kiln.toml; do
            [ -f "$f" ] && cp "$f" "$dir/$(basename "$(dirname "$f")").toml"
        done ;;
    index_glob)
        for f in ../recipes/*/files.txt; do
            [ -f "$f" ] && cp "$f" "$dir/$(basename "$(dirname "$f")").txt"
        done ;;
    elf_reader)
        for f in /bin/true /bin/ls /lib/x86_64-linux-gnu/libdl.so.2 /lib64/ld-linux-x86-64.so.2; do
            [ -f "$f" ] && cp -L "$f" "$dir/$(basename "$f")"
        done ;;
    cpio_reader)
        if command -v cpio >/dev/null 2>&1; then
            tree=$(mktemp -d)
            mkdir -p "$tree/etc" "$tree/bin"
            echo "exec httpd -f" > "$tree/etc/rc"
            ln -sf busybox "$tree/bin/sh"
            (cd "$tree" && find . | cpio -o -H newc 2>/dev/null) > "$dir/small.cpio"
            rm -rf "$tree"
        fi ;;
    esac
    echo "$dir"
}

failed=""
summary=""
mkdir -p logs
for t in $TARGETS; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(ls "artifacts/$t" | wc -l)
    echo "fuzz: $t for ${SECONDS_EACH}s"
    cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" "$(host_seeds "$t")" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
        >"logs/$t.log" 2>&1
    status=$?
    after=$(ls "artifacts/$t" | wc -l)
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "logs/$t.log" | tail -1 | grep -o '[0-9]*')
    inputs=$(ls "corpus/$t" | wc -l)
    line="$t: ${runs:-?} runs, coverage ${cov:-?}, corpus $inputs inputs"
    if [ "$after" -gt "$before" ]; then
        line="$line, FOUND A CRASH (see fuzz/logs/$t.log and fuzz/artifacts/$t/)"
        failed="$failed $t"
    elif grep -q "libFuzzer: run interrupted" "logs/$t.log"; then
        # A signal (SIGINT, SIGTERM) ended the run early; what it found so far is kept.
        line="$line, interrupted by a signal before ${SECONDS_EACH}s"
    elif [ "$status" -ne 0 ]; then
        line="$line, FAILED (exit $status; see fuzz/logs/$t.log)"
        failed="$failed $t"
    fi
    echo "fuzz: $line"
    summary="$summary
  $line"
done
echo "fuzz: summary:$summary"
if [ -n "$failed" ]; then
    echo "fuzz: targets that found a crash:$failed"
    exit 1
fi
