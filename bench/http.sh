#!/usr/bin/env bash
# HTTP: taphost's web plugin against nginx (1 worker, sendfile on, no access log, like ours
# by default) and Twisted's `twistd web`, in one run, rounds interleaved, the server pinned to
# CPU 0 and wrk to CPU 1. Ratios are to nginx (the first server).
#   bench/http.sh [-r ROUNDS] [-d SECONDS] [extra http_bench.sh options]
# Output: OUT (default /tmp/taphost-bench/http)/summary.md and raw.tsv.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
OUT=${OUT:-/tmp/taphost-bench/http}
[ -f /tmp/benchroot/10MB.bin ] || "$SHARED_BENCH/make_docroot.sh"
exec "$SHARED_BENCH/http_bench.sh" -r 3 -d 10 -c 50 -t 1 -w 2 -m pinned \
    -P /1KB.html,/100KB.bin,/10MB.bin,/dir/ -o "$OUT" "$@" \
    nginx-w1='{HERE}/nginx_serve.sh {PORT} 1 off {ROOT}' \
    twistd-web='twistd -n --pidfile= web --path {ROOT} --listen tcp:{PORT}:interface=127.0.0.1' \
    taphost="$TWISTD -n -o --pidfile= web --path {ROOT} --listen tcp:{PORT}:interface=127.0.0.1"
