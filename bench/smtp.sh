#!/usr/bin/env bash
# SMTP: taphost's mail plugin (durable delivery: file and directory flushed before the 250)
# against Twisted's `twistd mail` (delivers without fsync) and Postfix's smtp-sink (accepts and
# discards: the upper bound), 1 KiB and 100 KiB messages over 20 sessions, Postfix's
# smtp-source as the client. -k checks that every 250 left a file in alice's Maildir.
#   bench/smtp.sh [-r ROUNDS] [-N MESSAGES] [extra smtp_bench.sh options]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
OUT=${OUT:-/tmp/taphost-bench/smtp}
# Each server start gets a fresh mail root (bench/fresh_maildir.sh says why), removed at the end.
export FRESH_MAILROOTS=${FRESH_MAILROOTS:-/tmp/taphost-bench-mailroots}
trap 'rm -rf -- "$FRESH_MAILROOTS"' EXIT
"$SHARED_BENCH/smtp_bench.sh" -r 3 -N 20000 -W 200 -C 1024:20,102400:20 -m pinned -k \
    -L smtp-source -o "$OUT" "$@" \
    smtp-sink='smtp-sink -u nobody 127.0.0.1:{PORT} 1024' \
    twistd-mail="$BENCH_DIR/fresh_maildir.sh {MAILDIR} {HERE}/twistd_mail_serve.sh {PORT} @MAILROOT@" \
    taphost="$BENCH_DIR/fresh_maildir.sh {MAILDIR} $TWISTD -n -o --pidfile= mail -d example.com=@MAILROOT@ -u alice=bench --no-pop3 --smtp tcp:{PORT}:interface=127.0.0.1"
