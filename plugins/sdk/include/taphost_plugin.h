/*
 * taphost_plugin.h: the C ABI between taphost and an external plugin library (ABI version 1).
 *
 * A plugin is a shared library (`NAME.so`) in a plugin directory: $TAPHOST_PLUGIN_PATH
 * (colon-separated), then ~/.local/lib/taphost/plugins, then /usr/lib/taphost/plugins.
 * Rust authors use the `sdk` crate, which implements this header; C authors include it.
 *
 * Loading, in order; any failure refuses the library with a message naming the file:
 *   1. dlopen(RTLD_NOW | RTLD_LOCAL). A library is never unloaded.
 *   2. The data symbol `taphost_abi_version` is read (nothing is called). Another version
 *      than TAPHOST_ABI_VERSION: refused.
 *   3. `taphost_plugin_entry()` is called once; it returns a table whose `abi_version` must
 *      match again and whose `descriptor` must parse (JSON, below). The functions its kind
 *      needs must not be NULL.
 *
 * Descriptor (UTF-8 JSON, NUL-terminated, static):
 *   { "name": "portforward",             letters, digits, '-', '_'; a built-in's name is refused
 *     "description": "one line",
 *     "kind": "service" | "resource",     a resource is a dynamic page for `web --resource`
 *     "options": [                        service kind: the command line `mktap NAME` takes
 *       { "name": "dest_port",            becomes --dest_port and the config key
 *         "type": "string" | "integer" | "boolean" | "endpoint",
 *         "help": "...",
 *         "default": "...",               optional, as typed on a command line
 *         "repeatable": false,            optional; repeatable options are JSON arrays
 *         "required": false } ] }         optional
 *   An "endpoint" option (strports syntax, e.g. tcp:8080) goes to the tap's listen list, not
 *   to the config: the host binds it and hands the plugin the socket.
 *
 * Data crosses as JSON (config, state, requests). Bytes the plugin returns go through a
 * `taphost_write_fn` the host passes in: the host copies them before the call returns, so no
 * allocation ever crosses the boundary. Return codes: 0 success, anything else failure (with
 * a message written to `out` where there is one).
 *
 * Threads: every function may be called from any host thread. A plugin does its work on its
 * own threads (a Rust plugin: its own tokio runtime); `start` must return promptly. The host
 * never calls `handle` concurrently on one instance, and never calls anything on an instance
 * after `release`. `abort` may be called while `stop` is running on another thread, and
 * `state` while the plugin's own threads run. Listeners are handed over before `start` is
 * called, after twistd has forked: a library must start no thread when it is loaded.
 *
 * No exception or panic may leave a function of this table.
 */
#ifndef TAPHOST_PLUGIN_H
#define TAPHOST_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TAPHOST_ABI_VERSION 1u

/* Log levels for taphost_host.log. */
#define TAPHOST_LOG_ERROR 1u
#define TAPHOST_LOG_WARN 2u
#define TAPHOST_LOG_INFO 3u
#define TAPHOST_LOG_DEBUG 4u

/* Hands bytes to the host, which copies them; may be called several times (appends). */
typedef void (*taphost_write_fn)(void *sink, const uint8_t *bytes, size_t len);

/* What the host gives an instance; valid until `release` returns. `log` is thread-safe and
 * puts one line (UTF-8, not NUL-terminated) into the host's log, inside the service's span. */
typedef struct taphost_host {
    void *log_ctx;
    void (*log)(void *log_ctx, uint32_t level, const uint8_t *message, size_t len);
} taphost_host;

typedef struct taphost_plugin {
    /* Must be TAPHOST_ABI_VERSION; the rest of the layout belongs to that version. */
    uint32_t abi_version;
    /* The descriptor above. */
    const char *descriptor;

    /* Service kind. Input {"config": {...}, "listen": ["tcp:8080", ...]}. 0 when valid; else
     * writes a JSON array of problem strings, each naming its option. Pure: no sockets. */
    int32_t (*validate)(const uint8_t *input, size_t len, void *out, taphost_write_fn write);

    /* Both kinds. Input {"config": {...}, "state": <what `state` returned last time, or null>,
     * "listen": [...]}. `fds` are the bound, listening sockets of the listen list, in order;
     * the plugin owns them from this call on (also on failure). Sets *instance on success;
     * on failure writes a message. A resource gets no fds. */
    int32_t (*start)(const uint8_t *input, size_t len, const int32_t *fds, size_t nfds,
                     const taphost_host *host, void **instance, void *out, taphost_write_fn write);

    /* Service kind. Stop accepting, let open connections finish, close the sockets; returns
     * when done. */
    void (*stop)(void *instance);
    /* Service kind. The drain deadline passed: close open connections now (makes `stop` return). */
    void (*abort)(void *instance);

    /* Both kinds. Writes JSON to keep across restarts (saved in the shutdown tap), or nothing
     * for none. Called while running and after `stop`. */
    int32_t (*state)(void *instance, void *out, taphost_write_fn write);

    /* Both kinds. Frees the instance. */
    void (*release)(void *instance);

    /* Resource kind. `head` is JSON {"method": "GET", "path": "/counter/x", "prefix": "/counter",
     * "query": "a=1", "headers": [["host", "..."], ...]}; `body` the request body. Writes the
     * response head {"status": 200, "headers": [["content-type", "text/plain"]]} to `head_out`
     * and the body bytes to `body_out`. Nonzero: the host answers 500 and logs `body_out`. */
    int32_t (*handle)(void *instance, const uint8_t *head, size_t head_len, const uint8_t *body,
                      size_t body_len, void *head_out, taphost_write_fn write_head,
                      void *body_out, taphost_write_fn write_body);
} taphost_plugin;

/* The two exported symbols. */
extern const uint32_t taphost_abi_version;
const taphost_plugin *taphost_plugin_entry(void);

#ifdef __cplusplus
}
#endif

#endif /* TAPHOST_PLUGIN_H */
