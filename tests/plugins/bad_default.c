/* A service plugin whose integer option has a default that is no integer: refused when loaded
 * (it would fail every use of the plugin as if the user had typed it). */
#include "taphost_plugin.h"

const uint32_t taphost_abi_version = TAPHOST_ABI_VERSION;

static int32_t validate(const uint8_t *i, size_t l, void *o, taphost_write_fn w) {
    (void)i; (void)l; (void)o; (void)w;
    return 0;
}
static int32_t start(const uint8_t *i, size_t l, const int32_t *f, size_t n,
                     const taphost_host *h, void **inst, void *o, taphost_write_fn w) {
    (void)i; (void)l; (void)f; (void)n; (void)h; (void)inst; (void)o; (void)w;
    return 1;
}
static void nothing(void *instance) { (void)instance; }
static int32_t state(void *inst, void *o, taphost_write_fn w) {
    (void)inst; (void)o; (void)w;
    return 0;
}

static const taphost_plugin plugin = {
    .abi_version = TAPHOST_ABI_VERSION,
    .descriptor = "{\"name\":\"baddefault\",\"description\":\"a bad default\",\"kind\":\"service\",\"options\":[{\"name\":\"n\",\"type\":\"integer\",\"default\":\"abc\"}]}",
    .validate = validate,
    .start = start,
    .stop = nothing,
    .abort = nothing,
    .state = state,
    .release = nothing,
};

const taphost_plugin *taphost_plugin_entry(void) { return &plugin; }
