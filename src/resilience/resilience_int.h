/* resilience_int.h — declarations shared between files of src/resilience only. */
#ifndef WEFT_RESILIENCE_INT_H
#define WEFT_RESILIENCE_INT_H

#include "weft/resilience.h"

/* Strong 64-bit finalizer (a bijection): spreads any input over all bits.
 * Used to re-mix caller keys before ring / table lookups. */
static inline uint64_t weft_mix64_(uint64_t x)
{
    x ^= x >> 30;
    x *= UINT64_C(0xbf58476d1ce4e5b9);
    x ^= x >> 27;
    x *= UINT64_C(0x94d049bb133111eb);
    x ^= x >> 31;
    return x;
}

/*
 * Advance a ring of `nb` time buckets (two parallel counter arrays) so that
 * bucket `epoch % nb` is the newest, zeroing every bucket skipped over. A
 * jump of nb or more buckets clears everything; a clock that goes backwards
 * keeps the current bucket (counts are never rewound).
 */
static inline void weft_window_roll_(uint64_t *cur, uint64_t epoch, uint32_t *a, uint32_t *b,
                                     size_t nb)
{
    if (epoch <= *cur)
        return;
    uint64_t k = epoch - *cur;
    if (k >= nb) {
        memset(a, 0, nb * sizeof *a);
        memset(b, 0, nb * sizeof *b);
    } else {
        for (uint64_t i = 1; i <= k; i++) {
            size_t j = (size_t)((*cur + i) % nb);
            a[j] = 0;
            b[j] = 0;
        }
    }
    *cur = epoch;
}

static inline void weft_sat_inc_(uint32_t *v)
{
    if (*v != UINT32_MAX)
        (*v)++;
}

/* Number of keys the limiter currently tracks (for tests and metrics). */
size_t weft_ratelimit_size(const weft_ratelimit *rl);

#endif
