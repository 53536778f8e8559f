/*
 * batch.h — Kafka record batches (magic 2): CRC-32C, parsing, the broker's
 * validation of produced batches, offset patching, building and reading
 * records. No I/O.
 *
 * Layout (all big-endian; Kafka's DefaultRecordBatch):
 *   0 baseOffset i64 | 8 batchLength i32 (bytes after this field) |
 *   12 partitionLeaderEpoch i32 | 16 magic i8 (2) | 17 crc u32 (CRC-32C of
 *   bytes 21..end) | 21 attributes i16 | 23 lastOffsetDelta i32 |
 *   27 baseTimestamp i64 | 35 maxTimestamp i64 | 43 producerId i64 |
 *   51 producerEpoch i16 | 53 baseSequence i32 | 57 recordsCount i32 |
 *   61 records...
 * Record: length varint | attributes i8 | timestampDelta varlong |
 *   offsetDelta varint | keyLen varint (-1 null) | key | valueLen varint |
 *   value | headerCount varint | headers[keyLen varint, key, valueLen
 *   varint, value]. Varints are zigzag (protobuf sint).
 *
 * Ownership: functions read or patch caller memory; nothing is retained.
 * Threading: none (pure functions; the CRC table is built once, thread-safe).
 */
#ifndef WEFT_KAFKA_BATCH_H
#define WEFT_KAFKA_BATCH_H

#include "weft/buf.h"
#include "weft/weft.h"

#define KF_BATCH_HEADER 61 /* bytes before the first record */
#define KF_BATCH_LOG_OVERHEAD 12 /* baseOffset + batchLength */

/* Kafka error codes used by the validators (positive, as on the wire). */
enum {
    KF_ERR_NONE = 0,
    KF_ERR_CORRUPT_MESSAGE = 2,
    KF_ERR_MESSAGE_TOO_LARGE = 10,
    KF_ERR_INVALID_RECORD = 87,
    KF_ERR_UNSUPPORTED_FOR_MESSAGE_FORMAT = 43,
};

enum {
    KF_ATTR_CODEC_MASK = 0x7,
    KF_ATTR_LOG_APPEND_TIME = 0x8,
    KF_ATTR_TRANSACTIONAL = 0x10,
    KF_ATTR_CONTROL = 0x20,
};

/* CRC-32C (Castagnoli), incremental: crc = kf_crc32c(crc, p, n), start 0.
 * Uses the SSE4.2 instruction when the CPU has it, else slicing-by-8. */
uint32_t kf_crc32c(uint32_t crc, const void *p, size_t n);

typedef struct kf_batch {
    int64_t base_offset;
    int32_t length;        /* batchLength: the batch is length + 12 bytes */
    int32_t leader_epoch;
    int8_t magic;
    uint32_t crc;
    int16_t attributes;
    int32_t last_offset_delta;
    int64_t base_timestamp, max_timestamp;
    int64_t producer_id;
    int16_t producer_epoch;
    int32_t base_sequence;
    int32_t records_count;
} kf_batch;

/* Parse the batch header at p (n bytes available). Returns the batch's
 * total size (length + 12) if p holds a whole batch with a sane header
 * (magic 2, length >= 49), 0 if more bytes are needed (n too small for the
 * header or for the declared length), or WEFT_EPROTO if the header is
 * malformed (bad magic, negative or too small length). Does not check the
 * CRC. Fields already in view are judged before the rest has arrived (a bad
 * length with n >= 12, a bad magic with n >= 17), so a stream reader never
 * waits for a batch it would reject. *out is filled only when > 0. */
int64_t kf_batch_parse(const uint8_t *p, size_t n, kf_batch *out);

/* Whether the batch's CRC matches (bytes 21..end). b from kf_batch_parse. */
bool kf_batch_crc_ok(const uint8_t *p, const kf_batch *b);

/* The broker's validation of a Produce partition's records (Kafka's
 * LogValidator, for magic 2): exactly one batch filling all n bytes, magic
 * 2, CRC, lastOffsetDelta + 1 == recordsCount >= 1, no control batch from a
 * client, producerId >= 0 implies baseSequence >= 0, total size <=
 * max_bytes (else MESSAGE_TOO_LARGE). For uncompressed batches the records
 * are walked as well: every record's framing and varints must be well
 * formed, exactly recordsCount records, offsetDeltas 0..count-1 in order,
 * and nothing left over. Compressed batches are not decompressed (stored
 * as received); a codec outside 0..4 is refused (INVALID_RECORD).
 * Returns KF_ERR_NONE or a Kafka error code, as Kafka answers Produce v3+:
 * CORRUPT_MESSAGE (retriable) for a bad CRC, a batchLength too small for a
 * header, or a magic outside 0..2; INVALID_RECORD (not retriable) for no
 * complete batch, magic 0/1, bytes after the batch, and every count,
 * control, producer and record check; MESSAGE_TOO_LARGE (checked before the
 * CRC). The full table is at the top of batch.c. Fills *out (zeroed first,
 * then the header once the bytes hold one; out may be NULL). */
int kf_batch_validate(const uint8_t *p, size_t n, size_t max_bytes, kf_batch *out);

/* Assign the batch's base offset and leader epoch (bytes 0-7 and 12-15,
 * outside the CRC: the rest is stored byte for byte). */
void kf_batch_patch(uint8_t *p, int64_t base_offset, int32_t leader_epoch);

/* ---- records ---- */

typedef struct kf_header {
    weft_str key;
    weft_str value; /* value.p == NULL: null */
} kf_header;

typedef struct kf_record {
    int64_t offset_delta;
    int64_t timestamp_delta;
    weft_str key;   /* key.p == NULL: null key */
    weft_str value; /* value.p == NULL: null value */
    size_t nheaders;
    const uint8_t *headers; /* raw header section, read with kf_record_header */
    size_t headers_len;
} kf_record;

/* Iterate the records of an uncompressed batch (p, with b from parse).
 * Usage: size_t pos = 0; while (kf_record_next(p, &b, &pos, &rec) == 1) ...
 * pos is the byte offset of the next record from the first one. Returns 1
 * with *rec filled (slices point into p; an empty key or value has a
 * non-NULL p) and pos advanced, 0 at the end of the batch's bytes, or
 * WEFT_EPROTO on a malformed record or a compressed batch. The walk stops
 * at the end of the bytes, not at recordsCount: kf_batch_validate checks
 * that the two agree. */
int kf_record_next(const uint8_t *p, const kf_batch *b, size_t *pos, kf_record *rec);
/* Header i of rec (0 <= i < rec->nheaders). 0 or WEFT_EPROTO. */
int kf_record_header(const kf_record *rec, size_t i, kf_header *out);

/* Build an uncompressed batch (CreateTime, producerId -1, base offset 0 —
 * patched on append) of n records into out (appended). Record i gets
 * offsetDelta i and timestamp timestamps[i] (ms; baseTimestamp is the
 * first, maxTimestamp the largest). partitionLeaderEpoch is written as 0,
 * as kafka-python and librdkafka do. 0 or WEFT_ENOMEM / WEFT_ETOOBIG (out's
 * limit, or a length beyond Kafka's int32 fields), or WEFT_EINVAL (n == 0,
 * a header with a null key, or nheaders > 0 with headers NULL). Nothing
 * is appended on error. */
typedef struct kf_record_in {
    weft_str key, value; /* .p == NULL: null */
    const kf_header *headers;
    size_t nheaders;
    int64_t timestamp;
} kf_record_in;
int kf_batch_build(weft_buf *out, const kf_record_in *recs, size_t n);

#endif
