/*
 * fuzz_chunked.c — libFuzzer harness for weft_chunked_decode.
 *
 * Input layout: byte 0 picks the limits (high bit: tiny max_line and
 * max_trailer_bytes) and seeds the piece sizes, the rest is the body.
 * The body is decoded three ways — all at once (calling again with the
 * rest after each span), one byte per call, and in random pieces — and
 * each piece is a fresh heap copy, so the decoder can neither read past it
 * nor keep a pointer into it. All three must produce the same bytes, the
 * same outcome (done / error / needs more) and, when done, the same number
 * of bytes consumed. The return convention is checked on every call.
 */
#include "http/codec.h"

#include <stdlib.h>
#include <string.h>

#define CHECK(x)                 \
    do {                         \
        if (!(x))                \
            __builtin_trap();    \
    } while (0)

enum { OUT_DONE = 1, OUT_ERROR, OUT_MORE };

typedef struct result {
    int outcome;
    size_t consumed;
    size_t dn;
    char *data;
} result;

static uint32_t rnd(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

/* step 0: random piece sizes from *seed; otherwise fixed (SIZE_MAX = all). */
static void decode(const char *in, size_t n, size_t step, uint32_t *seed, uint8_t opt,
                   result *r)
{
    weft_chunked d;
    size_t pos = 0;
    weft_chunked_init(&d);
    if (opt & 0x80) {
        d.max_line = 1u + (opt & 0x0f);
        d.max_trailer_bytes = 2u + ((opt >> 4) & 0x07) * 3u;
    }
    r->outcome = OUT_MORE;
    r->dn = 0;
    while (pos < n) {
        size_t k = step ? step : 1 + rnd(seed) % 13;
        if (k > n - pos)
            k = n - pos;
        char *piece = malloc(k);
        if (!piece)
            __builtin_trap();
        memcpy(piece, in + pos, k);
        size_t used = (size_t)-1;
        weft_str data = {NULL, (size_t)-1};
        int rc = weft_chunked_decode(&d, piece, k, &used, &data);
        CHECK(used <= k);
        CHECK(data.n <= used);
        if (data.n) {
            CHECK(data.p >= piece && data.p + data.n <= piece + used);
            memcpy(r->data + r->dn, data.p, data.n);
            r->dn += data.n;
        }
        free(piece);
        pos += used;
        if (rc == WEFT_EPROTO) {
            CHECK(d.error != NULL && !d.done);
            r->outcome = OUT_ERROR;
            break;
        }
        if (rc == WEFT_EAGAIN) {
            CHECK(used == k && data.n == 0 && !d.done);
            continue;
        }
        CHECK(rc == 0);
        CHECK(data.n > 0 || d.done);
        if (d.done) {
            CHECK(data.n == 0);
            r->outcome = OUT_DONE;
            break;
        }
    }
    r->consumed = pos;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t opt = data[0];
    uint32_t seed = (uint32_t)opt * 2654435761u + 0x9e3779b9u;
    const char *in = (const char *)data + 1;
    const size_t n = size - 1;
    result a, b, c;
    a.data = malloc(n + 1);
    b.data = malloc(n + 1);
    c.data = malloc(n + 1);
    if (!a.data || !b.data || !c.data)
        __builtin_trap();
    decode(in, n, (size_t)-1, &seed, opt, &a);
    decode(in, n, 1, &seed, opt, &b);
    decode(in, n, 0, &seed, opt, &c);
    CHECK(a.outcome == b.outcome && a.outcome == c.outcome);
    CHECK(a.dn == b.dn && a.dn == c.dn);
    CHECK(memcmp(a.data, b.data, a.dn) == 0 && memcmp(a.data, c.data, a.dn) == 0);
    if (a.outcome == OUT_DONE)
        CHECK(a.consumed == b.consumed && a.consumed == c.consumed);
    if (a.outcome == OUT_MORE)
        CHECK(a.consumed == n && b.consumed == n && c.consumed == n);
    free(a.data);
    free(b.data);
    free(c.data);
    return 0;
}
