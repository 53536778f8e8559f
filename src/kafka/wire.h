/*
 * wire.h — Kafka protocol primitives (non-flexible versions only): a
 * bounds-checked reader over a request and a writer into a weft_buf.
 *
 * Reader: every read checks the remaining length; the first failure sets
 * r->err and every later read returns zero values, so a decoder reads a
 * whole request and checks kf_ok() once at the end (SQLite's sticky-error
 * style). Array counts are checked against the bytes left (each element
 * takes at least one byte), so a hostile count cannot drive an allocation.
 *
 * Writer: appends big-endian values; lengths that are not known in advance
 * are reserved with kf_w_mark() and filled with kf_w_patch_i32(). Writes
 * record allocation failure in w->err (checked once when the response is
 * complete).
 *
 * Ownership: strings read are slices into the request buffer.
 */
#ifndef WEFT_KAFKA_WIRE_H
#define WEFT_KAFKA_WIRE_H

#include "weft/buf.h"
#include "weft/weft.h"

#include <string.h>

typedef struct kf_reader {
    const uint8_t *p;
    size_t n, off;
    bool err;
} kf_reader;

static inline void kf_reader_init(kf_reader *r, const void *p, size_t n)
{
    r->p = p;
    r->n = n;
    r->off = 0;
    r->err = false;
}

static inline bool kf_ok(const kf_reader *r) { return !r->err; }
static inline size_t kf_left(const kf_reader *r) { return r->err ? 0 : r->n - r->off; }

static inline const uint8_t *kf_take(kf_reader *r, size_t k)
{
    if (r->err || r->n - r->off < k) {
        r->err = true;
        return NULL;
    }
    const uint8_t *p = r->p + r->off;
    r->off += k;
    return p;
}

static inline int8_t kf_i8(kf_reader *r)
{
    const uint8_t *p = kf_take(r, 1);
    return p ? (int8_t)p[0] : 0;
}

static inline int16_t kf_i16(kf_reader *r)
{
    const uint8_t *p = kf_take(r, 2);
    return p ? (int16_t)(uint16_t)((unsigned)p[0] << 8 | p[1]) : 0;
}

static inline int32_t kf_i32(kf_reader *r)
{
    const uint8_t *p = kf_take(r, 4);
    return p ? (int32_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3])
             : 0;
}

static inline int64_t kf_i64(kf_reader *r)
{
    const uint8_t *p = kf_take(r, 8);
    if (!p)
        return 0;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return (int64_t)v;
}

/* STRING (int16 length); nullable: -1 gives {NULL, 0} and *is_null. */
static inline weft_str kf_str(kf_reader *r)
{
    int16_t n = kf_i16(r);
    if (n < 0) {
        if (n != -1)
            r->err = true;
        return WEFT_STR_NULL;
    }
    const uint8_t *p = kf_take(r, (size_t)n);
    return p ? (weft_str){(const char *)p, (size_t)n} : WEFT_STR_NULL;
}

/* BYTES / RECORDS (int32 length); -1 = null. */
static inline weft_str kf_bytes(kf_reader *r)
{
    int32_t n = kf_i32(r);
    if (n < 0) {
        if (n != -1)
            r->err = true;
        return WEFT_STR_NULL;
    }
    const uint8_t *p = kf_take(r, (size_t)n);
    return p ? (weft_str){(const char *)p, (size_t)n} : WEFT_STR_NULL;
}

/* ARRAY count; -1 (null) is returned as -1 when nullable, else an error.
 * A count larger than the bytes left (elements take >= min_elem bytes) is
 * an error. */
static inline int32_t kf_array(kf_reader *r, size_t min_elem, bool nullable)
{
    int32_t n = kf_i32(r);
    if (n == -1 && nullable)
        return -1;
    if (n < 0 || (min_elem && (size_t)n > kf_left(r) / min_elem)) {
        r->err = true;
        return 0;
    }
    return r->err ? 0 : n;
}

/* ---- writer ---- */

typedef struct kf_writer {
    weft_buf *b;
    bool err;
} kf_writer;

static inline void kf_w_raw(kf_writer *w, const void *p, size_t n)
{
    if (!w->err && weft_buf_append(w->b, p, n) < 0)
        w->err = true;
}

static inline void kf_w_i8(kf_writer *w, int8_t v) { kf_w_raw(w, &v, 1); }

static inline void kf_w_i16(kf_writer *w, int16_t v)
{
    uint8_t b[2] = {(uint8_t)((uint16_t)v >> 8), (uint8_t)v};
    kf_w_raw(w, b, 2);
}

static inline void kf_w_i32(kf_writer *w, int32_t v)
{
    uint32_t u = (uint32_t)v;
    uint8_t b[4] = {(uint8_t)(u >> 24), (uint8_t)(u >> 16), (uint8_t)(u >> 8), (uint8_t)u};
    kf_w_raw(w, b, 4);
}

static inline void kf_w_i64(kf_writer *w, int64_t v)
{
    uint64_t u = (uint64_t)v;
    uint8_t b[8];
    for (int i = 7; i >= 0; i--, u >>= 8)
        b[i] = (uint8_t)u;
    kf_w_raw(w, b, 8);
}

/* STRING; s.p == NULL writes null (-1). */
static inline void kf_w_str(kf_writer *w, weft_str s)
{
    if (!s.p) {
        kf_w_i16(w, -1);
        return;
    }
    size_t n = s.n > 32767 ? 32767 : s.n;
    kf_w_i16(w, (int16_t)n);
    kf_w_raw(w, s.p, n);
}

static inline void kf_w_cstr(kf_writer *w, const char *s) { kf_w_str(w, weft_str_from(s)); }

/* BYTES; p == NULL writes null (-1). */
static inline void kf_w_bytes(kf_writer *w, const void *p, size_t n)
{
    if (!p) {
        kf_w_i32(w, -1);
        return;
    }
    kf_w_i32(w, (int32_t)n);
    kf_w_raw(w, p, n);
}

/* Reserve an int32 to fill later; returns its position in the buffer. */
static inline size_t kf_w_mark(kf_writer *w)
{
    size_t at = weft_buf_used(w->b);
    kf_w_i32(w, 0);
    return at;
}

/* Overwrite n bytes at `at` (already written) with v, big-endian. */
static inline void kf_w_patch(kf_writer *w, size_t at, uint64_t v, size_t n)
{
    if (w->err)
        return;
    uint8_t *p = (uint8_t *)weft_buf_rptr(w->b) + at;
    for (size_t i = n; i-- > 0; v >>= 8)
        p[i] = (uint8_t)v;
}

static inline void kf_w_patch_i16(kf_writer *w, size_t at, int16_t v)
{
    kf_w_patch(w, at, (uint16_t)v, 2);
}

static inline void kf_w_patch_i32(kf_writer *w, size_t at, int32_t v)
{
    kf_w_patch(w, at, (uint32_t)v, 4);
}

static inline void kf_w_patch_i64(kf_writer *w, size_t at, int64_t v)
{
    kf_w_patch(w, at, (uint64_t)v, 8);
}

#endif
