#ifndef NVM_COMMON_H
#define NVM_COMMON_H
#include <errno.h>
#include <stddef.h>
#include "nvm_native.h"

extern __thread int32_t nvm_errno_tls;

/* Record errno for nvm_last_error() and hand back the value a NULL-returning call gives. */
static inline void *nvm_fail_null(int err)
{
    nvm_errno_tls = err;
    return NULL;
}

static inline int32_t nvm_fail(int err)
{
    nvm_errno_tls = err;
    return -err;
}

static inline int32_t nvm_ok(void)
{
    nvm_errno_tls = 0;
    return 0;
}
#endif
