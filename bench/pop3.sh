#!/usr/bin/env bash
# POP3: taphost's mail plugin against Dovecot's POP3 server on copies of the same Maildirs
# (1000 x 10 KiB messages per user): one session, four sessions, four with pipelined RETRs,
# and login cycles. Ratios are to Dovecot (the first server).
#   bench/pop3.sh [-r ROUNDS] [extra pop3_bench.sh options]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
OUT=${OUT:-/tmp/taphost-bench/pop3}
exec "$SHARED_BENCH/pop3_bench.sh" -r 3 -m pinned -n 1000 -s 10240 \
    -C 1:20,4:10,4:10:4 -L 1:300 -o "$OUT" "$@" \
    dovecot='{HERE}/dovecot_pop3_serve.sh {PORT} {MAILROOT} {USERS} {PASS}' \
    taphost="$BENCH_DIR/taphost_pop3_serve.sh $TWISTD {PORT} {MAILROOT} {USERS} {PASS}"
