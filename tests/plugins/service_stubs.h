/* The functions a service plugin's table must hold, doing nothing: for test plugins that are
 * refused before any of them is called. */
#include "taphost_plugin.h"

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
