/*
 * fuzz_response.c — libFuzzer harness for weft_http_parse_response.
 *
 * Input layout: byte 0 picks the request method the response answers (low
 * nibble) and tiny limits (high bit), byte 1 seeds the piece-size
 * generator, the rest is the response. As for requests, a one-shot parse
 * and a parse fed in random pieces (fresh heap copy per call) must agree
 * exactly; errors must carry status 502; body framing must follow the
 * method/status rules.
 */
#include "http/codec.h"

#include <stdlib.h>
#include <string.h>

#define CHECK(x)                 \
    do {                         \
        if (!(x))                \
            __builtin_trap();    \
    } while (0)

static weft_http_head h1, h2;

static uint32_t rnd(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

static bool inside(weft_str s, const char *b, size_t n)
{
    return s.n == 0 || (s.p >= b && s.p + s.n <= b + n);
}

static void check_head(const weft_http_head *h, const char *b, size_t n, int method)
{
    CHECK(h->status >= 100 && h->status <= 599);
    CHECK(h->version_minor == 0 || h->version_minor == 1);
    CHECK(inside(h->reason, b, n));
    CHECK(h->nheaders <= WEFT_HTTP_MAX_HEADERS_CAP);
    for (uint32_t i = 0; i < h->nheaders; i++)
        CHECK(h->headers[i].name.n > 0 && inside(h->headers[i].name, b, n) &&
              inside(h->headers[i].value, b, n));
    bool no_body = method == WEFT_METHOD_HEAD || h->status < 200 || h->status == 204 ||
                   h->status == 304 || (method == WEFT_METHOD_CONNECT && h->status < 300);
    if (no_body)
        CHECK(h->body_kind == WEFT_BODY_NONE);
    else
        CHECK(h->body_kind == WEFT_BODY_LENGTH || h->body_kind == WEFT_BODY_CHUNKED ||
              h->body_kind == WEFT_BODY_EOF);
    if (h->body_kind == WEFT_BODY_EOF)
        CHECK(!h->keep_alive);
}

static void check_same_head(const weft_http_head *a, const weft_http_head *b)
{
    CHECK(a->status == b->status && weft_str_eq(a->reason, b->reason));
    CHECK(a->version_minor == b->version_minor && a->nheaders == b->nheaders);
    for (uint32_t i = 0; i < a->nheaders; i++)
        CHECK(weft_str_eq(a->headers[i].name, b->headers[i].name) &&
              weft_str_eq(a->headers[i].value, b->headers[i].value));
    CHECK(a->body_kind == b->body_kind && a->content_length == b->content_length);
    CHECK(a->keep_alive == b->keep_alive && a->upgrade == b->upgrade);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const uint8_t opt = data[0];
    const int method = opt & 0x0f; /* includes values outside the enum */
    uint32_t seed = (uint32_t)data[1] * 2654435761u + 0x9e3779b9u;
    const char *msg = (const char *)data + 2;
    const size_t n = size - 2;
    weft_http_limits lim;
    weft_http_limits_default(&lim);
    if (opt & 0x80) {
        lim.max_request_line = 10u + ((opt >> 4) & 0x07) * 5u;
        lim.max_header_bytes = 24u + ((opt >> 4) & 0x07) * 37u;
        lim.max_headers = (opt >> 4) & 0x03;
    }

    char *buf = malloc(n ? n : 1);
    if (!buf)
        return 0;
    memcpy(buf, msg, n);
    weft_http_parser p1;
    weft_http_parser_init(&p1);
    int rc1 = weft_http_parse_response(&p1, &lim, buf, n, method, &h1);
    CHECK(rc1 == WEFT_EAGAIN || rc1 == WEFT_EPROTO || (rc1 > 0 && (size_t)rc1 <= n));
    if (rc1 == WEFT_EPROTO)
        CHECK(p1.status == 502 && p1.error != NULL);
    else
        CHECK(p1.status == 0);
    if (rc1 > 0) {
        check_head(&h1, buf, n, method);
        CHECK(weft_http_parse_response(&p1, &lim, buf, n, method, &h2) == rc1);
        check_same_head(&h1, &h2);
    }

    const uint32_t maxstep = (seed & 3) == 0 ? 1 : (seed & 3) == 1 ? 5 : 61;
    weft_http_parser p2;
    weft_http_parser_init(&p2);
    int rc2 = WEFT_EAGAIN;
    size_t have = 0;
    char *prev = NULL;
    for (;;) {
        size_t step = 1 + rnd(&seed) % maxstep;
        have = n - have < step ? n : have + step;
        char *piece = malloc(have ? have : 1);
        if (!piece)
            break;
        memcpy(piece, msg, have);
        free(prev);
        prev = piece;
        rc2 = weft_http_parse_response(&p2, &lim, piece, have, method, &h2);
        if (rc2 != WEFT_EAGAIN || have == n)
            break;
    }
    if (prev) {
        CHECK(rc2 == rc1 && p2.status == p1.status);
        if (rc2 > 0)
            check_same_head(&h1, &h2);
    }
    free(prev);
    free(buf);
    return 0;
}
