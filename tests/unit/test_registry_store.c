/*
 * test_registry_store.c — the registry model on an explicit millisecond
 * clock: input validation, revisions, leases, the change history and
 * self-preservation, plus a scale check that runs under ASan/LSan.
 *
 * Expectations come from store.h and the design comment of store.c, not
 * from what the code happens to do. A case that could hang on a buggy
 * library (hash-table churn) runs in a forked child with a deadline, so a
 * hang is a failed test rather than a stuck suite.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "registry/store.h"

/* ------------------------------------------------------------------ */
/* helpers */

static const char *const TTL_MSG = "ttl: expected seconds (0.1-86400) or a duration like \"10s\"";

/* A valid minimal body: every error case below breaks exactly one field. */
static json_t *base_body(void)
{
    return json_pack("{s:s, s:i}", "address", "10.0.0.1", "port", 8080);
}

static json_t *body_with(const char *key, json_t *val)
{
    json_t *b = base_body();
    if (val)
        json_object_set_new(b, key, val);
    else
        json_object_del(b, key);
    return b;
}

/* Consumes body; asserts WEFT_EINVAL with exactly msg. */
static void expect_err(json_t *body, const char *msg)
{
    reg_input in;
    char why[256];
    memset(why, 0, sizeof why);
    int rc = reg_input_from_json(body, &in, why, sizeof why);
    json_decref(body);
    assert_int_equal(rc, WEFT_EINVAL);
    assert_string_equal(why, msg);
}

/* Consumes body; asserts success and returns the parsed ttl. */
static uint64_t parse_ttl(json_t *ttl)
{
    json_t *b = body_with("ttl", ttl);
    reg_input in;
    char why[256] = "";
    int rc = reg_input_from_json(b, &in, why, sizeof why);
    json_decref(b);
    if (rc != 0)
        fail_msg("ttl rejected: %s", why);
    return in.ttl_ms;
}

static reg_input mk_input(const char *addr, int64_t port, uint64_t ttl_ms)
{
    reg_input in;
    memset(&in, 0, sizeof in);
    in.address = addr;
    in.port = port;
    in.weight = 1;
    in.status = REG_UP;
    in.ttl_ms = ttl_ms;
    return in;
}

static reg_store *store_with(size_t history)
{
    reg_store_opts o;
    reg_store_opts_default(&o);
    if (history)
        o.history = history;
    reg_store *s = reg_store_new(&o);
    assert_non_null(s);
    return s;
}

static json_t *parse_event(const reg_event *e)
{
    assert_non_null(e->json);
    json_error_t je;
    json_t *j = json_loads(e->json, 0, &je);
    if (!j)
        fail_msg("event %llu json does not parse: %s (%s)", (unsigned long long)e->rev, je.text,
                 e->json);
    return j;
}

static const char *jstr(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_string(v))
        fail_msg("field %s missing or not a string", k);
    return json_string_value(v);
}

static json_int_t jint(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_integer(v))
        fail_msg("field %s missing or not an integer", k);
    return json_integer_value(v);
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Run fn in a child; returns its exit status, 128+signal, or -2 if it did
 * not finish within timeout_ms (the child is then killed by its pid). */
static int run_in_child_timeout(int (*fn)(void), int timeout_ms)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0)
        _exit(fn());
    int st = 0;
    for (int waited = 0;; waited += 10) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        if (waited >= timeout_ms) {
            kill(pid, SIGKILL);
            while (waitpid(pid, &st, 0) < 0) {
            }
            return -2;
        }
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return -1;
}

/* ------------------------------------------------------------------ */
/* reg_input_from_json */

static void test_input_full_body(void **state)
{
    (void)state;
    json_t *b = json_pack("{s:s, s:i, s:[s,s], s:{s:s, s:s}, s:s, s:s, s:i, s:s, s:s}", "address",
                          "api-1.internal", "port", 9090, "tags", "blue", "canary", "meta", "team",
                          "payments", "git", "abc123", "zone", "eu-west-1a", "version", "1.4.2",
                          "weight", 7, "status", "STARTING", "ttl", "10s");
    assert_non_null(b);
    reg_input in;
    char why[256] = "";
    assert_int_equal(reg_input_from_json(b, &in, why, sizeof why), 0);
    assert_string_equal(in.address, "api-1.internal");
    assert_int_equal(in.port, 9090);
    assert_int_equal(in.ntags, 2);
    assert_ptr_equal(in.meta, json_object_get(b, "meta")); /* borrowed, not copied */
    assert_int_equal(json_object_size(in.meta), 2);
    assert_string_equal(json_string_value(json_object_get(in.meta, "team")), "payments");
    assert_string_equal(in.zone, "eu-west-1a");
    assert_string_equal(in.version, "1.4.2");
    assert_int_equal(in.weight, 7);
    assert_int_equal(in.status, REG_STARTING);
    assert_int_equal(in.ttl_ms, 10000);
    json_decref(b);
}

static void test_input_defaults(void **state)
{
    (void)state;
    json_t *b = base_body();
    reg_input in;
    memset(&in, 0xab, sizeof in); /* the parser must reset every field */
    char why[256] = "";
    assert_int_equal(reg_input_from_json(b, &in, why, sizeof why), 0);
    assert_string_equal(in.address, "10.0.0.1");
    assert_int_equal(in.port, 8080);
    assert_int_equal(in.ntags, 0);
    assert_null(in.meta);
    assert_null(in.zone);
    assert_null(in.version);
    assert_int_equal(in.weight, 1);
    assert_int_equal(in.status, REG_UP);
    assert_int_equal(in.ttl_ms, 0);
    json_decref(b);
}

static void test_input_not_object(void **state)
{
    (void)state;
    const char *msg = "body: expected a JSON object";
    expect_err(json_array(), msg);
    expect_err(json_string("{}"), msg);
    expect_err(json_integer(1), msg);
    expect_err(json_null(), msg);
    expect_err(NULL, msg);
}

static void test_input_unknown_field(void **state)
{
    (void)state;
    expect_err(body_with("host", json_string("x")), "host: unknown field");
    /* reported before any other error, and case-sensitive */
    json_t *b = json_pack("{s:i, s:s}", "port", 0, "Address", "10.0.0.1");
    expect_err(b, "Address: unknown field");
}

static void test_input_address(void **state)
{
    (void)state;
    const char *shape = "address: expected a host name or IP address";
    const char *chars = "address: invalid character";
    expect_err(body_with("address", NULL), shape);
    expect_err(body_with("address", json_string("")), shape);
    expect_err(body_with("address", json_integer(10)), shape);
    expect_err(body_with("address", json_null()), shape);
    char longest[255];
    memset(longest, 'a', 254);
    longest[254] = '\0';
    expect_err(body_with("address", json_string(longest)), shape); /* 254 bytes */
    expect_err(body_with("address", json_string("10.0.0.1 ")), chars);
    expect_err(body_with("address", json_string("a b")), chars);
    expect_err(body_with("address", json_string("host/path")), chars);
    expect_err(body_with("address", json_string("a\"b")), chars);
    expect_err(body_with("address", json_string("a\tb")), chars);
    expect_err(body_with("address", json_string("h\xc3\xa9llo")), chars);
    /* accepted shapes */
    longest[253] = '\0';
    const char *ok[] = {"::1", "[fe80::1]", "db-1.eu.example.com", longest};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        json_t *b = body_with("address", json_string(ok[i]));
        reg_input in;
        char why[256] = "";
        assert_int_equal(reg_input_from_json(b, &in, why, sizeof why), 0);
        assert_string_equal(in.address, ok[i]);
        json_decref(b);
    }
}

static void test_input_port(void **state)
{
    (void)state;
    const char *msg = "port: expected an integer 1-65535";
    expect_err(body_with("port", NULL), msg);
    expect_err(body_with("port", json_integer(0)), msg);
    expect_err(body_with("port", json_integer(-1)), msg);
    expect_err(body_with("port", json_integer(65536)), msg);
    expect_err(body_with("port", json_integer(70000)), msg);
    expect_err(body_with("port", json_string("80")), msg);
    expect_err(body_with("port", json_real(1.5)), msg);
    expect_err(body_with("port", json_real(80.0)), msg);
    expect_err(body_with("port", json_true()), msg);
    int64_t ok[] = {1, 65535};
    for (size_t i = 0; i < 2; i++) {
        json_t *b = body_with("port", json_integer(ok[i]));
        reg_input in;
        char why[256] = "";
        assert_int_equal(reg_input_from_json(b, &in, why, sizeof why), 0);
        assert_int_equal(in.port, ok[i]);
        json_decref(b);
    }
}

static void test_input_weight(void **state)
{
    (void)state;
    const char *msg = "weight: expected an integer 1-1000";
    expect_err(body_with("weight", json_integer(0)), msg);
    expect_err(body_with("weight", json_integer(1001)), msg);
    expect_err(body_with("weight", json_integer(-5)), msg);
    expect_err(body_with("weight", json_string("5")), msg);
    expect_err(body_with("weight", json_real(2.5)), msg);
    json_t *b = body_with("weight", json_integer(1000));
    reg_input in;
    char why[256] = "";
    assert_int_equal(reg_input_from_json(b, &in, why, sizeof why), 0);
    assert_int_equal(in.weight, 1000);
    json_decref(b);
}

static void test_input_status(void **state)
{
    (void)state;
    const char *msg = "status: expected UP, DOWN, OUT_OF_SERVICE or STARTING";
    expect_err(body_with("status", json_string("up")), msg);
    expect_err(body_with("status", json_string("BROKEN")), msg);
    expect_err(body_with("status", json_string("")), msg);
    expect_err(body_with("status", json_integer(0)), msg);
    expect_err(body_with("status", json_null()), msg);
    const char *names[] = {"UP", "DOWN", "OUT_OF_SERVICE", "STARTING"};
    const int want[] = {REG_UP, REG_DOWN, REG_OUT_OF_SERVICE, REG_STARTING};
    for (int i = 0; i < 4; i++) {
        json_t *b = body_with("status", json_string(names[i]));
        reg_input in;
        char why[256] = "";
        assert_int_equal(reg_input_from_json(b, &in, why, sizeof why), 0);
        assert_int_equal(in.status, want[i]);
        json_decref(b);
    }
}

static void test_status_names(void **state)
{
    (void)state;
    assert_string_equal(reg_status_name(REG_UP), "UP");
    assert_string_equal(reg_status_name(REG_DOWN), "DOWN");
    assert_string_equal(reg_status_name(REG_OUT_OF_SERVICE), "OUT_OF_SERVICE");
    assert_string_equal(reg_status_name(REG_STARTING), "STARTING");
    assert_string_equal(reg_status_name(4), "UNKNOWN");
    assert_string_equal(reg_status_name(-1), "UNKNOWN");
    assert_int_equal(reg_status_from("UP"), REG_UP);
    assert_int_equal(reg_status_from("OUT_OF_SERVICE"), REG_OUT_OF_SERVICE);
    assert_int_equal(reg_status_from("Up"), -1);
    assert_int_equal(reg_status_from("UNKNOWN"), -1);
    assert_int_equal(reg_status_from(NULL), -1);
}

static void test_input_zone_version(void **state)
{
    (void)state;
    char s201[202], s200[201];
    memset(s201, 'z', 201);
    s201[201] = '\0';
    memset(s200, 'z', 200);
    s200[200] = '\0';
    expect_err(body_with("zone", json_string(s201)),
               "zone: expected a string of at most 200 bytes");
    expect_err(body_with("zone", json_integer(1)), "zone: expected a string of at most 200 bytes");
    expect_err(body_with("zone", json_null()), "zone: expected a string of at most 200 bytes");
    expect_err(body_with("version", json_string(s201)),
               "version: expected a string of at most 200 bytes");
    expect_err(body_with("version", json_real(1.2)),
               "version: expected a string of at most 200 bytes");
    expect_err(body_with("version", json_pack("[s]", "1.0")),
               "version: expected a string of at most 200 bytes");
    json_t *b = base_body();
    json_object_set_new(b, "zone", json_string(s200));
    json_object_set_new(b, "version", json_string(""));
    reg_input in;
    char why[256] = "";
    assert_int_equal(reg_input_from_json(b, &in, why, sizeof why), 0);
    assert_string_equal(in.zone, s200);
    assert_string_equal(in.version, "");
    json_decref(b);
}

static void test_input_ttl_forms(void **state)
{
    (void)state;
    assert_int_equal(parse_ttl(json_string("10s")), 10000);
    assert_int_equal(parse_ttl(json_string("500ms")), 500);
    assert_int_equal(parse_ttl(json_string("100ms")), 100);
    assert_int_equal(parse_ttl(json_string("2m")), 120000);
    assert_int_equal(parse_ttl(json_string("1.5s")), 1500);
    assert_int_equal(parse_ttl(json_real(2.5)), 2500);
    assert_int_equal(parse_ttl(json_real(0.1)), 100);
    assert_int_equal(parse_ttl(json_integer(30)), 30000);
    assert_int_equal(parse_ttl(json_integer(86400)), 86400000);
    assert_int_equal(parse_ttl(json_string("1440m")), 86400000);
}

static void test_input_ttl_rejected(void **state)
{
    (void)state;
    expect_err(body_with("ttl", json_real(0.05)), TTL_MSG);
    expect_err(body_with("ttl", json_string("abc")), TTL_MSG);
    expect_err(body_with("ttl", json_string("")), TTL_MSG);
    expect_err(body_with("ttl", json_string("10")), TTL_MSG);   /* a string needs a unit */
    expect_err(body_with("ttl", json_string("10h")), TTL_MSG);  /* unknown unit */
    expect_err(body_with("ttl", json_string("10sx")), TTL_MSG); /* trailing junk */
    expect_err(body_with("ttl", json_string("s")), TTL_MSG);
    expect_err(body_with("ttl", json_string("50ms")), TTL_MSG); /* below 0.1 s */
    expect_err(body_with("ttl", json_string("-1s")), TTL_MSG);
    expect_err(body_with("ttl", json_integer(0)), TTL_MSG);
    expect_err(body_with("ttl", json_integer(-1)), TTL_MSG);
    expect_err(body_with("ttl", json_integer(86401)), TTL_MSG);
    expect_err(body_with("ttl", json_string("1441m")), TTL_MSG);
    expect_err(body_with("ttl", json_true()), TTL_MSG);
    expect_err(body_with("ttl", json_null()), TTL_MSG);
    expect_err(body_with("ttl", json_string("nans")), TTL_MSG);
    expect_err(body_with("ttl", json_string("infs")), TTL_MSG);
}

static void test_input_tags(void **state)
{
    (void)state;
    const char *shape = "tags: expected an array of at most 64 strings";
    expect_err(body_with("tags", json_string("a,b")), shape);
    expect_err(body_with("tags", json_object()), shape);
    json_t *many = json_array();
    for (int i = 0; i < 65; i++)
        json_array_append_new(many, json_string("t"));
    expect_err(body_with("tags", many), shape);
    expect_err(body_with("tags", json_pack("[i]", 1)),
               "tags[0]: expected a string of at most 200 bytes");
    expect_err(body_with("tags", json_pack("[s,s,n]", "a", "b")),
               "tags[2]: expected a string of at most 200 bytes");
    char t201[202];
    memset(t201, 't', 201);
    t201[201] = '\0';
    expect_err(body_with("tags", json_pack("[s,s]", "a", t201)),
               "tags[1]: expected a string of at most 200 bytes");
    /* exactly 64, and empty, are fine */
    json_t *full = json_array();
    for (int i = 0; i < 64; i++)
        json_array_append_new(full, json_string("t"));
    json_t *b = body_with("tags", full);
    reg_input in;
    char why[256] = "";
    assert_int_equal(reg_input_from_json(b, &in, why, sizeof why), 0);
    assert_int_equal(in.ntags, 64);
    json_decref(b);
    b = body_with("tags", json_array());
    assert_int_equal(reg_input_from_json(b, &in, why, sizeof why), 0);
    assert_int_equal(in.ntags, 0);
    json_decref(b);
}

static void test_input_meta(void **state)
{
    (void)state;
    const char *shape = "meta: expected an object of at most 64 string values";
    expect_err(body_with("meta", json_array()), shape);
    expect_err(body_with("meta", json_string("k=v")), shape);
    json_t *many = json_object();
    for (int i = 0; i < 65; i++) {
        char k[16];
        snprintf(k, sizeof k, "k%d", i);
        json_object_set_new(many, k, json_string("v"));
    }
    expect_err(body_with("meta", many), shape);
    expect_err(body_with("meta", json_pack("{s:i}", "k", 1)),
               "meta.k: expected a string (at most 1 KiB)");
    expect_err(body_with("meta", json_pack("{s:{}}", "nested")),
               "meta.nested: expected a string (at most 1 KiB)");
    char v1025[1026];
    memset(v1025, 'v', 1025);
    v1025[1025] = '\0';
    expect_err(body_with("meta", json_pack("{s:s}", "big", v1025)),
               "meta.big: expected a string (at most 1 KiB)");
    /* 1 KiB exactly, and an empty object, are fine */
    v1025[1024] = '\0';
    json_t *b = body_with("meta", json_pack("{s:s}", "big", v1025));
    reg_input in;
    char why[256] = "";
    assert_int_equal(reg_input_from_json(b, &in, why, sizeof why), 0);
    assert_non_null(in.meta);
    json_decref(b);
    b = body_with("meta", json_object());
    assert_int_equal(reg_input_from_json(b, &in, why, sizeof why), 0);
    assert_int_equal(json_object_size(in.meta), 0);
    json_decref(b);
}

/* ------------------------------------------------------------------ */
/* reg_name_ok */

static void test_name_ok(void **state)
{
    (void)state;
    assert_true(reg_name_ok("a"));
    assert_true(reg_name_ok("payments-api"));
    assert_true(reg_name_ok("Svc_1.v2:8080"));
    assert_true(reg_name_ok("0"));
    char n[202];
    memset(n, 'x', 201);
    n[200] = '\0';
    assert_true(reg_name_ok(n)); /* 200 chars */
    n[200] = 'x';
    n[201] = '\0';
    assert_false(reg_name_ok(n)); /* 201 chars */
    assert_false(reg_name_ok(""));
    assert_false(reg_name_ok(NULL));
    assert_false(reg_name_ok("a b"));
    assert_false(reg_name_ok(" a"));
    assert_false(reg_name_ok("a/b"));
    assert_false(reg_name_ok("a\\b"));
    assert_false(reg_name_ok("caf\xc3\xa9"));
    assert_false(reg_name_ok("\xe2\x9c\x93"));
    assert_false(reg_name_ok("a\nb"));
    assert_false(reg_name_ok("a@b"));
    assert_false(reg_name_ok("a?b"));
}

/* ------------------------------------------------------------------ */
/* store life cycle */

static void test_store_defaults(void **state)
{
    (void)state;
    reg_store_opts o;
    reg_store_opts_default(&o);
    assert_int_equal(o.history, 10000);
    assert_true(o.preservation_threshold > 0.1499 && o.preservation_threshold < 0.1501);
    assert_int_equal(o.preservation_min, 10);
    assert_int_equal(o.sweep_window_ms, 1000);
    reg_store *s = reg_store_new(NULL);
    assert_non_null(s);
    assert_int_equal(reg_revision(s), 0);
    assert_int_equal(reg_service_count(s), 0);
    assert_int_equal(reg_instance_total(s), 0);
    assert_false(reg_self_preservation(s));
    assert_null(reg_find(s, "a", "b"));
    assert_null(reg_service_at(s, 0, NULL));
    assert_int_equal(reg_service_revision(s, "a"), 0);
    const reg_event *ev[4];
    assert_int_equal(reg_changes(s, 0, ev, 4), 0);
    assert_int_equal(reg_sweep(s, 5000), 0);
    reg_store_free(s);
    reg_store_free(NULL);
}

/* ------------------------------------------------------------------ */
/* reg_put */

static void test_put_new(void **state)
{
    (void)state;
    reg_store *s = store_with(0);
    char addr[32] = "10.1.2.3", zone[16] = "z1", ver[16] = "v1", t0[8] = "blue", t1[8] = "x";
    const char *tags[] = {t0, t1};
    json_t *meta = json_pack("{s:s}", "team", "core");
    reg_input in = mk_input(addr, 443, 5000);
    in.tags = tags;
    in.ntags = 2;
    in.meta = meta;
    in.zone = zone;
    in.version = ver;
    in.weight = 3;
    in.status = REG_DOWN;
    char svc[16] = "api", id[16] = "api-1";
    assert_int_equal(reg_put(s, svc, id, &in, 1000), 1);
    /* the store copies everything */
    strcpy(addr, "XXXX");
    strcpy(zone, "XX");
    strcpy(ver, "XX");
    strcpy(t0, "XX");
    strcpy(svc, "XXX");
    strcpy(id, "XXXX");
    json_object_set_new(meta, "team", json_string("changed"));
    json_decref(meta);

    assert_int_equal(reg_revision(s), 1);
    const reg_instance *r = reg_find(s, "api", "api-1");
    assert_non_null(r);
    assert_string_equal(r->service, "api");
    assert_string_equal(r->id, "api-1");
    assert_string_equal(r->address, "10.1.2.3");
    assert_int_equal(r->port, 443);
    assert_int_equal(r->ntags, 2);
    assert_string_equal(r->tags[0], "blue");
    assert_string_equal(r->tags[1], "x");
    assert_string_equal(json_string_value(json_object_get(r->meta, "team")), "core");
    assert_string_equal(r->zone, "z1");
    assert_string_equal(r->version, "v1");
    assert_int_equal(r->weight, 3);
    assert_int_equal(r->status, REG_DOWN);
    assert_int_equal(r->ttl_ms, 5000);
    assert_int_equal(r->expires_ms, 6000);
    assert_int_equal(r->create_rev, 1);
    assert_int_equal(r->mod_rev, 1);
    assert_false(r->expired);
    assert_int_equal(reg_service_revision(s, "api"), 1);

    /* a second instance: next revision, again create == mod */
    reg_input in2 = mk_input("10.1.2.4", 443, 0);
    assert_int_equal(reg_put(s, "api", "api-2", &in2, 1000), 2);
    r = reg_find(s, "api", "api-2");
    assert_non_null(r);
    assert_int_equal(r->create_rev, 2);
    assert_int_equal(r->mod_rev, 2);
    assert_null(r->zone);
    assert_null(r->version);
    assert_int_equal(r->ntags, 0);
    reg_store_free(s);
}

static void test_put_identical_refreshes_lease(void **state)
{
    (void)state;
    reg_store *s = store_with(0);
    const char *tags[] = {"a", "b"};
    json_t *meta = json_pack("{s:s}", "k", "v");
    reg_input in = mk_input("10.0.0.1", 80, 1000);
    in.tags = tags;
    in.ntags = 2;
    in.meta = meta;
    in.zone = "z";
    assert_int_equal(reg_put(s, "svc", "i1", &in, 0), 1);
    assert_int_equal(reg_find(s, "svc", "i1")->expires_ms, 1000);

    /* same content from fresh, equal (not identical) objects */
    json_t *meta2 = json_pack("{s:s}", "k", "v");
    const char *tags2[] = {"a", "b"};
    reg_input again = in;
    again.meta = meta2;
    again.tags = tags2;
    again.address = "10.0.0.1";
    assert_int_equal(reg_put(s, "svc", "i1", &again, 700), 0);
    assert_int_equal(reg_revision(s), 1);
    const reg_instance *r = reg_find(s, "svc", "i1");
    assert_int_equal(r->expires_ms, 1700);
    assert_int_equal(r->mod_rev, 1);
    assert_int_equal(reg_service_revision(s, "svc"), 1);
    const reg_event *ev[4];
    assert_int_equal(reg_changes(s, 1, ev, 4), 0); /* no event for a refresh */
    /* the refreshed lease really holds: not swept at the old deadline */
    assert_int_equal(reg_sweep(s, 1000), 0);
    assert_non_null(reg_find(s, "svc", "i1"));
    json_decref(meta);
    json_decref(meta2);
    reg_store_free(s);
}

static void test_put_changes_bump_revision(void **state)
{
    (void)state;
    reg_store *s = store_with(0);
    reg_input in = mk_input("10.0.0.1", 80, 1000);
    assert_int_equal(reg_put(s, "svc", "i1", &in, 0), 1);
    int64_t want = 1;

    in.port = 81; /* port */
    assert_int_equal(reg_put(s, "svc", "i1", &in, 0), ++want);
    assert_int_equal(reg_find(s, "svc", "i1")->port, 81);

    const char *tags[] = {"x"}; /* tags added */
    in.tags = tags;
    in.ntags = 1;
    assert_int_equal(reg_put(s, "svc", "i1", &in, 0), ++want);
    const char *tags2[] = {"y"}; /* same count, different tag */
    in.tags = tags2;
    assert_int_equal(reg_put(s, "svc", "i1", &in, 0), ++want);
    assert_string_equal(reg_find(s, "svc", "i1")->tags[0], "y");

    json_t *meta = json_pack("{s:s}", "k", "v"); /* meta added */
    in.meta = meta;
    assert_int_equal(reg_put(s, "svc", "i1", &in, 0), ++want);
    json_t *meta2 = json_pack("{s:s}", "k", "w"); /* meta value changed */
    in.meta = meta2;
    assert_int_equal(reg_put(s, "svc", "i1", &in, 0), ++want);
    assert_string_equal(json_string_value(json_object_get(reg_find(s, "svc", "i1")->meta, "k")),
                        "w");

    in.ttl_ms = 2000; /* ttl */
    assert_int_equal(reg_put(s, "svc", "i1", &in, 100), ++want);
    assert_int_equal(reg_find(s, "svc", "i1")->ttl_ms, 2000);
    assert_int_equal(reg_find(s, "svc", "i1")->expires_ms, 2100);

    in.weight = 9; /* weight */
    assert_int_equal(reg_put(s, "svc", "i1", &in, 100), ++want);
    in.zone = "z"; /* zone */
    assert_int_equal(reg_put(s, "svc", "i1", &in, 100), ++want);
    in.version = "2"; /* version */
    assert_int_equal(reg_put(s, "svc", "i1", &in, 100), ++want);
    in.address = "10.0.0.2"; /* address */
    assert_int_equal(reg_put(s, "svc", "i1", &in, 100), ++want);
    in.status = REG_DOWN; /* status via re-registration */
    assert_int_equal(reg_put(s, "svc", "i1", &in, 100), ++want);

    const reg_instance *r = reg_find(s, "svc", "i1");
    assert_int_equal(r->create_rev, 1);
    assert_int_equal(r->mod_rev, want);
    assert_int_equal(reg_revision(s), want);
    assert_int_equal(reg_instance_total(s), 1);
    /* and the final state is identical again */
    assert_int_equal(reg_put(s, "svc", "i1", &in, 200), 0);
    assert_int_equal(reg_revision(s), want);
    json_decref(meta);
    json_decref(meta2);
    reg_store_free(s);
}

static void test_service_revision_tracks_own_changes(void **state)
{
    (void)state;
    reg_store *s = store_with(0);
    reg_input in = mk_input("10.0.0.1", 80, 1000);
    assert_int_equal(reg_put(s, "a", "1", &in, 0), 1);
    assert_int_equal(reg_put(s, "b", "1", &in, 0), 2);
    assert_int_equal(reg_put(s, "a", "2", &in, 0), 3);
    assert_int_equal(reg_service_revision(s, "a"), 3);
    assert_int_equal(reg_service_revision(s, "b"), 2);
    assert_int_equal(reg_heartbeat(s, "b", "1", 10), 0);
    assert_int_equal(reg_put(s, "b", "1", &in, 10), 0);
    assert_int_equal(reg_service_revision(s, "b"), 2);
    assert_int_equal(reg_set_status(s, "b", "1", REG_DOWN, 20), 4);
    assert_int_equal(reg_service_revision(s, "b"), 4);
    assert_int_equal(reg_service_revision(s, "a"), 3);
    assert_int_equal(reg_delete(s, "a", "1"), 5);
    assert_int_equal(reg_service_revision(s, "a"), 5);
    assert_int_equal(reg_service_revision(s, "b"), 4);
    assert_int_equal(reg_service_revision(s, "c"), 0);
    assert_int_equal(reg_revision(s), 5);
    reg_store_free(s);
}

static void test_listing(void **state)
{
    (void)state;
    reg_store *s = store_with(0);
    reg_input in = mk_input("10.0.0.1", 80, 0);
    assert_true(reg_put(s, "web", "w1", &in, 0) > 0);
    assert_true(reg_put(s, "db", "d1", &in, 0) > 0);
    assert_true(reg_put(s, "web", "w2", &in, 0) > 0);
    assert_true(reg_put(s, "web", "w3", &in, 0) > 0);
    /* the same id in another service is another instance */
    assert_true(reg_put(s, "db", "w1", &in, 0) > 0);
    assert_int_equal(reg_service_count(s), 2);
    assert_int_equal(reg_instance_total(s), 5);

    size_t seen_web = 0, seen_db = 0;
    for (size_t i = 0; i < reg_service_count(s); i++) {
        size_t n = 99;
        const char *name = reg_service_at(s, i, &n);
        assert_non_null(name);
        if (strcmp(name, "web") == 0)
            seen_web = n;
        else if (strcmp(name, "db") == 0)
            seen_db = n;
        else
            fail_msg("unexpected service %s", name);
        assert_non_null(reg_service_at(s, i, NULL)); /* count pointer optional */
    }
    assert_int_equal(seen_web, 3);
    assert_int_equal(seen_db, 2);
    assert_null(reg_service_at(s, 2, NULL));

    const reg_instance **list = NULL;
    assert_int_equal(reg_instances(s, "web", &list), 3);
    int mask = 0;
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(list[i]->service, "web");
        assert_ptr_equal(list[i], reg_find(s, "web", list[i]->id));
        mask |= 1 << (list[i]->id[1] - '1');
    }
    assert_int_equal(mask, 7);
    const reg_instance *dummy = NULL;
    list = &dummy;
    assert_int_equal(reg_instances(s, "nope", &list), 0);
    assert_null(list);

    assert_non_null(reg_find(s, "db", "w1"));
    assert_ptr_not_equal(reg_find(s, "db", "w1"), reg_find(s, "web", "w1"));
    assert_null(reg_find(s, "web", "d1"));
    assert_null(reg_find(s, "nope", "w1"));
    assert_null(reg_find(s, "web", "w"));
    assert_null(reg_find(s, "we", "bw1")); /* the key is not a plain concatenation */
    reg_store_free(s);
}

/* ------------------------------------------------------------------ */
/* reg_delete */

static void test_delete(void **state)
{
    (void)state;
    reg_store *s = store_with(0);
    reg_input in = mk_input("10.0.0.1", 80, 1000);
    assert_int_equal(reg_put(s, "svc", "i1", &in, 0), 1);
    assert_int_equal(reg_put(s, "svc", "i2", &in, 0), 2);
    assert_int_equal(reg_delete(s, "svc", "i1"), 3);
    assert_int_equal(reg_revision(s), 3);
    assert_int_equal(reg_service_revision(s, "svc"), 3);
    assert_null(reg_find(s, "svc", "i1"));
    assert_non_null(reg_find(s, "svc", "i2"));
    assert_int_equal(reg_instance_total(s), 1);
    assert_int_equal(reg_delete(s, "svc", "i1"), WEFT_ENOTFOUND);
    assert_int_equal(reg_delete(s, "svc", "zz"), WEFT_ENOTFOUND);
    assert_int_equal(reg_delete(s, "nope", "i2"), WEFT_ENOTFOUND);
    assert_int_equal(reg_revision(s), 3);
    assert_int_equal(reg_delete(s, "svc", "i2"), 4);
    assert_int_equal(reg_instance_total(s), 0);

    /* the service stays listed, empty */
    assert_int_equal(reg_service_count(s), 1);
    size_t n = 99;
    const char *name = reg_service_at(s, 0, &n);
    assert_non_null(name);
    assert_string_equal(name, "svc");
    assert_int_equal(n, 0);
    const reg_instance **list;
    assert_int_equal(reg_instances(s, "svc", &list), 0);
    assert_int_equal(reg_service_revision(s, "svc"), 4);

    /* re-registration is a new instance with a new create revision */
    assert_int_equal(reg_put(s, "svc", "i1", &in, 0), 5);
    assert_int_equal(reg_find(s, "svc", "i1")->create_rev, 5);
    assert_int_equal(reg_service_count(s), 1);
    reg_store_free(s);
}

/* ------------------------------------------------------------------ */
/* reg_heartbeat */

static void test_heartbeat(void **state)
{
    (void)state;
    reg_store *s = store_with(0);
    reg_input in = mk_input("10.0.0.1", 80, 1000);
    assert_int_equal(reg_put(s, "svc", "i1", &in, 0), 1);
    assert_int_equal(reg_heartbeat(s, "svc", "i1", 600), 0);
    const reg_instance *r = reg_find(s, "svc", "i1");
    assert_int_equal(r->expires_ms, 1600);
    assert_int_equal(r->mod_rev, 1);
    assert_int_equal(reg_revision(s), 1);
    assert_int_equal(reg_service_revision(s, "svc"), 1);
    const reg_event *ev[4];
    assert_int_equal(reg_changes(s, 1, ev, 4), 0);
    assert_int_equal(reg_heartbeat(s, "svc", "i2", 600), WEFT_ENOTFOUND);
    assert_int_equal(reg_heartbeat(s, "other", "i1", 600), WEFT_ENOTFOUND);
    /* a lease that ran out but was not swept yet is still renewable */
    assert_false(reg_instance_healthy(r, 1600));
    assert_int_equal(reg_heartbeat(s, "svc", "i1", 1700), 0);
    assert_true(reg_instance_healthy(reg_find(s, "svc", "i1"), 1700));
    assert_int_equal(reg_revision(s), 1);
    reg_store_free(s);
}

/* ------------------------------------------------------------------ */
/* reg_set_status and JSON */

static void test_set_status(void **state)
{
    (void)state;
    reg_store *s = store_with(0);
    reg_input in = mk_input("10.0.0.1", 80, 0);
    assert_int_equal(reg_put(s, "svc", "i1", &in, 0), 1);
    assert_true(reg_instance_healthy(reg_find(s, "svc", "i1"), 0));
    assert_int_equal(reg_set_status(s, "svc", "i1", REG_UP, 5), 0);
    assert_int_equal(reg_revision(s), 1);

    const int sts[] = {REG_DOWN, REG_OUT_OF_SERVICE, REG_STARTING};
    const char *names[] = {"DOWN", "OUT_OF_SERVICE", "STARTING"};
    for (int k = 0; k < 3; k++) {
        assert_int_equal(reg_set_status(s, "svc", "i1", sts[k], 10), 2 + k);
        const reg_instance *r = reg_find(s, "svc", "i1");
        assert_int_equal(r->status, sts[k]);
        assert_int_equal(r->mod_rev, 2 + k);
        assert_int_equal(r->create_rev, 1);
        assert_false(reg_instance_healthy(r, 10));
        json_t *j = reg_instance_json(r, 10);
        assert_non_null(j);
        assert_string_equal(jstr(j, "status"), names[k]);
        assert_true(json_is_false(json_object_get(j, "healthy")));
        json_decref(j);
        assert_int_equal(reg_set_status(s, "svc", "i1", sts[k], 11), 0);
    }
    assert_int_equal(reg_set_status(s, "svc", "i1", REG_UP, 20), 5);
    json_t *j = reg_instance_json(reg_find(s, "svc", "i1"), 20);
    assert_string_equal(jstr(j, "status"), "UP");
    assert_true(json_is_true(json_object_get(j, "healthy")));
    json_decref(j);
    assert_int_equal(reg_set_status(s, "svc", "nope", REG_DOWN, 20), WEFT_ENOTFOUND);
    assert_int_equal(reg_set_status(s, "nope", "i1", REG_DOWN, 20), WEFT_ENOTFOUND);
    assert_int_equal(reg_revision(s), 5);
    assert_int_equal(reg_service_revision(s, "svc"), 5);
    reg_store_free(s);
}

static void test_instance_json(void **state)
{
    (void)state;
    reg_store *s = store_with(0);
    const char *tags[] = {"blue", "canary"};
    json_t *meta = json_pack("{s:s}", "team", "core");
    reg_input in = mk_input("10.0.0.9", 8443, 3000);
    in.tags = tags;
    in.ntags = 2;
    in.meta = meta;
    in.zone = "z1";
    in.version = "1.2";
    in.weight = 5;
    assert_int_equal(reg_put(s, "api", "a1", &in, 1000), 1);
    json_decref(meta);
    const reg_instance *r = reg_find(s, "api", "a1");

    json_t *j = reg_instance_json(r, 2000);
    assert_non_null(j);
    assert_string_equal(jstr(j, "service"), "api");
    assert_string_equal(jstr(j, "id"), "a1");
    assert_string_equal(jstr(j, "address"), "10.0.0.9");
    assert_int_equal(jint(j, "port"), 8443);
    json_t *jt = json_object_get(j, "tags");
    assert_true(json_is_array(jt));
    assert_int_equal(json_array_size(jt), 2);
    assert_string_equal(json_string_value(json_array_get(jt, 0)), "blue");
    assert_string_equal(json_string_value(json_array_get(jt, 1)), "canary");
    assert_string_equal(jstr(json_object_get(j, "meta"), "team"), "core");
    assert_int_equal(jint(j, "weight"), 5);
    assert_string_equal(jstr(j, "status"), "UP");
    assert_int_equal(jint(j, "create_revision"), 1);
    assert_int_equal(jint(j, "revision"), 1);
    assert_true(json_is_true(json_object_get(j, "healthy")));
    assert_string_equal(jstr(j, "zone"), "z1");
    assert_string_equal(jstr(j, "version"), "1.2");
    assert_int_equal(jint(j, "ttl_ms"), 3000);
    assert_int_equal(jint(j, "lease_remaining_ms"), 2000);
    assert_null(json_object_get(j, "expired"));
    json_decref(j);

    /* lease ran out (not swept yet): unhealthy, nothing remaining */
    j = reg_instance_json(r, 4500);
    assert_true(json_is_false(json_object_get(j, "healthy")));
    assert_int_equal(jint(j, "lease_remaining_ms"), 0);
    json_decref(j);

    /* no lease, no zone/version, no tags/meta: optional fields absent */
    reg_input bare = mk_input("h", 1, 0);
    assert_int_equal(reg_put(s, "api", "a2", &bare, 0), 2);
    j = reg_instance_json(reg_find(s, "api", "a2"), 1u << 30);
    assert_true(json_is_true(json_object_get(j, "healthy")));
    assert_null(json_object_get(j, "ttl_ms"));
    assert_null(json_object_get(j, "lease_remaining_ms"));
    assert_null(json_object_get(j, "zone"));
    assert_null(json_object_get(j, "version"));
    assert_int_equal(json_array_size(json_object_get(j, "tags")), 0);
    assert_true(json_is_object(json_object_get(j, "meta")));
    assert_int_equal(json_object_size(json_object_get(j, "meta")), 0);
    json_decref(j);
    reg_store_free(s);
}

/* ------------------------------------------------------------------ */
/* history */

static void test_changes_order_and_payloads(void **state)
{
    (void)state;
    reg_store *s = store_with(0);
    reg_input in = mk_input("10.0.0.1", 80, 0);
    assert_int_equal(reg_put(s, "svc", "a", &in, 0), 1);
    in.port = 81;
    assert_int_equal(reg_put(s, "svc", "b", &in, 0), 2);
    assert_int_equal(reg_set_status(s, "svc", "a", REG_DOWN, 0), 3);
    assert_int_equal(reg_delete(s, "svc", "b"), 4);
    assert_int_equal(reg_put(s, "other", "c", &in, 0), 5);

    const reg_event *ev[16];
    assert_int_equal(reg_changes(s, 0, ev, 16), 5);
    const int kinds[] = {REG_EV_PUT, REG_EV_PUT, REG_EV_PUT, REG_EV_DELETE, REG_EV_PUT};
    const char *svcs[] = {"svc", "svc", "svc", "svc", "other"};
    const char *ids[] = {"a", "b", "a", "b", "c"};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(ev[i]->rev, i + 1);
        assert_int_equal(ev[i]->kind, kinds[i]);
        assert_string_equal(ev[i]->service, svcs[i]);
        assert_string_equal(ev[i]->id, ids[i]);
    }
    json_t *j = parse_event(ev[0]);
    assert_string_equal(jstr(j, "service"), "svc");
    assert_string_equal(jstr(j, "id"), "a");
    assert_string_equal(jstr(j, "address"), "10.0.0.1");
    assert_int_equal(jint(j, "port"), 80);
    assert_string_equal(jstr(j, "status"), "UP");
    assert_int_equal(jint(j, "revision"), 1);
    assert_int_equal(jint(j, "create_revision"), 1);
    json_decref(j);
    j = parse_event(ev[1]);
    assert_int_equal(jint(j, "port"), 81);
    json_decref(j);
    /* the event snapshots the instance as it was at that revision */
    j = parse_event(ev[2]);
    assert_string_equal(jstr(j, "status"), "DOWN");
    assert_true(json_is_false(json_object_get(j, "healthy")));
    assert_int_equal(jint(j, "revision"), 3);
    assert_int_equal(jint(j, "create_revision"), 1);
    json_decref(j);
    j = parse_event(ev[3]);
    assert_int_equal(json_object_size(j), 2);
    assert_string_equal(jstr(j, "service"), "svc");
    assert_string_equal(jstr(j, "id"), "b");
    json_decref(j);
    j = parse_event(ev[4]);
    assert_string_equal(jstr(j, "service"), "other");
    json_decref(j);
    reg_store_free(s);
}

static void test_changes_since_and_max(void **state)
{
    (void)state;
    reg_store *s = store_with(0);
    reg_input in = mk_input("10.0.0.1", 80, 0);
    char id[8];
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof id, "i%d", i);
        assert_int_equal(reg_put(s, "svc", id, &in, 0), i + 1);
    }
    const reg_event *ev[16];
    assert_int_equal(reg_changes(s, 2, ev, 16), 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(ev[i]->rev, 3 + i);
    assert_int_equal(reg_changes(s, 5, ev, 16), 1);
    assert_int_equal(ev[0]->rev, 6);
    assert_string_equal(ev[0]->id, "i5");
    assert_int_equal(reg_changes(s, 6, ev, 16), 0);
    assert_int_equal(reg_changes(s, 1000, ev, 16), 0);
    /* max caps the answer, oldest first */
    assert_int_equal(reg_changes(s, 0, ev, 2), 2);
    assert_int_equal(ev[0]->rev, 1);
    assert_int_equal(ev[1]->rev, 2);
    assert_int_equal(reg_changes(s, 3, ev, 1), 1);
    assert_int_equal(ev[0]->rev, 4);
    assert_int_equal(reg_changes(s, 0, ev, 0), 0);
    reg_store_free(s);
}

static void test_changes_history_overwritten(void **state)
{
    (void)state;
    reg_store *s = store_with(16);
    reg_input in = mk_input("10.0.0.1", 80, 0);
    char id[8];
    for (int i = 1; i <= 16; i++) {
        snprintf(id, sizeof id, "i%d", i);
        assert_int_equal(reg_put(s, "svc", id, &in, 0), i);
    }
    const reg_event *ev[32];
    assert_int_equal(reg_changes(s, 0, ev, 32), 16); /* exactly full: all retained */
    for (int i = 17; i <= 20; i++) {
        snprintf(id, sizeof id, "i%d", i);
        assert_int_equal(reg_put(s, "svc", id, &in, 0), i);
    }
    /* revisions 5..20 retained */
    assert_int_equal(reg_changes(s, 0, ev, 32), WEFT_ETOOBIG);
    assert_int_equal(reg_changes(s, 3, ev, 32), WEFT_ETOOBIG);
    assert_int_equal(reg_changes(s, 4, ev, 32), 16);
    for (int i = 0; i < 16; i++) {
        assert_int_equal(ev[i]->rev, 5 + i);
        snprintf(id, sizeof id, "i%d", 5 + i);
        assert_string_equal(ev[i]->id, id);
        json_t *j = parse_event(ev[i]);
        assert_string_equal(jstr(j, "id"), id);
        json_decref(j);
    }
    assert_int_equal(reg_changes(s, 10, ev, 32), 10);
    assert_int_equal(ev[0]->rev, 11);
    assert_int_equal(reg_changes(s, 19, ev, 32), 1);
    assert_int_equal(ev[0]->rev, 20);
    assert_int_equal(reg_changes(s, 20, ev, 32), 0);
    assert_int_equal(reg_changes(s, 25, ev, 32), 0);
    reg_store_free(s);
}

static void test_changes_history_floor(void **state)
{
    (void)state;
    reg_store *s = store_with(4); /* raised to the minimum of 16 */
    reg_input in = mk_input("10.0.0.1", 80, 0);
    char id[8];
    for (int i = 1; i <= 16; i++) {
        snprintf(id, sizeof id, "i%d", i);
        assert_int_equal(reg_put(s, "svc", id, &in, 0), i);
    }
    const reg_event *ev[32];
    assert_int_equal(reg_changes(s, 0, ev, 32), 16);
    assert_int_equal(reg_put(s, "svc", "x", &in, 0), 17);
    assert_int_equal(reg_changes(s, 0, ev, 32), WEFT_ETOOBIG);
    assert_int_equal(reg_changes(s, 1, ev, 32), 16);
    reg_store_free(s);
}

/* ------------------------------------------------------------------ */
/* leases and sweep */

static void test_sweep_at_deadline(void **state)
{
    (void)state;
    reg_store *s = store_with(0);
    reg_input leased = mk_input("10.0.0.1", 80, 1000);
    reg_input forever = mk_input("10.0.0.2", 80, 0);
    assert_int_equal(reg_put(s, "svc", "lease", &leased, 0), 1);
    assert_int_equal(reg_put(s, "svc", "perm", &forever, 0), 2);
    assert_true(reg_instance_healthy(reg_find(s, "svc", "lease"), 999));
    assert_false(reg_instance_healthy(reg_find(s, "svc", "lease"), 1000));
    assert_int_equal(reg_sweep(s, 500), 0);
    assert_int_equal(reg_sweep(s, 999), 0);
    assert_non_null(reg_find(s, "svc", "lease"));
    assert_int_equal(reg_revision(s), 2);
    assert_int_equal(reg_sweep(s, 1000), 1);
    assert_null(reg_find(s, "svc", "lease"));
    assert_non_null(reg_find(s, "svc", "perm"));
    assert_int_equal(reg_instance_total(s), 1);
    assert_false(reg_self_preservation(s));
    /* expiry is a change: revision, service revision, DELETE event */
    assert_int_equal(reg_revision(s), 3);
    assert_int_equal(reg_service_revision(s, "svc"), 3);
    const reg_event *ev[4];
    assert_int_equal(reg_changes(s, 2, ev, 4), 1);
    assert_int_equal(ev[0]->kind, REG_EV_DELETE);
    assert_string_equal(ev[0]->id, "lease");
    json_t *j = parse_event(ev[0]);
    assert_string_equal(jstr(j, "service"), "svc");
    assert_string_equal(jstr(j, "id"), "lease");
    json_decref(j);
    /* a heartbeat after eviction must re-register */
    assert_int_equal(reg_heartbeat(s, "svc", "lease", 1001), WEFT_ENOTFOUND);
    reg_store_free(s);
}

static void test_sweep_ttl0_never_expires(void **state)
{
    (void)state;
    reg_store *s = store_with(0);
    reg_input forever = mk_input("10.0.0.2", 80, 0);
    assert_int_equal(reg_put(s, "svc", "perm", &forever, 0), 1);
    uint64_t times[] = {0, 1, 1000, 86400000ull, 1ull << 40};
    for (size_t i = 0; i < sizeof times / sizeof *times; i++) {
        assert_int_equal(reg_sweep(s, times[i]), 0);
        assert_true(reg_instance_healthy(reg_find(s, "svc", "perm"), times[i]));
    }
    /* a heartbeat on a lease-less instance is harmless */
    assert_int_equal(reg_heartbeat(s, "svc", "perm", 5), 0);
    assert_int_equal(reg_sweep(s, (1ull << 40) + 1), 0);
    assert_non_null(reg_find(s, "svc", "perm"));
    assert_int_equal(reg_revision(s), 1);
    reg_store_free(s);
}

static void test_sweep_heartbeat_keeps_alive(void **state)
{
    (void)state;
    reg_store *s = store_with(0);
    reg_input in = mk_input("10.0.0.1", 80, 1000);
    assert_int_equal(reg_put(s, "svc", "a", &in, 0), 1);
    for (uint64_t t = 800; t <= 8000; t += 800) {
        assert_int_equal(reg_heartbeat(s, "svc", "a", t), 0);
        assert_int_equal(reg_sweep(s, t + 999), 0);
    }
    assert_non_null(reg_find(s, "svc", "a"));
    assert_int_equal(reg_revision(s), 1);
    assert_int_equal(reg_sweep(s, 9000), 1); /* last heartbeat at 8000 */
    assert_null(reg_find(s, "svc", "a"));
    reg_store_free(s);
}

static void test_sweep_returns_count(void **state)
{
    (void)state;
    reg_store *s = store_with(0);
    reg_input in = mk_input("10.0.0.1", 80, 1000);
    reg_input longer = mk_input("10.0.0.1", 80, 5000);
    assert_true(reg_put(s, "a", "1", &in, 0) > 0);
    assert_true(reg_put(s, "a", "2", &in, 0) > 0);
    assert_true(reg_put(s, "b", "1", &in, 0) > 0);
    assert_true(reg_put(s, "b", "2", &longer, 0) > 0);
    assert_int_equal(reg_sweep(s, 1500), 3);
    assert_int_equal(reg_instance_total(s), 1);
    assert_non_null(reg_find(s, "b", "2"));
    assert_int_equal(reg_revision(s), 7);
    assert_int_equal(reg_sweep(s, 1600), 0);
    assert_int_equal(reg_sweep(s, 5000), 1);
    assert_int_equal(reg_instance_total(s), 0);
    assert_int_equal(reg_service_count(s), 2);
    reg_store_free(s);
}

/* ------------------------------------------------------------------ */
/* self-preservation: threshold 0.15, min 10, window 1000 ms */

static char *pid_of(char *buf, size_t n, int i)
{
    snprintf(buf, n, "p%02d", i);
    return buf;
}

/* 20 leased instances (ttl 1000 from t=0, revisions 1..20); at t=900 all but
 * the first `lapse` heartbeat, so exactly `lapse` leases run out at 1000. */
static reg_store *twenty_leased(size_t lapse)
{
    reg_store *s = store_with(0);
    reg_input in = mk_input("10.0.0.1", 80, 1000);
    char id[8];
    for (int i = 0; i < 20; i++)
        assert_int_equal(reg_put(s, "svc", pid_of(id, sizeof id, i), &in, 0), i + 1);
    for (int i = (int)lapse; i < 20; i++)
        assert_int_equal(reg_heartbeat(s, "svc", pid_of(id, sizeof id, i), 900), 0);
    assert_int_equal(reg_revision(s), 20);
    return s;
}

static void test_preservation_single_expiry_evicted(void **state)
{
    (void)state;
    reg_store *s = twenty_leased(1);
    assert_int_equal(reg_sweep(s, 1000), 1);
    assert_false(reg_self_preservation(s));
    assert_null(reg_find(s, "svc", "p00"));
    assert_int_equal(reg_instance_total(s), 19);
    assert_int_equal(reg_revision(s), 21);
    reg_store_free(s);
}

static void assert_held(reg_store *s, int first, int last, bool held, uint64_t now)
{
    char id[8];
    for (int i = first; i <= last; i++) {
        const reg_instance *r = reg_find(s, "svc", pid_of(id, sizeof id, i));
        if (!r)
            fail_msg("%s was evicted", id);
        if (r->expired != held)
            fail_msg("%s expired=%d, want %d", id, r->expired, held);
        assert_int_equal(reg_instance_healthy(r, now), !held);
        json_t *j = reg_instance_json(r, now);
        json_t *e = json_object_get(j, "expired");
        if (held)
            assert_true(json_is_true(e));
        else
            assert_null(e);
        assert_int_equal(json_is_true(json_object_get(j, "healthy")), !held);
        json_decref(j);
    }
}

static void test_preservation_holds_mass_expiry(void **state)
{
    (void)state;
    reg_store *s = twenty_leased(5);
    assert_int_equal(reg_sweep(s, 1000), 0); /* 5/20 = 25 % > 15 %: kept */
    assert_true(reg_self_preservation(s));
    assert_int_equal(reg_instance_total(s), 20);
    assert_held(s, 0, 4, true, 1000);
    assert_held(s, 5, 19, false, 1000);
    /* each held instance is a visible change */
    assert_int_equal(reg_revision(s), 25);
    assert_int_equal(reg_service_revision(s, "svc"), 25);
    const reg_event *ev[16];
    assert_int_equal(reg_changes(s, 20, ev, 16), 5);
    int mask = 0;
    for (int i = 0; i < 5; i++) {
        assert_int_equal(ev[i]->rev, 21 + i);
        assert_int_equal(ev[i]->kind, REG_EV_PUT);
        json_t *j = parse_event(ev[i]);
        assert_true(json_is_true(json_object_get(j, "expired")));
        assert_true(json_is_false(json_object_get(j, "healthy")));
        assert_string_equal(jstr(j, "id"), ev[i]->id);
        assert_int_equal(jint(j, "revision"), 21 + i);
        json_decref(j);
        const reg_instance *r = reg_find(s, "svc", ev[i]->id);
        assert_non_null(r);
        assert_int_equal(r->mod_rev, ev[i]->rev);
        mask |= 1 << (ev[i]->id[2] - '0');
    }
    assert_int_equal(mask, 0x1f);
    /* the same sweep again records nothing new */
    assert_int_equal(reg_sweep(s, 1050), 0);
    assert_int_equal(reg_revision(s), 25);
    reg_store_free(s);
}

static void test_preservation_heartbeats_return(void **state)
{
    (void)state;
    reg_store *s = twenty_leased(5);
    assert_int_equal(reg_sweep(s, 1000), 0);
    assert_true(reg_self_preservation(s));
    char id[8];
    for (int i = 0; i < 5; i++) {
        assert_int_equal(reg_heartbeat(s, "svc", pid_of(id, sizeof id, i), 1100), 0);
        assert_int_equal(reg_revision(s), 26 + i);
        const reg_instance *r = reg_find(s, "svc", id);
        assert_false(r->expired);
        assert_int_equal(r->mod_rev, 26 + i);
        assert_int_equal(r->expires_ms, 2100);
    }
    assert_held(s, 0, 19, false, 1100);
    const reg_event *ev[16];
    assert_int_equal(reg_changes(s, 25, ev, 16), 5);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(ev[i]->kind, REG_EV_PUT);
        assert_string_equal(ev[i]->id, pid_of(id, sizeof id, i));
        json_t *j = parse_event(ev[i]);
        assert_null(json_object_get(j, "expired"));
        assert_true(json_is_true(json_object_get(j, "healthy")));
        json_decref(j);
    }
    /* the next sweep finds nothing due and turns preservation off */
    assert_int_equal(reg_sweep(s, 1200), 0);
    assert_false(reg_self_preservation(s));
    assert_int_equal(reg_instance_total(s), 20);
    assert_int_equal(reg_revision(s), 30);
    /* and a later single crash is evicted normally (new window) */
    for (int i = 1; i < 20; i++)
        assert_int_equal(reg_heartbeat(s, "svc", pid_of(id, sizeof id, i), 2050), 0);
    assert_int_equal(reg_sweep(s, 2100), 1);
    assert_false(reg_self_preservation(s));
    assert_null(reg_find(s, "svc", "p00"));
    reg_store_free(s);
}

static void test_preservation_stays_held(void **state)
{
    (void)state;
    reg_store *s = twenty_leased(5);
    assert_int_equal(reg_sweep(s, 1000), 0);
    char id[8];
    uint64_t sweeps[] = {1100, 1500, 2500, 3700, 10000};
    uint64_t hb = 900;
    for (size_t k = 0; k < sizeof sweeps / sizeof *sweeps; k++) {
        /* the healthy 15 keep heartbeating, the 5 stay silent */
        for (; hb + 500 <= sweeps[k]; hb += 500)
            for (int i = 5; i < 20; i++)
                assert_int_equal(reg_heartbeat(s, "svc", pid_of(id, sizeof id, i), hb + 500), 0);
        assert_int_equal(reg_sweep(s, sweeps[k]), 0);
        assert_true(reg_self_preservation(s));
        assert_int_equal(reg_instance_total(s), 20);
        assert_held(s, 0, 4, true, sweeps[k]);
        assert_held(s, 5, 19, false, sweeps[k]);
        assert_int_equal(reg_revision(s), 25); /* nothing new to report */
    }
    /* the held ones can still be deregistered explicitly */
    assert_int_equal(reg_delete(s, "svc", "p00"), 26);
    assert_int_equal(reg_instance_total(s), 19);
    reg_store_free(s);
}

static void test_preservation_reregister_clears_expired(void **state)
{
    (void)state;
    reg_store *s = twenty_leased(5);
    assert_int_equal(reg_sweep(s, 1000), 0);
    reg_input in = mk_input("10.0.0.1", 80, 1000);
    /* identical body, but the instance becomes visible again: a change */
    assert_int_equal(reg_put(s, "svc", "p00", &in, 1100), 26);
    const reg_instance *r = reg_find(s, "svc", "p00");
    assert_false(r->expired);
    assert_int_equal(r->create_rev, 1);
    assert_int_equal(r->mod_rev, 26);
    assert_int_equal(r->expires_ms, 2100);
    assert_true(reg_instance_healthy(r, 1100));
    reg_store_free(s);
}

static void test_preservation_below_min(void **state)
{
    (void)state;
    reg_store *s = store_with(0);
    reg_input leased = mk_input("10.0.0.1", 80, 1000);
    reg_input forever = mk_input("10.0.0.2", 80, 0);
    char id[8];
    /* 20 lease-less instances do not count toward the minimum */
    for (int i = 0; i < 20; i++) {
        snprintf(id, sizeof id, "f%02d", i);
        assert_true(reg_put(s, "svc", id, &forever, 0) > 0);
    }
    for (int i = 0; i < 5; i++)
        assert_true(reg_put(s, "svc", pid_of(id, sizeof id, i), &leased, 0) > 0);
    uint64_t rev = reg_revision(s);
    assert_int_equal(reg_sweep(s, 1000), 5); /* 100 % of leases, yet evicted */
    assert_false(reg_self_preservation(s));
    assert_int_equal(reg_instance_total(s), 20);
    assert_int_equal(reg_revision(s), rev + 5);
    for (int i = 0; i < 5; i++)
        assert_null(reg_find(s, "svc", pid_of(id, sizeof id, i)));
    reg_store_free(s);
}

static void test_preservation_custom_opts(void **state)
{
    (void)state;
    reg_store_opts o;
    reg_store_opts_default(&o);
    o.preservation_threshold = 0.5;
    o.preservation_min = 4;
    reg_store *s = reg_store_new(&o);
    assert_non_null(s);
    reg_input in = mk_input("10.0.0.1", 80, 1000);
    char id[8];
    for (int i = 0; i < 4; i++)
        assert_true(reg_put(s, "svc", pid_of(id, sizeof id, i), &in, 0) > 0);
    for (int i = 2; i < 4; i++)
        assert_int_equal(reg_heartbeat(s, "svc", pid_of(id, sizeof id, i), 900), 0);
    /* 2 of 4 = 50 %: not more than the threshold, evicted */
    assert_int_equal(reg_sweep(s, 1000), 2);
    assert_false(reg_self_preservation(s));
    reg_store_free(s);

    s = reg_store_new(&o);
    for (int i = 0; i < 4; i++)
        assert_true(reg_put(s, "svc", pid_of(id, sizeof id, i), &in, 0) > 0);
    assert_int_equal(reg_heartbeat(s, "svc", "p03", 900), 0);
    /* 3 of 4 = 75 %: held */
    assert_int_equal(reg_sweep(s, 1000), 0);
    assert_true(reg_self_preservation(s));
    assert_int_equal(reg_instance_total(s), 4);
    reg_store_free(s);
}

/* ------------------------------------------------------------------ */
/* scale */

static void test_scale_100k(void **state)
{
    (void)state;
    enum { NSVC = 100, PER = 1000 };
    reg_store *s = store_with(0);
    char svc[16], id[16];
    double t0 = mono_s();
    for (int i = 0; i < NSVC * PER; i++) {
        snprintf(svc, sizeof svc, "svc-%d", i % NSVC);
        snprintf(id, sizeof id, "inst-%d", i);
        char addr[24];
        snprintf(addr, sizeof addr, "10.%d.%d.%d", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        reg_input in = mk_input(addr, 1 + i % 65535, 30000);
        int64_t rc = reg_put(s, svc, id, &in, 0);
        if (rc != i + 1)
            fail_msg("put %d returned %lld", i, (long long)rc);
    }
    double t_put = mono_s() - t0;
    assert_int_equal(reg_instance_total(s), NSVC * PER);
    assert_int_equal(reg_service_count(s), NSVC);
    for (size_t k = 0; k < NSVC; k++) {
        size_t n = 0;
        assert_non_null(reg_service_at(s, k, &n));
        assert_int_equal(n, PER);
    }

    t0 = mono_s();
    for (int i = 0; i < NSVC * PER; i++) {
        snprintf(svc, sizeof svc, "svc-%d", i % NSVC);
        snprintf(id, sizeof id, "inst-%d", i);
        if (reg_heartbeat(s, svc, id, 10000) != 0)
            fail_msg("heartbeat %s/%s failed", svc, id);
    }
    for (int i = 0; i < NSVC * PER; i++) {
        snprintf(svc, sizeof svc, "svc-%d", i % NSVC);
        snprintf(id, sizeof id, "inst-%d", i);
        const reg_instance *r = reg_find(s, svc, id);
        if (!r || strcmp(r->id, id) != 0 || r->expires_ms != 40000 ||
            r->port != (uint16_t)(1 + i % 65535))
            fail_msg("find %s/%s wrong", svc, id);
    }
    double t_hot = mono_s() - t0;
    assert_int_equal(reg_revision(s), NSVC * PER); /* heartbeats bump nothing */
    assert_null(reg_find(s, "svc-0", "inst-1"));   /* inst-1 lives in svc-1 */
    print_message("scale: put %.3f s, heartbeat+find %.3f s\n", t_put, t_hot);
    if (t_hot >= 2.0)
        fail_msg("heartbeat+find of 100k took %.3f s (limit 2 s)", t_hot);
    if (t_put >= 20.0)
        fail_msg("put of 100k took %.3f s (limit 20 s)", t_put);

    assert_int_equal(reg_sweep(s, 39999), 0);
    assert_int_equal(reg_instance_total(s), NSVC * PER);
    reg_store_free(s);
}

/* Registration churn: register and deregister many distinct ids while few
 * are live. Lookups must keep working however long the process runs. */
static int churn_child(void)
{
    reg_store *s = reg_store_new(NULL);
    if (!s)
        return 10;
    reg_input in = mk_input("10.0.0.1", 80, 0);
    if (reg_put(s, "svc", "steady", &in, 0) != 1)
        return 11;
    char id[24];
    for (int i = 0; i < 20000; i++) {
        snprintf(id, sizeof id, "job-%d", i);
        if (reg_put(s, "svc", id, &in, 0) <= 0)
            return 12;
        if (reg_delete(s, "svc", id) <= 0)
            return 13;
    }
    if (reg_find(s, "svc", "job-never") != NULL)
        return 14;
    if (!reg_find(s, "svc", "steady") || reg_instance_total(s) != 1)
        return 15;
    if (reg_revision(s) != 1 + 2 * 20000)
        return 16;
    reg_store_free(s);
    return 0;
}

static void test_churn_does_not_exhaust_table(void **state)
{
    (void)state;
    int rc = run_in_child_timeout(churn_child, 10000);
    if (rc == -2)
        fail_msg("register/deregister churn hung (lookup never terminates)");
    assert_int_equal(rc, 0);
}

/* ------------------------------------------------------------------ */
/* active checks */

static void test_check_http_split(void **state)
{
    (void)state;
    char host[64];
    uint16_t port;
    const char *path;
    assert_int_equal(reg_check_http_split("/health", "10.0.0.1", 8080, host, sizeof host, &port,
                                          &path), 0);
    assert_string_equal(host, "10.0.0.1");
    assert_int_equal(port, 8080);
    assert_string_equal(path, "/health");
    assert_int_equal(reg_check_http_split("http://h.example:9000/r?x=1", "a", 1, host,
                                          sizeof host, &port, &path), 0);
    assert_string_equal(host, "h.example");
    assert_int_equal(port, 9000);
    assert_string_equal(path, "/r?x=1");
    assert_int_equal(reg_check_http_split("http://[::1]:81", "a", 1, host, sizeof host, &port,
                                          &path), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 81);
    assert_string_equal(path, "/");
    assert_int_equal(reg_check_http_split("http://h/", "a", 1, host, sizeof host, &port, &path),
                     0);
    assert_int_equal(port, 80);
    static const char *const bad[] = {"health", "https://h/", "http://:1/", "http://h:0/",
                                      "http://h:65536/", "http://h:x/", "http://[::1/",
                                      "http://[]:1/", "http://[::1]x/", "http://h:/"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(reg_check_http_split(bad[i], "a", 1, host, sizeof host, &port, &path),
                         WEFT_EINVAL);
}

static void test_check_input_and_state(void **state)
{
    (void)state;
    reg_store *s = store_with(0);
    json_t *b = body_with("check", json_pack("{s:s, s:s}", "http", "/h", "interval", "2s"));
    reg_input in;
    char why[256] = "";
    assert_int_equal(reg_input_from_json(b, &in, why, sizeof why), 0);
    assert_int_equal(in.check.kind, REG_CHECK_HTTP);
    assert_int_equal(in.check.interval_ms, 2000);
    assert_int_equal(in.check.timeout_ms, 2000); /* min(interval, 5 s) */
    assert_int_equal(in.check.failures, 1);
    assert_false(in.check.passing); /* critical until a probe passes */
    assert_int_equal(reg_put(s, "api", "a", &in, 1000), 1);
    json_decref(b);
    const reg_instance *r = reg_find(s, "api", "a");
    assert_non_null(r->check);
    assert_false(reg_instance_healthy(r, 1000));
    /* only flips are changes */
    assert_int_equal(reg_set_check(s, "api", "a", true, 1100), 2);
    assert_true(reg_instance_healthy(reg_find(s, "api", "a"), 1100));
    assert_int_equal(reg_set_check(s, "api", "a", true, 1200), 0);
    assert_int_equal(reg_set_check(s, "api", "ghost", true, 1200), WEFT_ENOTFOUND);
    /* re-registering the same check keeps its state; a new one starts over */
    b = body_with("check", json_pack("{s:s, s:s}", "http", "/h", "interval", "2s"));
    assert_int_equal(reg_input_from_json(b, &in, why, sizeof why), 0);
    assert_int_equal(reg_put(s, "api", "a", &in, 1300), 0);
    json_decref(b);
    assert_true(reg_find(s, "api", "a")->check->passing);
    b = body_with("check", json_pack("{s:s, s:s}", "tcp", "", "interval", "1s"));
    assert_int_equal(reg_input_from_json(b, &in, why, sizeof why), 0);
    assert_int_equal(reg_put(s, "api", "a", &in, 1400), 3);
    json_decref(b);
    assert_int_equal(reg_find(s, "api", "a")->check->kind, REG_CHECK_TCP);
    assert_false(reg_find(s, "api", "a")->check->passing);
    /* dropping the check makes the instance healthy without one */
    in = mk_input("10.0.0.1", 8080, 0);
    assert_int_equal(reg_put(s, "api", "a", &in, 1500), 4);
    assert_null(reg_find(s, "api", "a")->check);
    assert_true(reg_instance_healthy(reg_find(s, "api", "a"), 1500));
    assert_int_equal(reg_set_check(s, "api", "a", false, 1600), 0);
    reg_store_free(s);
}

/* ------------------------------------------------------------------ */
/* mirror of an external store (the etcd store): etcd's revisions */

static void test_apply_uses_external_revisions(void **state)
{
    (void)state;
    reg_store *s = store_with(16);
    reg_input in = mk_input("10.0.0.1", 80, 2000);
    /* revisions with gaps, as etcd's are (other keys, lease grants...) */
    assert_int_equal(reg_apply_put(s, "svc", "a", &in, 5, 5, 0x77, 0), 5);
    assert_int_equal(reg_apply_put(s, "svc", "b", &in, 9, 9, 0, 0), 9);
    in.port = 81;
    assert_int_equal(reg_apply_put(s, "svc", "a", &in, 5, 12, 0x78, 0), 12);
    assert_int_equal(reg_revision(s), 12);
    assert_int_equal(reg_service_revision(s, "svc"), 12);
    const reg_instance *a = reg_find(s, "svc", "a");
    assert_int_equal(a->create_rev, 5);
    assert_int_equal(a->mod_rev, 12);
    assert_int_equal(a->lease_id, 0x78);
    /* the same change again is a no-op */
    assert_int_equal(reg_apply_put(s, "svc", "a", &in, 5, 12, 0x78, 0), 0);
    /* etcd expires leases: never swept here, always healthy while present */
    assert_int_equal(reg_sweep(s, 1000000), 0);
    assert_true(reg_instance_healthy(reg_find(s, "svc", "a"), 1000000));
    json_t *j = reg_instance_json(reg_find(s, "svc", "a"), 0);
    assert_string_equal(json_string_value(json_object_get(j, "lease")), "78");
    assert_null(json_object_get(j, "lease_remaining_ms"));
    assert_int_equal(json_integer_value(json_object_get(j, "ttl_ms")), 2000);
    json_decref(j);
    assert_int_equal(reg_apply_delete(s, "svc", "b", 20), 20);
    assert_int_equal(reg_apply_delete(s, "svc", "b", 21), WEFT_ENOTFOUND);
    /* the history has the gaps: every "since" finds the next change */
    const reg_event *ev[8];
    assert_int_equal(reg_changes(s, 0, ev, 8), 4);
    assert_int_equal(ev[0]->rev, 5);
    assert_int_equal(reg_changes(s, 5, ev, 8), 3);
    assert_int_equal(ev[0]->rev, 9);
    assert_int_equal(reg_changes(s, 10, ev, 8), 2);
    assert_int_equal(ev[0]->rev, 12);
    assert_int_equal(reg_changes(s, 13, ev, 8), 1);
    assert_int_equal(ev[0]->rev, 20);
    assert_int_equal(ev[0]->kind, REG_EV_DELETE);
    assert_int_equal(reg_changes(s, 20, ev, 8), 0);
    reg_store_free(s);
}

static void test_history_with_gaps_overwritten(void **state)
{
    (void)state;
    reg_store *s = store_with(16);
    reg_input in = mk_input("10.0.0.1", 80, 0);
    char id[16];
    for (int i = 0; i < 40; i++) { /* revisions 10, 13, 16, ... */
        snprintf(id, sizeof id, "i%d", i);
        assert_int_equal(reg_apply_put(s, "svc", id, &in, 10 + 3 * (uint64_t)i,
                                       10 + 3 * (uint64_t)i, 0, 0),
                         10 + 3 * i);
    }
    /* 16 retained: revisions 82..127; the last evicted one (79) is the floor */
    const reg_event *ev[32];
    assert_int_equal(reg_changes(s, 78, ev, 32), WEFT_ETOOBIG);
    assert_int_equal(reg_changes(s, 79, ev, 32), 16);
    assert_int_equal(ev[0]->rev, 82);
    assert_int_equal(reg_changes(s, 80, ev, 32), 16);
    assert_int_equal(reg_changes(s, 82, ev, 32), 15);
    assert_int_equal(ev[0]->rev, 85);
    assert_int_equal(reg_changes(s, 126, ev, 32), 1);
    assert_int_equal(ev[0]->rev, 127);
    reg_store_free(s);
}

static void test_history_reset_loads_a_snapshot(void **state)
{
    (void)state;
    reg_store *s = store_with(16);
    reg_input in = mk_input("10.0.0.1", 80, 0);
    assert_int_equal(reg_apply_put(s, "svc", "old", &in, 3, 3, 0, 0), 3);
    /* a re-list at revision 50: history reset, snapshot applied below it */
    reg_history_reset(s, 50);
    assert_int_equal(reg_apply_put(s, "svc", "new", &in, 40, 44, 0, 0), 44);
    assert_int_equal(reg_apply_delete(s, "svc", "old", 50), 50);
    reg_history_reset(s, 50);
    assert_int_equal(reg_revision(s), 50);
    assert_int_equal(reg_service_revision(s, "svc"), 50);
    assert_int_equal(reg_find(s, "svc", "new")->mod_rev, 44);
    assert_null(reg_find(s, "svc", "old"));
    const reg_event *ev[4];
    /* nothing at or below the floor was recorded; behind it: re-list */
    assert_int_equal(reg_changes(s, 50, ev, 4), 0);
    assert_int_equal(reg_changes(s, 49, ev, 4), WEFT_ETOOBIG);
    assert_int_equal(reg_apply_put(s, "svc", "next", &in, 60, 60, 0, 0), 60);
    assert_int_equal(reg_changes(s, 50, ev, 4), 1);
    assert_int_equal(ev[0]->rev, 60);
    reg_store_free(s);
}

static void test_instance_body_round_trips(void **state)
{
    (void)state;
    reg_store *s = store_with(0);
    json_t *b = json_pack("{s:s, s:i, s:[s,s], s:{s:s}, s:s, s:s, s:i, s:s, s:s}", "address",
                          "10.0.0.9", "port", 81, "tags", "x", "y", "meta", "k", "v", "zone", "z",
                          "version", "1.2", "weight", 7, "status", "DOWN", "ttl", "2500ms");
    reg_input in;
    char why[200];
    const char *tags[] = {"x", "y"};
    assert_int_equal(reg_input_from_json(b, &in, why, sizeof why), 0);
    in.tags = tags;
    assert_int_equal(reg_put(s, "svc", "i", &in, 0), 1);
    json_t *body = reg_instance_body(reg_find(s, "svc", "i"));
    reg_input again;
    assert_int_equal(reg_input_from_json(body, &again, why, sizeof why), 0);
    again.tags = tags;
    assert_true(reg_input_matches(reg_find(s, "svc", "i"), &again));
    again.port = 82;
    assert_false(reg_input_matches(reg_find(s, "svc", "i"), &again));
    json_decref(body);
    json_decref(b);
    reg_store_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_http_split),
        cmocka_unit_test(test_check_input_and_state),
        cmocka_unit_test(test_input_full_body),
        cmocka_unit_test(test_input_defaults),
        cmocka_unit_test(test_input_not_object),
        cmocka_unit_test(test_input_unknown_field),
        cmocka_unit_test(test_input_address),
        cmocka_unit_test(test_input_port),
        cmocka_unit_test(test_input_weight),
        cmocka_unit_test(test_input_status),
        cmocka_unit_test(test_status_names),
        cmocka_unit_test(test_input_zone_version),
        cmocka_unit_test(test_input_ttl_forms),
        cmocka_unit_test(test_input_ttl_rejected),
        cmocka_unit_test(test_input_tags),
        cmocka_unit_test(test_input_meta),
        cmocka_unit_test(test_name_ok),
        cmocka_unit_test(test_store_defaults),
        cmocka_unit_test(test_put_new),
        cmocka_unit_test(test_put_identical_refreshes_lease),
        cmocka_unit_test(test_put_changes_bump_revision),
        cmocka_unit_test(test_service_revision_tracks_own_changes),
        cmocka_unit_test(test_listing),
        cmocka_unit_test(test_delete),
        cmocka_unit_test(test_heartbeat),
        cmocka_unit_test(test_set_status),
        cmocka_unit_test(test_instance_json),
        cmocka_unit_test(test_changes_order_and_payloads),
        cmocka_unit_test(test_changes_since_and_max),
        cmocka_unit_test(test_changes_history_overwritten),
        cmocka_unit_test(test_changes_history_floor),
        cmocka_unit_test(test_sweep_at_deadline),
        cmocka_unit_test(test_sweep_ttl0_never_expires),
        cmocka_unit_test(test_sweep_heartbeat_keeps_alive),
        cmocka_unit_test(test_sweep_returns_count),
        cmocka_unit_test(test_preservation_single_expiry_evicted),
        cmocka_unit_test(test_preservation_holds_mass_expiry),
        cmocka_unit_test(test_preservation_heartbeats_return),
        cmocka_unit_test(test_preservation_stays_held),
        cmocka_unit_test(test_preservation_reregister_clears_expired),
        cmocka_unit_test(test_preservation_below_min),
        cmocka_unit_test(test_preservation_custom_opts),
        cmocka_unit_test(test_scale_100k),
        cmocka_unit_test(test_churn_does_not_exhaust_table),
        cmocka_unit_test(test_apply_uses_external_revisions),
        cmocka_unit_test(test_history_with_gaps_overwritten),
        cmocka_unit_test(test_history_reset_loads_a_snapshot),
        cmocka_unit_test(test_instance_body_round_trips),
    };
    return cmocka_run_group_tests_name("registry_store", tests, NULL, NULL);
}
