/* A plugin of the right ABI version whose descriptor is not the JSON the ABI asks for. */
#include "taphost_plugin.h"

const uint32_t taphost_abi_version = TAPHOST_ABI_VERSION;

static const taphost_plugin plugin = {
    .abi_version = TAPHOST_ABI_VERSION,
    .descriptor = "{\"name\": \"broken\", \"kind\": ",
};

const taphost_plugin *taphost_plugin_entry(void) { return &plugin; }
