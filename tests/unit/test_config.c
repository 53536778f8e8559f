/*
 * test_config.c — unit tests for the YAML configuration module (config.h).
 *
 * Every error test asserts the whole message, "FILE:LINE:COL: KEY: reason",
 * because the exact location and dotted path are the point of the module.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmocka.h>

#include "weft/config.h"

/* ---- helpers ----------------------------------------------------------- */

static weft_conf *load_ok(const char *yaml)
{
    weft_conf *c = NULL;
    weft_conf_err err = {{0}};
    int rc = weft_conf_load_string("t.yaml", yaml, strlen(yaml), &c, &err);
    if (rc != 0)
        fail_msg("load failed: %s", err.msg);
    assert_non_null(c);
    return c;
}

static void expect_load_err(const char *yaml, const char *msg)
{
    weft_conf *c = (weft_conf *)1;
    weft_conf_err err = {{0}};
    int rc = weft_conf_load_string("t.yaml", yaml, strlen(yaml), &c, &err);
    assert_int_equal(rc, WEFT_ECONFIG);
    assert_null(c);
    assert_string_equal(err.msg, msg);
}

static char *write_tmp(const char *text)
{
    char *path = strdup("/tmp/weft_test_config_XXXXXX");
    assert_non_null(path);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    return path;
}

/* ---- loading ----------------------------------------------------------- */

static void test_empty_string_is_empty_map(void **state)
{
    (void)state;
    weft_conf *c = load_ok("");
    const weft_conf_node *r = weft_conf_root(c);
    assert_int_equal(weft_conf_kind(r), WEFT_CONF_MAP);
    assert_int_equal(weft_conf_map_len(r), 0);
    assert_int_equal(weft_conf_line(r), 1);
    assert_int_equal(weft_conf_column(r), 1);
    assert_string_equal(weft_conf_file(r), "t.yaml");
    weft_conf_err err = {{0}};
    assert_int_equal(weft_conf_check_unused(r, &err), 0);
    size_t n = 1;
    assert_string_equal(weft_conf_source(c, &n), "");
    assert_int_equal(n, 0);
    weft_conf_free(c);
}

static void test_source_text_kept(void **state)
{
    (void)state;
    static const char text[] = "# comment\na: 1\nb: [x, y]\n";
    char *path = write_tmp(text);
    weft_conf *c = NULL;
    weft_conf_err err = {{0}};
    assert_int_equal(weft_conf_load_file(path, &c, &err), 0);
    size_t n = 0;
    const char *src = weft_conf_source(c, &n);
    assert_int_equal(n, sizeof text - 1);
    assert_string_equal(src, text); /* comments and all, NUL-terminated */
    weft_conf_free(c);
    unlink(path);
    free(path);
}

static void test_comments_and_bare_document_are_empty(void **state)
{
    (void)state;
    const char *docs[] = {"# only a comment\n\n", "---\n", "---\n...\n", "~\n", "null\n"};
    for (size_t i = 0; i < WEFT_ARRAY_LEN(docs); i++) {
        weft_conf *c = load_ok(docs[i]);
        assert_int_equal(weft_conf_kind(weft_conf_root(c)), WEFT_CONF_MAP);
        assert_int_equal(weft_conf_map_len(weft_conf_root(c)), 0);
        weft_conf_free(c);
    }
}

static void test_scalars_and_locations(void **state)
{
    (void)state;
    weft_conf *c = load_ok("name: gateway\n"
                           "http:\n"
                           "  port:   8080\n"
                           "  host: \"0.0.0.0\"\n");
    const weft_conf_node *r = weft_conf_root(c);
    const weft_conf_node *name = weft_conf_get(r, "name");
    assert_string_equal(weft_conf_scalar(name), "gateway");
    assert_int_equal(weft_conf_line(name), 1);
    assert_int_equal(weft_conf_column(name), 7);
    const weft_conf_node *http = weft_conf_get(r, "http");
    assert_int_equal(weft_conf_kind(http), WEFT_CONF_MAP);
    assert_int_equal(weft_conf_line(http), 3);
    assert_int_equal(weft_conf_column(http), 3);
    const weft_conf_node *port = weft_conf_get(http, "port");
    assert_int_equal(weft_conf_line(port), 3);
    assert_int_equal(weft_conf_column(port), 11);
    assert_string_equal(weft_conf_scalar(port), "8080");
    assert_string_equal(weft_conf_scalar(weft_conf_get(http, "host")), "0.0.0.0");
    assert_null(weft_conf_get(http, "missing"));
    assert_null(weft_conf_scalar(http));
    weft_conf_free(c);
}

static void test_map_order_and_map_at(void **state)
{
    (void)state;
    weft_conf *c = load_ok("z: 1\na: 2\nm: 3\n");
    const weft_conf_node *r = weft_conf_root(c);
    const char *expect_k[] = {"z", "a", "m"};
    const char *expect_v[] = {"1", "2", "3"};
    assert_int_equal(weft_conf_map_len(r), 3);
    for (size_t i = 0; i < 3; i++) {
        const char *k = NULL;
        const weft_conf_node *v = weft_conf_map_at(r, i, &k);
        assert_string_equal(k, expect_k[i]);
        assert_string_equal(weft_conf_scalar(v), expect_v[i]);
    }
    const char *k = "x";
    assert_null(weft_conf_map_at(r, 3, &k));
    assert_null(k);
    /* map_at marks entries used */
    weft_conf_err err = {{0}};
    assert_int_equal(weft_conf_check_unused(r, &err), 0);
    weft_conf_free(c);
}

static void test_sequences(void **state)
{
    (void)state;
    weft_conf *c = load_ok("list:\n  - a\n  - b\nflow: [1, 2, 3]\nempty: []\n");
    const weft_conf_node *r = weft_conf_root(c);
    const weft_conf_node *l = weft_conf_get(r, "list");
    assert_int_equal(weft_conf_kind(l), WEFT_CONF_SEQ);
    assert_int_equal(weft_conf_seq_len(l), 2);
    assert_string_equal(weft_conf_scalar(weft_conf_seq_at(l, 0)), "a");
    assert_string_equal(weft_conf_scalar(weft_conf_seq_at(l, 1)), "b");
    assert_int_equal(weft_conf_line(weft_conf_seq_at(l, 1)), 3);
    assert_int_equal(weft_conf_column(weft_conf_seq_at(l, 1)), 5);
    assert_null(weft_conf_seq_at(l, 2));
    const weft_conf_node *f = weft_conf_get(r, "flow");
    assert_int_equal(weft_conf_seq_len(f), 3);
    assert_string_equal(weft_conf_scalar(weft_conf_seq_at(f, 2)), "3");
    assert_int_equal(weft_conf_column(weft_conf_seq_at(f, 2)), 14);
    assert_int_equal(weft_conf_seq_len(weft_conf_get(r, "empty")), 0);
    /* wrong-kind accessors are harmless */
    assert_int_equal(weft_conf_seq_len(r), 0);
    assert_null(weft_conf_seq_at(r, 0));
    assert_int_equal(weft_conf_map_len(l), 0);
    assert_null(weft_conf_map_at(l, 0, NULL));
    assert_null(weft_conf_get(l, "a"));
    weft_conf_free(c);
}

static void test_null_safety(void **state)
{
    (void)state;
    weft_conf_err err = {{0}};
    int64_t i = 7;
    assert_null(weft_conf_root(NULL));
    assert_int_equal(weft_conf_kind(NULL), 0);
    assert_int_equal(weft_conf_line(NULL), 0);
    assert_int_equal(weft_conf_column(NULL), 0);
    assert_null(weft_conf_file(NULL));
    assert_null(weft_conf_scalar(NULL));
    assert_null(weft_conf_get(NULL, "a"));
    assert_int_equal(weft_conf_map_len(NULL), 0);
    assert_int_equal(weft_conf_seq_len(NULL), 0);
    assert_int_equal(weft_conf_int(NULL, "a", 0, 10, &i, &err), 0);
    assert_int_equal(i, 7);
    assert_int_equal(weft_conf_check_unused(NULL, &err), 0);
    weft_conf_free(NULL);
}

static void test_block_and_folded_scalars(void **state)
{
    (void)state;
    weft_conf *c = load_ok("lit: |\n  one\n  two\nfold: >-\n  a\n  b\nsq: 'it''s'\n"
                           "dq: \"tab\\tnl\\n\"\n");
    const weft_conf_node *r = weft_conf_root(c);
    assert_string_equal(weft_conf_scalar(weft_conf_get(r, "lit")), "one\ntwo\n");
    assert_string_equal(weft_conf_scalar(weft_conf_get(r, "fold")), "a b");
    assert_string_equal(weft_conf_scalar(weft_conf_get(r, "sq")), "it's");
    assert_string_equal(weft_conf_scalar(weft_conf_get(r, "dq")), "tab\tnl\n");
    weft_conf_free(c);
}

static void test_unicode_columns(void **state)
{
    (void)state;
    weft_conf *c = load_ok("\xc3\xa9t\xc3\xa9: x\n");
    const weft_conf_node *v = weft_conf_get(weft_conf_root(c), "\xc3\xa9t\xc3\xa9");
    assert_non_null(v);
    assert_int_equal(weft_conf_column(v), 6); /* columns count characters */
    weft_conf_free(c);
}

static void test_syntax_error_mapping_values(void **state)
{
    (void)state;
    expect_load_err("a: b: c\n", "t.yaml:1:5: mapping values are not allowed in this context");
}

static void test_syntax_error_bad_indent(void **state)
{
    (void)state;
    expect_load_err("a: 1\n b: 2\n", "t.yaml:2:3: mapping values are not allowed in this context");
}

static void test_syntax_error_unclosed_flow(void **state)
{
    (void)state;
    expect_load_err("a: [1, 2\n", "t.yaml:2:1: did not find expected ',' or ']'");
}

static void test_syntax_error_unclosed_quote(void **state)
{
    (void)state;
    expect_load_err("a: \"x\n", "t.yaml:2:1: found unexpected end of stream");
}

static void test_syntax_error_tab(void **state)
{
    (void)state;
    expect_load_err("\t a: 1\n", "t.yaml:1:1: found character that cannot start any token");
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    expect_load_err("ok: 1\na: \xff\n", "t.yaml:2:4: invalid leading UTF-8 octet");
}

static void test_root_must_be_mapping(void **state)
{
    (void)state;
    expect_load_err("- 1\n- 2\n", "t.yaml:1:1: the top level must be a mapping");
    expect_load_err("\n\nhello\n", "t.yaml:3:1: the top level must be a mapping");
    expect_load_err("\"\"\n", "t.yaml:1:1: the top level must be a mapping");
}

static void test_duplicate_key_top(void **state)
{
    (void)state;
    expect_load_err("a: 1\nb: 2\na: 3\n", "t.yaml:3:1: a: duplicate key");
}

static void test_duplicate_key_nested(void **state)
{
    (void)state;
    expect_load_err("http:\n  port: 1\n  host: x\n  port: 2\n",
                    "t.yaml:4:3: http.port: duplicate key");
}

static void test_duplicate_key_in_sequence_item(void **state)
{
    (void)state;
    expect_load_err("routes:\n  - path: /a\n  - path: /b\n    path: /c\n",
                    "t.yaml:4:5: routes[1].path: duplicate key");
}

static void test_duplicate_key_quoted_vs_plain(void **state)
{
    (void)state;
    expect_load_err("{a: 1, \"a\": 2}\n", "t.yaml:1:8: a: duplicate key");
}

static void test_duplicate_key_large_map(void **state)
{
    (void)state;
    char buf[200 * 16];
    size_t off = 0;
    for (int i = 0; i < 200; i++)
        off += (size_t)sprintf(buf + off, "k%d: %d\n", i, i);
    /* no duplicates among 200 keys */
    weft_conf *c = load_ok(buf);
    assert_int_equal(weft_conf_map_len(weft_conf_root(c)), 200);
    assert_string_equal(weft_conf_scalar(weft_conf_get(weft_conf_root(c), "k199")), "199");
    weft_conf_free(c);
    sprintf(buf + off, "k17: x\n");
    expect_load_err(buf, "t.yaml:201:1: k17: duplicate key");
}

static void test_non_scalar_key(void **state)
{
    (void)state;
    expect_load_err("? [a, b]\n: 1\n", "t.yaml:1:3: keys must be scalars");
    expect_load_err("x:\n  ? {a: 1}\n  : 2\n", "t.yaml:2:5: x: keys must be scalars");
}

static void test_alias_rejected(void **state)
{
    (void)state;
    expect_load_err("a: 1\nb: *x\n", "t.yaml:2:4: b: aliases are not supported");
    expect_load_err("l:\n  - 1\n  - *x\n", "t.yaml:3:5: l[1]: aliases are not supported");
}

static void test_anchor_rejected(void **state)
{
    (void)state;
    expect_load_err("base: &b\n  x: 1\nother:\n  <<: *b\n",
                    "t.yaml:1:7: base: anchors and aliases are not supported");
}

static void test_multiple_documents_rejected(void **state)
{
    (void)state;
    expect_load_err("a: 1\n---\nb: 2\n", "t.yaml:2:1: multiple documents are not supported");
}

static void test_tags(void **state)
{
    (void)state;
    weft_conf *c = load_ok("a: !!str 10\nb: ! 20\nm: !!map {x: 1}\n");
    const weft_conf_node *r = weft_conf_root(c);
    assert_string_equal(weft_conf_scalar(weft_conf_get(r, "a")), "10");
    assert_string_equal(weft_conf_scalar(weft_conf_get(r, "b")), "20");
    assert_int_equal(weft_conf_kind(weft_conf_get(r, "m")), WEFT_CONF_MAP);
    weft_conf_free(c);
    expect_load_err("a:\n  b: !custom 1\n", "t.yaml:2:6: a.b: tag !custom is not supported");
    expect_load_err("a: !!seq {x: 1}\n",
                    "t.yaml:1:4: a: tag tag:yaml.org,2002:seq is not supported");
}

static void test_nul_byte_rejected(void **state)
{
    (void)state;
    expect_load_err("a: \"x\\0y\"\n", "t.yaml:1:4: a: NUL bytes are not supported");
}

/* depth mappings: {a: {a: ... {a: 1} ... }} */
static void nested_flow(char *s, size_t cap, int depth)
{
    size_t off = 0;
    assert_true((size_t)depth * 5 + 2 <= cap);
    for (int i = 0; i < depth; i++) {
        memcpy(s + off, "{a: ", 4);
        off += 4;
    }
    s[off++] = '1';
    for (int i = 0; i < depth; i++)
        s[off++] = '}';
    s[off] = '\0';
}

static void test_depth_limit(void **state)
{
    (void)state;
    char doc[400];
    nested_flow(doc, sizeof doc, 64);
    weft_conf *c = load_ok(doc);
    weft_conf_free(c);

    nested_flow(doc, sizeof doc, 65);
    char expect[512];
    /* the 65th mapping opens at column 64 * 4 + 1, under a.a... (64 keys) */
    size_t off = (size_t)snprintf(expect, sizeof expect, "t.yaml:1:257: a");
    for (int i = 1; i < 64; i++)
        off += (size_t)snprintf(expect + off, sizeof expect - off, ".a");
    snprintf(expect + off, sizeof expect - off, ": nesting is deeper than 64 levels");
    expect_load_err(doc, expect);
}

static void test_deep_sequence_nesting_no_leak(void **state)
{
    (void)state;
    /* an error with many frames open must release them all (LSan checks) */
    char buf[300];
    size_t off = (size_t)sprintf(buf, "x: ");
    for (int i = 0; i < 70; i++)
        buf[off++] = '[';
    buf[off] = '\0';
    weft_conf *c = NULL;
    weft_conf_err err = {{0}};
    assert_int_equal(weft_conf_load_string("t.yaml", buf, off, &c, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:1:67: x[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]"
                                 "[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]"
                                 "[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]"
                                 "[0][0][0][0][0][0][0][0][0][0]: nesting is deeper than "
                                 "64 levels");
}

static void test_size_limit(void **state)
{
    (void)state;
    size_t len = ((size_t)16 << 20) + 1;
    char *big = malloc(len);
    assert_non_null(big);
    memset(big, ' ', len);
    weft_conf *c = NULL;
    weft_conf_err err = {{0}};
    assert_int_equal(weft_conf_load_string("big.yaml", big, len, &c, &err), WEFT_ECONFIG);
    assert_null(c);
    assert_string_equal(err.msg, "big.yaml: document is larger than 16 MiB");
    free(big);
}

static void test_load_file_ok_and_errors_name_file(void **state)
{
    (void)state;
    char *path = write_tmp("http:\n  port: 70000\n");
    weft_conf *c = NULL;
    weft_conf_err err = {{0}};
    assert_int_equal(weft_conf_load_file(path, &c, &err), 0);
    const weft_conf_node *http = weft_conf_get(weft_conf_root(c), "http");
    assert_string_equal(weft_conf_file(http), path);
    int64_t port = 0;
    assert_int_equal(weft_conf_int(http, "port", 1, 65535, &port, &err), WEFT_ECONFIG);
    char expect[512];
    snprintf(expect, sizeof expect,
             "%s:2:9: http.port: expected an integer between 1 and 65535", path);
    assert_string_equal(err.msg, expect);
    weft_conf_free(c);
    unlink(path);
    free(path);
}

static void test_load_file_syntax_error(void **state)
{
    (void)state;
    char *path = write_tmp("a: 1\nb: [\n");
    weft_conf *c = NULL;
    weft_conf_err err = {{0}};
    assert_int_equal(weft_conf_load_file(path, &c, &err), WEFT_ECONFIG);
    assert_null(c);
    char expect[512];
    snprintf(expect, sizeof expect, "%s:3:1: did not find expected node content", path);
    assert_string_equal(err.msg, expect);
    unlink(path);
    free(path);
}

static void test_load_file_missing_and_dir(void **state)
{
    (void)state;
    weft_conf *c = NULL;
    weft_conf_err err = {{0}};
    assert_int_equal(weft_conf_load_file("/nonexistent/weft.yaml", &c, &err), WEFT_ECONFIG);
    assert_null(c);
    assert_string_equal(err.msg, "/nonexistent/weft.yaml: No such file or directory");
    assert_int_equal(weft_conf_load_file("/tmp", &c, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "/tmp: Is a directory");
}

static void test_load_file_empty(void **state)
{
    (void)state;
    char *path = write_tmp("");
    weft_conf *c = NULL;
    weft_conf_err err = {{0}};
    assert_int_equal(weft_conf_load_file(path, &c, &err), 0);
    assert_int_equal(weft_conf_map_len(weft_conf_root(c)), 0);
    weft_conf_free(c);
    unlink(path);
    free(path);
}

/* ---- typed getters ----------------------------------------------------- */

static void test_string_getter(void **state)
{
    (void)state;
    weft_conf *c = load_ok("s: hello\nq: ''\nn: 42\nm: {a: 1}\nl: [1]\nz: ~\ne:\n");
    const weft_conf_node *r = weft_conf_root(c);
    weft_conf_err err = {{0}};
    const char *s = "default";
    assert_int_equal(weft_conf_string(r, "absent", &s, &err), 0);
    assert_string_equal(s, "default");
    assert_int_equal(weft_conf_string(r, "s", &s, &err), 0);
    assert_string_equal(s, "hello");
    assert_int_equal(weft_conf_string(r, "q", &s, &err), 0);
    assert_string_equal(s, "");
    assert_int_equal(weft_conf_string(r, "n", &s, &err), 0);
    assert_string_equal(s, "42");
    s = "keep";
    assert_int_equal(weft_conf_string(r, "m", &s, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:4:4: m: expected a string");
    assert_string_equal(s, "keep");
    assert_int_equal(weft_conf_string(r, "l", &s, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:5:4: l: expected a string");
    assert_int_equal(weft_conf_string(r, "z", &s, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:6:4: z: expected a string");
    assert_int_equal(weft_conf_string(r, "e", &s, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:7:3: e: expected a string");
    weft_conf_free(c);
}

static void test_int_getter_values(void **state)
{
    (void)state;
    weft_conf *c = load_ok("a: 42\nb: -7\nc: +3\nd: \"10\"\ne: '-0'\nf: 007\n"
                           "max: 9223372036854775807\nmin: -9223372036854775808\n");
    const weft_conf_node *r = weft_conf_root(c);
    weft_conf_err err = {{0}};
    int64_t v = 0;
    assert_int_equal(weft_conf_int(r, "a", 0, 100, &v, &err), 0);
    assert_int_equal(v, 42);
    assert_int_equal(weft_conf_int(r, "b", -10, 10, &v, &err), 0);
    assert_int_equal(v, -7);
    assert_int_equal(weft_conf_int(r, "c", 0, 10, &v, &err), 0);
    assert_int_equal(v, 3);
    assert_int_equal(weft_conf_int(r, "d", 0, 10, &v, &err), 0); /* quoted is fine */
    assert_int_equal(v, 10);
    assert_int_equal(weft_conf_int(r, "e", 0, 10, &v, &err), 0);
    assert_int_equal(v, 0);
    assert_int_equal(weft_conf_int(r, "f", 0, 10, &v, &err), 0);
    assert_int_equal(v, 7);
    assert_int_equal(weft_conf_int(r, "max", INT64_MIN, INT64_MAX, &v, &err), 0);
    assert_true(v == INT64_MAX);
    assert_int_equal(weft_conf_int(r, "min", INT64_MIN, INT64_MAX, &v, &err), 0);
    assert_true(v == INT64_MIN);
    v = 5;
    assert_int_equal(weft_conf_int(r, "absent", 0, 10, &v, &err), 0);
    assert_int_equal(v, 5);
    weft_conf_free(c);
}

static void test_int_getter_errors(void **state)
{
    (void)state;
    weft_conf *c = load_ok("a: 11\nb: 12abc\nc: 0x10\nd: 99999999999999999999\ne: ~\nf:\n"
                           "g: [1]\nh: 1.5\ni: ''\nj: ' 1'\nk: -9223372036854775809\n");
    const weft_conf_node *r = weft_conf_root(c);
    weft_conf_err err = {{0}};
    int64_t v = 99;
    static const struct {
        const char *key, *msg;
    } cases[] = {
        {"a", "t.yaml:1:4: a: expected an integer between 0 and 10"},
        {"b", "t.yaml:2:4: b: expected an integer between 0 and 10"},
        {"c", "t.yaml:3:4: c: expected an integer between 0 and 10"},
        {"d", "t.yaml:4:4: d: expected an integer between 0 and 10"},
        {"e", "t.yaml:5:4: e: expected an integer between 0 and 10"},
        {"f", "t.yaml:6:3: f: expected an integer between 0 and 10"},
        {"g", "t.yaml:7:4: g: expected an integer between 0 and 10"},
        {"h", "t.yaml:8:4: h: expected an integer between 0 and 10"},
        {"i", "t.yaml:9:4: i: expected an integer between 0 and 10"},
        {"j", "t.yaml:10:4: j: expected an integer between 0 and 10"},
    };
    for (size_t i = 0; i < WEFT_ARRAY_LEN(cases); i++) {
        assert_int_equal(weft_conf_int(r, cases[i].key, 0, 10, &v, &err), WEFT_ECONFIG);
        assert_string_equal(err.msg, cases[i].msg);
        assert_int_equal(v, 99);
    }
    assert_int_equal(weft_conf_int(r, "k", INT64_MIN, INT64_MAX, &v, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:11:4: k: expected an integer between "
                                 "-9223372036854775808 and 9223372036854775807");
    weft_conf_free(c);
}

static void test_bool_getter(void **state)
{
    (void)state;
    weft_conf *c = load_ok("t: [true, True, YES, on, \"yes\"]\nf: [false, FALSE, no, Off]\n"
                           "x: maybe\ny: 1\nz: ~\n");
    const weft_conf_node *r = weft_conf_root(c);
    weft_conf_err err = {{0}};
    /* probe each item by putting it in a one-key map */
    const char *truthy[] = {"true", "True", "YES", "on", "\"yes\""};
    const char *falsy[] = {"false", "FALSE", "no", "Off"};
    for (size_t i = 0; i < WEFT_ARRAY_LEN(truthy); i++) {
        char doc[64];
        snprintf(doc, sizeof doc, "v: %s\n", truthy[i]);
        weft_conf *d = load_ok(doc);
        bool b = false;
        assert_int_equal(weft_conf_bool(weft_conf_root(d), "v", &b, &err), 0);
        assert_true(b);
        weft_conf_free(d);
    }
    for (size_t i = 0; i < WEFT_ARRAY_LEN(falsy); i++) {
        char doc[64];
        snprintf(doc, sizeof doc, "v: %s\n", falsy[i]);
        weft_conf *d = load_ok(doc);
        bool b = true;
        assert_int_equal(weft_conf_bool(weft_conf_root(d), "v", &b, &err), 0);
        assert_false(b);
        weft_conf_free(d);
    }
    bool b = true;
    assert_int_equal(weft_conf_bool(r, "x", &b, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:3:4: x: expected true or false");
    assert_int_equal(weft_conf_bool(r, "y", &b, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:4:4: y: expected true or false");
    assert_int_equal(weft_conf_bool(r, "z", &b, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:5:4: z: expected true or false");
    assert_int_equal(weft_conf_bool(r, "t", &b, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:1:4: t: expected true or false");
    assert_true(b);
    assert_int_equal(weft_conf_bool(r, "absent", &b, &err), 0);
    assert_true(b);
    weft_conf_free(c);
}

static int64_t dur(const char *text)
{
    char doc[128];
    weft_conf_err err = {{0}};
    int64_t v = -12345;
    snprintf(doc, sizeof doc, "d: %s\n", text);
    weft_conf *c = load_ok(doc);
    int rc = weft_conf_duration_ms(weft_conf_root(c), "d", 0, INT64_MAX, &v, &err);
    weft_conf_free(c);
    if (rc != 0)
        fail_msg("duration %s: %s", text, err.msg);
    return v;
}

static void test_duration_values(void **state)
{
    (void)state;
    assert_int_equal(dur("250ms"), 250);
    assert_int_equal(dur("10s"), 10000);
    assert_int_equal(dur("2m"), 120000);
    assert_int_equal(dur("1h"), 3600000);
    assert_int_equal(dur("1500us"), 2);
    assert_int_equal(dur("1000us"), 1);
    assert_int_equal(dur("1us"), 1);
    assert_int_equal(dur("0"), 0);
    assert_int_equal(dur("0s"), 0);
    assert_int_equal(dur("100"), 100);
    assert_int_equal(dur("\"100\""), 100);
    assert_int_equal(dur("1.5s"), 1500);
    assert_int_equal(dur("0.25s"), 250);
    assert_int_equal(dur("1.5h"), 5400000);
    assert_int_equal(dur("0.5ms"), 1);
    assert_int_equal(dur("2.000000000001s"), 2000);
}

static void test_duration_errors(void **state)
{
    (void)state;
    static const char *bad[] = {"10 s", "-1s", "1.5", "10d", "s", ".5s", "5.s", "10S", "1e3ms",
                                "~", "\"\"", "[1s]", "10sec"};
    for (size_t i = 0; i < WEFT_ARRAY_LEN(bad); i++) {
        char doc[64];
        weft_conf_err err = {{0}};
        int64_t v = 77;
        snprintf(doc, sizeof doc, "x:\n  d: %s\n", bad[i]);
        weft_conf *c = load_ok(doc);
        const weft_conf_node *x = weft_conf_get(weft_conf_root(c), "x");
        assert_int_equal(weft_conf_duration_ms(x, "d", 0, 100000, &v, &err), WEFT_ECONFIG);
        assert_string_equal(err.msg, "t.yaml:2:6: x.d: expected a duration like 10s or 250ms");
        assert_int_equal(v, 77);
        weft_conf_free(c);
    }
}

static void test_duration_range_and_overflow(void **state)
{
    (void)state;
    weft_conf *c = load_ok("http:\n  idle_timeout: 2h\n  t2: 99999999999999999999s\n"
                           "  t3: 9999999999999999h\n  t4: 0ms\n  t5: 2562047788h\n"
                           "  t6: 2562047789h\n");
    const weft_conf_node *http = weft_conf_get(weft_conf_root(c), "http");
    weft_conf_err err = {{0}};
    int64_t v = 0;
    assert_int_equal(weft_conf_duration_ms(http, "idle_timeout", 1, 3600000, &v, &err),
                     WEFT_ECONFIG);
    assert_string_equal(err.msg,
                        "t.yaml:2:17: http.idle_timeout: expected a duration between 1ms and 1h");
    assert_int_equal(weft_conf_duration_ms(http, "t2", 1000, 60000, &v, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:3:7: http.t2: expected a duration between 1s and 1m");
    assert_int_equal(weft_conf_duration_ms(http, "t3", 0, INT64_MAX, &v, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:4:7: http.t3: expected a duration between 0ms and "
                                 "9223372036854775807ms");
    assert_int_equal(weft_conf_duration_ms(http, "t4", 1, 1500, &v, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:5:7: http.t4: expected a duration between 1ms and "
                                 "1500ms");
    /* largest whole number of hours that still fits in int64 microseconds */
    assert_int_equal(weft_conf_duration_ms(http, "t5", 0, INT64_MAX, &v, &err), 0);
    assert_true(v == (int64_t)2562047788 * 3600000);
    assert_int_equal(weft_conf_duration_ms(http, "t6", 0, INT64_MAX, &v, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:7:7: http.t6: expected a duration between 0ms and "
                                 "9223372036854775807ms");
    weft_conf_free(c);
}

static uint64_t size_of(const char *text)
{
    char doc[128];
    weft_conf_err err = {{0}};
    uint64_t v = 12345;
    snprintf(doc, sizeof doc, "s: %s\n", text);
    weft_conf *c = load_ok(doc);
    int rc = weft_conf_size(weft_conf_root(c), "s", 0, UINT64_MAX, &v, &err);
    weft_conf_free(c);
    if (rc != 0)
        fail_msg("size %s: %s", text, err.msg);
    return v;
}

static void test_size_values(void **state)
{
    (void)state;
    assert_int_equal(size_of("512"), 512);
    assert_int_equal(size_of("0"), 0);
    assert_int_equal(size_of("512b"), 512);
    assert_int_equal(size_of("64k"), 65536);
    assert_int_equal(size_of("64K"), 65536);
    assert_int_equal(size_of("64KiB"), 65536);
    assert_int_equal(size_of("64kb"), 65536);
    assert_int_equal(size_of("64KB"), 65536);
    assert_int_equal(size_of("8m"), 8u << 20);
    assert_int_equal(size_of("8MiB"), 8u << 20);
    assert_int_equal(size_of("8MB"), 8u << 20);
    assert_int_equal(size_of("1g"), 1u << 30);
    assert_int_equal(size_of("1GiB"), 1u << 30);
    assert_true(size_of("2t") == (uint64_t)2 << 40);
    assert_int_equal(size_of("'1k'"), 1024);
    assert_true(size_of("18446744073709551615") == UINT64_MAX);
}

static void test_size_errors(void **state)
{
    (void)state;
    weft_conf *c = load_ok("buf:\n  a: 64x\n  b: 1.5m\n  c: -1\n  d: 64 KiB\n  e: ~\n"
                           "  f: 2g\n  g: 17179869184g\n  h: 18446744073709551616\n  i: 100\n");
    const weft_conf_node *buf = weft_conf_get(weft_conf_root(c), "buf");
    weft_conf_err err = {{0}};
    uint64_t v = 3;
    const char *badkeys[] = {"a", "b", "c", "d", "e"};
    for (size_t i = 0; i < WEFT_ARRAY_LEN(badkeys); i++) {
        char expect[128];
        snprintf(expect, sizeof expect, "t.yaml:%zu:6: buf.%s: expected a size like 64KiB",
                 i + 2, badkeys[i]);
        assert_int_equal(weft_conf_size(buf, badkeys[i], 0, UINT64_MAX, &v, &err),
                         WEFT_ECONFIG);
        assert_string_equal(err.msg, expect);
    }
    assert_int_equal(weft_conf_size(buf, "f", 1024, 1u << 30, &v, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:7:6: buf.f: expected a size between 1KiB and 1GiB");
    assert_int_equal(weft_conf_size(buf, "g", 0, UINT64_MAX, &v, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg,
                        "t.yaml:8:6: buf.g: expected a size between 0 and 18446744073709551615");
    assert_int_equal(weft_conf_size(buf, "h", 0, UINT64_MAX, &v, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg,
                        "t.yaml:9:6: buf.h: expected a size between 0 and 18446744073709551615");
    assert_int_equal(weft_conf_size(buf, "i", 512, 1000, &v, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:10:6: buf.i: expected a size between 512 and 1000");
    assert_int_equal(v, 3);
    weft_conf_free(c);
}

static void test_enum_getter(void **state)
{
    (void)state;
    static const char *const lb[] = {"round_robin", "least_conn", "random", NULL};
    weft_conf *c = load_ok("lb: least_conn\nbad: Random\nq: \"random\"\nn: ~\n");
    const weft_conf_node *r = weft_conf_root(c);
    weft_conf_err err = {{0}};
    int idx = -1;
    assert_int_equal(weft_conf_enum(r, "lb", lb, &idx, &err), 0);
    assert_int_equal(idx, 1);
    assert_int_equal(weft_conf_enum(r, "q", lb, &idx, &err), 0);
    assert_int_equal(idx, 2);
    idx = 9;
    assert_int_equal(weft_conf_enum(r, "absent", lb, &idx, &err), 0);
    assert_int_equal(idx, 9);
    assert_int_equal(weft_conf_enum(r, "bad", lb, &idx, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg,
                        "t.yaml:2:6: bad: expected one of: round_robin, least_conn, random");
    assert_int_equal(weft_conf_enum(r, "n", lb, &idx, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:4:4: n: expected one of: round_robin, least_conn, random");
    assert_int_equal(idx, 9);
    weft_conf_free(c);
}

static void test_getter_on_non_mapping(void **state)
{
    (void)state;
    weft_conf *c = load_ok("http: 80\ntls:\nlist: [a]\n");
    const weft_conf_node *r = weft_conf_root(c);
    weft_conf_err err = {{0}};
    int64_t v = 1;
    assert_int_equal(weft_conf_int(weft_conf_get(r, "http"), "port", 0, 10, &v, &err),
                     WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:1:7: http: expected a mapping");
    assert_int_equal(weft_conf_int(weft_conf_get(r, "list"), "port", 0, 10, &v, &err),
                     WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:3:7: list: expected a mapping");
    /* an empty section (`tls:` with everything commented out) reads as empty */
    const weft_conf_node *tls = weft_conf_get(r, "tls");
    assert_int_equal(weft_conf_int(tls, "port", 0, 10, &v, &err), 0);
    assert_int_equal(v, 1);
    assert_int_equal(weft_conf_check_unused(tls, &err), 0);
    weft_conf_free(c);
}

static void test_sequence_item_paths_in_errors(void **state)
{
    (void)state;
    weft_conf *c = load_ok("routes:\n"
                           "  - path: /a\n"
                           "    timeout: 1s\n"
                           "  - path: /b\n"
                           "  - path: [x]\n"
                           "    nested:\n"
                           "      - {deep: {v: oops}}\n");
    const weft_conf_node *routes = weft_conf_get(weft_conf_root(c), "routes");
    weft_conf_err err = {{0}};
    const char *p = NULL;
    assert_int_equal(weft_conf_string(weft_conf_seq_at(routes, 0), "path", &p, &err), 0);
    assert_string_equal(p, "/a");
    const weft_conf_node *r2 = weft_conf_seq_at(routes, 2);
    assert_int_equal(weft_conf_string(r2, "path", &p, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:5:11: routes[2].path: expected a string");
    const weft_conf_node *deep =
        weft_conf_get(weft_conf_seq_at(weft_conf_get(r2, "nested"), 0), "deep");
    bool b;
    assert_int_equal(weft_conf_bool(deep, "v", &b, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg,
                        "t.yaml:7:20: routes[2].nested[0].deep.v: expected true or false");
    weft_conf_free(c);
}

static void test_flow_mapping_locations(void **state)
{
    (void)state;
    weft_conf *c = load_ok("limits: {rps: 100, burst: lots}\n");
    const weft_conf_node *lim = weft_conf_get(weft_conf_root(c), "limits");
    weft_conf_err err = {{0}};
    int64_t v = 0;
    assert_int_equal(weft_conf_int(lim, "rps", 1, 1000, &v, &err), 0);
    assert_int_equal(v, 100);
    assert_int_equal(weft_conf_int(lim, "burst", 1, 1000, &v, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:1:27: limits.burst: expected an integer between 1 "
                                 "and 1000");
    weft_conf_free(c);
}

static void test_getters_with_null_err(void **state)
{
    (void)state;
    weft_conf *c = load_ok("a: x\n");
    int64_t v = 0;
    assert_int_equal(weft_conf_int(weft_conf_root(c), "a", 0, 1, &v, NULL), WEFT_ECONFIG);
    assert_int_equal(weft_conf_check_unused(weft_conf_root(c), NULL), 0);
    weft_conf_free(c);
}

/* ---- unused keys ------------------------------------------------------- */

static void test_unused_top_level_points_at_key(void **state)
{
    (void)state;
    weft_conf *c = load_ok("name: gw\n  # comment\nnmae: typo\n");
    const weft_conf_node *r = weft_conf_root(c);
    weft_conf_err err = {{0}};
    const char *s;
    assert_int_equal(weft_conf_string(r, "name", &s, &err), 0);
    assert_int_equal(weft_conf_check_unused(r, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:3:1: nmae: unknown key");
    weft_conf_free(c);
}

static void test_unused_nested_fetched_map(void **state)
{
    (void)state;
    weft_conf *c = load_ok("http:\n  port: 80\n  idel_timeout: 5s\n");
    const weft_conf_node *r = weft_conf_root(c);
    weft_conf_err err = {{0}};
    int64_t port;
    assert_int_equal(weft_conf_int(weft_conf_get(r, "http"), "port", 1, 65535, &port, &err), 0);
    assert_int_equal(weft_conf_check_unused(r, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:3:3: http.idel_timeout: unknown key");
    weft_conf_free(c);
}

static void test_unused_unfetched_map_reported_at_its_key(void **state)
{
    (void)state;
    weft_conf *c = load_ok("name: x\ntls:\n  cert: a.pem\n");
    const weft_conf_node *r = weft_conf_root(c);
    weft_conf_err err = {{0}};
    assert_non_null(weft_conf_get(r, "name"));
    assert_int_equal(weft_conf_check_unused(r, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:2:1: tls: unknown key");
    weft_conf_free(c);
}

static void test_unused_in_sequence_of_maps(void **state)
{
    (void)state;
    weft_conf *c = load_ok("routes:\n  - path: /a\n  - path: /b\n    pth: /c\n");
    const weft_conf_node *r = weft_conf_root(c);
    const weft_conf_node *routes = weft_conf_get(r, "routes");
    weft_conf_err err = {{0}};
    for (size_t i = 0; i < weft_conf_seq_len(routes); i++) {
        const char *p;
        assert_int_equal(weft_conf_string(weft_conf_seq_at(routes, i), "path", &p, &err), 0);
    }
    assert_int_equal(weft_conf_check_unused(r, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:4:5: routes[1].pth: unknown key");
    weft_conf_free(c);
}

static void test_unused_nested_sequences(void **state)
{
    (void)state;
    weft_conf *c = load_ok("m:\n  - [ {a: 1}, {b: 2} ]\n");
    const weft_conf_node *r = weft_conf_root(c);
    weft_conf_err err = {{0}};
    const weft_conf_node *inner = weft_conf_seq_at(weft_conf_get(r, "m"), 0);
    assert_non_null(weft_conf_get(weft_conf_seq_at(inner, 0), "a"));
    assert_int_equal(weft_conf_check_unused(r, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:2:16: m[0][1].b: unknown key");
    weft_conf_free(c);
}

static void test_unused_all_used_and_wrong_type_counts_as_read(void **state)
{
    (void)state;
    weft_conf *c = load_ok("a: 1\nb: x\nc: {d: [1, 2]}\n");
    const weft_conf_node *r = weft_conf_root(c);
    weft_conf_err err = {{0}};
    int64_t v;
    assert_int_equal(weft_conf_int(r, "a", 0, 9, &v, &err), 0);
    assert_int_equal(weft_conf_int(r, "b", 0, 9, &v, &err), WEFT_ECONFIG);
    assert_non_null(weft_conf_get(weft_conf_get(r, "c"), "d"));
    assert_int_equal(weft_conf_check_unused(r, &err), 0);
    weft_conf_free(c);
}

static void test_unused_subtree_only(void **state)
{
    (void)state;
    /* checking one section leaves its siblings to their own owners */
    weft_conf *c = load_ok("a:\n  x: 1\nb:\n  y: 2\n  extra: 3\n");
    const weft_conf_node *r = weft_conf_root(c);
    weft_conf_err err = {{0}};
    const weft_conf_node *a = weft_conf_get(r, "a");
    assert_non_null(weft_conf_get(a, "x"));
    assert_int_equal(weft_conf_check_unused(a, &err), 0);
    const weft_conf_node *b = weft_conf_get(r, "b");
    assert_non_null(weft_conf_get(b, "y"));
    assert_int_equal(weft_conf_check_unused(b, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:5:3: b.extra: unknown key");
    weft_conf_free(c);
}

/* ---- caller errors ----------------------------------------------------- */

static void test_errorf_at_value_node(void **state)
{
    (void)state;
    weft_conf *c = load_ok("upstream:\n  host: example.com\n  port: 0\n");
    const weft_conf_node *up = weft_conf_get(weft_conf_root(c), "upstream");
    const weft_conf_node *port = weft_conf_get(up, "port");
    weft_conf_err err = {{0}};
    assert_int_equal(weft_conf_errorf(&err, port, NULL, "port %d is reserved", 0),
                     WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:3:9: upstream.port: port 0 is reserved");
    assert_int_equal(weft_conf_errorf(&err, port, "port", "must be set"), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:3:9: upstream.port: must be set");
    weft_conf_free(c);
}

static void test_errorf_map_and_key(void **state)
{
    (void)state;
    weft_conf *c = load_ok("listeners:\n  - host: a\n    port: 1\n");
    const weft_conf_node *l0 = weft_conf_seq_at(weft_conf_get(weft_conf_root(c), "listeners"), 0);
    weft_conf_err err = {{0}};
    /* key present: points at its value */
    weft_conf_errorf(&err, l0, "port", "conflicts with %s", "listeners[3]");
    assert_string_equal(err.msg, "t.yaml:3:11: listeners[0].port: conflicts with listeners[3]");
    /* key absent: points at the mapping */
    weft_conf_errorf(&err, l0, "tls", "is required");
    assert_string_equal(err.msg, "t.yaml:2:5: listeners[0].tls: is required");
    /* root and no key */
    weft_conf_errorf(&err, weft_conf_root(c), NULL, "no services defined");
    assert_string_equal(err.msg, "t.yaml:1:1: no services defined");
    weft_conf_free(c);
}

static void test_errorf_other_cases(void **state)
{
    (void)state;
    weft_conf_err err = {{0}};
    assert_int_equal(weft_conf_errorf(&err, NULL, "routes", "need at least %d", 1),
                     WEFT_ECONFIG);
    assert_string_equal(err.msg, "routes: need at least 1");
    assert_int_equal(weft_conf_errorf(NULL, NULL, NULL, "x"), WEFT_ECONFIG);
    weft_conf *c = load_ok("a: [1, 2]\n");
    const weft_conf_node *item = weft_conf_seq_at(weft_conf_get(weft_conf_root(c), "a"), 1);
    weft_conf_errorf(&err, item, NULL, "bad item");
    assert_string_equal(err.msg, "t.yaml:1:8: a[1]: bad item");
    weft_conf_errorf(&err, item, "a[1] (port)", "bad item");
    assert_string_equal(err.msg, "t.yaml:1:8: a[1] (port): bad item");
    weft_conf_free(c);
}

static void test_errorf_truncates_long_message(void **state)
{
    (void)state;
    weft_conf_err err;
    char big[1024];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    weft_conf_errorf(&err, NULL, "k", "%s", big);
    assert_int_equal(strlen(err.msg), sizeof err.msg - 1);
    assert_memory_equal(err.msg, "k: xxx", 6);
}

static void test_load_string_name_and_nul_input(void **state)
{
    (void)state;
    weft_conf *c = NULL;
    weft_conf_err err = {{0}};
    /* len is authoritative: bytes past it are ignored */
    const char doc[] = "a: 1\nb: [";
    assert_int_equal(weft_conf_load_string("mem", doc, 5, &c, &err), 0);
    assert_string_equal(weft_conf_file(weft_conf_root(c)), "mem");
    assert_int_equal(weft_conf_map_len(weft_conf_root(c)), 1);
    weft_conf_free(c);
    assert_int_equal(weft_conf_load_string(NULL, "x", 1, &c, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "<string>:1:1: the top level must be a mapping");
    assert_int_equal(weft_conf_load_string("mem", NULL, 0, &c, &err), 0);
    weft_conf_free(c);
}

static void test_duration_below_a_microsecond_is_not_zero(void **state)
{
    (void)state;
    /* a non-zero duration never becomes 0 (often read as "off"), even when
     * it is below the microsecond the arithmetic works in */
    assert_int_equal(dur("0.5us"), 1);
    assert_int_equal(dur("0.0001ms"), 1);
    assert_int_equal(dur("0.0000000001s"), 1);
    assert_int_equal(dur("0.0000000000h"), 0);
    assert_int_equal(dur("0.000us"), 0);
}

static void test_text_of_a_sequence_item(void **state)
{
    (void)state;
    /* weft_conf_scalar returns a null's spelling; weft_conf_text refuses it */
    weft_conf *c = load_ok("l:\n  - a\n  - ~\n  - null\n  - \"~\"\n  - ''\n  - [x]\n  -\n");
    const weft_conf_node *l = weft_conf_get(weft_conf_root(c), "l");
    weft_conf_err err = {{0}};
    const char *s = "unset";
    assert_int_equal(weft_conf_text(weft_conf_seq_at(l, 0), &s, &err), 0);
    assert_string_equal(s, "a");
    assert_string_equal(weft_conf_scalar(weft_conf_seq_at(l, 1)), "~");
    s = "unset";
    assert_int_equal(weft_conf_text(weft_conf_seq_at(l, 1), &s, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:3:5: l[1]: expected a string");
    assert_string_equal(s, "unset");
    assert_int_equal(weft_conf_text(weft_conf_seq_at(l, 2), &s, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:4:5: l[2]: expected a string");
    /* quoted: a string, even "~" or empty */
    assert_int_equal(weft_conf_text(weft_conf_seq_at(l, 3), &s, &err), 0);
    assert_string_equal(s, "~");
    assert_int_equal(weft_conf_text(weft_conf_seq_at(l, 4), &s, &err), 0);
    assert_string_equal(s, "");
    assert_int_equal(weft_conf_text(weft_conf_seq_at(l, 5), &s, &err), WEFT_ECONFIG);
    assert_string_equal(err.msg, "t.yaml:7:5: l[5]: expected a string");
    assert_int_equal(weft_conf_text(weft_conf_seq_at(l, 6), &s, &err), WEFT_ECONFIG);
    assert_int_equal(weft_conf_text(NULL, &s, &err), WEFT_ECONFIG);
    weft_conf_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_string_is_empty_map),
        cmocka_unit_test(test_source_text_kept),
        cmocka_unit_test(test_comments_and_bare_document_are_empty),
        cmocka_unit_test(test_scalars_and_locations),
        cmocka_unit_test(test_map_order_and_map_at),
        cmocka_unit_test(test_sequences),
        cmocka_unit_test(test_null_safety),
        cmocka_unit_test(test_block_and_folded_scalars),
        cmocka_unit_test(test_unicode_columns),
        cmocka_unit_test(test_syntax_error_mapping_values),
        cmocka_unit_test(test_syntax_error_bad_indent),
        cmocka_unit_test(test_syntax_error_unclosed_flow),
        cmocka_unit_test(test_syntax_error_unclosed_quote),
        cmocka_unit_test(test_syntax_error_tab),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_root_must_be_mapping),
        cmocka_unit_test(test_duplicate_key_top),
        cmocka_unit_test(test_duplicate_key_nested),
        cmocka_unit_test(test_duplicate_key_in_sequence_item),
        cmocka_unit_test(test_duplicate_key_quoted_vs_plain),
        cmocka_unit_test(test_duplicate_key_large_map),
        cmocka_unit_test(test_non_scalar_key),
        cmocka_unit_test(test_alias_rejected),
        cmocka_unit_test(test_anchor_rejected),
        cmocka_unit_test(test_multiple_documents_rejected),
        cmocka_unit_test(test_tags),
        cmocka_unit_test(test_nul_byte_rejected),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_deep_sequence_nesting_no_leak),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_load_file_ok_and_errors_name_file),
        cmocka_unit_test(test_load_file_syntax_error),
        cmocka_unit_test(test_load_file_missing_and_dir),
        cmocka_unit_test(test_load_file_empty),
        cmocka_unit_test(test_string_getter),
        cmocka_unit_test(test_int_getter_values),
        cmocka_unit_test(test_int_getter_errors),
        cmocka_unit_test(test_bool_getter),
        cmocka_unit_test(test_duration_values),
        cmocka_unit_test(test_duration_errors),
        cmocka_unit_test(test_duration_range_and_overflow),
        cmocka_unit_test(test_size_values),
        cmocka_unit_test(test_size_errors),
        cmocka_unit_test(test_enum_getter),
        cmocka_unit_test(test_getter_on_non_mapping),
        cmocka_unit_test(test_sequence_item_paths_in_errors),
        cmocka_unit_test(test_flow_mapping_locations),
        cmocka_unit_test(test_getters_with_null_err),
        cmocka_unit_test(test_unused_top_level_points_at_key),
        cmocka_unit_test(test_unused_nested_fetched_map),
        cmocka_unit_test(test_unused_unfetched_map_reported_at_its_key),
        cmocka_unit_test(test_unused_in_sequence_of_maps),
        cmocka_unit_test(test_unused_nested_sequences),
        cmocka_unit_test(test_unused_all_used_and_wrong_type_counts_as_read),
        cmocka_unit_test(test_unused_subtree_only),
        cmocka_unit_test(test_errorf_at_value_node),
        cmocka_unit_test(test_errorf_map_and_key),
        cmocka_unit_test(test_errorf_other_cases),
        cmocka_unit_test(test_errorf_truncates_long_message),
        cmocka_unit_test(test_load_string_name_and_nul_input),
        cmocka_unit_test(test_duration_below_a_microsecond_is_not_zero),
        cmocka_unit_test(test_text_of_a_sequence_item),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
