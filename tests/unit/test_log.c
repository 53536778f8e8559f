/*
 * test_log.c — unit tests for structured logging: text (logfmt) and JSON
 * lines, quoting/escaping, level filtering, request ids, truncation of long
 * lines and whole-line writes from concurrent threads.
 *
 * Output is captured with weft_log_set_fd: a tmpfile for single-threaded
 * tests, a pipe drained by a reader thread for the concurrency test. JSON
 * lines are checked with jansson; text lines with a small strict logfmt
 * parser below (key=value pairs separated by one space, values either bare
 * or double-quoted with JSON escapes). Every test restores the defaults.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "weft/log.h"

/* ------------------------------------------------------------------ */
/* capture */

static FILE *cap_file;

static void cap_begin(void)
{
    cap_file = tmpfile();
    assert_non_null(cap_file);
    weft_log_set_fd(fileno(cap_file));
}

/* Stop capturing; returns everything written (NUL-terminated, malloc'd). */
static char *cap_end(size_t *len_out)
{
    weft_log_set_fd(2);
    int fd = fileno(cap_file);
    off_t size = lseek(fd, 0, SEEK_END);
    char *s = malloc((size_t)size + 1);
    size_t got = 0;
    while (s && got < (size_t)size) {
        ssize_t r = pread(fd, s + got, (size_t)size - got, (off_t)got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    if (s)
        s[got] = '\0';
    fclose(cap_file);
    cap_file = NULL;
    if (len_out)
        *len_out = got;
    return s;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        if (*s == '\n')
            n++;
    return n;
}

static int setup(void **state)
{
    (void)state;
    weft_log_set_level(WEFT_LOG_INFO);
    weft_log_set_format(WEFT_LOG_TEXT);
    weft_log_set_request_id(NULL, 0);
    weft_log_set_fd(2);
    return 0;
}

static int teardown(void **state)
{
    if (cap_file) {
        fclose(cap_file);
        cap_file = NULL;
    }
    return setup(state);
}

/* ------------------------------------------------------------------ */
/* a strict logfmt parser */

#define MAXKV 32
typedef struct kvline {
    int n;
    char key[MAXKV][64];
    char val[MAXKV][4096]; /* unescaped */
    bool quoted[MAXKV];
} kvline;

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Parse one line (without '\n'); returns false on any syntax error. */
static bool logfmt_parse(const char *p, size_t len, kvline *out)
{
    const char *end = p + len;
    out->n = 0;
    while (p < end) {
        if (out->n == MAXKV)
            return false;
        int i = out->n;
        size_t k = 0;
        while (p < end && *p != '=' && *p != ' ' && *p != '"') {
            if (k + 1 >= sizeof out->key[i])
                return false;
            out->key[i][k++] = *p++;
        }
        out->key[i][k] = '\0';
        if (k == 0 || p == end || *p != '=')
            return false;
        p++;
        size_t v = 0;
        out->quoted[i] = false;
        if (p < end && *p == '"') {
            out->quoted[i] = true;
            p++;
            bool closed = false;
            while (p < end) {
                char c = *p++;
                if (c == '"') {
                    closed = true;
                    break;
                }
                if ((unsigned char)c < 0x20)
                    return false;
                if (c == '\\') {
                    if (p == end)
                        return false;
                    char e = *p++;
                    switch (e) {
                    case '"': c = '"'; break;
                    case '\\': c = '\\'; break;
                    case 'n': c = '\n'; break;
                    case 't': c = '\t'; break;
                    case 'r': c = '\r'; break;
                    case 'u': {
                        if (end - p < 4)
                            return false;
                        int x = 0;
                        for (int j = 0; j < 4; j++) {
                            int h = hexval(p[j]);
                            if (h < 0)
                                return false;
                            x = x * 16 + h;
                        }
                        p += 4;
                        if (x > 0xff)
                            return false;
                        c = (char)x;
                        break;
                    }
                    default: return false;
                    }
                }
                if (v + 1 >= sizeof out->val[i])
                    return false;
                out->val[i][v++] = c;
            }
            if (!closed)
                return false;
        } else {
            while (p < end && *p != ' ') {
                unsigned char c = (unsigned char)*p;
                if (c < 0x20 || c == '"' || c == '=' || c == 0x7f)
                    return false;
                if (v + 1 >= sizeof out->val[i])
                    return false;
                out->val[i][v++] = *p++;
            }
            if (v == 0)
                return false; /* empty values must be quoted */
        }
        out->val[i][v] = '\0';
        out->n++;
        if (p < end) {
            if (*p != ' ' || p + 1 == end)
                return false;
            p++;
        }
    }
    return out->n > 0;
}

static const char *kv_get(const kvline *l, const char *key)
{
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->key[i], key) == 0)
            return l->val[i];
    return NULL;
}

/* "2026-11-22T10:00:00.123Z" within a few seconds of now */
static void assert_ts_now(const char *ts)
{
    assert_int_equal(strlen(ts), 24);
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    for (int i = 0; i < 24; i++) {
        if (shape[i] == 'd')
            assert_true(ts[i] >= '0' && ts[i] <= '9');
        else
            assert_int_equal(ts[i], shape[i]);
    }
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    assert_non_null(strptime(ts, "%Y-%m-%dT%H:%M:%S", &tm));
    time_t t = timegm(&tm);
    time_t now = time(NULL);
    assert_true(t <= now && t >= now - 5);
}

static kvline *parse_single_text_line(const char *out)
{
    static kvline kl;
    size_t n = strlen(out);
    assert_true(n > 0);
    assert_int_equal(out[n - 1], '\n');
    assert_int_equal(count_lines(out), 1);
    if (!logfmt_parse(out, n - 1, &kl))
        fail_msg("not valid logfmt: %s", out);
    return &kl;
}

/* ------------------------------------------------------------------ */
/* text format */

static void test_text_line_fields_in_order(void **state)
{
    (void)state;
    cap_begin();
    weft_log(WEFT_LOG_INFO, "listening", WEFT_KV_STR("addr", "127.0.0.1:8080"),
             WEFT_KV_INT("workers", 2), WEFT_KV_INT("neg", -7),
             WEFT_KV_UINT("big", UINT64_MAX), WEFT_KV_BOOL("tls", false),
             WEFT_KV_BOOL("h2", true), WEFT_KV_FLOAT("ratio", 0.25),
             WEFT_KV_SLICE("path", ((weft_str){"/abcdef", 4})));
    char *out = cap_end(NULL);
    assert_non_null(out);
    /* ts is variable; everything after it is exact */
    assert_memory_equal(out, "ts=", 3);
    assert_true(strlen(out) > 27);
    assert_string_equal(out + 27, " level=info msg=listening addr=127.0.0.1:8080 workers=2 neg=-7"
                                  " big=18446744073709551615 tls=false h2=true ratio=0.25 path=/abc\n");
    kvline *kl = parse_single_text_line(out);
    assert_int_equal(kl->n, 11);
    static const char *const keys[] = {"ts",  "level", "msg", "addr", "workers", "neg",
                                       "big", "tls",   "h2",  "ratio", "path"};
    for (int i = 0; i < 11; i++)
        assert_string_equal(kl->key[i], keys[i]);
    assert_ts_now(kl->val[0]);
    free(out);

    /* a line with no fields */
    cap_begin();
    weft_log(WEFT_LOG_ERROR, "boom");
    out = cap_end(NULL);
    assert_string_equal(strchr(out, ' '), " level=error msg=boom\n");
    free(out);
}

static void test_text_quoting_and_escaping(void **state)
{
    (void)state;
    cap_begin();
    weft_log(WEFT_LOG_WARN, "two words", WEFT_KV_STR("space", "hello world"),
             WEFT_KV_STR("quote", "say \"hi\""), WEFT_KV_STR("eq", "a=b"),
             WEFT_KV_STR("empty", ""), WEFT_KV_STR("nl", "l1\nl2"),
             WEFT_KV_STR("tab", "a\tb"), WEFT_KV_STR("bs", "C:\\dir"),
             WEFT_KV_STR("bsq", "C:\\my dir"), WEFT_KV_STR("nul", NULL),
             WEFT_KV_STR("del", "x\x7fy"));
    char *out = cap_end(NULL);
    const char *rest = strchr(out, ' ');
    assert_non_null(rest);
    assert_string_equal(rest, " level=warn msg=\"two words\" space=\"hello world\""
                              " quote=\"say \\\"hi\\\"\" eq=\"a=b\" empty=\"\""
                              " nl=\"l1\\u000al2\" tab=\"a\\u0009b\" bs=C:\\dir"
                              " bsq=\"C:\\\\my dir\" nul=null del=\"x\\u007fy\"\n");
    kvline *kl = parse_single_text_line(out);
    /* and the parser gets the original values back */
    assert_string_equal(kv_get(kl, "msg"), "two words");
    assert_string_equal(kv_get(kl, "quote"), "say \"hi\"");
    assert_string_equal(kv_get(kl, "eq"), "a=b");
    assert_string_equal(kv_get(kl, "empty"), "");
    assert_string_equal(kv_get(kl, "nl"), "l1\nl2");
    assert_string_equal(kv_get(kl, "tab"), "a\tb");
    assert_string_equal(kv_get(kl, "bsq"), "C:\\my dir");
    assert_string_equal(kv_get(kl, "del"), "x\x7fy");
    free(out);
}

/* ------------------------------------------------------------------ */
/* JSON format */

static json_t *parse_json_line(const char *out, size_t len)
{
    assert_true(len > 0);
    assert_int_equal(out[len - 1], '\n');
    assert_null(memchr(out, '\n', len - 1)); /* a single line */
    json_error_t err;
    json_t *j = json_loadb(out, len - 1, JSON_REJECT_DUPLICATES, &err);
    if (!j)
        fail_msg("invalid JSON (%s at %d): %.300s", err.text, err.position, out);
    assert_true(json_is_object(j));
    return j;
}

static void test_json_keys_and_types(void **state)
{
    (void)state;
    weft_log_set_format(WEFT_LOG_JSON);
    cap_begin();
    weft_log(WEFT_LOG_INFO, "request done", WEFT_KV_INT("status", 200), WEFT_KV_INT("neg", -3),
             WEFT_KV_UINT("bytes", 4000000000u), WEFT_KV_BOOL("keepalive", true),
             WEFT_KV_BOOL("tls", false), WEFT_KV_FLOAT("secs", 0.125),
             WEFT_KV_FLOAT("tiny", 1e-7), WEFT_KV_STR("path", "/a b\"c\\d"),
             WEFT_KV_SLICE("method", ((weft_str){"GETXYZ", 3})), WEFT_KV_STR("none", NULL));
    size_t len;
    char *out = cap_end(&len);
    assert_memory_equal(out, "{\"ts\":\"", 7);
    json_t *j = parse_json_line(out, len);
    assert_int_equal(json_object_size(j), 13);
    json_t *v;
    assert_true(json_is_string(v = json_object_get(j, "ts")));
    assert_ts_now(json_string_value(v));
    assert_string_equal(json_string_value(json_object_get(j, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "request done");
    assert_true(json_is_integer(v = json_object_get(j, "status")));
    assert_int_equal(json_integer_value(v), 200);
    assert_true(json_is_integer(v = json_object_get(j, "neg")));
    assert_true(json_integer_value(v) == -3);
    assert_true(json_is_integer(v = json_object_get(j, "bytes")));
    assert_true(json_integer_value(v) == 4000000000LL);
    assert_true(json_is_true(json_object_get(j, "keepalive")));
    assert_true(json_is_false(json_object_get(j, "tls")));
    assert_true(json_is_real(v = json_object_get(j, "secs")));
    assert_true(json_real_value(v) == 0.125);
    assert_true(json_is_number(v = json_object_get(j, "tiny")));
    assert_true(json_number_value(v) == 1e-7);
    assert_true(json_is_string(v = json_object_get(j, "path")));
    assert_string_equal(json_string_value(v), "/a b\"c\\d");
    assert_string_equal(json_string_value(json_object_get(j, "method")), "GET");
    assert_true(json_is_null(json_object_get(j, "none")));
    json_decref(j);
    free(out);
}

static void test_json_escaping_round_trip(void **state)
{
    (void)state;
    weft_log_set_format(WEFT_LOG_JSON);
    static const char nasty[] = "q\"b\\n\nr\rt\tc\x01\x1f" "d\x7f" "e/\xc3\xa9";
    cap_begin();
    weft_log(WEFT_LOG_ERROR, "m\"sg\n", WEFT_KV_STR("k\"ey", nasty));
    size_t len;
    char *out = cap_end(&len);
    json_t *j = parse_json_line(out, len);
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "m\"sg\n");
    assert_string_equal(json_string_value(json_object_get(j, "k\"ey")), nasty);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "error");
    json_decref(j);
    free(out);
}

static void test_json_nonfinite_float_still_valid(void **state)
{
    (void)state;
    /* log.h promises one JSON object per line: "nan"/"inf" are not JSON */
    weft_log_set_format(WEFT_LOG_JSON);
    cap_begin();
    weft_log(WEFT_LOG_INFO, "ratio", WEFT_KV_FLOAT("nan", NAN), WEFT_KV_FLOAT("inf", INFINITY));
    size_t len;
    char *out = cap_end(&len);
    json_error_t err;
    json_t *j = json_loadb(out, len ? len - 1 : 0, 0, &err);
    bool ok = j != NULL && json_object_get(j, "nan") && json_object_get(j, "inf");
    if (!ok)
        print_error("line was: %s", out);
    json_decref(j);
    free(out);
    assert_true(ok);
}

static void test_json_invalid_utf8_still_valid(void **state)
{
    (void)state;
    /* arbitrary client bytes (e.g. a decoded path) must not break the line */
    weft_log_set_format(WEFT_LOG_JSON);
    cap_begin();
    weft_log(WEFT_LOG_INFO, "bad path", WEFT_KV_STR("path", "/a\xff\xfe" "b\xc3"));
    size_t len;
    char *out = cap_end(&len);
    json_error_t err;
    json_t *j = json_loadb(out, len ? len - 1 : 0, 0, &err);
    bool ok = j != NULL && json_is_string(json_object_get(j, "path"));
    json_decref(j);
    free(out);
    assert_true(ok);
}

/* ------------------------------------------------------------------ */
/* levels */

static void test_utf8_lossy(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t n;
        const char *want;
    } cases[] = {
        {"", 0, ""},
        {"plain/path.yaml", 15, "plain/path.yaml"},
        {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"},
        {"caf\xe9/x", 6, "caf\xef\xbf\xbd/x"},            /* latin-1 byte */
        {"\xc0\xaf", 2, "\xef\xbf\xbd\xef\xbf\xbd"},          /* overlong '/' */
        {"\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* surrogate */
        {"ab\xe2\x82", 4, "ab\xef\xbf\xbd\xef\xbf\xbd"},      /* cut sequence */
        {"a\0b", 3, "a\0b"},                                  /* NUL kept */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = weft_utf8_lossy(cases[i].in, cases[i].n);
        assert_non_null(got);
        size_t wn = cases[i].n == 3 && cases[i].in[1] == '\0' ? 3 : strlen(cases[i].want);
        assert_memory_equal(got, cases[i].want, wn);
        assert_int_equal(got[wn], '\0');
        free(got);
    }
}

static void test_level_filtering(void **state)
{
    (void)state;
    cap_begin();
    weft_log(WEFT_LOG_DEBUG, "d1");
    weft_log_kv(WEFT_LOG_DEBUG, "d2", NULL); /* the function checks too */
    weft_log(WEFT_LOG_INFO, "i1");
    weft_log(WEFT_LOG_WARN, "w1");
    weft_log(WEFT_LOG_ERROR, "e1");
    weft_log_set_level(WEFT_LOG_WARN);
    weft_log(WEFT_LOG_INFO, "i2");
    weft_log(WEFT_LOG_WARN, "w2");
    weft_log_set_level(WEFT_LOG_DEBUG);
    weft_log(WEFT_LOG_DEBUG, "d3");
    weft_log_set_level(WEFT_LOG_OFF);
    weft_log(WEFT_LOG_ERROR, "e2");
    weft_log_set_level(WEFT_LOG_DEBUG);
    weft_log_kv(WEFT_LOG_OFF, "off", NULL); /* not a level to log at */
    weft_log_kv(7, "seven", NULL);
    weft_log_kv(-1, "minus", NULL);
    char *out = cap_end(NULL);
    assert_int_equal(count_lines(out), 5);
    static const char *const want[] = {"level=info msg=i1", "level=warn msg=w1",
                                       "level=error msg=e1", "level=warn msg=w2",
                                       "level=debug msg=d3"};
    const char *p = out;
    for (int i = 0; i < 5; i++) {
        const char *sp = strchr(p, ' ');
        const char *nl = strchr(p, '\n');
        assert_non_null(sp);
        assert_non_null(nl);
        assert_int_equal((size_t)(nl - sp - 1), strlen(want[i]));
        assert_memory_equal(sp + 1, want[i], strlen(want[i]));
        p = nl + 1;
    }
    free(out);
}

static void test_level_and_format_names(void **state)
{
    (void)state;
    assert_int_equal(weft_log_level_from("debug"), WEFT_LOG_DEBUG);
    assert_int_equal(weft_log_level_from("info"), WEFT_LOG_INFO);
    assert_int_equal(weft_log_level_from("warn"), WEFT_LOG_WARN);
    assert_int_equal(weft_log_level_from("warning"), WEFT_LOG_WARN);
    assert_int_equal(weft_log_level_from("error"), WEFT_LOG_ERROR);
    assert_int_equal(weft_log_level_from("off"), WEFT_LOG_OFF);
    assert_int_equal(weft_log_level_from("verbose"), -1);
    assert_int_equal(weft_log_level_from(""), -1);
    assert_int_equal(weft_log_format_from("text"), WEFT_LOG_TEXT);
    assert_int_equal(weft_log_format_from("json"), WEFT_LOG_JSON);
    assert_int_equal(weft_log_format_from("xml"), -1);
}

/* ------------------------------------------------------------------ */
/* request id */

static void *log_from_other_thread(void *arg)
{
    (void)arg;
    weft_log(WEFT_LOG_INFO, "other");
    return NULL;
}

static void test_request_id(void **state)
{
    (void)state;
    static const char rid[] = "req-123XYZ";
    cap_begin();
    weft_log_set_request_id(rid, 7);
    weft_log(WEFT_LOG_INFO, "with", WEFT_KV_INT("n", 1));
    /* the id is per thread */
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, log_from_other_thread, NULL), 0);
    pthread_join(th, NULL);
    weft_log_set_request_id(NULL, 0);
    weft_log(WEFT_LOG_INFO, "without", WEFT_KV_INT("n", 2));
    weft_log_set_request_id("has space", 9);
    weft_log(WEFT_LOG_INFO, "quoted");
    weft_log_set_request_id(NULL, 5);
    char *out = cap_end(NULL);
    assert_int_equal(count_lines(out), 4);
    char *l1 = out, *l2 = strchr(l1, '\n') + 1, *l3 = strchr(l2, '\n') + 1;
    char *l4 = strchr(l3, '\n') + 1;
    l2[-1] = l3[-1] = l4[-1] = '\0';
    assert_string_equal(strchr(l1, ' '), " level=info msg=with request_id=req-123 n=1");
    assert_string_equal(strchr(l2, ' '), " level=info msg=other");
    assert_string_equal(strchr(l3, ' '), " level=info msg=without n=2");
    assert_string_equal(strchr(l4, ' '), " level=info msg=quoted request_id=\"has space\"\n");
    free(out);

    weft_log_set_format(WEFT_LOG_JSON);
    cap_begin();
    weft_log_set_request_id(rid, 7);
    weft_log(WEFT_LOG_INFO, "json");
    weft_log_set_request_id(NULL, 0);
    weft_log(WEFT_LOG_INFO, "json2");
    size_t len;
    out = cap_end(&len);
    char *second = strchr(out, '\n') + 1;
    json_t *j = parse_json_line(out, (size_t)(second - out));
    assert_string_equal(json_string_value(json_object_get(j, "request_id")), "req-123");
    json_decref(j);
    j = parse_json_line(second, strlen(second));
    assert_null(json_object_get(j, "request_id"));
    json_decref(j);
    free(out);
}

/* ------------------------------------------------------------------ */
/* truncation */

static void test_long_value_truncated_text(void **state)
{
    (void)state;
    char *big = malloc(10001);
    assert_non_null(big);
    memset(big, 'a', 10000);
    big[10000] = '\0';
    cap_begin();
    weft_log(WEFT_LOG_INFO, "big", WEFT_KV_STR("v", big), WEFT_KV_INT("after", 1));
    weft_log(WEFT_LOG_INFO, "next"); /* the following line is intact */
    size_t len;
    char *out = cap_end(&len);
    free(big);
    assert_int_equal(count_lines(out), 2);
    char *nl = strchr(out, '\n');
    size_t l1 = (size_t)(nl - out) + 1;
    assert_true(l1 <= 4096);
    assert_true(l1 > 3000);
    static const char tail[] = " truncated=true\n";
    assert_memory_equal(nl + 1 - (sizeof tail - 1), tail, sizeof tail - 1);
    assert_memory_equal(out, "ts=", 3);
    assert_non_null(strstr(out, " level=info msg=big v=aaaa"));
    assert_string_equal(strchr(nl + 1, ' '), " level=info msg=next\n");
    nl[1] = '\0'; /* just the first line */
    kvline *kl = parse_single_text_line(out);
    assert_string_equal(kv_get(kl, "truncated"), "true");
    assert_null(kv_get(kl, "after"));
    free(out);
}

static void test_long_quoted_value_truncated_text_is_logfmt(void **state)
{
    (void)state;
    /* the cut falls inside a quoted value: the line must stay parseable */
    char *big = malloc(10001);
    assert_non_null(big);
    for (int i = 0; i < 10000; i++)
        big[i] = i % 10 == 9 ? ' ' : 'b';
    big[10000] = '\0';
    cap_begin();
    weft_log(WEFT_LOG_INFO, "big", WEFT_KV_STR("v", big));
    size_t len;
    char *out = cap_end(&len);
    free(big);
    assert_int_equal(count_lines(out), 1);
    assert_true(len <= 4096);
    static const char tail[] = " truncated=true\n";
    assert_memory_equal(out + len - (sizeof tail - 1), tail, sizeof tail - 1);
    static kvline kl;
    bool ok = logfmt_parse(out, len - 1, &kl);
    free(out);
    assert_true(ok);
}

static void test_long_value_truncated_json_is_valid(void **state)
{
    (void)state;
    weft_log_set_format(WEFT_LOG_JSON);
    char *big = malloc(10001);
    assert_non_null(big);
    memset(big, 'j', 10000);
    big[10000] = '\0';
    cap_begin();
    weft_log(WEFT_LOG_INFO, "big", WEFT_KV_STR("v", big));
    size_t len;
    char *out = cap_end(&len);
    free(big);
    assert_int_equal(count_lines(out), 1);
    assert_true(len <= 4096);
    assert_int_equal(out[len - 1], '\n');
    json_error_t err;
    json_t *j = json_loadb(out, len - 1, 0, &err);
    bool ok = j && json_is_true(json_object_get(j, "truncated"));
    if (!j)
        print_error("invalid JSON: %s (tail: %s)", err.text, out + len - 40);
    json_decref(j);
    free(out);
    assert_true(ok);
}

/* ------------------------------------------------------------------ */
/* concurrency */

#define NTHREADS 4
#define PER_THREAD 2000

typedef struct reader_arg {
    int fd;
    char *buf;
    size_t len, cap;
} reader_arg;

static void *reader_main(void *p)
{
    reader_arg *r = p;
    for (;;) {
        if (r->cap - r->len < 65536) {
            size_t ncap = r->cap * 2;
            char *nb = realloc(r->buf, ncap);
            if (!nb)
                return NULL;
            r->buf = nb;
            r->cap = ncap;
        }
        ssize_t n = read(r->fd, r->buf + r->len, r->cap - r->len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        r->len += (size_t)n;
    }
    r->buf[r->len] = '\0';
    return NULL;
}

static void *writer_main(void *p)
{
    int id = (int)(intptr_t)p;
    char pad[400];
    for (int i = 0; i < PER_THREAD; i++) {
        size_t n = (size_t)((i * 37 + id * 11) % 380) + 1;
        memset(pad, 'a' + id, n);
        pad[n] = '\0';
        if (i % 3 == 0 && n > 2)
            pad[n / 2] = ' '; /* some values need quoting */
        weft_log(WEFT_LOG_INFO, "tick", WEFT_KV_INT("thread", id), WEFT_KV_INT("seq", i),
                 WEFT_KV_STR("pad", pad));
    }
    return NULL;
}

static void test_concurrent_whole_lines(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    reader_arg r = {p[0], malloc(1 << 20), 0, 1 << 20};
    assert_non_null(r.buf);
    pthread_t rd, wr[NTHREADS];
    assert_int_equal(pthread_create(&rd, NULL, reader_main, &r), 0);
    weft_log_set_fd(p[1]);
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&wr[i], NULL, writer_main, (void *)(intptr_t)i), 0);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(wr[i], NULL);
    weft_log_set_fd(2);
    close(p[1]);
    pthread_join(rd, NULL);
    close(p[0]);
    assert_non_null(r.buf);

    int lines = 0, bad = 0, order_errors = 0;
    int next[NTHREADS] = {0};
    static kvline kl;
    char *s = r.buf;
    while (*s) {
        char *nl = strchr(s, '\n');
        if (!nl) {
            bad++;
            break;
        }
        lines++;
        if (!logfmt_parse(s, (size_t)(nl - s), &kl) || kl.n != 6 ||
            strcmp(kl.key[3], "thread") != 0 || strcmp(kl.key[4], "seq") != 0 ||
            strcmp(kl.key[5], "pad") != 0 || strcmp(kl.val[2], "tick") != 0) {
            bad++;
        } else {
            int id = atoi(kl.val[3]), seq = atoi(kl.val[4]);
            size_t n = (size_t)((seq * 37 + id * 11) % 380) + 1;
            if (id < 0 || id >= NTHREADS || strlen(kl.val[5]) != n || kl.val[5][0] != 'a' + id)
                bad++;
            else if (seq != next[id]++)
                order_errors++;
        }
        s = nl + 1;
    }
    free(r.buf);
    assert_int_equal(bad, 0);
    assert_int_equal(lines, NTHREADS * PER_THREAD);
    assert_int_equal(order_errors, 0);
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(next[i], PER_THREAD);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_text_line_fields_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_text_quoting_and_escaping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_keys_and_types, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_escaping_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_nonfinite_float_still_valid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_invalid_utf8_still_valid, setup, teardown),
        cmocka_unit_test(test_utf8_lossy),
        cmocka_unit_test_setup_teardown(test_level_filtering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_level_and_format_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_value_truncated_text, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_quoted_value_truncated_text_is_logfmt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_value_truncated_json_is_valid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_whole_lines, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
