/*
 * test_codec.c — unit tests for the HTTP/1.1 head parser and chunked decoder.
 *
 * Most cases are table rows; each row is registered as its own cmocka test
 * under the row's name, and each is run twice: in one call, and fed one
 * byte at a time through a freshly allocated buffer of exactly the bytes
 * available (so ASan catches any read past len and any pointer kept across
 * calls). Both runs must give the row's exact return value and status.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http/codec.h"

#define S(lit) lit, sizeof(lit) - 1
#define FULL 1000000 /* expected rc: the whole input was consumed */

static const weft_http_limits lim_rl16 = {16, 32768, 100};
static const weft_http_limits lim_head64 = {8192, 64, 100};
static const weft_http_limits lim_hdr2 = {8192, 32768, 2};
static const weft_http_limits lim_hdr0 = {8192, 32768, 0};

/* ------------------------------------------------------------------ */
/* request table */

typedef struct req_case {
    const char *name;
    const char *in;
    size_t n;
    int rc;     /* FULL, a byte count, WEFT_EAGAIN or WEFT_EPROTO */
    int status; /* p->status expected (0 unless WEFT_EPROTO) */
    const weft_http_limits *lim;
} req_case;

#define H11 "Host: a\r\n"

static const req_case req_cases[] = {
    /* well-formed */
    {"req_simple_get", S("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"), FULL, 0, NULL},
    {"req_http10_no_host", S("GET / HTTP/1.0\r\n\r\n"), FULL, 0, NULL},
    {"req_http12_as_11", S("GET / HTTP/1.2\r\n" H11 "\r\n"), FULL, 0, NULL},
    {"req_http19_as_11", S("GET / HTTP/1.9\r\n" H11 "\r\n"), FULL, 0, NULL},
    {"req_leading_crlf_1", S("\r\nGET / HTTP/1.1\r\n" H11 "\r\n"), FULL, 0, NULL},
    {"req_leading_crlf_4", S("\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n" H11 "\r\n"), FULL, 0, NULL},
    {"req_post_body_follows", S("POST /x HTTP/1.1\r\n" H11 "Content-Length: 3\r\n\r\nabc"), 48, 0, NULL},
    {"req_method_put", S("PUT /x HTTP/1.1\r\n" H11 "\r\n"), FULL, 0, NULL},
    {"req_method_delete", S("DELETE /x HTTP/1.1\r\n" H11 "\r\n"), FULL, 0, NULL},
    {"req_method_patch", S("PATCH /x HTTP/1.1\r\n" H11 "\r\n"), FULL, 0, NULL},
    {"req_method_trace", S("TRACE /x HTTP/1.1\r\n" H11 "\r\n"), FULL, 0, NULL},
    {"req_method_head", S("HEAD /x HTTP/1.1\r\n" H11 "\r\n"), FULL, 0, NULL},
    {"req_options_star", S("OPTIONS * HTTP/1.1\r\n" H11 "\r\n"), FULL, 0, NULL},
    {"req_absolute_http", S("GET http://h:8/p?q HTTP/1.1\r\n" H11 "\r\n"), FULL, 0, NULL},
    {"req_absolute_https_upper", S("GET HTTPS://h/ HTTP/1.1\r\n" H11 "\r\n"), FULL, 0, NULL},
    {"req_absolute_no_path", S("GET http://h HTTP/1.1\r\n" H11 "\r\n"), FULL, 0, NULL},
    {"req_query_only", S("GET /?a=1&b=2 HTTP/1.1\r\n" H11 "\r\n"), FULL, 0, NULL},
    {"req_value_obs_text", S("GET / HTTP/1.1\r\n" H11 "X: \xff\x80z\r\n\r\n"), FULL, 0, NULL},
    {"req_value_inner_htab", S("GET / HTTP/1.1\r\n" H11 "X: a\tb\r\n\r\n"), FULL, 0, NULL},
    {"req_value_empty", S("GET / HTTP/1.1\r\n" H11 "X:\r\n\r\n"), FULL, 0, NULL},
    {"req_value_only_ows", S("GET / HTTP/1.1\r\n" H11 "X: \t \r\n\r\n"), FULL, 0, NULL},
    {"req_host_empty", S("GET / HTTP/1.1\r\nHost:\r\n\r\n"), FULL, 0, NULL},
    {"req_host_ipv6", S("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"), FULL, 0, NULL},
    {"req_cl_ok", S("POST / HTTP/1.1\r\n" H11 "Content-Length: 10\r\n\r\n"), FULL, 0, NULL},
    {"req_cl_leading_zeros", S("POST / HTTP/1.1\r\n" H11 "Content-Length: 0000000000000000000000010\r\n\r\n"), FULL, 0, NULL},
    {"req_cl_2p53", S("POST / HTTP/1.1\r\n" H11 "Content-Length: 9007199254740992\r\n\r\n"), FULL, 0, NULL},
    {"req_cl_dup_same", S("POST / HTTP/1.1\r\n" H11 "Content-Length: 5\r\nContent-Length: 5\r\n\r\n"), FULL, 0, NULL},
    {"req_cl_list_same", S("POST / HTTP/1.1\r\n" H11 "Content-Length: 5, 5,5\r\n\r\n"), FULL, 0, NULL},
    {"req_te_chunked", S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked\r\n\r\n"), FULL, 0, NULL},
    {"req_te_chunked_upper", S("POST / HTTP/1.1\r\n" H11 "transfer-encoding: CHUNKED\r\n\r\n"), FULL, 0, NULL},
    {"req_expect_continue", S("POST / HTTP/1.1\r\n" H11 "Expect: 100-Continue\r\nContent-Length: 1\r\n\r\n"), FULL, 0, NULL},
    {"req_pipelined_first_only", S("GET /a HTTP/1.1\r\n" H11 "\r\nGET /b HTTP/1.1\r\n" H11 "\r\n"), 28, 0, NULL},
    {"req_rl_over_limit", S("GET /0123456 HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 414, &lim_rl16},
    {"req_rl_at_limit_ok", S("GET /01 HTTP/1.1\r\n" H11 "\r\n"), FULL, 0, &lim_rl16},
    {"req_head_exact_limit_ok", S("GET / HTTP/1.1\r\nHost: a\r\nX: 01234567890123456789012345678901\r\n\r\n"), FULL, 0, &lim_head64},
    {"req_headers_at_limit_ok", S("GET / HTTP/1.1\r\n" H11 "X: 1\r\n\r\n"), FULL, 0, &lim_hdr2},
    /* incomplete */
    {"req_empty_input", S(""), WEFT_EAGAIN, 0, NULL},
    {"req_partial_line", S("GET / HT"), WEFT_EAGAIN, 0, NULL},
    {"req_pending_cr", S("GET / HTTP/1.1\r"), WEFT_EAGAIN, 0, NULL},
    {"req_no_blank_line", S("GET / HTTP/1.1\r\n" H11), WEFT_EAGAIN, 0, NULL},
    {"req_only_crlfs", S("\r\n\r\n\r\n\r\n"), WEFT_EAGAIN, 0, NULL},
    {"req_blank_pending_lf", S("GET / HTTP/1.1\r\n" H11 "\r"), WEFT_EAGAIN, 0, NULL},
    /* line endings and characters */
    {"req_leading_crlf_5", S("\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_leading_bare_lf", S("\nGET / HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_bare_lf_request_line", S("GET / HTTP/1.1\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_bare_lf_header", S("GET / HTTP/1.1\r\nHost: a\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_bare_lf_blank", S("GET / HTTP/1.1\r\n" H11 "\n"), WEFT_EPROTO, 400, NULL},
    {"req_bare_cr_header", S("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_bare_cr_request_line", S("GET /\r HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_cr_cr_lf", S("GET / HTTP/1.1\r\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_nul_request_line_early", S("GET /\0"), WEFT_EPROTO, 400, NULL},
    {"req_del_request_line", S("GET /\x7f HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_obs_text_target", S("GET /\x80 HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_htab_request_line", S("GET\t/ HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_nul_header_value", S("GET / HTTP/1.1\r\n" H11 "X: a\0b\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_nul_header_early", S("GET / HTTP/1.1\r\nX: \0"), WEFT_EPROTO, 400, NULL},
    {"req_del_header_value", S("GET / HTTP/1.1\r\n" H11 "X: a\x7f\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_ctl_header_value", S("GET / HTTP/1.1\r\n" H11 "X: a\x01\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_esc_header_value", S("GET / HTTP/1.1\r\n" H11 "X: a\x1b[0m\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    /* request line */
    {"req_http09", S("GET /\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_lowercase_version", S("GET / http/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_two_spaces_after_method", S("GET  / HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_two_spaces_before_version", S("GET /  HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_trailing_space", S("GET / HTTP/1.1 \r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_space_in_target", S("GET /a b HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_leading_space", S(" GET / HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_no_target", S("GET HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_only_method", S("GET\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_version_two_digit", S("GET / HTTP/1.10\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_version_no_dot", S("GET / HTTP/11\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_version_letter", S("GET / HTTP/1.x\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_http20", S("GET / HTTP/2.0\r\n" H11 "\r\n"), WEFT_EPROTO, 505, NULL},
    {"req_http09_version", S("GET / HTTP/0.9\r\n" H11 "\r\n"), WEFT_EPROTO, 505, NULL},
    {"req_unknown_method", S("FOO / HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 501, NULL},
    {"req_lowercase_method", S("get / HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 501, NULL},
    {"req_connect", S("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n"), WEFT_EPROTO, 501, NULL},
    {"req_method_bad_char", S("GE(T / HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_status_line_as_request", S("HTTP/1.1 200 OK\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_unknown_method_early", S("FOO / HTTP/1.1\r\n"), WEFT_EPROTO, 501, NULL},
    /* targets */
    {"req_fragment", S("GET /a#b HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_star_with_get", S("GET * HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_star_suffix", S("OPTIONS *x HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_relative_target", S("GET a/b HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_authority_form_get", S("GET h:80 HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_absolute_ftp", S("GET ftp://h/ HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_absolute_empty_authority", S("GET http:///x HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_absolute_userinfo", S("GET http://u@h/ HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_absolute_scheme_only", S("GET http: HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 400, NULL},
    /* field lines */
    {"req_obs_fold", S("GET / HTTP/1.1\r\n" H11 "X: a\r\n b\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_obs_fold_tab", S("GET / HTTP/1.1\r\n" H11 "X: a\r\n\tb\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_ws_before_first_field", S("GET / HTTP/1.1\r\n Host: a\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_space_before_colon", S("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_tab_before_colon", S("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_empty_name", S("GET / HTTP/1.1\r\n" H11 ": a\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_no_colon", S("GET / HTTP/1.1\r\n" H11 "NoColon\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_name_bad_char", S("GET / HTTP/1.1\r\n" H11 "X@Y: a\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_name_obs_text", S("GET / HTTP/1.1\r\n" H11 "X\xe9: a\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_name_space_inside", S("GET / HTTP/1.1\r\n" H11 "X Y: a\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    /* Content-Length */
    {"req_cl_plus", S("POST / HTTP/1.1\r\n" H11 "Content-Length: +5\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_cl_minus", S("POST / HTTP/1.1\r\n" H11 "Content-Length: -1\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_cl_hex", S("POST / HTTP/1.1\r\n" H11 "Content-Length: 0x10\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_cl_space_inside", S("POST / HTTP/1.1\r\n" H11 "Content-Length: 1 2\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_cl_empty", S("POST / HTTP/1.1\r\n" H11 "Content-Length:\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_cl_2p53_plus1", S("POST / HTTP/1.1\r\n" H11 "Content-Length: 9007199254740993\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_cl_overflow", S("POST / HTTP/1.1\r\n" H11 "Content-Length: 99999999999999999999999\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_cl_differ", S("POST / HTTP/1.1\r\n" H11 "Content-Length: 5\r\nContent-Length: 6\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_cl_list_differ", S("POST / HTTP/1.1\r\n" H11 "Content-Length: 5, 6\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_cl_list_trailing_comma", S("POST / HTTP/1.1\r\n" H11 "Content-Length: 5,\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_cl_decimal_point", S("POST / HTTP/1.1\r\n" H11 "Content-Length: 5.0\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    /* Transfer-Encoding */
    {"req_te_chunked_twice_list", S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked, chunked\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_te_chunked_twice_headers", S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_te_gzip", S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: gzip\r\n\r\n"), WEFT_EPROTO, 501, NULL},
    {"req_te_identity", S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: identity\r\n\r\n"), WEFT_EPROTO, 501, NULL},
    {"req_te_gzip_chunked", S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: gzip, chunked\r\n\r\n"), WEFT_EPROTO, 501, NULL},
    {"req_te_unknown_token", S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: xchunked\r\n\r\n"), WEFT_EPROTO, 501, NULL},
    {"req_te_empty", S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding:\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_te_only_commas", S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: , ,\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_te_and_cl", S("POST / HTTP/1.1\r\n" H11 "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_te_http10", S("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_te_chunked_param", S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked;x=1\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_te_space_inside", S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chu nked\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_te_quoted", S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: \"chunked\"\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    /* Host */
    {"req_missing_host", S("GET / HTTP/1.1\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_missing_host_absolute", S("GET http://h/ HTTP/1.1\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_duplicate_host", S("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_host_space_inside", S("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_host_slash", S("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    {"req_host_userinfo", S("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"), WEFT_EPROTO, 400, NULL},
    /* Expect */
    {"req_expect_other", S("POST / HTTP/1.1\r\n" H11 "Expect: 200-ok\r\n\r\n"), WEFT_EPROTO, 417, NULL},
    {"req_expect_empty", S("POST / HTTP/1.1\r\n" H11 "Expect:\r\n\r\n"), WEFT_EPROTO, 417, NULL},
    {"req_expect_list", S("POST / HTTP/1.1\r\n" H11 "Expect: 100-continue, x\r\n\r\n"), WEFT_EPROTO, 417, NULL},
    /* limits */
    {"req_rl_too_long_early", S("GET /0123456789abcdef"), WEFT_EPROTO, 414, &lim_rl16},
    {"req_rl_one_over", S("GET /012 HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 414, &lim_rl16},
    {"req_rl_limit_then_cr_pending", S("GET /01 HTTP/1.1\r"), WEFT_EAGAIN, 0, &lim_rl16},
    {"req_head_one_over", S("GET / HTTP/1.1\r\nHost: a\r\nX: 012345678901234567890123456789012\r\n\r\n"), WEFT_EPROTO, 431, &lim_head64},
    {"req_head_too_large_early", S("GET / HTTP/1.1\r\nHost: a\r\nX: 0123456789012345678901234567890123456789"), WEFT_EPROTO, 431, &lim_head64},
    {"req_head_leading_crlf_counted", S("\r\nGET / HTTP/1.1\r\nHost: a\r\nX: 01234567890123456789012345678901\r\n\r\n"), WEFT_EPROTO, 431, &lim_head64},
    {"req_too_many_headers", S("GET / HTTP/1.1\r\n" H11 "X: 1\r\nY: 2\r\n\r\n"), WEFT_EPROTO, 431, &lim_hdr2},
    {"req_too_many_headers_early", S("GET / HTTP/1.1\r\n" H11 "X: 1\r\nY: 2\r\n"), WEFT_EPROTO, 431, &lim_hdr2},
    {"req_max_headers_zero", S("GET / HTTP/1.1\r\n" H11 "\r\n"), WEFT_EPROTO, 431, &lim_hdr0},
    {"req_max_headers_zero_http10", S("GET / HTTP/1.0\r\n\r\n"), FULL, 0, &lim_hdr0},
};

/* Outcome of one parse: rc, status, and the head (copied, buffer-relative). */
typedef struct outcome {
    int rc;
    int status;
    const char *error;
    uint32_t scanned;
} outcome;

static int parse_any(weft_http_parser *p, const weft_http_limits *lim, const char *b,
                     size_t n, bool resp, int req_method, weft_http_head *h)
{
    return resp ? weft_http_parse_response(p, lim, b, n, req_method, h)
                : weft_http_parse_request(p, lim, b, n, h);
}

static void str_check_in(weft_str s, const char *base, size_t n)
{
    /* Every non-empty slice points into the caller's buffer (or is "/"). */
    if (s.n == 0 || (s.n == 1 && s.p[0] == '/' && (s.p < base || s.p >= base + n)))
        return;
    assert_true(s.p >= base && s.p + s.n <= base + n);
}

static void assert_str_same(weft_str a, weft_str b)
{
    if (!weft_str_eq(a, b)) {
        print_error("slices differ: '%.*s' vs '%.*s'\n", (int)a.n, a.p ? a.p : "",
                    (int)b.n, b.p ? b.p : "");
        fail();
    }
}

static void assert_heads_equal(const weft_http_head *a, const weft_http_head *b, bool resp)
{
    assert_int_equal(a->version_minor, b->version_minor);
    assert_int_equal(a->nheaders, b->nheaders);
    for (uint32_t i = 0; i < a->nheaders; i++) {
        assert_str_same(a->headers[i].name, b->headers[i].name);
        assert_str_same(a->headers[i].value, b->headers[i].value);
    }
    assert_int_equal(a->body_kind, b->body_kind);
    assert_int_equal(a->content_length, b->content_length);
    assert_int_equal(a->keep_alive, b->keep_alive);
    assert_int_equal(a->expect_continue, b->expect_continue);
    assert_int_equal(a->upgrade, b->upgrade);
    if (resp) {
        assert_int_equal(a->status, b->status);
        assert_str_same(a->reason, b->reason);
    } else {
        assert_int_equal(a->method, b->method);
        assert_str_same(a->method_str, b->method_str);
        assert_str_same(a->target, b->target);
        assert_str_same(a->path, b->path);
        assert_str_same(a->query, b->query);
        assert_str_same(a->authority, b->authority);
        assert_str_same(a->host, b->host);
    }
}

/*
 * Run one case in one call and byte by byte (a fresh exact-size copy per
 * call) and check both against the expectation.
 */
static void run_head_case(const char *name, const char *in, size_t n, int want_rc,
                          int want_status, const weft_http_limits *lim, bool resp,
                          int req_method)
{
    weft_http_parser p;
    static weft_http_head h1, h2;
    if (want_rc == FULL)
        want_rc = (int)n;

    /* one shot, from an exact-size heap copy */
    char *buf = malloc(n ? n : 1);
    assert_non_null(buf);
    memcpy(buf, in, n);
    weft_http_parser_init(&p);
    int rc = parse_any(&p, lim, buf, n, resp, req_method, &h1);
    if (rc != want_rc || p.status != want_status)
        print_error("%s: one-shot rc=%d status=%d (%s), want rc=%d status=%d\n", name, rc,
                    p.status, p.error ? p.error : "-", want_rc, want_status);
    assert_int_equal(rc, want_rc);
    assert_int_equal(p.status, want_status);
    if (rc == WEFT_EPROTO)
        assert_non_null(p.error);
    if (rc > 0) {
        for (uint32_t i = 0; i < h1.nheaders; i++) {
            str_check_in(h1.headers[i].name, buf, n);
            str_check_in(h1.headers[i].value, buf, n);
        }
        str_check_in(resp ? h1.reason : h1.target, buf, n);
        str_check_in(h1.path, buf, n);
    }

    /* byte by byte, relocating every time */
    weft_http_parser_init(&p);
    int rc2 = WEFT_EAGAIN;
    size_t k = 0;
    char *last = NULL;
    for (k = 0; k <= n; k++) {
        char *piece = malloc(k ? k : 1);
        assert_non_null(piece);
        memcpy(piece, in, k);
        free(last);
        last = piece;
        rc2 = parse_any(&p, lim, piece, k, resp, req_method, &h2);
        if (rc2 != WEFT_EAGAIN)
            break;
        if (k < n)
            assert_true(p.scanned == k || (p.scanned + 1 == k && piece[k - 1] == '\r'));
    }
    if (rc2 != want_rc || p.status != want_status)
        print_error("%s: incremental rc=%d status=%d (%s) at %zu, want rc=%d status=%d\n",
                    name, rc2, p.status, p.error ? p.error : "-", k, want_rc, want_status);
    assert_int_equal(rc2, want_rc);
    assert_int_equal(p.status, want_status);
    if (rc2 > 0)
        assert_heads_equal(&h1, &h2, resp);
    free(last);
    free(buf);
}

static void test_req_case(void **state)
{
    const req_case *c = *state;
    run_head_case(c->name, c->in, c->n, c->rc, c->status, c->lim, false, 0);
}

/* ------------------------------------------------------------------ */
/* response table */

typedef struct resp_case {
    const char *name;
    const char *in;
    size_t n;
    int req_method;
    int rc;
    int status;       /* parser status: 0 or 502 */
    int body_kind;    /* checked when rc > 0 */
    int code;         /* h->status, checked when rc > 0 */
    int keep_alive;
} resp_case;

#define GET WEFT_METHOD_GET
static const resp_case resp_cases[] = {
    {"resp_200_cl", S("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), GET, FULL, 0, WEFT_BODY_LENGTH, 200, 1},
    {"resp_200_empty_reason", S("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n"), GET, FULL, 0, WEFT_BODY_LENGTH, 200, 1},
    {"resp_200_no_reason_no_space", S("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"), GET, FULL, 0, WEFT_BODY_LENGTH, 200, 1},
    {"resp_reason_obs_text_tab", S("HTTP/1.1 404 Not\tF\xf6und\r\nContent-Length: 0\r\n\r\n"), GET, FULL, 0, WEFT_BODY_LENGTH, 404, 1},
    {"resp_http10_eof", S("HTTP/1.0 200 OK\r\n\r\n"), GET, FULL, 0, WEFT_BODY_EOF, 200, 0},
    {"resp_http10_keepalive", S("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n"), GET, FULL, 0, WEFT_BODY_LENGTH, 200, 1},
    {"resp_conn_close", S("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n"), GET, FULL, 0, WEFT_BODY_LENGTH, 200, 0},
    {"resp_no_length_eof", S("HTTP/1.1 200 OK\r\n\r\n"), GET, FULL, 0, WEFT_BODY_EOF, 200, 0},
    {"resp_chunked", S("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), GET, FULL, 0, WEFT_BODY_CHUNKED, 200, 1},
    {"resp_gzip_chunked", S("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), GET, FULL, 0, WEFT_BODY_CHUNKED, 200, 1},
    {"resp_te_gzip_eof", S("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), GET, FULL, 0, WEFT_BODY_EOF, 200, 0},
    {"resp_chunked_not_final_eof", S("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), GET, FULL, 0, WEFT_BODY_EOF, 200, 0},
    {"resp_te_split_headers", S("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"), GET, FULL, 0, WEFT_BODY_CHUNKED, 200, 1},
    {"resp_head_request", S("HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"), WEFT_METHOD_HEAD, FULL, 0, WEFT_BODY_NONE, 200, 1},
    {"resp_204", S("HTTP/1.1 204 No Content\r\n\r\n"), GET, FULL, 0, WEFT_BODY_NONE, 204, 1},
    {"resp_304", S("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"), GET, FULL, 0, WEFT_BODY_NONE, 304, 1},
    {"resp_100", S("HTTP/1.1 100 Continue\r\n\r\n"), GET, FULL, 0, WEFT_BODY_NONE, 100, 1},
    {"resp_101_upgrade", S("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"), GET, FULL, 0, WEFT_BODY_NONE, 101, 1},
    {"resp_connect_200", S("HTTP/1.1 200 Connection established\r\n\r\n"), WEFT_METHOD_CONNECT, FULL, 0, WEFT_BODY_NONE, 200, 1},
    {"resp_connect_407", S("HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n\r\n"), WEFT_METHOD_CONNECT, FULL, 0, WEFT_BODY_LENGTH, 407, 1},
    {"resp_599", S("HTTP/1.1 599 Odd\r\nContent-Length: 0\r\n\r\n"), GET, FULL, 0, WEFT_BODY_LENGTH, 599, 1},
    {"resp_leading_crlf", S("\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), GET, FULL, 0, WEFT_BODY_LENGTH, 200, 1},
    {"resp_incomplete", S("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"), GET, WEFT_EAGAIN, 0, 0, 0, 0},
    {"resp_status_099", S("HTTP/1.1 099 X\r\n\r\n"), GET, WEFT_EPROTO, 502, 0, 0, 0},
    {"resp_status_600", S("HTTP/1.1 600 X\r\n\r\n"), GET, WEFT_EPROTO, 502, 0, 0, 0},
    {"resp_status_4digits", S("HTTP/1.1 2000 X\r\n\r\n"), GET, WEFT_EPROTO, 502, 0, 0, 0},
    {"resp_status_2digits", S("HTTP/1.1 20 OK\r\n\r\n"), GET, WEFT_EPROTO, 502, 0, 0, 0},
    {"resp_status_letters", S("HTTP/1.1 2OO OK\r\n\r\n"), GET, WEFT_EPROTO, 502, 0, 0, 0},
    {"resp_http2", S("HTTP/2.0 200 OK\r\n\r\n"), GET, WEFT_EPROTO, 502, 0, 0, 0},
    {"resp_lowercase", S("http/1.1 200 OK\r\n\r\n"), GET, WEFT_EPROTO, 502, 0, 0, 0},
    {"resp_two_spaces", S("HTTP/1.1  200 OK\r\n\r\n"), GET, WEFT_EPROTO, 502, 0, 0, 0},
    {"resp_cl_and_te", S("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), GET, WEFT_EPROTO, 502, 0, 0, 0},
    {"resp_cl_and_te_head", S("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"), WEFT_METHOD_HEAD, WEFT_EPROTO, 502, 0, 0, 0},
    {"resp_te_malformed", S("HTTP/1.1 200 OK\r\nTransfer-Encoding: gz ip\r\n\r\n"), GET, WEFT_EPROTO, 502, 0, 0, 0},
    {"resp_chunked_twice", S("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"), GET, WEFT_EPROTO, 502, 0, 0, 0},
    {"resp_te_empty", S("HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n"), GET, WEFT_EPROTO, 502, 0, 0, 0},
    {"resp_cl_bad", S("HTTP/1.1 200 OK\r\nContent-Length: 1a\r\n\r\n"), GET, WEFT_EPROTO, 502, 0, 0, 0},
    {"resp_cl_differ", S("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), GET, WEFT_EPROTO, 502, 0, 0, 0},
    {"resp_bare_lf", S("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"), GET, WEFT_EPROTO, 502, 0, 0, 0},
    {"resp_obs_fold", S("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"), GET, WEFT_EPROTO, 502, 0, 0, 0},
    {"resp_space_before_colon", S("HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n"), GET, WEFT_EPROTO, 502, 0, 0, 0},
    {"resp_nul_in_reason", S("HTTP/1.1 200 O\0K\r\n\r\n"), GET, WEFT_EPROTO, 502, 0, 0, 0},
};

static void test_resp_case(void **state)
{
    const resp_case *c = *state;
    static weft_http_head h;
    weft_http_parser p;

    run_head_case(c->name, c->in, c->n, c->rc, c->status, NULL, true, c->req_method);
    if (c->rc != FULL)
        return;
    weft_http_parser_init(&p);
    assert_int_equal(weft_http_parse_response(&p, NULL, c->in, c->n, c->req_method, &h),
                     (int)c->n);
    assert_int_equal(h.status, c->code);
    assert_int_equal(h.body_kind, c->body_kind);
    assert_int_equal(h.keep_alive, c->keep_alive);
}

/* ------------------------------------------------------------------ */
/* chunked table */

enum { CK_OUT_DONE = 1, CK_OUT_ERROR, CK_OUT_MORE };

typedef struct ck_case {
    const char *name;
    const char *in;
    size_t n;
    int outcome;
    const char *data; /* expected decoded body (NULL: don't check) */
    size_t consumed;  /* expected bytes consumed at done (0: all of n) */
} ck_case;

static const ck_case ck_cases[] = {
    {"ck_simple", S("5\r\nhello\r\n0\r\n\r\n"), CK_OUT_DONE, "hello", 0},
    {"ck_two_chunks", S("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), CK_OUT_DONE, "abcde", 0},
    {"ck_hex_upper_lower", S("A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n"), CK_OUT_DONE, "0123456789abcdefghij", 0},
    {"ck_leading_zeros", S("0005\r\nhello\r\n0000\r\n\r\n"), CK_OUT_DONE, "hello", 0},
    {"ck_empty_body", S("0\r\n\r\n"), CK_OUT_DONE, "", 0},
    {"ck_next_message_kept", S("1\r\nx\r\n0\r\n\r\nGET / HTTP/1.1\r\n"), CK_OUT_DONE, "x", 11},
    {"ck_ext_name", S("1;foo\r\nx\r\n0\r\n\r\n"), CK_OUT_DONE, "x", 0},
    {"ck_ext_name_value", S("1;foo=bar;baz\r\nx\r\n0\r\n\r\n"), CK_OUT_DONE, "x", 0},
    {"ck_ext_quoted", S("1;a=\"q s;\\\"x\"\r\nx\r\n0\r\n\r\n"), CK_OUT_DONE, "x", 0},
    {"ck_ext_bws", S("1 ; a = b ;c\r\nx\r\n0\r\n\r\n"), CK_OUT_DONE, "x", 0},
    {"ck_ext_on_last", S("1\r\nx\r\n0;end=1\r\n\r\n"), CK_OUT_DONE, "x", 0},
    {"ck_trailers", S("1\r\nx\r\n0\r\nX-Sum: abc\r\nY:\t\xff \r\n\r\n"), CK_OUT_DONE, "x", 0},
    {"ck_max_size_2p62", S("4000000000000000\r\nabc"), CK_OUT_MORE, "abc", 0},
    {"ck_16_digits", S("0000000000000003\r\nabc\r\n0\r\n\r\n"), CK_OUT_DONE, "abc", 0},
    {"ck_incomplete_size", S("5"), CK_OUT_MORE, "", 0},
    {"ck_incomplete_data", S("5\r\nhel"), CK_OUT_MORE, "hel", 0},
    {"ck_incomplete_trailer", S("0\r\nX: y\r\n"), CK_OUT_MORE, "", 0},
    {"ck_missing_size", S("\r\nx\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_non_hex", S("g\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_hex_prefix", S("0x5\r\nhello\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_negative", S("-5\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_17_digits", S("00000000000000005\r\nhello\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_too_large", S("4000000000000001\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_overflow", S("ffffffffffffffff\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_bare_lf_size", S("5\nhello\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_bare_cr_size", S("5\rhello\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_size_trailing_ws", S("5 \r\nhello\r\n0\r\n\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_leading_ws", S(" 5\r\nhello\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_ext_empty_name", S("5;\r\nhello\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_ext_empty_value", S("5;a=\r\nhello\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_ext_bad_char", S("5;a@b\r\nhello\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_ext_unterminated_quote", S("5;a=\"x\r\nhello\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_ext_name_trailing_ws", S("5;a \r\nhello\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_ext_nul", S("5;a=b\0\r\nhello\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_data_too_long", S("5\r\nhello!\r\n0\r\n\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_data_lf_only", S("5\r\nhello\n0\r\n\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_data_cr_only", S("5\r\nhello\r0\r\n\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_trailer_obs_fold", S("0\r\nX: a\r\n b\r\n\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_trailer_no_colon", S("0\r\nXa\r\n\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_trailer_ws_before_colon", S("0\r\nX : a\r\n\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_trailer_empty_name", S("0\r\n: a\r\n\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_trailer_nul", S("0\r\nX: a\0\r\n\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_trailer_bare_lf", S("0\r\nX: a\n\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_final_bare_lf", S("0\r\n\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_final_bare_cr", S("0\r\n\rx"), CK_OUT_ERROR, NULL, 0},
    {"ck_ext_name_then_semi", S("1;a;b\r\nx\r\n0\r\n\r\n"), CK_OUT_DONE, "x", 0},
    {"ck_ext_name_ws_then_semi", S("1;a ;b\r\nx\r\n0\r\n\r\n"), CK_OUT_DONE, "x", 0},
    {"ck_ext_quoted_then_semi", S("1;a=\"x\";b\r\nx\r\n0\r\n\r\n"), CK_OUT_DONE, "x", 0},
    {"ck_ext_quoted_ws_semi", S("1;a=\"x\" ;b\r\nx\r\n0\r\n\r\n"), CK_OUT_DONE, "x", 0},
    {"ck_ext_quoted_ws_cr", S("1;a=\"x\" \r\nx\r\n0\r\n\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_ext_after_quote_junk", S("1;a=\"x\"y\r\nx\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_ext_quoted_pair_ctl", S("1;a=\"\\\x01\"\r\nx\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_ext_quoted_obs_text", S("1;a=\"\xe9\\\xff\"\r\nx\r\n0\r\n\r\n"), CK_OUT_DONE, "x", 0},
    {"ck_trailer_bare_cr", S("0\r\nX: a\rb\r\n\r\n"), CK_OUT_ERROR, NULL, 0},
    {"ck_trailer_many", S("0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"), CK_OUT_DONE, "", 0},
};

typedef struct ck_result {
    int outcome;
    char data[256];
    size_t dn;
    size_t consumed;
} ck_result;

/* Decode `in` feeding at most `step` bytes per call, each from a fresh copy. */
static void ck_drive(const char *in, size_t n, size_t step, ck_result *r)
{
    weft_chunked d;
    size_t pos = 0;
    weft_chunked_init(&d);
    memset(r, 0, sizeof(*r));
    r->outcome = CK_OUT_MORE;
    while (pos < n) {
        size_t k = n - pos < step ? n - pos : step;
        char *piece = malloc(k);
        assert_non_null(piece);
        memcpy(piece, in + pos, k);
        size_t used = 999;
        weft_str data = {piece, 77};
        int rc = weft_chunked_decode(&d, piece, k, &used, &data);
        assert_true(used <= k);
        if (data.n) {
            assert_true(data.p >= piece && data.p + data.n <= piece + k);
            assert_true(r->dn + data.n <= sizeof(r->data));
            memcpy(r->data + r->dn, data.p, data.n);
            r->dn += data.n;
        }
        free(piece);
        pos += used;
        if (rc == WEFT_EPROTO) {
            assert_non_null(d.error);
            r->outcome = CK_OUT_ERROR;
            break;
        }
        if (rc == WEFT_EAGAIN) {
            assert_int_equal(used, k);
            assert_int_equal(data.n, 0);
            continue;
        }
        assert_int_equal(rc, 0);
        assert_true(data.n > 0 || d.done);
        if (d.done) {
            r->outcome = CK_OUT_DONE;
            break;
        }
    }
    r->consumed = pos;
}

static void test_ck_case(void **state)
{
    const ck_case *c = *state;
    ck_result one, step1, step3;
    ck_drive(c->in, c->n, c->n ? c->n : 1, &one);
    ck_drive(c->in, c->n, 1, &step1);
    ck_drive(c->in, c->n, 3, &step3);
    if (one.outcome != c->outcome)
        print_error("%s: outcome %d, want %d\n", c->name, one.outcome, c->outcome);
    assert_int_equal(one.outcome, c->outcome);
    assert_int_equal(step1.outcome, c->outcome);
    assert_int_equal(step3.outcome, c->outcome);
    if (c->data) {
        assert_int_equal(one.dn, strlen(c->data));
        assert_memory_equal(one.data, c->data, one.dn);
    }
    assert_int_equal(step1.dn, one.dn);
    assert_memory_equal(step1.data, one.data, one.dn);
    assert_int_equal(step3.dn, one.dn);
    assert_memory_equal(step3.data, one.data, one.dn);
    if (c->outcome == CK_OUT_DONE) {
        size_t want = c->consumed ? c->consumed : c->n;
        assert_int_equal(one.consumed, want);
        assert_int_equal(step1.consumed, want);
    }
}

/* ------------------------------------------------------------------ */
/* field-level tests */

static weft_http_head g_h;

static int req(const char *s, weft_http_parser *p)
{
    weft_http_parser_init(p);
    return weft_http_parse_request(p, NULL, s, strlen(s), &g_h);
}

static void assert_str(weft_str s, const char *want)
{
    if (s.n != strlen(want) || (s.n && memcmp(s.p, want, s.n) != 0)) {
        print_error("got '%.*s', want '%s'\n", (int)s.n, s.n ? s.p : "", want);
        fail();
    }
}

static void test_fields_origin_form(void **state)
{
    weft_http_parser p;
    const char *s = "GET /a/b?x=1&y HTTP/1.1\r\nHost:  example.com:8080 \r\nX-A: v\r\n\r\n";
    assert_int_equal(req(s, &p), (int)strlen(s));
    assert_int_equal(g_h.method, WEFT_METHOD_GET);
    assert_str(g_h.method_str, "GET");
    assert_str(g_h.target, "/a/b?x=1&y");
    assert_str(g_h.path, "/a/b");
    assert_str(g_h.query, "x=1&y");
    assert_int_equal(g_h.authority.n, 0);
    assert_str(g_h.host, "example.com:8080");
    assert_int_equal(g_h.version_minor, 1);
    assert_int_equal(g_h.nheaders, 2);
    assert_str(g_h.headers[1].name, "X-A");
    assert_str(g_h.headers[1].value, "v");
    assert_int_equal(g_h.body_kind, WEFT_BODY_NONE);
    assert_true(g_h.keep_alive);
    assert_false(g_h.expect_continue);
    assert_false(g_h.upgrade);
}

static void test_fields_absolute_form(void **state)
{
    weft_http_parser p;
    assert_true(req("GET http://Ex.com:81/p/q?z HTTP/1.1\r\nHost: x\r\n\r\n", &p) > 0);
    assert_str(g_h.authority, "Ex.com:81");
    assert_str(g_h.path, "/p/q");
    assert_str(g_h.query, "z");
    /* RFC 9112 3.2.2: the target's authority, not the Host header, is the
     * host of an absolute-form request (routing by Host would let a front
     * proxy and this server pick different virtual hosts) */
    assert_str(g_h.host, "Ex.com:81");
}

static void test_fields_absolute_no_path(void **state)
{
    weft_http_parser p;
    assert_true(req("GET https://h?q=1 HTTP/1.1\r\nHost: h\r\n\r\n", &p) > 0);
    assert_str(g_h.authority, "h");
    assert_str(g_h.path, "/");
    assert_str(g_h.query, "q=1");
}

static void test_fields_asterisk(void **state)
{
    weft_http_parser p;
    assert_true(req("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", &p) > 0);
    assert_int_equal(g_h.method, WEFT_METHOD_OPTIONS);
    assert_str(g_h.path, "*");
    assert_int_equal(g_h.query.n, 0);
}

static void test_fields_empty_query(void **state)
{
    weft_http_parser p;
    assert_true(req("GET /x? HTTP/1.1\r\nHost: h\r\n\r\n", &p) > 0);
    assert_str(g_h.path, "/x");
    assert_int_equal(g_h.query.n, 0);
}

static void test_fields_http10_defaults(void **state)
{
    weft_http_parser p;
    assert_true(req("GET / HTTP/1.0\r\n\r\n", &p) > 0);
    assert_int_equal(g_h.version_minor, 0);
    assert_false(g_h.keep_alive);
    assert_int_equal(g_h.host.n, 0);
    assert_int_equal(g_h.nheaders, 0);
}

static void test_fields_http10_keep_alive(void **state)
{
    weft_http_parser p;
    assert_true(req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &p) > 0);
    assert_true(g_h.keep_alive);
}

static void test_fields_http12_minor(void **state)
{
    weft_http_parser p;
    assert_true(req("GET / HTTP/1.7\r\nHost: h\r\n\r\n", &p) > 0);
    assert_int_equal(g_h.version_minor, 1);
}

static void test_fields_connection_close(void **state)
{
    weft_http_parser p;
    assert_true(req("GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, CLOSE\r\n\r\n", &p) > 0);
    assert_false(g_h.keep_alive);
}

static void test_fields_connection_close_wins(void **state)
{
    weft_http_parser p;
    assert_true(req("GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", &p) > 0);
    assert_false(g_h.keep_alive);
}

static void test_fields_connection_upgrade(void **state)
{
    weft_http_parser p;
    assert_true(req("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: ws\r\n\r\n", &p) > 0);
    assert_true(g_h.upgrade);
    assert_true(g_h.keep_alive);
}

static void test_fields_content_length(void **state)
{
    weft_http_parser p;
    assert_true(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0123\r\n\r\n", &p) > 0);
    assert_int_equal(g_h.body_kind, WEFT_BODY_LENGTH);
    assert_int_equal(g_h.content_length, 123);
}

static void test_fields_content_length_zero(void **state)
{
    weft_http_parser p;
    assert_true(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", &p) > 0);
    assert_int_equal(g_h.body_kind, WEFT_BODY_LENGTH);
    assert_int_equal(g_h.content_length, 0);
}

static void test_fields_content_length_max(void **state)
{
    weft_http_parser p;
    assert_true(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9007199254740992\r\n\r\n", &p) > 0);
    assert_int_equal(g_h.content_length, UINT64_C(9007199254740992));
}

static void test_fields_chunked(void **state)
{
    weft_http_parser p;
    assert_true(req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n", &p) > 0);
    assert_int_equal(g_h.body_kind, WEFT_BODY_CHUNKED);
}

static void test_fields_expect_continue(void **state)
{
    weft_http_parser p;
    assert_true(req("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", &p) > 0);
    assert_true(g_h.expect_continue);
}

static void test_fields_expect_ignored_http10(void **state)
{
    weft_http_parser p;
    assert_true(req("PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", &p) > 0);
    assert_false(g_h.expect_continue);
}

static void test_fields_value_trim(void **state)
{
    weft_http_parser p;
    assert_true(req("GET / HTTP/1.1\r\nHost: h\r\nX: \t a \t b\t \r\nY:z\r\n\r\n", &p) > 0);
    assert_str(g_h.headers[1].value, "a \t b");
    assert_str(g_h.headers[2].value, "z");
}

static void test_fields_method_unknown_has_str(void **state)
{
    weft_http_parser p;
    assert_int_equal(req("BREW /pot HTTP/1.1\r\nHost: h\r\n\r\n", &p), WEFT_EPROTO);
    assert_int_equal(p.status, 501);
    assert_int_equal(g_h.method, WEFT_METHOD_UNKNOWN);
    assert_str(g_h.method_str, "BREW");
}

static void test_body_follows_head(void **state)
{
    weft_http_parser p;
    const char *s = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody";
    int rc = req(s, &p);
    assert_int_equal(rc, (int)strlen(s) - 4);
    assert_memory_equal(s + rc, "body", 4);
}

static void test_parse_again_after_success(void **state)
{
    weft_http_parser p;
    const char *s = "GET /again HTTP/1.1\r\nHost: h\r\nA: 1\r\n\r\n";
    int rc = req(s, &p);
    assert_int_equal(rc, (int)strlen(s));
    /* Calling again with the same bytes (even moved) gives the same head. */
    char copy[128];
    memcpy(copy, s, strlen(s));
    assert_int_equal(weft_http_parse_request(&p, NULL, copy, strlen(s), &g_h), rc);
    assert_str(g_h.path, "/again");
    assert_true(g_h.path.p >= copy && g_h.path.p < copy + sizeof(copy));
    assert_int_equal(g_h.nheaders, 2);
}

static void test_error_is_sticky(void **state)
{
    weft_http_parser p;
    assert_int_equal(req("GET / HTTP/1.1\nHost: h\r\n\r\n", &p), WEFT_EPROTO);
    assert_int_equal(p.status, 400);
    assert_int_equal(weft_http_parse_request(&p, NULL, "GET / HTTP/1.1\nHost: h\r\n\r\nX", 27, &g_h),
                     WEFT_EPROTO);
    assert_int_equal(p.status, 400);
}

static void test_shrunk_buffer_einval(void **state)
{
    weft_http_parser p;
    weft_http_parser_init(&p);
    assert_int_equal(weft_http_parse_request(&p, NULL, "GET / HT", 8, &g_h), WEFT_EAGAIN);
    assert_int_equal(weft_http_parse_request(&p, NULL, "GET", 3, &g_h), WEFT_EINVAL);
}

static void test_null_limits_use_defaults(void **state)
{
    weft_http_parser p;
    static char big[8300];
    memcpy(big, "GET /", 5);
    memset(big + 5, 'a', sizeof(big) - 5);
    weft_http_parser_init(&p);
    assert_int_equal(weft_http_parse_request(&p, NULL, big, sizeof(big), &g_h), WEFT_EPROTO);
    assert_int_equal(p.status, 414);
}

static void test_limits_default(void **state)
{
    weft_http_limits l;
    weft_http_limits_default(&l);
    assert_int_equal(l.max_request_line, 8192);
    assert_int_equal(l.max_header_bytes, 32768);
    assert_int_equal(l.max_headers, 100);
}

/* Build "GET / HTTP/1.1\r\n" + n fields + "\r\n" into buf. */
static size_t build_many_headers(char *buf, size_t cap, int n)
{
    size_t off = (size_t)snprintf(buf, cap, "GET / HTTP/1.1\r\nHost: h\r\n");
    for (int i = 1; i < n; i++)
        off += (size_t)snprintf(buf + off, cap - off, "X-%d: %d\r\n", i, i);
    off += (size_t)snprintf(buf + off, cap - off, "\r\n");
    return off;
}

static void test_max_headers_clamped_to_cap(void **state)
{
    static char buf[8192];
    weft_http_limits l = {8192, 65536, 1000};
    weft_http_parser p;
    size_t n = build_many_headers(buf, sizeof(buf), WEFT_HTTP_MAX_HEADERS_CAP);
    weft_http_parser_init(&p);
    assert_int_equal(weft_http_parse_request(&p, &l, buf, n, &g_h), (int)n);
    assert_int_equal(g_h.nheaders, WEFT_HTTP_MAX_HEADERS_CAP);
    n = build_many_headers(buf, sizeof(buf), WEFT_HTTP_MAX_HEADERS_CAP + 1);
    weft_http_parser_init(&p);
    assert_int_equal(weft_http_parse_request(&p, &l, buf, n, &g_h), WEFT_EPROTO);
    assert_int_equal(p.status, 431);
}

static void test_default_max_headers_100(void **state)
{
    static char buf[8192];
    weft_http_parser p;
    size_t n = build_many_headers(buf, sizeof(buf), 100);
    weft_http_parser_init(&p);
    assert_int_equal(weft_http_parse_request(&p, NULL, buf, n, &g_h), (int)n);
    n = build_many_headers(buf, sizeof(buf), 101);
    weft_http_parser_init(&p);
    assert_int_equal(weft_http_parse_request(&p, NULL, buf, n, &g_h), WEFT_EPROTO);
    assert_int_equal(p.status, 431);
}

/* A slowloris head arriving one byte at a time is scanned once. */
static void test_slowloris_linear(void **state)
{
    static char buf[32768];
    const weft_http_limits l = {8192, 32768, 128};
    weft_http_parser p;
    size_t off = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: h\r\n");
    while (off + 300 < sizeof(buf))
        off += (size_t)snprintf(buf + off, sizeof(buf) - off, "X-Pad: %0250d\r\n", 7);
    weft_http_parser_init(&p);
    for (size_t k = 1; k < off; k++) {
        uint32_t before = p.scanned;
        assert_int_equal(weft_http_parse_request(&p, &l, buf, k, &g_h), WEFT_EAGAIN);
        assert_true(p.scanned >= before && p.scanned <= k);
        assert_true(k - p.scanned <= 1);
    }
    /* 431 as soon as the 32768th byte is seen without a blank line. */
    memset(buf + off, 'a', sizeof(buf) - off);
    assert_int_equal(weft_http_parse_request(&p, &l, buf, sizeof(buf), &g_h), WEFT_EPROTO);
    assert_int_equal(p.status, 431);
}

static void test_leading_crlf_byte_by_byte_limit(void **state)
{
    weft_http_parser p;
    const char *s = "\r\n\r\n\r\n\r\n\r\n";
    weft_http_parser_init(&p);
    for (size_t k = 0; k < 9; k++)
        assert_int_equal(weft_http_parse_request(&p, NULL, s, k, &g_h), WEFT_EAGAIN);
    assert_int_equal(weft_http_parse_request(&p, NULL, s, 10, &g_h), WEFT_EPROTO);
    assert_int_equal(p.status, 400);
}

static void test_head_find(void **state)
{
    weft_http_parser p;
    assert_true(req("GET / HTTP/1.1\r\nHost: h\r\nX-Trace-Id: 42\r\nAccept: */*\r\n\r\n", &p) > 0);
    const weft_http_header *f = weft_http_head_find(&g_h, WEFT_STR("x-trace-ID"));
    assert_non_null(f);
    assert_str(f->value, "42");
    assert_ptr_equal(weft_http_head_find(&g_h, WEFT_STR("HOST")), &g_h.headers[0]);
    assert_null(weft_http_head_find(&g_h, WEFT_STR("X-Trace")));
    assert_null(weft_http_head_find(&g_h, WEFT_STR("")));
}

static void test_head_find_first_of_dups(void **state)
{
    weft_http_parser p;
    assert_true(req("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\na: 2\r\n\r\n", &p) > 0);
    const weft_http_header *f = weft_http_head_find(&g_h, WEFT_STR("A"));
    assert_non_null(f);
    assert_str(f->value, "1");
}

static void test_method_from(void **state)
{
    static const struct {
        const char *s;
        int m;
    } t[] = {
        {"GET", WEFT_METHOD_GET},       {"HEAD", WEFT_METHOD_HEAD},
        {"POST", WEFT_METHOD_POST},     {"PUT", WEFT_METHOD_PUT},
        {"DELETE", WEFT_METHOD_DELETE}, {"CONNECT", WEFT_METHOD_CONNECT},
        {"OPTIONS", WEFT_METHOD_OPTIONS}, {"TRACE", WEFT_METHOD_TRACE},
        {"PATCH", WEFT_METHOD_PATCH},   {"get", WEFT_METHOD_UNKNOWN},
        {"GETX", WEFT_METHOD_UNKNOWN},  {"", WEFT_METHOD_UNKNOWN},
        {"PROPFIND", WEFT_METHOD_UNKNOWN},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        int m = weft_http_method_from(weft_str_from(t[i].s));
        if (m != t[i].m)
            print_error("method_from(%s) = %d, want %d\n", t[i].s, m, t[i].m);
        assert_int_equal(m, t[i].m);
        if (m != WEFT_METHOD_UNKNOWN)
            assert_string_equal(weft_http_method_name(m), t[i].s);
    }
    assert_int_equal(weft_http_method_from(WEFT_STR_NULL), WEFT_METHOD_UNKNOWN);
}

static void test_method_name_bounds(void **state)
{
    assert_string_equal(weft_http_method_name(WEFT_METHOD_UNKNOWN), "UNKNOWN");
    assert_string_equal(weft_http_method_name(-1), "UNKNOWN");
    assert_string_equal(weft_http_method_name(1000), "UNKNOWN");
}

static void test_reason_phrases(void **state)
{
    static const struct {
        int code;
        const char *r;
    } t[] = {
        {100, "Continue"}, {101, "Switching Protocols"}, {200, "OK"}, {201, "Created"},
        {202, "Accepted"}, {203, "Non-Authoritative Information"}, {204, "No Content"},
        {205, "Reset Content"}, {206, "Partial Content"}, {300, "Multiple Choices"},
        {301, "Moved Permanently"}, {302, "Found"}, {303, "See Other"},
        {304, "Not Modified"}, {305, "Use Proxy"}, {307, "Temporary Redirect"},
        {308, "Permanent Redirect"}, {400, "Bad Request"}, {401, "Unauthorized"},
        {402, "Payment Required"}, {403, "Forbidden"}, {404, "Not Found"},
        {405, "Method Not Allowed"}, {406, "Not Acceptable"},
        {407, "Proxy Authentication Required"}, {408, "Request Timeout"},
        {409, "Conflict"}, {410, "Gone"}, {411, "Length Required"},
        {412, "Precondition Failed"}, {413, "Content Too Large"}, {414, "URI Too Long"},
        {415, "Unsupported Media Type"}, {416, "Range Not Satisfiable"},
        {417, "Expectation Failed"}, {418, "I'm a teapot"}, {421, "Misdirected Request"},
        {422, "Unprocessable Content"}, {425, "Too Early"}, {426, "Upgrade Required"},
        {428, "Precondition Required"}, {429, "Too Many Requests"},
        {431, "Request Header Fields Too Large"}, {451, "Unavailable For Legal Reasons"},
        {500, "Internal Server Error"}, {501, "Not Implemented"}, {502, "Bad Gateway"},
        {503, "Service Unavailable"}, {504, "Gateway Timeout"},
        {505, "HTTP Version Not Supported"}, {511, "Network Authentication Required"},
        {0, "Unknown"}, {299, "Unknown"}, {306, "Unknown"}, {600, "Unknown"}, {-1, "Unknown"},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        const char *r = weft_http_reason(t[i].code);
        if (strcmp(r, t[i].r) != 0)
            print_error("reason(%d) = '%s', want '%s'\n", t[i].code, r, t[i].r);
        assert_string_equal(r, t[i].r);
    }
}

static void test_response_fields(void **state)
{
    weft_http_parser p;
    const char *s = "HTTP/1.1 201 Created Now\r\nContent-Length: 7\r\nX: y\r\n\r\n";
    weft_http_parser_init(&p);
    assert_int_equal(weft_http_parse_response(&p, NULL, s, strlen(s), WEFT_METHOD_POST, &g_h),
                     (int)strlen(s));
    assert_int_equal(g_h.status, 201);
    assert_str(g_h.reason, "Created Now");
    assert_int_equal(g_h.version_minor, 1);
    assert_int_equal(g_h.content_length, 7);
    assert_int_equal(g_h.nheaders, 2);
    assert_int_equal(g_h.method, WEFT_METHOD_UNKNOWN);
    assert_int_equal(g_h.host.n, 0);
}

static void test_response_too_large_is_502(void **state)
{
    weft_http_parser p;
    weft_http_limits l = {8192, 40, 100};
    const char *s = "HTTP/1.1 200 OK\r\nX: 012345678901234567890123456789\r\n\r\n";
    weft_http_parser_init(&p);
    assert_int_equal(weft_http_parse_response(&p, &l, s, strlen(s), WEFT_METHOD_GET, &g_h),
                     WEFT_EPROTO);
    assert_int_equal(p.status, 502);
}

/* chunked: call-level contract */

static void test_ck_init_defaults(void **state)
{
    weft_chunked d;
    memset(&d, 0xab, sizeof(d));
    weft_chunked_init(&d);
    assert_int_equal(d.max_line, 4096);
    assert_int_equal(d.max_trailer_bytes, 8192);
    assert_false(d.done);
    assert_null(d.error);
    assert_int_equal(d.remaining, 0);
}

static void test_ck_eagain_consumes_framing(void **state)
{
    weft_chunked d;
    size_t used;
    weft_str data;
    weft_chunked_init(&d);
    assert_int_equal(weft_chunked_decode(&d, "5\r\n", 3, &used, &data), WEFT_EAGAIN);
    assert_int_equal(used, 3);
    assert_int_equal(data.n, 0);
    assert_int_equal(weft_chunked_decode(&d, "hel", 3, &used, &data), 0);
    assert_int_equal(used, 3);
    assert_int_equal(data.n, 3);
    assert_memory_equal(data.p, "hel", 3);
    assert_int_equal(d.remaining, 2);
    assert_int_equal(weft_chunked_decode(&d, "lo\r\n0\r\n\r\n", 9, &used, &data), 0);
    assert_int_equal(used, 2);
    assert_memory_equal(data.p, "lo", 2);
    assert_int_equal(weft_chunked_decode(&d, "\r\n0\r\n\r\n", 7, &used, &data), 0);
    assert_int_equal(used, 7);
    assert_int_equal(data.n, 0);
    assert_true(d.done);
}

static void test_ck_one_span_per_call(void **state)
{
    weft_chunked d;
    size_t used;
    weft_str data;
    const char *s = "2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n";
    weft_chunked_init(&d);
    assert_int_equal(weft_chunked_decode(&d, s, strlen(s), &used, &data), 0);
    assert_int_equal(used, 5);
    assert_memory_equal(data.p, "ab", 2);
    assert_false(d.done);
    assert_int_equal(weft_chunked_decode(&d, s + 5, strlen(s) - 5, &used, &data), 0);
    assert_int_equal(used, 7);
    assert_memory_equal(data.p, "cd", 2);
}

static void test_ck_after_done(void **state)
{
    weft_chunked d;
    size_t used = 5;
    weft_str data;
    weft_chunked_init(&d);
    assert_int_equal(weft_chunked_decode(&d, "0\r\n\r\nXYZ", 8, &used, &data), 0);
    assert_int_equal(used, 5);
    assert_true(d.done);
    assert_int_equal(weft_chunked_decode(&d, "XYZ", 3, &used, &data), 0);
    assert_int_equal(used, 0);
    assert_int_equal(data.n, 0);
}

static void test_ck_error_sticky(void **state)
{
    weft_chunked d;
    size_t used;
    weft_str data;
    weft_chunked_init(&d);
    assert_int_equal(weft_chunked_decode(&d, "z", 1, &used, &data), WEFT_EPROTO);
    assert_non_null(d.error);
    assert_int_equal(weft_chunked_decode(&d, "0\r\n\r\n", 5, &used, &data), WEFT_EPROTO);
    assert_false(d.done);
}

static void test_ck_empty_input(void **state)
{
    weft_chunked d;
    size_t used = 9;
    weft_str data;
    weft_chunked_init(&d);
    assert_int_equal(weft_chunked_decode(&d, "", 0, &used, &data), WEFT_EAGAIN);
    assert_int_equal(used, 0);
    assert_int_equal(data.n, 0);
}

static void test_ck_line_limit(void **state)
{
    weft_chunked d;
    size_t used;
    weft_str data;
    char line[64];
    weft_chunked_init(&d);
    d.max_line = 16;
    /* "1;aaaaaaaaaaaa\r\n": 15 bytes before the LF fit ... */
    memcpy(line, "1;aaaaaaaaaaaa\r\nx\r\n", 19);
    assert_int_equal(weft_chunked_decode(&d, line, 19, &used, &data), 0);
    assert_int_equal(data.n, 1);
    /* ... one more extension byte does not. */
    weft_chunked_init(&d);
    d.max_line = 16;
    assert_int_equal(weft_chunked_decode(&d, "1;aaaaaaaaaaaaaa\r\n", 18, &used, &data),
                     WEFT_EPROTO);
}

static void test_ck_default_line_limit(void **state)
{
    static char buf[5000];
    weft_chunked d;
    size_t used;
    weft_str data;
    buf[0] = '1';
    buf[1] = ';';
    memset(buf + 2, 'a', sizeof(buf) - 2);
    weft_chunked_init(&d);
    assert_int_equal(weft_chunked_decode(&d, buf, sizeof(buf), &used, &data), WEFT_EPROTO);
    assert_true(used <= 4097);
}

static void test_ck_trailer_limit(void **state)
{
    static char buf[9000];
    weft_chunked d;
    size_t used;
    weft_str data;
    memcpy(buf, "0\r\nX: ", 6);
    memset(buf + 6, 'v', sizeof(buf) - 6);
    weft_chunked_init(&d);
    assert_int_equal(weft_chunked_decode(&d, buf, sizeof(buf), &used, &data), WEFT_EPROTO);
    weft_chunked_init(&d);
    d.max_trailer_bytes = 8;
    assert_int_equal(weft_chunked_decode(&d, "0\r\nX: y\r\n\r\n", 11, &used, &data), 0);
    assert_true(d.done);
    assert_int_equal(d.trailers, 1);
    weft_chunked_init(&d);
    d.max_trailer_bytes = 7;
    assert_int_equal(weft_chunked_decode(&d, "0\r\nX: y\r\n\r\n", 11, &used, &data),
                     WEFT_EPROTO);
}

static void test_ck_large_chunk_streams(void **state)
{
    static char buf[70000];
    weft_chunked d;
    size_t used, total = 0, pos;
    weft_str data;
    int n = snprintf(buf, sizeof(buf), "10000\r\n");
    memset(buf + n, 'q', 65536);
    memcpy(buf + n + 65536, "\r\n0\r\n\r\n", 7);
    size_t len = (size_t)n + 65536 + 7;
    weft_chunked_init(&d);
    pos = 0;
    while (!d.done) {
        size_t k = len - pos < 1000 ? len - pos : 1000;
        int rc = weft_chunked_decode(&d, buf + pos, k, &used, &data);
        assert_true(rc == 0 || rc == WEFT_EAGAIN);
        total += data.n;
        pos += used;
    }
    assert_int_equal(total, 65536);
    assert_int_equal(pos, len);
}

/* ------------------------------------------------------------------ */

#define T(f) cmocka_unit_test(f)

static const struct CMUnitTest fixed_tests[] = {
    T(test_fields_origin_form),
    T(test_fields_absolute_form),
    T(test_fields_absolute_no_path),
    T(test_fields_asterisk),
    T(test_fields_empty_query),
    T(test_fields_http10_defaults),
    T(test_fields_http10_keep_alive),
    T(test_fields_http12_minor),
    T(test_fields_connection_close),
    T(test_fields_connection_close_wins),
    T(test_fields_connection_upgrade),
    T(test_fields_content_length),
    T(test_fields_content_length_zero),
    T(test_fields_content_length_max),
    T(test_fields_chunked),
    T(test_fields_expect_continue),
    T(test_fields_expect_ignored_http10),
    T(test_fields_value_trim),
    T(test_fields_method_unknown_has_str),
    T(test_body_follows_head),
    T(test_parse_again_after_success),
    T(test_error_is_sticky),
    T(test_shrunk_buffer_einval),
    T(test_null_limits_use_defaults),
    T(test_limits_default),
    T(test_max_headers_clamped_to_cap),
    T(test_default_max_headers_100),
    T(test_slowloris_linear),
    T(test_leading_crlf_byte_by_byte_limit),
    T(test_head_find),
    T(test_head_find_first_of_dups),
    T(test_method_from),
    T(test_method_name_bounds),
    T(test_reason_phrases),
    T(test_response_fields),
    T(test_response_too_large_is_502),
    T(test_ck_init_defaults),
    T(test_ck_eagain_consumes_framing),
    T(test_ck_one_span_per_call),
    T(test_ck_after_done),
    T(test_ck_error_sticky),
    T(test_ck_empty_input),
    T(test_ck_line_limit),
    T(test_ck_default_line_limit),
    T(test_ck_trailer_limit),
    T(test_ck_large_chunk_streams),
};

#define NREQ (sizeof(req_cases) / sizeof(req_cases[0]))
#define NRESP (sizeof(resp_cases) / sizeof(resp_cases[0]))
#define NCK (sizeof(ck_cases) / sizeof(ck_cases[0]))
#define NFIXED (sizeof(fixed_tests) / sizeof(fixed_tests[0]))

int main(void)
{
    static struct CMUnitTest all[NREQ + NRESP + NCK + NFIXED];
    size_t n = 0;
    for (size_t i = 0; i < NREQ; i++)
        all[n++] = (struct CMUnitTest){req_cases[i].name, test_req_case, NULL, NULL,
                                       (void *)&req_cases[i]};
    for (size_t i = 0; i < NRESP; i++)
        all[n++] = (struct CMUnitTest){resp_cases[i].name, test_resp_case, NULL, NULL,
                                       (void *)&resp_cases[i]};
    for (size_t i = 0; i < NCK; i++)
        all[n++] = (struct CMUnitTest){ck_cases[i].name, test_ck_case, NULL, NULL,
                                       (void *)&ck_cases[i]};
    for (size_t i = 0; i < NFIXED; i++)
        all[n++] = fixed_tests[i];
    return _cmocka_run_group_tests("codec", all, n, NULL, NULL);
}
