/*
 * lb.c — load balancers over a fixed endpoint set (see resilience.h).
 *
 * The endpoint set is copied at weft_lb_new (ids included) and never
 * changes; a new set means a new balancer, swapped in as a snapshot. Only
 * .healthy (written by the caller in place) and the request accounting
 * change afterwards. Everything an algorithm needs is precomputed at build
 * time — weight prefix sums, the hash ring, the Maglev table — so a pick
 * neither allocates nor walks the set in the common case.
 *
 * Eligibility. An endpoint is eligible if it is healthy (or the set is in
 * panic: healthy·100 < panic_percent·n makes every endpoint eligible, as in
 * Envoy) and not in the caller's exclude list (the list is ignored when it
 * would leave nothing). Because .healthy changes without telling us, the
 * healthy count is not cached; instead every pick first tries a fast path:
 * a candidate that is healthy and not excluded is eligible whatever the
 * panic state, so it is taken at O(1) cost. Only when a candidate fails
 * that test does the pick count the set (O(n)) and retry under the exact
 * rule. Every sampler accepts its first draw iff it is eligible and
 * otherwise redraws among eligible endpoints only, so the fast path does
 * not bias the distribution. weft_lb_in_panic() reports the panic state
 * computed by the last pick, or — if that pick took the fast path and never
 * needed it — evaluates it from the current health flags.
 *
 * Algorithms:
 *  - ROUND_ROBIN: a cursor; after an ineligible endpoint is skipped the
 *    cursor continues after the one picked, so counts stay exactly equal.
 *  - WEIGHTED_RR: nginx's smooth weighted round robin (5,1,1 → a a b a c a
 *    a). It is O(n) per pick by nature, like nginx's.
 *  - LEAST_REQUEST: cost (inflight+1)/weight compared exactly by cross
 *    multiplication; full scan with random tie-break for n <= 8, power of
 *    two choices above (Envoy's choice_count 2).
 *  - RANDOM: weighted, by branch-free binary search over weight prefix
 *    sums.
 *  - P2C_EWMA: two distinct random eligible endpoints, the cheaper wins;
 *    cost = peak-EWMA latency × (inflight+1) / weight, and an endpoint with
 *    no sample costs 0 when idle but 1e12+inflight when busy (Finagle), so
 *    new endpoints get probed once, not flooded. The latency term decays
 *    toward 0 from its last sample to the newest time any weft_lb_on_done
 *    reported (the balancer's clock; pick takes no time), so an endpoint
 *    that lost every comparison after one slow response is retried.
 *  - RING_HASH: Ketama ring, 100 × weight points per endpoint hashed from
 *    "id#i" (scaled down if the ring would exceed 256 Ki points, each
 *    endpoint keeping at least one), binary search for the first point >=
 *    key (found in O(1) expected through an index on the key's top bits),
 *    then walk forward to the first eligible endpoint.
 *  - MAGLEV: table of M slots, M = 65537 (Envoy's default) while that
 *    leaves >= 100 slots per endpoint (n <= 655), past that the smallest
 *    prime in a fixed list that is >= 100·n (at most 1048573, which also
 *    bounds n). M must not follow small changes of n: a key's slot is
 *    key mod M, so a new M remaps almost every key. Filled
 *    by each endpoint's offset/skip permutation of two hashes of its id.
 *    Weight is honoured by turns: per round every endpoint accrues its
 *    weight and places one entry per max_weight accrued; the first round
 *    gives everyone an entry so no endpoint is unreachable. An ineligible
 *    slot is resolved by probing key-derived steps (slot + j·step mod M, M
 *    prime so every slot is visited), deterministically per key.
 * For both hash algorithms the caller's key is re-mixed first, so
 * sequential or poorly mixed keys still spread; marking an endpoint
 * unhealthy moves only the keys that were on it, since tables are never
 * rebuilt for health.
 *
 * Decisions: weight 0 is rejected with WEFT_EINVAL (the header promises
 * >= 1; a silent 1 would hide a config error); hash algorithms require a
 * non-NULL id. A NULL rng makes the balancer use its own, seeded
 * deterministically at creation. The EWMA is floored at 1 µs so that 0
 * keeps meaning "no sample".
 */
#include "weft/resilience.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* e^-x for x >= 0, without libm: the only transcendental function the
 * library needs is this EWMA decay weight, and linking libm for it costs
 * ~300 KiB of resident memory in every weft process. Range reduction to
 * e^-x = 2^-n * e^-r with r in [0, ln 2), then a degree-11 Taylor
 * polynomial (relative error < 1e-9 on that interval). */
static double decay(double x)
{
    if (!(x > 0))
        return 1.0;
    if (x > 700)
        return 0.0;
    const double ln2 = 0.69314718055994530942;
    int n = (int)(x / ln2);
    double r = x - n * ln2; /* [0, ln2) */
    double t = -r;
    double p = 1.0 / 39916800; /* 1/11! */
    static const double inv_fact[] = {1.0 / 3628800, 1.0 / 362880, 1.0 / 40320, 1.0 / 5040,
                                      1.0 / 720,     1.0 / 120,    1.0 / 24,    1.0 / 6,
                                      1.0 / 2,       1.0,          1.0};
    for (size_t i = 0; i < sizeof inv_fact / sizeof inv_fact[0]; i++)
        p = p * t + inv_fact[i];
    while (n >= 30) { /* 2^-n in steps that stay exact */
        p /= 1073741824.0;
        n -= 30;
    }
    return p / (double)(1u << n);
}

#include "resilience/resilience_int.h"

#define RING_POINTS_PER_WEIGHT 100
#define RING_MAX_POINTS (1u << 18)
#define RING_SEED UINT64_C(0x6b6574616d61)       /* "ketama" */
#define MAGLEV_SEED_OFF UINT64_C(0x6d61676c6576) /* "maglev" */
#define MAGLEV_SEED_SKIP UINT64_C(0x736b6970)    /* "skip" */
#define SAMPLE_TRIES 8
#define DEFAULT_TAU_US 10e6

struct weft_lb {
    int algo;
    size_t n;
    weft_lb_endpoint *eps;
    char *ids;
    uint32_t panic_percent;
    bool last_panic;
    bool panic_known;
    size_t rr;
    double tau_us;
    weft_rng own_rng;
    uint64_t *cum; /* RANDOM: cum[i] = w0 + ... + wi */
    uint64_t total_weight;
    uint64_t *ring_hash; /* RING_HASH: sorted point positions */
    uint32_t *ring_idx;  /* endpoint of each point */
    size_t npoints;
    uint32_t *ring_start; /* ring_start[p]: first point whose top ring_bits are >= p */
    unsigned ring_bits;
    uint32_t *table; /* MAGLEV */
    uint32_t m;
    uint64_t clock_us; /* latest now_us seen by weft_lb_on_done (P2C_EWMA's clock) */
};

static const char *const algo_names[] = {
    [WEFT_LB_P2C_EWMA] = "p2c_ewma",
    [WEFT_LB_ROUND_ROBIN] = "round_robin",
    [WEFT_LB_WEIGHTED_RR] = "weighted_round_robin",
    [WEFT_LB_LEAST_REQUEST] = "least_request",
    [WEFT_LB_RANDOM] = "random",
    [WEFT_LB_RING_HASH] = "ring_hash",
    [WEFT_LB_MAGLEV] = "maglev",
};

int weft_lb_algo_from(const char *name)
{
    if (!name)
        return WEFT_EINVAL;
    for (size_t i = 0; i < WEFT_ARRAY_LEN(algo_names); i++)
        if (strcmp(name, algo_names[i]) == 0)
            return (int)i;
    return WEFT_EINVAL;
}

const char *weft_lb_algo_name(int algo)
{
    if (algo < 0 || (size_t)algo >= WEFT_ARRAY_LEN(algo_names))
        return "unknown";
    return algo_names[algo];
}

/* ------------------------------------------------------------------ */
/* eligibility */

typedef struct pick_ctx {
    const int *ex;
    size_t nex;
    bool panic;
    bool use_ex;  /* false once exclusion was found to leave nothing */
    size_t count; /* eligible endpoints under the exact rule */
} pick_ctx;

static bool is_excluded(const pick_ctx *c, size_t i)
{
    for (size_t k = 0; k < c->nex; k++)
        if (c->ex[k] >= 0 && (size_t)c->ex[k] == i)
            return true;
    return false;
}

/* Eligible whatever the panic state and whether exclusion is honoured. */
static inline bool surely_eligible(const weft_lb *lb, const pick_ctx *c, size_t i)
{
    return lb->eps[i].healthy && !is_excluded(c, i);
}

static inline bool eligible(const weft_lb *lb, const pick_ctx *c, size_t i)
{
    return (c->panic || lb->eps[i].healthy) && !(c->use_ex && is_excluded(c, i));
}

static size_t count_healthy(const weft_lb *lb)
{
    size_t h = 0;
    for (size_t i = 0; i < lb->n; i++)
        h += lb->eps[i].healthy;
    return h;
}

static bool panic_for(const weft_lb *lb, size_t healthy)
{
    return (uint64_t)healthy * 100 < (uint64_t)lb->panic_percent * lb->n;
}

/* The slow path: decide panic and exclusion exactly; returns the count. */
static size_t ctx_resolve(weft_lb *lb, pick_ctx *c)
{
    size_t h = count_healthy(lb);
    c->panic = panic_for(lb, h);
    lb->last_panic = c->panic;
    lb->panic_known = true;
    size_t base = c->panic ? lb->n : h;
    size_t ex = 0;
    for (size_t k = 0; k < c->nex; k++) {
        int v = c->ex[k];
        if (v < 0 || (size_t)v >= lb->n || !(c->panic || lb->eps[v].healthy))
            continue;
        bool dup = false;
        for (size_t j = 0; j < k && !dup; j++)
            dup = c->ex[j] == v;
        ex += !dup;
    }
    c->use_ex = base > ex;
    c->count = c->use_ex ? base - ex : base;
    return c->count;
}

/* The k-th eligible endpoint other than `avoid` (SIZE_MAX = none). */
static size_t nth_eligible(const weft_lb *lb, const pick_ctx *c, size_t k, size_t avoid)
{
    for (size_t i = 0; i < lb->n; i++) {
        if (i == avoid || !eligible(lb, c, i))
            continue;
        if (k-- == 0)
            return i;
    }
    return 0; /* unreachable when k < count */
}

/* Uniform eligible endpoint other than `avoid` (which, if given, is eligible).
 * Rejection first (cheap when most are eligible), then an exact scan. */
static size_t sample_eligible(const weft_lb *lb, const pick_ctx *c, weft_rng *rng, size_t avoid)
{
    for (int t = 0; t < SAMPLE_TRIES; t++) {
        size_t i = (size_t)weft_rng_below(rng, lb->n);
        if (i != avoid && eligible(lb, c, i))
            return i;
    }
    size_t cnt = c->count - (avoid != SIZE_MAX);
    return nth_eligible(lb, c, (size_t)weft_rng_below(rng, cnt), avoid);
}

/* ------------------------------------------------------------------ */
/* costs */

/* The estimate as of the balancer's clock: it decays toward 0 from its last
 * update, as Finagle's PeakEwma does on every read. Without this, an
 * endpoint whose estimate peaked once loses every comparison, so it never
 * receives the request whose sample would lower its estimate: one slow
 * response would starve it for good. With decay it is probed again once
 * its cost has fallen to its rivals' (after τ·ln(ratio)). τ = 0 means "the
 * latest sample only", so nothing decays then. */
static double ewma_now(const weft_lb *lb, const weft_lb_endpoint *e)
{
    if (lb->clock_us <= e->ewma_stamp_us || !(lb->tau_us > 0))
        return e->ewma_us;
    return e->ewma_us * decay((double)(lb->clock_us - e->ewma_stamp_us) / lb->tau_us);
}

static double ewma_cost(const weft_lb *lb, const weft_lb_endpoint *e)
{
    double c;
    if (e->ewma_us <= 0)
        c = e->inflight == 0 ? 0.0 : 1e12 + (double)e->inflight;
    else
        c = ewma_now(lb, e) * ((double)e->inflight + 1.0);
    return c / (double)e->weight;
}

/* <0, 0, >0 as (inflight+1)/weight of a is below, equal, above b's. */
static int lr_cmp(const weft_lb_endpoint *a, const weft_lb_endpoint *b)
{
    uint64_t l = ((uint64_t)a->inflight + 1) * b->weight;
    uint64_t r = ((uint64_t)b->inflight + 1) * a->weight;
    return (l > r) - (l < r);
}

static size_t better(const weft_lb *lb, size_t i, size_t j, bool ewma)
{
    const weft_lb_endpoint *a = &lb->eps[i], *b = &lb->eps[j];
    if (ewma)
        return ewma_cost(lb, a) <= ewma_cost(lb, b) ? i : j;
    return lr_cmp(a, b) <= 0 ? i : j;
}

/* ------------------------------------------------------------------ */
/* pickers: each returns an index or -1 */

static int pick_p2c(weft_lb *lb, pick_ctx *c, weft_rng *rng, bool ewma)
{
    size_t n = lb->n;
    if (n == 1) {
        if (surely_eligible(lb, c, 0))
            return 0;
        return ctx_resolve(lb, c) ? 0 : -1;
    }
    size_t i = (size_t)weft_rng_below(rng, n);
    size_t j = (size_t)weft_rng_below(rng, n - 1);
    if (j >= i)
        j++;
    if (surely_eligible(lb, c, i) && surely_eligible(lb, c, j))
        return (int)better(lb, i, j, ewma);
    size_t cnt = ctx_resolve(lb, c);
    if (cnt == 0)
        return -1;
    if (cnt == 1)
        return (int)nth_eligible(lb, c, 0, SIZE_MAX);
    if (!eligible(lb, c, i) || !eligible(lb, c, j)) {
        i = sample_eligible(lb, c, rng, SIZE_MAX);
        j = sample_eligible(lb, c, rng, i);
    }
    return (int)better(lb, i, j, ewma);
}

static int pick_least_request(weft_lb *lb, pick_ctx *c, weft_rng *rng)
{
    if (lb->n > 8)
        return pick_p2c(lb, c, rng, false);
    if (ctx_resolve(lb, c) == 0)
        return -1;
    size_t best = SIZE_MAX;
    uint64_t ties = 0;
    for (size_t i = 0; i < lb->n; i++) {
        if (!eligible(lb, c, i))
            continue;
        int d = best == SIZE_MAX ? -1 : lr_cmp(&lb->eps[i], &lb->eps[best]);
        if (d < 0) {
            best = i;
            ties = 1;
        } else if (d == 0 && weft_rng_below(rng, ++ties) == 0) {
            best = i; /* reservoir sampling: each tied endpoint with p = 1/ties */
        }
    }
    return (int)best;
}

static int pick_rr(weft_lb *lb, pick_ctx *c)
{
    size_t n = lb->n, i = lb->rr % n;
    if (!surely_eligible(lb, c, i)) {
        if (ctx_resolve(lb, c) == 0)
            return -1;
        for (size_t k = 0; k < n && !eligible(lb, c, i); k++)
            i = (i + 1) % n;
    }
    lb->rr = (i + 1) % n;
    return (int)i;
}

static int pick_wrr(weft_lb *lb, pick_ctx *c)
{
    if (ctx_resolve(lb, c) == 0)
        return -1;
    int64_t total = 0;
    size_t best = SIZE_MAX;
    for (size_t i = 0; i < lb->n; i++) {
        if (!eligible(lb, c, i))
            continue;
        weft_lb_endpoint *e = &lb->eps[i];
        e->swrr_current += e->weight;
        total += e->weight;
        if (best == SIZE_MAX || e->swrr_current > lb->eps[best].swrr_current)
            best = i;
    }
    lb->eps[best].swrr_current -= total;
    return (int)best;
}

/* First i in a[0..len) with a[i] > x (strict) or >= x, given one exists.
 * Branch-free halving (the step is the comparison times half): random keys
 * would mispredict a branch at every level. */
static inline size_t search_gt(const uint64_t *a, size_t len, uint64_t x)
{
    const uint64_t *b = a;
    while (len > 1) {
        size_t half = len / 2;
        b += (size_t)(b[half - 1] <= x) * half;
        len -= half;
    }
    return (size_t)(b - a);
}

static inline size_t search_ge(const uint64_t *a, size_t len, uint64_t x)
{
    const uint64_t *b = a;
    while (len > 1) {
        size_t half = len / 2;
        b += (size_t)(b[half - 1] < x) * half;
        len -= half;
    }
    return (size_t)(b - a);
}

static size_t weighted_draw(const weft_lb *lb, weft_rng *rng)
{
    uint64_t r = weft_rng_below(rng, lb->total_weight);
    return search_gt(lb->cum, lb->n, r); /* cum[n-1] = total > r */
}

static int pick_random(weft_lb *lb, pick_ctx *c, weft_rng *rng)
{
    size_t i = weighted_draw(lb, rng);
    if (surely_eligible(lb, c, i))
        return (int)i;
    if (ctx_resolve(lb, c) == 0)
        return -1;
    for (int t = 0; t <= SAMPLE_TRIES; t++) {
        if (eligible(lb, c, i))
            return (int)i;
        i = weighted_draw(lb, rng);
    }
    uint64_t sum = 0;
    for (size_t k = 0; k < lb->n; k++)
        if (eligible(lb, c, k))
            sum += lb->eps[k].weight;
    uint64_t r = weft_rng_below(rng, sum);
    for (size_t k = 0; k < lb->n; k++) {
        if (!eligible(lb, c, k))
            continue;
        if (r < lb->eps[k].weight)
            return (int)k;
        r -= lb->eps[k].weight;
    }
    return -1; /* unreachable */
}

static int pick_ring(weft_lb *lb, pick_ctx *c, uint64_t key)
{
    uint64_t k = weft_mix64_(key);
    /* the first point >= k lies in [start[p], start[p + 1]] for k's prefix p */
    uint64_t p = lb->ring_bits ? k >> (64 - lb->ring_bits) : 0;
    size_t lo = lb->ring_start[p], hi = lb->ring_start[p + 1];
    size_t pos = hi;
    if (lo < hi && lb->ring_hash[hi - 1] >= k)
        pos = lo + search_ge(lb->ring_hash + lo, hi - lo, k);
    if (pos == lb->npoints)
        pos = 0; /* past the last point: wrap around */
    if (surely_eligible(lb, c, lb->ring_idx[pos]))
        return (int)lb->ring_idx[pos];
    if (ctx_resolve(lb, c) == 0)
        return -1;
    for (size_t s = 0; s < lb->npoints; s++) {
        uint32_t i = lb->ring_idx[pos];
        if (eligible(lb, c, i))
            return (int)i;
        if (++pos == lb->npoints)
            pos = 0;
    }
    return -1; /* unreachable: every endpoint owns a point */
}

static int pick_maglev(weft_lb *lb, pick_ctx *c, uint64_t key)
{
    uint64_t k = weft_mix64_(key);
    uint64_t m = lb->m;
    uint64_t slot = k % m;
    if (surely_eligible(lb, c, lb->table[slot]))
        return (int)lb->table[slot];
    if (ctx_resolve(lb, c) == 0)
        return -1;
    uint64_t step = 1 + (k / m) % (m - 1);
    for (uint64_t j = 0; j < m; j++) {
        uint32_t i = lb->table[slot];
        if (eligible(lb, c, i))
            return (int)i;
        slot += step;
        if (slot >= m)
            slot -= m;
    }
    return -1; /* unreachable: every endpoint owns a slot */
}

int weft_lb_pick(weft_lb *lb, uint64_t key, const int *exclude, size_t nexclude, weft_rng *rng)
{
    if (!lb)
        return -1;
    pick_ctx c = {exclude, exclude ? nexclude : 0, false, true, 0};
    if (!rng)
        rng = &lb->own_rng;
    lb->panic_known = false;
    switch (lb->algo) {
    case WEFT_LB_ROUND_ROBIN: return pick_rr(lb, &c);
    case WEFT_LB_WEIGHTED_RR: return pick_wrr(lb, &c);
    case WEFT_LB_LEAST_REQUEST: return pick_least_request(lb, &c, rng);
    case WEFT_LB_RANDOM: return pick_random(lb, &c, rng);
    case WEFT_LB_RING_HASH: return pick_ring(lb, &c, key);
    case WEFT_LB_MAGLEV: return pick_maglev(lb, &c, key);
    case WEFT_LB_P2C_EWMA:
    default: return pick_p2c(lb, &c, rng, true);
    }
}

bool weft_lb_in_panic(const weft_lb *lb)
{
    if (!lb)
        return false;
    if (lb->panic_known)
        return lb->last_panic;
    return panic_for(lb, count_healthy(lb));
}

void weft_lb_set_panic_percent(weft_lb *lb, uint32_t percent)
{
    if (lb)
        lb->panic_percent = percent > 100 ? 100 : percent;
}

void weft_lb_set_decay_us(weft_lb *lb, uint64_t tau_us)
{
    if (lb)
        lb->tau_us = (double)tau_us;
}

void weft_lb_on_start(weft_lb *lb, int idx)
{
    if (!lb || idx < 0 || (size_t)idx >= lb->n)
        return;
    if (lb->eps[idx].inflight != UINT32_MAX)
        lb->eps[idx].inflight++;
}

void weft_lb_on_done(weft_lb *lb, int idx, uint64_t latency_us, uint64_t now_us)
{
    if (!lb || idx < 0 || (size_t)idx >= lb->n)
        return;
    weft_lb_endpoint *e = &lb->eps[idx];
    if (e->inflight)
        e->inflight--;
    double lat = (double)latency_us;
    if (e->ewma_us <= 0 || lat > e->ewma_us) {
        e->ewma_us = lat; /* peak: jump straight up */
    } else {
        double dt = now_us > e->ewma_stamp_us ? (double)(now_us - e->ewma_stamp_us) : 0.0;
        double w = lb->tau_us > 0 ? decay(dt / lb->tau_us) : 0.0;
        e->ewma_us = e->ewma_us * w + lat * (1.0 - w);
    }
    if (e->ewma_us < 1.0)
        e->ewma_us = 1.0;
    if (now_us > e->ewma_stamp_us)
        e->ewma_stamp_us = now_us;
    if (now_us > lb->clock_us)
        lb->clock_us = now_us;
}

size_t weft_lb_size(const weft_lb *lb)
{
    return lb ? lb->n : 0;
}

weft_lb_endpoint *weft_lb_endpoints(weft_lb *lb)
{
    return lb ? lb->eps : NULL;
}

/* ------------------------------------------------------------------ */
/* construction */

typedef struct ring_point {
    uint64_t h;
    uint32_t idx;
} ring_point;

static int ring_point_cmp(const void *a, const void *b)
{
    const ring_point *x = a, *y = b;
    if (x->h != y->h)
        return x->h < y->h ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

static size_t ring_points_for(const weft_lb *lb, size_t i)
{
    uint64_t w = lb->eps[i].weight, p;
    if (lb->total_weight > RING_MAX_POINTS / RING_POINTS_PER_WEIGHT)
        p = (uint64_t)((double)w * RING_MAX_POINTS / (double)lb->total_weight);
    else
        p = w * RING_POINTS_PER_WEIGHT;
    return p ? (size_t)p : 1;
}

static int build_ring(weft_lb *lb)
{
    int rc = WEFT_ENOMEM;
    size_t total = 0, maxid = 0;
    for (size_t i = 0; i < lb->n; i++) {
        size_t l = strlen(lb->eps[i].id);
        if (l > maxid)
            maxid = l;
        total += ring_points_for(lb, i);
    }
    ring_point *pts = malloc(total * sizeof *pts);
    char *buf = malloc(maxid + 24);
    if (!pts || !buf)
        goto fail_free;
    size_t k = 0;
    for (size_t i = 0; i < lb->n; i++) {
        size_t p = ring_points_for(lb, i);
        size_t l = strlen(lb->eps[i].id);
        memcpy(buf, lb->eps[i].id, l);
        for (size_t j = 0; j < p; j++) {
            int w = snprintf(buf + l, 24, "#%zu", j);
            pts[k].h = weft_hash64(buf, l + (size_t)w, RING_SEED);
            pts[k].idx = (uint32_t)i;
            k++;
        }
    }
    qsort(pts, total, sizeof *pts, ring_point_cmp);
    lb->ring_hash = malloc(total * sizeof *lb->ring_hash);
    lb->ring_idx = malloc(total * sizeof *lb->ring_idx);
    if (!lb->ring_hash || !lb->ring_idx)
        goto fail_free; /* weft_lb_free releases whichever was allocated */
    for (size_t i = 0; i < total; i++) {
        lb->ring_hash[i] = pts[i].h;
        lb->ring_idx[i] = pts[i].idx;
    }
    lb->npoints = total;
    /* prefix index: about one point per slot, so a lookup is O(1) expected */
    unsigned bits = 0;
    while (bits < 24 && ((size_t)2 << bits) <= total)
        bits++;
    lb->ring_bits = bits;
    lb->ring_start = malloc((((size_t)1 << bits) + 1) * sizeof *lb->ring_start);
    if (!lb->ring_start)
        goto fail_free;
    size_t at = 0;
    for (uint64_t pfx = 0; pfx < ((uint64_t)1 << bits); pfx++) {
        while (at < total && (bits ? lb->ring_hash[at] >> (64 - bits) : 0) < pfx)
            at++;
        lb->ring_start[pfx] = (uint32_t)at;
    }
    lb->ring_start[(size_t)1 << bits] = (uint32_t)total;
    rc = 0;
fail_free:
    free(buf);
    free(pts);
    return rc;
}

/* Table sizes. The table size is part of every key's mapping (slot = key
 * mod M), so changing M between two builds moves nearly all keys: M used
 * to be the smallest prime >= 100·n from 5003 up, and going from 50 to 51
 * endpoints moved 96 % of the keys between endpoints that stayed. So one
 * size, Envoy's default 65537 (256 KiB), serves every set of up to 655
 * endpoints; only larger sets step up, rarely. Small tables also make the
 * remapping coarse: at M = 1009, removing one of five endpoints moved up
 * to 19 % of the others' keys in our tests (two ids drew the same skip). */
static const uint32_t maglev_primes[] = {65537, 131071, 262147, 524287, 1048573};

static int build_maglev(weft_lb *lb)
{
    int rc = WEFT_ENOMEM;
    size_t n = lb->n;
    uint64_t m = 0;
    for (size_t i = 0; i < WEFT_ARRAY_LEN(maglev_primes) && !m; i++)
        if (maglev_primes[i] >= (uint64_t)n * 100)
            m = maglev_primes[i];
    if (!m)
        m = maglev_primes[WEFT_ARRAY_LEN(maglev_primes) - 1]; /* fewer than 100 slots each */
    if (m < n)
        return WEFT_EINVAL; /* every endpoint needs a slot */
    uint64_t *pos = malloc(n * sizeof *pos);
    uint64_t *skip = malloc(n * sizeof *skip);
    uint64_t *acc = malloc(n * sizeof *acc);
    lb->table = malloc(m * sizeof *lb->table);
    if (!pos || !skip || !acc || !lb->table)
        goto fail_free;
    lb->m = (uint32_t)m;
    uint32_t maxw = 0;
    for (size_t i = 0; i < n; i++) {
        const char *id = lb->eps[i].id;
        size_t l = strlen(id);
        pos[i] = weft_hash64(id, l, MAGLEV_SEED_OFF) % m;
        skip[i] = weft_hash64(id, l, MAGLEV_SEED_SKIP) % (m - 1) + 1;
        if (lb->eps[i].weight > maxw)
            maxw = lb->eps[i].weight;
    }
    for (size_t i = 0; i < n; i++)
        acc[i] = maxw - lb->eps[i].weight; /* first round: everyone places one */
    for (uint64_t s = 0; s < m; s++)
        lb->table[s] = UINT32_MAX;
    uint64_t filled = 0;
    while (filled < m) {
        for (size_t i = 0; i < n && filled < m; i++) {
            acc[i] += lb->eps[i].weight;
            if (acc[i] < maxw)
                continue;
            acc[i] -= maxw;
            while (lb->table[pos[i]] != UINT32_MAX) {
                pos[i] += skip[i];
                if (pos[i] >= m)
                    pos[i] -= m;
            }
            lb->table[pos[i]] = (uint32_t)i;
            filled++;
        }
    }
    rc = 0;
fail_free:
    free(acc);
    free(skip);
    free(pos);
    return rc;
}

int weft_lb_new(int algo, const weft_lb_endpoint *eps, size_t n, weft_lb **out)
{
    int rc = WEFT_EINVAL;
    if (out)
        *out = NULL;
    if (!out || !eps || n == 0 || n > (size_t)INT32_MAX || algo < WEFT_LB_P2C_EWMA ||
        algo > WEFT_LB_MAGLEV)
        return WEFT_EINVAL;
    bool hashed = algo == WEFT_LB_RING_HASH || algo == WEFT_LB_MAGLEV;
    size_t idbytes = 0;
    uint64_t total_weight = 0;
    for (size_t i = 0; i < n; i++) {
        if (eps[i].weight == 0 || (hashed && !eps[i].id))
            return WEFT_EINVAL;
        total_weight += eps[i].weight;
        idbytes += eps[i].id ? strlen(eps[i].id) + 1 : 0;
    }
    weft_lb *lb = calloc(1, sizeof *lb);
    if (!lb)
        return WEFT_ENOMEM;
    lb->algo = algo;
    lb->n = n;
    lb->panic_percent = 50;
    lb->tau_us = DEFAULT_TAU_US;
    lb->total_weight = total_weight;
    weft_rng_seed(&lb->own_rng, UINT64_C(0x5eed) ^ total_weight ^ (uint64_t)n);
    rc = WEFT_ENOMEM;
    lb->eps = malloc(n * sizeof *lb->eps);
    lb->ids = malloc(idbytes ? idbytes : 1);
    if (!lb->eps || !lb->ids)
        goto fail_free_lb;
    char *p = lb->ids;
    for (size_t i = 0; i < n; i++) {
        lb->eps[i] = eps[i];
        if (eps[i].ewma_stamp_us > lb->clock_us) /* state carried over from an old set */
            lb->clock_us = eps[i].ewma_stamp_us;
        if (eps[i].id) {
            size_t l = strlen(eps[i].id) + 1;
            memcpy(p, eps[i].id, l);
            lb->eps[i].id = p;
            p += l;
        }
    }
    if (algo == WEFT_LB_RANDOM) {
        lb->cum = malloc(n * sizeof *lb->cum);
        if (!lb->cum)
            goto fail_free_lb;
        uint64_t s = 0;
        for (size_t i = 0; i < n; i++)
            lb->cum[i] = s += eps[i].weight;
    } else if (algo == WEFT_LB_RING_HASH) {
        if ((rc = build_ring(lb)) < 0)
            goto fail_free_lb;
    } else if (algo == WEFT_LB_MAGLEV) {
        if ((rc = build_maglev(lb)) < 0)
            goto fail_free_lb;
    }
    *out = lb;
    return 0;
fail_free_lb:
    weft_lb_free(lb);
    return rc;
}

void weft_lb_free(weft_lb *lb)
{
    if (!lb)
        return;
    free(lb->table);
    free(lb->ring_start);
    free(lb->ring_idx);
    free(lb->ring_hash);
    free(lb->cum);
    free(lb->ids);
    free(lb->eps);
    free(lb);
}
