# Shared by bench/*.sh: where the peer harness lives and how our server is built.
# The harness (nginx, Twisted, Postfix's smtp-sink, Dovecot; wrk and Python load clients) is
# the workspace's shared/bench, beside this checkout; SHARED_BENCH names another copy.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$REPO/../shared/bench}
if [ ! -x "$SHARED_BENCH/http_bench.sh" ]; then
    echo "bench: no peer harness at $SHARED_BENCH (set SHARED_BENCH)" >&2
    exit 69
fi
# Our server, built optimised once per run.
(cd "$REPO" && cargo build --release --quiet --bin twistd)
TWISTD="${CARGO_TARGET_DIR:-$REPO/target}/release/twistd"
