/*
 * kapi.c — the Kafka APIs of `weft log` other than consumer groups:
 * ApiVersions, Metadata, Produce, Fetch, ListOffsets, CreateTopics,
 * DeleteTopics, InitProducerId.
 *
 * Versions: only non-flexible versions are advertised (the table below, as
 * docs/eventlog.md explains); lower versions of an API that we advertise
 * but do not implement (Produce 0-2, Fetch 0-3: old message formats) are
 * answered in their own format with UNSUPPORTED_VERSION. An unknown API
 * key or a version outside the table closes the connection, as Kafka does
 * (there is no format to answer it in) — except ApiVersions, which is
 * answered in v0 format with error 35 so that clients retry lower (KIP-511).
 *
 * Requests are decoded in two passes where acting on a half-read request
 * would do harm: Produce is walked once for structure and only then acted
 * on, so a truncated request appends nothing.
 */
#include "elog.h"

#include "kafka/batch.h"
#include "weft/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const struct apiver {
    int16_t key, min, max;
} apis[] = {
    {KA_PRODUCE, 0, 7},          {KA_FETCH, 0, 11},          {KA_LIST_OFFSETS, 0, 2},
    {KA_METADATA, 0, 4},         {KA_OFFSET_COMMIT, 0, 7},   {KA_OFFSET_FETCH, 0, 5},
    {KA_FIND_COORDINATOR, 0, 2}, {KA_JOIN_GROUP, 0, 5},      {KA_HEARTBEAT, 0, 3},
    {KA_LEAVE_GROUP, 0, 1},      {KA_SYNC_GROUP, 0, 3},      {KA_DESCRIBE_GROUPS, 0, 2},
    {KA_LIST_GROUPS, 0, 2},      {KA_API_VERSIONS, 0, 2},    {KA_CREATE_TOPICS, 0, 4},
    {KA_DELETE_TOPICS, 0, 1},    {KA_INIT_PRODUCER_ID, 0, 1},
};

static bool version_ok(int16_t key, int16_t ver)
{
    for (size_t i = 0; i < WEFT_ARRAY_LEN(apis); i++)
        if (apis[i].key == key)
            return ver >= apis[i].min && ver <= apis[i].max;
    return false;
}

void elog_fail_request(elog *e, kreq *q, const char *why)
{
    weft_log(WEFT_LOG_WARN, "kafka: closing the connection", WEFT_KV_STR("reason", why),
             WEFT_KV_INT("api_key", q->api_key), WEFT_KV_INT("api_version", q->api_version));
    weft_metric_inc(e->m, e->m_errors);
    q->failed = true;
    kreq_complete(q);
}

/* ---- ApiVersions ---- */

static void h_api_versions(elog *e, kreq *q)
{
    (void)e;
    kf_writer *w = kreq_writer(q);
    if (q->api_version > 2) { /* v0 format, error 35, our own range (KIP-511) */
        kf_w_i16(w, KE_UNSUPPORTED_VERSION);
        kf_w_i32(w, 1);
        kf_w_i16(w, KA_API_VERSIONS);
        kf_w_i16(w, 0);
        kf_w_i16(w, 2);
        kreq_complete(q);
        return;
    }
    kf_w_i16(w, KE_NONE);
    kf_w_i32(w, (int32_t)WEFT_ARRAY_LEN(apis));
    for (size_t i = 0; i < WEFT_ARRAY_LEN(apis); i++) {
        kf_w_i16(w, apis[i].key);
        kf_w_i16(w, apis[i].min);
        kf_w_i16(w, apis[i].max);
    }
    if (q->api_version >= 1)
        kf_w_i32(w, 0); /* throttle */
    kreq_complete(q);
}

/* ---- Metadata ---- */

static ktopic *auto_create(elog *e, weft_str name, int *err)
{
    ktopic *t = NULL;
    if (elog_topic_internal(name)) {
        *err = KE_INVALID_TOPIC_EXCEPTION;
        return NULL;
    }
    int rc = elog_topic_create(e, name, e->o.defaults.partitions, &e->o.defaults, &t);
    *err = rc > 0 ? rc : rc < 0 ? KE_LEADER_NOT_AVAILABLE : KE_NONE;
    return t;
}

static void meta_topic(elog *e, kf_writer *w, int16_t v, weft_str name, ktopic *t, int err)
{
    kf_w_i16(w, (int16_t)err);
    kf_w_str(w, name);
    if (v >= 1)
        kf_w_i8(w, elog_topic_internal(name));
    if (!t) {
        kf_w_i32(w, 0);
        weft_metric_inc(e->m, e->m_errors);
        return;
    }
    kf_w_i32(w, t->npart);
    for (int32_t i = 0; i < t->npart; i++) {
        kf_w_i16(w, KE_NONE);
        kf_w_i32(w, i);
        kf_w_i32(w, 0); /* leader: this broker */
        kf_w_i32(w, 1); /* replicas */
        kf_w_i32(w, 0);
        kf_w_i32(w, 1); /* isr */
        kf_w_i32(w, 0);
    }
}

static void h_metadata(elog *e, kreq *q, kf_reader *r)
{
    int16_t v = q->api_version;
    int32_t n = kf_array(r, 2, v >= 1);
    weft_str names[1024];
    if (n > (int32_t)WEFT_ARRAY_LEN(names)) {
        elog_fail_request(e, q, "metadata for more than 1024 topics");
        return;
    }
    for (int32_t i = 0; i < n; i++)
        names[i] = kf_str(r);
    bool allow = e->o.auto_create;
    if (v >= 4)
        allow = allow && kf_i8(r) != 0;
    if (!kf_ok(r)) {
        elog_fail_request(e, q, "malformed metadata request");
        return;
    }
    bool all = n < 0 || (v == 0 && n == 0);
    kf_writer *w = kreq_writer(q);
    if (v >= 3)
        kf_w_i32(w, 0); /* throttle */
    kf_w_i32(w, 1);     /* brokers */
    kf_w_i32(w, 0);
    kf_w_cstr(w, e->adv_host);
    kf_w_i32(w, e->adv_port);
    if (v >= 1)
        kf_w_str(w, WEFT_STR_NULL); /* rack */
    if (v >= 2)
        kf_w_cstr(w, "weft-log");
    if (v >= 1)
        kf_w_i32(w, 0); /* controller */
    if (all) {
        /* internal topics (__weft_*) are served by name only */
        int32_t listed = 0;
        for (size_t i = 0; i < e->ntopics; i++)
            listed += !elog_topic_internal(weft_str_from(e->topics[i]->name));
        kf_w_i32(w, listed);
        for (size_t i = 0; i < e->ntopics; i++)
            if (!elog_topic_internal(weft_str_from(e->topics[i]->name)))
                meta_topic(e, w, v, weft_str_from(e->topics[i]->name), e->topics[i], KE_NONE);
    } else {
        kf_w_i32(w, n);
        for (int32_t i = 0; i < n; i++) {
            ktopic *t = names[i].p ? elog_topic_find(e, names[i]) : NULL;
            int err = KE_NONE;
            if (!t && !elog_topic_name_ok(names[i]))
                err = KE_INVALID_TOPIC_EXCEPTION;
            else if (!t && allow)
                t = auto_create(e, names[i], &err);
            else if (!t)
                err = KE_UNKNOWN_TOPIC_OR_PARTITION;
            meta_topic(e, w, v, names[i], t, err);
        }
    }
    kreq_complete(q);
}

/* ---- Produce ---- */

/* Walk a produce request's structure without acting. */
static bool produce_well_formed(kf_reader r, int16_t v)
{
    if (v >= 3)
        kf_str(&r);
    kf_i16(&r);
    kf_i32(&r);
    int32_t nt = kf_array(&r, 6, false);
    for (int32_t i = 0; i < nt && kf_ok(&r); i++) {
        kf_str(&r);
        int32_t np = kf_array(&r, 8, false);
        for (int32_t k = 0; k < np && kf_ok(&r); k++) {
            kf_i32(&r);
            kf_bytes(&r);
        }
    }
    return kf_ok(&r) && kf_left(&r) == 0;
}

static struct pstate *producer_find(kpart *p, int64_t pid)
{
    for (struct pstate *s = p->producers; s; s = s->next)
        if (s->pid == pid)
            return s;
    return NULL;
}

/* A batch's last sequence: sequences wrap to 0 after INT32_MAX (Kafka's
 * DefaultRecordBatch.incrementSequence); both are >= 0 (kf_batch_validate). */
static int32_t seq_add(int32_t seq, int32_t n)
{
    return seq > INT32_MAX - n ? n - (INT32_MAX - seq) - 1 : seq + n;
}

/* Idempotence (Kafka's ProducerStateManager, simplified to one broker):
 * 0 = append; < 0 = duplicate (*dup_offset is the original base offset);
 * > 0 = a Kafka error. */
static int producer_check(kpart *p, const kf_batch *b, int64_t *dup_offset)
{
    struct pstate *s = producer_find(p, b->producer_id);
    int32_t last_seq = seq_add(b->base_sequence, b->last_offset_delta);
    if (!s)
        return b->base_sequence == 0 ? 0 : KE_OUT_OF_ORDER_SEQUENCE_NUMBER;
    if (b->producer_epoch < s->epoch)
        return KE_INVALID_PRODUCER_EPOCH;
    if (b->producer_epoch > s->epoch)
        return b->base_sequence == 0 ? 0 : KE_OUT_OF_ORDER_SEQUENCE_NUMBER;
    for (int i = 0; i < s->n; i++) {
        int k = (s->head - i + ELOG_PRODUCER_BATCHES) % ELOG_PRODUCER_BATCHES;
        if (s->b[k].first_seq == b->base_sequence && s->b[k].last_seq == last_seq) {
            *dup_offset = s->b[k].base_offset;
            return -1;
        }
    }
    int32_t expect = s->b[s->head].last_seq == INT32_MAX ? 0 : s->b[s->head].last_seq + 1;
    return b->base_sequence == expect ? 0 : KE_OUT_OF_ORDER_SEQUENCE_NUMBER;
}

static void producer_record(kpart *p, const kf_batch *b, int64_t base)
{
    struct pstate *s = producer_find(p, b->producer_id);
    if (!s) {
        if (!(s = calloc(1, sizeof *s)))
            return;
        s->pid = b->producer_id;
        s->next = p->producers;
        p->producers = s;
        s->head = ELOG_PRODUCER_BATCHES - 1;
    }
    if (b->producer_epoch != s->epoch) {
        s->epoch = b->producer_epoch;
        s->n = 0;
    }
    s->head = (s->head + 1) % ELOG_PRODUCER_BATCHES;
    s->b[s->head].first_seq = b->base_sequence;
    s->b[s->head].last_seq = seq_add(b->base_sequence, b->last_offset_delta);
    s->b[s->head].base_offset = base;
    if (s->n < ELOG_PRODUCER_BATCHES)
        s->n++;
}

/* After a restart: rebuild the idempotent producers' recent batches from
 * the active segment (Kafka keeps snapshots; one segment is our bound), so
 * a producer that keeps its id across a broker restart continues with its
 * next sequence instead of failing with OUT_OF_ORDER_SEQUENCE_NUMBER, and a
 * batch it retries is still recognised as a duplicate. */
void elog_producers_rebuild(kpart *p)
{
    int64_t off = plog_active_base(p->log), end = plog_end_offset(p->log);
    uint8_t *buf = malloc(1u << 20);
    while (buf && off < end) {
        plog_slice s;
        if (plog_read(p->log, off, 1u << 20, &s) < 0 || s.len == 0)
            break;
        size_t n = s.len < (1u << 20) ? s.len : (1u << 20);
        ssize_t got = pread(s.fd, buf, n, s.pos);
        plog_slice_release(&s);
        if (got <= 0)
            break;
        size_t at = 0;
        int64_t next = off;
        while (at < (size_t)got) {
            kf_batch b;
            int64_t sz = kf_batch_parse(buf + at, (size_t)got - at, &b);
            if (sz <= 0)
                break;
            if (b.producer_id >= 0 && b.base_offset + b.last_offset_delta >= off)
                producer_record(p, &b, b.base_offset);
            next = b.base_offset + b.last_offset_delta + 1;
            at += (size_t)sz;
        }
        if (next <= off)
            break; /* one batch larger than the buffer: stop, as Kafka without a snapshot */
        off = next;
    }
    free(buf);
}

/* acks=all on an fsync-always topic: q completes once [.., end) is durable.
 * KE_NONE, or KAFKA_STORAGE_ERROR (56) when that cannot be waited for (the
 * log has failed, or no memory): not an acknowledgement. */
static int wait_durable(kreq *q, int acks, const ktopic *t, kpart *p, int64_t end, size_t err_at)
{
    if (acks != -1 || t->conf.log.fsync != PLOG_FSYNC_ALWAYS || plog_durable_offset(p->log) >= end)
        return KE_NONE;
    return elog_wait_durable(p, q, end, err_at) < 0 ? 56 : KE_NONE;
}

/* Append one partition's records. Returns a Kafka error; *base set. */
static int produce_part(elog *e, kreq *q, int acks, ktopic *t, int32_t index, weft_str rec,
                        int64_t *base, size_t err_at)
{
    *base = -1;
    if (!t || index < 0 || index >= t->npart)
        return KE_UNKNOWN_TOPIC_OR_PARTITION;
    if (!rec.p || rec.n == 0)
        return KE_CORRUPT_MESSAGE;
    if (elog_topic_internal(weft_str_from(t->name)))
        return KE_INVALID_TOPIC_EXCEPTION; /* written by the streams API only */
    kpart *p = &t->parts[index];
    kf_batch b;
    int err = kf_batch_validate((const uint8_t *)rec.p, rec.n, t->conf.log.max_batch_bytes, &b);
    if (err)
        return err;
    if (b.producer_id >= 0) {
        int64_t dup;
        int rc = producer_check(p, &b, &dup);
        if (rc < 0) { /* a retry: answered as the original is, once it is durable */
            int werr = wait_durable(q, acks, t, p, dup + b.last_offset_delta + 1, err_at);
            if (!werr)
                *base = dup;
            return werr;
        }
        if (rc > 0)
            return rc;
    }
    int rc = plog_append(p->log, (uint8_t *)rec.p, rec.n, 0, base);
    if (rc < 0) {
        weft_log(WEFT_LOG_ERROR, "append failed", WEFT_KV_STR("topic", t->name),
                 WEFT_KV_INT("partition", index), WEFT_KV_STR("error", weft_strerror(rc)));
        return rc == WEFT_ETOOBIG ? KE_MESSAGE_TOO_LARGE : 56; /* KAFKA_STORAGE_ERROR */
    }
    if (b.producer_id >= 0)
        producer_record(p, &b, *base);
    weft_metric_add(e->m, e->m_produced_records, (uint64_t)b.records_count);
    weft_metric_add(e->m, e->m_produced_bytes, rec.n);
    if ((err = wait_durable(q, acks, t, p, *base + b.last_offset_delta + 1, err_at)) != 0) {
        *base = -1; /* written, but not known durable: the retry will be */
        return err;
    }
    elog_fetch_wake(p);
    return KE_NONE;
}

static void h_produce(elog *e, kreq *q, kf_reader *r)
{
    int16_t v = q->api_version;
    if (!produce_well_formed(*r, v)) {
        elog_fail_request(e, q, "malformed produce request");
        return;
    }
    weft_str txn = v >= 3 ? kf_str(r) : WEFT_STR_NULL;
    int16_t acks = kf_i16(r);
    kf_i32(r); /* timeout: appends are immediate; durability waits are bounded by the disk */
    int32_t nt = kf_array(r, 6, false);
    kf_writer *w = kreq_writer(q);
    kf_w_i32(w, nt);
    for (int32_t i = 0; i < nt; i++) {
        weft_str name = kf_str(r);
        ktopic *t = elog_topic_find(e, name);
        int terr = KE_NONE;
        if (v < 3)
            terr = KE_UNSUPPORTED_VERSION; /* magic 0/1 message sets */
        else if (txn.p)
            terr = KE_INVALID_REQUEST; /* transactions are not supported */
        else if (acks != 0 && acks != 1 && acks != -1)
            terr = KE_INVALID_REQUIRED_ACKS;
        else if (!t && !elog_topic_name_ok(name))
            terr = KE_INVALID_TOPIC_EXCEPTION;
        else if (!t && e->o.auto_create)
            t = auto_create(e, name, &terr);
        kf_w_str(w, name);
        int32_t np = kf_array(r, 8, false);
        kf_w_i32(w, np);
        for (int32_t k = 0; k < np; k++) {
            int32_t index = kf_i32(r);
            weft_str rec = kf_bytes(r);
            int64_t base = -1;
            /* the error code follows the index we are about to write */
            size_t err_at = weft_buf_used(w->b) + 4;
            int err = terr ? terr : produce_part(e, q, acks, t, index, rec, &base, err_at);
            if (err)
                weft_metric_inc(e->m, e->m_errors);
            kf_w_i32(w, index);
            kf_w_i16(w, (int16_t)err);
            kf_w_i64(w, base);
            if (v >= 2)
                kf_w_i64(w, -1); /* log append time: CreateTime */
            if (v >= 5)
                kf_w_i64(w, t && index >= 0 && index < t->npart
                                ? plog_start_offset(t->parts[index].log)
                                : -1);
        }
    }
    if (v >= 1)
        kf_w_i32(w, 0); /* throttle */
    if (acks == 0)
        q->no_response = true;
    if (q->waits == 0)
        kreq_complete(q);
}

/* ---- Fetch ---- */

typedef struct fpart {
    int32_t topic; /* index into names */
    int32_t partition;
    int64_t offset;
    int32_t max_bytes;
} fpart;

struct fwait {
    struct fwait *next; /* on the partition */
    kpart *p;
    kreq *q;
};

typedef struct fetch_state {
    int32_t max_wait, min_bytes, max_bytes;
    char **names;
    int32_t ntopics;
    int32_t *topic_nparts;
    fpart *parts;
    int32_t nparts;
    struct fwait *waits;
    int32_t nwaits;
    weft_timer timer;
    elog *e;
    uint64_t woken; /* the elog_fetch_wake round that last tried it */
} fetch_state;

static void fetch_unpark(kreq *q)
{
    fetch_state *f = q->state;
    for (int32_t i = 0; i < f->nwaits; i++) {
        struct fwait *fw = &f->waits[i];
        struct fwait **pp = &fw->p->fetchers;
        while (*pp && *pp != fw)
            pp = &(*pp)->next;
        if (*pp)
            *pp = fw->next;
    }
    free(f->waits);
    f->waits = NULL;
    f->nwaits = 0;
    weft_timer_stop(f->e->loop, &f->timer);
}

static void fetch_state_free(fetch_state *f)
{
    if (!f)
        return;
    for (int32_t i = 0; i < f->ntopics; i++)
        free(f->names[i]);
    free(f->names);
    free(f->topic_nparts);
    free(f->parts);
    free(f);
}

static void fetch_cancel(kreq *q)
{
    fetch_unpark(q);
    fetch_state_free(q->state);
    q->state = NULL;
}

/* Build the response; returns whether it was kept. With `final` false it
 * is dropped (the fetch parks) unless min_bytes are available or a
 * partition has an error, which Kafka answers at once. */
static bool fetch_build(kreq *q, bool final)
{
    fetch_state *f = q->state;
    elog *e = f->e;
    int16_t v = q->api_version;
    kf_writer *w = kreq_writer(q);
    size_t total = 0, budget = f->max_bytes > 0 ? (size_t)f->max_bytes : 0;
    if (v >= 1)
        kf_w_i32(w, 0); /* throttle */
    if (v >= 7) {
        kf_w_i16(w, KE_NONE);
        kf_w_i32(w, 0); /* session id: sessions are not kept, every fetch is full */
    }
    kf_w_i32(w, f->ntopics);
    int32_t pi = 0;
    bool errors = false;
    for (int32_t ti = 0; ti < f->ntopics; ti++) {
        kf_w_cstr(w, f->names[ti]);
        kf_w_i32(w, f->topic_nparts[ti]);
        ktopic *t = elog_topic_find(e, weft_str_from(f->names[ti]));
        for (int32_t k = 0; k < f->topic_nparts[ti]; k++, pi++) {
            fpart *fp = &f->parts[pi];
            kpart *p = t && fp->partition >= 0 && fp->partition < t->npart ? &t->parts[fp->partition]
                                                                           : NULL;
            int err = p ? KE_NONE : KE_UNKNOWN_TOPIC_OR_PARTITION;
            if (v < 4)
                err = KE_UNSUPPORTED_VERSION;
            plog_slice s = {0};
            if (!err) {
                size_t lim = (size_t)(fp->max_bytes > 0 ? fp->max_bytes : 0);
                size_t left = budget > total ? budget - total : 0; /* the first may overshoot */
                if (total > 0 && left < lim)
                    lim = left;
                if (total == 0 || lim > 0) {
                    int rc = plog_read(p->log, fp->offset, lim ? lim : 1, &s);
                    if (rc == WEFT_ENOTFOUND)
                        err = KE_OFFSET_OUT_OF_RANGE;
                    else if (rc < 0)
                        err = 56;
                    else if (total > 0 && s.len > lim)
                        plog_slice_release(&s); /* only the first partition may overshoot */
                }
            }
            if (err) {
                weft_metric_inc(e->m, e->m_errors);
                errors = true;
            }
            int64_t hw = p ? plog_end_offset(p->log) : -1;
            kf_w_i32(w, fp->partition);
            kf_w_i16(w, (int16_t)err);
            kf_w_i64(w, hw);
            if (v >= 4)
                kf_w_i64(w, hw); /* last stable offset: no transactions */
            if (v >= 5)
                kf_w_i64(w, p ? plog_start_offset(p->log) : -1);
            if (v >= 4)
                kf_w_i32(w, -1); /* aborted transactions: null */
            if (v >= 11)
                kf_w_i32(w, -1); /* preferred read replica */
            kf_w_i32(w, (int32_t)s.len);
            if (s.len) {
                total += s.len;
                kreq_add_slice(q, &s);
            } else if (s.seg) {
                plog_slice_release(&s);
            }
        }
    }
    if (!final && !errors && total < (size_t)(f->min_bytes > 0 ? f->min_bytes : 1)) {
        /* not enough yet: drop what was built, park */
        for (size_t i = 0; i < q->nparts; i++)
            if (q->parts[i].file)
                plog_slice_release(&q->parts[i].slice);
        q->nparts = 0;
        q->cut = 0;
        q->out.len = q->out.off + 8; /* keep size placeholder + correlation id */
        q->w.err = false;
        return false;
    }
    weft_metric_add(e->m, e->m_fetched_bytes, total);
    return true;
}

static void fetch_finish(kreq *q)
{
    fetch_unpark(q);
    fetch_state_free(q->state);
    q->state = NULL;
    q->cancel = NULL;
    kreq_complete(q);
}

static void fetch_timeout(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    kreq *q = t->data;
    fetch_unpark(q);
    fetch_build(q, true);
    fetch_finish(q);
}

/* Completing a fetch unparks it (from every partition it names, maybe this
 * one twice) and may flush or close its connection, which frees the other
 * requests of that connection parked here. So no pointer is kept across a
 * completion: the list is walked again from its head, and `woken` skips the
 * fetches this wake has already tried. */
void elog_fetch_wake(kpart *p)
{
    static _Thread_local uint64_t round; /* per loop */
    round++;
again:
    for (struct fwait *fw = p->fetchers; fw; fw = fw->next) {
        kreq *q = fw->q;
        fetch_state *f = q->state;
        if (!f || q->done || f->woken == round)
            continue;
        f->woken = round;
        if (fetch_build(q, false)) {
            fetch_finish(q);
            goto again;
        }
    }
}

static void h_fetch(elog *e, kreq *q, kf_reader *r)
{
    int16_t v = q->api_version;
    fetch_state *f = calloc(1, sizeof *f);
    if (!f) {
        elog_fail_request(e, q, "out of memory");
        return;
    }
    f->e = e;
    kf_i32(r); /* replica id */
    f->max_wait = kf_i32(r);
    f->min_bytes = kf_i32(r);
    f->max_bytes = v >= 3 ? kf_i32(r) : INT32_MAX;
    if (v >= 4)
        kf_i8(r); /* isolation level: LSO = HW, both levels read the same */
    if (v >= 7) {
        kf_i32(r); /* session id */
        kf_i32(r); /* session epoch */
    }
    f->ntopics = kf_array(r, 6, false);
    f->names = calloc((size_t)f->ntopics + 1, sizeof *f->names);
    f->topic_nparts = calloc((size_t)f->ntopics + 1, sizeof *f->topic_nparts);
    int32_t cap = 0;
    for (int32_t i = 0; f->names && f->topic_nparts && i < f->ntopics && kf_ok(r); i++) {
        weft_str name = kf_str(r);
        f->names[i] = strndup(name.p ? name.p : "", name.n);
        int32_t np = kf_array(r, 16, false);
        f->topic_nparts[i] = np;
        if (f->nparts + np > cap) {
            cap = (f->nparts + np) * 2;
            fpart *nps = realloc(f->parts, (size_t)cap * sizeof *nps);
            if (!nps) {
                r->err = true;
                break;
            }
            f->parts = nps;
        }
        for (int32_t k = 0; k < np; k++) {
            fpart *fp = &f->parts[f->nparts++];
            fp->topic = i;
            fp->partition = kf_i32(r);
            if (v >= 9)
                kf_i32(r); /* current leader epoch */
            fp->offset = kf_i64(r);
            if (v >= 5)
                kf_i64(r); /* log start offset (followers only) */
            fp->max_bytes = kf_i32(r);
        }
    }
    if (v >= 7) { /* forgotten topics */
        int32_t nf = kf_array(r, 6, false);
        for (int32_t i = 0; i < nf; i++) {
            kf_str(r);
            int32_t np = kf_array(r, 4, false);
            for (int32_t k = 0; k < np; k++)
                kf_i32(r);
        }
    }
    if (v >= 11)
        kf_str(r); /* rack */
    if (!kf_ok(r) || !f->names || !f->topic_nparts) {
        fetch_state_free(f);
        elog_fail_request(e, q, "malformed fetch request");
        return;
    }
    q->state = f;
    q->cancel = fetch_cancel;
    if (f->max_wait <= 0 || e->draining || fetch_build(q, false)) {
        if (!q->nparts && weft_buf_used(&q->out) == 8)
            fetch_build(q, true);
        fetch_finish(q);
        return;
    }
    /* park on every known partition until data or max_wait */
    f->waits = calloc((size_t)f->nparts + 1, sizeof *f->waits);
    for (int32_t i = 0; f->waits && i < f->nparts; i++) {
        ktopic *t = elog_topic_find(e, weft_str_from(f->names[f->parts[i].topic]));
        int32_t pn = f->parts[i].partition;
        if (!t || pn < 0 || pn >= t->npart)
            continue;
        struct fwait *fw = &f->waits[f->nwaits++];
        fw->p = &t->parts[pn];
        fw->q = q;
        fw->next = fw->p->fetchers;
        fw->p->fetchers = fw;
    }
    weft_timer_init(&f->timer, fetch_timeout, q);
    weft_timer_start(e->loop, &f->timer, (uint64_t)(f->max_wait > 60000 ? 60000 : f->max_wait));
}

/* ---- ListOffsets ---- */

/* v0's offset list, as Kafka's legacy fetchOffsetsBefore: for latest the
 * end offset and then every segment's base offset, newest first; for
 * earliest and by time the one offset found. At most max_num of them. */
static void list_offsets_v0(kf_writer *w, kpart *p, int64_t ts, int64_t off, int32_t max_num)
{
    size_t n = off < 0 || max_num <= 0 ? 0 : 1;
    size_t nseg = n && ts == -1 ? plog_segments(p->log) : 0, i = nseg;
    if (nseg && plog_segment_base(p->log, nseg - 1) == off)
        i--; /* the active segment is empty: its base is the end offset */
    size_t more = i < (size_t)max_num - 1 ? i : (size_t)max_num - 1;
    kf_w_i32(w, (int32_t)(n + (n ? more : 0)));
    if (!n)
        return;
    kf_w_i64(w, off);
    for (size_t k = 0; k < more; k++)
        kf_w_i64(w, plog_segment_base(p->log, i - 1 - k));
}

static void h_list_offsets(elog *e, kreq *q, kf_reader *r)
{
    int16_t v = q->api_version;
    kf_i32(r); /* replica */
    if (v >= 2)
        kf_i8(r); /* isolation level */
    int32_t nt = kf_array(r, 6, false);
    kf_writer *w = kreq_writer(q);
    if (v >= 2)
        kf_w_i32(w, 0);
    kf_w_i32(w, nt);
    for (int32_t i = 0; i < nt && kf_ok(r); i++) {
        weft_str name = kf_str(r);
        ktopic *t = elog_topic_find(e, name);
        kf_w_str(w, name);
        int32_t np = kf_array(r, v == 0 ? 16 : 12, false);
        kf_w_i32(w, np);
        for (int32_t k = 0; k < np && kf_ok(r); k++) {
            int32_t pn = kf_i32(r);
            int64_t ts = kf_i64(r);
            int32_t max_num = v == 0 ? kf_i32(r) : 1;
            kpart *p = t && pn >= 0 && pn < t->npart ? &t->parts[pn] : NULL;
            int64_t off = -1, rts = -1;
            int err = p ? KE_NONE : KE_UNKNOWN_TOPIC_OR_PARTITION;
            if (p && ts == -1)
                off = plog_end_offset(p->log);
            else if (p && ts == -2)
                off = plog_start_offset(p->log);
            else if (p && ts >= 0) {
                off = plog_offset_for_time(p->log, ts);
                rts = off >= 0 ? ts : -1;
            } else if (p)
                err = KE_INVALID_REQUEST;
            kf_w_i32(w, pn);
            kf_w_i16(w, (int16_t)err);
            if (v == 0) {
                list_offsets_v0(w, p, ts, off, max_num);
            } else {
                kf_w_i64(w, rts);
                kf_w_i64(w, off);
            }
        }
    }
    if (!kf_ok(r)) {
        elog_fail_request(e, q, "malformed list offsets request");
        return;
    }
    kreq_complete(q);
}

/* ---- CreateTopics / DeleteTopics ---- */

static int topic_config(elog_topic_conf *c, weft_str key, weft_str val, const char **why)
{
    char v[64];
    if (!val.p || val.n >= sizeof v) {
        *why = "config values must be set and short";
        return KE_INVALID_CONFIG;
    }
    memcpy(v, val.p, val.n);
    v[val.n] = '\0';
    char *end;
    long long n = strtoll(v, &end, 10);
    bool num = *v && !*end;
    if (weft_str_eq(key, WEFT_STR("retention.ms")) && num && n >= -1)
        c->log.retention_ms = n;
    else if (weft_str_eq(key, WEFT_STR("retention.bytes")) && num && n >= -1)
        c->log.retention_bytes = n;
    else if (weft_str_eq(key, WEFT_STR("segment.bytes")) && num && n >= 14 && n <= INT32_MAX)
        c->log.segment_bytes = (uint64_t)n;
    else if (weft_str_eq(key, WEFT_STR("flush.messages")) && num && n >= 1)
        c->log.fsync = n == 1 ? PLOG_FSYNC_ALWAYS : PLOG_FSYNC_INTERVAL;
    else if (weft_str_eq(key, WEFT_STR("flush.ms")) && num && n >= 0) {
        c->log.fsync = n == 0 ? PLOG_FSYNC_ALWAYS : PLOG_FSYNC_INTERVAL;
        if (n > 0)
            c->log.fsync_interval_ms = (uint32_t)(n > 3600000 ? 3600000 : n);
    } else if (weft_str_eq(key, WEFT_STR("weft.fsync")) && !strcmp(v, "always"))
        c->log.fsync = PLOG_FSYNC_ALWAYS;
    else if (weft_str_eq(key, WEFT_STR("weft.fsync")) && !strcmp(v, "interval"))
        c->log.fsync = PLOG_FSYNC_INTERVAL;
    else if (weft_str_eq(key, WEFT_STR("cleanup.policy")) && !strcmp(v, "delete"))
        ;
    else {
        *why = "unsupported config or value (supported: retention.ms, retention.bytes, "
               "segment.bytes, flush.messages, flush.ms, weft.fsync=always|interval, "
               "cleanup.policy=delete)";
        return KE_INVALID_CONFIG;
    }
    return KE_NONE;
}

static int cmp_str(const void *a, const void *b)
{
    const weft_str *x = a, *y = b;
    size_t m = x->n < y->n ? x->n : y->n;
    int c = m ? memcmp(x->p, y->p, m) : 0; /* an empty name may have no bytes at all */
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

/* Whether name is in the sorted list of names that appear more than once. */
static bool is_dup(const weft_str *dups, size_t n, weft_str name)
{
    return n && bsearch(&name, dups, n, sizeof *dups, cmp_str) != NULL;
}

static void h_create_topics(elog *e, kreq *q, kf_reader *r)
{
    int16_t v = q->api_version;
    kf_reader first = *r;
    /* pass 1: structure, and the names (a name given twice is refused in
     * both places, as Kafka does: which of the two would win is unclear) */
    int32_t nt = kf_array(r, 12, false);
    weft_str *names = nt > 1 ? malloc((size_t)nt * sizeof *names) : NULL;
    size_t ndup = 0;
    if (nt > 1 && !names) {
        elog_fail_request(e, q, "out of memory");
        return;
    }
    for (int32_t i = 0; i < nt && kf_ok(r); i++) {
        weft_str name = kf_str(r);
        if (names)
            names[i] = name;
        kf_i32(r);
        kf_i16(r);
        int32_t na = kf_array(r, 8, false);
        for (int32_t k = 0; k < na; k++) {
            kf_i32(r);
            int32_t nb = kf_array(r, 4, false);
            for (int32_t j = 0; j < nb; j++)
                kf_i32(r);
        }
        int32_t nc = kf_array(r, 4, false);
        for (int32_t k = 0; k < nc; k++) {
            kf_str(r);
            kf_str(r);
        }
    }
    kf_i32(r);
    bool validate_only = v >= 1 && kf_i8(r) != 0;
    if (!kf_ok(r)) {
        free(names);
        elog_fail_request(e, q, "malformed create topics request");
        return;
    }
    if (names) { /* keep the names seen more than once, sorted, at the front */
        qsort(names, (size_t)nt, sizeof *names, cmp_str);
        for (int32_t i = 1; i < nt; i++)
            if (!cmp_str(&names[i], &names[i - 1]) &&
                (!ndup || cmp_str(&names[i], &names[ndup - 1])))
                names[ndup++] = names[i];
    }
    /* pass 2: act */
    *r = first;
    kf_writer *w = kreq_writer(q);
    if (v >= 2)
        kf_w_i32(w, 0);
    nt = kf_array(r, 12, false);
    kf_w_i32(w, nt);
    for (int32_t i = 0; i < nt; i++) {
        weft_str name = kf_str(r);
        int32_t np = kf_i32(r);
        int16_t rf = kf_i16(r);
        bool dup = is_dup(names, ndup, name);
        int err = dup ? KE_INVALID_REQUEST : KE_NONE;
        const char *why = dup ? "the topic is named more than once in the request" : NULL;
        int32_t na = kf_array(r, 8, false);
        for (int32_t k = 0; k < na; k++) {
            kf_i32(r);
            int32_t nb = kf_array(r, 4, false);
            for (int32_t j = 0; j < nb; j++)
                if (kf_i32(r) != 0 && !err) {
                    err = 39; /* INVALID_REPLICA_ASSIGNMENT */
                    why = "this broker is node 0";
                }
        }
        if (na > 0 && np == -1)
            np = na;
        elog_topic_conf conf = e->o.defaults;
        int32_t nc = kf_array(r, 4, false);
        for (int32_t k = 0; k < nc; k++) {
            weft_str key = kf_str(r), val = kf_str(r);
            if (!err)
                err = topic_config(&conf, key, val, &why);
        }
        if (np == -1)
            np = e->o.defaults.partitions;
        if (!err && rf != -1 && rf != 1) {
            err = KE_INVALID_REPLICATION_FACTOR;
            why = "a single broker: replication factor 1 (or -1)";
        }
        if (!err && !elog_topic_name_ok(name)) {
            err = KE_INVALID_TOPIC_EXCEPTION;
            why = "topic names are 1-249 characters of [A-Za-z0-9._-]";
        }
        if (!err && elog_topic_internal(name)) {
            err = KE_INVALID_TOPIC_EXCEPTION;
            why = "__weft_* topics are reserved";
        }
        if (!err && elog_topic_find(e, name)) {
            err = KE_TOPIC_ALREADY_EXISTS;
            why = "topic already exists";
        }
        if (!err && (np < 1 || np > 10000)) {
            err = KE_INVALID_PARTITIONS;
            why = "partitions must be 1-10000";
        }
        if (!err && !validate_only) {
            int rc = elog_topic_create(e, name, np, &conf, NULL);
            if (rc != 0) {
                err = rc > 0 ? rc : 56;
                why = rc > 0 ? "invalid topic" : "storage error";
            }
        }
        if (err)
            weft_metric_inc(e->m, e->m_errors);
        kf_w_str(w, name);
        kf_w_i16(w, (int16_t)err);
        if (v >= 1)
            kf_w_str(w, why ? weft_str_from(why) : WEFT_STR_NULL);
    }
    free(names);
    kreq_complete(q);
}

static void h_delete_topics(elog *e, kreq *q, kf_reader *r)
{
    int32_t nt = kf_array(r, 2, false);
    weft_str names[1024];
    if (nt > (int32_t)WEFT_ARRAY_LEN(names)) {
        elog_fail_request(e, q, "too many topics");
        return;
    }
    for (int32_t i = 0; i < nt; i++)
        names[i] = kf_str(r);
    kf_i32(r);
    if (!kf_ok(r)) {
        elog_fail_request(e, q, "malformed delete topics request");
        return;
    }
    kf_writer *w = kreq_writer(q);
    if (q->api_version >= 1)
        kf_w_i32(w, 0);
    kf_w_i32(w, nt);
    for (int32_t i = 0; i < nt; i++) {
        ktopic *t = elog_topic_find(e, names[i]);
        int err = KE_UNKNOWN_TOPIC_OR_PARTITION;
        if (t && elog_topic_internal(names[i])) {
            err = KE_INVALID_TOPIC_EXCEPTION;
        } else if (t) {
            bool busy = false;
            for (int32_t k = 0; k < t->npart; k++)
                busy |= t->parts[k].fetchers != NULL || t->parts[k].waits_head != NULL;
            err = busy ? KE_REQUEST_TIMED_OUT : elog_topic_delete(e, t) == 0 ? KE_NONE : 56;
        }
        kf_w_str(w, names[i]);
        kf_w_i16(w, (int16_t)err);
    }
    kreq_complete(q);
}

/* ---- InitProducerId ---- */

static void h_init_producer_id(elog *e, kreq *q, kf_reader *r)
{
    weft_str txn = kf_str(r);
    kf_i32(r);
    if (!kf_ok(r)) {
        elog_fail_request(e, q, "malformed init producer id request");
        return;
    }
    kf_writer *w = kreq_writer(q);
    kf_w_i32(w, 0);
    if (txn.p) {
        kf_w_i16(w, KE_INVALID_REQUEST); /* transactions are not supported */
        kf_w_i64(w, -1);
        kf_w_i16(w, -1);
    } else {
        kf_w_i16(w, KE_NONE);
        kf_w_i64(w, e->next_producer_id++);
        kf_w_i16(w, 0);
    }
    kreq_complete(q);
}

void elog_handle(elog *e, kreq *q, kf_reader *r)
{
    if (q->api_key == KA_API_VERSIONS) {
        h_api_versions(e, q);
        return;
    }
    if (!version_ok(q->api_key, q->api_version)) {
        elog_fail_request(e, q, "unsupported API or version");
        return;
    }
    switch (q->api_key) {
    case KA_METADATA: h_metadata(e, q, r); break;
    case KA_PRODUCE: h_produce(e, q, r); break;
    case KA_FETCH: h_fetch(e, q, r); break;
    case KA_LIST_OFFSETS: h_list_offsets(e, q, r); break;
    case KA_CREATE_TOPICS: h_create_topics(e, q, r); break;
    case KA_DELETE_TOPICS: h_delete_topics(e, q, r); break;
    case KA_INIT_PRODUCER_ID: h_init_producer_id(e, q, r); break;
    case KA_OFFSET_COMMIT:
    case KA_OFFSET_FETCH:
    case KA_FIND_COORDINATOR:
    case KA_JOIN_GROUP:
    case KA_HEARTBEAT:
    case KA_LEAVE_GROUP:
    case KA_SYNC_GROUP:
    case KA_DESCRIBE_GROUPS:
    case KA_LIST_GROUPS: elog_handle_group(e, q, r); break;
    default: elog_fail_request(e, q, "unsupported API"); break;
    }
}
