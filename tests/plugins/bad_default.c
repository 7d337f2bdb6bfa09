/* A service plugin whose integer option has a default that is no integer: refused when loaded
 * (it would fail every use of the plugin as if the user had typed it). */
#include "service_stubs.h"

const uint32_t taphost_abi_version = TAPHOST_ABI_VERSION;

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
