/* test_path.c — request path normalization (src/http/path.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "weft/http.h"

typedef struct pcase {
    const char *in, *merged, *unmerged; /* normal form with and without merge_slashes */
} pcase;

static const pcase cases[] = {
    {"/", "/", "/"},
    {"/a/b", "/a/b", "/a/b"},
    {"/a/b/", "/a/b/", "/a/b/"},
    {"/a/./b", "/a/b", "/a/b"},
    {"/a/../b", "/b", "/b"},
    {"/a/b/..", "/a/", "/a/"},
    {"/a/.", "/a/", "/a/"},
    {"/..", "/", "/"},
    {"/../../x", "/x", "/x"},
    {"/public/../admin/x", "/admin/x", "/admin/x"},
    {"/%61dmin/x", "/admin/x", "/admin/x"},
    {"/%2e%2e/admin", "/admin", "/admin"},
    {"/a/%2E/b", "/a/b", "/a/b"},
    {"/a%2Fb", "/a%2Fb", "/a%2Fb"},     /* an escaped slash is not a separator */
    {"/a%25b", "/a%25b", "/a%25b"},     /* nor is %25 decoded (it would re-escape) */
    {"/a%zzb", "/a%zzb", "/a%zzb"},     /* malformed escape: kept */
    {"/a%4", "/a%4", "/a%4"},
    {"//admin/x", "/admin/x", "//admin/x"},
    {"/a//b//", "/a/b/", "/a//b//"},
    {"//", "/", "//"},
    {"/.hidden/..x/.../y", "/.hidden/..x/.../y", "/.hidden/..x/.../y"},
    {"/a/./", "/a/", "/a/"},
    {"/a/.//", "/a/", "/a//"},
    {"/%7Euser", "/~user", "/~user"},
    {"*", "*", "*"},
};

static void test_normalize_table(void **state)
{
    (void)state;
    char out[64];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const pcase *c = &cases[i];
        weft_str in = weft_str_from(c->in);
        for (int merge = 0; merge < 2; merge++) {
            const char *want = merge ? c->merged : c->unmerged;
            memset(out, 0, sizeof out);
            size_t n = weft_http_path_normalize(in, merge, out);
            out[n] = '\0';
            if (strcmp(out, want) != 0)
                fail_msg("normalize(%s, merge=%d) = %s, want %s", c->in, merge, out, want);
            /* normal exactly when nothing changes */
            assert_int_equal(weft_http_path_normal(in, merge), strcmp(c->in, want) == 0);
            /* idempotent */
            char again[64];
            size_t m = weft_http_path_normalize((weft_str){out, n}, merge, again);
            assert_int_equal(m, n);
            assert_memory_equal(again, out, n);
            assert_true(weft_http_path_normal((weft_str){out, n}, merge));
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_normalize_table)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
