/*
 * CRC-32C (Castagnoli) for NVMe/TCP header and data digests (NVMe/TCP Transport 3.3.3: reflected
 * polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF). With the SSE4.2 CRC32
 * instruction where the CPU has it (checked once at load), eight bytes per instruction; otherwise
 * slicing-by-8 tables. lib/transports/tcp/crc32c.ts is the TypeScript twin the tests check it against.
 */
#include <stdint.h>
#include <string.h>
#include "common.h"

static uint32_t table[8][256];
static int have_sse42;

__attribute__((constructor)) static void crc32c_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
#if defined(__x86_64__)
    __builtin_cpu_init();
    have_sse42 = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc_sw(const uint8_t *p, size_t n, uint32_t crc)
{
    while (n >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= crc;
        crc = table[7][lo & 0xff] ^ table[6][(lo >> 8) & 0xff] ^ table[5][(lo >> 16) & 0xff] ^ table[4][lo >> 24] ^
              table[3][hi & 0xff] ^ table[2][(hi >> 8) & 0xff] ^ table[1][(hi >> 16) & 0xff] ^ table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_hw(const uint8_t *p, size_t n, uint32_t crc)
{
    uint64_t c = crc;
    while (n > 0 && ((uintptr_t)p & 7) != 0) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        n--;
    }
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        n -= 8;
    }
    while (n-- > 0)
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return (uint32_t)c;
}
#endif

uint32_t nvm_crc32c(const void *data, uint32_t len, uint32_t prev)
{
    uint32_t crc = ~prev;
#if defined(__x86_64__)
    if (have_sse42)
        return ~crc_hw((const uint8_t *)data, len, crc);
#endif
    return ~crc_sw((const uint8_t *)data, len, crc);
}

uint32_t nvm_crc32c_impl(void) { return have_sse42 ? 1u : 0u; }

uint32_t nvm_crc32c_sw(const void *data, uint32_t len, uint32_t prev)
{
    return ~crc_sw((const uint8_t *)data, len, ~prev);
}
