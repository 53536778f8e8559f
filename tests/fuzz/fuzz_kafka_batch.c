/*
 * fuzz_kafka_batch.c — libFuzzer harness for Kafka record batches
 * (src/kafka/batch.c).
 *
 * Each input is given, as an exact-size heap copy, to kf_batch_parse and to
 * kf_batch_validate (with a large limit and with a small one taken from the
 * input), then a second time with its CRC recomputed: random bytes almost
 * never carry a right CRC-32C, and without the fix-up the fuzzer would not
 * get past it to the record walk. The records of any parsed uncompressed
 * batch are walked whether or not it validates (the walk must end, within
 * the batch). When a batch is accepted uncompressed, every record and
 * header is read and the records are built again with kf_batch_build: the
 * rebuilt batch must validate and read back the same records. Violations
 * trap.
 */
#include "kafka/batch.h"

#include <stdlib.h>
#include <string.h>

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x))                                                                                  \
            __builtin_trap();                                                                      \
    } while (0)

enum { MAX_BATCH = 1 << 20 };

static bool within(weft_str s, const uint8_t *p, size_t n)
{
    if (s.p == NULL)
        return s.n == 0;
    const uint8_t *q = (const uint8_t *)s.p;
    return q >= p && q <= p + n && s.n <= (size_t)(p + n - q);
}

static bool same(weft_str a, weft_str b)
{
    return (a.p == NULL) == (b.p == NULL) && weft_str_eq(a, b);
}

/* Walks the records of a parsed uncompressed batch; returns how many were
 * read before the end (>= 0) or the walk's error. */
static long walk(const uint8_t *p, size_t n, const kf_batch *b)
{
    size_t pos = 0, prev = 0;
    kf_record rec;
    long count = 0;
    int rc;
    while ((rc = kf_record_next(p, b, &pos, &rec)) == 1) {
        CHECK(pos > prev && pos <= (size_t)b->length - 49); /* progress, inside */
        prev = pos;
        CHECK(within(rec.key, p, n) && within(rec.value, p, n));
        CHECK(rec.headers >= p && rec.headers + rec.headers_len <= p + n);
        for (size_t h = 0; h < rec.nheaders; h++) {
            kf_header hd;
            CHECK(kf_record_header(&rec, h, &hd) == 0);
            CHECK(hd.key.p != NULL && within(hd.key, p, n) && within(hd.value, p, n));
        }
        count++;
    }
    CHECK(rc == 0 || rc == WEFT_EPROTO);
    return rc == 0 ? count : rc;
}

/* Rebuilds an accepted uncompressed batch from its records and checks that
 * the copy validates and reads back the same. */
static void rebuild(const uint8_t *p, const kf_batch *b)
{
    size_t n = (size_t)b->records_count, pos = 0, nh = 0;
    kf_record *recs = calloc(n, sizeof *recs);
    kf_record_in *in = calloc(n, sizeof *in);
    CHECK(recs && in);
    for (size_t i = 0; i < n; i++) {
        CHECK(kf_record_next(p, b, &pos, &recs[i]) == 1);
        nh += recs[i].nheaders;
    }
    kf_header *hdrs = calloc(nh ? nh : 1, sizeof *hdrs);
    CHECK(hdrs);
    for (size_t i = 0, k = 0; i < n; i++) {
        in[i].key = recs[i].key;
        in[i].value = recs[i].value;
        in[i].timestamp =
            (int64_t)((uint64_t)b->base_timestamp + (uint64_t)recs[i].timestamp_delta);
        in[i].headers = hdrs + k;
        in[i].nheaders = recs[i].nheaders;
        for (size_t h = 0; h < recs[i].nheaders; h++)
            CHECK(kf_record_header(&recs[i], h, &hdrs[k++]) == 0);
    }
    weft_buf out;
    weft_buf_init(&out, (size_t)4 * MAX_BATCH);
    CHECK(kf_batch_build(&out, in, n) == 0);
    const uint8_t *q = (const uint8_t *)weft_buf_rptr(&out);
    kf_batch c;
    CHECK(kf_batch_validate(q, weft_buf_used(&out), (size_t)4 * MAX_BATCH, &c) == KF_ERR_NONE);
    CHECK(c.records_count == b->records_count && c.base_timestamp == in[0].timestamp);
    pos = 0;
    for (size_t i = 0, k = 0; i < n; i++) {
        kf_record r;
        CHECK(kf_record_next(q, &c, &pos, &r) == 1);
        CHECK(same(r.key, in[i].key) && same(r.value, in[i].value));
        CHECK((int64_t)((uint64_t)c.base_timestamp + (uint64_t)r.timestamp_delta) ==
              in[i].timestamp);
        CHECK(r.nheaders == in[i].nheaders);
        for (size_t h = 0; h < r.nheaders; h++, k++) {
            kf_header hd;
            CHECK(kf_record_header(&r, h, &hd) == 0);
            CHECK(same(hd.key, hdrs[k].key) && same(hd.value, hdrs[k].value));
        }
    }
    weft_buf_release(&out);
    free(hdrs);
    free(in);
    free(recs);
}

static void check(const uint8_t *p, size_t n, size_t small_max)
{
    kf_batch pb, vb;
    memset(&pb, 0, sizeof pb); /* compared whole with vb below, padding too */
    int64_t size = kf_batch_parse(p, n, &pb);
    CHECK(size == 0 || size == WEFT_EPROTO || (size >= KF_BATCH_HEADER && (size_t)size <= n));
    if (size > 0 && (pb.attributes & KF_ATTR_CODEC_MASK) == 0)
        (void)walk(p, (size_t)size, &pb);

    int rc = kf_batch_validate(p, n, small_max, &vb);
    CHECK(rc == KF_ERR_NONE || rc == KF_ERR_CORRUPT_MESSAGE || rc == KF_ERR_INVALID_RECORD ||
          rc == KF_ERR_MESSAGE_TOO_LARGE);
    CHECK(rc != KF_ERR_NONE || n <= small_max);

    rc = kf_batch_validate(p, n, MAX_BATCH, &vb);
    CHECK(rc != KF_ERR_MESSAGE_TOO_LARGE || n > MAX_BATCH);
    if (rc != KF_ERR_NONE)
        return;
    CHECK(size == (int64_t)n && memcmp(&pb, &vb, sizeof pb) == 0);
    CHECK(kf_batch_crc_ok(p, &vb) && vb.magic == 2 && vb.records_count >= 1);
    CHECK(vb.last_offset_delta == vb.records_count - 1);
    CHECK((vb.attributes & KF_ATTR_CONTROL) == 0);
    if ((vb.attributes & KF_ATTR_CODEC_MASK) != 0)
        return;
    CHECK(walk(p, n, &vb) == vb.records_count);
    rebuild(p, &vb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > MAX_BATCH + 64)
        return 0;
    uint8_t *p = malloc(size ? size : 1);
    CHECK(p);
    if (size)
        memcpy(p, data, size);
    size_t small_max = size ? (size_t)data[0] * 4 : 0;
    check(p, size, small_max);

    /* again with a right CRC over what the header says is the batch */
    if (size >= KF_BATCH_HEADER) {
        uint32_t len = (uint32_t)p[8] << 24 | (uint32_t)p[9] << 16 | (uint32_t)p[10] << 8 | p[11];
        size_t end = len <= size - 12 ? len + 12 : size;
        if (end > 21) {
            uint32_t crc = kf_crc32c(0, p + 21, end - 21);
            for (int i = 0; i < 4; i++)
                p[17 + i] = (uint8_t)(crc >> (24 - 8 * i));
            check(p, size, small_max);
        }
    }
    free(p);
    return 0;
}
