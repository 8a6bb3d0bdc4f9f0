#!/usr/bin/env bash
# Profiles the new-session path (`make profile`): the release worker under callgrind
# against an in-process fake-bunq without limits, PROFILE_SESSIONS (300) new sessions
# through this machine's RabbitMQ and Redis (the bench's harness, BENCH_PROFILE), then the
# functions that cost the most instructions, inclusive and exclusive. Instruction counts
# are stable on a shared machine where wall time is not.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/target/profile
mkdir -p "$out"
rm -f "$out"/callgrind.out*
BENCH_PROFILE="$out/callgrind.out" cargo bench --locked -p bunq-session-worker --bench throughput
# `.1` is the dump taken when the sessions were announced; the plain file is what ran
# after it (shutdown).
dump="$out/callgrind.out.1"
callgrind_annotate --inclusive=yes "$dump" > "$out/inclusive.txt"
callgrind_annotate "$dump" > "$out/exclusive.txt"
head -60 "$out/inclusive.txt"
head -50 "$out/exclusive.txt"
