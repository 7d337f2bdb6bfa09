/* A service plugin named like the built-in `web`: refused, the built-in stays. */
#include "service_stubs.h"

const uint32_t taphost_abi_version = TAPHOST_ABI_VERSION;

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
