#include "version.h"

uint32_t vn_abi_version(void) { return VN_ABI_VERSION; }
