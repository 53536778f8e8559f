/*
 * test_resilience_rng.c — randomness, hashing, backoff and the retry budget.
 *
 * Fixed seeds and explicit clocks make every case deterministic; statistical
 * checks use bounds that a correct implementation passes with overwhelming
 * margin (chi-square at p = 0.001), so a failure means a real defect.
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

#define assert_near(a, b, eps)                                                                     \
    do {                                                                                           \
        double a_ = (a), b_ = (b);                                                                 \
        if (!(fabs(a_ - b_) <= (eps))) {                                                           \
            print_error("%s = %.9g, expected %s = %.9g (within %g)\n", #a, a_, #b, b_,             \
                        (double)(eps));                                                            \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

/* ---- rng ---- */

static void test_rng_seed_deterministic(void **state)
{
    (void)state;
    weft_rng a, b, c;
    weft_rng_seed(&a, 42);
    weft_rng_seed(&b, 42);
    weft_rng_seed(&c, 43);
    int same_c = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = weft_rng_next(&a), y = weft_rng_next(&b), z = weft_rng_next(&c);
        assert_int_equal(x, y);
        same_c += x == z;
    }
    assert_int_equal(same_c, 0);
    weft_rng z;
    weft_rng_seed(&z, 0); /* seed 0 must not produce the all-zero state */
    assert_true((z.s[0] | z.s[1] | z.s[2] | z.s[3]) != 0);
    assert_true(weft_rng_next(&z) != weft_rng_next(&z));
}

static void test_rng_below_bounds(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 7);
    const uint64_t ns[] = {1, 2, 3, 7, 10, 1000, (UINT64_C(1) << 63) + 1, UINT64_MAX};
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        uint64_t max = 0;
        for (int i = 0; i < 20000; i++) {
            uint64_t v = weft_rng_below(&r, ns[k]);
            assert_true(v < ns[k]);
            if (v > max)
                max = v;
        }
        if (ns[k] <= 1000)
            assert_int_equal(max, ns[k] - 1); /* every small range is fully reached */
    }
    assert_int_equal(weft_rng_below(&r, 0), 0); /* bad input answers 0, no trap */
}

/* chi-square over k bins must stay below the p = 0.001 critical value */
static double chi_square(const uint64_t *bins, size_t k, double expected)
{
    double chi = 0;
    for (size_t i = 0; i < k; i++) {
        double d = (double)bins[i] - expected;
        chi += d * d / expected;
    }
    return chi;
}

static void test_rng_below_uniform(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 12345);
    uint64_t bins[10] = {0};
    for (int i = 0; i < 100000; i++)
        bins[weft_rng_below(&r, 10)]++;
    double chi = chi_square(bins, 10, 10000.0);
    assert_true(chi < 27.88); /* 9 degrees of freedom, p = 0.001 */

    /* a range that does not divide 2^64 evenly, folded into 10 bins */
    uint64_t n = UINT64_C(3) << 62; /* 0.75 × 2^64: a modulo would skew badly */
    memset(bins, 0, sizeof bins);
    for (int i = 0; i < 100000; i++)
        bins[weft_rng_below(&r, n) / (n / 10 + 1)]++;
    chi = chi_square(bins, 10, 10000.0);
    assert_true(chi < 27.88);
}

static void test_rng_unit(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 99);
    double sum = 0;
    for (int i = 0; i < 100000; i++) {
        double u = weft_rng_unit(&r);
        assert_true(u >= 0.0 && u < 1.0);
        sum += u;
    }
    assert_near(sum / 100000, 0.5, 0.005);
}

/* ---- hash ---- */

static int popcount64(uint64_t x)
{
    int c = 0;
    for (; x; x &= x - 1)
        c++;
    return c;
}

static void test_hash_similar_keys(void **state)
{
    (void)state;
    uint64_t a = weft_hash64("10.0.0.1", 8, 0), b = weft_hash64("10.0.0.2", 8, 0);
    assert_true(a != b);
    assert_true(popcount64(a ^ b) >= 16);
    /* 65536 similar addresses: no collisions, low bits spread evenly */
    enum { N = 65536 };
    uint64_t *h = malloc(N * sizeof *h);
    assert_non_null(h);
    uint64_t bins[16] = {0};
    char buf[32];
    for (int i = 0; i < N; i++) {
        int l = snprintf(buf, sizeof buf, "10.0.%d.%d", i / 256, i % 256);
        h[i] = weft_hash64(buf, (size_t)l, 0);
        bins[h[i] & 15]++;
    }
    assert_true(chi_square(bins, 16, N / 16.0) < 37.70); /* 15 dof, p = 0.001 */
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N && j < i + 300; j++)
            assert_true(h[i] != h[j]);
    free(h);
}

static void test_hash_avalanche(void **state)
{
    (void)state;
    /* flipping any single input bit flips about half of the output bits */
    const char *keys[] = {"a", "10.0.0.1:8080", "user-12345",
                          "a somewhat longer key of 40 bytes.."};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        char buf[64];
        size_t n = strlen(keys[k]);
        memcpy(buf, keys[k], n);
        uint64_t base = weft_hash64(buf, n, 1);
        long flips = 0;
        for (size_t bit = 0; bit < n * 8; bit++) {
            buf[bit / 8] ^= (char)(1 << (bit % 8));
            flips += popcount64(base ^ weft_hash64(buf, n, 1));
            buf[bit / 8] ^= (char)(1 << (bit % 8));
        }
        double avg = (double)flips / (double)(n * 8);
        assert_true(avg > 26 && avg < 38);
    }
}

static void test_hash_seed_len_and_null(void **state)
{
    (void)state;
    assert_true(weft_hash64("key", 3, 1) != weft_hash64("key", 3, 2));
    assert_true(weft_hash64("a", 1, 0) != weft_hash64("a\0", 2, 0));
    assert_true(weft_hash64("", 0, 0) != weft_hash64("\0", 1, 0));
    assert_int_equal(weft_hash64(NULL, 0, 5), weft_hash64("", 0, 5));
    assert_int_equal(weft_hash64(NULL, 10, 5), weft_hash64("", 0, 5)); /* bad input: empty */
    /* stable: the same bytes always hash the same (ring positions depend on it) */
    assert_int_equal(weft_hash64("10.0.0.1:80", 11, 0), weft_hash64("10.0.0.1:80", 11, 0));
}

/* ---- backoff ---- */

static void test_backoff_bounds(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 3);
    for (uint32_t retry = 1; retry <= 10; retry++) {
        uint64_t ceil_ms = 100ull << (retry - 1);
        if (ceil_ms > 10000)
            ceil_ms = 10000;
        uint64_t max = 0;
        for (int i = 0; i < 2000; i++) {
            uint64_t v = weft_backoff_full_jitter(&r, retry, 100, 10000);
            assert_true(v < ceil_ms);
            if (v > max)
                max = v;
        }
        assert_true(max >= ceil_ms * 9 / 10); /* the whole range is used */
    }
}

static void test_backoff_cap_and_overflow(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 4);
    const uint32_t retries[] = {20, 63, 64, 65, 100, 1000, UINT32_MAX};
    for (size_t k = 0; k < sizeof retries / sizeof retries[0]; k++)
        for (int i = 0; i < 1000; i++)
            assert_true(weft_backoff_full_jitter(&r, retries[k], 100, 5000) < 5000);
    /* base·2 overflows 64 bits: must clamp to cap, not wrap */
    for (int i = 0; i < 1000; i++) {
        uint64_t v = weft_backoff_full_jitter(&r, 3, UINT64_MAX / 2, UINT64_MAX);
        assert_true(v < UINT64_MAX);
    }
    uint64_t big = 0;
    for (int i = 0; i < 100; i++) {
        uint64_t v = weft_backoff_full_jitter(&r, 200, 1, UINT64_MAX);
        if (v > big)
            big = v;
    }
    assert_true(big > (UINT64_MAX >> 2)); /* ceiling really is the cap */
    assert_int_equal(weft_backoff_full_jitter(&r, 5, 0, 1000), 0);
    assert_int_equal(weft_backoff_full_jitter(&r, 5, 100, 0), 0);
    for (int i = 0; i < 1000; i++) /* retry 0 is treated as retry 1 */
        assert_true(weft_backoff_full_jitter(&r, 0, 50, 1000) < 50);
    assert_int_equal(weft_backoff_full_jitter(NULL, 2, 100, 1000), 100); /* no rng: mean */
}

static void test_backoff_mean(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 5);
    double sum = 0;
    for (int i = 0; i < 100000; i++)
        sum += (double)weft_backoff_full_jitter(&r, 3, 100, 10000); /* ceiling 400 */
    assert_near(sum / 100000, 199.5, 2.0);
    sum = 0;
    for (int i = 0; i < 100000; i++)
        sum += (double)weft_backoff_full_jitter(&r, 30, 100, 10000); /* capped at 10000 */
    assert_near(sum / 100000, 4999.5, 50.0);
}

/* ---- retry budget ---- */

static void test_budget_min_per_sec_only(void **state)
{
    (void)state;
    weft_retry_budget b;
    weft_retry_budget_init(&b, 0.2, 10, 10000);
    assert_int_equal(b.bucket_ms, 1000);
    assert_near(weft_retry_budget_balance(&b, 5000), 100.0, 1e-9);
    for (int i = 0; i < 100; i++)
        assert_true(weft_retry_budget_withdraw(&b, 5000));
    assert_false(weft_retry_budget_withdraw(&b, 5000));
    assert_near(weft_retry_budget_balance(&b, 5000), 0.0, 1e-9);
    assert_false(weft_retry_budget_withdraw(&b, 14999)); /* still inside the window */
    assert_true(weft_retry_budget_withdraw(&b, 15000));  /* withdrawals expired */
}

static void test_budget_with_deposits(void **state)
{
    (void)state;
    weft_retry_budget b;
    weft_retry_budget_init(&b, 0.2, 10, 10000);
    for (int i = 0; i < 1000; i++)
        weft_retry_budget_deposit(&b, 1000 + (uint64_t)i); /* spread over one second */
    assert_near(weft_retry_budget_balance(&b, 2000), 300.0, 1e-6);
    int ok = 0;
    while (weft_retry_budget_withdraw(&b, 2000) && ok < 10000)
        ok++;
    assert_int_equal(ok, 300);
    /* fractional deposits: 5 × 0.2 makes exactly one more retry */
    for (int i = 0; i < 4; i++)
        weft_retry_budget_deposit(&b, 2000);
    assert_false(weft_retry_budget_withdraw(&b, 2000));
    weft_retry_budget_deposit(&b, 2000);
    assert_true(weft_retry_budget_withdraw(&b, 2000));
}

/* Admission: the deadline is checked before the budget (a doomed retry
 * spends nothing), the budget is optional, the backoff is the jittered one. */
static void test_retry_admit(void **state)
{
    (void)state;
    weft_rng r;
    weft_rng_seed(&r, 42);
    weft_retry_budget b;
    weft_retry_budget_init(&b, 0.0, 1, 1000); /* exactly one retry in the window */
    uint64_t backoff = 0;
    /* deadline too close for even the smallest backoff plus the estimate */
    assert_int_equal(weft_retry_admit(&r, &b, 1, 10, 100, 1000, 50, 1050, &backoff),
                     WEFT_RETRY_DEADLINE);
    assert_true(backoff < 10);
    assert_near(weft_retry_budget_balance(&b, 1000), 1.0, 1e-9); /* nothing spent */
    assert_int_equal(weft_retry_admit(&r, &b, 3, 10, 100, 1000, 50, 5000, &backoff),
                     WEFT_RETRY_GO);
    assert_true(backoff < 40);
    assert_int_equal(weft_retry_admit(&r, &b, 1, 10, 100, 1000, 0, 5000, &backoff),
                     WEFT_RETRY_BUDGET);
    /* no budget: only the deadline can refuse */
    int go = 0;
    for (int i = 0; i < 100; i++) {
        enum weft_retry_verdict v = weft_retry_admit(&r, NULL, 2, 10, 100, 1000, 0, 1021, &backoff);
        assert_true(backoff < 20);
        assert_int_equal(v, backoff + 1000 >= 1021 ? WEFT_RETRY_DEADLINE : WEFT_RETRY_GO);
        go += v == WEFT_RETRY_GO;
    }
    assert_int_equal(go, 100); /* every backoff < 20 fits before 1021 */
}

static void test_budget_deposits_expire(void **state)
{
    (void)state;
    weft_retry_budget b;
    weft_retry_budget_init(&b, 0.2, 10, 10000);
    for (int i = 0; i < 1000; i++)
        weft_retry_budget_deposit(&b, 0);
    assert_near(weft_retry_budget_balance(&b, 9999), 300.0, 1e-6);
    assert_near(weft_retry_budget_balance(&b, 10000), 100.0, 1e-6);
}

static void test_budget_rolling_window(void **state)
{
    (void)state;
    weft_retry_budget b;
    weft_retry_budget_init(&b, 0.5, 0, 10000);
    for (uint64_t s = 0; s < 20; s++)
        for (int i = 0; i < 10; i++)
            weft_retry_budget_deposit(&b, s * 1000 + 500);
    /* at t = 19.5 s the window holds the deposits of seconds 10..19 */
    assert_near(weft_retry_budget_balance(&b, 19500), 50.0, 1e-9);
    assert_near(weft_retry_budget_balance(&b, 24500), 25.0, 1e-9);
    /* a clock that goes backwards keeps the newest bucket */
    weft_retry_budget_deposit(&b, 100);
    assert_near(weft_retry_budget_balance(&b, 24500), 25.5, 1e-9);
}

static void test_budget_big_time_jump(void **state)
{
    (void)state;
    weft_retry_budget b;
    weft_retry_budget_init(&b, 0.2, 10, 10000);
    for (int i = 0; i < 500; i++)
        weft_retry_budget_deposit(&b, 3000);
    for (int i = 0; i < 150; i++)
        assert_true(weft_retry_budget_withdraw(&b, 3000));
    uint64_t far = UINT64_C(1) << 50;
    assert_near(weft_retry_budget_balance(&b, far), 100.0, 1e-9);
    assert_near(weft_retry_budget_balance(&b, UINT64_MAX), 100.0, 1e-9);
}

static void test_budget_defaults_and_bad_args(void **state)
{
    (void)state;
    weft_retry_budget b;
    weft_retry_budget_init(&b, NAN, 0, 0);
    assert_int_equal(b.ttl_ms, 10000);
    assert_near(b.percent, 0.0, 0);
    for (int i = 0; i < 100; i++)
        weft_retry_budget_deposit(&b, 0);
    assert_false(weft_retry_budget_withdraw(&b, 0)); /* no percent, no reserve */
    weft_retry_budget_init(&b, -1.0, 1, 5);          /* tiny ttl: 1 ms buckets */
    assert_int_equal(b.bucket_ms, 1);
    assert_near(weft_retry_budget_balance(&b, 0), 0.005, 1e-12);
    weft_retry_budget_init(NULL, 0.2, 10, 10000);
    weft_retry_budget_deposit(NULL, 0);
    assert_false(weft_retry_budget_withdraw(NULL, 0));
    assert_near(weft_retry_budget_balance(NULL, 0), 0.0, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rng_seed_deterministic),
        cmocka_unit_test(test_rng_below_bounds),
        cmocka_unit_test(test_rng_below_uniform),
        cmocka_unit_test(test_rng_unit),
        cmocka_unit_test(test_hash_similar_keys),
        cmocka_unit_test(test_hash_avalanche),
        cmocka_unit_test(test_hash_seed_len_and_null),
        cmocka_unit_test(test_backoff_bounds),
        cmocka_unit_test(test_backoff_cap_and_overflow),
        cmocka_unit_test(test_backoff_mean),
        cmocka_unit_test(test_budget_min_per_sec_only),
        cmocka_unit_test(test_budget_with_deposits),
        cmocka_unit_test(test_budget_deposits_expire),
        cmocka_unit_test(test_budget_rolling_window),
        cmocka_unit_test(test_retry_admit),
        cmocka_unit_test(test_budget_big_time_jump),
        cmocka_unit_test(test_budget_defaults_and_bad_args),
    };
    return cmocka_run_group_tests_name("resilience_rng", tests, NULL, NULL);
}
