#include "common.h"

__thread int32_t nvm_errno_tls;

uint32_t nvm_abi_version(void) { return NVM_NATIVE_ABI; }

int32_t nvm_last_error(void) { return nvm_errno_tls; }

/* volatile so each access is exactly one 32-bit load or store: the controller decodes the width
 * and the JIT on the other side must not merge, split or drop them. */
uint32_t nvm_read32(const void *base, uint32_t offset)
{
    return *(const volatile uint32_t *)((const char *)base + offset);
}

void nvm_write32(void *base, uint32_t offset, uint32_t value)
{
    *(volatile uint32_t *)((char *)base + offset) = value;
}

void nvm_write64(void *base, uint32_t offset, uint32_t lo, uint32_t hi)
{
    volatile uint32_t *reg = (volatile uint32_t *)((char *)base + offset);
    reg[0] = lo;
    reg[1] = hi;
}

void nvm_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }

void nvm_doorbell(void *base, uint32_t offset, uint32_t value)
{
    /* SQ entries were written by ordinary stores from JS; they must reach memory before the
     * controller sees the new tail. On x86 stores are not reordered with the later uncached
     * store, so a compiler-level release fence is what keeps them ahead (as Linux writel()). */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    *(volatile uint32_t *)((char *)base + offset) = value;
}
