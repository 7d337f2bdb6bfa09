#!/usr/bin/env bash
# Start-up: time from exec to the first HTTP 200, taphost against nginx and `twistd web`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ -f /tmp/benchroot/10MB.bin ] || "$SHARED_BENCH/make_docroot.sh"
NGINX_DIRECT=$(NGINX_RENDER_ONLY=1 "$SHARED_BENCH/nginx_serve.sh" 18080 1 off /tmp/benchroot)
exec "$SHARED_BENCH/startup_time.sh" -n 10 -p 18080 "$@" \
    nginx-w1="$NGINX_DIRECT" \
    twistd-web='twistd -n --pidfile= web --path {ROOT} --listen tcp:{PORT}:interface=127.0.0.1' \
    taphost="$TWISTD -n -o --pidfile= web --path {ROOT} --listen tcp:{PORT}:interface=127.0.0.1"
