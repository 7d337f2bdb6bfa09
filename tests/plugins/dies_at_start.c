/* A service plugin whose start kills the process, as a crashing plugin or the OOM killer
 * would: twistd's waiting parent says how its daemon died. */
#include <signal.h>

#include "service_stubs.h"

const uint32_t taphost_abi_version = TAPHOST_ABI_VERSION;

static int32_t dies(const uint8_t *i, size_t l, const int32_t *f, size_t n,
                    const taphost_host *h, void **inst, void *o, taphost_write_fn w) {
    raise(SIGKILL);
    return start(i, l, f, n, h, inst, o, w);
}

static const taphost_plugin plugin = {
    .abi_version = TAPHOST_ABI_VERSION,
    .descriptor = "{\"name\":\"dies\",\"description\":\"dies at start\",\"kind\":\"service\",\"options\":[]}",
    .validate = validate,
    .start = dies,
    .stop = nothing,
    .abort = nothing,
    .state = state,
    .release = nothing,
};

const taphost_plugin *taphost_plugin_entry(void) { return &plugin; }
