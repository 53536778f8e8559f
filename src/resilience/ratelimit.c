/*
 * ratelimit.c — keyed token buckets with a bounded key set (see resilience.h).
 *
 * Each key owns a bucket of `burst` tokens refilled continuously at `rate`
 * per second (refill = elapsed × rate, capped at burst), computed lazily on
 * each take, so idle keys cost nothing. Keys live in a chained hash table
 * (weft_hash64 of the key bytes; the bytes are stored and compared, so
 * collisions never merge two clients) and on an intrusive LRU list. When a
 * new key arrives and max_keys are tracked, the least recently used entry is
 * recycled in place — forgetting a key only ever gives it a full bucket,
 * which is the safe direction, and memory is bounded by max_keys.
 *
 * Entries and the bucket array are allocated while the table warms up
 * (the array doubles at load factor 1, up to the power of two >= max_keys);
 * at steady state a take never allocates (a recycled entry keeps its key
 * buffer and only grows it for a longer key). If memory runs out the take
 * fails open: the request is allowed and reported as hitting a full bucket.
 * The hash seed is per instance (address and clock) so chains cannot be
 * precomputed from outside.
 *
 * Fractional tokens are kept as a double; comparisons use a 1e-9 slack so
 * refills like 10 × 0.1 s give exactly one whole token. Info: remaining =
 * floor(tokens) after this take, reset_s = ceil((burst − tokens)/rate),
 * retry_after_s = max(1, ceil((1 − tokens)/rate)) when denied, else 0.
 * weft_ratelimit_new returns NULL for rate <= 0 (or NaN/inf), burst 0 or
 * max_keys 0. A clock that goes backwards does not refill.
 */
#include "weft/resilience.h"

#include <math.h>
#include <stdlib.h>
#include <time.h>

#include "resilience/resilience_int.h"

#define EPS 1e-9

typedef struct rl_entry {
    struct rl_entry *hnext;       /* hash chain */
    struct rl_entry *prev, *next; /* LRU list, head = most recent */
    uint64_t hash;
    double tokens;
    uint64_t last_us;
    size_t klen, kcap;
    char *key;
} rl_entry;

struct weft_ratelimit {
    double rate;
    uint32_t burst;
    size_t max_keys;
    rl_entry **buckets;
    size_t nbuckets; /* power of two */
    size_t max_buckets;
    size_t count;
    rl_entry *head, *tail;
    uint64_t seed;
};

weft_ratelimit *weft_ratelimit_new(double rate_per_sec, uint32_t burst, size_t max_keys)
{
    if (!(rate_per_sec > 0) || isinf(rate_per_sec) || burst == 0 || max_keys == 0)
        return NULL;
    weft_ratelimit *rl = calloc(1, sizeof *rl);
    if (!rl)
        return NULL;
    rl->rate = rate_per_sec;
    rl->burst = burst;
    rl->max_keys = max_keys;
    rl->max_buckets = 1;
    while (rl->max_buckets < max_keys && rl->max_buckets < ((size_t)1 << 30))
        rl->max_buckets <<= 1;
    rl->nbuckets = rl->max_buckets < 64 ? rl->max_buckets : 64;
    rl->buckets = calloc(rl->nbuckets, sizeof *rl->buckets);
    if (!rl->buckets)
        goto fail_free_rl;
    rl->seed = weft_mix64_((uint64_t)(uintptr_t)rl ^ ((uint64_t)time(NULL) << 20));
    return rl;
fail_free_rl:
    free(rl);
    return NULL;
}

void weft_ratelimit_free(weft_ratelimit *rl)
{
    if (!rl)
        return;
    rl_entry *e = rl->head;
    while (e) {
        rl_entry *next = e->next;
        free(e->key);
        free(e);
        e = next;
    }
    free(rl->buckets);
    free(rl);
}

size_t weft_ratelimit_size(const weft_ratelimit *rl)
{
    return rl ? rl->count : 0;
}

static void lru_unlink(weft_ratelimit *rl, rl_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        rl->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        rl->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(weft_ratelimit *rl, rl_entry *e)
{
    e->prev = NULL;
    e->next = rl->head;
    if (rl->head)
        rl->head->prev = e;
    rl->head = e;
    if (!rl->tail)
        rl->tail = e;
}

static void chain_remove(weft_ratelimit *rl, rl_entry *e)
{
    rl_entry **pp = &rl->buckets[e->hash & (rl->nbuckets - 1)];
    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = e->hnext;
    e->hnext = NULL;
}

static void chain_insert(weft_ratelimit *rl, rl_entry *e)
{
    rl_entry **head = &rl->buckets[e->hash & (rl->nbuckets - 1)];
    e->hnext = *head;
    *head = e;
}

/* Double the bucket array; on allocation failure keep the old one. */
static void maybe_grow(weft_ratelimit *rl)
{
    if (rl->count <= rl->nbuckets || rl->nbuckets >= rl->max_buckets)
        return;
    size_t nb = rl->nbuckets * 2;
    rl_entry **b = calloc(nb, sizeof *b);
    if (!b)
        return;
    for (rl_entry *e = rl->head; e; e = e->next) {
        size_t i = e->hash & (nb - 1);
        e->hnext = b[i];
        b[i] = e;
    }
    free(rl->buckets);
    rl->buckets = b;
    rl->nbuckets = nb;
}

static rl_entry *lookup(weft_ratelimit *rl, weft_str key, uint64_t h)
{
    for (rl_entry *e = rl->buckets[h & (rl->nbuckets - 1)]; e; e = e->hnext)
        if (e->hash == h && e->klen == key.n && (key.n == 0 || memcmp(e->key, key.p, key.n) == 0))
            return e;
    return NULL;
}

/* A fresh or recycled entry for `key`, linked in; NULL when out of memory. */
static rl_entry *admit(weft_ratelimit *rl, weft_str key, uint64_t h, uint64_t now_us)
{
    rl_entry *e;
    if (rl->count < rl->max_keys) {
        e = calloc(1, sizeof *e);
        if (!e)
            return NULL;
    } else {
        e = rl->tail; /* recycle the least recently used */
        chain_remove(rl, e);
        lru_unlink(rl, e);
        rl->count--;
    }
    if (e->kcap < key.n || !e->key) {
        size_t cap = key.n < 32 ? 32 : key.n;
        char *k = realloc(e->key, cap);
        if (!k) {
            free(e->key);
            free(e);
            return NULL;
        }
        e->key = k;
        e->kcap = cap;
    }
    if (key.n)
        memcpy(e->key, key.p, key.n);
    e->klen = key.n;
    e->hash = h;
    e->tokens = rl->burst;
    e->last_us = now_us;
    chain_insert(rl, e);
    lru_push_front(rl, e);
    rl->count++;
    maybe_grow(rl);
    return e;
}

/* ceil/floor of non-negative values by integer truncation: the library
 * does not link libm (see lb.c) */
static uint32_t ceil_secs(double x)
{
    if (x <= EPS)
        return 0;
    x -= EPS;
    if (x >= (double)UINT32_MAX)
        return UINT32_MAX;
    uint32_t t = (uint32_t)x;
    return (double)t < x ? t + 1 : t;
}

bool weft_ratelimit_take(weft_ratelimit *rl, weft_str key, uint64_t now_us,
                         weft_ratelimit_info *info)
{
    if (info)
        memset(info, 0, sizeof *info);
    if (!rl || (!key.p && key.n))
        return false;
    uint64_t h = weft_hash64(key.p, key.n, rl->seed);
    rl_entry *e = lookup(rl, key, h);
    if (e) {
        if (e != rl->head) {
            lru_unlink(rl, e);
            lru_push_front(rl, e);
        }
        if (now_us > e->last_us) {
            e->tokens += (double)(now_us - e->last_us) * rl->rate / 1e6;
            if (e->tokens > rl->burst)
                e->tokens = rl->burst;
            e->last_us = now_us;
        }
    } else {
        e = admit(rl, key, h, now_us);
        if (!e) { /* out of memory: fail open, as if the bucket were full */
            if (info) {
                info->limit = rl->burst;
                info->remaining = rl->burst - 1;
                info->reset_s = ceil_secs(1.0 / rl->rate);
            }
            return true;
        }
    }
    bool ok = e->tokens >= 1.0 - EPS;
    if (ok) {
        e->tokens -= 1.0;
        if (e->tokens < 0)
            e->tokens = 0; /* the slack must not leave debt */
    }
    if (info) {
        double f = e->tokens + EPS; /* >= 0: truncation is floor */
        info->limit = rl->burst;
        info->remaining = f <= 0 ? 0 : f >= (double)UINT32_MAX ? UINT32_MAX : (uint32_t)f;
        info->reset_s = ceil_secs(((double)rl->burst - e->tokens) / rl->rate);
        if (!ok) {
            uint32_t ra = ceil_secs((1.0 - e->tokens) / rl->rate);
            info->retry_after_s = ra < 1 ? 1 : ra;
        }
    }
    return ok;
}
