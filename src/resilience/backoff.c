/*
 * backoff.c — retry pacing: full-jitter exponential backoff and the
 * Finagle/Linkerd retry budget (see resilience.h).
 *
 * Backoff is AWS "full jitter": uniform in [0, min(cap, base·2^(retry−1))).
 * Spreading retries over the whole interval (instead of ±x % around it)
 * de-synchronises clients that failed together. The ceiling is computed
 * without ever forming base·2^k when it would exceed cap, so retry 1000 is
 * as safe as retry 1.
 *
 * The retry budget bounds retries to a fraction of real traffic, so a
 * failing upstream sees at most (1 + percent) × load plus a small floor.
 * State is a ring of WEFT_BUDGET_BUCKETS time buckets spanning ttl: each
 * original request adds a deposit to the newest bucket, each retry a
 * withdrawal; buckets older than ttl are zeroed as time advances (a jump of
 * ttl or more clears the ring), so deposits and withdrawals both expire
 * after between ttl − ttl/10 and ttl. The balance is
 *
 *     percent × deposits_in_window + min_per_sec × ttl_s − withdrawals_in_window
 *
 * and a retry is allowed iff the balance is at least 1. `percent` is a
 * fraction (0.2 = 20 %, as Finagle's percentCanRetry; values above 1 are
 * allowed and mean more than one retry per request). The min_per_sec × ttl_s
 * reserve is what makes "10 retries per second" hold with no traffic at
 * all: with the defaults, 100 retries per 10 s window. Counters are 32-bit
 * and saturate. A zero ttl means the default 10 s.
 *
 * weft_retry_admit puts the two together in the one order both the gateway
 * and the SDK client use: backoff first, then the deadline (a retry that
 * cannot finish in time is not started and spends nothing), then the budget.
 */
#include "weft/resilience.h"

#include <math.h>

#include "resilience/resilience_int.h"

uint64_t weft_backoff_full_jitter(weft_rng *r, uint32_t retry, uint64_t base_ms, uint64_t cap_ms)
{
    if (retry == 0)
        retry = 1;
    uint32_t shift = retry - 1;
    uint64_t ceil_ms;
    if (base_ms == 0)
        ceil_ms = 0;
    else if (shift >= 63 || base_ms > (cap_ms >> shift))
        ceil_ms = cap_ms;
    else
        ceil_ms = base_ms << shift;
    if (ceil_ms > cap_ms)
        ceil_ms = cap_ms;
    if (ceil_ms == 0)
        return 0;
    if (!r)
        return ceil_ms / 2; /* no randomness supplied: the distribution's mean */
    return weft_rng_below(r, ceil_ms);
}

/* ---- retry budget ---- */

#define DEFAULT_TTL_MS 10000u

void weft_retry_budget_init(weft_retry_budget *b, double percent, uint32_t min_per_sec,
                            uint32_t ttl_ms)
{
    if (!b)
        return;
    memset(b, 0, sizeof *b);
    if (!(percent >= 0) || isinf(percent)) /* also catches NaN */
        percent = 0;
    b->percent = percent;
    b->min_per_sec = min_per_sec;
    b->ttl_ms = ttl_ms ? ttl_ms : DEFAULT_TTL_MS;
    b->bucket_ms = b->ttl_ms / WEFT_BUDGET_BUCKETS;
    if (b->bucket_ms == 0)
        b->bucket_ms = 1;
    b->epoch = 0;
}

static size_t roll(weft_retry_budget *b, uint64_t now_ms)
{
    uint32_t bms = b->bucket_ms ? b->bucket_ms : 1;
    weft_window_roll_(&b->epoch, now_ms / bms, b->deposits, b->withdrawals, WEFT_BUDGET_BUCKETS);
    return (size_t)(b->epoch % WEFT_BUDGET_BUCKETS);
}

void weft_retry_budget_deposit(weft_retry_budget *b, uint64_t now_ms)
{
    if (!b)
        return;
    weft_sat_inc_(&b->deposits[roll(b, now_ms)]);
}

double weft_retry_budget_balance(weft_retry_budget *b, uint64_t now_ms)
{
    if (!b)
        return 0;
    roll(b, now_ms);
    uint64_t dep = 0, wd = 0;
    for (size_t i = 0; i < WEFT_BUDGET_BUCKETS; i++) {
        dep += b->deposits[i];
        wd += b->withdrawals[i];
    }
    double reserve = (double)b->min_per_sec * ((double)b->ttl_ms / 1000.0);
    return b->percent * (double)dep + reserve - (double)wd;
}

enum weft_retry_verdict weft_retry_admit(weft_rng *r, weft_retry_budget *b, uint32_t retry,
                                         uint64_t base_ms, uint64_t cap_ms, uint64_t now_ms,
                                         uint64_t expect_ms, uint64_t deadline_ms,
                                         uint64_t *backoff_ms)
{
    *backoff_ms = weft_backoff_full_jitter(r, retry, base_ms, cap_ms);
    if (now_ms + *backoff_ms + expect_ms >= deadline_ms)
        return WEFT_RETRY_DEADLINE; /* checked first: a doomed retry costs no budget */
    if (b && !weft_retry_budget_withdraw(b, now_ms))
        return WEFT_RETRY_BUDGET;
    return WEFT_RETRY_GO;
}

bool weft_retry_budget_withdraw(weft_retry_budget *b, uint64_t now_ms)
{
    if (!b)
        return false;
    /* the epsilon absorbs rounding in percent × deposits (0.2 × 5 = 0.999...) */
    if (weft_retry_budget_balance(b, now_ms) < 1.0 - 1e-9)
        return false;
    weft_sat_inc_(&b->withdrawals[b->epoch % WEFT_BUDGET_BUCKETS]);
    return true;
}
