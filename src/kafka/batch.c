/*
 * batch.c — Kafka record batches (magic 2): CRC-32C, header parsing, the
 * broker's checks on a produced batch, offset patching, record iteration
 * and building. The byte layout is in batch.h.
 *
 * Design. A produced batch is stored byte for byte: the broker only patches
 * baseOffset and partitionLeaderEpoch, which lie outside the CRC. So the
 * whole cost of accepting a batch is one CRC pass plus, for an uncompressed
 * batch, one walk over the record framing; nothing is copied or allocated.
 * Records are handed out as slices into the caller's buffer. Every read goes
 * through a bounded cursor (rd) and every multi-byte field is assembled byte
 * by byte, so no input can make us read past n, load unaligned, shift a
 * signed value or overflow an int.
 *
 * kf_crc32c is weft_crc32c (src/core/crc32c.c: SSE4.2 when the CPU has it,
 * slicing-by-8 otherwise), shared with the registry journal.
 *
 * Error codes of kf_batch_validate follow what Kafka answers a Produce v3+
 * (ProduceRequest.validateRecords, the batch iterator ByteBufferLogInputStream,
 * UnifiedLog.analyzeAndValidateRecords, LogValidator, DefaultRecord.readFrom),
 * in the same order. The split matters to clients: CORRUPT_MESSAGE is
 * retriable (the bytes may have been damaged on the way), INVALID_RECORD is
 * not (sending the same bytes again cannot help).
 *   no complete batch in the bytes (n < 12, or shorter than declared)  87
 *   batchLength < 14, or magic outside 0..2                            2
 *   magic 0 or 1 (old formats are not allowed in Produce v3+)          87
 *   bytes after the batch: a second batch, or a partial one            87
 *     (2 if they look corrupt to the batch iterator, as above). Kafka
 *     silently drops a trailing partial batch; we refuse it.
 *   batch larger than max_bytes                                        10
 *   batchLength < 49 (no room for the header), CRC mismatch            2
 *   recordsCount < 1, lastOffsetDelta + 1 != recordsCount              87
 *   control batch, producerId >= 0 with baseSequence < 0               87
 *   compression codec 5..7 (Kafka fails with an unknown server error)  87
 *   any record malformed, fewer or more records than declared,
 *     bytes left over, offsetDelta != record index                     87
 * The offsetDelta check is ours: Kafka does not look at the deltas of an
 * uncompressed batch, but we store the batch as sent and consumers derive
 * offsets from the deltas, so they must be 0..count-1. Not done here,
 * because they need state or configuration the caller has: baseOffset == 0
 * (Kafka answers 87; harmless, we overwrite it), ZSTD with Produce < 7 (76),
 * timestamp bounds (32), keys on compacted topics (87), producer sequences.
 */
#include "kafka/batch.h"
#include "weft/crc32c.h"

#include <assert.h>
#include <string.h>

/* Byte offsets of the header fields (batch.h). */
enum {
    OFF_LENGTH = 8,
    OFF_EPOCH = 12,
    OFF_MAGIC = 16,
    OFF_CRC = 17,
    OFF_ATTRS = 21,
    OFF_LAST_DELTA = 23,
    OFF_BASE_TS = 27,
    OFF_MAX_TS = 35,
    OFF_PID = 43,
    OFF_PEPOCH = 51,
    OFF_BASE_SEQ = 53,
    OFF_COUNT = 57,
    /* smallest batchLength with room for the whole header */
    MIN_LENGTH = KF_BATCH_HEADER - KF_BATCH_LOG_OVERHEAD,
    /* smallest batchLength Kafka's batch iterator takes (a magic 0 message) */
    KAFKA_MIN_ENTRY = 14,
    CODEC_MAX = 4, /* zstd */
};

uint32_t kf_crc32c(uint32_t crc, const void *p, size_t n)
{
    return weft_crc32c(crc, p, n);
}

/* ------------------------------------------------------------------ */
/* big-endian fields */

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}
static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint64_t be64(const uint8_t *p)
{
    return (uint64_t)be32(p) << 32 | be32(p + 4);
}

static void put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static void put_be32(uint8_t *p, uint32_t v)
{
    put_be16(p, (uint16_t)(v >> 16));
    put_be16(p + 2, (uint16_t)v);
}
static void put_be64(uint8_t *p, uint64_t v)
{
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

/* ------------------------------------------------------------------ */
/* header */

/* p holds at least KF_BATCH_HEADER bytes. */
static void decode_header(const uint8_t *p, kf_batch *b)
{
    b->base_offset = (int64_t)be64(p);
    b->length = (int32_t)be32(p + OFF_LENGTH);
    b->leader_epoch = (int32_t)be32(p + OFF_EPOCH);
    b->magic = (int8_t)p[OFF_MAGIC];
    b->crc = be32(p + OFF_CRC);
    b->attributes = (int16_t)be16(p + OFF_ATTRS);
    b->last_offset_delta = (int32_t)be32(p + OFF_LAST_DELTA);
    b->base_timestamp = (int64_t)be64(p + OFF_BASE_TS);
    b->max_timestamp = (int64_t)be64(p + OFF_MAX_TS);
    b->producer_id = (int64_t)be64(p + OFF_PID);
    b->producer_epoch = (int16_t)be16(p + OFF_PEPOCH);
    b->base_sequence = (int32_t)be32(p + OFF_BASE_SEQ);
    b->records_count = (int32_t)be32(p + OFF_COUNT);
}

int64_t kf_batch_parse(const uint8_t *p, size_t n, kf_batch *out)
{
    /* judge the fields already in view, so a stream reader does not wait
     * for the rest of a batch it will reject anyway */
    if (n >= KF_BATCH_LOG_OVERHEAD && (int32_t)be32(p + OFF_LENGTH) < MIN_LENGTH)
        return WEFT_EPROTO;
    if (n > OFF_MAGIC && p[OFF_MAGIC] != 2)
        return WEFT_EPROTO;
    if (n < KF_BATCH_HEADER)
        return 0;
    int64_t size = (int64_t)(int32_t)be32(p + OFF_LENGTH) + KF_BATCH_LOG_OVERHEAD;
    if ((uint64_t)size > n)
        return 0;
    if (out)
        decode_header(p, out);
    return size;
}

bool kf_batch_crc_ok(const uint8_t *p, const kf_batch *b)
{
    if (b->length < MIN_LENGTH)
        return false;
    size_t covered = (size_t)b->length + KF_BATCH_LOG_OVERHEAD - OFF_ATTRS;
    return kf_crc32c(0, p + OFF_ATTRS, covered) == b->crc;
}

void kf_batch_patch(uint8_t *p, int64_t base_offset, int32_t leader_epoch)
{
    put_be64(p, (uint64_t)base_offset);
    put_be32(p + OFF_EPOCH, (uint32_t)leader_epoch);
}

/* ------------------------------------------------------------------ */
/* records: a bounded reader */

typedef struct rd {
    const uint8_t *p, *end;
} rd;

static size_t rd_left(const rd *r)
{
    return (size_t)(r->end - r->p);
}

/* Base-128 varint of at most maxlen bytes whose value fits in bits bits
 * (Kafka's ByteUtils reads 5 bytes for an int, 10 for a long). Overlong
 * encodings of small values are accepted, as Kafka does. */
static bool rd_uvarint(rd *r, unsigned maxlen, unsigned bits, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < maxlen && r->p < r->end; i++) {
        uint64_t b = *r->p++;
        unsigned shift = 7 * i;
        if (shift + 7 > bits && (b & 0x7f) >> (bits - shift) != 0)
            return false; /* value does not fit */
        v |= (b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return true;
        }
    }
    return false; /* too long, or ran out of bytes */
}

/* zigzag (protobuf sint) */
static bool rd_varint32(rd *r, int32_t *v)
{
    uint64_t u;
    if (!rd_uvarint(r, 5, 32, &u))
        return false;
    uint32_t z = (uint32_t)u;
    *v = (int32_t)((z >> 1) ^ (0u - (z & 1)));
    return true;
}

static bool rd_varint64(rd *r, int64_t *v)
{
    uint64_t u;
    if (!rd_uvarint(r, 10, 64, &u))
        return false;
    *v = (int64_t)((u >> 1) ^ (0 - (u & 1)));
    return true;
}

/* Length-prefixed bytes; length -1 is null where nullable. An empty field
 * still points into the buffer, so .p == NULL means null only. */
static bool rd_bytes(rd *r, bool nullable, weft_str *out)
{
    int32_t len;
    if (!rd_varint32(r, &len))
        return false;
    if (len < 0) {
        if (len != -1 || !nullable)
            return false;
        *out = WEFT_STR_NULL;
        return true;
    }
    if ((size_t)len > rd_left(r))
        return false;
    *out = (weft_str){(const char *)r->p, (size_t)len};
    r->p += len;
    return true;
}

/* A header key is a non-null string, its value nullable bytes. */
static bool rd_header(rd *r, kf_header *h)
{
    return rd_bytes(r, false, &h->key) && rd_bytes(r, true, &h->value);
}

int kf_record_next(const uint8_t *p, const kf_batch *b, size_t *pos, kf_record *rec)
{
    if (b->length < MIN_LENGTH || (b->attributes & KF_ATTR_CODEC_MASK) != 0)
        return WEFT_EPROTO;
    const uint8_t *recs = p + KF_BATCH_HEADER;
    size_t len = (size_t)b->length - MIN_LENGTH;
    if (*pos > len)
        return WEFT_EPROTO;
    if (*pos == len)
        return 0;
    rd r = {recs + *pos, recs + len};
    int32_t body;
    if (!rd_varint32(&r, &body) || body < 0 || (size_t)body > rd_left(&r))
        return WEFT_EPROTO;
    rd in = {r.p, r.p + body};
    kf_record out;
    int32_t offset_delta, nheaders;
    if (rd_left(&in) < 1)
        return WEFT_EPROTO;
    in.p++; /* record attributes: unused in magic 2 */
    if (!rd_varint64(&in, &out.timestamp_delta) || !rd_varint32(&in, &offset_delta) ||
        !rd_bytes(&in, true, &out.key) || !rd_bytes(&in, true, &out.value) ||
        !rd_varint32(&in, &nheaders) || nheaders < 0)
        return WEFT_EPROTO;
    if ((size_t)nheaders > rd_left(&in) / 2) /* a header takes at least 2 bytes */
        return WEFT_EPROTO;
    out.offset_delta = offset_delta;
    out.nheaders = (size_t)nheaders;
    out.headers = in.p;
    for (int32_t i = 0; i < nheaders; i++) {
        kf_header h;
        if (!rd_header(&in, &h))
            return WEFT_EPROTO;
    }
    out.headers_len = (size_t)(in.p - out.headers);
    if (in.p != in.end)
        return WEFT_EPROTO; /* the record's length disagrees with its fields */
    *pos = (size_t)(in.end - recs);
    *rec = out;
    return 1;
}

int kf_record_header(const kf_record *rec, size_t i, kf_header *out)
{
    if (i >= rec->nheaders || rec->headers == NULL)
        return WEFT_EPROTO;
    rd r = {rec->headers, rec->headers + rec->headers_len};
    kf_header h;
    for (size_t k = 0; k <= i; k++)
        if (!rd_header(&r, &h))
            return WEFT_EPROTO;
    *out = h;
    return 0;
}

/* ------------------------------------------------------------------ */
/* validation */

enum { FRAME_NONE, FRAME_CORRUPT, FRAME_BATCH };

/* What Kafka's batch iterator makes of the n bytes at p: no (complete)
 * batch, a corrupt one, or a batch of *size bytes. */
static int frame(const uint8_t *p, size_t n, size_t *size)
{
    if (n < KF_BATCH_LOG_OVERHEAD)
        return FRAME_NONE;
    int32_t len = (int32_t)be32(p + OFF_LENGTH);
    if (len < KAFKA_MIN_ENTRY)
        return FRAME_CORRUPT;
    if (n - KF_BATCH_LOG_OVERHEAD < (size_t)len)
        return FRAME_NONE;
    int8_t magic = (int8_t)p[OFF_MAGIC];
    if (magic < 0 || magic > 2)
        return FRAME_CORRUPT;
    *size = (size_t)len + KF_BATCH_LOG_OVERHEAD;
    return FRAME_BATCH;
}

/* The record walk of an uncompressed batch (LogValidator iterating it). */
static int validate_records(const uint8_t *p, const kf_batch *b)
{
    size_t pos = 0;
    kf_record rec;
    for (int32_t i = 0; i < b->records_count; i++)
        if (kf_record_next(p, b, &pos, &rec) != 1 || rec.offset_delta != i)
            return KF_ERR_INVALID_RECORD;
    if (pos != (size_t)b->length - MIN_LENGTH)
        return KF_ERR_INVALID_RECORD; /* records still remaining */
    return KF_ERR_NONE;
}

int kf_batch_validate(const uint8_t *p, size_t n, size_t max_bytes, kf_batch *out)
{
    kf_batch scratch;
    if (!out)
        out = &scratch;
    memset(out, 0, sizeof *out);

    size_t size = 0, next = 0;
    switch (frame(p, n, &size)) {
    case FRAME_NONE: return KF_ERR_INVALID_RECORD;
    case FRAME_CORRUPT: return KF_ERR_CORRUPT_MESSAGE;
    default: break;
    }
    if (p[OFF_MAGIC] != 2)
        return KF_ERR_INVALID_RECORD;
    if (size < n)
        return frame(p + size, n - size, &next) == FRAME_CORRUPT ? KF_ERR_CORRUPT_MESSAGE
                                                                 : KF_ERR_INVALID_RECORD;
    if (size >= KF_BATCH_HEADER)
        decode_header(p, out);
    if (size > max_bytes)
        return KF_ERR_MESSAGE_TOO_LARGE;
    if (size < KF_BATCH_HEADER || !kf_batch_crc_ok(p, out))
        return KF_ERR_CORRUPT_MESSAGE;

    if (out->records_count < 1 || (int64_t)out->last_offset_delta + 1 != out->records_count)
        return KF_ERR_INVALID_RECORD;
    if (out->attributes & KF_ATTR_CONTROL)
        return KF_ERR_INVALID_RECORD;
    if (out->producer_id >= 0 && out->base_sequence < 0)
        return KF_ERR_INVALID_RECORD;
    int codec = out->attributes & KF_ATTR_CODEC_MASK;
    if (codec > CODEC_MAX)
        return KF_ERR_INVALID_RECORD;
    if (codec != 0)
        return KF_ERR_NONE; /* stored as received */
    return validate_records(p, out);
}

/* ------------------------------------------------------------------ */
/* building */

static uint64_t zigzag(int64_t v)
{
    uint64_t u = (uint64_t)v;
    return (u << 1) ^ (0 - (u >> 63));
}

static size_t varint_len(int64_t v)
{
    uint64_t z = zigzag(v);
    size_t n = 1;
    while (z >= 0x80) {
        z >>= 7;
        n++;
    }
    return n;
}

static uint8_t *put_varint(uint8_t *w, int64_t v)
{
    uint64_t z = zigzag(v);
    while (z >= 0x80) {
        *w++ = (uint8_t)(z | 0x80);
        z >>= 7;
    }
    *w++ = (uint8_t)z;
    return w;
}

static uint8_t *put_bytes(uint8_t *w, weft_str s)
{
    if (s.p == NULL)
        return put_varint(w, -1);
    w = put_varint(w, (int64_t)s.n);
    if (s.n)
        memcpy(w, s.p, s.n);
    return w + s.n;
}

/* Adds a length-prefixed field's size to *sz, keeping *sz <= INT32_MAX (a
 * record's length is an int32 varint, and so is the batch's). */
static int add_field(uint64_t *sz, weft_str s)
{
    if (s.p != NULL && s.n > INT32_MAX)
        return WEFT_ETOOBIG;
    *sz += s.p == NULL ? 1 : varint_len((int64_t)s.n) + s.n;
    return *sz > INT32_MAX ? WEFT_ETOOBIG : 0;
}

/* Wrapping difference, as Kafka's long arithmetic: readers add it back. */
static int64_t ts_delta(int64_t ts, int64_t base)
{
    return (int64_t)((uint64_t)ts - (uint64_t)base);
}

static int record_body_len(const kf_record_in *r, size_t i, int64_t base_ts, uint64_t *len)
{
    if (r->nheaders > 0 && r->headers == NULL)
        return WEFT_EINVAL;
    if (r->nheaders > INT32_MAX)
        return WEFT_ETOOBIG;
    uint64_t sz = 1 + varint_len(ts_delta(r->timestamp, base_ts)) + varint_len((int64_t)i) +
                  varint_len((int64_t)r->nheaders);
    int rc = add_field(&sz, r->key);
    if (rc == 0)
        rc = add_field(&sz, r->value);
    for (size_t h = 0; rc == 0 && h < r->nheaders; h++) {
        if (r->headers[h].key.p == NULL)
            return WEFT_EINVAL; /* header keys are never null */
        rc = add_field(&sz, r->headers[h].key);
        if (rc == 0)
            rc = add_field(&sz, r->headers[h].value);
    }
    *len = sz;
    return rc;
}

static uint8_t *put_record(uint8_t *w, const kf_record_in *r, size_t i, int64_t base_ts,
                           uint64_t body_len)
{
    w = put_varint(w, (int64_t)body_len);
    *w++ = 0; /* attributes */
    w = put_varint(w, ts_delta(r->timestamp, base_ts));
    w = put_varint(w, (int64_t)i);
    w = put_bytes(w, r->key);
    w = put_bytes(w, r->value);
    w = put_varint(w, (int64_t)r->nheaders);
    for (size_t h = 0; h < r->nheaders; h++) {
        w = put_bytes(w, r->headers[h].key);
        w = put_bytes(w, r->headers[h].value);
    }
    return w;
}

int kf_batch_build(weft_buf *out, const kf_record_in *recs, size_t n)
{
    if (out == NULL || recs == NULL || n == 0)
        return WEFT_EINVAL;
    if (n > INT32_MAX)
        return WEFT_ETOOBIG;
    int64_t base_ts = recs[0].timestamp, max_ts = base_ts;
    uint64_t total = KF_BATCH_HEADER;
    for (size_t i = 0; i < n; i++) {
        uint64_t body;
        int rc = record_body_len(&recs[i], i, base_ts, &body);
        if (rc < 0)
            return rc;
        total += varint_len((int64_t)body) + body;
        if (total - KF_BATCH_LOG_OVERHEAD > INT32_MAX)
            return WEFT_ETOOBIG;
        if (recs[i].timestamp > max_ts)
            max_ts = recs[i].timestamp;
    }
    int rc = weft_buf_reserve(out, (size_t)total);
    if (rc < 0)
        return rc;

    uint8_t *b = (uint8_t *)weft_buf_wptr(out);
    put_be64(b, 0);
    put_be32(b + OFF_LENGTH, (uint32_t)(total - KF_BATCH_LOG_OVERHEAD));
    put_be32(b + OFF_EPOCH, 0); /* as kafka-python and librdkafka write; patched on append */
    b[OFF_MAGIC] = 2;
    put_be16(b + OFF_ATTRS, 0); /* uncompressed, CreateTime */
    put_be32(b + OFF_LAST_DELTA, (uint32_t)(n - 1));
    put_be64(b + OFF_BASE_TS, (uint64_t)base_ts);
    put_be64(b + OFF_MAX_TS, (uint64_t)max_ts);
    put_be64(b + OFF_PID, UINT64_MAX);      /* producerId -1 */
    put_be16(b + OFF_PEPOCH, UINT16_MAX);   /* producerEpoch -1 */
    put_be32(b + OFF_BASE_SEQ, UINT32_MAX); /* baseSequence -1 */
    put_be32(b + OFF_COUNT, (uint32_t)n);
    uint8_t *w = b + KF_BATCH_HEADER;
    for (size_t i = 0; i < n; i++) {
        uint64_t body = 0;
        (void)record_body_len(&recs[i], i, base_ts, &body); /* succeeded above */
        w = put_record(w, &recs[i], i, base_ts, body);
    }
    assert((uint64_t)(w - b) == total);
    put_be32(b + OFF_CRC, kf_crc32c(0, b + OFF_ATTRS, (size_t)total - OFF_ATTRS));
    weft_buf_commit(out, (size_t)total);
    return 0;
}
