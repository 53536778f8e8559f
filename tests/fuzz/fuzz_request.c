/*
 * fuzz_request.c — libFuzzer harness for weft_http_parse_request.
 *
 * Input layout: byte 0 picks the limits (high bit set: tiny limits, so the
 * 414/431 paths are reached), byte 1 seeds the piece-size generator, the
 * rest is the message. The message is parsed once in one call, then again
 * fed in random-sized pieces, each call seeing a fresh heap copy of the
 * prefix so that a pointer kept across calls is a use-after-free for ASan.
 * Both runs must agree exactly (rc, status, every field of the head):
 * resumption is an invariant of our own code, so a mismatch traps. A
 * successful head is parsed again to check idempotence, and a chunked
 * body that follows is pushed through the chunked decoder.
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

static bool same(weft_str a, weft_str b)
{
    return weft_str_eq(a, b);
}

static bool inside(weft_str s, const char *b, size_t n)
{
    if (s.n == 0)
        return true;
    if (s.n == 1 && s.p[0] == '/' && (s.p < b || s.p >= b + n))
        return true; /* the static "/" of an absolute-form target */
    return s.p >= b && s.p + s.n <= b + n;
}

static void check_head(const weft_http_head *h, const char *b, size_t n)
{
    CHECK(h->nheaders <= WEFT_HTTP_MAX_HEADERS_CAP);
    for (uint32_t i = 0; i < h->nheaders; i++) {
        CHECK(h->headers[i].name.n > 0);
        CHECK(inside(h->headers[i].name, b, n));
        CHECK(inside(h->headers[i].value, b, n));
    }
    CHECK(inside(h->target, b, n) && inside(h->path, b, n) && inside(h->query, b, n));
    CHECK(inside(h->authority, b, n) && inside(h->host, b, n));
    CHECK(h->method > WEFT_METHOD_UNKNOWN && h->method <= WEFT_METHOD_PATCH);
    CHECK(h->method != WEFT_METHOD_CONNECT);
    CHECK(h->version_minor == 0 || h->version_minor == 1);
    CHECK(h->body_kind == WEFT_BODY_NONE || h->body_kind == WEFT_BODY_LENGTH ||
          h->body_kind == WEFT_BODY_CHUNKED);
    CHECK(h->target.n > 0 && h->path.n > 0);
}

static void check_same_head(const weft_http_head *a, const weft_http_head *b)
{
    CHECK(a->method == b->method && same(a->method_str, b->method_str));
    CHECK(same(a->target, b->target) && same(a->path, b->path));
    CHECK(same(a->query, b->query) && same(a->authority, b->authority));
    CHECK(same(a->host, b->host));
    CHECK(a->version_minor == b->version_minor && a->nheaders == b->nheaders);
    for (uint32_t i = 0; i < a->nheaders; i++)
        CHECK(same(a->headers[i].name, b->headers[i].name) &&
              same(a->headers[i].value, b->headers[i].value));
    CHECK(a->body_kind == b->body_kind && a->content_length == b->content_length);
    CHECK(a->keep_alive == b->keep_alive && a->expect_continue == b->expect_continue &&
          a->upgrade == b->upgrade);
}

static bool status_ok(int st)
{
    return st == 400 || st == 414 || st == 431 || st == 501 || st == 505 || st == 417;
}

static void drain_chunked(const char *b, size_t n)
{
    weft_chunked d;
    size_t pos = 0;
    weft_chunked_init(&d);
    while (pos < n) {
        size_t used;
        weft_str data;
        int rc = weft_chunked_decode(&d, b + pos, n - pos, &used, &data);
        CHECK(used <= n - pos);
        pos += used;
        if (rc != 0 || d.done)
            break;
        CHECK(data.n > 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const uint8_t opt = data[0];
    uint32_t seed = (uint32_t)data[1] * 2654435761u + 0x9e3779b9u;
    const char *msg = (const char *)data + 2;
    const size_t n = size - 2;
    weft_http_limits lim;
    weft_http_limits_default(&lim);
    if (opt & 0x80) {
        lim.max_request_line = 4u + (opt & 0x0f) * 6u;
        lim.max_header_bytes = 16u + ((opt >> 4) & 0x07) * 40u;
        lim.max_headers = opt & 0x07;
    } else if (opt & 0x40) {
        lim.max_headers = 1000; /* above the array cap: must clamp */
    }

    /* one shot */
    char *buf = malloc(n ? n : 1);
    if (!buf)
        return 0;
    memcpy(buf, msg, n);
    weft_http_parser p1;
    weft_http_parser_init(&p1);
    int rc1 = weft_http_parse_request(&p1, &lim, buf, n, &h1);
    CHECK(rc1 == WEFT_EAGAIN || rc1 == WEFT_EPROTO || (rc1 > 0 && (size_t)rc1 <= n));
    if (rc1 == WEFT_EPROTO)
        CHECK(status_ok(p1.status) && p1.error != NULL);
    else
        CHECK(p1.status == 0);
    if (rc1 > 0) {
        check_head(&h1, buf, n);
        CHECK(rc1 >= 2 && buf[rc1 - 1] == '\n' && buf[rc1 - 2] == '\r');
        /* idempotent: the same bytes again give the same head */
        CHECK(weft_http_parse_request(&p1, &lim, buf, n, &h2) == rc1);
        check_same_head(&h1, &h2);
        if (h1.body_kind == WEFT_BODY_CHUNKED)
            drain_chunked(buf + rc1, n - (size_t)rc1);
    }

    /* in pieces, each call on a fresh copy of the prefix */
    const uint32_t maxstep = (seed & 3) == 0 ? 1 : (seed & 3) == 1 ? 7 : 97;
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
        rc2 = weft_http_parse_request(&p2, &lim, piece, have, &h2);
        if (rc2 != WEFT_EAGAIN || have == n)
            break;
        CHECK(p2.scanned <= have);
    }
    if (prev) {
        CHECK(rc2 == rc1);
        CHECK(p2.status == p1.status);
        if (rc2 > 0) {
            check_head(&h2, prev, have);
            check_same_head(&h1, &h2);
        }
    }
    free(prev);
    free(buf);
    return 0;
}
