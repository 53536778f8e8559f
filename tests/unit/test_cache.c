/*
 * test_cache.c — unit tests for the gateway response cache (gateway/cache.h).
 *
 * Covers the Cache-Control/request predicates as exact matrices, then the
 * cache itself: exact hit contents, expiry and Age, Vary matching, exact
 * LRU/LFU eviction order (budgets are sized from a measured entry so the
 * orders do not depend on struct layout), byte accounting, coalescing with
 * re-entrant callbacks, and references that outlive eviction. Under the
 * sanitizer build ASan reports any use of a freed entry and LSan any leak;
 * where a test must prove an entry was actually freed it reads ASan's
 * allocator counter.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/cache.h"
#include "weft/http.h"

#if defined(__SANITIZE_ADDRESS__)
#define HAVE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HAVE_ASAN 1
#endif
#endif
#ifdef HAVE_ASAN
/* from <sanitizer/allocator_interface.h>, which not every toolchain ships */
size_t __sanitizer_get_current_allocated_bytes(void);
#endif

#define S(lit) WEFT_STR(lit)

/* Bytes currently malloc'd, or 0 when not measurable (no ASan). */
static size_t heap_in_use(void)
{
#ifdef HAVE_ASAN
    return __sanitizer_get_current_allocated_bytes();
#else
    return 0;
#endif
}

static bool heap_measurable(void)
{
#ifdef HAVE_ASAN
    return true;
#else
    return false;
#endif
}

/* ------------------------------------------------------------------ */
/* helpers */

static bool storable1(int status, const char *name, const char *value, uint64_t def, uint64_t *ttl)
{
    weft_str n[1] = {weft_str_from(name)};
    weft_str v[1] = {weft_str_from(value)};
    weft_hdrs h = {n, v, 1};
    return weft_cache_storable(status, &h, def, ttl);
}

static bool reqok1(int method, const char *name, const char *value, bool allow_auth)
{
    weft_str n[1] = {weft_str_from(name)};
    weft_str v[1] = {weft_str_from(value)};
    weft_hdrs h = {n, v, 1};
    return weft_cache_request_ok(method, &h, allow_auth);
}

static const weft_str ctype_n[] = {{"Content-Type", 12}};
static const weft_str ctype_v[] = {{"text/plain", 10}};
static const weft_hdrs plain_resp = {ctype_n, ctype_v, 1};

static int fill_simple(weft_cache *c, const char *key, const char *body, uint64_t ttl, uint64_t now)
{
    return weft_cache_fill(c, weft_str_from(key), NULL, 200, &plain_resp, weft_str_from(body), ttl,
                           now);
}

/* Look key up without coalescing; returns the result, releases any hit. */
static int probe(weft_cache *c, const char *key, uint64_t now, char *body_out, size_t cap)
{
    weft_cache_hit hit;
    int r = weft_cache_lookup(c, weft_str_from(key), NULL, now, &hit, NULL, NULL);
    if (r == WEFT_CACHE_HIT && body_out) {
        size_t n = hit.body.n < cap - 1 ? hit.body.n : cap - 1;
        memcpy(body_out, hit.body.p, n);
        body_out[n] = '\0';
    }
    weft_cache_hit_release(c, &hit);
    return r;
}

/* Size of one entry as the cache accounts it. */
static size_t entry_size(const char *key, const char *body)
{
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    assert_non_null(c);
    assert_int_equal(fill_simple(c, key, body, 60000, 0), 0);
    weft_cache_stats st;
    weft_cache_stats_get(c, &st);
    weft_cache_free(c);
    return st.bytes;
}

static weft_cache_stats stats(const weft_cache *c)
{
    weft_cache_stats st;
    weft_cache_stats_get(c, &st);
    return st;
}

/* A waiter that records what it was told and releases its hit. */
struct waiter {
    weft_cache *c;
    int calls;
    bool ok;
    bool hit_null;
    int status;
    char body[64];
    int order;
};

static int wake_counter;

static void waiter_cb(void *w, bool ok, weft_cache_hit *hit)
{
    struct waiter *wt = w;
    wt->calls++;
    wt->ok = ok;
    wt->hit_null = hit == NULL;
    wt->order = ++wake_counter;
    if (ok && hit) {
        wt->status = hit->status;
        size_t n = hit->body.n < sizeof(wt->body) - 1 ? hit->body.n : sizeof(wt->body) - 1;
        memcpy(wt->body, hit->body.p, n);
        wt->body[n] = '\0';
        weft_cache_hit_release(wt->c, hit);
    }
}

/* ------------------------------------------------------------------ */
/* weft_cache_storable */

static void test_storable_default_ttl(void **state)
{
    (void)state;
    uint64_t ttl = 123;
    assert_true(weft_cache_storable(200, NULL, 5000, &ttl));
    assert_int_equal(ttl, 5000);
    assert_true(storable1(200, "Content-Type", "text/html", 7000, &ttl));
    assert_int_equal(ttl, 7000);
    /* no explicit lifetime and no default: not storable */
    assert_false(weft_cache_storable(200, NULL, 0, &ttl));
    assert_int_equal(ttl, 0);
    assert_false(storable1(200, "Cache-Control", "public", 0, &ttl));
}

static void test_storable_max_age(void **state)
{
    (void)state;
    uint64_t ttl = 0;
    assert_true(storable1(200, "Cache-Control", "max-age=60", 5000, &ttl));
    assert_int_equal(ttl, 60000);
    assert_true(storable1(200, "Cache-Control", "public, max-age=1", 0, &ttl));
    assert_int_equal(ttl, 1000);
    /* huge values are capped at 2^31 seconds (RFC 9111 §1.2.2) */
    assert_true(storable1(200, "Cache-Control", "max-age=99999999999999999999999", 0, &ttl));
    assert_int_equal(ttl, 2147483648ull * 1000);
}

static void test_storable_smaxage_precedence(void **state)
{
    (void)state;
    uint64_t ttl = 0;
    assert_true(storable1(200, "Cache-Control", "max-age=60, s-maxage=120", 5000, &ttl));
    assert_int_equal(ttl, 120000);
    assert_true(storable1(200, "Cache-Control", "s-maxage=10, max-age=600", 5000, &ttl));
    assert_int_equal(ttl, 10000);
    /* s-maxage=0 wins over max-age: not storable */
    assert_false(storable1(200, "Cache-Control", "s-maxage=0, max-age=60", 5000, &ttl));
    /* invalid s-maxage is ignored, so max-age applies */
    assert_true(storable1(200, "Cache-Control", "s-maxage=x, max-age=60", 5000, &ttl));
    assert_int_equal(ttl, 60000);
}

static void test_storable_no_store(void **state)
{
    (void)state;
    uint64_t ttl = 9;
    assert_false(storable1(200, "Cache-Control", "no-store", 5000, &ttl));
    assert_int_equal(ttl, 0);
    assert_false(storable1(200, "Cache-Control", "public, no-store, max-age=60", 5000, &ttl));
    /* the directive in a second Cache-Control field counts as well */
    weft_str n[2] = {S("Cache-Control"), S("cache-control")};
    weft_str v[2] = {S("max-age=60"), S("no-store")};
    weft_hdrs h = {n, v, 2};
    assert_false(weft_cache_storable(200, &h, 5000, &ttl));
}

static void test_storable_private(void **state)
{
    (void)state;
    uint64_t ttl = 0;
    assert_false(storable1(200, "Cache-Control", "private", 5000, &ttl));
    assert_false(storable1(200, "Cache-Control", "max-age=60, private", 5000, &ttl));
    /* qualified private is treated as private: conservative */
    assert_false(storable1(200, "Cache-Control", "private=\"x-user\", max-age=60", 5000, &ttl));
}

static void test_storable_no_cache(void **state)
{
    (void)state;
    uint64_t ttl = 0;
    assert_false(storable1(200, "Cache-Control", "no-cache", 5000, &ttl));
    assert_false(storable1(200, "Cache-Control", "max-age=60,no-cache", 5000, &ttl));
    /* a directive merely starting with no-cache is a different directive */
    assert_true(storable1(200, "Cache-Control", "no-cachex, max-age=3", 5000, &ttl));
    assert_int_equal(ttl, 3000);
}

static void test_storable_max_age_zero(void **state)
{
    (void)state;
    uint64_t ttl = 0;
    assert_false(storable1(200, "Cache-Control", "max-age=0", 5000, &ttl));
    assert_false(storable1(200, "Cache-Control", "max-age=000", 5000, &ttl));
}

static void test_storable_invalid_numbers(void **state)
{
    (void)state;
    static const char *bad[] = {"max-age=abc", "max-age=",     "max-age",    "max-age=-5",
                                "max-age=1.5", "max-age=+5",   "max-age=5s", "max-age=\"\"",
                                "max-age=\"5", "max-age=0x10", "max-age= "};
    for (size_t i = 0; i < WEFT_ARRAY_LEN(bad); i++) {
        uint64_t ttl = 0;
        print_message("case %s\n", bad[i]);
        assert_true(storable1(200, "Cache-Control", bad[i], 4000, &ttl));
        assert_int_equal(ttl, 4000);
    }
    /* an invalid first max-age does not hide a later valid one */
    uint64_t ttl = 0;
    assert_true(storable1(200, "Cache-Control", "max-age=x, max-age=8", 4000, &ttl));
    assert_int_equal(ttl, 8000);
}

static void test_storable_quoted_values(void **state)
{
    (void)state;
    uint64_t ttl = 0;
    assert_true(storable1(200, "Cache-Control", "max-age=\"30\"", 5000, &ttl));
    assert_int_equal(ttl, 30000);
    /* commas and directive names inside a quoted string are data */
    assert_true(storable1(200, "Cache-Control", "ext=\"a, no-store\", max-age=10", 5000, &ttl));
    assert_int_equal(ttl, 10000);
    assert_true(
        storable1(200, "Cache-Control", "ext=\"q \\\" , private\" , max-age=7", 5000, &ttl));
    assert_int_equal(ttl, 7000);
    assert_true(storable1(200, "Cache-Control", "ext=\"max-age=0\", s-maxage=\"12\"", 0, &ttl));
    assert_int_equal(ttl, 12000);
}

static void test_storable_mixed_case_and_whitespace(void **state)
{
    (void)state;
    uint64_t ttl = 0;
    assert_true(storable1(200, "CACHE-CONTROL", "  PUBLIC ,\tMax-Age=45  ,", 5000, &ttl));
    assert_int_equal(ttl, 45000);
    assert_true(storable1(200, "cache-control", "S-MaxAge=9", 5000, &ttl));
    assert_int_equal(ttl, 9000);
    assert_true(storable1(200, "Cache-Control", "max-age = 20", 5000, &ttl));
    assert_int_equal(ttl, 20000);
    assert_false(storable1(200, "Cache-Control", "NO-STORE", 5000, &ttl));
    assert_false(storable1(200, "Cache-Control", "Private", 5000, &ttl));
    assert_false(storable1(200, "Cache-Control", ",,No-Cache,,", 5000, &ttl));
}

static void test_storable_set_cookie(void **state)
{
    (void)state;
    uint64_t ttl = 0;
    assert_false(storable1(200, "Set-Cookie", "a=b", 5000, &ttl));
    assert_false(storable1(200, "SET-COOKIE", "", 5000, &ttl));
    weft_str n[2] = {S("Cache-Control"), S("set-cookie")};
    weft_str v[2] = {S("public, max-age=60"), S("sid=1")};
    weft_hdrs h = {n, v, 2};
    assert_false(weft_cache_storable(200, &h, 5000, &ttl));
    assert_int_equal(ttl, 0);
}

static void test_storable_vary_star(void **state)
{
    (void)state;
    uint64_t ttl = 0;
    assert_false(storable1(200, "Vary", "*", 5000, &ttl));
    assert_false(storable1(200, "vary", "Accept-Encoding, *", 5000, &ttl));
    assert_false(storable1(200, "Vary", " * ", 5000, &ttl));
    assert_true(storable1(200, "Vary", "Accept-Encoding", 5000, &ttl));
    assert_int_equal(ttl, 5000);
    assert_true(storable1(200, "Vary", "X-*-Thing", 5000, &ttl));
}

static void test_storable_status_matrix(void **state)
{
    (void)state;
    static const int yes[] = {200, 203, 204, 300, 301, 404, 405, 410, 414, 501};
    static const int no[] = {0,   100, 201, 202, 206, 302, 303, 304, 307, 308,
                             400, 401, 403, 500, 502, 503, 504, 999, -1};
    for (size_t i = 0; i < WEFT_ARRAY_LEN(yes); i++) {
        uint64_t ttl = 0;
        print_message("status %d\n", yes[i]);
        assert_true(storable1(yes[i], "Cache-Control", "max-age=60", 0, &ttl));
        assert_int_equal(ttl, 60000);
    }
    for (size_t i = 0; i < WEFT_ARRAY_LEN(no); i++) {
        uint64_t ttl = 7;
        print_message("status %d\n", no[i]);
        assert_false(storable1(no[i], "Cache-Control", "max-age=60", 5000, &ttl));
        assert_int_equal(ttl, 0);
    }
}

/* ------------------------------------------------------------------ */
/* weft_cache_request_ok */

static void test_request_ok_methods(void **state)
{
    (void)state;
    assert_true(weft_cache_request_ok(WEFT_METHOD_GET, NULL, false));
    assert_true(weft_cache_request_ok(WEFT_METHOD_HEAD, NULL, false));
    assert_int_equal(WEFT_METHOD_GET, 1);
    assert_int_equal(WEFT_METHOD_HEAD, 2);
    static const int no[] = {WEFT_METHOD_UNKNOWN,
                             WEFT_METHOD_POST,
                             WEFT_METHOD_PUT,
                             WEFT_METHOD_DELETE,
                             WEFT_METHOD_CONNECT,
                             WEFT_METHOD_OPTIONS,
                             WEFT_METHOD_TRACE,
                             WEFT_METHOD_PATCH,
                             -1,
                             99};
    for (size_t i = 0; i < WEFT_ARRAY_LEN(no); i++)
        assert_false(weft_cache_request_ok(no[i], NULL, true));
}

static void test_request_ok_cache_control(void **state)
{
    (void)state;
    assert_false(reqok1(WEFT_METHOD_GET, "Cache-Control", "no-store", false));
    assert_false(reqok1(WEFT_METHOD_GET, "cache-control", "max-age=0, No-Cache", false));
    assert_false(reqok1(WEFT_METHOD_HEAD, "CACHE-CONTROL", "no-cache", true));
    assert_true(reqok1(WEFT_METHOD_GET, "Cache-Control", "max-age=0", false));
    assert_true(reqok1(WEFT_METHOD_GET, "Cache-Control", "x=\"no-store\"", false));
    assert_true(reqok1(WEFT_METHOD_GET, "Accept", "no-store", false));
}

static void test_request_ok_authorization(void **state)
{
    (void)state;
    assert_false(reqok1(WEFT_METHOD_GET, "Authorization", "Bearer x", false));
    assert_false(reqok1(WEFT_METHOD_GET, "authorization", "", false));
    assert_true(reqok1(WEFT_METHOD_GET, "Authorization", "Bearer x", true));
    assert_true(reqok1(WEFT_METHOD_GET, "Proxy-Authorization", "x", false));
    weft_str n[2] = {S("Authorization"), S("Cache-Control")};
    weft_str v[2] = {S("Basic y"), S("no-store")};
    weft_hdrs h = {n, v, 2};
    assert_false(weft_cache_request_ok(WEFT_METHOD_GET, &h, true));
}

/* ------------------------------------------------------------------ */
/* store and hit */

static void test_hit_after_fill_exact(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    assert_non_null(c);
    weft_cache_hit hit;
    weft_str key = S("example.com/a?b=1");
    assert_int_equal(weft_cache_lookup(c, key, NULL, 1000, &hit, NULL, NULL), WEFT_CACHE_MISS);
    assert_null(hit.e);

    char namebuf[3][16] = {"Content-Type", "Cache-Control", "X-Empty"};
    char valbuf[3][16] = {"text/plain", "max-age=60", ""};
    char bodybuf[] = "hello world";
    weft_str n[3] = {{namebuf[0], 12}, {namebuf[1], 13}, {namebuf[2], 7}};
    weft_str v[3] = {{valbuf[0], 10}, {valbuf[1], 10}, {valbuf[2], 0}};
    weft_hdrs resp = {n, v, 3};
    assert_int_equal(
        weft_cache_fill(c, key, NULL, 203, &resp, (weft_str){bodybuf, 11}, 60000, 1000), 0);
    /* the cache holds copies: scribble over the caller's buffers */
    memset(namebuf, 'X', sizeof(namebuf));
    memset(valbuf, 'Y', sizeof(valbuf));
    memset(bodybuf, 'Z', sizeof(bodybuf));

    assert_int_equal(weft_cache_lookup(c, key, NULL, 3999, &hit, NULL, NULL), WEFT_CACHE_HIT);
    assert_non_null(hit.e);
    assert_int_equal(hit.status, 203);
    assert_int_equal(hit.nheaders, 3);
    assert_int_equal(hit.names[0].n, 12);
    assert_memory_equal(hit.names[0].p, "Content-Type", 12);
    assert_int_equal(hit.values[0].n, 10);
    assert_memory_equal(hit.values[0].p, "text/plain", 10);
    assert_int_equal(hit.names[1].n, 13);
    assert_memory_equal(hit.names[1].p, "Cache-Control", 13);
    assert_memory_equal(hit.values[1].p, "max-age=60", 10);
    assert_memory_equal(hit.names[2].p, "X-Empty", 7);
    assert_int_equal(hit.values[2].n, 0);
    assert_int_equal(hit.body.n, 11);
    assert_memory_equal(hit.body.p, "hello world", 11);
    assert_int_equal(hit.age_s, 2);
    weft_cache_hit_release(c, &hit);
    assert_null(hit.e);
    weft_cache_hit_release(c, &hit); /* idempotent */

    weft_cache_stats st = stats(c);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.stores, 1);
    assert_int_equal(st.evictions, 0);
    assert_int_equal(st.coalesced, 0);
    assert_int_equal(st.entries, 1);
    assert_true(st.bytes > 11 + 12 + 10 + 13 + 10 + 7 + key.n);
    weft_cache_free(c);
}

static void test_keys_are_exact_bytes(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    assert_int_equal(fill_simple(c, "ab", "1", 60000, 0), 0);
    char body[16];
    assert_int_equal(probe(c, "a", 0, NULL, 0), WEFT_CACHE_MISS);
    assert_int_equal(probe(c, "abc", 0, NULL, 0), WEFT_CACHE_MISS);
    assert_int_equal(probe(c, "AB", 0, NULL, 0), WEFT_CACHE_MISS);
    assert_int_equal(probe(c, "ab", 0, body, sizeof(body)), WEFT_CACHE_HIT);
    assert_string_equal(body, "1");
    /* keys with embedded NUL bytes are distinct by length */
    assert_int_equal(weft_cache_fill(c, (weft_str){"x\0y", 3}, NULL, 200, NULL, S("nul"), 60000, 0),
                     0);
    weft_cache_hit hit;
    assert_int_equal(weft_cache_lookup(c, (weft_str){"x\0z", 3}, NULL, 0, &hit, NULL, NULL),
                     WEFT_CACHE_MISS);
    assert_int_equal(weft_cache_lookup(c, (weft_str){"x\0y", 3}, NULL, 0, &hit, NULL, NULL),
                     WEFT_CACHE_HIT);
    assert_int_equal(hit.nheaders, 0);
    assert_memory_equal(hit.body.p, "nul", 3);
    weft_cache_hit_release(c, &hit);
    weft_cache_free(c);
}

static void test_fill_replaces_same_variant(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    assert_int_equal(fill_simple(c, "k", "old", 60000, 0), 0);
    weft_cache_hit old;
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &old, NULL, NULL), WEFT_CACHE_HIT);
    size_t one = stats(c).bytes;
    assert_int_equal(fill_simple(c, "k", "new", 60000, 10), 0);
    weft_cache_stats st = stats(c);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.bytes, one);
    assert_int_equal(st.stores, 2);
    assert_int_equal(st.evictions, 0);
    char body[16];
    assert_int_equal(probe(c, "k", 10, body, sizeof(body)), WEFT_CACHE_HIT);
    assert_string_equal(body, "new");
    /* the replaced entry lives on for its holder */
    assert_memory_equal(old.body.p, "old", 3);
    weft_cache_hit_release(c, &old);
    weft_cache_free(c);
}

/* ------------------------------------------------------------------ */
/* expiry */

static void test_expiry_and_age(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    assert_int_equal(fill_simple(c, "k", "body", 5000, 1000), 0);
    weft_cache_hit hit;
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 1000, &hit, NULL, NULL), WEFT_CACHE_HIT);
    assert_int_equal(hit.age_s, 0);
    weft_cache_hit_release(c, &hit);
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 3500, &hit, NULL, NULL), WEFT_CACHE_HIT);
    assert_int_equal(hit.age_s, 2);
    weft_cache_hit_release(c, &hit);
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 5999, &hit, NULL, NULL), WEFT_CACHE_HIT);
    assert_int_equal(hit.age_s, 4);
    weft_cache_hit_release(c, &hit);
    /* a clock that went backwards gives age 0, not a huge number */
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 500, &hit, NULL, NULL), WEFT_CACHE_HIT);
    assert_int_equal(hit.age_s, 0);
    weft_cache_hit_release(c, &hit);

    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 6000, &hit, NULL, NULL), WEFT_CACHE_MISS);
    assert_null(hit.e);
    weft_cache_stats st = stats(c);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.hits, 4);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.evictions, 0);
    weft_cache_free(c);
}

static void test_expire_sweeps_all_expired(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LFU);
    assert_int_equal(fill_simple(c, "a", "1", 1000, 0), 0);
    assert_int_equal(fill_simple(c, "b", "2", 5000, 0), 0);
    assert_int_equal(fill_simple(c, "c", "3", 2000, 500), 0);
    size_t b_size = entry_size("b", "2");
    weft_cache_expire(c, 999);
    assert_int_equal(stats(c).entries, 3);
    weft_cache_expire(c, 2500);
    weft_cache_stats st = stats(c);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.bytes, b_size);
    assert_int_equal(probe(c, "b", 4999, NULL, 0), WEFT_CACHE_HIT);
    weft_cache_expire(c, 5000);
    st = stats(c);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.evictions, 0);
    /* the store still works after being emptied */
    assert_int_equal(fill_simple(c, "a", "again", 1000, 6000), 0);
    assert_int_equal(probe(c, "a", 6001, NULL, 0), WEFT_CACHE_HIT);
    weft_cache_free(c);
}

/* ------------------------------------------------------------------ */
/* Vary */

static int vary_lookup(weft_cache *c, const char *hname, const char *hval, char *body, size_t cap)
{
    weft_str n[1] = {hname ? weft_str_from(hname) : S("X-Other")};
    weft_str v[1] = {hval ? weft_str_from(hval) : S("1")};
    weft_hdrs req = {n, v, 1};
    weft_cache_hit hit;
    int r = weft_cache_lookup(c, S("k"), &req, 0, &hit, NULL, NULL);
    if (r == WEFT_CACHE_HIT) {
        size_t k = hit.body.n < cap - 1 ? hit.body.n : cap - 1;
        memcpy(body, hit.body.p, k);
        body[k] = '\0';
    }
    weft_cache_hit_release(c, &hit);
    return r;
}

static int vary_fill(weft_cache *c, const char *vary, const char *hname, const char *hval,
                     const char *body)
{
    weft_str rn[2] = {S("Vary"), S("Content-Type")};
    weft_str rv[2] = {weft_str_from(vary), S("text/plain")};
    weft_hdrs resp = {rn, rv, 2};
    weft_str n[1] = {hname ? weft_str_from(hname) : S("X-Other")};
    weft_str v[1] = {hval ? weft_str_from(hval) : S("1")};
    weft_hdrs req = {n, v, 1};
    return weft_cache_fill(c, S("k"), &req, 200, &resp, weft_str_from(body), 60000, 0);
}

static void test_vary_variants_coexist(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    char body[32];
    assert_int_equal(vary_fill(c, "Accept-Encoding", "Accept-Encoding", "gzip", "GZ"), 0);
    assert_int_equal(vary_fill(c, "Accept-Encoding", "accept-encoding", "identity", "ID"), 0);
    assert_int_equal(stats(c).entries, 2);
    assert_int_equal(vary_lookup(c, "Accept-Encoding", "gzip", body, sizeof(body)), WEFT_CACHE_HIT);
    assert_string_equal(body, "GZ");
    assert_int_equal(vary_lookup(c, "ACCEPT-ENCODING", "identity", body, sizeof(body)),
                     WEFT_CACHE_HIT);
    assert_string_equal(body, "ID");
    assert_int_equal(vary_lookup(c, "Accept-Encoding", "br", body, sizeof(body)), WEFT_CACHE_MISS);
    /* values compare exactly (case and spacing matter) */
    assert_int_equal(vary_lookup(c, "Accept-Encoding", "GZIP", body, sizeof(body)),
                     WEFT_CACHE_MISS);
    assert_int_equal(vary_lookup(c, NULL, NULL, body, sizeof(body)), WEFT_CACHE_MISS);
    weft_cache_free(c);
}

static void test_vary_absent_vs_empty(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    char body[32];
    assert_int_equal(vary_fill(c, "Accept-Encoding", NULL, NULL, "NONE"), 0);
    assert_int_equal(vary_lookup(c, "Accept-Encoding", "", body, sizeof(body)), WEFT_CACHE_MISS);
    assert_int_equal(vary_lookup(c, NULL, NULL, body, sizeof(body)), WEFT_CACHE_HIT);
    assert_string_equal(body, "NONE");
    assert_int_equal(vary_fill(c, "Accept-Encoding", "Accept-Encoding", "", "EMPTY"), 0);
    assert_int_equal(stats(c).entries, 2);
    assert_int_equal(vary_lookup(c, "Accept-Encoding", "", body, sizeof(body)), WEFT_CACHE_HIT);
    assert_string_equal(body, "EMPTY");
    assert_int_equal(vary_lookup(c, NULL, NULL, body, sizeof(body)), WEFT_CACHE_HIT);
    assert_string_equal(body, "NONE");
    /* a NULL request header list is "every header absent" */
    weft_cache_hit hit;
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, NULL, NULL), WEFT_CACHE_HIT);
    assert_memory_equal(hit.body.p, "NONE", 4);
    weft_cache_hit_release(c, &hit);
    weft_cache_free(c);
}

static void test_vary_multiple_names_and_fields(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    weft_str rn[2] = {S("vary"), S("VARY")};
    weft_str rv[2] = {S(" Accept-Language ,X-Tenant"), S("Accept")};
    weft_hdrs resp = {rn, rv, 2};
    /* two Accept-Language fields are one combined value "en, fr" */
    weft_str qn[4] = {S("Accept-Language"), S("x-tenant"), S("accept-language"), S("Host")};
    weft_str qv[4] = {S("en"), S("t1"), S("fr"), S("h")};
    weft_hdrs req = {qn, qv, 4};
    assert_int_equal(weft_cache_fill(c, S("k"), &req, 200, &resp, S("v1"), 60000, 0), 0);
    weft_cache_hit hit;
    assert_int_equal(weft_cache_lookup(c, S("k"), &req, 0, &hit, NULL, NULL), WEFT_CACHE_HIT);
    weft_cache_hit_release(c, &hit);

    weft_str q2n[3] = {S("X-TENANT"), S("ACCEPT-LANGUAGE"), S("Other")};
    weft_str q2v[3] = {S("t1"), S("en, fr"), S("z")};
    weft_hdrs req2 = {q2n, q2v, 3};
    assert_int_equal(weft_cache_lookup(c, S("k"), &req2, 0, &hit, NULL, NULL), WEFT_CACHE_HIT);
    weft_cache_hit_release(c, &hit);

    weft_str q3v[3] = {S("t2"), S("en, fr"), S("z")};
    weft_hdrs req3 = {q2n, q3v, 3};
    assert_int_equal(weft_cache_lookup(c, S("k"), &req3, 0, &hit, NULL, NULL), WEFT_CACHE_MISS);
    weft_str q4v[3] = {S("t1"), S("en"), S("z")};
    weft_hdrs req4 = {q2n, q4v, 3};
    assert_int_equal(weft_cache_lookup(c, S("k"), &req4, 0, &hit, NULL, NULL), WEFT_CACHE_MISS);
    /* Accept was absent at fill time: a request carrying it does not match */
    weft_str q5n[4] = {S("Accept-Language"), S("x-tenant"), S("Accept"), S("accept-language")};
    weft_str q5v[4] = {S("en"), S("t1"), S("*/*"), S("fr")};
    weft_hdrs req5 = {q5n, q5v, 4};
    assert_int_equal(weft_cache_lookup(c, S("k"), &req5, 0, &hit, NULL, NULL), WEFT_CACHE_MISS);
    weft_cache_free(c);
}

static void test_vary_variant_cap(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    char val[16], body[32];
    for (int i = 0; i < 9; i++) {
        snprintf(val, sizeof(val), "enc%d", i);
        assert_int_equal(vary_fill(c, "Accept-Encoding", "Accept-Encoding", val, val), 0);
    }
    weft_cache_stats st = stats(c);
    assert_int_equal(st.entries, 8);
    assert_int_equal(st.evictions, 1);
    assert_int_equal(vary_lookup(c, "Accept-Encoding", "enc0", body, sizeof(body)),
                     WEFT_CACHE_MISS);
    for (int i = 1; i < 9; i++) {
        snprintf(val, sizeof(val), "enc%d", i);
        assert_int_equal(vary_lookup(c, "Accept-Encoding", val, body, sizeof(body)),
                         WEFT_CACHE_HIT);
        assert_string_equal(body, val);
    }
    weft_cache_free(c);
}

static void test_fill_vary_star_rejected(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    assert_int_equal(vary_fill(c, "Accept, *", NULL, NULL, "x"), WEFT_EINVAL);
    weft_cache_stats st = stats(c);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.stores, 0);
    assert_int_equal(st.bytes, 0);
    weft_cache_free(c);
}

/* ------------------------------------------------------------------ */
/* eviction */

static void test_lru_eviction_order(void **state)
{
    (void)state;
    size_t s = entry_size("A", "aaaa");
    assert_int_equal(entry_size("B", "bbbb"), s);
    weft_cache *c = weft_cache_new(2 * s + s / 2, WEFT_CACHE_LRU);
    assert_int_equal(fill_simple(c, "A", "aaaa", 60000, 0), 0);
    assert_int_equal(fill_simple(c, "B", "bbbb", 60000, 1), 0);
    assert_int_equal(fill_simple(c, "C", "cccc", 60000, 2), 0);
    weft_cache_stats st = stats(c);
    assert_int_equal(st.evictions, 1);
    assert_int_equal(st.entries, 2);
    assert_int_equal(st.bytes, 2 * s);
    assert_int_equal(probe(c, "A", 3, NULL, 0), WEFT_CACHE_MISS);
    assert_int_equal(probe(c, "B", 3, NULL, 0), WEFT_CACHE_HIT);
    assert_int_equal(probe(c, "C", 3, NULL, 0), WEFT_CACHE_HIT);
    /* now B is older than C: D pushes out B */
    assert_int_equal(fill_simple(c, "D", "dddd", 60000, 4), 0);
    assert_int_equal(probe(c, "B", 5, NULL, 0), WEFT_CACHE_MISS);
    assert_int_equal(probe(c, "C", 5, NULL, 0), WEFT_CACHE_HIT);
    assert_int_equal(probe(c, "D", 5, NULL, 0), WEFT_CACHE_HIT);
    assert_int_equal(stats(c).evictions, 2);
    weft_cache_free(c);
}

static void test_lru_touch_changes_victim(void **state)
{
    (void)state;
    size_t s = entry_size("A", "aaaa");
    weft_cache *c = weft_cache_new(2 * s + s / 2, WEFT_CACHE_LRU);
    assert_int_equal(fill_simple(c, "A", "aaaa", 60000, 0), 0);
    assert_int_equal(fill_simple(c, "B", "bbbb", 60000, 1), 0);
    assert_int_equal(probe(c, "A", 2, NULL, 0), WEFT_CACHE_HIT);
    assert_int_equal(fill_simple(c, "C", "cccc", 60000, 3), 0);
    assert_int_equal(probe(c, "B", 4, NULL, 0), WEFT_CACHE_MISS);
    assert_int_equal(probe(c, "A", 4, NULL, 0), WEFT_CACHE_HIT);
    assert_int_equal(probe(c, "C", 4, NULL, 0), WEFT_CACHE_HIT);
    weft_cache_stats st = stats(c);
    assert_int_equal(st.evictions, 1);
    assert_int_equal(st.entries, 2);
    weft_cache_free(c);
}

/* A is hit three times, then B once (B is most recent): LFU keeps A. */
static void lfu_scenario(int policy, const char *kept, const char *evicted)
{
    size_t s = entry_size("A", "aaaa");
    weft_cache *c = weft_cache_new(2 * s + s / 2, policy);
    assert_int_equal(fill_simple(c, "A", "aaaa", 60000, 0), 0);
    assert_int_equal(fill_simple(c, "B", "bbbb", 60000, 1), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(probe(c, "A", 2, NULL, 0), WEFT_CACHE_HIT);
    assert_int_equal(probe(c, "B", 3, NULL, 0), WEFT_CACHE_HIT);
    assert_int_equal(fill_simple(c, "C", "cccc", 60000, 4), 0);
    assert_int_equal(probe(c, evicted, 5, NULL, 0), WEFT_CACHE_MISS);
    assert_int_equal(probe(c, kept, 5, NULL, 0), WEFT_CACHE_HIT);
    assert_int_equal(probe(c, "C", 5, NULL, 0), WEFT_CACHE_HIT);
    assert_int_equal(stats(c).evictions, 1);
    weft_cache_free(c);
}

static void test_lfu_keeps_frequent(void **state)
{
    (void)state;
    lfu_scenario(WEFT_CACHE_LFU, "A", "B");
}

static void test_lru_same_scenario_evicts_frequent(void **state)
{
    (void)state;
    lfu_scenario(WEFT_CACHE_LRU, "B", "A");
}

static void test_lfu_ties_go_to_least_recent(void **state)
{
    (void)state;
    size_t s = entry_size("A", "aaaa");
    weft_cache *c = weft_cache_new(2 * s + s / 2, WEFT_CACHE_LFU);
    assert_int_equal(fill_simple(c, "A", "aaaa", 60000, 0), 0);
    assert_int_equal(fill_simple(c, "B", "bbbb", 60000, 0), 0);
    /* both hit once; A used last, so B goes */
    assert_int_equal(probe(c, "B", 1, NULL, 0), WEFT_CACHE_HIT);
    assert_int_equal(probe(c, "A", 2, NULL, 0), WEFT_CACHE_HIT);
    assert_int_equal(fill_simple(c, "C", "cccc", 60000, 3), 0);
    assert_int_equal(stats(c).evictions, 1);
    /* C (never hit) is now the least frequent: D replaces it, A stays */
    assert_int_equal(fill_simple(c, "D", "dddd", 60000, 4), 0);
    assert_int_equal(stats(c).evictions, 2);
    assert_int_equal(probe(c, "C", 5, NULL, 0), WEFT_CACHE_MISS);
    assert_int_equal(probe(c, "B", 5, NULL, 0), WEFT_CACHE_MISS);
    assert_int_equal(probe(c, "A", 5, NULL, 0), WEFT_CACHE_HIT);
    assert_int_equal(probe(c, "D", 5, NULL, 0), WEFT_CACHE_HIT);
    weft_cache_free(c);
}

static void stress(int policy)
{
    size_t s = entry_size("key-0000", "body-0000");
    size_t max = 50 * s;
    weft_cache *c = weft_cache_new(max, policy);
    char key[32], body[32], got[32];
    unsigned seed = 12345;
    for (int i = 0; i < 3000; i++) {
        snprintf(key, sizeof(key), "key-%04d", i);
        snprintf(body, sizeof(body), "body-%04d", i);
        assert_int_equal(fill_simple(c, key, body, 60000, (uint64_t)i), 0);
        weft_cache_stats st = stats(c);
        assert_true(st.bytes <= max);
        assert_int_equal(st.bytes, st.entries * s);
        assert_int_equal(st.entries, st.stores - st.evictions);
        /* hit a few recent keys; every HIT returns its own body */
        for (int k = 0; k < 3; k++) {
            seed = seed * 1103515245u + 12345u;
            int j = i - (int)((seed >> 16) % 60);
            if (j < 0)
                continue;
            snprintf(key, sizeof(key), "key-%04d", j);
            snprintf(body, sizeof(body), "body-%04d", j);
            if (probe(c, key, (uint64_t)i, got, sizeof(got)) == WEFT_CACHE_HIT)
                assert_string_equal(got, body);
        }
    }
    assert_int_equal(stats(c).entries, 50);
    weft_cache_expire(c, UINT64_MAX);
    weft_cache_stats st = stats(c);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    weft_cache_free(c);
}

static void test_stress_lru(void **state)
{
    (void)state;
    stress(WEFT_CACHE_LRU);
}

static void test_stress_lfu(void **state)
{
    (void)state;
    stress(WEFT_CACHE_LFU);
}

/*
 * Model check: a reference implementation of the eviction order (array
 * scan for the minimum of (hits, last use) for LFU, last use for LRU) runs
 * beside the cache through random fills, replacements, hits and expiries;
 * every probe's HIT/MISS must agree with the model, and probes update the
 * model exactly as they update the cache.
 */
#define MODEL_KEYS 40
#define MODEL_CAP 12

struct model_ent {
    bool present;
    uint64_t freq, tick, exp;
};

struct model {
    int policy;
    struct model_ent e[MODEL_KEYS];
    uint64_t clock;
    size_t count;
};

static void model_fill(struct model *m, int k, uint64_t now, uint64_t ttl)
{
    if (m->e[k].present) {
        m->e[k].present = false;
        m->count--;
    }
    while (m->count >= MODEL_CAP) {
        int victim = -1;
        for (int i = 0; i < MODEL_KEYS; i++) {
            if (!m->e[i].present)
                continue;
            if (victim < 0)
                victim = i;
            else if (m->policy == WEFT_CACHE_LFU
                         ? (m->e[i].freq != m->e[victim].freq ? m->e[i].freq < m->e[victim].freq
                                                              : m->e[i].tick < m->e[victim].tick)
                         : m->e[i].tick < m->e[victim].tick)
                victim = i;
        }
        m->e[victim].present = false;
        m->count--;
    }
    m->e[k] = (struct model_ent){true, 0, ++m->clock, now + ttl};
    m->count++;
}

static void model_probe(weft_cache *c, struct model *m, int k, uint64_t now)
{
    char key[16], body[16], want[16];
    snprintf(key, sizeof(key), "k%03d", k);
    snprintf(want, sizeof(want), "b%03d", k);
    bool expect = m->e[k].present && now < m->e[k].exp;
    if (m->e[k].present && !expect) {
        m->e[k].present = false; /* lookup drops it lazily */
        m->count--;
    }
    int r = probe(c, key, now, body, sizeof(body));
    if (expect) {
        m->e[k].freq++;
        m->e[k].tick = ++m->clock;
    }
    if (r != (expect ? WEFT_CACHE_HIT : WEFT_CACHE_MISS))
        print_message("key %d: got %d, model expects %s\n", k, r, expect ? "HIT" : "MISS");
    assert_int_equal(r, expect ? WEFT_CACHE_HIT : WEFT_CACHE_MISS);
    if (expect)
        assert_string_equal(body, want);
}

static void model_check(int policy)
{
    size_t s = entry_size("k000", "b000");
    weft_cache *c = weft_cache_new(MODEL_CAP * s + s / 2, policy);
    struct model m = {.policy = policy};
    unsigned seed = 42;
    char key[16], body[16];
    for (uint64_t now = 1; now <= 6000; now++) {
        seed = seed * 1103515245u + 12345u;
        unsigned r = seed >> 8;
        int k = (int)(r % MODEL_KEYS);
        switch ((r >> 8) % 8) {
        case 0:
        case 1:
        case 2: {
            uint64_t ttl = 1 + (r >> 12) % 400;
            snprintf(key, sizeof(key), "k%03d", k);
            snprintf(body, sizeof(body), "b%03d", k);
            assert_int_equal(fill_simple(c, key, body, ttl, now), 0);
            model_fill(&m, k, now, ttl);
            break;
        }
        case 3:
            if ((r >> 12) % 16 == 0) {
                weft_cache_expire(c, now);
                for (int i = 0; i < MODEL_KEYS; i++) {
                    if (m.e[i].present && now >= m.e[i].exp) {
                        m.e[i].present = false;
                        m.count--;
                    }
                }
            }
            break;
        default: model_probe(c, &m, k, now); break;
        }
        assert_int_equal(stats(c).entries, m.count);
        if (now % 500 == 0)
            for (int i = 0; i < MODEL_KEYS; i++)
                model_probe(c, &m, i, now);
    }
    weft_cache_free(c);
}

static void test_model_lru(void **state)
{
    (void)state;
    model_check(WEFT_CACHE_LRU);
}

static void test_model_lfu(void **state)
{
    (void)state;
    model_check(WEFT_CACHE_LFU);
}

static void test_many_keys_table_growth(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(64u << 20, WEFT_CACHE_LRU);
    char key[32], got[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof(key), "host/%d", i);
        assert_int_equal(fill_simple(c, key, key, 60000, 0), 0);
    }
    assert_int_equal(stats(c).entries, 5000);
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof(key), "host/%d", i);
        assert_int_equal(probe(c, key, 1, got, sizeof(got)), WEFT_CACHE_HIT);
        assert_string_equal(got, key);
    }
    weft_cache_stats st = stats(c);
    assert_int_equal(st.hits, 5000);
    assert_int_equal(st.evictions, 0);
    weft_cache_free(c);
}

static void test_bytes_return_to_zero(void **state)
{
    (void)state;
    size_t s = entry_size("A", "aaaa");
    weft_cache *c = weft_cache_new(3 * s, WEFT_CACHE_LRU);
    assert_int_equal(fill_simple(c, "A", "aaaa", 1000, 0), 0);
    assert_int_equal(fill_simple(c, "B", "bbbb", 1000, 0), 0);
    assert_int_equal(fill_simple(c, "C", "cccc", 1000, 0), 0);
    assert_int_equal(stats(c).bytes, 3 * s);
    /* a big entry that needs all the room evicts everything else */
    char big[4096];
    size_t bigbody = 3 * s - s + 4; /* size of an entry with that body is exactly 3s */
    assert_true(bigbody < sizeof(big));
    memset(big, 'x', bigbody);
    big[bigbody] = '\0';
    assert_int_equal(fill_simple(c, "D", big, 1000, 0), 0);
    weft_cache_stats st = stats(c);
    assert_int_equal(st.evictions, 3);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.bytes, 3 * s);
    weft_cache_expire(c, 1000);
    st = stats(c);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    weft_cache_free(c);
}

static void test_too_big_is_refused(void **state)
{
    (void)state;
    size_t s = entry_size("A", "aaaa");
    weft_cache *c = weft_cache_new(s, WEFT_CACHE_LRU);
    assert_int_equal(fill_simple(c, "A", "aaaa", 60000, 0), 0); /* exactly max: fits */
    assert_int_equal(fill_simple(c, "B", "bbbbb", 60000, 0), WEFT_ETOOBIG);
    weft_cache_stats st = stats(c);
    assert_int_equal(st.stores, 1);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.evictions, 0);
    assert_int_equal(st.bytes, s);
    assert_int_equal(probe(c, "A", 1, NULL, 0), WEFT_CACHE_HIT);
    weft_cache_free(c);

    weft_cache *z = weft_cache_new(0, WEFT_CACHE_LFU);
    assert_int_equal(fill_simple(z, "A", "", 60000, 0), WEFT_ETOOBIG);
    assert_int_equal(stats(z).bytes, 0);
    weft_cache_free(z);
}

static void test_too_big_releases_waiters(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(256, WEFT_CACHE_LRU);
    weft_cache_hit hit;
    struct waiter w[2] = {{.c = c}, {.c = c}};
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, &w, waiter_cb), WEFT_CACHE_MISS);
    for (int i = 0; i < 2; i++)
        assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, &w[i], waiter_cb),
                         WEFT_CACHE_WAIT);
    static char big[1000];
    memset(big, 'b', sizeof(big));
    assert_int_equal(
        weft_cache_fill(c, S("k"), NULL, 200, NULL, (weft_str){big, sizeof(big)}, 60000, 0),
        WEFT_ETOOBIG);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(w[i].calls, 1);
        assert_false(w[i].ok);
        assert_true(w[i].hit_null);
    }
    /* the fetch is over: the next caller is the new fetcher, not a waiter */
    struct waiter w3 = {.c = c};
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, &w3, waiter_cb), WEFT_CACHE_MISS);
    weft_cache_abandon(c, S("k"));
    assert_int_equal(w3.calls, 0);
    weft_cache_stats st = stats(c);
    assert_int_equal(st.stores, 0);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.coalesced, 2);
    weft_cache_free(c);
}

/* ------------------------------------------------------------------ */
/* coalescing */

static void test_coalesce_fill_wakes_all(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    weft_cache_hit hit;
    struct waiter fetcher = {.c = c}, w[3] = {{.c = c}, {.c = c}, {.c = c}};
    wake_counter = 0;
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, &fetcher, waiter_cb),
                     WEFT_CACHE_MISS);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 10, &hit, &w[i], waiter_cb),
                         WEFT_CACHE_WAIT);
        assert_null(hit.e);
    }
    weft_cache_stats st = stats(c);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.coalesced, 3);
    assert_int_equal(st.hits, 0);

    static char body[20000];
    memset(body, 'q', sizeof(body));
    memcpy(body, "payload", 7);
    size_t before = heap_in_use();
    assert_int_equal(weft_cache_fill(c, S("k"), NULL, 200, &plain_resp,
                                     (weft_str){body, sizeof(body)}, 60000, 2000),
                     0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(w[i].calls, 1);
        assert_true(w[i].ok);
        assert_int_equal(w[i].status, 200);
        assert_memory_equal(w[i].body, "payload", 7);
        assert_int_equal(w[i].order, i + 1); /* woken in arrival order */
    }
    assert_int_equal(fetcher.calls, 0);
    st = stats(c);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.stores, 1);
    assert_int_equal(st.hits, 0);
    /* no lingering references: expiring the entry really frees it */
    weft_cache_expire(c, UINT64_MAX);
    if (heap_measurable())
        assert_true(heap_in_use() <= before + 1024);
    assert_int_equal(stats(c).bytes, 0);
    weft_cache_free(c);
}

static void test_coalesce_abandon(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    weft_cache_hit hit;
    struct waiter w[3] = {{.c = c}, {.c = c}, {.c = c}};
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, NULL, NULL), WEFT_CACHE_MISS);
    for (int i = 0; i < 3; i++)
        assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, &w[i], waiter_cb),
                         WEFT_CACHE_WAIT);
    weft_cache_abandon(c, S("k"));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(w[i].calls, 1);
        assert_false(w[i].ok);
        assert_true(w[i].hit_null);
    }
    /* abandon again, or for an unknown key: nothing happens */
    weft_cache_abandon(c, S("k"));
    weft_cache_abandon(c, S("nope"));
    for (int i = 0; i < 3; i++)
        assert_int_equal(w[i].calls, 1);
    /* a new fetch round starts */
    struct waiter w4 = {.c = c};
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, &w4, waiter_cb), WEFT_CACHE_MISS);
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, &w4, waiter_cb), WEFT_CACHE_WAIT);
    weft_cache_abandon(c, S("k"));
    assert_int_equal(w4.calls, 1);
    weft_cache_stats st = stats(c);
    assert_int_equal(st.misses, 2);
    assert_int_equal(st.coalesced, 4);
    assert_int_equal(st.entries, 0);
    weft_cache_free(c);
}

static void test_cancel_wait(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    weft_cache_hit hit;
    struct waiter w[3] = {{.c = c}, {.c = c}, {.c = c}};
    wake_counter = 0;
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, NULL, NULL), WEFT_CACHE_MISS);
    for (int i = 0; i < 3; i++)
        assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, &w[i], waiter_cb),
                         WEFT_CACHE_WAIT);
    weft_cache_cancel_wait(c, S("k"), &w[1]);
    weft_cache_cancel_wait(c, S("k"), &w[1]);     /* already gone: no-op */
    weft_cache_cancel_wait(c, S("other"), &w[0]); /* unknown key: no-op */
    assert_int_equal(fill_simple(c, "k", "done", 60000, 0), 0);
    assert_int_equal(w[0].calls, 1);
    assert_int_equal(w[1].calls, 0);
    assert_int_equal(w[2].calls, 1);
    assert_true(w[0].ok);
    assert_true(w[2].ok);
    assert_string_equal(w[0].body, "done");
    assert_string_equal(w[2].body, "done");
    assert_int_equal(w[0].order, 1);
    assert_int_equal(w[2].order, 2);
    weft_cache_free(c);
}

static void test_no_coalescing_without_waiter(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    weft_cache_hit hit;
    struct waiter w = {.c = c};
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, NULL, NULL), WEFT_CACHE_MISS);
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, NULL, NULL), WEFT_CACHE_MISS);
    /* a waiter without a callback cannot be woken: no coalescing either */
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, &w, NULL), WEFT_CACHE_MISS);
    weft_cache_stats st = stats(c);
    assert_int_equal(st.misses, 3);
    assert_int_equal(st.coalesced, 0);
    /* but the first MISS still opened a fetch that later callers join */
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, &w, waiter_cb), WEFT_CACHE_WAIT);
    assert_int_equal(fill_simple(c, "k", "v", 60000, 0), 0);
    assert_int_equal(w.calls, 1);
    assert_true(w.ok);
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, &w, waiter_cb), WEFT_CACHE_HIT);
    weft_cache_hit_release(c, &hit);
    weft_cache_free(c);
}

/* A MISS says whether the caller owns the key's fetch: only the owner may
 * abandon it, so a request fetching alongside (the gateway's HEADs) can
 * tell that it must leave the owner's waiters alone. */
static void test_miss_reports_fetch_owner(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    weft_cache_hit hit;
    struct waiter w = {.c = c};
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, &w, waiter_cb), WEFT_CACHE_MISS);
    assert_true(hit.fetcher);
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, &w, waiter_cb), WEFT_CACHE_WAIT);
    assert_false(hit.fetcher);
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, NULL, NULL), WEFT_CACHE_MISS);
    assert_false(hit.fetcher); /* alongside: the first caller still owns the fetch */
    assert_int_equal(w.calls, 0);
    assert_int_equal(fill_simple(c, "k", "v", 60000, 0), 0);
    assert_int_equal(w.calls, 1);
    assert_true(w.ok);
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, NULL, NULL), WEFT_CACHE_HIT);
    assert_false(hit.fetcher);
    weft_cache_hit_release(c, &hit);
    weft_cache_free(c);
}

static void test_waiters_get_fetched_variant(void **state)
{
    (void)state;
    /* documented limitation: waiters get the fetcher's variant regardless of Vary */
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    weft_cache_hit hit;
    weft_str n[1] = {S("Accept-Encoding")};
    weft_str gz[1] = {S("gzip")}, br[1] = {S("br")};
    weft_hdrs rgz = {n, gz, 1}, rbr = {n, br, 1};
    struct waiter w = {.c = c};
    assert_int_equal(weft_cache_lookup(c, S("k"), &rgz, 0, &hit, NULL, NULL), WEFT_CACHE_MISS);
    assert_int_equal(weft_cache_lookup(c, S("k"), &rbr, 0, &hit, &w, waiter_cb), WEFT_CACHE_WAIT);
    weft_str rn[1] = {S("Vary")};
    weft_str rv[1] = {S("Accept-Encoding")};
    weft_hdrs resp = {rn, rv, 1};
    assert_int_equal(weft_cache_fill(c, S("k"), &rgz, 200, &resp, S("GZ"), 60000, 0), 0);
    assert_int_equal(w.calls, 1);
    assert_true(w.ok);
    assert_string_equal(w.body, "GZ");
    /* a later br request does not match the gzip variant */
    assert_int_equal(weft_cache_lookup(c, S("k"), &rbr, 0, &hit, NULL, NULL), WEFT_CACHE_MISS);
    weft_cache_free(c);
}

/* ------------------------------------------------------------------ */
/* references */

static void test_hit_ref_survives_eviction(void **state)
{
    (void)state;
    static char body[8192];
    memset(body, 'A', sizeof(body));
    size_t s = 0;
    {
        weft_cache *p = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
        assert_int_equal(
            weft_cache_fill(p, S("A"), NULL, 200, NULL, (weft_str){body, sizeof(body)}, 60000, 0),
            0);
        s = stats(p).bytes;
        weft_cache_free(p);
    }
    weft_cache *c = weft_cache_new(s, WEFT_CACHE_LRU);
    assert_int_equal(
        weft_cache_fill(c, S("A"), NULL, 200, NULL, (weft_str){body, sizeof(body)}, 60000, 0), 0);
    weft_cache_hit hit;
    assert_int_equal(weft_cache_lookup(c, S("A"), NULL, 0, &hit, NULL, NULL), WEFT_CACHE_HIT);
    assert_int_equal(fill_simple(c, "B", "b", 60000, 1), 0); /* evicts A */
    weft_cache_stats st = stats(c);
    assert_int_equal(st.evictions, 1);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.bytes, entry_size("B", "b"));
    assert_int_equal(probe(c, "A", 2, NULL, 0), WEFT_CACHE_MISS);
    /* the held body is intact (ASan would flag a freed one) */
    assert_int_equal(hit.body.n, sizeof(body));
    assert_memory_equal(hit.body.p, body, sizeof(body));
    size_t held = heap_in_use();
    weft_cache_hit_release(c, &hit);
    if (heap_measurable())
        assert_true(held - heap_in_use() >= sizeof(body));
    weft_cache_free(c);
}

static void test_hit_ref_survives_expiry(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LFU);
    assert_int_equal(fill_simple(c, "k", "kept", 1000, 0), 0);
    weft_cache_hit h1, h2;
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 10, &h1, NULL, NULL), WEFT_CACHE_HIT);
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 20, &h2, NULL, NULL), WEFT_CACHE_HIT);
    assert_true(h1.e == h2.e);
    weft_cache_expire(c, 1000);
    weft_cache_stats st = stats(c);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    assert_memory_equal(h1.body.p, "kept", 4);
    weft_cache_hit_release(c, &h1);
    assert_memory_equal(h2.body.p, "kept", 4); /* second ref still holds it */
    assert_int_equal(h2.status, 200);
    weft_cache_hit_release(c, &h2);
    weft_cache_free(c);
}

/* ------------------------------------------------------------------ */
/* re-entrant callbacks */

struct reentrant {
    weft_cache *c;
    int calls;
    int same_key_result;
    int other_key_result;
    int other_fill_rc;
    char same_body[16];
};

static void reentrant_cb(void *w, bool ok, weft_cache_hit *hit)
{
    struct reentrant *r = w;
    r->calls++;
    if (!ok)
        return;
    weft_cache_hit h2;
    /* same key: the entry is already stored */
    r->same_key_result = weft_cache_lookup(r->c, S("k"), NULL, 1, &h2, NULL, NULL);
    if (r->same_key_result == WEFT_CACHE_HIT) {
        memcpy(r->same_body, h2.body.p, h2.body.n < 15 ? h2.body.n : 15);
        weft_cache_hit_release(r->c, &h2);
    }
    /* another key: MISS, then fill it from inside the callback */
    r->other_key_result = weft_cache_lookup(r->c, S("other"), NULL, 1, &h2, r, reentrant_cb);
    r->other_fill_rc = fill_simple(r->c, "other", "o", 60000, 1);
    weft_cache_hit_release(r->c, hit);
}

static void test_reentrant_callback_lookup(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    weft_cache_hit hit;
    struct reentrant r = {.c = c};
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, NULL, NULL), WEFT_CACHE_MISS);
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, &r, reentrant_cb),
                     WEFT_CACHE_WAIT);
    assert_int_equal(fill_simple(c, "k", "kv", 60000, 1), 0);
    assert_int_equal(r.calls, 1); /* not woken again by the nested fill */
    assert_int_equal(r.same_key_result, WEFT_CACHE_HIT);
    assert_string_equal(r.same_body, "kv");
    assert_int_equal(r.other_key_result, WEFT_CACHE_MISS);
    assert_int_equal(r.other_fill_rc, 0);
    char body[8];
    assert_int_equal(probe(c, "other", 2, body, sizeof(body)), WEFT_CACHE_HIT);
    assert_string_equal(body, "o");
    weft_cache_stats st = stats(c);
    assert_int_equal(st.stores, 2);
    assert_int_equal(st.entries, 2);
    weft_cache_free(c);
}

/* The first waiter replaces and then evicts the entry the others are being handed. */
struct replacer {
    weft_cache *c;
    int calls;
};

static void replacer_cb(void *w, bool ok, weft_cache_hit *hit)
{
    struct replacer *r = w;
    r->calls++;
    assert_true(ok);
    weft_cache_hit_release(r->c, hit);
    assert_int_equal(fill_simple(r->c, "k", "v2", 60000, 1), 0);
    weft_cache_expire(r->c, UINT64_MAX);
}

static void test_reentrant_callback_replaces_entry(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LFU);
    weft_cache_hit hit;
    struct replacer first = {.c = c};
    struct waiter w[2] = {{.c = c}, {.c = c}};
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, NULL, NULL), WEFT_CACHE_MISS);
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, &first, replacer_cb),
                     WEFT_CACHE_WAIT);
    for (int i = 0; i < 2; i++)
        assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, &w[i], waiter_cb),
                         WEFT_CACHE_WAIT);
    assert_int_equal(fill_simple(c, "k", "v1", 60000, 0), 0);
    assert_int_equal(first.calls, 1);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(w[i].calls, 1);
        assert_true(w[i].ok);
        assert_string_equal(w[i].body, "v1"); /* the fetched entry, kept alive */
    }
    weft_cache_stats st = stats(c);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.stores, 2);
    weft_cache_free(c);
}

/* ------------------------------------------------------------------ */
/* teardown and bad input */

static void test_free_with_outstanding_state(void **state)
{
    (void)state;
    size_t s = entry_size("A", "aaaa");
    weft_cache *c = weft_cache_new(s, WEFT_CACHE_LFU);
    weft_cache_hit hit, unused;
    struct waiter w = {.c = c};
    assert_int_equal(fill_simple(c, "A", "aaaa", 60000, 0), 0);
    assert_int_equal(weft_cache_lookup(c, S("A"), NULL, 0, &hit, NULL, NULL), WEFT_CACHE_HIT);
    assert_int_equal(fill_simple(c, "B", "bbbb", 60000, 0), 0); /* A is now a zombie */
    assert_int_equal(weft_cache_lookup(c, S("P"), NULL, 0, &unused, NULL, NULL), WEFT_CACHE_MISS);
    assert_int_equal(weft_cache_lookup(c, S("P"), NULL, 0, &unused, &w, waiter_cb),
                     WEFT_CACHE_WAIT);
    /* freeing drops zombies, pending fetches and waiters (no callbacks); LSan checks */
    weft_cache_free(c);
    assert_int_equal(w.calls, 0);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    assert_null(weft_cache_new(1024, 2));
    assert_null(weft_cache_new(1024, -1));
    weft_cache_free(NULL);
    weft_cache_hit hit;
    memset(&hit, 0x5a, sizeof(hit));
    assert_int_equal(weft_cache_lookup(NULL, S("k"), NULL, 0, &hit, NULL, NULL), WEFT_CACHE_MISS);
    assert_null(hit.e);
    assert_int_equal(fill_simple(NULL, "k", "v", 1000, 0), WEFT_EINVAL);
    weft_cache_abandon(NULL, S("k"));
    weft_cache_cancel_wait(NULL, S("k"), NULL);
    weft_cache_expire(NULL, 0);
    weft_cache_hit_release(NULL, NULL);
    weft_cache_stats st;
    weft_cache_stats_get(NULL, &st);
    assert_int_equal(st.entries, 0);

    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    weft_cache_hit_release(c, NULL);
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, NULL, NULL, NULL), WEFT_CACHE_MISS);
    assert_int_equal(weft_cache_lookup(c, (weft_str){NULL, 3}, NULL, 0, &hit, NULL, NULL),
                     WEFT_CACHE_MISS);
    weft_hdrs broken = {NULL, NULL, 2};
    assert_false(weft_cache_storable(200, &broken, 1000, NULL));
    assert_false(weft_cache_request_ok(WEFT_METHOD_GET, &broken, true));
    assert_true(weft_cache_storable(200, NULL, 1000, NULL)); /* ttl out is optional */
    assert_int_equal(weft_cache_fill(c, S("k"), NULL, 200, &broken, S("v"), 1000, 0), WEFT_EINVAL);
    assert_int_equal(weft_cache_fill(c, S("k"), NULL, 200, NULL, (weft_str){NULL, 4}, 1000, 0),
                     WEFT_EINVAL);
    /* an empty key and an empty body are fine */
    assert_int_equal(weft_cache_fill(c, WEFT_STR_NULL, NULL, 204, NULL, WEFT_STR_NULL, 1000, 0), 0);
    assert_int_equal(weft_cache_lookup(c, WEFT_STR_NULL, NULL, 0, &hit, NULL, NULL),
                     WEFT_CACHE_HIT);
    assert_int_equal(hit.status, 204);
    assert_int_equal(hit.body.n, 0);
    weft_cache_hit_release(c, &hit);
    st = stats(c);
    assert_int_equal(st.stores, 1);
    assert_int_equal(st.entries, 1);
    weft_cache_free(c);
}

static void test_fill_zero_ttl_releases_waiters(void **state)
{
    (void)state;
    weft_cache *c = weft_cache_new(1u << 20, WEFT_CACHE_LRU);
    weft_cache_hit hit;
    struct waiter w = {.c = c};
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, NULL, NULL), WEFT_CACHE_MISS);
    assert_int_equal(weft_cache_lookup(c, S("k"), NULL, 0, &hit, &w, waiter_cb), WEFT_CACHE_WAIT);
    assert_int_equal(fill_simple(c, "k", "v", 0, 0), WEFT_EINVAL);
    assert_int_equal(w.calls, 1);
    assert_false(w.ok);
    weft_cache_stats st = stats(c);
    assert_int_equal(st.stores, 0);
    assert_int_equal(st.entries, 0);
    weft_cache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_storable_default_ttl),
        cmocka_unit_test(test_storable_max_age),
        cmocka_unit_test(test_storable_smaxage_precedence),
        cmocka_unit_test(test_storable_no_store),
        cmocka_unit_test(test_storable_private),
        cmocka_unit_test(test_storable_no_cache),
        cmocka_unit_test(test_storable_max_age_zero),
        cmocka_unit_test(test_storable_invalid_numbers),
        cmocka_unit_test(test_storable_quoted_values),
        cmocka_unit_test(test_storable_mixed_case_and_whitespace),
        cmocka_unit_test(test_storable_set_cookie),
        cmocka_unit_test(test_storable_vary_star),
        cmocka_unit_test(test_storable_status_matrix),
        cmocka_unit_test(test_request_ok_methods),
        cmocka_unit_test(test_request_ok_cache_control),
        cmocka_unit_test(test_request_ok_authorization),
        cmocka_unit_test(test_hit_after_fill_exact),
        cmocka_unit_test(test_keys_are_exact_bytes),
        cmocka_unit_test(test_fill_replaces_same_variant),
        cmocka_unit_test(test_expiry_and_age),
        cmocka_unit_test(test_expire_sweeps_all_expired),
        cmocka_unit_test(test_vary_variants_coexist),
        cmocka_unit_test(test_vary_absent_vs_empty),
        cmocka_unit_test(test_vary_multiple_names_and_fields),
        cmocka_unit_test(test_vary_variant_cap),
        cmocka_unit_test(test_fill_vary_star_rejected),
        cmocka_unit_test(test_lru_eviction_order),
        cmocka_unit_test(test_lru_touch_changes_victim),
        cmocka_unit_test(test_lfu_keeps_frequent),
        cmocka_unit_test(test_lru_same_scenario_evicts_frequent),
        cmocka_unit_test(test_lfu_ties_go_to_least_recent),
        cmocka_unit_test(test_stress_lru),
        cmocka_unit_test(test_stress_lfu),
        cmocka_unit_test(test_model_lru),
        cmocka_unit_test(test_model_lfu),
        cmocka_unit_test(test_many_keys_table_growth),
        cmocka_unit_test(test_bytes_return_to_zero),
        cmocka_unit_test(test_too_big_is_refused),
        cmocka_unit_test(test_too_big_releases_waiters),
        cmocka_unit_test(test_coalesce_fill_wakes_all),
        cmocka_unit_test(test_coalesce_abandon),
        cmocka_unit_test(test_cancel_wait),
        cmocka_unit_test(test_no_coalescing_without_waiter),
        cmocka_unit_test(test_miss_reports_fetch_owner),
        cmocka_unit_test(test_waiters_get_fetched_variant),
        cmocka_unit_test(test_hit_ref_survives_eviction),
        cmocka_unit_test(test_hit_ref_survives_expiry),
        cmocka_unit_test(test_reentrant_callback_lookup),
        cmocka_unit_test(test_reentrant_callback_replaces_entry),
        cmocka_unit_test(test_free_with_outstanding_state),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_fill_zero_ttl_releases_waiters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
