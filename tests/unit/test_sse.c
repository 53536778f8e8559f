/*
 * test_sse.c — the framing of server-sent events (weft_sse_format).
 *
 * Each case compares the exact bytes. The first ones pin what the registry
 * watch and the log subscriptions put on the wire today (their integration
 * tests read the same bytes back); the others cover data with line breaks,
 * which the SSE spec requires to be split into one "data:" line per line,
 * and the snprintf-like contract used to size the buffer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <jansson.h>

#include "weft/sse.h"

/* Format into a fresh buffer and compare with the expected text. */
static void check(uint64_t id, weft_str event, weft_str data, const char *want)
{
    char buf[512];
    size_t n = weft_sse_format(buf, sizeof buf, id, event, data);
    assert_int_equal(n, strlen(want));
    assert_true(n <= sizeof buf);
    buf[n] = '\0';
    assert_string_equal(buf, want);
}

static weft_str S(const char *s)
{
    return (weft_str){s, strlen(s)};
}

static void test_registry_event(void **state)
{
    (void)state;
    check(42, WEFT_STR("put"), S("{\"service\":\"catalog\",\"id\":\"c1\"}"),
          "id: 42\nevent: put\ndata: {\"service\":\"catalog\",\"id\":\"c1\"}\n\n");
    check(43, WEFT_STR("delete"), S("{}"), "id: 43\nevent: delete\ndata: {}\n\n");
    /* the relist event has no id */
    check(WEFT_SSE_NO_ID, WEFT_STR("relist"), S("{\"revision\":7}"),
          "event: relist\ndata: {\"revision\":7}\n\n");
}

static void test_subscription_event(void **state)
{
    (void)state;
    check(17, WEFT_STR_NULL, S("{\"stream\":\"account-42\",\"version\":0}"),
          "id: 17\ndata: {\"stream\":\"account-42\",\"version\":0}\n\n");
    check(0, WEFT_STR_NULL, S("{}"), "id: 0\ndata: {}\n\n");
    check(UINT64_MAX - 1, WEFT_STR_NULL, S("1"), "id: 18446744073709551614\ndata: 1\n\n");
}

/* What both callers send is compact JSON from jansson: line breaks inside
 * strings are escaped, so the data is one line and goes out unchanged. */
static void test_compact_json_is_one_line(void **state)
{
    (void)state;
    json_t *o = json_pack("{s:s, s:s}", "note", "two\nlines\r\nand a CR\r", "id", "x");
    char *js = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    assert_non_null(js);
    assert_null(strpbrk(js, "\r\n"));
    char want[256];
    snprintf(want, sizeof want, "id: 5\nevent: put\ndata: %s\n\n", js);
    check(5, WEFT_STR("put"), S(js), want);
    free(js);
}

static void test_multiline_data(void **state)
{
    (void)state;
    check(1, WEFT_STR_NULL, S("a\nb"), "id: 1\ndata: a\ndata: b\n\n");
    /* LF, CRLF and CR each end one line */
    check(WEFT_SSE_NO_ID, WEFT_STR("x"), S("a\r\nb\rc\nd"),
          "event: x\ndata: a\ndata: b\ndata: c\ndata: d\n\n");
    /* a trailing break is an empty last line: a reader gets "a\n" back */
    check(WEFT_SSE_NO_ID, WEFT_STR_NULL, S("a\n"), "data: a\ndata: \n\n");
    /* CR then LF at the very end is one break */
    check(WEFT_SSE_NO_ID, WEFT_STR_NULL, S("a\r\n"), "data: a\ndata: \n\n");
    /* LF then CR are two */
    check(WEFT_SSE_NO_ID, WEFT_STR_NULL, S("a\n\rb"), "data: a\ndata: \ndata: b\n\n");
    check(WEFT_SSE_NO_ID, WEFT_STR_NULL, S("\n"), "data: \ndata: \n\n");
    check(WEFT_SSE_NO_ID, WEFT_STR_NULL, WEFT_STR_NULL, "data: \n\n");
}

static void test_event_name_with_break(void **state)
{
    (void)state;
    char buf[64];
    assert_int_equal(weft_sse_format(buf, sizeof buf, 1, WEFT_STR("a\nb"), S("{}")), 0);
    assert_int_equal(weft_sse_format(buf, sizeof buf, 1, WEFT_STR("a\r"), S("{}")), 0);
}

/* Like snprintf: the full length is returned whatever the capacity, and
 * nothing is written past cap. */
static void test_capacity(void **state)
{
    (void)state;
    const char *want = "id: 9\nevent: put\ndata: {\"a\":1}\ndata: x\n\n";
    size_t len = strlen(want);
    assert_int_equal(weft_sse_format(NULL, 0, 9, WEFT_STR("put"), S("{\"a\":1}\nx")), len);
    for (size_t cap = 0; cap <= len + 1; cap++) {
        char buf[128];
        memset(buf, '#', sizeof buf);
        size_t n = weft_sse_format(buf, cap, 9, WEFT_STR("put"), S("{\"a\":1}\nx"));
        assert_int_equal(n, len);
        for (size_t i = cap; i < sizeof buf; i++)
            assert_int_equal(buf[i], '#');
        if (cap >= len)
            assert_memory_equal(buf, want, len);
    }
}

/* An event larger than weft_sse_event's stack buffer frames the same way. */
static void test_large_data(void **state)
{
    (void)state;
    size_t dn = 100000;
    char *data = malloc(dn);
    assert_non_null(data);
    memset(data, 'z', dn);
    data[dn / 2] = '\n';
    size_t n = weft_sse_format(NULL, 0, 3, WEFT_STR_NULL, (weft_str){data, dn});
    char *buf = malloc(n);
    assert_non_null(buf);
    assert_int_equal(weft_sse_format(buf, n, 3, WEFT_STR_NULL, (weft_str){data, dn}), n);
    const char *head = "id: 3\ndata: ";
    assert_int_equal(n, strlen(head) + dn + strlen("\ndata: ") - 1 + 2);
    assert_memory_equal(buf, head, strlen(head));
    assert_memory_equal(buf + strlen(head) + dn / 2, "\ndata: z", 8);
    assert_memory_equal(buf + n - 3, "z\n\n", 3);
    free(buf);
    free(data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry_event),
        cmocka_unit_test(test_subscription_event),
        cmocka_unit_test(test_compact_json_is_one_line),
        cmocka_unit_test(test_multiline_data),
        cmocka_unit_test(test_event_name_with_break),
        cmocka_unit_test(test_capacity),
        cmocka_unit_test(test_large_data),
    };
    return cmocka_run_group_tests_name("sse", tests, NULL, NULL);
}
