/*
 * counter: a web resource written in C, to show that the plugin ABI is really C.
 * `web --resource /count=counter` answers every request with the number of hits so far and
 * what it was asked; the count is its state, so it survives a restart through the tap.
 * Built by tests/external.rs with `cc -shared -fPIC`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "taphost_plugin.h"

const uint32_t taphost_abi_version = TAPHOST_ABI_VERSION;

struct counter {
    unsigned long long hits;
    taphost_host host;
};

/* The value of "key":"..." in a small JSON text, without unescaping (enough for a test). */
static void string_field(const char *json, const char *key, char *out, size_t size) {
    char needle[64];
    snprintf(needle, sizeof needle, "\"%s\":\"", key);
    const char *p = strstr(json, needle);
    size_t n = 0;
    if (p) {
        p += strlen(needle);
        while (p[n] && p[n] != '"' && n + 1 < size) n++;
        memcpy(out, p, n);
    }
    out[n] = 0;
}

static char *terminated(const uint8_t *bytes, size_t len) {
    char *s = malloc(len + 1);
    if (s) {
        memcpy(s, bytes, len);
        s[len] = 0;
    }
    return s;
}

static void say(void *out, taphost_write_fn write, const char *text) {
    write(out, (const uint8_t *)text, strlen(text));
}

static int32_t start(const uint8_t *input, size_t len, const int32_t *fds, size_t nfds,
                     const taphost_host *host, void **instance, void *out,
                     taphost_write_fn write) {
    (void)fds;
    (void)nfds;
    struct counter *c = calloc(1, sizeof *c);
    char *json = terminated(input, len);
    if (!c || !json) {
        free(c);
        free(json);
        say(out, write, "out of memory");
        return 1;
    }
    const char *hits = strstr(json, "\"hits\":");
    c->hits = hits ? strtoull(hits + 7, NULL, 10) : 0;
    free(json);
    c->host = *host;
    char line[80];
    int n = snprintf(line, sizeof line, "counter opened at %llu hits", c->hits);
    c->host.log(c->host.log_ctx, TAPHOST_LOG_INFO, (const uint8_t *)line, (size_t)n);
    *instance = c;
    return 0;
}

static int32_t state(void *instance, void *out, taphost_write_fn write) {
    struct counter *c = instance;
    char text[64];
    snprintf(text, sizeof text, "{\"hits\":%llu}", c->hits);
    say(out, write, text);
    return 0;
}

static void release(void *instance) { free(instance); }

static int32_t handle(void *instance, const uint8_t *head, size_t head_len, const uint8_t *body,
                      size_t body_len, void *head_out, taphost_write_fn write_head,
                      void *body_out, taphost_write_fn write_body) {
    (void)body;
    struct counter *c = instance;
    char *json = terminated(head, head_len);
    if (!json) {
        say(body_out, write_body, "out of memory");
        return 1;
    }
    char method[16], path[256], query[256];
    string_field(json, "method", method, sizeof method);
    string_field(json, "path", path, sizeof path);
    string_field(json, "query", query, sizeof query);
    free(json);
    if (strcmp(path, "/count/fail") == 0) {
        say(body_out, write_body, "asked to fail");
        return 1;
    }
    c->hits++;
    char text[700];
    snprintf(text, sizeof text, "hits=%llu method=%s path=%s query=%s body=%zu\n", c->hits,
             method, path, query, body_len);
    say(head_out, write_head,
        "{\"status\":200,\"headers\":[[\"content-type\",\"text/plain\"],[\"x-plugin\",\"c\"]]}");
    say(body_out, write_body, text);
    return 0;
}

static const taphost_plugin plugin = {
    .abi_version = TAPHOST_ABI_VERSION,
    .descriptor = "{\"name\":\"counter\",\"description\":\"Counts its hits (written in C)\","
                  "\"kind\":\"resource\"}",
    .start = start,
    .state = state,
    .release = release,
    .handle = handle,
};

const taphost_plugin *taphost_plugin_entry(void) { return &plugin; }
