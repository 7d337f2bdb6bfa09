#!/usr/bin/env bash
# Start-up: time from exec to the first HTTP 200, taphost against nginx and `twistd web`.
#   [PORT=18080] bench/startup.sh [extra startup_time.sh options, but not -p]
# nginx's config is rendered for PORT, so the port is chosen here rather than with -p.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ -f /tmp/benchroot/10MB.bin ] || "$SHARED_BENCH/make_docroot.sh"
PORT=${PORT:-18080}
NGINX_DIRECT=$(NGINX_RENDER_ONLY=1 "$SHARED_BENCH/nginx_serve.sh" "$PORT" 1 off /tmp/benchroot)
exec "$SHARED_BENCH/startup_time.sh" -n 10 -p "$PORT" "$@" \
    nginx-w1="$NGINX_DIRECT" \
    twistd-web='twistd -n --pidfile= web --path {ROOT} --listen tcp:{PORT}:interface=127.0.0.1' \
    taphost="$TWISTD -n -o --pidfile= web --path {ROOT} --listen tcp:{PORT}:interface=127.0.0.1"
