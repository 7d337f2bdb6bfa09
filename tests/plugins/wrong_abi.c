/* A library of a later ABI version: the host must refuse it without calling anything.
 * Its entry function would write a marker file if it were ever called. */
#include <stdint.h>
#include <stdio.h>

const uint32_t taphost_abi_version = 999;

const void *taphost_plugin_entry(void) {
    FILE *f = fopen("WRONG_ABI_ENTRY_CALLED", "w");
    if (f) fclose(f);
    return 0;
}
