/*
 * test_kafka_batch.c — unit tests for src/kafka/batch.c (record batches v2).
 *
 * Ground truth comes from outside our code: published CRC-32C vectors
 * (RFC 3720 B.4 and the "123456789" check value) and batches built by
 * kafka-python (data/kafka/ref_batches.h, made by data/kafka/gen_batches.py).
 * kf_batch_build must reproduce kafka-python's bytes exactly. Every input
 * handed to the parser is first copied into a malloc of exactly its size, so
 * ASan reports any read past the end. Mutated batches get a fresh CRC so
 * that each case reaches the check it is about.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "data/kafka/ref_batches.h"
#include "kafka/batch.h"
#include "weft/crc32c.h"

#define T0 1700000000000LL

/* ------------------------------------------------------------------ */
/* helpers */

static void wr_be(uint8_t *p, uint64_t v, int nbytes)
{
    for (int i = nbytes - 1; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static void recrc(uint8_t *b, size_t size)
{
    wr_be(b + 17, kf_crc32c(0, b + 21, size - 21), 4);
}

/* kf_batch_validate on an exact-size heap copy (ASan sees any over-read). */
static int validate_exact(const uint8_t *p, size_t n, size_t max, kf_batch *b)
{
    uint8_t *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    if (n)
        memcpy(copy, p, n);
    int rc = kf_batch_validate(copy, n, max, b);
    free(copy);
    return rc;
}

static int64_t parse_exact(const uint8_t *p, size_t n)
{
    uint8_t *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    if (n)
        memcpy(copy, p, n);
    kf_batch b;
    int64_t rc = kf_batch_parse(copy, n, &b);
    free(copy);
    return rc;
}

/* A header for count records in front of raw record bytes, CRC fixed. */
static size_t raw_batch(uint8_t *out, const uint8_t *recs, size_t rlen, int32_t count)
{
    memset(out, 0, KF_BATCH_HEADER);
    wr_be(out + 8, 49 + rlen, 4);
    out[16] = 2;
    wr_be(out + 23, (uint64_t)(int64_t)(count - 1), 4);
    wr_be(out + 27, (uint64_t)T0, 8);
    wr_be(out + 35, (uint64_t)T0, 8);
    wr_be(out + 43, UINT64_MAX, 8);
    wr_be(out + 51, 0xffff, 2);
    wr_be(out + 53, 0xffffffff, 4);
    wr_be(out + 57, (uint64_t)(int64_t)count, 4);
    memcpy(out + KF_BATCH_HEADER, recs, rlen);
    recrc(out, KF_BATCH_HEADER + rlen);
    return KF_BATCH_HEADER + rlen;
}

static weft_str S(const char *s)
{
    return weft_str_from(s);
}

/* Same bytes, and null exactly where want is null. */
static void assert_slice(weft_str got, weft_str want)
{
    assert_int_equal(got.p == NULL, want.p == NULL);
    assert_int_equal(got.n, want.n);
    if (got.n)
        assert_memory_equal(got.p, want.p, got.n);
}

/* The records of REF_PLAIN (gen_batches.py's PLAIN). */
static const kf_header plain_h0[] = {{{"h1", 2}, {"v1", 2}}};
static const kf_header plain_h2[] = {{{"a", 1}, {NULL, 0}}, {{"", 0}, {"", 0}}};
static const kf_header plain_h3[] = {{{"x", 1}, {"yyy", 3}}};
static const kf_record_in plain[] = {
    {{"k1", 2}, {"hello", 5}, plain_h0, 1, T0},
    {{NULL, 0}, {"world", 5}, NULL, 0, T0 + 5},
    {{"k3", 2}, {NULL, 0}, plain_h2, 2, T0 - 10},
    {{"", 0}, {"", 0}, plain_h3, 1, T0 + 100},
};

static void build_plain(weft_buf *out)
{
    weft_buf_init(out, 1 << 20);
    assert_int_equal(kf_batch_build(out, plain, WEFT_ARRAY_LEN(plain)), 0);
}

/* Checks the records of batch p against want[0..n). */
static void assert_records(const uint8_t *p, const kf_batch *b, const kf_record_in *want, size_t n)
{
    size_t pos = 0;
    kf_record rec;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(kf_record_next(p, b, &pos, &rec), 1);
        assert_int_equal(rec.offset_delta, i);
        assert_int_equal((int64_t)((uint64_t)b->base_timestamp + (uint64_t)rec.timestamp_delta),
                         want[i].timestamp);
        assert_slice(rec.key, want[i].key);
        assert_slice(rec.value, want[i].value);
        assert_int_equal(rec.nheaders, want[i].nheaders);
        for (size_t h = 0; h < rec.nheaders; h++) {
            kf_header hd;
            assert_int_equal(kf_record_header(&rec, h, &hd), 0);
            assert_slice(hd.key, want[i].headers[h].key);
            assert_slice(hd.value, want[i].headers[h].value);
        }
        kf_header hd;
        assert_int_equal(kf_record_header(&rec, rec.nheaders, &hd), WEFT_EPROTO);
    }
    assert_int_equal(kf_record_next(p, b, &pos, &rec), 0);
    assert_int_equal(pos, (size_t)b->length - 49);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

/* ------------------------------------------------------------------ */
/* CRC-32C */

static void test_crc_vectors(void **state)
{
    (void)state;
    uint8_t buf[32];
    assert_int_equal(kf_crc32c(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(weft_crc32c_portable(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(kf_crc32c(0, NULL, 0), 0);
    /* RFC 3720 B.4 */
    memset(buf, 0, sizeof buf);
    assert_int_equal(kf_crc32c(0, buf, 32), 0x8A9136AAu);
    memset(buf, 0xff, sizeof buf);
    assert_int_equal(kf_crc32c(0, buf, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)i;
    assert_int_equal(kf_crc32c(0, buf, 32), 0x46DD794Eu);
    assert_int_equal(weft_crc32c_portable(0, buf, 32), 0x46DD794Eu);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)(31 - i);
    assert_int_equal(kf_crc32c(0, buf, 32), 0x113FDB5Cu);
    /* incremental: any split gives the same value */
    for (size_t k = 0; k <= 9; k++) {
        assert_int_equal(kf_crc32c(kf_crc32c(0, "123456789", k), "123456789" + k, 9 - k),
                         0xE3069283u);
        assert_int_equal(
            weft_crc32c_portable(weft_crc32c_portable(0, "123456789", k), "123456789" + k, 9 - k),
            0xE3069283u);
    }
    /* the CRC kafka-python stored in its batch */
    assert_int_equal(kf_crc32c(0, REF_PLAIN + 21, sizeof REF_PLAIN - 21), 0x50a3ed3cu);
}

static void test_crc_hw_matches_sw(void **state)
{
    (void)state;
    if (!weft_crc32c_hw())
        print_message("no SSE4.2 on this CPU: kf_crc32c is the table path, compared to itself\n");
    size_t cap = (1 << 20) + 64;
    uint8_t *buf = malloc(cap);
    assert_non_null(buf);
    for (size_t i = 0; i < cap; i++)
        buf[i] = (uint8_t)rnd();
    for (size_t len = 0; len <= 300; len++)
        for (size_t align = 0; align < 16; align++) {
            uint32_t seed = (uint32_t)rnd();
            assert_int_equal(kf_crc32c(seed, buf + align, len),
                             weft_crc32c_portable(seed, buf + align, len));
        }
    /* around the interleaved path's 3 x 1024-byte chunks */
    for (size_t chunks = 1; chunks <= 3; chunks++)
        for (size_t len = chunks * 3072 - 9; len <= chunks * 3072 + 9; len++)
            for (size_t align = 0; align < 9; align++)
                assert_int_equal(kf_crc32c(7, buf + align, len),
                                 weft_crc32c_portable(7, buf + align, len));
    for (int k = 0; k < 200; k++) {
        size_t align = rnd() % 64, len = rnd() % (cap - 64);
        uint32_t seed = (uint32_t)rnd();
        assert_int_equal(kf_crc32c(seed, buf + align, len),
                         weft_crc32c_portable(seed, buf + align, len));
    }
    /* chained pieces of odd sizes equal one pass, on both paths */
    uint32_t whole = weft_crc32c_portable(0, buf + 3, 100000), hw = 0, sw = 0;
    for (size_t off = 0, step = 1; off < 100000; off += step, step = step * 3 % 1021 + 1) {
        size_t m = off + step > 100000 ? 100000 - off : step;
        hw = kf_crc32c(hw, buf + 3 + off, m);
        sw = weft_crc32c_portable(sw, buf + 3 + off, m);
    }
    assert_int_equal(hw, whole);
    assert_int_equal(sw, whole);
    free(buf);
}

/* ------------------------------------------------------------------ */
/* kafka-python's batches */

static void test_ref_plain_parse_validate_iterate(void **state)
{
    (void)state;
    kf_batch b;
    memset(&b, 0, sizeof b); /* compared whole with validate's below */
    assert_int_equal(kf_batch_parse(REF_PLAIN, sizeof REF_PLAIN, &b), sizeof REF_PLAIN);
    assert_int_equal(b.base_offset, 0);
    assert_int_equal(b.length, sizeof REF_PLAIN - 12);
    assert_int_equal(b.leader_epoch, 0);
    assert_int_equal(b.magic, 2);
    assert_int_equal(b.crc, 0x50a3ed3cu);
    assert_int_equal(b.attributes, 0);
    assert_int_equal(b.last_offset_delta, 3);
    assert_int_equal(b.base_timestamp, T0);
    assert_int_equal(b.max_timestamp, T0 + 100);
    assert_int_equal(b.producer_id, -1);
    assert_int_equal(b.producer_epoch, -1);
    assert_int_equal(b.base_sequence, -1);
    assert_int_equal(b.records_count, 4);
    assert_true(kf_batch_crc_ok(REF_PLAIN, &b));

    kf_batch v;
    assert_int_equal(validate_exact(REF_PLAIN, sizeof REF_PLAIN, 1 << 20, &v), KF_ERR_NONE);
    assert_memory_equal(&v, &b, sizeof b);
    assert_records(REF_PLAIN, &b, plain, WEFT_ARRAY_LEN(plain));

    assert_int_equal(validate_exact(REF_ONE, sizeof REF_ONE, 1 << 20, &v), KF_ERR_NONE);
    assert_int_equal(v.records_count, 1);
}

static void test_build_equals_kafka_python(void **state)
{
    (void)state;
    weft_buf out;
    build_plain(&out);
    assert_int_equal(weft_buf_used(&out), sizeof REF_PLAIN);
    assert_memory_equal(weft_buf_rptr(&out), REF_PLAIN, sizeof REF_PLAIN);
    weft_buf_release(&out);

    kf_record_in one = {{NULL, 0}, {"x", 1}, NULL, 0, T0};
    weft_buf_init(&out, 1 << 20);
    assert_int_equal(kf_batch_build(&out, &one, 1), 0);
    assert_int_equal(weft_buf_used(&out), sizeof REF_ONE);
    assert_memory_equal(weft_buf_rptr(&out), REF_ONE, sizeof REF_ONE);
    weft_buf_release(&out);
}

static void test_ref_idempotent_validates(void **state)
{
    (void)state;
    kf_batch b;
    assert_int_equal(validate_exact(REF_IDEMPOTENT, sizeof REF_IDEMPOTENT, 1 << 20, &b),
                     KF_ERR_NONE);
    assert_int_equal(b.producer_id, 1001);
    assert_int_equal(b.producer_epoch, 0);
    assert_int_equal(b.base_sequence, 7);
    assert_int_equal(b.records_count, 3);
}

static void test_compressed_passes_without_record_walk(void **state)
{
    (void)state;
    kf_batch b;
    assert_int_equal(validate_exact(REF_GZIP, sizeof REF_GZIP, 1 << 20, &b), KF_ERR_NONE);
    assert_int_equal(b.attributes & KF_ATTR_CODEC_MASK, 1);
    assert_int_equal(b.records_count, 20);
    size_t pos = 0;
    kf_record rec;
    assert_int_equal(kf_record_next(REF_GZIP, &b, &pos, &rec), WEFT_EPROTO);

    /* garbage where the records would be: still accepted for codecs 1-4 */
    uint8_t g[KF_BATCH_HEADER + 40];
    uint8_t junk[40];
    memset(junk, 0xff, sizeof junk);
    for (int codec = 0; codec <= 7; codec++) {
        size_t n = raw_batch(g, junk, sizeof junk, 20);
        wr_be(g + 21, (uint64_t)codec, 2);
        recrc(g, n);
        int want = codec >= 1 && codec <= 4 ? KF_ERR_NONE : KF_ERR_INVALID_RECORD;
        assert_int_equal(validate_exact(g, n, 1 << 20, NULL), want);
    }
}

/* ------------------------------------------------------------------ */
/* parse */

static void test_parse_needs_more_bytes(void **state)
{
    (void)state;
    for (size_t n = 0; n < sizeof REF_PLAIN; n++)
        assert_int_equal(parse_exact(REF_PLAIN, n), 0);
    assert_int_equal(parse_exact(REF_PLAIN, sizeof REF_PLAIN), sizeof REF_PLAIN);
    /* what follows the batch is the next one's business */
    uint8_t two[2 * sizeof REF_PLAIN];
    memcpy(two, REF_PLAIN, sizeof REF_PLAIN);
    memcpy(two + sizeof REF_PLAIN, REF_PLAIN, sizeof REF_PLAIN);
    assert_int_equal(parse_exact(two, sizeof two), sizeof REF_PLAIN);
    assert_int_equal(parse_exact(two, sizeof two - 1), sizeof REF_PLAIN);
}

static void test_parse_malformed(void **state)
{
    (void)state;
    uint8_t b[sizeof REF_PLAIN];
    static const uint32_t bad_len[] = {48, 0, 0xffffffffu, 0x80000000u};
    for (size_t i = 0; i < WEFT_ARRAY_LEN(bad_len); i++) {
        memcpy(b, REF_PLAIN, sizeof b);
        wr_be(b + 8, bad_len[i], 4);
        assert_int_equal(parse_exact(b, 12), WEFT_EPROTO); /* seen as soon as in view */
        assert_int_equal(parse_exact(b, sizeof b), WEFT_EPROTO);
    }
    static const uint8_t bad_magic[] = {0, 1, 3, 0x80, 0xff};
    for (size_t i = 0; i < WEFT_ARRAY_LEN(bad_magic); i++) {
        memcpy(b, REF_PLAIN, sizeof b);
        b[16] = bad_magic[i];
        assert_int_equal(parse_exact(b, 16), 0);
        assert_int_equal(parse_exact(b, 17), WEFT_EPROTO);
        assert_int_equal(parse_exact(b, sizeof b), WEFT_EPROTO);
    }
    /* length 49: a header and no records parses (validate refuses it) */
    memcpy(b, REF_PLAIN, sizeof b);
    wr_be(b + 8, 49, 4);
    assert_int_equal(parse_exact(b, 61), 61);
    /* a bad CRC is not parse's concern */
    memcpy(b, REF_PLAIN, sizeof b);
    b[sizeof b - 1] ^= 1;
    kf_batch kb;
    assert_int_equal(kf_batch_parse(b, sizeof b, &kb), sizeof b);
    assert_false(kf_batch_crc_ok(b, &kb));
}

/* ------------------------------------------------------------------ */
/* validate: framing */

static void test_validate_truncated(void **state)
{
    (void)state;
    for (size_t n = 0; n < sizeof REF_PLAIN; n++)
        assert_int_equal(validate_exact(REF_PLAIN, n, 1 << 20, NULL), KF_ERR_INVALID_RECORD);
}

static void test_validate_extra_bytes(void **state)
{
    (void)state;
    size_t n = sizeof REF_PLAIN;
    uint8_t b[2 * sizeof REF_PLAIN];
    memcpy(b, REF_PLAIN, n);
    memcpy(b + n, REF_PLAIN, n);
    /* two whole batches */
    assert_int_equal(validate_exact(b, 2 * n, 1 << 20, NULL), KF_ERR_INVALID_RECORD);
    /* a partial second batch (Kafka would drop it; we refuse) */
    for (size_t extra = 1; extra < n; extra++)
        assert_int_equal(validate_exact(b, n + extra, 1 << 20, NULL), KF_ERR_INVALID_RECORD);
    /* trailing bytes that Kafka's iterator calls corrupt: length < 14, bad magic */
    memset(b + n, 0, 12);
    assert_int_equal(validate_exact(b, n + 12, 1 << 20, NULL), KF_ERR_CORRUPT_MESSAGE);
    memcpy(b + n, REF_PLAIN, n);
    b[n + 16] = 9;
    assert_int_equal(validate_exact(b, 2 * n, 1 << 20, NULL), KF_ERR_CORRUPT_MESSAGE);
}

static void test_validate_length_field(void **state)
{
    (void)state;
    uint8_t b[sizeof REF_PLAIN];
    memcpy(b, REF_PLAIN, sizeof b);
    wr_be(b + 8, 13, 4); /* below Kafka's smallest entry */
    assert_int_equal(validate_exact(b, 25, 1 << 20, NULL), KF_ERR_CORRUPT_MESSAGE);
    wr_be(b + 8, 0xffffff00u, 4); /* negative */
    assert_int_equal(validate_exact(b, sizeof b, 1 << 20, NULL), KF_ERR_CORRUPT_MESSAGE);
    wr_be(b + 8, 40, 4); /* a whole batch, too short for the v2 header */
    assert_int_equal(validate_exact(b, 52, 1 << 20, NULL), KF_ERR_CORRUPT_MESSAGE);
    wr_be(b + 8, 0x7fffffffu, 4); /* longer than what is there */
    assert_int_equal(validate_exact(b, sizeof b, 1 << 20, NULL), KF_ERR_INVALID_RECORD);
    wr_be(b + 8, 49, 4); /* header only, zero records */
    wr_be(b + 57, 0, 4);
    wr_be(b + 23, 0xffffffffu, 4);
    recrc(b, 61);
    assert_int_equal(validate_exact(b, 61, 1 << 20, NULL), KF_ERR_INVALID_RECORD);
}

static void test_validate_magic(void **state)
{
    (void)state;
    uint8_t b[sizeof REF_PLAIN];
    static const struct {
        uint8_t magic;
        int rc;
    } cases[] = {
        {0, KF_ERR_INVALID_RECORD},     {1, KF_ERR_INVALID_RECORD},     {3, KF_ERR_CORRUPT_MESSAGE},
        {0x7f, KF_ERR_CORRUPT_MESSAGE}, {0xff, KF_ERR_CORRUPT_MESSAGE}, {2, KF_ERR_NONE},
    };
    for (size_t i = 0; i < WEFT_ARRAY_LEN(cases); i++) {
        memcpy(b, REF_PLAIN, sizeof b);
        b[16] = cases[i].magic;
        assert_int_equal(validate_exact(b, sizeof b, 1 << 20, NULL), cases[i].rc);
    }
}

static void test_validate_crc(void **state)
{
    (void)state;
    uint8_t b[sizeof REF_PLAIN];
    kf_batch kb;
    /* every byte from the CRC field to the end is covered */
    for (size_t i = 17; i < sizeof b; i++) {
        memcpy(b, REF_PLAIN, sizeof b);
        b[i] ^= 0x10;
        assert_int_equal(validate_exact(b, sizeof b, 1 << 20, &kb), KF_ERR_CORRUPT_MESSAGE);
    }
    /* base offset and leader epoch are not */
    memcpy(b, REF_PLAIN, sizeof b);
    for (size_t i = 0; i < 8; i++)
        b[i] = 0xa5;
    for (size_t i = 12; i < 16; i++)
        b[i] = 0x5a;
    assert_int_equal(validate_exact(b, sizeof b, 1 << 20, &kb), KF_ERR_NONE);
}

static void test_validate_too_large(void **state)
{
    (void)state;
    size_t n = sizeof REF_PLAIN;
    kf_batch kb;
    assert_int_equal(validate_exact(REF_PLAIN, n, n, &kb), KF_ERR_NONE);
    assert_int_equal(validate_exact(REF_PLAIN, n, n - 1, &kb), KF_ERR_MESSAGE_TOO_LARGE);
    assert_int_equal(kb.records_count, 4); /* header filled for the caller's log line */
    assert_int_equal(validate_exact(REF_PLAIN, n, 0, &kb), KF_ERR_MESSAGE_TOO_LARGE);
    /* checked before the CRC, as Kafka does */
    uint8_t b[sizeof REF_PLAIN];
    memcpy(b, REF_PLAIN, n);
    b[n - 1] ^= 1;
    assert_int_equal(validate_exact(b, n, n - 1, &kb), KF_ERR_MESSAGE_TOO_LARGE);
}

/* ------------------------------------------------------------------ */
/* validate: batch fields */

static int validate_mutated(size_t off, uint64_t v, int nbytes)
{
    uint8_t b[sizeof REF_PLAIN];
    memcpy(b, REF_PLAIN, sizeof b);
    wr_be(b + off, v, nbytes);
    recrc(b, sizeof b);
    return validate_exact(b, sizeof b, 1 << 20, NULL);
}

static void test_validate_counts(void **state)
{
    (void)state;
    /* REF_PLAIN: 4 records, lastOffsetDelta 3 */
    assert_int_equal(validate_mutated(23, 2, 4), KF_ERR_INVALID_RECORD); /* lastOffsetDelta */
    assert_int_equal(validate_mutated(23, 4, 4), KF_ERR_INVALID_RECORD);
    assert_int_equal(validate_mutated(23, 0x7fffffff, 4), KF_ERR_INVALID_RECORD);
    assert_int_equal(validate_mutated(57, 5, 4), KF_ERR_INVALID_RECORD); /* count */
    assert_int_equal(validate_mutated(57, 0, 4), KF_ERR_INVALID_RECORD);
    assert_int_equal(validate_mutated(57, 0x80000000u, 4), KF_ERR_INVALID_RECORD);

    /* both agree, but the records say otherwise */
    uint8_t b[sizeof REF_PLAIN];
    for (uint32_t count = 1; count <= 7; count++) {
        if (count == 4)
            continue;
        memcpy(b, REF_PLAIN, sizeof b);
        wr_be(b + 23, count - 1, 4);
        wr_be(b + 57, count, 4);
        recrc(b, sizeof b);
        assert_int_equal(validate_exact(b, sizeof b, 1 << 20, NULL), KF_ERR_INVALID_RECORD);
    }
    memcpy(b, REF_PLAIN, sizeof b);
    wr_be(b + 23, 0x7ffffffe, 4);
    wr_be(b + 57, 0x7fffffff, 4);
    recrc(b, sizeof b);
    assert_int_equal(validate_exact(b, sizeof b, 1 << 20, NULL), KF_ERR_INVALID_RECORD);
}

static void test_validate_control_and_producer(void **state)
{
    (void)state;
    assert_int_equal(validate_mutated(21, KF_ATTR_CONTROL, 2), KF_ERR_INVALID_RECORD);
    assert_int_equal(validate_mutated(21, KF_ATTR_CONTROL | KF_ATTR_TRANSACTIONAL, 2),
                     KF_ERR_INVALID_RECORD);
    assert_int_equal(validate_mutated(21, KF_ATTR_TRANSACTIONAL, 2), KF_ERR_NONE);
    /* producerId >= 0 needs baseSequence >= 0 */
    assert_int_equal(validate_mutated(43, 5, 8), KF_ERR_INVALID_RECORD);
    assert_int_equal(validate_mutated(43, 0, 8), KF_ERR_INVALID_RECORD);
    uint8_t b[sizeof REF_PLAIN];
    memcpy(b, REF_PLAIN, sizeof b);
    wr_be(b + 43, 5, 8);
    wr_be(b + 53, 0, 4);
    recrc(b, sizeof b);
    assert_int_equal(validate_exact(b, sizeof b, 1 << 20, NULL), KF_ERR_NONE);
    assert_int_equal(validate_mutated(43, (uint64_t)-7, 8), KF_ERR_NONE); /* no producer id */
    assert_int_equal(validate_mutated(53, 0x80000000u, 4), KF_ERR_NONE);  /* seq unused */
}

/* ------------------------------------------------------------------ */
/* validate: records */

#define B(...) (const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__})

typedef struct rec_case {
    const char *name;
    const uint8_t *recs;
    size_t len;
    int32_t count;
    int rc;
} rec_case;

/* A minimal record: length 6 | attrs | tsDelta 0 | offsetDelta | key null |
 * value null | 0 headers. */
static const rec_case rec_cases[] = {
    {"ok_minimal", B(0x0c, 0, 0, 0, 1, 1, 0), 1, KF_ERR_NONE},
    {"ok_two", B(0x0c, 0, 0, 0, 1, 1, 0, 0x0c, 0, 0, 2, 1, 1, 0), 2, KF_ERR_NONE},
    {"ok_overlong_varint", B(0x0e, 0, 0, 0x80, 0, 1, 1, 0), 1, KF_ERR_NONE},
    {"ok_ts_delta_int64_min",
     B(0x1e, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 1, 1, 0), 1,
     KF_ERR_NONE},
    {"ok_header_null_value", B(0x10, 0, 0, 0, 1, 1, 2, 0, 1), 1, KF_ERR_NONE},
    {"ok_empty_key_value", B(0x0c, 0, 0, 0, 0, 0, 0), 1, KF_ERR_NONE},
    {"varlong_11_bytes",
     B(0x20, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 1, 1, 0), 1,
     KF_ERR_INVALID_RECORD},
    {"varlong_overflow",
     B(0x1e, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 1, 1, 0), 1,
     KF_ERR_INVALID_RECORD},
    {"varint_6_bytes", B(0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 0, 0, 0, 1, 1, 0), 1,
     KF_ERR_INVALID_RECORD},
    {"varint_int32_overflow", B(0x14, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x1f, 1, 1, 0), 1,
     KF_ERR_INVALID_RECORD},
    {"length_negative", B(0x01, 0, 0, 0, 1, 1, 0), 1, KF_ERR_INVALID_RECORD},
    {"length_past_end", B(0x0e, 0, 0, 0, 1, 1, 0), 1, KF_ERR_INVALID_RECORD},
    {"length_zero", B(0x00), 1, KF_ERR_INVALID_RECORD},
    {"length_too_long", B(0x0e, 0, 0, 0, 1, 1, 0, 0xff), 1, KF_ERR_INVALID_RECORD},
    {"length_too_short", B(0x0a, 0, 0, 0, 1, 1, 0), 1, KF_ERR_INVALID_RECORD},
    {"key_len_minus2", B(0x0c, 0, 0, 0, 3, 1, 0), 1, KF_ERR_INVALID_RECORD},
    {"key_past_record", B(0x0c, 0, 0, 0, 0x0a, 1, 0), 1, KF_ERR_INVALID_RECORD},
    {"key_len_int32_min", B(0x14, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 0), 1,
     KF_ERR_INVALID_RECORD},
    {"value_len_minus2", B(0x0c, 0, 0, 0, 1, 3, 0), 1, KF_ERR_INVALID_RECORD},
    {"headers_negative", B(0x0c, 0, 0, 0, 1, 1, 1), 1, KF_ERR_INVALID_RECORD},
    {"headers_missing", B(0x10, 0, 0, 0, 1, 1, 4, 0, 1), 1, KF_ERR_INVALID_RECORD},
    {"headers_huge", B(0x14, 0, 0, 0, 1, 1, 0xfe, 0xff, 0xff, 0xff, 0x0f), 1,
     KF_ERR_INVALID_RECORD},
    {"header_key_null", B(0x10, 0, 0, 0, 1, 1, 2, 1, 1), 1, KF_ERR_INVALID_RECORD},
    {"header_value_minus2", B(0x10, 0, 0, 0, 1, 1, 2, 0, 3), 1, KF_ERR_INVALID_RECORD},
    {"varint_cut_at_end", B(0x0c, 0, 0, 0, 1, 1, 0x80), 1, KF_ERR_INVALID_RECORD},
    {"offset_delta_1", B(0x0c, 0, 0, 2, 1, 1, 0), 1, KF_ERR_INVALID_RECORD},
    {"offset_delta_gap", B(0x0c, 0, 0, 0, 1, 1, 0, 0x0c, 0, 0, 4, 1, 1, 0), 2,
     KF_ERR_INVALID_RECORD},
    {"offset_delta_repeat", B(0x0c, 0, 0, 0, 1, 1, 0, 0x0c, 0, 0, 0, 1, 1, 0), 2,
     KF_ERR_INVALID_RECORD},
    {"too_many_records", B(0x0c, 0, 0, 0, 1, 1, 0, 0x0c, 0, 0, 2, 1, 1, 0), 1,
     KF_ERR_INVALID_RECORD},
    {"too_few_records", B(0x0c, 0, 0, 0, 1, 1, 0), 2, KF_ERR_INVALID_RECORD},
    {"trailing_byte", B(0x0c, 0, 0, 0, 1, 1, 0, 0), 1, KF_ERR_INVALID_RECORD},
    {"no_records", B(0), 0, KF_ERR_INVALID_RECORD},
};

static void test_validate_records(void **state)
{
    (void)state;
    uint8_t b[KF_BATCH_HEADER + 64];
    int failed = 0;
    for (size_t i = 0; i < WEFT_ARRAY_LEN(rec_cases); i++) {
        const rec_case *c = &rec_cases[i];
        size_t rlen = c->count == 0 ? 0 : c->len;
        size_t n = raw_batch(b, c->recs, rlen, c->count);
        int rc = validate_exact(b, n, 1 << 20, NULL);
        if (rc != c->rc) {
            print_error("%s: validate returned %d, want %d\n", c->name, rc, c->rc);
            failed++;
        }
    }
    assert_int_equal(failed, 0);
}

static void test_record_next_edges(void **state)
{
    (void)state;
    uint8_t b[KF_BATCH_HEADER + 64];
    kf_batch kb;
    kf_record rec;
    size_t pos;
    /* offsetDelta INT32_MAX and tsDelta INT64_MIN decode exactly */
    static const uint8_t r[] = {0x1e, 0,    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                0xff, 0x01, 0xfe, 0xff, 0xff, 0xff, 0x0f, 1,    1,    0};
    uint8_t rr[sizeof r];
    memcpy(rr, r, sizeof r);
    rr[0] = (uint8_t)((sizeof r - 1) * 2);
    size_t n = raw_batch(b, rr, sizeof rr, 1);
    assert_int_equal(kf_batch_parse(b, n, &kb), n);
    pos = 0;
    assert_int_equal(kf_record_next(b, &kb, &pos, &rec), 1);
    assert_int_equal(rec.timestamp_delta, INT64_MIN);
    assert_int_equal(rec.offset_delta, INT32_MAX);
    assert_null(rec.key.p);
    assert_null(rec.value.p);
    assert_int_equal(rec.nheaders, 0);
    assert_int_equal(kf_record_next(b, &kb, &pos, &rec), 0);
    assert_int_equal(kf_record_next(b, &kb, &pos, &rec), 0); /* stays at the end */
    pos = n;                                                 /* beyond the records */
    assert_int_equal(kf_record_next(b, &kb, &pos, &rec), WEFT_EPROTO);
    assert_int_equal(validate_exact(b, n, 1 << 20, NULL), KF_ERR_INVALID_RECORD); /* delta */

    /* compressed batches are not walked */
    kb.attributes = 4;
    pos = 0;
    assert_int_equal(kf_record_next(b, &kb, &pos, &rec), WEFT_EPROTO);
    /* a header that is not one */
    kb.attributes = 0;
    kb.length = 10;
    assert_int_equal(kf_record_next(b, &kb, &pos, &rec), WEFT_EPROTO);
    /* a record whose headers were not filled by kf_record_next */
    kf_record empty = {0};
    empty.nheaders = 1;
    kf_header h;
    assert_int_equal(kf_record_header(&empty, 0, &h), WEFT_EPROTO);
}

/* ------------------------------------------------------------------ */
/* patch */

static void test_patch_keeps_crc(void **state)
{
    (void)state;
    weft_buf out;
    build_plain(&out);
    uint8_t *p = (uint8_t *)weft_buf_rptr(&out);
    size_t n = weft_buf_used(&out);
    kf_batch_patch(p, 1234567890123LL, 42);
    kf_batch b;
    assert_int_equal(kf_batch_parse(p, n, &b), n);
    assert_int_equal(b.base_offset, 1234567890123LL);
    assert_int_equal(b.leader_epoch, 42);
    assert_true(kf_batch_crc_ok(p, &b));
    assert_int_equal(validate_exact(p, n, 1 << 20, NULL), KF_ERR_NONE);
    assert_memory_equal(p + 16, REF_PLAIN + 16, n - 16); /* the rest is untouched */
    kf_batch_patch(p, -1, -1);
    assert_int_equal(kf_batch_parse(p, n, &b), n);
    assert_int_equal(b.base_offset, -1);
    assert_int_equal(b.leader_epoch, -1);
    assert_true(kf_batch_crc_ok(p, &b));
    weft_buf_release(&out);
}

/* ------------------------------------------------------------------ */
/* build */

static void test_build_round_trip_random(void **state)
{
    (void)state;
    enum { NREC = 64, MAXH = 4 };
    static const int64_t odd_ts[] = {INT64_MIN, INT64_MAX, -1, 0, T0};
    static char bytes[NREC][2][300];
    static char hbytes[NREC][MAXH][2][20];
    static kf_header hdrs[NREC][MAXH];
    static kf_record_in recs[NREC];
    for (int round = 0; round < 50; round++) {
        size_t n = 1 + rnd() % NREC;
        for (size_t i = 0; i < n; i++) {
            kf_record_in *r = &recs[i];
            weft_str *kv[2] = {&r->key, &r->value};
            for (int k = 0; k < 2; k++) {
                size_t len = rnd() % 300;
                for (size_t j = 0; j < len; j++)
                    bytes[i][k][j] = (char)rnd();
                *kv[k] = rnd() % 5 == 0 ? WEFT_STR_NULL : (weft_str){bytes[i][k], len};
            }
            r->nheaders = rnd() % (MAXH + 1);
            r->headers = r->nheaders ? hdrs[i] : NULL;
            for (size_t h = 0; h < r->nheaders; h++) {
                size_t kl = rnd() % 20, vl = rnd() % 20;
                memset(hbytes[i][h][0], 'a' + (int)h, kl);
                memset(hbytes[i][h][1], 'A' + (int)h, vl);
                hdrs[i][h].key = (weft_str){hbytes[i][h][0], kl};
                hdrs[i][h].value = rnd() % 4 == 0 ? WEFT_STR_NULL : (weft_str){hbytes[i][h][1], vl};
            }
            r->timestamp = rnd() % 8 == 0 ? odd_ts[rnd() % WEFT_ARRAY_LEN(odd_ts)]
                                          : T0 + (int64_t)(rnd() % 100000) - 50000;
        }
        weft_buf out;
        weft_buf_init(&out, 1 << 20);
        assert_int_equal(kf_batch_build(&out, recs, n), 0);
        kf_batch b;
        const uint8_t *p = (const uint8_t *)weft_buf_rptr(&out);
        assert_int_equal(validate_exact(p, weft_buf_used(&out), 1 << 20, &b), KF_ERR_NONE);
        assert_int_equal(b.records_count, n);
        assert_int_equal(b.base_timestamp, recs[0].timestamp);
        int64_t max = recs[0].timestamp;
        for (size_t i = 1; i < n; i++)
            max = recs[i].timestamp > max ? recs[i].timestamp : max;
        assert_int_equal(b.max_timestamp, max);
        assert_records(p, &b, recs, n);
        weft_buf_release(&out);
    }
}

static void test_build_many_and_append(void **state)
{
    (void)state;
    enum { N = 5000 };
    kf_record_in *recs = calloc(N, sizeof *recs);
    assert_non_null(recs);
    for (size_t i = 0; i < N; i++) {
        recs[i].value = S("event payload");
        recs[i].timestamp = T0 + (int64_t)i;
    }
    weft_buf out;
    weft_buf_init(&out, 1 << 20);
    assert_int_equal(kf_batch_build(&out, recs, N), 0);
    size_t first = weft_buf_used(&out);
    assert_int_equal(kf_batch_build(&out, plain, WEFT_ARRAY_LEN(plain)), 0); /* appends */
    assert_int_equal(weft_buf_used(&out), first + sizeof REF_PLAIN);
    const uint8_t *p = (const uint8_t *)weft_buf_rptr(&out);
    kf_batch b;
    assert_int_equal(kf_batch_parse(p, weft_buf_used(&out), &b), first);
    assert_int_equal(validate_exact(p, first, 1 << 20, &b), KF_ERR_NONE);
    assert_int_equal(b.records_count, N);
    assert_int_equal(b.last_offset_delta, N - 1);
    assert_records(p, &b, recs, N);
    assert_memory_equal(p + first, REF_PLAIN, sizeof REF_PLAIN);
    weft_buf_release(&out);
    free(recs);
}

static void test_build_errors(void **state)
{
    (void)state;
    weft_buf out;
    weft_buf_init(&out, sizeof REF_PLAIN - 1);
    assert_int_equal(kf_batch_build(&out, plain, 0), WEFT_EINVAL);
    assert_int_equal(kf_batch_build(&out, NULL, 1), WEFT_EINVAL);
    assert_int_equal(kf_batch_build(&out, plain, WEFT_ARRAY_LEN(plain)), WEFT_ETOOBIG);
    assert_int_equal(weft_buf_used(&out), 0);

    kf_record_in r = {S("k"), S("v"), NULL, 1, T0}; /* headers missing */
    assert_int_equal(kf_batch_build(&out, &r, 1), WEFT_EINVAL);
    kf_header h = {WEFT_STR_NULL, S("v")}; /* null header key */
    r.headers = &h;
    assert_int_equal(kf_batch_build(&out, &r, 1), WEFT_EINVAL);
    /* lengths beyond int32: refused before a byte is read */
    kf_record_in big = {{"k", (size_t)INT32_MAX + 1}, S("v"), NULL, 0, T0};
    assert_int_equal(kf_batch_build(&out, &big, 1), WEFT_ETOOBIG);
    big.key = S("k");
    big.value = (weft_str){"v", (size_t)INT32_MAX - 8}; /* record over int32 */
    assert_int_equal(kf_batch_build(&out, &big, 1), WEFT_ETOOBIG);
    kf_record_in halves[2] = {{S("k"), {"v", (size_t)1 << 30}, NULL, 0, T0},
                              {S("k"), {"v", (size_t)1 << 30}, NULL, 0, T0}};
    assert_int_equal(kf_batch_build(&out, halves, 2), WEFT_ETOOBIG); /* batch over int32 */
    assert_int_equal(weft_buf_used(&out), 0);
    weft_buf_release(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc_vectors),
        cmocka_unit_test(test_crc_hw_matches_sw),
        cmocka_unit_test(test_ref_plain_parse_validate_iterate),
        cmocka_unit_test(test_build_equals_kafka_python),
        cmocka_unit_test(test_ref_idempotent_validates),
        cmocka_unit_test(test_compressed_passes_without_record_walk),
        cmocka_unit_test(test_parse_needs_more_bytes),
        cmocka_unit_test(test_parse_malformed),
        cmocka_unit_test(test_validate_truncated),
        cmocka_unit_test(test_validate_extra_bytes),
        cmocka_unit_test(test_validate_length_field),
        cmocka_unit_test(test_validate_magic),
        cmocka_unit_test(test_validate_crc),
        cmocka_unit_test(test_validate_too_large),
        cmocka_unit_test(test_validate_counts),
        cmocka_unit_test(test_validate_control_and_producer),
        cmocka_unit_test(test_validate_records),
        cmocka_unit_test(test_record_next_edges),
        cmocka_unit_test(test_patch_keeps_crc),
        cmocka_unit_test(test_build_round_trip_random),
        cmocka_unit_test(test_build_many_and_append),
        cmocka_unit_test(test_build_errors),
    };
    return cmocka_run_group_tests_name("kafka_batch", tests, NULL, NULL);
}
