/*
 * test_resilience_lb.c — load balancers: each algorithm's distribution
 * checked against its definition over 10^4–10^5 picks with fixed seeds,
 * plus eligibility (health, panic, exclusion), stickiness of the hash
 * algorithms and argument validation.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include <cmocka.h>

#include "weft/resilience.h"

#define MAXE 32
static const char *const ids[MAXE] = {
    "10.0.0.1:8080",  "10.0.0.2:8080",  "10.0.0.3:8080",  "10.0.0.4:8080",  "10.0.0.5:8080",
    "10.0.0.6:8080",  "10.0.0.7:8080",  "10.0.0.8:8080",  "10.0.0.9:8080",  "10.0.0.10:8080",
    "10.0.0.11:8080", "10.0.0.12:8080", "10.0.0.13:8080", "10.0.0.14:8080", "10.0.0.15:8080",
    "10.0.0.16:8080", "10.0.0.17:8080", "10.0.0.18:8080", "10.0.0.19:8080", "10.0.0.20:8080",
    "10.0.0.21:8080", "10.0.0.22:8080", "10.0.0.23:8080", "10.0.0.24:8080", "10.0.0.25:8080",
    "10.0.0.26:8080", "10.0.0.27:8080", "10.0.0.28:8080", "10.0.0.29:8080", "10.0.0.30:8080",
    "10.0.0.31:8080", "10.0.0.32:8080",
};

/* A balancer over n endpoints with the given weights (NULL = all 1). */
static weft_lb *make_lb(int algo, size_t n, const uint32_t *weights)
{
    weft_lb_endpoint eps[MAXE];
    memset(eps, 0, sizeof eps);
    for (size_t i = 0; i < n; i++) {
        eps[i].id = ids[i];
        eps[i].weight = weights ? weights[i] : 1;
        eps[i].healthy = true;
    }
    weft_lb *lb = NULL;
    assert_int_equal(weft_lb_new(algo, eps, n, &lb), 0);
    assert_non_null(lb);
    return lb;
}

static void count_picks(weft_lb *lb, weft_rng *r, int picks, long *counts)
{
    for (int i = 0; i < picks; i++) {
        int k = weft_lb_pick(lb, weft_rng_next(r), NULL, 0, r);
        assert_true(k >= 0 && (size_t)k < weft_lb_size(lb));
        counts[k]++;
    }
}

static void assert_share(long count, long total, double want, double tol)
{
    double got = (double)count / (double)total;
    if (fabs(got - want) > tol) {
        print_error("share %.4f, expected %.4f ± %.4f\n", got, want, tol);
        fail();
    }
}

static const int all_algos[] = {WEFT_LB_P2C_EWMA,      WEFT_LB_ROUND_ROBIN, WEFT_LB_WEIGHTED_RR,
                                WEFT_LB_LEAST_REQUEST, WEFT_LB_RANDOM,      WEFT_LB_RING_HASH,
                                WEFT_LB_MAGLEV};
#define NALGOS (sizeof all_algos / sizeof all_algos[0])

/* ---- API ---- */

static void test_lb_algo_names(void **state)
{
    (void)state;
    for (size_t i = 0; i < NALGOS; i++)
        assert_int_equal(weft_lb_algo_from(weft_lb_algo_name(all_algos[i])), all_algos[i]);
    assert_int_equal(weft_lb_algo_from("p2c_ewma"), WEFT_LB_P2C_EWMA);
    assert_int_equal(weft_lb_algo_from("weighted_round_robin"), WEFT_LB_WEIGHTED_RR);
    assert_int_equal(weft_lb_algo_from("maglev"), WEFT_LB_MAGLEV);
    assert_int_equal(weft_lb_algo_from("Maglev"), WEFT_EINVAL);
    assert_int_equal(weft_lb_algo_from(""), WEFT_EINVAL);
    assert_int_equal(weft_lb_algo_from(NULL), WEFT_EINVAL);
    assert_string_equal(weft_lb_algo_name(99), "unknown");
    assert_string_equal(weft_lb_algo_name(-1), "unknown");
}

static void test_lb_new_invalid(void **state)
{
    (void)state;
    weft_lb_endpoint eps[2] = {{.id = "a", .weight = 1, .healthy = true},
                               {.id = "b", .weight = 1, .healthy = true}};
    weft_lb *lb = (weft_lb *)&eps; /* must be reset to NULL on failure */
    assert_int_equal(weft_lb_new(WEFT_LB_ROUND_ROBIN, eps, 0, &lb), WEFT_EINVAL);
    assert_null(lb);
    assert_int_equal(weft_lb_new(WEFT_LB_ROUND_ROBIN, NULL, 2, &lb), WEFT_EINVAL);
    assert_int_equal(weft_lb_new(WEFT_LB_ROUND_ROBIN, eps, 2, NULL), WEFT_EINVAL);
    assert_int_equal(weft_lb_new(-1, eps, 2, &lb), WEFT_EINVAL);
    assert_int_equal(weft_lb_new(WEFT_LB_MAGLEV + 1, eps, 2, &lb), WEFT_EINVAL);
    eps[1].weight = 0; /* documented: weight 0 is rejected */
    assert_int_equal(weft_lb_new(WEFT_LB_WEIGHTED_RR, eps, 2, &lb), WEFT_EINVAL);
    eps[1].weight = 1;
    eps[1].id = NULL; /* hash algorithms need ids, others do not */
    assert_int_equal(weft_lb_new(WEFT_LB_RING_HASH, eps, 2, &lb), WEFT_EINVAL);
    assert_int_equal(weft_lb_new(WEFT_LB_MAGLEV, eps, 2, &lb), WEFT_EINVAL);
    assert_int_equal(weft_lb_new(WEFT_LB_ROUND_ROBIN, eps, 2, &lb), 0);
    assert_null(weft_lb_endpoints(lb)[1].id);
    weft_lb_free(lb);
    /* NULL balancer is bad input everywhere */
    assert_int_equal(weft_lb_pick(NULL, 0, NULL, 0, NULL), -1);
    assert_int_equal(weft_lb_size(NULL), 0);
    assert_null(weft_lb_endpoints(NULL));
    assert_false(weft_lb_in_panic(NULL));
    weft_lb_on_start(NULL, 0);
    weft_lb_on_done(NULL, 0, 1, 1);
    weft_lb_set_panic_percent(NULL, 1);
    weft_lb_set_decay_us(NULL, 1);
    weft_lb_free(NULL);
}

static void test_lb_copies_endpoints(void **state)
{
    (void)state;
    char id[16] = "host-a:80";
    weft_lb_endpoint ep = {.id = id, .weight = 3, .healthy = true};
    weft_lb *lb = NULL;
    assert_int_equal(weft_lb_new(WEFT_LB_RING_HASH, &ep, 1, &lb), 0);
    strcpy(id, "changed");
    ep.weight = 9;
    assert_int_equal(weft_lb_size(lb), 1);
    weft_lb_endpoint *e = weft_lb_endpoints(lb);
    assert_string_equal(e[0].id, "host-a:80");
    assert_ptr_not_equal(e[0].id, id);
    assert_int_equal(e[0].weight, 3);
    weft_lb_free(lb);
}

static void test_lb_single_endpoint(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 1);
    for (size_t a = 0; a < NALGOS; a++) {
        weft_lb *lb = make_lb(all_algos[a], 1, NULL);
        for (int i = 0; i < 100; i++)
            assert_int_equal(weft_lb_pick(lb, (uint64_t)i, NULL, 0, &r), 0);
        int ex = 0; /* excluding the only endpoint is ignored */
        assert_int_equal(weft_lb_pick(lb, 7, &ex, 1, &r), 0);
        weft_lb_endpoints(lb)[0].healthy = false; /* 0 % healthy: panic */
        assert_int_equal(weft_lb_pick(lb, 7, NULL, 0, &r), 0);
        assert_true(weft_lb_in_panic(lb));
        weft_lb_free(lb);
    }
}

/* ---- round robin ---- */

static void test_rr_equal_counts(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 2);
    weft_lb *lb = make_lb(WEFT_LB_ROUND_ROBIN, 4, NULL);
    for (int i = 0; i < 8; i++)
        assert_int_equal(weft_lb_pick(lb, 0, NULL, 0, &r), i % 4);
    long c[4] = {0};
    count_picks(lb, &r, 10000, c);
    for (int i = 0; i < 4; i++)
        assert_int_equal(c[i], 2500);
    assert_false(weft_lb_in_panic(lb));
    weft_lb_free(lb);
}

static void test_rr_skips_unhealthy(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 3);
    weft_lb *lb = make_lb(WEFT_LB_ROUND_ROBIN, 4, NULL);
    weft_lb_endpoints(lb)[2].healthy = false; /* 75 % healthy: no panic */
    long c[4] = {0};
    count_picks(lb, &r, 9000, c);
    assert_int_equal(c[0], 3000);
    assert_int_equal(c[1], 3000);
    assert_int_equal(c[2], 0);
    assert_int_equal(c[3], 3000);
    assert_false(weft_lb_in_panic(lb));
    weft_lb_free(lb);
}

/* ---- smooth weighted round robin ---- */

static void test_wrr_nginx_sequence(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 4);
    const uint32_t w[3] = {5, 1, 1};
    weft_lb *lb = make_lb(WEFT_LB_WEIGHTED_RR, 3, w);
    const int want[7] = {0, 0, 1, 0, 2, 0, 0}; /* a a b a c a a */
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < 7; i++)
            assert_int_equal(weft_lb_pick(lb, 0, NULL, 0, &r), want[i]);
    long c[3] = {0};
    count_picks(lb, &r, 7000, c);
    assert_int_equal(c[0], 5000);
    assert_int_equal(c[1], 1000);
    assert_int_equal(c[2], 1000);
    weft_lb_free(lb);
}

static void test_wrr_exact_ratio_and_health(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 5);
    const uint32_t w[4] = {3, 2, 1, 4};
    weft_lb *lb = make_lb(WEFT_LB_WEIGHTED_RR, 4, w);
    long c[4] = {0};
    count_picks(lb, &r, 10000, c);
    assert_int_equal(c[0], 3000);
    assert_int_equal(c[1], 2000);
    assert_int_equal(c[2], 1000);
    assert_int_equal(c[3], 4000);
    /* one unhealthy: the others keep their exact ratio (3:2:1 over 6000) */
    weft_lb_endpoints(lb)[3].healthy = false;
    memset(c, 0, sizeof c);
    count_picks(lb, &r, 6000, c);
    assert_true(c[0] >= 2999 && c[0] <= 3001);
    assert_true(c[1] >= 1999 && c[1] <= 2001);
    assert_true(c[2] >= 999 && c[2] <= 1001);
    assert_int_equal(c[3], 0);
    weft_lb_free(lb);
}

/* ---- random ---- */

static void test_random_weighted(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 6);
    const uint32_t w[4] = {1, 2, 3, 4};
    weft_lb *lb = make_lb(WEFT_LB_RANDOM, 4, w);
    long c[4] = {0};
    count_picks(lb, &r, 200000, c);
    for (int i = 0; i < 4; i++)
        assert_share(c[i], 200000, w[i] / 10.0, 0.03 * w[i] / 10.0); /* ±3 % relative */
    /* endpoint 3 unhealthy: the rest keep proportions 1:2:3 */
    weft_lb_endpoints(lb)[3].healthy = false;
    memset(c, 0, sizeof c);
    count_picks(lb, &r, 120000, c);
    assert_int_equal(c[3], 0);
    for (int i = 0; i < 3; i++)
        assert_share(c[i], 120000, w[i] / 6.0, 0.03 * w[i] / 6.0);
    weft_lb_free(lb);
}

/* ---- least request ---- */

static void test_least_request_avoids_busy(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 7);
    weft_lb *lb = make_lb(WEFT_LB_LEAST_REQUEST, 4, NULL);
    weft_lb_endpoints(lb)[0].inflight = 10;
    long c[4] = {0};
    count_picks(lb, &r, 30000, c); /* no on_start: ties among 1..3 broken randomly */
    assert_int_equal(c[0], 0);
    for (int i = 1; i < 4; i++)
        assert_share(c[i], 30000, 1.0 / 3, 0.02);
    /* with accounting the picks fill the idle endpoints up to the busy one */
    for (int i = 0; i < 30; i++)
        weft_lb_on_start(lb, weft_lb_pick(lb, 0, NULL, 0, &r));
    weft_lb_endpoint *e = weft_lb_endpoints(lb);
    for (int i = 0; i < 4; i++)
        assert_int_equal(e[i].inflight, 10);
    weft_lb_free(lb);
}

static void test_least_request_weighted(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 8);
    const uint32_t w[2] = {1, 3};
    weft_lb *lb = make_lb(WEFT_LB_LEAST_REQUEST, 2, w);
    for (int i = 0; i < 400; i++)
        weft_lb_on_start(lb, weft_lb_pick(lb, 0, NULL, 0, &r));
    weft_lb_endpoint *e = weft_lb_endpoints(lb);
    /* (inflight+1)/weight stays level: inflight ≈ 1:3 */
    assert_true(e[0].inflight >= 99 && e[0].inflight <= 101);
    assert_int_equal(e[0].inflight + e[1].inflight, 400);
    weft_lb_free(lb);
}

static void test_least_request_p2c_large(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 9);
    weft_lb *lb = make_lb(WEFT_LB_LEAST_REQUEST, 16, NULL); /* > 8: power of two choices */
    weft_lb_endpoints(lb)[5].inflight = 100;
    long c[16] = {0};
    count_picks(lb, &r, 32000, c);
    assert_int_equal(c[5], 0); /* can only lose its pair */
    for (int i = 0; i < 16; i++)
        if (i != 5)
            assert_share(c[i], 32000, 1.0 / 15, 0.01);
    weft_lb_free(lb);
}

/* ---- P2C peak EWMA ---- */

static void test_p2c_ewma_avoids_slow(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 10);
    weft_lb *lb = make_lb(WEFT_LB_P2C_EWMA, 5, NULL);
    long c[5] = {0};
    uint64_t now = 0;
    for (int i = 0; i < 20000; i++) {
        int k = weft_lb_pick(lb, 0, NULL, 0, &r);
        assert_true(k >= 0 && k < 5);
        c[k]++;
        weft_lb_on_start(lb, k);
        now += 100;
        weft_lb_on_done(lb, k, k == 0 ? 10000 : 1000, now); /* endpoint 0 is 10x slower */
    }
    assert_true(c[0] * 10 < 20000);
    for (int i = 1; i < 5; i++)
        assert_share(c[i], 20000, 0.25, 0.05);
    weft_lb_free(lb);
}

static void test_p2c_ewma_costs(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 11);
    weft_lb *lb = make_lb(WEFT_LB_P2C_EWMA, 2, NULL);
    weft_lb_endpoint *e = weft_lb_endpoints(lb);
    /* an unsampled idle endpoint costs 0: it wins every pair */
    e[0].ewma_us = 500;
    for (int i = 0; i < 100; i++)
        assert_int_equal(weft_lb_pick(lb, 0, NULL, 0, &r), 1);
    /* unsampled but busy: huge penalty */
    e[1].inflight = 1;
    e[0].inflight = 50;
    for (int i = 0; i < 100; i++)
        assert_int_equal(weft_lb_pick(lb, 0, NULL, 0, &r), 0);
    /* sampled: ewma × (inflight+1) / weight */
    e[1].ewma_us = 1000;
    e[1].inflight = 0; /* cost 1000 vs 500 × 51 */
    for (int i = 0; i < 100; i++)
        assert_int_equal(weft_lb_pick(lb, 0, NULL, 0, &r), 1);
    e[0].inflight = 0; /* 500 vs 1000 */
    for (int i = 0; i < 100; i++)
        assert_int_equal(weft_lb_pick(lb, 0, NULL, 0, &r), 0);
    weft_lb_free(lb);
    /* weight divides the cost */
    const uint32_t w[2] = {4, 1};
    lb = make_lb(WEFT_LB_P2C_EWMA, 2, w);
    e = weft_lb_endpoints(lb);
    e[0].ewma_us = 3000; /* 750 */
    e[1].ewma_us = 1000; /* 1000 */
    for (int i = 0; i < 100; i++)
        assert_int_equal(weft_lb_pick(lb, 0, NULL, 0, &r), 0);
    weft_lb_free(lb);
}

static void test_p2c_ewma_peak_decay(void **state)
{
    (void)state;
    weft_lb *lb = make_lb(WEFT_LB_P2C_EWMA, 2, NULL);
    weft_lb_endpoint *e = weft_lb_endpoints(lb);
    weft_lb_on_start(lb, 0);
    weft_lb_on_done(lb, 0, 1000, 1000000);
    assert_true(e[0].ewma_us == 1000.0); /* first sample sets it */
    assert_int_equal(e[0].inflight, 0);
    assert_int_equal(e[0].ewma_stamp_us, 1000000);
    weft_lb_on_done(lb, 0, 5000, 1000001); /* peak: jumps straight up */
    assert_true(e[0].ewma_us == 5000.0);
    assert_int_equal(e[0].inflight, 0);     /* never below zero */
    weft_lb_on_done(lb, 0, 1000, 11000001); /* Δt = τ = 10 s */
    double want = 5000 * exp(-1.0) + 1000 * (1 - exp(-1.0));
    assert_true(fabs(e[0].ewma_us - want) < 1e-6);
    weft_lb_set_decay_us(lb, 1000000); /* τ = 1 s: Δt = 5 τ */
    weft_lb_on_done(lb, 0, 1000, 16000001);
    want = want * exp(-5.0) + 1000 * (1 - exp(-5.0));
    assert_true(fabs(e[0].ewma_us - want) < 1e-6);
    weft_lb_set_decay_us(lb, 0); /* no memory: the latest sample */
    weft_lb_on_done(lb, 0, 10, 16000002);
    assert_true(e[0].ewma_us == 10.0);
    weft_lb_on_done(lb, 0, 0, 16000003); /* floored at 1 µs: 0 keeps meaning unsampled */
    assert_true(e[0].ewma_us == 1.0);
    /* out-of-range indices are ignored */
    weft_lb_on_start(lb, -1);
    weft_lb_on_start(lb, 2);
    weft_lb_on_done(lb, 7, 1, 1);
    assert_int_equal(e[1].inflight, 0);
    weft_lb_free(lb);
}

/* An endpoint whose estimate once peaked is never chosen again unless its
 * cost also decays with time at pick (Finagle decays the estimate toward 0
 * when it is read): otherwise, with two endpoints, one slow response
 * starves it for good, since it loses every comparison and never gets the
 * sample that would lower its estimate. */
static void test_p2c_ewma_peak_decays_without_samples(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 16);
    weft_lb *lb = make_lb(WEFT_LB_P2C_EWMA, 2, NULL);
    uint64_t now = 1000000;
    weft_lb_on_start(lb, 0);
    weft_lb_on_done(lb, 0, 1000, now);    /* 1 ms */
    weft_lb_on_start(lb, 1);
    weft_lb_on_done(lb, 1, 1000000, now); /* one 1 s spike */
    int first_back = -1;
    /* 3000 requests, one every 100 ms: 300 s = 30 τ of simulated time */
    for (int i = 0; i < 3000 && first_back < 0; i++) {
        now += 100000;
        int k = weft_lb_pick(lb, 0, NULL, 0, &r);
        assert_true(k == 0 || k == 1);
        if (k == 1)
            first_back = i;
        weft_lb_on_start(lb, k);
        weft_lb_on_done(lb, k, 1000, now);
    }
    /* cost 10^6 · e^(−t/τ) falls below 10^3 after τ·ln 1000 ≈ 69 s */
    assert_true(first_back >= 600 && first_back <= 800);
    weft_lb_free(lb);
}

/* ---- panic and exclusion, every algorithm ---- */

static void test_lb_panic_mode(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 12);
    for (size_t a = 0; a < NALGOS; a++) {
        weft_lb *lb = make_lb(all_algos[a], 4, NULL);
        weft_lb_endpoint *e = weft_lb_endpoints(lb);
        e[0].healthy = e[1].healthy = false; /* 50 %: not below the threshold */
        long c[4] = {0};
        count_picks(lb, &r, 4000, c);
        assert_int_equal(c[0] + c[1], 0);
        assert_false(weft_lb_in_panic(lb));
        e[2].healthy = false; /* 25 % healthy: panic, all eligible */
        memset(c, 0, sizeof c);
        count_picks(lb, &r, 4000, c);
        assert_true(weft_lb_in_panic(lb));
        if (all_algos[a] != WEFT_LB_RING_HASH && all_algos[a] != WEFT_LB_MAGLEV) {
            for (int i = 0; i < 4; i++)
                assert_true(c[i] > 400);
        } else {
            assert_true(c[0] + c[1] + c[2] > 1000);
        }
        for (int i = 0; i < 4; i++) /* 0 % healthy is panic too */
            e[i].healthy = false;
        assert_true(weft_lb_pick(lb, 1, NULL, 0, &r) >= 0);
        assert_true(weft_lb_in_panic(lb));
        weft_lb_set_panic_percent(lb, 0); /* panic off: nothing eligible */
        assert_int_equal(weft_lb_pick(lb, 1, NULL, 0, &r), -1);
        assert_false(weft_lb_in_panic(lb));
        e[3].healthy = true;
        assert_int_equal(weft_lb_pick(lb, 1, NULL, 0, &r), 3);
        weft_lb_set_panic_percent(lb, 500); /* clamped to 100: any unhealthy → panic */
        assert_true(weft_lb_pick(lb, 1, NULL, 0, &r) >= 0);
        assert_true(weft_lb_in_panic(lb));
        weft_lb_free(lb);
    }
}

static void test_lb_exclusion(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 13);
    for (size_t a = 0; a < NALGOS; a++) {
        weft_lb *lb = make_lb(all_algos[a], 4, NULL);
        const int ex[] = {0, 1, 1, -5, 99}; /* duplicates and junk are harmless */
        long c[4] = {0};
        for (int i = 0; i < 4000; i++) {
            int k = weft_lb_pick(lb, weft_rng_next(&r), ex, 5, &r);
            assert_true(k == 2 || k == 3);
            c[k]++;
        }
        assert_true(c[2] > 1000 && c[3] > 1000);
        /* excluding everything eligible: exclusion is ignored */
        const int all[] = {0, 1, 2, 3};
        memset(c, 0, sizeof c);
        for (int i = 0; i < 4000; i++)
            c[weft_lb_pick(lb, weft_rng_next(&r), all, 4, &r)]++;
        for (int i = 0; i < 4; i++)
            assert_true(c[i] > 400);
        /* healthy {2,3}, both excluded → fall back to the healthy ones only */
        weft_lb_endpoint *e = weft_lb_endpoints(lb);
        e[0].healthy = e[1].healthy = false;
        const int ex23[] = {2, 3};
        for (int i = 0; i < 1000; i++) {
            int k = weft_lb_pick(lb, weft_rng_next(&r), ex23, 2, &r);
            assert_true(k == 2 || k == 3);
        }
        assert_true(weft_lb_pick(lb, 5, ex23, 0, &r) >= 2); /* nexclude 0: list unused */
        assert_true(weft_lb_pick(lb, 5, NULL, 3, &r) >= 2); /* NULL list with a count */
        weft_lb_free(lb);
    }
}

static void test_lb_null_rng_uses_own(void **state)
{
    (void)state;
    for (size_t a = 0; a < NALGOS; a++) {
        weft_lb *lb = make_lb(all_algos[a], 5, NULL);
        for (int i = 0; i < 1000; i++) {
            int k = weft_lb_pick(lb, (uint64_t)i, NULL, 0, NULL);
            assert_true(k >= 0 && k < 5);
        }
        weft_lb_free(lb);
    }
}

/* ---- hash algorithms ---- */

#define NKEYS 20000

static void map_keys(weft_lb *lb, int *out, uint64_t salt)
{
    weft_rng r;
    weft_rng_seed(&r, 1);
    for (int i = 0; i < NKEYS; i++) {
        char buf[32];
        int l = snprintf(buf, sizeof buf, "user-%d", i);
        out[i] = weft_lb_pick(lb, weft_hash64(buf, (size_t)l, salt), NULL, 0, &r);
    }
}

static void check_sticky_when_unhealthy(int algo)
{
    int *before = malloc(NKEYS * sizeof *before), *after = malloc(NKEYS * sizeof *after);
    assert_non_null(before);
    assert_non_null(after);
    weft_lb *lb = make_lb(algo, 5, NULL);
    map_keys(lb, before, 0);
    map_keys(lb, after, 0);
    assert_memory_equal(before, after, NKEYS * sizeof *before); /* same key, same endpoint */
    weft_lb_endpoints(lb)[2].healthy = false;
    map_keys(lb, after, 0);
    long stayed = 0, others = 0, moved_to[5] = {0};
    for (int i = 0; i < NKEYS; i++) {
        if (before[i] == 2) {
            assert_true(after[i] != 2);
            moved_to[after[i]]++;
        } else {
            others++;
            stayed += after[i] == before[i];
        }
    }
    assert_true(stayed * 100 >= others * 99);
    for (int i = 0; i < 5; i++) /* the orphaned keys spread over the survivors */
        if (i != 2)
            assert_true(moved_to[i] > 0);
    /* healthy again: every key returns */
    weft_lb_endpoints(lb)[2].healthy = true;
    map_keys(lb, after, 0);
    assert_memory_equal(before, after, NKEYS * sizeof *before);
    weft_lb_free(lb);
    free(before);
    free(after);
}

static void check_rebuild_without_one(int algo, long max_moved_permille)
{
    int *before = malloc(NKEYS * sizeof *before), *after = malloc(NKEYS * sizeof *after);
    assert_non_null(before);
    assert_non_null(after);
    weft_lb *lb = make_lb(algo, 5, NULL);
    map_keys(lb, before, 7);
    weft_lb_free(lb);
    lb = make_lb(algo, 4, NULL); /* endpoint 4 removed from the set */
    map_keys(lb, after, 7);
    long moved = 0, others = 0;
    for (int i = 0; i < NKEYS; i++) {
        if (before[i] == 4)
            continue;
        others++;
        moved += after[i] != before[i];
    }
    if (moved * 1000 > others * max_moved_permille) {
        print_error("%ld of %ld keys moved\n", moved, others);
        free(before);
        free(after);
        weft_lb_free(lb);
        fail();
    }
    weft_lb_free(lb);
    free(before);
    free(after);
}

static void test_ring_hash_distribution(void **state)
{
    (void)state;
    weft_lb *lb = make_lb(WEFT_LB_RING_HASH, 5, NULL);
    int *m = malloc(NKEYS * sizeof *m);
    assert_non_null(m);
    map_keys(lb, m, 0);
    long c[5] = {0};
    for (int i = 0; i < NKEYS; i++)
        c[m[i]]++;
    for (int i = 0; i < 5; i++)
        assert_share(c[i], NKEYS, 0.2, 0.06); /* 100 points each: a few % of jitter */
    weft_lb_free(lb);
    const uint32_t w[2] = {1, 3};
    lb = make_lb(WEFT_LB_RING_HASH, 2, w);
    map_keys(lb, m, 0);
    long h = 0;
    for (int i = 0; i < NKEYS; i++)
        h += m[i] == 1;
    assert_share(h, NKEYS, 0.75, 0.06);
    weft_lb_free(lb);
    free(m);
}

static void test_ring_hash_sticky(void **state)
{
    (void)state;
    check_sticky_when_unhealthy(WEFT_LB_RING_HASH);
    check_rebuild_without_one(WEFT_LB_RING_HASH, 0); /* ring points depend only on ids */
}

static void test_ring_hash_exclusion_deterministic(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 14);
    weft_lb *lb = make_lb(WEFT_LB_RING_HASH, 5, NULL);
    for (uint64_t k = 0; k < 200; k++) {
        int first = weft_lb_pick(lb, k, NULL, 0, &r);
        int second = weft_lb_pick(lb, k, &first, 1, &r);
        assert_true(second != first);
        assert_int_equal(weft_lb_pick(lb, k, &first, 1, &r), second);
    }
    weft_lb_free(lb);
}

static void test_maglev_balanced(void **state)
{
    (void)state;
    weft_lb *lb = make_lb(WEFT_LB_MAGLEV, 5, NULL);
    int *m = malloc(NKEYS * sizeof *m);
    assert_non_null(m);
    map_keys(lb, m, 0);
    long c[5] = {0};
    for (int i = 0; i < NKEYS; i++)
        c[m[i]]++;
    for (int i = 0; i < 5; i++)
        assert_share(c[i], NKEYS, 0.2, 0.02); /* ±10 % of the fair share */
    weft_lb_free(lb);
    const uint32_t w[4] = {1, 2, 3, 4};
    lb = make_lb(WEFT_LB_MAGLEV, 4, w);
    map_keys(lb, m, 0);
    memset(c, 0, sizeof c);
    for (int i = 0; i < NKEYS; i++)
        c[m[i]]++;
    for (int i = 0; i < 4; i++)
        assert_share(c[i], NKEYS, w[i] / 10.0, 0.1 * w[i] / 10.0);
    weft_lb_free(lb);
    free(m);
}

static void test_maglev_sticky(void **state)
{
    (void)state;
    check_sticky_when_unhealthy(WEFT_LB_MAGLEV);
    check_rebuild_without_one(WEFT_LB_MAGLEV, 30); /* Maglev: small, nonzero disruption */
}

/* A balancer over n endpoints named "h0".."h{n-1}", weight 1. */
static weft_lb *make_named_lb(int algo, size_t n, char (*names)[16], weft_lb_endpoint *eps)
{
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "h%u", (unsigned)(i % 100000));
        eps[i] = (weft_lb_endpoint){.id = names[i], .weight = 1, .healthy = true};
    }
    weft_lb *lb = NULL;
    assert_int_equal(weft_lb_new(algo, eps, n, &lb), 0);
    return lb;
}

/* Adding one endpoint must leave the other endpoints' keys where they were
 * (bar Maglev's small table disruption), whatever the set's size: a table
 * size that grows with the endpoint count (50 → 51 endpoints crossing a
 * size step) would remap almost every key. */
static void test_maglev_consistent_across_sizes(void **state)
{
    (void)state;
    static const size_t sizes[] = {10, 50, 100, 200};
    weft_lb_endpoint *eps = calloc(201, sizeof *eps);
    char(*names)[16] = calloc(201, sizeof *names);
    int *before = malloc(NKEYS * sizeof *before), *after = malloc(NKEYS * sizeof *after);
    assert_true(eps && names && before && after);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s];
        weft_lb *lb = make_named_lb(WEFT_LB_MAGLEV, n, names, eps);
        map_keys(lb, before, 3);
        weft_lb_free(lb);
        lb = make_named_lb(WEFT_LB_MAGLEV, n + 1, names, eps); /* h{n} added */
        map_keys(lb, after, 3);
        weft_lb_free(lb);
        long moved = 0, to_new = 0;
        for (int i = 0; i < NKEYS; i++) {
            if ((size_t)after[i] == n)
                to_new++;
            else
                moved += after[i] != before[i];
        }
        if (moved * 100 > NKEYS * 3 || to_new == 0) {
            print_error("%zu -> %zu endpoints: %ld of %d keys moved between old endpoints, "
                        "%ld to the new one\n",
                        n, n + 1, moved, NKEYS, to_new);
            free(after);
            free(before);
            free(names);
            free(eps);
            fail();
        }
    }
    free(after);
    free(before);
    free(names);
    free(eps);
}

static void test_maglev_many_endpoints(void **state)
{
    (void)state;
    weft_lb_endpoint *eps = calloc(700, sizeof *eps);
    char(*names)[16] = calloc(700, sizeof *names);
    assert_non_null(eps);
    assert_non_null(names);
    for (int i = 0; i < 700; i++) {
        snprintf(names[i], sizeof names[i], "h%d", i);
        eps[i] =
            (weft_lb_endpoint){.id = names[i], .weight = 1 + (uint32_t)(i % 3), .healthy = true};
    }
    weft_lb *lb = NULL;
    assert_int_equal(weft_lb_new(WEFT_LB_MAGLEV, eps, 700, &lb), 0);
    long *c = calloc(700, sizeof *c);
    assert_non_null(c);
    weft_rng r;
    weft_rng_seed(&r, 15);
    for (int i = 0; i < 100000; i++)
        c[weft_lb_pick(lb, weft_rng_next(&r), NULL, 0, &r)]++;
    for (int i = 0; i < 700; i++)
        assert_true(c[i] > 0); /* every endpoint reachable */
    weft_lb_free(lb);
    assert_int_equal(weft_lb_new(WEFT_LB_RING_HASH, eps, 700, &lb), 0);
    assert_true(weft_lb_pick(lb, 1, NULL, 0, &r) >= 0);
    weft_lb_free(lb);
    free(c);
    free(names);
    free(eps);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lb_algo_names),
        cmocka_unit_test(test_lb_new_invalid),
        cmocka_unit_test(test_lb_copies_endpoints),
        cmocka_unit_test(test_lb_single_endpoint),
        cmocka_unit_test(test_rr_equal_counts),
        cmocka_unit_test(test_rr_skips_unhealthy),
        cmocka_unit_test(test_wrr_nginx_sequence),
        cmocka_unit_test(test_wrr_exact_ratio_and_health),
        cmocka_unit_test(test_random_weighted),
        cmocka_unit_test(test_least_request_avoids_busy),
        cmocka_unit_test(test_least_request_weighted),
        cmocka_unit_test(test_least_request_p2c_large),
        cmocka_unit_test(test_p2c_ewma_avoids_slow),
        cmocka_unit_test(test_p2c_ewma_costs),
        cmocka_unit_test(test_p2c_ewma_peak_decay),
        cmocka_unit_test(test_p2c_ewma_peak_decays_without_samples),
        cmocka_unit_test(test_lb_panic_mode),
        cmocka_unit_test(test_lb_exclusion),
        cmocka_unit_test(test_lb_null_rng_uses_own),
        cmocka_unit_test(test_ring_hash_distribution),
        cmocka_unit_test(test_ring_hash_sticky),
        cmocka_unit_test(test_ring_hash_exclusion_deterministic),
        cmocka_unit_test(test_maglev_balanced),
        cmocka_unit_test(test_maglev_sticky),
        cmocka_unit_test(test_maglev_many_endpoints),
        cmocka_unit_test(test_maglev_consistent_across_sizes),
    };
    return cmocka_run_group_tests_name("resilience_lb", tests, NULL, NULL);
}
