/*
 * test_registry_etcd_url.c — parsing of `weft registry --store etcd://...`
 * (reg_etcd_parse_url): endpoints, default port, IPv6, prefix, and the
 * reasons given for bad URLs. The etcd store itself is tested against a
 * real etcd cluster in tests/integration/test_registry_etcd.py.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "registry/etcd.h"

static void test_endpoints_and_defaults(void **state)
{
    (void)state;
    reg_etcd_url u;
    char why[160];
    assert_int_equal(reg_etcd_parse_url("etcd://10.0.0.1:2381,h2,[::1]:2390", &u, why, sizeof why),
                     0);
    assert_int_equal(u.n, 3);
    assert_string_equal(u.host[0], "10.0.0.1");
    assert_int_equal(u.port[0], 2381);
    assert_string_equal(u.host[1], "h2");
    assert_int_equal(u.port[1], 2379);
    assert_string_equal(u.host[2], "::1");
    assert_int_equal(u.port[2], 2390);
    assert_string_equal(u.prefix, "/weft/registry");
    assert_int_equal(reg_etcd_parse_url("etcd://127.0.0.1:1/team-a/reg/", &u, why, sizeof why), 0);
    assert_int_equal(u.n, 1);
    assert_string_equal(u.prefix, "/team-a/reg");
}

static void expect_bad(const char *url, const char *reason)
{
    reg_etcd_url u;
    char why[160] = "";
    assert_int_equal(reg_etcd_parse_url(url, &u, why, sizeof why), WEFT_EINVAL);
    if (!strstr(why, reason))
        fail_msg("%s: expected a reason containing \"%s\", got \"%s\"", url, reason, why);
}

static void test_bad_urls(void **state)
{
    (void)state;
    expect_bad("http://127.0.0.1:2379", "expected etcd://");
    expect_bad(NULL, "expected etcd://");
    expect_bad("etcd://", "no endpoint");
    expect_bad("etcd:///prefix", "no endpoint");
    expect_bad("etcd://h:0", "port must be 1-65535");
    expect_bad("etcd://h:65536", "port must be 1-65535");
    expect_bad("etcd://h:12x", "port must be 1-65535");
    expect_bad("etcd://h:", "port must be 1-65535");
    expect_bad("etcd://h:1,", "empty endpoint");
    expect_bad("etcd://h:1,,h:2", "expected HOST:PORT");
    expect_bad("etcd://[::1", "unterminated");
    expect_bad("etcd://[::1]x", "expected :PORT after ]");
    expect_bad("etcd://h/", "prefix");
    expect_bad("etcd://h/a b", "prefix");
    char many[400] = "etcd://";
    for (int i = 0; i < 17; i++)
        strcat(many, i ? ",h" : "h");
    expect_bad(many, "at most 16 endpoints");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_endpoints_and_defaults),
        cmocka_unit_test(test_bad_urls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
