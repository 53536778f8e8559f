/*
 * resilience.h — the resilience toolkit shared by the gateway and the
 * service SDK: load balancers, circuit breaker, retry budget and backoff,
 * passive outlier detection, token-bucket rate limiting, adaptive
 * concurrency limit.
 *
 * Every primitive is pure logic over caller-owned state: time is passed in
 * (milliseconds or microseconds from the caller's monotonic clock) and
 * randomness comes from a caller-owned weft_rng, so behaviour is
 * deterministic under test and costs no syscalls. Nothing here locks or
 * allocates on the hot path; each worker keeps its own instances (the
 * gateway's design: per-worker state, nothing shared on the request path).
 *
 * Ownership: *_init works on caller memory; *_new and *_free allocate. Strings
 * passed in are copied when kept. Threading: none; one owner thread each.
 */
#ifndef WEFT_RESILIENCE_H
#define WEFT_RESILIENCE_H

#include "weft/weft.h"

/* ---- randomness: xoshiro-style PRNG, not for cryptography ---- */
typedef struct weft_rng {
    uint64_t s[4];
} weft_rng;
void weft_rng_seed(weft_rng *r, uint64_t seed);
uint64_t weft_rng_next(weft_rng *r);
uint64_t weft_rng_below(weft_rng *r, uint64_t n); /* uniform in [0, n), n > 0 */
double weft_rng_unit(weft_rng *r);               /* uniform in [0, 1) */

/* 64-bit hash of bytes (for hash-based balancing and rate-limit keys). */
uint64_t weft_hash64(const void *p, size_t n, uint64_t seed);

/* ---- backoff ---- */
/* Full jitter (AWS): uniform in [0, min(cap, base * 2^(retry-1))), retry >= 1. */
uint64_t weft_backoff_full_jitter(weft_rng *r, uint32_t retry, uint64_t base_ms, uint64_t cap_ms);

/* ---- retry budget (Finagle / Linkerd semantics) ----
 * Each original request deposits `percent` of a token; each retry withdraws
 * one; deposits expire after ttl; on top, min_per_sec retries per second are
 * always allowed. Defaults: 20 %, 10/s, 10 s. */
typedef struct weft_retry_budget {
    double percent;
    uint32_t min_per_sec;
    uint32_t ttl_ms;
    uint32_t bucket_ms;     /* ttl / WEFT_BUDGET_BUCKETS */
    uint64_t epoch;         /* index of the newest bucket */
    uint32_t deposits[10];  /* per bucket */
    uint32_t withdrawals[10];
} weft_retry_budget;
#define WEFT_BUDGET_BUCKETS 10
void weft_retry_budget_init(weft_retry_budget *b, double percent, uint32_t min_per_sec,
                            uint32_t ttl_ms);
void weft_retry_budget_deposit(weft_retry_budget *b, uint64_t now_ms);
/* Spend one retry if the budget allows; false = retry not allowed. */
bool weft_retry_budget_withdraw(weft_retry_budget *b, uint64_t now_ms);
/* Retries currently available (may be fractional). */
double weft_retry_budget_balance(weft_retry_budget *b, uint64_t now_ms);

/* The admission step every retry goes through (gateway and SDK client),
 * once the caller knows the failure is retriable and attempts are left:
 * draw the full-jitter backoff for retry number `retry` (>= 1) into
 * *backoff_ms; refuse with WEFT_RETRY_DEADLINE if the retry would not
 * finish before the deadline (now + backoff + expect_ms >= deadline_ms,
 * expect_ms being the caller's latency estimate, 0 if none); otherwise
 * spend one retry from budget b (NULL: no budget), WEFT_RETRY_BUDGET if it
 * is exhausted. WEFT_RETRY_GO means: start it after *backoff_ms. */
enum weft_retry_verdict { WEFT_RETRY_GO = 0, WEFT_RETRY_DEADLINE, WEFT_RETRY_BUDGET };
enum weft_retry_verdict weft_retry_admit(weft_rng *r, weft_retry_budget *b, uint32_t retry,
                                         uint64_t base_ms, uint64_t cap_ms, uint64_t now_ms,
                                         uint64_t expect_ms, uint64_t deadline_ms,
                                         uint64_t *backoff_ms);

/* ---- circuit breaker (Hystrix-style rolling window, resilience4j-style half-open) ---- */
enum weft_breaker_state { WEFT_BREAKER_CLOSED = 0, WEFT_BREAKER_OPEN, WEFT_BREAKER_HALF_OPEN };

typedef struct weft_breaker_opts {
    uint32_t window_ms;        /* rolling window; default 10000 */
    uint32_t min_requests;     /* volume needed before tripping; default 20 */
    uint32_t error_percent;    /* trip when failures*100/total >= this; default 50 */
    uint32_t sleep_ms;         /* open -> half-open after; default 5000 */
    uint32_t half_open_probes; /* concurrent probes allowed half-open; default 1 */
    uint64_t slow_call_us;     /* a success slower than this counts as failure; 0 = off */
} weft_breaker_opts;
void weft_breaker_opts_default(weft_breaker_opts *o);

#define WEFT_BREAKER_BUCKETS 10
typedef struct weft_breaker {
    weft_breaker_opts o;
    int state;
    uint64_t opened_at_ms;
    uint32_t probes_out;     /* half-open probes in flight */
    uint32_t probes_ok;      /* half-open probes succeeded */
    uint64_t epoch;
    uint32_t ok[WEFT_BREAKER_BUCKETS], fail[WEFT_BREAKER_BUCKETS];
    uint64_t transitions;    /* count of state changes (for metrics) */
} weft_breaker;
void weft_breaker_init(weft_breaker *b, const weft_breaker_opts *o);
/* May a request go out now? In half-open this takes a probe slot (then the
 * caller must call record or release for it). Open -> half-open happens here
 * once sleep_ms has passed. */
bool weft_breaker_allow(weft_breaker *b, uint64_t now_ms);
/* Outcome of an allowed request. */
void weft_breaker_record(weft_breaker *b, uint64_t now_ms, bool success, uint64_t duration_us);
/* An allowed request ended without an outcome (cancelled): free its probe slot. */
void weft_breaker_release(weft_breaker *b);
int weft_breaker_state(weft_breaker *b, uint64_t now_ms);
/* Counts in the current window (for admin/metrics). */
void weft_breaker_counts(weft_breaker *b, uint64_t now_ms, uint32_t *ok, uint32_t *fail);
const char *weft_breaker_state_name(int state);

/* ---- passive outlier detection (Envoy semantics) ---- */
typedef struct weft_outlier_opts {
    uint32_t consecutive_5xx;      /* default 5 (0 = off) */
    uint32_t consecutive_gateway;  /* default 5: 502/503/504 and connect/reset errors (0 = off) */
    uint32_t base_ejection_ms;     /* default 30000, multiplied by times ejected */
    uint32_t max_ejection_ms;      /* default 300000 */
    uint32_t max_ejection_percent; /* default 10; at least one host may always be ejected */
} weft_outlier_opts;
void weft_outlier_opts_default(weft_outlier_opts *o);

typedef struct weft_outlier_host {
    uint32_t consec_5xx;
    uint32_t consec_gateway;
    uint32_t times_ejected;
    uint64_t ejected_until_ms; /* 0 = not ejected */
} weft_outlier_host;

enum weft_outcome {
    WEFT_OUTCOME_SUCCESS = 0,  /* 1xx-4xx response */
    WEFT_OUTCOME_5XX,          /* 500, 501, 505... (not gateway errors) */
    WEFT_OUTCOME_GATEWAY,      /* 502, 503, 504 from the upstream */
    WEFT_OUTCOME_CONNECT_FAIL, /* refused / connect timeout / reset: counts as gateway error */
};
/* Record a result for hosts[i]; returns true if it made the host ejected now.
 * 5xx count for consecutive_5xx; gateway errors count for both. */
bool weft_outlier_record(const weft_outlier_opts *o, weft_outlier_host *hosts, size_t n, size_t i,
                         int outcome, uint64_t now_ms);
/* Un-eject hosts whose time is up; returns how many returned. */
size_t weft_outlier_tick(weft_outlier_host *hosts, size_t n, uint64_t now_ms);
static inline bool weft_outlier_ejected(const weft_outlier_host *h, uint64_t now_ms)
{
    return h->ejected_until_ms > now_ms;
}

/* ---- load balancing ---- */
enum weft_lb_algo {
    WEFT_LB_P2C_EWMA = 0,   /* default: power of two choices over peak-EWMA latency x load */
    WEFT_LB_ROUND_ROBIN,
    WEFT_LB_WEIGHTED_RR,    /* smooth weighted round robin (nginx) */
    WEFT_LB_LEAST_REQUEST,  /* fewest outstanding requests (weighted; P2C when n > 8) */
    WEFT_LB_RANDOM,         /* weighted random */
    WEFT_LB_RING_HASH,      /* consistent hashing on a ring (Ketama-style) */
    WEFT_LB_MAGLEV,         /* Maglev lookup table */
};
/* Parse "p2c_ewma|round_robin|weighted_round_robin|least_request|random|ring_hash|maglev". */
int weft_lb_algo_from(const char *name);
const char *weft_lb_algo_name(int algo);

typedef struct weft_lb_endpoint {
    /* set by the caller */
    const char *id;      /* stable identity for hashing ("10.0.0.1:8080"); copied by weft_lb_new */
    uint32_t weight;     /* >= 1 */
    bool healthy;        /* caller's view: active checks, ejection, ... */
    /* maintained by weft_lb_on_start / weft_lb_on_done */
    uint32_t inflight;
    double ewma_us;      /* peak-EWMA latency estimate, 0 = no sample yet */
    uint64_t ewma_stamp_us;
    int64_t swrr_current;
} weft_lb_endpoint;

typedef struct weft_lb weft_lb;
/* Build a balancer over a copy of eps[0..n). Returns 0 or WEFT_EINVAL/ENOMEM. */
int weft_lb_new(int algo, const weft_lb_endpoint *eps, size_t n, weft_lb **out);
void weft_lb_free(weft_lb *lb);
size_t weft_lb_size(const weft_lb *lb);
/* The balancer's own endpoint array: the caller updates .healthy in place. */
weft_lb_endpoint *weft_lb_endpoints(weft_lb *lb);
/*
 * Pick an endpoint index, or -1 if none is eligible. `key` is the hash key
 * (hash algorithms only). `exclude` lists indices not to use (endpoints
 * already tried by earlier attempts; ignored if that would leave nothing).
 * Panic mode: if fewer than panic_percent (default 50) of endpoints are
 * healthy, all endpoints are eligible.
 */
int weft_lb_pick(weft_lb *lb, uint64_t key, const int *exclude, size_t nexclude, weft_rng *rng);
void weft_lb_set_panic_percent(weft_lb *lb, uint32_t percent);
/* Whether the last pick ran in panic mode. */
bool weft_lb_in_panic(const weft_lb *lb);
/* Request accounting for least-request and EWMA. */
void weft_lb_on_start(weft_lb *lb, int idx);
void weft_lb_on_done(weft_lb *lb, int idx, uint64_t latency_us, uint64_t now_us);
/* EWMA decay time constant (default 10 s). */
void weft_lb_set_decay_us(weft_lb *lb, uint64_t tau_us);

/* ---- token-bucket rate limiter, keyed ---- */
typedef struct weft_ratelimit weft_ratelimit;
typedef struct weft_ratelimit_info {
    uint32_t limit;          /* bucket size (burst) */
    uint32_t remaining;      /* whole tokens left after this call */
    uint32_t reset_s;        /* seconds until the bucket is full again */
    uint32_t retry_after_s;  /* when denied: seconds until one token (>= 1) */
} weft_ratelimit_info;
/* rate tokens/second, burst bucket size, at most max_keys tracked (least
 * recently used keys are forgotten beyond that: they start with a full bucket). */
weft_ratelimit *weft_ratelimit_new(double rate_per_sec, uint32_t burst, size_t max_keys);
void weft_ratelimit_free(weft_ratelimit *rl);
bool weft_ratelimit_take(weft_ratelimit *rl, weft_str key, uint64_t now_us, weft_ratelimit_info *info);

/* ---- adaptive concurrency limit (Gradient2, Netflix concurrency-limits) ---- */
typedef struct weft_adaptive_opts {
    uint32_t initial_limit; /* default 20 */
    uint32_t min_limit;     /* default 5 */
    uint32_t max_limit;     /* default 1000 */
    double smoothing;       /* default 0.2 */
    uint32_t queue_size;    /* default 4 */
    uint32_t long_window;   /* samples in the long RTT EMA; default 600 */
} weft_adaptive_opts;
void weft_adaptive_opts_default(weft_adaptive_opts *o);
typedef struct weft_adaptive {
    weft_adaptive_opts o;
    double limit;
    double long_rtt;  /* EMA over long_window samples */
    double short_rtt; /* last sample */
    uint32_t inflight;
    uint64_t samples;
} weft_adaptive;
void weft_adaptive_init(weft_adaptive *a, const weft_adaptive_opts *o);
/* Admit a request (inflight < limit); false = shed it (503). */
bool weft_adaptive_acquire(weft_adaptive *a);
/* Finish an admitted request; dropped = timed out / overloaded. */
void weft_adaptive_release(weft_adaptive *a, uint64_t rtt_us, bool dropped);
static inline uint32_t weft_adaptive_limit(const weft_adaptive *a) { return (uint32_t)a->limit; }

#endif
