/*
 * streams.c — the event-sourcing streams API of `weft log` (see streams.h
 * and docs/eventlog.md): append with an expected version, idempotent by
 * event id; read a stream (both directions), a category and $all;
 * subscribe to any of them as server-sent events.
 *
 * Source of truth. One internal topic, __weft_streams (one partition,
 * fsync always, kept forever), holds every event. An append is ONE record
 * batch (kafka/batch.h) with one record per event, so it is atomic on disk:
 * recovery (plog.c) keeps or drops a batch whole. An event's global
 * position is its offset in __weft_streams, so $all is the log's order.
 * Each record:
 *   key        the stream name
 *   value      the event's data, compact JSON
 *   headers    weft.stream    the stream name
 *              weft.version   the event's version in its stream (decimal)
 *              weft.id        the event id given by the client
 *              weft.type      the event type
 *              weft.metadata  compact JSON (only when the event has some)
 *   timestamp  the append's wall-clock time in ms (CreateTime)
 * Kafka clients may read __weft_streams by name (it is an ordinary log)
 * but may not write it (kapi.c refuses __weft_* topics).
 *
 * Memory. Per stream, its events' positions (version -> position) and a
 * 64-bit hash of each event id; per category, its events' positions: 24
 * bytes an event, rebuilt at start by reading __weft_streams once. Event
 * bodies are always read back from the log (the page cache), never kept.
 *
 * Concurrency. The loop is the only writer: an append checks its expected
 * version against the in-memory state (which already counts appends still
 * waiting for their fsync), writes its batch and updates the state without
 * returning to the loop, so of concurrent appends with the same expected
 * version exactly one wins. The answer waits until the batch is durable
 * (the partition's group commit: elog_wait_durable_fn), and readers and
 * subscribers only ever see durable events, so nothing a client saw can be
 * lost by a crash.
 *
 * Idempotence follows EventStoreDB (IndexWriter.CheckCommit). With an exact
 * expected version E below the stream's version (no_stream is E = -1): if
 * the events at E+1.. carry the append's ids, in order, the append succeeds
 * without writing and answers with the original versions and position; if
 * only some do, or none, it is a conflict (409). With any or stream_exists
 * the last RECENT_IDS events of the stream are searched for the first id:
 * found, the others must follow it (all: the original answer; else 409);
 * not found, the events are appended. Ids are compared by hash, then
 * checked against the log.
 *
 * Category topics (the Kafka view). Once an append is durable its events
 * are copied as one batch to the topic named after their category (created
 * on demand with one partition, kept forever, fsync interval: the copy is
 * derived data), key = stream name, the same headers plus weft.position.
 * A category that is not a legal Kafka topic name (':' in it) or is
 * reserved (__weft_*) has no topic. A crash may lose the copy's tail: at
 * start each category topic's highest weft.position is read from its last
 * batches and the events after it are copied again, in order, so the topic
 * again holds exactly its category's events. A copy that fails while
 * running (the topic's disk full or failing) stalls its category instead
 * of leaving a hole: later events of that category are not copied, and a
 * repair timer runs the same catch-up as the start every REPAIR_MS until
 * it gets through. A Kafka consumer of the topic so sees its category's
 * events late, never out of order or with one missing. A topic with more partitions
 * (created by a Kafka client) gets each stream on murmur2(stream) % n, as
 * Kafka's own partitioner would.
 *
 * Subscriptions are paced by the socket, like the registry's watch (both
 * are weft_sse streams, weft/sse.h): a subscriber is written events until
 * its connection's output is above the high-water mark, then waits for
 * on_drain; events are read back from the log, so a slow subscriber costs
 * nothing beyond its connection buffer.
 */
#include "eventlog/streams.h"

#include "kafka/batch.h"
#include "weft/log.h"
#include "weft/metrics.h"
#include "weft/service.h" /* weft_json_respond */
#include "weft/sse.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define STREAMS_TOPIC "__weft_streams"
#define MAX_NAME 200
#define MAX_ID 100
#define MAX_TYPE 200
#define MAX_EVENTS 1000
#define MAX_EVENT_BYTES (256 * 1024) /* data + metadata of one event, as stored */
#define MAX_APPEND_BYTES                                                                           \
    (960 * 1024) /* one batch: the copy's weft.position headers must                               \
                    still fit a topic's 1 MiB batch limit */
#define RECENT_IDS 1024
#define DEFAULT_LIMIT 100
#define MAX_LIMIT 1000
#define MAX_PAGE_BYTES (4u << 20) /* a page of events ends after this much JSON */
#define READ_CHUNK (64 * 1024)
#define SCAN_CHUNK (1024 * 1024)
#define MAX_COPY_HEADERS 8
#define PING_MS 15000
#define REPAIR_MS 1000

enum { EXP_ANY = -2, EXP_NO_STREAM = -1, EXP_EXISTS = -4 };
enum { SUB_ALL, SUB_CATEGORY, SUB_STREAM };

static const weft_str JSON_TYPE = {"application/json", 16};

/* ---- in-memory index ---- */

typedef struct skey {
    char *name;
    size_t len;
    uint64_t hash;
} skey;

typedef struct scat {
    skey k;
    int64_t *pos; /* positions of the category's events, ascending */
    size_t n, cap;
    bool kafka;  /* copied to the topic of the same name */
    bool warned;  /* a copy failed (logged once) */
    bool stalled; /* a copy failed: nothing more is copied until a repair gets through */
} scat;

typedef struct sstream {
    skey k;
    scat *cat;
    int64_t *pos;  /* version -> position */
    uint64_t *idh; /* version -> hash of the event id */
    size_t n, cap;
} sstream;

typedef struct htab {
    skey **slot;
    size_t cap, n;
} htab;

/* ---- reading the log back ---- */

typedef struct rdr {
    plog *l;
    size_t chunk;
    uint8_t *buf;
    size_t len, cap;
    int64_t first, end; /* the offsets held in buf */
    size_t hint;        /* byte offset in buf of a batch at or before the last one used */
    int64_t hint_base;
} rdr;

typedef struct sevent {
    int64_t position, version, time_ms;
    weft_str stream, id, type, data, metadata; /* .p NULL: absent */
} sevent;

/* A bounded output buffer that remembers a failed write. */
typedef struct jbuf {
    weft_buf b;
    bool err;
} jbuf;

/* ---- requests ---- */

/* Doubly linked list membership (first member of its struct). */
typedef struct slink {
    struct slink *next, *prev;
} slink;

static void link_push(slink **head, slink *l)
{
    l->prev = NULL;
    l->next = *head;
    if (*head)
        (*head)->prev = l;
    *head = l;
}

static void link_remove(slink **head, slink *l)
{
    if (l->prev)
        l->prev->next = l->next;
    else
        *head = l->next;
    if (l->next)
        l->next->prev = l->prev;
}

typedef struct sop { /* an answer waiting for its events to be durable */
    slink link;
    elog_streams *st;
    weft_http_req *r; /* NULL: the client went away (the append still completes) */
    char stream[MAX_NAME + 1];
    int64_t first_version, last_version, position;
    int64_t last; /* the log position of its last event */
} sop;

typedef struct ssub {
    slink link;
    elog_streams *st;
    weft_sse sse;
    int kind;
    char name[MAX_NAME + 1];
    size_t len;
    int64_t cursor; /* next position (all, category) or version (stream) to send */
} ssub;

struct elog_streams {
    elog *e;
    weft_loop *loop;
    kpart *p; /* __weft_streams' only partition */
    htab streams, cats;
    rdr rd;
    jbuf scratch;     /* one SSE event's data */
    int64_t mirrored; /* events below this position are in their category topics */
    int64_t advanced; /* durable end already announced */
    slink *ops;       /* sop */
    slink *subs;      /* ssub */
    size_t nsubs;
    bool draining, started;
    weft_timer ping;
    weft_timer repair; /* runs while a category is stalled */
    size_t nstalled;
    weft_metrics *m;
    weft_metric m_appends, m_events, m_conflicts, m_idempotent, m_subs, m_streams, m_stalled;
};

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Kafka's murmur2 (Utils.murmur2), for the partition of a key. */
static uint32_t murmur2(const char *key, size_t n)
{
    const uint32_t m = 0x5bd1e995;
    uint32_t h = 0x9747b28cu ^ (uint32_t)n;
    const unsigned char *d = (const unsigned char *)key;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        uint32_t k =
            d[i] | (uint32_t)d[i + 1] << 8 | (uint32_t)d[i + 2] << 16 | (uint32_t)d[i + 3] << 24;
        k *= m;
        k ^= k >> 24;
        k *= m;
        h *= m;
        h ^= k;
    }
    switch (n & 3) {
    case 3:
        h ^= (uint32_t)d[i + 2] << 16;
        /* fall through */
    case 2:
        h ^= (uint32_t)d[i + 1] << 8;
        /* fall through */
    case 1: h ^= d[i]; h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool name_ok(const char *p, size_t n)
{
    return weft_name_ok((weft_str){p, n}, MAX_NAME);
}

/* A stream's category: the part before the first '-' (the whole name if
 * there is none, or if the name starts with it). */
static size_t category_len(const char *p, size_t n)
{
    const char *dash = memchr(p, '-', n);
    return dash && dash > p ? (size_t)(dash - p) : n;
}

/* ---- hash table of names (open addressing, linear probing) ---- */

static skey *ht_find(const htab *h, const char *name, size_t len)
{
    if (!h->cap)
        return NULL;
    uint64_t hash = fnv1a(name, len);
    for (size_t i = hash & (h->cap - 1);; i = (i + 1) & (h->cap - 1)) {
        skey *k = h->slot[i];
        if (!k)
            return NULL;
        if (k->hash == hash && k->len == len && memcmp(k->name, name, len) == 0)
            return k;
    }
}

static int ht_put(htab *h, skey *k)
{
    if ((h->n + 1) * 2 > h->cap) {
        size_t nc = h->cap ? h->cap * 2 : 64;
        skey **ns = calloc(nc, sizeof *ns);
        if (!ns)
            return WEFT_ENOMEM;
        for (size_t i = 0; i < h->cap; i++)
            if (h->slot[i]) {
                size_t j = h->slot[i]->hash & (nc - 1);
                while (ns[j])
                    j = (j + 1) & (nc - 1);
                ns[j] = h->slot[i];
            }
        free(h->slot);
        h->slot = ns;
        h->cap = nc;
    }
    size_t j = k->hash & (h->cap - 1);
    while (h->slot[j])
        j = (j + 1) & (h->cap - 1);
    h->slot[j] = k;
    h->n++;
    return 0;
}

/* A new entry of `size` bytes starting with its key, added to h. */
static void *ht_add(htab *h, const char *name, size_t len, size_t size)
{
    skey *k = calloc(1, size);
    if (!k || !(k->name = strndup(name, len))) {
        free(k);
        return NULL;
    }
    k->len = len;
    k->hash = fnv1a(name, len);
    if (ht_put(h, k) < 0) {
        free(k->name);
        free(k);
        return NULL;
    }
    return k;
}

static void cat_free(scat *c)
{
    free(c->pos);
}

static void stream_free(sstream *s)
{
    free(s->pos);
    free(s->idh);
}

static void ht_free(htab *h, void (*release)(void *))
{
    for (size_t i = 0; i < h->cap; i++)
        if (h->slot[i]) {
            release(h->slot[i]);
            free(h->slot[i]->name);
            free(h->slot[i]);
        }
    free(h->slot);
    memset(h, 0, sizeof *h);
}

static void cat_release(void *p)
{
    cat_free(p);
}
static void stream_release(void *p)
{
    stream_free(p);
}

static sstream *stream_find(elog_streams *st, const char *name, size_t len)
{
    return (sstream *)ht_find(&st->streams, name, len);
}

static scat *cat_find(elog_streams *st, const char *name, size_t len)
{
    return (scat *)ht_find(&st->cats, name, len);
}

static sstream *stream_get(elog_streams *st, const char *name, size_t len)
{
    sstream *s = stream_find(st, name, len);
    if (s)
        return s;
    size_t cl = category_len(name, len);
    scat *c = cat_find(st, name, cl);
    if (!c) {
        if (!(c = ht_add(&st->cats, name, cl, sizeof *c)))
            return NULL;
        c->kafka =
            elog_topic_name_ok((weft_str){name, cl}) && !elog_topic_internal((weft_str){name, cl});
    }
    if (!(s = ht_add(&st->streams, name, len, sizeof *s)))
        return NULL;
    s->cat = c; /* counted in m_streams with its first event (index_add) */
    return s;
}

/* A capacity >= need: cap doubled (from `first` when 0). */
static size_t grown(size_t cap, size_t need, size_t first)
{
    size_t nc = cap ? cap : first;
    while (nc < need)
        nc *= 2;
    return nc;
}

/* realloc(arr) to nc elements, or return WEFT_ENOMEM from the caller. */
#define RESIZE_OR_FAIL(arr, nc)                                                                    \
    do {                                                                                           \
        void *np_ = realloc((arr), (nc) * sizeof *(arr));                                          \
        if (!np_)                                                                                  \
            return WEFT_ENOMEM;                                                                    \
        (arr) = np_;                                                                               \
    } while (0)

/* Room for `more` events in s and its category, so that indexing an append
 * that is already written cannot fail. */
static int reserve(sstream *s, size_t more)
{
    if (s->n + more > s->cap) {
        size_t nc = grown(s->cap, s->n + more, 4);
        RESIZE_OR_FAIL(s->pos, nc);
        RESIZE_OR_FAIL(s->idh, nc);
        s->cap = nc;
    }
    scat *c = s->cat;
    if (c->n + more > c->cap) {
        size_t nc = grown(c->cap, c->n + more, 16);
        RESIZE_OR_FAIL(c->pos, nc);
        c->cap = nc;
    }
    return 0;
}

static void index_add(elog_streams *st, sstream *s, int64_t pos, uint64_t idh)
{
    if (s->n == 0) /* an append refused after stream_get leaves an empty entry */
        weft_metric_gauge_add(st->m, st->m_streams, 1);
    s->pos[s->n] = pos;
    s->idh[s->n++] = idh;
    s->cat->pos[s->cat->n++] = pos;
}

/* First i with a[i] >= v. */
static size_t lower_bound(const int64_t *a, size_t n, int64_t v)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (a[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* ---- reading events back ---- */

static void rdr_release(rdr *rd)
{
    free(rd->buf);
    rd->buf = NULL;
    rd->len = rd->cap = 0;
    rd->first = rd->end = -1;
}

/* Load the batches from pos on: 1, 0 if there is nothing at pos (the end
 * of the log), or < 0. */
static int rdr_load(rdr *rd, int64_t pos)
{
    plog_slice s;
    int rc = plog_read(rd->l, pos, rd->chunk, &s);
    if (rc < 0)
        return rc;
    if (s.len == 0)
        return 0;
    rd->len = 0;
    rd->first = rd->end = -1;
    if (s.len > rd->cap) {
        uint8_t *nb = realloc(rd->buf, s.len);
        if (!nb) {
            plog_slice_release(&s);
            return WEFT_ENOMEM;
        }
        rd->buf = nb;
        rd->cap = s.len;
    }
    size_t got = 0;
    while (got < s.len) {
        ssize_t n = pread(s.fd, rd->buf + got, s.len - got, s.pos + (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    int64_t first = s.first_offset, end = first;
    plog_slice_release(&s);
    size_t off = 0;
    kf_batch b;
    int64_t sz;
    while (off < got && (sz = kf_batch_parse(rd->buf + off, got - off, &b)) > 0) {
        end = b.base_offset + b.last_offset_delta + 1;
        off += (size_t)sz;
    }
    if (off == 0 || pos >= end)
        return WEFT_EIO;
    rd->len = off;
    rd->first = first;
    rd->end = end;
    rd->hint = 0;
    rd->hint_base = first;
    return 1;
}

/* The batch holding position pos: 1 with *bp and *b, 0 past the end, < 0. */
static int rdr_batch(rdr *rd, int64_t pos, const uint8_t **bp, kf_batch *b)
{
    if (rd->len == 0 || pos < rd->first || pos >= rd->end) {
        int rc = rdr_load(rd, pos);
        if (rc <= 0)
            return rc;
    }
    size_t off = pos >= rd->hint_base ? rd->hint : 0;
    int64_t sz;
    while (off < rd->len && (sz = kf_batch_parse(rd->buf + off, rd->len - off, b)) > 0) {
        if (pos < b->base_offset)
            break;
        if (pos <= b->base_offset + b->last_offset_delta) {
            rd->hint = off;
            rd->hint_base = b->base_offset;
            *bp = rd->buf + off;
            return 1;
        }
        off += (size_t)sz;
    }
    return WEFT_EIO;
}

static bool parse_i64(weft_str v, int64_t *out)
{
    if (!v.p || v.n == 0 || v.n > 19)
        return false;
    int64_t x = 0;
    for (size_t i = 0; i < v.n; i++) {
        if (v.p[i] < '0' || v.p[i] > '9' || x > (INT64_MAX - (v.p[i] - '0')) / 10)
            return false; /* not a digit, or past INT64_MAX */
        x = x * 10 + (v.p[i] - '0');
    }
    *out = x;
    return true;
}

static int decode(const kf_batch *b, const kf_record *rec, sevent *ev)
{
    memset(ev, 0, sizeof *ev);
    ev->position = b->base_offset + rec->offset_delta;
    ev->time_ms = b->base_timestamp + rec->timestamp_delta;
    ev->stream = rec->key;
    ev->data = rec->value;
    ev->version = -1;
    for (size_t i = 0; i < rec->nheaders; i++) {
        kf_header h;
        if (kf_record_header(rec, i, &h) < 0)
            return WEFT_EPROTO;
        if (weft_str_eq(h.key, WEFT_STR("weft.version")) && !parse_i64(h.value, &ev->version))
            return WEFT_EPROTO;
        if (weft_str_eq(h.key, WEFT_STR("weft.id")))
            ev->id = h.value;
        else if (weft_str_eq(h.key, WEFT_STR("weft.type")))
            ev->type = h.value;
        else if (weft_str_eq(h.key, WEFT_STR("weft.metadata")))
            ev->metadata = h.value;
    }
    return ev->stream.p && ev->id.p && ev->version >= 0 ? 0 : WEFT_EPROTO;
}

/* The event at position pos: 1, 0 past the end, < 0. */
static int read_event(elog_streams *st, int64_t pos, sevent *ev)
{
    const uint8_t *bp;
    kf_batch b;
    int rc = rdr_batch(&st->rd, pos, &bp, &b);
    if (rc <= 0)
        return rc;
    size_t at = 0;
    kf_record rec;
    while ((rc = kf_record_next(bp, &b, &at, &rec)) == 1)
        if (b.base_offset + rec.offset_delta == pos)
            return decode(&b, &rec, ev) < 0 ? WEFT_EIO : 1;
    return WEFT_EIO;
}

/* ---- JSON out ---- */

static void put(jbuf *b, const char *p, size_t n)
{
    if (n && weft_buf_append(&b->b, p, n) < 0)
        b->err = true;
}
#define PUT_LIT(b, lit) put((b), (lit), sizeof(lit) - 1)

static void put_i64(jbuf *b, int64_t v)
{
    char t[24];
    put(b, t, (size_t)snprintf(t, sizeof t, "%" PRId64, v));
}

static void put_jstr(jbuf *b, weft_str s)
{
    static const char hex[] = "0123456789abcdef";
    put(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < s.n; i++) {
        unsigned char c = (unsigned char)s.p[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        put(b, s.p + run, i - run);
        run = i + 1;
        char e[6] = {'\\', (char)c, 0, 0, 0, 0};
        if (c < 0x20) {
            memcpy(e, "\\u00", 4);
            e[4] = hex[c >> 4];
            e[5] = hex[c & 15];
            put(b, e, 6);
        } else {
            put(b, e, 2);
        }
    }
    put(b, s.p + run, s.n - run);
    put(b, "\"", 1);
}

static void put_raw_or_null(jbuf *b, weft_str v)
{
    if (v.p && v.n)
        put(b, v.p, v.n);
    else
        PUT_LIT(b, "null");
}

static void event_json(jbuf *b, const sevent *ev)
{
    PUT_LIT(b, "{\"stream\":");
    put_jstr(b, ev->stream);
    PUT_LIT(b, ",\"version\":");
    put_i64(b, ev->version);
    PUT_LIT(b, ",\"position\":");
    put_i64(b, ev->position);
    PUT_LIT(b, ",\"id\":");
    put_jstr(b, ev->id);
    PUT_LIT(b, ",\"type\":");
    if (ev->type.p)
        put_jstr(b, ev->type);
    else
        PUT_LIT(b, "null");
    PUT_LIT(b, ",\"data\":");
    put_raw_or_null(b, ev->data);
    PUT_LIT(b, ",\"metadata\":");
    put_raw_or_null(b, ev->metadata);
    time_t secs = (time_t)(ev->time_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char t[64];
    size_t n = strftime(t, sizeof t, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(t + n, sizeof t - n, ".%03dZ", (int)(ev->time_ms % 1000));
    PUT_LIT(b, ",\"time\":\"");
    put(b, t, n);
    PUT_LIT(b, "\"}");
}

static void respond_err(weft_http_req *r, int status, const char *msg)
{
    weft_json_respond(r, status, json_pack("{s:s}", "error", msg));
}

/* ---- the category topics ---- */

/* The category's topic, created if missing (*created then says so). */
static ktopic *cat_topic(elog_streams *st, scat *c, bool *created)
{
    weft_str name = {c->k.name, c->k.len};
    ktopic *t = elog_topic_find(st->e, name);
    *created = !t;
    if (t)
        return t;
    elog_topic_conf conf = st->e->o.defaults;
    conf.partitions = 1;
    conf.log.retention_ms = -1;
    conf.log.retention_bytes = -1;
    conf.log.fsync = PLOG_FSYNC_INTERVAL; /* derived data: copied again after a crash */
    int rc = elog_topic_create(st->e, name, 1, &conf, &t);
    if (rc != 0 && !c->warned) {
        c->warned = true;
        weft_log(WEFT_LOG_ERROR, "streams: cannot create a category topic",
                 WEFT_KV_STR("topic", c->k.name),
                 WEFT_KV_STR("error", rc < 0 ? weft_strerror(rc) : "kafka error"));
    }
    return rc == 0 ? t : NULL;
}

static int32_t partition_of(const ktopic *t, weft_str key)
{
    return t->npart == 1 ? 0 : (int32_t)((murmur2(key.p, key.n) & 0x7fffffff) % (uint32_t)t->npart);
}

/* Stop copying c's events until repair_cats catches it up, after_ms from
 * now (or sooner, if a repair is due sooner). */
static void stall(elog_streams *st, scat *c, uint64_t after_ms)
{
    c->stalled = true;
    weft_metric_gauge_add(st->m, st->m_stalled, 1);
    if (!st->nstalled++ || !after_ms)
        weft_timer_start(st->loop, &st->repair, after_ms);
}

/* Copy the records of one __weft_streams batch from position `from` on
 * (all of one append, so of one stream) to their category topic; nothing
 * while the category is stalled. A failure stalls it. */
static int copy_batch(elog_streams *st, const uint8_t *bp, const kf_batch *b, int64_t from)
{
    size_t cnt = (size_t)b->last_offset_delta + 1, n = 0, at = 0;
    kf_record_in *recs = calloc(cnt, sizeof *recs);
    kf_header *hs = calloc(cnt * MAX_COPY_HEADERS, sizeof *hs);
    char(*posv)[24] = calloc(cnt, sizeof *posv);
    weft_buf out;
    weft_buf_init(&out, 0);
    int rc = recs && hs && posv ? 0 : WEFT_ENOMEM;
    kf_record rec;
    while (rc == 0 && n < cnt && (rc = kf_record_next(bp, b, &at, &rec)) == 1) {
        rc = 0;
        int64_t pos = b->base_offset + rec.offset_delta;
        if (pos < from)
            continue;
        kf_header *h = hs + n * MAX_COPY_HEADERS;
        size_t nh = 0;
        for (size_t i = 0; i < rec.nheaders && nh < MAX_COPY_HEADERS - 1 && rc == 0; i++)
            rc = kf_record_header(&rec, i, &h[nh++]);
        h[nh].key = WEFT_STR("weft.position");
        h[nh].value = (weft_str){posv[n], (size_t)snprintf(posv[n], 24, "%" PRId64, pos)};
        recs[n] = (kf_record_in){.key = rec.key,
                                 .value = rec.value,
                                 .headers = h,
                                 .nheaders = nh + 1,
                                 .timestamp = b->base_timestamp + rec.timestamp_delta};
        n++;
    }
    scat *c = n && rc == 0 && recs[0].key.p
                  ? cat_find(st, recs[0].key.p, category_len(recs[0].key.p, recs[0].key.n))
                  : NULL;
    bool created = false;
    ktopic *t = c && c->kafka && !c->stalled ? cat_topic(st, c, &created) : NULL;
    if (t && created && c->pos[0] < from) {
        /* the topic was deleted (by a Kafka client) while running: the
         * category's earlier events must go in first, in order. The repair
         * copies them, and this batch after them, at once (not from here:
         * it reads back with the reader this batch is in) */
        weft_log(WEFT_LOG_INFO, "streams: category topic created again; copying its events",
                 WEFT_KV_STR("topic", c->k.name));
        stall(st, c, 0);
        t = NULL;
    }
    if (t) {
        kpart *p = &t->parts[partition_of(t, recs[0].key)];
        weft_buf_init(&out, t->conf.log.max_batch_bytes);
        int64_t base;
        rc = kf_batch_build(&out, recs, n);
        if (rc == 0)
            rc = plog_append(p->log, (uint8_t *)weft_buf_rptr(&out), weft_buf_used(&out), 0, &base);
        if (rc == 0)
            elog_fetch_wake(p);
    } else if (c && c->kafka && !c->stalled) {
        rc = WEFT_EIO; /* cat_topic has logged why */
    }
    if (rc < 0 && c && c->kafka && !c->stalled) {
        stall(st, c, REPAIR_MS);
        if (!c->warned) {
            c->warned = true;
            weft_log(WEFT_LOG_ERROR,
                     "streams: cannot copy events to their category topic; its copies wait "
                     "and are retried in order",
                     WEFT_KV_STR("topic", c->k.name), WEFT_KV_STR("error", weft_strerror(rc)));
        }
    }
    weft_buf_release(&out);
    free(recs);
    free(hs);
    free(posv);
    return rc;
}

/* Copy every durable event not yet copied. */
static void copy_to(elog_streams *st, int64_t end)
{
    while (st->mirrored < end) {
        const uint8_t *bp;
        kf_batch b;
        if (rdr_batch(&st->rd, st->mirrored, &bp, &b) != 1) {
            weft_log(WEFT_LOG_ERROR, "streams: cannot read back events to copy",
                     WEFT_KV_INT("position", st->mirrored));
            return; /* copied again at the next start */
        }
        copy_batch(st, bp, &b, st->mirrored);
        st->mirrored = b.base_offset + b.last_offset_delta + 1;
    }
}

/* The highest weft.position in a partition of a category topic (-1: none),
 * from its last batches backwards (records from other producers are
 * skipped). */
static int64_t highest_copied(kpart *p)
{
    rdr rd = {.l = p->log, .chunk = READ_CHUNK, .first = -1, .end = -1};
    int64_t best = -1, start = plog_start_offset(p->log);
    for (int64_t off = plog_end_offset(p->log) - 1; off >= start && best < 0;) {
        const uint8_t *bp;
        kf_batch b;
        if (rdr_batch(&rd, off, &bp, &b) != 1)
            break;
        size_t at = 0;
        kf_record rec;
        while (kf_record_next(bp, &b, &at, &rec) == 1)
            for (size_t i = 0; i < rec.nheaders; i++) {
                kf_header h;
                int64_t v;
                if (kf_record_header(&rec, i, &h) == 0 &&
                    weft_str_eq(h.key, WEFT_STR("weft.position")) && parse_i64(h.value, &v) &&
                    v > best)
                    best = v;
            }
        off = b.base_offset - 1;
    }
    rdr_release(&rd);
    return best;
}

/* Copy the category's events below end that its topic is missing (after
 * a crash, or a failed copy: see stall): those after the highest
 * weft.position of each partition. Returns false if a copy failed. */
static bool recopy_category(elog_streams *st, scat *c, int64_t end)
{
    ktopic *t = elog_topic_find(st->e, (weft_str){c->k.name, c->k.len});
    int32_t np = t ? t->npart : 1;
    int64_t *hi = calloc((size_t)np, sizeof *hi);
    if (!hi)
        return false;
    int64_t lo = INT64_MAX;
    for (int32_t k = 0; k < np; k++) {
        hi[k] = t ? highest_copied(&t->parts[k]) : -1;
        lo = hi[k] < lo ? hi[k] : lo;
    }
    size_t copied = 0;
    bool ok = true;
    /* lo may come from any producer's header: INT64_MAX is past every event */
    for (size_t i = lo < INT64_MAX ? lower_bound(c->pos, c->n, lo + 1) : c->n;
         i < c->n && c->pos[i] < end;) {
        const uint8_t *bp;
        kf_batch b;
        kf_record rec;
        size_t at = 0;
        if (rdr_batch(&st->rd, c->pos[i], &bp, &b) != 1 ||
            kf_record_next(bp, &b, &at, &rec) != 1) {
            ok = false;
            break;
        }
        t = elog_topic_find(st->e, (weft_str){c->k.name, c->k.len});
        int32_t k = t && t->npart == np ? partition_of(t, rec.key) : 0;
        if (c->pos[i] <= hi[k]) {
            i++;
            continue;
        }
        if (copy_batch(st, bp, &b, c->pos[i]) < 0) {
            ok = false;
            break;
        }
        size_t next = lower_bound(c->pos, c->n, b.base_offset + b.last_offset_delta + 1);
        copied += next - i;
        i = next;
    }
    free(hi);
    if (copied)
        weft_log(WEFT_LOG_INFO, "streams: events copied again to their category topic",
                 WEFT_KV_STR("topic", c->k.name), WEFT_KV_UINT("events", copied));
    return ok;
}

/* Every REPAIR_MS while a category is stalled: catch each one up; one that
 * gets through copies live again. */
static void repair_cats(weft_loop *loop, weft_timer *t)
{
    elog_streams *st = t->data;
    for (size_t i = 0; i < st->cats.cap; i++) {
        scat *c = (scat *)st->cats.slot[i];
        if (!c || !c->stalled)
            continue;
        c->stalled = false;
        st->nstalled--;
        weft_metric_gauge_add(st->m, st->m_stalled, -1);
        bool ok = recopy_category(st, c, st->mirrored);
        if (c->stalled)
            continue; /* a copy failed (or the topic went again) and stalled it */
        if (ok) {
            weft_log(WEFT_LOG_INFO, "streams: category topic caught up; copies go on",
                     WEFT_KV_STR("topic", c->k.name));
            c->warned = false;
        } else {
            stall(st, c, REPAIR_MS); /* failed before copying (reading back) */
        }
    }
    if (st->nstalled && !weft_timer_active(t))
        weft_timer_start(loop, t, REPAIR_MS);
}

/* ---- subscriptions ---- */

static void sub_free(ssub *sb)
{
    elog_streams *st = sb->st;
    link_remove(&st->subs, &sb->link);
    st->nsubs--;
    weft_metric_gauge_add(st->m, st->m_subs, -1);
    free(sb);
}

static void sub_end(ssub *sb)
{
    weft_sse_end(&sb->sse);
    sub_free(sb);
}

/* The subscriber's next durable event: its position and SSE id. */
static bool sub_next(elog_streams *st, ssub *sb, int64_t durable, int64_t *pos, int64_t *id)
{
    if (sb->kind == SUB_ALL) {
        *pos = *id = sb->cursor;
        return sb->cursor < durable;
    }
    if (sb->kind == SUB_CATEGORY) {
        scat *c = cat_find(st, sb->name, sb->len);
        size_t i = c ? lower_bound(c->pos, c->n, sb->cursor) : 0;
        if (!c || i == c->n || c->pos[i] >= durable)
            return false;
        *pos = *id = c->pos[i];
        return true;
    }
    sstream *s = stream_find(st, sb->name, sb->len);
    if (!s || sb->cursor >= (int64_t)s->n || s->pos[sb->cursor] >= durable)
        return false;
    *pos = s->pos[sb->cursor];
    *id = sb->cursor;
    return true;
}

/* Send durable events after the cursor until the socket pushes back
 * (sub_drain is never called from inside one of these writes: weft/sse.h). */
static void sub_pump(ssub *sb)
{
    elog_streams *st = sb->st;
    int64_t durable = plog_durable_offset(st->p->log), pos, id;
    while (!sb->sse.paused && sub_next(st, sb, durable, &pos, &id)) {
        sevent ev;
        if (read_event(st, pos, &ev) != 1) {
            weft_log(WEFT_LOG_ERROR, "streams: cannot read an event back; ending a subscription",
                     WEFT_KV_INT("position", pos));
            sub_end(sb);
            return;
        }
        sb->cursor = id + 1;
        jbuf *b = &st->scratch;
        weft_buf_clear(&b->b);
        b->err = false;
        event_json(b, &ev);
        int rc = b->err ? WEFT_ETOOBIG
                        : weft_sse_event(&sb->sse, (uint64_t)id, WEFT_STR_NULL,
                                         (weft_str){weft_buf_rptr(&b->b), weft_buf_used(&b->b)});
        if (rc == WEFT_ECLOSED)
            return; /* on_abort freed the subscriber */
        if (rc < 0) { /* not framed: end, the client resumes from its Last-Event-ID */
            sub_end(sb);
            return;
        }
    }
}

static void sub_drain(weft_http_req *r, void *ud)
{
    (void)r;
    sub_pump(ud);
}

static void sub_abort(weft_http_req *r, void *ud)
{
    (void)r;
    sub_free(ud);
}

static void ping_subs(weft_loop *loop, weft_timer *t)
{
    elog_streams *st = t->data;
    for (slink *l = st->subs, *next; l; l = next) {
        next = l->next; /* a write may end the subscriber (its on_drain) */
        weft_sse_ping(&((ssub *)l)->sse);
    }
    weft_timer_start(loop, t, PING_MS);
}

/* New durable events: copy them to the category topics, wake subscribers. */
static void advance(elog_streams *st)
{
    int64_t durable = plog_durable_offset(st->p->log);
    if (durable <= st->advanced)
        return;
    st->advanced = durable;
    copy_to(st, durable);
    for (slink *l = st->subs, *next; l; l = next) {
        next = l->next; /* a failed write frees the subscriber */
        if (!((ssub *)l)->sse.paused)
            sub_pump((ssub *)l);
    }
}

/* ---- appends ---- */

typedef struct sinput {
    const char *id, *type;
    size_t idlen;
    uint64_t idh;
    char *data, *meta; /* compact JSON; meta NULL: none */
} sinput;

static void inputs_free(sinput *in, size_t n)
{
    for (size_t i = 0; in && i < n; i++) {
        free(in[i].data);
        free(in[i].meta);
    }
    free(in);
}

static bool id_ok(const char *p, size_t n)
{
    return n <= MAX_ID && name_ok(p, n);
}

static const char *parse_expected(json_t *v, int64_t *out)
{
    static const char why[] = "expected_version: \"any\", \"no_stream\", \"stream_exists\" or a "
                              "version >= 0";
    if (!v) {
        *out = EXP_ANY;
        return NULL;
    }
    const char *s = json_string_value(v);
    if (s) {
        *out = !strcmp(s, "any")             ? EXP_ANY
               : !strcmp(s, "no_stream")     ? EXP_NO_STREAM
               : !strcmp(s, "stream_exists") ? EXP_EXISTS
                                             : INT64_MIN;
        return *out == INT64_MIN ? why : NULL;
    }
    if (!json_is_integer(v))
        return why;
    *out = json_integer_value(v);
    return *out >= 0 || *out == EXP_ANY || *out == EXP_NO_STREAM || *out == EXP_EXISTS ? NULL : why;
}

/* parse_append's answer when it runs out of memory: 503, not 400 */
static const char PARSE_OOM[] = "out of memory";

/* Validate one event object into *in. NULL or the reason it is refused. */
static const char *parse_event(json_t *ev, sinput *in)
{
    if (!json_is_object(ev))
        return "events: each event is an object {\"id\", \"type\", \"data\", \"metadata\"?}";
    const char *key;
    json_t *v;
    json_object_foreach(ev, key, v)
    {
        if (strcmp(key, "id") && strcmp(key, "type") && strcmp(key, "data") &&
            strcmp(key, "metadata"))
            return "events: unknown field (expected id, type, data, metadata)";
    }
    json_t *id = json_object_get(ev, "id"), *type = json_object_get(ev, "type");
    json_t *data = json_object_get(ev, "data"), *meta = json_object_get(ev, "metadata");
    if (!json_is_string(id) || !id_ok(json_string_value(id), json_string_length(id)))
        return "events: id is required: 1-100 characters of letters, digits, '.', '_', ':', '-'";
    if (!json_is_string(type) || json_string_length(type) == 0 ||
        json_string_length(type) > MAX_TYPE)
        return "events: type is required: a string of 1-200 bytes";
    if (!data)
        return "events: data is required (any JSON value)";
    in->id = json_string_value(id);
    in->idlen = json_string_length(id);
    in->idh = fnv1a(in->id, in->idlen);
    in->type = json_string_value(type);
    in->data = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
    in->meta =
        meta && !json_is_null(meta) ? json_dumps(meta, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    if (!in->data || (meta && !json_is_null(meta) && !in->meta))
        return PARSE_OOM;
    if (strlen(in->data) + (in->meta ? strlen(in->meta) : 0) > MAX_EVENT_BYTES)
        return "events: an event's data and metadata may take at most 256 KiB";
    return NULL;
}

/* Parse and validate an append's body. NULL or the reason (400). */
static const char *parse_append(json_t *root, int64_t *expected, sinput **out, size_t *nout)
{
    *out = NULL;
    *nout = 0;
    if (!json_is_object(root))
        return "expected {\"expected_version\": ..., \"events\": [...]}";
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "expected_version") && strcmp(key, "events"))
            return "unknown field (expected expected_version, events)";
    }
    const char *why = parse_expected(json_object_get(root, "expected_version"), expected);
    if (why)
        return why;
    json_t *evs = json_object_get(root, "events");
    size_t n = json_array_size(evs);
    if (!json_is_array(evs) || n == 0 || n > MAX_EVENTS)
        return "events: an array of 1 to 1000 events";
    sinput *in = calloc(n, sizeof *in);
    if (!in)
        return PARSE_OOM;
    *out = in;
    for (size_t i = 0; i < n; i++) {
        *nout = i + 1;
        if ((why = parse_event(json_array_get(evs, i), &in[i])))
            return why;
        for (size_t k = 0; k < i; k++)
            if (in[k].idh == in[i].idh && in[k].idlen == in[i].idlen &&
                !memcmp(in[k].id, in[i].id, in[i].idlen))
                return "events: the same id twice in one append";
    }
    return NULL;
}

/* How many of the append's events are, in order, the events of s from
 * version v on (matched by id hash, then by the id in the log). */
static size_t match_count(elog_streams *st, const sstream *s, int64_t v, const sinput *in, size_t n)
{
    size_t k = 0;
    for (; k < n && v >= 0 && (size_t)v + k < s->n; k++) {
        sevent ev;
        if (s->idh[v + k] != in[k].idh || read_event(st, s->pos[v + k], &ev) != 1 ||
            !weft_str_eq(ev.id, (weft_str){in[k].id, in[k].idlen}))
            break;
    }
    return k;
}

enum { D_APPEND, D_IDEMPOTENT, D_CONFLICT };

/* EventStoreDB's commit check (see the top of the file). */
static int decide(elog_streams *st, const sstream *s, int64_t exp, const sinput *in, size_t n,
                  int64_t *first)
{
    int64_t cur = s ? (int64_t)s->n - 1 : -1;
    if (exp == EXP_ANY || exp == EXP_EXISTS) {
        size_t lo = s && s->n > RECENT_IDS ? s->n - RECENT_IDS : 0;
        for (size_t v = s ? s->n : 0; v-- > lo;) {
            if (s->idh[v] != in[0].idh)
                continue;
            size_t k = match_count(st, s, (int64_t)v, in, n);
            if (k == n) {
                *first = (int64_t)v;
                return D_IDEMPOTENT;
            }
            if (k > 0)
                return D_CONFLICT; /* partly written before */
        }
        return exp == EXP_EXISTS && cur < 0 ? D_CONFLICT : D_APPEND;
    }
    if (exp == EXP_NO_STREAM)
        exp = -1;
    if (exp < cur) {
        if (match_count(st, s, exp + 1, in, n) == n) {
            *first = exp + 1;
            return D_IDEMPOTENT;
        }
        return D_CONFLICT;
    }
    return exp == cur ? D_APPEND : D_CONFLICT;
}

/* Write the append as one batch; *base gets the first event's position. */
static int write_append(elog_streams *st, sstream *s, const sinput *in, size_t n, int64_t *base)
{
    kf_record_in *recs = calloc(n, sizeof *recs);
    kf_header *hs = calloc(n * 5, sizeof *hs);
    char(*vers)[24] = calloc(n, sizeof *vers);
    weft_buf out;
    weft_buf_init(&out, MAX_APPEND_BYTES);
    int rc = recs && hs && vers ? 0 : WEFT_ENOMEM;
    int64_t now = wall_ms();
    weft_str name = {s->k.name, s->k.len};
    for (size_t i = 0; rc == 0 && i < n; i++) {
        kf_header *h = hs + i * 5;
        h[0] = (kf_header){WEFT_STR("weft.stream"), name};
        h[1] = (kf_header){WEFT_STR("weft.version"),
                           {vers[i], (size_t)snprintf(vers[i], 24, "%zu", s->n + i)}};
        h[2] = (kf_header){WEFT_STR("weft.id"), {in[i].id, in[i].idlen}};
        h[3] = (kf_header){WEFT_STR("weft.type"), weft_str_from(in[i].type)};
        h[4] = (kf_header){WEFT_STR("weft.metadata"), weft_str_from(in[i].meta)};
        recs[i] = (kf_record_in){.key = name,
                                 .value = weft_str_from(in[i].data),
                                 .headers = h,
                                 .nheaders = in[i].meta ? 5 : 4,
                                 .timestamp = now};
    }
    if (rc == 0)
        rc = kf_batch_build(&out, recs, n);
    if (rc == 0)
        rc = plog_append(st->p->log, (uint8_t *)weft_buf_rptr(&out), weft_buf_used(&out), 0, base);
    if (rc == 0)
        elog_fetch_wake(st->p);
    weft_buf_release(&out);
    free(recs);
    free(hs);
    free(vers);
    return rc;
}

static void answer_ok(weft_http_req *r, const char *stream, int64_t first, int64_t last,
                      int64_t pos)
{
    weft_json_respond(r, 200,
                 json_pack("{s:s, s:I, s:I, s:I}", "stream", stream, "first_version",
                           (json_int_t)first, "last_version", (json_int_t)last, "position",
                           (json_int_t)pos));
}

static void answer_log_failed(weft_http_req *r)
{
    respond_err(r, 503,
                "the event log could not make the append durable (a disk write failed; see "
                "the server log): it refuses appends until restarted, and after a restart "
                "a retry with the same ids is written once or answered as already written");
}

static void op_durable(void *ud)
{
    sop *op = ud;
    elog_streams *st = op->st;
    link_remove(&st->ops, &op->link);
    if (op->r) {
        weft_http_req_on_abort(op->r, NULL, NULL);
        if (plog_durable_offset(st->p->log) > op->last)
            answer_ok(op->r, op->stream, op->first_version, op->last_version, op->position);
        else /* the log failed (elog_wait_durable_fn) */
            answer_log_failed(op->r);
    }
    free(op);
    advance(st);
}

static void op_abort(weft_http_req *r, void *ud)
{
    (void)r;
    ((sop *)ud)->r = NULL;
}

/* Answer r once the events up to position op->last are durable. */
static void answer_when_durable(elog_streams *st, weft_http_req *r, sop *op)
{
    if (plog_durable_offset(st->p->log) > op->last) {
        answer_ok(r, op->stream, op->first_version, op->last_version, op->position);
        free(op);
        return;
    }
    int rc = elog_wait_durable_fn(st->p, op->last + 1, op_durable, op);
    if (rc < 0) {
        free(op);
        if (rc == WEFT_EIO) /* the log failed, e.g. under the original of this retry */
            answer_log_failed(r);
        else
            respond_err(r, 503,
                        "out of memory: the append may have been written; retry it (retries "
                        "with the same ids are idempotent)");
        return;
    }
    op->st = st;
    op->r = r;
    link_push(&st->ops, &op->link);
    weft_http_req_on_abort(r, op_abort, op);
}

/* An append whose body is valid: check, write (or find the original),
 * answer once durable. */
static void append_checked(elog_streams *st, weft_http_req *r, const char *name, size_t len,
                           int64_t exp, const sinput *in, size_t n)
{
    sstream *s = stream_find(st, name, len);
    int64_t first = 0;
    int d = decide(st, s, exp, in, n, &first);
    if (d == D_CONFLICT) {
        weft_metric_inc(st->m, st->m_conflicts);
        weft_json_respond(r, 409,
                     json_pack("{s:s, s:I}", "error", "wrong expected version", "current_version",
                               (json_int_t)(s ? (int64_t)s->n - 1 : -1)));
        return;
    }
    sop *op = calloc(1, sizeof *op);
    if (!op) {
        respond_err(r, 503, "out of memory");
        return;
    }
    memcpy(op->stream, name, len);
    if (d == D_IDEMPOTENT) {
        weft_metric_inc(st->m, st->m_idempotent);
    } else {
        int rc = (s = stream_get(st, name, len)) ? reserve(s, n) : WEFT_ENOMEM;
        int64_t base = 0;
        first = s ? (int64_t)s->n : 0;
        if (rc == 0)
            rc = write_append(st, s, in, n, &base);
        if (rc < 0) {
            weft_log(WEFT_LOG_WARN, "streams: append refused", WEFT_KV_STR("stream", op->stream),
                     WEFT_KV_STR("error", weft_strerror(rc)));
            if (rc == WEFT_ETOOBIG)
                respond_err(r, 400, "the append is too large: at most 960 KiB of events");
            else
                respond_err(r, 503, "storage error: nothing was appended");
            free(op);
            return;
        }
        for (size_t i = 0; i < n; i++) /* cannot fail: reserved */
            index_add(st, s, base + (int64_t)i, in[i].idh);
        weft_metric_inc(st->m, st->m_appends);
        weft_metric_add(st->m, st->m_events, n);
    }
    op->first_version = first;
    op->last_version = first + (int64_t)n - 1;
    op->position = s->pos[first];
    op->last = s->pos[op->last_version];
    answer_when_durable(st, r, op);
}

/* Decode an append's body. NULL (*root and *in are then the caller's to
 * free) or the reason for a 400 (possibly in buf). */
static const char *load_append(weft_str body, char *buf, size_t buflen, json_t **root, int64_t *exp,
                               sinput **in, size_t *n)
{
    json_error_t je;
    *in = NULL;
    *n = 0;
    *root = json_loadb(body.p ? body.p : "", body.n, JSON_REJECT_DUPLICATES, &je);
    if (!*root) {
        snprintf(buf, buflen, "invalid JSON at line %d column %d: %s", je.line, je.column, je.text);
        return buf;
    }
    return parse_append(*root, exp, in, n);
}

bool elog_streams_body_ok(const char *p, size_t len)
{
    char buf[300];
    json_t *root;
    int64_t exp;
    sinput *in;
    size_t n;
    const char *why = load_append((weft_str){p, len}, buf, sizeof buf, &root, &exp, &in, &n);
    inputs_free(in, n);
    json_decref(root);
    return why == NULL;
}

static void h_append(elog_streams *st, weft_http_req *r, const char *name, size_t len)
{
    char buf[300];
    json_t *root;
    int64_t exp;
    sinput *in;
    size_t n;
    const char *why = load_append(weft_http_req_body(r), buf, sizeof buf, &root, &exp, &in, &n);
    if (why)
        respond_err(r, why == PARSE_OOM ? 503 : 400, why);
    else
        append_checked(st, r, name, len, exp, in, n);
    inputs_free(in, n);
    json_decref(root);
}

/* ---- reads ---- */

typedef struct page {
    jbuf b;
    size_t count, limit;
} page;

static bool page_full(const page *pg)
{
    return pg->count >= pg->limit || weft_buf_used(&pg->b.b) >= MAX_PAGE_BYTES || pg->b.err;
}

/* Add the event at pos. false if it cannot be read (the page ends). */
static bool page_add(elog_streams *st, page *pg, int64_t pos)
{
    sevent ev;
    if (read_event(st, pos, &ev) != 1) {
        weft_log(WEFT_LOG_ERROR, "streams: cannot read an event back",
                 WEFT_KV_INT("position", pos));
        return false;
    }
    if (pg->count++)
        put(&pg->b, ",", 1);
    event_json(&pg->b, &ev);
    return true;
}

/* End the page: next (or null when next < 0), then `tail` (",..." or ""). */
static void page_respond(weft_http_req *r, page *pg, int64_t next, const char *tail)
{
    PUT_LIT(&pg->b, "],\"next\":");
    if (next >= 0)
        put_i64(&pg->b, next);
    else
        PUT_LIT(&pg->b, "null");
    put(&pg->b, tail, strlen(tail));
    put(&pg->b, "}", 1);
    if (pg->b.err)
        respond_err(r, 503, "out of memory");
    else
        weft_http_respond(r, 200, JSON_TYPE, weft_buf_rptr(&pg->b.b), weft_buf_used(&pg->b.b));
    weft_buf_release(&pg->b.b);
}

/* Integer query parameter (min >= 0): absent leaves *out; false if
 * malformed or out of [min, max] (a 400 was sent). */
static bool qint(weft_http_req *r, const char *name, int64_t min, int64_t max, int64_t *out)
{
    weft_str v;
    if (!weft_http_req_query_param(r, name, &v))
        return true;
    int64_t x;
    if (!parse_i64(v, &x) || x < min || x > max) {
        char why[160];
        snprintf(why, sizeof why, "%s: expected a number from %" PRId64 " to %" PRId64, name, min,
                 max);
        respond_err(r, 400, why);
        return false;
    }
    *out = x;
    return true;
}

static bool page_start(weft_http_req *r, page *pg, int64_t *from)
{
    int64_t limit = DEFAULT_LIMIT;
    if (!qint(r, "limit", 1, MAX_LIMIT, &limit) || !qint(r, "from", 0, INT64_MAX, from))
        return false;
    weft_buf_init(&pg->b.b, MAX_PAGE_BYTES + 2 * MAX_APPEND_BYTES);
    pg->b.err = false;
    pg->count = 0;
    pg->limit = (size_t)limit;
    PUT_LIT(&pg->b, "{\"events\":[");
    return true;
}

static void h_read_stream(elog_streams *st, weft_http_req *r, const char *name, size_t len)
{
    sstream *s = stream_find(st, name, len);
    int64_t durable = plog_durable_offset(st->p->log);
    int64_t vn = s ? (int64_t)lower_bound(s->pos, s->n, durable) : 0; /* durable versions */
    weft_str dir = WEFT_STR("forward");
    weft_http_req_query_param(r, "direction", &dir);
    bool back = weft_str_eq(dir, WEFT_STR("backward"));
    if (!back && !weft_str_eq(dir, WEFT_STR("forward"))) {
        respond_err(r, 400, "direction: forward or backward");
        return;
    }
    int64_t from = back ? vn - 1 : 0;
    page pg;
    if (!page_start(r, &pg, &from))
        return;
    if (vn == 0) {
        weft_buf_release(&pg.b.b);
        respond_err(r, 404, "stream not found");
        return;
    }
    int64_t v = back && from > vn - 1 ? vn - 1 : from;
    while (v >= 0 && v < vn && !page_full(&pg) && page_add(st, &pg, s->pos[v]))
        v += back ? -1 : 1;
    char tail[48];
    snprintf(tail, sizeof tail, ",\"version\":%" PRId64, vn - 1);
    page_respond(r, &pg, v >= 0 && v < vn ? v : -1, tail);
}

static void h_read_category(elog_streams *st, weft_http_req *r, const char *name, size_t len)
{
    scat *c = cat_find(st, name, len);
    int64_t durable = plog_durable_offset(st->p->log), from = 0;
    page pg;
    if (!page_start(r, &pg, &from))
        return;
    size_t i = c ? lower_bound(c->pos, c->n, from) : 0;
    while (c && i < c->n && c->pos[i] < durable && !page_full(&pg) && page_add(st, &pg, c->pos[i]))
        i++;
    page_respond(r, &pg, c && i < c->n && c->pos[i] < durable ? c->pos[i] : -1, "");
}

static void h_read_all(elog_streams *st, weft_http_req *r)
{
    int64_t durable = plog_durable_offset(st->p->log), from = 0;
    page pg;
    if (!page_start(r, &pg, &from))
        return;
    int64_t p = from;
    while (p < durable && !page_full(&pg) && page_add(st, &pg, p))
        p++;
    page_respond(r, &pg, p < durable ? p : -1, "");
}

/* ---- subscribe ---- */

static void h_subscribe(elog_streams *st, weft_http_req *r, int kind, const char *name, size_t len)
{
    if (st->draining) {
        respond_err(r, 503, "draining");
        return;
    }
    int64_t cursor = 0, last;
    if (!qint(r, "from", 0, INT64_MAX, &cursor))
        return;
    weft_str lei = weft_http_req_header(r, WEFT_STR("Last-Event-ID"));
    if (lei.p && lei.n) {
        if (!parse_i64(lei, &last) || last == INT64_MAX) {
            respond_err(r, 400, "Last-Event-ID: expected the id of an event");
            return;
        }
        cursor = last + 1; /* resume after the last event received */
    }
    ssub *sb = calloc(1, sizeof *sb);
    if (!sb) {
        respond_err(r, 503, "out of memory");
        return;
    }
    sb->st = st;
    sb->kind = kind;
    memcpy(sb->name, name, len);
    sb->len = len;
    sb->cursor = cursor;
    link_push(&st->subs, &sb->link);
    st->nsubs++;
    weft_metric_gauge_add(st->m, st->m_subs, 1);
    if (weft_sse_start(&sb->sse, r, sub_drain, sub_abort, sb) < 0) {
        sub_free(sb);
        return;
    }
    weft_sse_comment(&sb->sse, WEFT_STR("weft log subscription"));
    sub_pump(sb);
}

/* ---- routing ---- */

/* The name after `prefix` in the path, percent-decoded, into buf (MAX_NAME
 * + 1 bytes). false if it is not a valid name. */
static bool path_name(weft_http_req *r, size_t prefix, char *buf, size_t *len)
{
    weft_str p = weft_http_req_path(r);
    size_t n = 0;
    for (size_t i = prefix; i < p.n; i++) {
        char c = p.p[i];
        if (c == '%') {
            int hi = i + 2 < p.n ? weft_hexval((unsigned char)p.p[i + 1]) : -1,
                lo = hi >= 0 ? weft_hexval((unsigned char)p.p[i + 2]) : -1;
            if (lo < 0)
                return false;
            c = (char)(hi << 4 | lo);
            i += 2;
        }
        if (n == MAX_NAME)
            return false;
        buf[n++] = c;
    }
    buf[n] = '\0';
    *len = n;
    return name_ok(buf, n);
}

static const char BAD_NAME[] = "names are 1-200 characters of letters, digits, '.', '_', ':', '-'";

static void h_streams(weft_http_req *r, void *ud)
{
    elog_streams *st = ud;
    char name[MAX_NAME + 1];
    size_t len;
    if (!path_name(r, strlen("/streams/"), name, &len)) {
        respond_err(r, 400, BAD_NAME);
        return;
    }
    if (weft_http_req_method(r) == WEFT_METHOD_POST)
        h_append(st, r, name, len);
    else
        h_read_stream(st, r, name, len);
}

static void h_categories(weft_http_req *r, void *ud)
{
    char name[MAX_NAME + 1];
    size_t len;
    if (!path_name(r, strlen("/categories/"), name, &len)) {
        respond_err(r, 400, BAD_NAME);
        return;
    }
    h_read_category(ud, r, name, len);
}

static void h_all(weft_http_req *r, void *ud)
{
    h_read_all(ud, r);
}

static void h_subscribe_route(weft_http_req *r, void *ud)
{
    weft_str p = weft_http_req_path(r);
    static const struct {
        const char *prefix;
        int kind;
    } kinds[] = {{"/subscribe/categories/", SUB_CATEGORY}, {"/subscribe/streams/", SUB_STREAM}};
    char name[MAX_NAME + 1];
    size_t len;
    if (weft_str_eq(p, WEFT_STR("/subscribe/all"))) {
        h_subscribe(ud, r, SUB_ALL, "", 0);
        return;
    }
    for (size_t i = 0; i < WEFT_ARRAY_LEN(kinds); i++) {
        size_t pl = strlen(kinds[i].prefix);
        if (p.n > pl && !memcmp(p.p, kinds[i].prefix, pl)) {
            if (path_name(r, pl, name, &len))
                h_subscribe(ud, r, kinds[i].kind, name, len);
            else
                respond_err(r, 400, BAD_NAME);
            return;
        }
    }
    respond_err(r, 404,
                "subscribe to /subscribe/all, /subscribe/categories/NAME or "
                "/subscribe/streams/NAME");
}

int elog_streams_routes(elog_streams *st, weft_http_server *s)
{
    const unsigned GET = WEFT_M(WEFT_METHOD_GET) | WEFT_M(WEFT_METHOD_HEAD);
    int rc = weft_http_server_route(s, GET | WEFT_M(WEFT_METHOD_POST), "/streams/",
                                    WEFT_ROUTE_PREFIX, h_streams, st);
    if (rc == 0)
        rc = weft_http_server_route(s, GET, "/categories/", WEFT_ROUTE_PREFIX, h_categories, st);
    if (rc == 0)
        rc = weft_http_server_route(s, GET, "/all", 0, h_all, st);
    if (rc == 0)
        rc = weft_http_server_route(s, WEFT_M(WEFT_METHOD_GET), "/subscribe/", WEFT_ROUTE_PREFIX,
                                    h_subscribe_route, st);
    return rc;
}

/* ---- lifecycle ---- */

elog_streams *elog_streams_new(elog *e)
{
    elog_streams *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    st->e = e;
    st->m = weft_metrics_global();
    st->rd.first = st->rd.end = -1;
    weft_buf_init(&st->scratch.b, 2 * MAX_APPEND_BYTES);
    weft_metrics_counter(st->m, "weft_log_streams_appends_total",
                         "Appends written through the streams API.", NULL, &st->m_appends);
    weft_metrics_counter(st->m, "weft_log_streams_events_total",
                         "Events written through the streams API.", NULL, &st->m_events);
    weft_metrics_counter(st->m, "weft_log_streams_conflicts_total",
                         "Appends refused for a wrong expected version (409).", NULL,
                         &st->m_conflicts);
    weft_metrics_counter(st->m, "weft_log_streams_idempotent_total",
                         "Retried appends answered without writing.", NULL, &st->m_idempotent);
    weft_metrics_gauge(st->m, "weft_log_streams_subscribers", "Open stream subscriptions.", NULL,
                       &st->m_subs);
    weft_metrics_gauge(st->m, "weft_log_streams", "Streams in the streams log.", NULL,
                       &st->m_streams);
    weft_metrics_gauge(st->m, "weft_log_streams_categories_stalled",
                       "Categories whose Kafka topic copy failed and waits for a repair.", NULL,
                       &st->m_stalled);
    return st;
}

/* Read __weft_streams from the start and index every event. */
static int rebuild(elog_streams *st)
{
    plog *l = st->p->log;
    int64_t end = plog_end_offset(l), pos = plog_start_offset(l);
    size_t events = 0, skipped = 0;
    st->rd.chunk = SCAN_CHUNK;
    while (pos < end) {
        const uint8_t *bp;
        kf_batch b;
        int rc = rdr_batch(&st->rd, pos, &bp, &b);
        if (rc != 1) {
            weft_log(WEFT_LOG_ERROR, "streams: cannot read " STREAMS_TOPIC,
                     WEFT_KV_INT("offset", pos),
                     WEFT_KV_STR("error", weft_strerror(rc ? rc : WEFT_EIO)));
            return rc ? rc : WEFT_EIO;
        }
        size_t at = 0;
        kf_record rec;
        while (kf_record_next(bp, &b, &at, &rec) == 1) {
            sevent ev;
            sstream *s =
                decode(&b, &rec, &ev) == 0 ? stream_get(st, ev.stream.p, ev.stream.n) : NULL;
            if (!s || ev.version != (int64_t)s->n || reserve(s, 1) < 0) {
                skipped++;
                continue;
            }
            index_add(st, s, ev.position, fnv1a(ev.id.p, ev.id.n));
            events++;
        }
        pos = b.base_offset + b.last_offset_delta + 1;
    }
    st->rd.chunk = READ_CHUNK;
    if (skipped)
        weft_log(WEFT_LOG_ERROR,
                 "streams: records of " STREAMS_TOPIC " that are not events "
                 "in sequence were skipped",
                 WEFT_KV_UINT("records", skipped));
    weft_log(WEFT_LOG_INFO, "streams loaded", WEFT_KV_UINT("streams", st->streams.n),
             WEFT_KV_UINT("categories", st->cats.n), WEFT_KV_UINT("events", events));
    return 0;
}

int elog_streams_start(elog_streams *st, weft_loop *loop)
{
    st->loop = loop;
    ktopic *t = elog_topic_find(st->e, WEFT_STR(STREAMS_TOPIC));
    if (!t) {
        elog_topic_conf conf = st->e->o.defaults;
        conf.log.retention_ms = -1;
        conf.log.retention_bytes = -1;
        conf.log.fsync = PLOG_FSYNC_ALWAYS;
        int rc = elog_topic_create(st->e, WEFT_STR(STREAMS_TOPIC), 1, &conf, &t);
        if (rc != 0) {
            weft_log(WEFT_LOG_ERROR, "streams: cannot create " STREAMS_TOPIC,
                     WEFT_KV_STR("error", rc < 0 ? weft_strerror(rc) : "invalid topic"));
            return rc < 0 ? rc : WEFT_EINVAL;
        }
    }
    if (t->npart != 1 || t->conf.log.fsync != PLOG_FSYNC_ALWAYS || t->conf.log.retention_ms != -1 ||
        t->conf.log.retention_bytes != -1) {
        weft_log(WEFT_LOG_ERROR, STREAMS_TOPIC " must have one partition, fsync always and no "
                                               "retention: its definition file was changed");
        return WEFT_ECONFIG;
    }
    st->p = &t->parts[0];
    st->rd.l = st->p->log;
    int rc = rebuild(st);
    if (rc < 0)
        return rc;
    weft_timer_init(&st->repair, repair_cats, st);
    int64_t durable = plog_durable_offset(st->p->log);
    for (size_t i = 0; i < st->cats.cap; i++) {
        scat *c = (scat *)st->cats.slot[i];
        if (c && c->kafka && !recopy_category(st, c, durable) && !c->stalled)
            stall(st, c, REPAIR_MS);
    }
    st->mirrored = st->advanced = durable;
    weft_timer_init(&st->ping, ping_subs, st);
    weft_timer_start(loop, &st->ping, PING_MS);
    st->started = true;
    return 0;
}

void elog_streams_drain(elog_streams *st)
{
    st->draining = true;
    while (st->subs) /* streams never end by themselves */
        sub_end((ssub *)st->subs);
}

void elog_streams_stop(elog_streams *st)
{
    if (st->started) {
        weft_timer_stop(st->loop, &st->ping);
        if (weft_timer_active(&st->repair))
            weft_timer_stop(st->loop, &st->repair);
    }
    while (st->subs)
        sub_free((ssub *)st->subs);
    while (st->ops) { /* their waits go with the topic (elog_stop) */
        slink *op = st->ops;
        link_remove(&st->ops, op);
        free(op);
    }
    ht_free(&st->streams, stream_release);
    ht_free(&st->cats, cat_release);
    rdr_release(&st->rd);
    weft_buf_release(&st->scratch.b);
    st->started = false;
}

void elog_streams_free(elog_streams *st)
{
    free(st);
}
