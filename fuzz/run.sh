#!/usr/bin/env bash
# fuzz/run.sh SECONDS: fuzz the op-log replayer (target `replay`) for SECONDS with
# cargo-fuzz on the nightly toolchain, and exit with the fuzzer's status (non-zero when it
# found a crash; the input is then under fuzz/artifacts/replay/). Without a nightly
# toolchain it says so and succeeds.
set -u
secs="${1:-60}"
case "$secs" in
  '' | *[!0-9]*)
    echo "usage: fuzz/run.sh SECONDS" >&2
    exit 2
    ;;
esac
here="$(cd "$(dirname "$0")" && pwd)"
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: skipped (no nightly toolchain)"
  exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked || exit $?
fi
cd "$here/.." || exit 1
mkdir -p "$here/corpus/replay"
# New inputs go to the first corpus folder (not in git); the second holds the seeds.
cargo +nightly fuzz run replay "$here/corpus/replay" "$here/seeds/replay" -- \
  -max_total_time="$secs" -dict="$here/replay.dict"
