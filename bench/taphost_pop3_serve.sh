#!/usr/bin/env bash
# Runs taphost's POP3 service in the foreground the way pop3_bench.sh wants a server:
# users USER1,USER2,... with one password, each served from MAILROOT/<user>.
#   taphost_pop3_serve.sh TWISTD PORT MAILROOT USERS PASSWORD
set -euo pipefail
twistd=$1 port=$2 root=$3 users=$4 pass=$5
args=(-d "bench.example=$root")
IFS=, read -ra names <<< "$users"
for user in "${names[@]}"; do
    args+=(-u "$user=$pass")
done
exec "$twistd" -n -o --pidfile= mail "${args[@]}" --no-smtp --pop3 "tcp:$port:interface=127.0.0.1"
