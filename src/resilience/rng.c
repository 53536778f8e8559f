/*
 * rng.c — the toolkit's randomness and hashing (see resilience.h).
 *
 * The generator is xoshiro256** (256 bits of state, period 2^256 − 1, passes
 * BigCrush) seeded through splitmix64 so that nearby seeds (0, 1, 2 ...) give
 * unrelated streams and the state is never all zero. It is caller-owned so
 * each worker has its own and tests are reproducible. weft_rng_below uses
 * Lemire's multiply-and-reject method: one 64x64→128 multiply in the common
 * case and no bias (a plain `% n` would favour small values).
 *
 * weft_hash64 is our own word-at-a-time hash: each 8-byte little-endian word
 * is scrambled (multiply, rotate, multiply) and folded into the state, the
 * tail is folded the same way, and a full-avalanche finalizer ends it, so
 * keys that differ in one byte ("10.0.0.1" vs "10.0.0.2") land far apart.
 * Words are read byte by byte as little-endian, so values are the same on
 * every platform (ring positions must agree between gateways).
 */
#include "weft/resilience.h"

#include "resilience/resilience_int.h"

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

void weft_rng_seed(weft_rng *r, uint64_t seed)
{
    if (!r)
        return;
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
    if ((r->s[0] | r->s[1] | r->s[2] | r->s[3]) == 0)
        r->s[0] = 1; /* never the all-zero fixed point */
}

uint64_t weft_rng_next(weft_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

uint64_t weft_rng_below(weft_rng *r, uint64_t n)
{
    if (n <= 1)
        return 0; /* n == 0 is bad input: answer 0 rather than divide by zero */
#if defined(__SIZEOF_INT128__)
    __extension__ typedef unsigned __int128 u128;
    u128 m = (u128)weft_rng_next(r) * n;
    uint64_t lo = (uint64_t)m;
    if (lo < n) {
        uint64_t threshold = (0 - n) % n; /* 2^64 mod n */
        while (lo < threshold) {
            m = (u128)weft_rng_next(r) * n;
            lo = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
#else
    uint64_t threshold = (0 - n) % n;
    for (;;) {
        uint64_t x = weft_rng_next(r);
        if (x >= threshold)
            return x % n;
    }
#endif
}

double weft_rng_unit(weft_rng *r)
{
    return (double)(weft_rng_next(r) >> 11) * 0x1.0p-53;
}

#define H_P1 UINT64_C(0x9e3779b185ebca87)
#define H_P2 UINT64_C(0xc2b2ae3d27d4eb4f)
#define H_P3 UINT64_C(0x165667b19e3779f9)
#define H_P4 UINT64_C(0x85ebca77c2b2ae63)

static inline uint64_t load_le64(const uint8_t *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 |
           (uint64_t)p[7] << 56;
}

static inline uint64_t scramble(uint64_t k)
{
    k *= H_P2;
    k = rotl(k, 31);
    return k * H_P1;
}

uint64_t weft_hash64(const void *p, size_t n, uint64_t seed)
{
    const uint8_t *s = p;
    if (!s)
        n = 0;
    uint64_t len = (uint64_t)n;
    uint64_t h = seed ^ H_P4 ^ (len * H_P3);
    while (n >= 8) {
        h ^= scramble(load_le64(s));
        h = rotl(h, 27) * H_P1 + H_P4;
        s += 8;
        n -= 8;
    }
    if (n) {
        uint64_t k = 0;
        for (size_t i = 0; i < n; i++)
            k |= (uint64_t)s[i] << (8 * i);
        h ^= scramble(k ^ H_P3);
        h = rotl(h, 29) * H_P2 + H_P3;
    }
    h ^= len;
    /* full avalanche: every input bit affects every output bit */
    h ^= h >> 33;
    h *= UINT64_C(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h *= UINT64_C(0xc4ceb9fe1a85ec53);
    h ^= h >> 33;
    return h;
}
