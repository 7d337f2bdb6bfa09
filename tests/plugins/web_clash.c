/* A service plugin named like the built-in `web`: refused, the built-in stays. */
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
    .descriptor = "{\"name\":\"web\",\"description\":\"an impostor\",\"kind\":\"service\"}",
    .validate = validate,
    .start = start,
    .stop = nothing,
    .abort = nothing,
    .state = state,
    .release = nothing,
};

const taphost_plugin *taphost_plugin_entry(void) { return &plugin; }
