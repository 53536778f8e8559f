/*
 * cache.c — the gateway's in-memory HTTP response cache (see cache.h).
 *
 * Layout. A chained hash table (FNV-1a with a murmur finalizer, seeded per
 * cache, doubled when records outnumber buckets) maps the key bytes to a
 * record. A record holds the key's variants (one per distinct set of
 * request values named by Vary, newest first, at most MAX_VARIANTS) and the
 * key's coalescing state: a pending flag and the list of waiters. One record
 * per key for both jobs means a pending fetch is per key, not per variant:
 * when it completes every waiter is handed the just-stored variant whatever
 * its own request said about Vary, because the cache never sees a waiter's
 * request headers. A waiter whose Accept-Encoding differed from the
 * fetcher's therefore gets the fetcher's representation; callers that care
 * can check the hit's Vary/Content-Encoding and fetch again.
 *
 * A variant is one malloc: the struct, then the Vary names/values, the
 * response header arrays and all their bytes, then the body. Its size
 * (allocation + key length) is what counts against max_bytes, so the bound
 * covers keys, headers, bodies and the fixed per-entry overhead. The shared
 * record and the table itself are not counted.
 *
 * Eviction. Every stored variant sits on one recency list (head = most
 * recently stored or hit); LRU evicts from the tail. LFU additionally keeps
 * a binary min-heap ordered by (hit count, last use tick), so the victim is
 * the least-hit entry and ties go to the least recently used: O(log n) per
 * hit and per store. A fill makes room before linking the new variant, so a
 * fresh entry is never its own victim.
 *
 * References. A hit holds a reference. A variant that is evicted, expired or
 * replaced while referenced is unlinked at once (it stops counting in bytes
 * and entries and is never returned again) and moved to a zombie list; the
 * last release frees it. weft_cache_free frees zombies too, so hits must not
 * be used after the cache is freed.
 *
 * Callbacks. Waiters are detached from their record before any callback
 * runs, so a callback may call back into the cache (lookup, fill, abandon,
 * release) for any key, including the same one. Filling keeps its own
 * reference on the new variant while it hands out hits, so a callback that
 * evicts or replaces it cannot free it under the remaining waiters. The
 * *hit given to a callback lives on the filler's stack: a waiter that keeps
 * it past the callback copies the struct (the reference goes with it).
 * weft_cache_free drops pending waiters without calling them.
 *
 * Vary values are the request's fields of that name joined with ", " and
 * compared byte for byte (no whitespace or case normalisation); a header
 * the request lacks is recorded as absent, which never matches a present
 * but empty one. Waiters woken by a fill count as coalesced, not as hits.
 *
 * Freshness is RFC 9111 reduced to what a shared gateway cache needs:
 * s-maxage, then max-age, then the route default; no validation, no
 * Expires, no stale serving. Not storable responses are never kept rather
 * than kept for revalidation (no-cache, qualified private/no-cache too).
 */
#include "gateway/cache.h"
#include "weft/http.h"

#include <stdlib.h>

#define INITIAL_BUCKETS 16u
#define MAX_VARIANTS 8u                 /* per key; the oldest is dropped beyond this */
#define MAX_WAITERS 4096u               /* per key; beyond this callers fetch themselves */
#define DELTA_SECONDS_MAX 2147483648ull /* RFC 9111 §1.2.2: cap at 2^31 */

struct waiter {
    void *waiter;
    weft_cache_wait_cb cb;
};

struct record {
    struct record *chain;
    uint64_t hash;
    weft_cache_entry *variants; /* newest first */
    size_t nvariants;
    struct waiter *waiters;
    size_t nwait, capwait;
    bool pending;
    size_t keylen;
    char key[];
};

struct weft_cache_entry {
    struct record *rec;            /* NULL once unlinked (zombie) */
    weft_cache_entry *vnext;       /* next variant of rec */
    weft_cache_entry *prev, *next; /* recency list, or zombie list */
    size_t heap_idx;               /* LFU only */
    uint64_t freq, tick;
    uint64_t stored_at, expires_at;
    size_t size;
    size_t refs;
    int status;
    size_t nvary;
    weft_str *vary_names; /* lowercased */
    weft_str *vary_vals;
    bool *vary_present; /* absent header != empty header */
    size_t nheaders;
    weft_str *names, *values;
    weft_str body;
};

struct weft_cache {
    size_t max_bytes;
    int policy;
    uint64_t seed;
    struct record **buckets;
    size_t nbuckets, nrecords;
    weft_cache_entry *lru_head, *lru_tail;
    weft_cache_entry *zombies;
    weft_cache_entry **heap; /* LFU only; heap_n == st.entries */
    size_t heap_n, heap_cap;
    uint64_t clock;
    weft_cache_stats st;
};

/* ------------------------------------------------------------------ */
/* small helpers */

static bool is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

static char to_lower(char ch)
{
    return (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
}

static bool hdrs_valid(const weft_hdrs *h)
{
    return h == NULL || h->n == 0 || (h->names != NULL && h->values != NULL);
}

static size_t hdrs_count(const weft_hdrs *h)
{
    return h ? h->n : 0;
}

static bool name_is(weft_str name, weft_str lit)
{
    return weft_str_ieq(name, lit);
}

static bool add_ok(size_t *acc, size_t v)
{
    if (*acc > SIZE_MAX - v)
        return false;
    *acc += v;
    return true;
}

static bool mul_add_ok(size_t *acc, size_t n, size_t each)
{
    if (each != 0 && n > SIZE_MAX / each)
        return false;
    return add_ok(acc, n * each);
}

static uint64_t sat_add64(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint64_t fmix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static uint64_t key_hash(const weft_cache *c, weft_str k)
{
    uint64_t h = 0xcbf29ce484222325ULL ^ c->seed;
    for (size_t i = 0; i < k.n; i++) {
        h ^= (unsigned char)k.p[i];
        h *= 0x100000001b3ULL;
    }
    return fmix64(h ^ (uint64_t)k.n);
}

/*
 * Next member of a comma-separated list (Vary), OWS trimmed, empty members
 * skipped. Vary members are tokens, so quotes need no handling here.
 */
static bool list_next(weft_str v, size_t *pos, weft_str *item)
{
    size_t i = *pos;
    while (i < v.n) {
        while (i < v.n && (is_ows(v.p[i]) || v.p[i] == ','))
            i++;
        size_t start = i;
        while (i < v.n && v.p[i] != ',')
            i++;
        size_t end = i;
        while (end > start && is_ows(v.p[end - 1]))
            end--;
        if (end > start) {
            *pos = i;
            *item = (weft_str){v.p + start, end - start};
            return true;
        }
    }
    *pos = i;
    return false;
}

/*
 * Next Cache-Control directive: name [OWS "=" OWS (token | quoted-string)].
 * Commas inside a quoted string do not split. *val is the raw text between
 * the quotes (escapes left in); an unterminated quote gives an empty value
 * so numeric directives are ignored. Anything between the value and the
 * next comma is junk and skipped.
 */
static bool cc_next(weft_str v, size_t *pos, weft_str *name, weft_str *val, bool *has_val)
{
    size_t i = *pos;
    while (i < v.n && (is_ows(v.p[i]) || v.p[i] == ','))
        i++;
    if (i >= v.n) {
        *pos = i;
        return false;
    }
    size_t start = i;
    while (i < v.n && v.p[i] != '=' && v.p[i] != ',' && !is_ows(v.p[i]))
        i++;
    *name = (weft_str){v.p + start, i - start};
    *val = (weft_str){v.p + i, 0};
    *has_val = false;
    while (i < v.n && is_ows(v.p[i]))
        i++;
    if (i < v.n && v.p[i] == '=') {
        i++;
        *has_val = true;
        while (i < v.n && is_ows(v.p[i]))
            i++;
        if (i < v.n && v.p[i] == '"') {
            i++;
            start = i;
            while (i < v.n && v.p[i] != '"')
                i += (v.p[i] == '\\' && i + 1 < v.n) ? 2 : 1;
            if (i < v.n) {
                *val = (weft_str){v.p + start, i - start};
                i++;
            } else {
                i = v.n;
                *val = (weft_str){v.p + v.n, 0};
            }
        } else {
            start = i;
            while (i < v.n && v.p[i] != ',' && !is_ows(v.p[i]))
                i++;
            *val = (weft_str){v.p + start, i - start};
        }
    }
    while (i < v.n && v.p[i] != ',')
        i++;
    *pos = i;
    return true;
}

/* delta-seconds: digits only, capped at 2^31; anything else is invalid. */
static bool parse_delta(weft_str v, uint64_t *out)
{
    if (v.n == 0)
        return false;
    uint64_t x = 0;
    for (size_t i = 0; i < v.n; i++) {
        if (v.p[i] < '0' || v.p[i] > '9')
            return false;
        if (x < DELTA_SECONDS_MAX)
            x = x * 10 + (uint64_t)(v.p[i] - '0');
    }
    *out = x > DELTA_SECONDS_MAX ? DELTA_SECONDS_MAX : x;
    return true;
}

struct cc {
    bool no_store, no_cache, priv;
    bool has_max_age, has_smax;
    uint64_t max_age, smax;
};

static void cc_scan(weft_str v, struct cc *cc)
{
    size_t pos = 0;
    weft_str name, val;
    bool has_val;
    while (cc_next(v, &pos, &name, &val, &has_val)) {
        uint64_t n;
        if (name_is(name, WEFT_STR("no-store")))
            cc->no_store = true;
        else if (name_is(name, WEFT_STR("no-cache")))
            cc->no_cache = true;
        else if (name_is(name, WEFT_STR("private")))
            cc->priv = true;
        else if (name_is(name, WEFT_STR("max-age"))) {
            if (!cc->has_max_age && has_val && parse_delta(val, &n)) {
                cc->has_max_age = true;
                cc->max_age = n;
            }
        } else if (name_is(name, WEFT_STR("s-maxage"))) {
            if (!cc->has_smax && has_val && parse_delta(val, &n)) {
                cc->has_smax = true;
                cc->smax = n;
            }
        }
    }
}

static bool vary_has_star(weft_str v)
{
    size_t pos = 0;
    weft_str item;
    while (list_next(v, &pos, &item))
        if (item.n == 1 && item.p[0] == '*')
            return true;
    return false;
}

static bool status_cacheable(int status)
{
    switch (status) {
    case 200:
    case 203:
    case 204:
    case 300:
    case 301:
    case 404:
    case 405:
    case 410:
    case 414:
    case 501: return true;
    default: return false;
    }
}

/* ------------------------------------------------------------------ */
/* policy predicates */

bool weft_cache_storable(int status, const weft_hdrs *resp, uint64_t default_ttl_ms,
                         uint64_t *ttl_ms)
{
    if (ttl_ms)
        *ttl_ms = 0;
    if (!status_cacheable(status) || !hdrs_valid(resp))
        return false;
    struct cc cc = {0};
    for (size_t i = 0; i < hdrs_count(resp); i++) {
        weft_str name = resp->names[i];
        if (name_is(name, WEFT_STR("cache-control")))
            cc_scan(resp->values[i], &cc);
        else if (name_is(name, WEFT_STR("set-cookie")))
            return false;
        else if (name_is(name, WEFT_STR("vary")) && vary_has_star(resp->values[i]))
            return false;
    }
    if (cc.no_store || cc.no_cache || cc.priv)
        return false;
    uint64_t ttl;
    if (cc.has_smax)
        ttl = cc.smax * 1000;
    else if (cc.has_max_age)
        ttl = cc.max_age * 1000;
    else
        ttl = default_ttl_ms;
    if (ttl == 0)
        return false;
    if (ttl_ms)
        *ttl_ms = ttl;
    return true;
}

bool weft_cache_request_ok(int method, const weft_hdrs *req, bool allow_auth)
{
    if (method != WEFT_METHOD_GET && method != WEFT_METHOD_HEAD)
        return false;
    if (!hdrs_valid(req))
        return false;
    struct cc cc = {0};
    for (size_t i = 0; i < hdrs_count(req); i++) {
        weft_str name = req->names[i];
        if (name_is(name, WEFT_STR("cache-control")))
            cc_scan(req->values[i], &cc);
        else if (!allow_auth && name_is(name, WEFT_STR("authorization")))
            return false;
    }
    return !cc.no_store && !cc.no_cache;
}

/* ------------------------------------------------------------------ */
/* request values named by Vary: all fields of that name, joined by ", " */

static bool req_value(const weft_hdrs *req, weft_str name, size_t *len)
{
    bool present = false;
    size_t n = 0;
    for (size_t i = 0; i < hdrs_count(req); i++) {
        if (!name_is(req->names[i], name))
            continue;
        if (present && !add_ok(&n, 2))
            return false;
        if (!add_ok(&n, req->values[i].n))
            return false;
        present = true;
    }
    *len = n;
    return present;
}

static void req_value_write(const weft_hdrs *req, weft_str name, char *dst)
{
    bool first = true;
    for (size_t i = 0; i < hdrs_count(req); i++) {
        if (!name_is(req->names[i], name))
            continue;
        if (!first) {
            memcpy(dst, ", ", 2);
            dst += 2;
        }
        if (req->values[i].n)
            memcpy(dst, req->values[i].p, req->values[i].n);
        dst += req->values[i].n;
        first = false;
    }
}

static bool req_value_matches(const weft_hdrs *req, weft_str name, bool present, weft_str stored)
{
    bool seen = false;
    size_t off = 0;
    for (size_t i = 0; i < hdrs_count(req); i++) {
        if (!name_is(req->names[i], name))
            continue;
        if (!present)
            return false;
        if (seen) {
            if (stored.n - off < 2 || memcmp(stored.p + off, ", ", 2) != 0)
                return false;
            off += 2;
        }
        weft_str v = req->values[i];
        if (stored.n - off < v.n || (v.n && memcmp(stored.p + off, v.p, v.n) != 0))
            return false;
        off += v.n;
        seen = true;
    }
    return seen == present && off == stored.n;
}

static bool variant_matches(const weft_cache_entry *e, const weft_hdrs *req)
{
    for (size_t i = 0; i < e->nvary; i++)
        if (!req_value_matches(req, e->vary_names[i], e->vary_present[i], e->vary_vals[i]))
            return false;
    return true;
}

/* Same Vary names and values: the newer one replaces the older. */
static bool same_variant(const weft_cache_entry *a, const weft_cache_entry *b)
{
    if (a->nvary != b->nvary)
        return false;
    for (size_t i = 0; i < a->nvary; i++)
        if (!weft_str_eq(a->vary_names[i], b->vary_names[i]) ||
            a->vary_present[i] != b->vary_present[i] ||
            !weft_str_eq(a->vary_vals[i], b->vary_vals[i]))
            return false;
    return true;
}

/* ------------------------------------------------------------------ */
/* hash table of records */

static struct record *record_find(const weft_cache *c, weft_str key, uint64_t h)
{
    for (struct record *r = c->buckets[h & (c->nbuckets - 1)]; r; r = r->chain)
        if (r->hash == h && r->keylen == key.n && (key.n == 0 || !memcmp(r->key, key.p, key.n)))
            return r;
    return NULL;
}

/* Doubling failure is harmless: chains just get longer. */
static void table_grow(weft_cache *c)
{
    if (c->nbuckets > SIZE_MAX / 2 / sizeof(*c->buckets))
        return;
    size_t nb = c->nbuckets * 2;
    struct record **b = calloc(nb, sizeof(*b));
    if (!b)
        return;
    for (size_t i = 0; i < c->nbuckets; i++) {
        struct record *r = c->buckets[i];
        while (r) {
            struct record *next = r->chain;
            r->chain = b[r->hash & (nb - 1)];
            b[r->hash & (nb - 1)] = r;
            r = next;
        }
    }
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = nb;
}

static struct record *record_get(weft_cache *c, weft_str key, uint64_t h)
{
    struct record *r = record_find(c, key, h);
    if (r)
        return r;
    if (key.n > SIZE_MAX - sizeof(*r))
        return NULL;
    r = calloc(1, sizeof(*r) + key.n);
    if (!r)
        return NULL;
    r->hash = h;
    r->keylen = key.n;
    if (key.n)
        memcpy(r->key, key.p, key.n);
    if (c->nrecords >= c->nbuckets)
        table_grow(c);
    struct record **slot = &c->buckets[h & (c->nbuckets - 1)];
    r->chain = *slot;
    *slot = r;
    c->nrecords++;
    return r;
}

/* Free a record that holds neither variants nor a fetch in flight. */
static void record_maybe_free(weft_cache *c, struct record *r)
{
    if (r->variants || r->pending || r->nwait)
        return;
    struct record **pp = &c->buckets[r->hash & (c->nbuckets - 1)];
    while (*pp && *pp != r)
        pp = &(*pp)->chain;
    if (*pp)
        *pp = r->chain;
    c->nrecords--;
    free(r->waiters);
    free(r);
}

/* ------------------------------------------------------------------ */
/* LFU heap: ordered by (freq, tick) */

static bool heap_less(const weft_cache_entry *a, const weft_cache_entry *b)
{
    return a->freq != b->freq ? a->freq < b->freq : a->tick < b->tick;
}

static void heap_set(weft_cache *c, size_t i, weft_cache_entry *e)
{
    c->heap[i] = e;
    e->heap_idx = i;
}

static void heap_up(weft_cache *c, size_t i)
{
    weft_cache_entry *e = c->heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(e, c->heap[p]))
            break;
        heap_set(c, i, c->heap[p]);
        i = p;
    }
    heap_set(c, i, e);
}

static void heap_down(weft_cache *c, size_t i)
{
    size_t n = c->heap_n;
    weft_cache_entry *e = c->heap[i];
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        const weft_cache_entry *best = e;
        if (l < n && heap_less(c->heap[l], best)) {
            m = l;
            best = c->heap[l];
        }
        if (l + 1 < n && heap_less(c->heap[l + 1], best))
            m = l + 1;
        if (m == i)
            break;
        heap_set(c, i, c->heap[m]);
        i = m;
    }
    heap_set(c, i, e);
}

static int heap_reserve(weft_cache *c, size_t n)
{
    if (n <= c->heap_cap)
        return 0;
    size_t cap = c->heap_cap ? c->heap_cap : 16;
    while (cap < n) {
        if (cap > SIZE_MAX / 2 / sizeof(*c->heap))
            return WEFT_ENOMEM;
        cap *= 2;
    }
    weft_cache_entry **h = realloc(c->heap, cap * sizeof(*h));
    if (!h)
        return WEFT_ENOMEM;
    c->heap = h;
    c->heap_cap = cap;
    return 0;
}

/* ------------------------------------------------------------------ */
/* linking, unlinking, references */

static void lru_remove(weft_cache_entry **head, weft_cache_entry **tail, weft_cache_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        *head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else if (tail)
        *tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_head(weft_cache_entry **head, weft_cache_entry **tail, weft_cache_entry *e)
{
    e->prev = NULL;
    e->next = *head;
    if (*head)
        (*head)->prev = e;
    else if (tail)
        *tail = e;
    *head = e;
}

/* Caller has reserved heap space for one more entry. */
static void entry_link(weft_cache *c, struct record *r, weft_cache_entry *e)
{
    e->rec = r;
    e->vnext = r->variants;
    r->variants = e;
    r->nvariants++;
    lru_push_head(&c->lru_head, &c->lru_tail, e);
    e->tick = ++c->clock;
    e->freq = 0;
    c->st.entries++;
    c->st.bytes += e->size;
    if (c->policy == WEFT_CACHE_LFU) {
        heap_set(c, c->heap_n, e);
        heap_up(c, c->heap_n++);
    }
}

/*
 * Take e out of the table, the recency list and the heap; free it, or park
 * it on the zombie list while hits still reference it. The record is left
 * for the caller (record_maybe_free) because callers may still be using it.
 */
static void entry_unlink(weft_cache *c, weft_cache_entry *e)
{
    struct record *r = e->rec;
    weft_cache_entry **pp = &r->variants;
    while (*pp && *pp != e)
        pp = &(*pp)->vnext;
    if (*pp)
        *pp = e->vnext;
    r->nvariants--;
    e->vnext = NULL;
    e->rec = NULL;
    lru_remove(&c->lru_head, &c->lru_tail, e);
    if (c->policy == WEFT_CACHE_LFU) {
        size_t i = e->heap_idx;
        weft_cache_entry *moved = c->heap[--c->heap_n];
        if (moved != e) {
            heap_set(c, i, moved);
            heap_down(c, i);
            heap_up(c, moved->heap_idx);
        }
    }
    c->st.entries--;
    c->st.bytes -= e->size;
    if (e->refs == 0)
        free(e);
    else
        lru_push_head(&c->zombies, NULL, e);
}

static void entry_unref(weft_cache *c, weft_cache_entry *e)
{
    if (--e->refs > 0 || e->rec)
        return;
    lru_remove(&c->zombies, NULL, e);
    free(e);
}

/* Size-driven removal (counts as an eviction); may free the record. */
static void entry_evict(weft_cache *c, weft_cache_entry *e)
{
    struct record *r = e->rec;
    entry_unlink(c, e);
    c->st.evictions++;
    record_maybe_free(c, r);
}

static weft_cache_entry *pick_victim(const weft_cache *c)
{
    if (c->policy == WEFT_CACHE_LFU)
        return c->heap_n ? c->heap[0] : NULL;
    return c->lru_tail;
}

static void entry_touch(weft_cache *c, weft_cache_entry *e)
{
    if (c->lru_head != e) {
        lru_remove(&c->lru_head, &c->lru_tail, e);
        lru_push_head(&c->lru_head, &c->lru_tail, e);
    }
    e->tick = ++c->clock;
    if (e->freq < UINT64_MAX)
        e->freq++;
    if (c->policy == WEFT_CACHE_LFU)
        heap_down(c, e->heap_idx); /* its key only grew */
}

static void make_hit(weft_cache_entry *e, uint64_t now_ms, weft_cache_hit *hit)
{
    e->refs++;
    hit->e = e;
    hit->status = e->status;
    hit->names = e->names;
    hit->values = e->values;
    hit->nheaders = e->nheaders;
    hit->body = e->body;
    hit->age_s = now_ms > e->stored_at ? (now_ms - e->stored_at) / 1000 : 0;
}

/* ------------------------------------------------------------------ */
/* building a variant */

/*
 * Copy everything a variant needs into one allocation. Returns 0,
 * WEFT_ETOOBIG (does not fit in max_bytes, checked before allocating),
 * WEFT_EINVAL (Vary: *, malformed header list) or WEFT_ENOMEM.
 */
static int entry_build(const weft_cache *c, weft_str key, const weft_hdrs *req, int status,
                       const weft_hdrs *resp, weft_str body, weft_cache_entry **out)
{
    size_t nvary = 0, bytes = 0, nh = hdrs_count(resp);
    weft_str item;
    for (size_t i = 0; i < nh; i++) {
        if (!add_ok(&bytes, resp->names[i].n) || !add_ok(&bytes, resp->values[i].n))
            return WEFT_ETOOBIG;
        if (!name_is(resp->names[i], WEFT_STR("vary")))
            continue;
        size_t pos = 0;
        while (list_next(resp->values[i], &pos, &item)) {
            if (item.n == 1 && item.p[0] == '*')
                return WEFT_EINVAL;
            size_t vlen = 0;
            if (req_value(req, item, &vlen) && !add_ok(&bytes, vlen))
                return WEFT_ETOOBIG;
            if (!add_ok(&bytes, item.n))
                return WEFT_ETOOBIG;
            nvary++;
        }
    }
    size_t total = sizeof(weft_cache_entry);
    if (!mul_add_ok(&total, 2 * nvary + 2 * nh, sizeof(weft_str)) ||
        !mul_add_ok(&total, nvary, sizeof(bool)) || !add_ok(&total, bytes) ||
        !add_ok(&total, body.n))
        return WEFT_ETOOBIG;
    size_t size = total;
    if (!add_ok(&size, key.n) || size > c->max_bytes)
        return WEFT_ETOOBIG;

    weft_cache_entry *e = malloc(total);
    if (!e)
        return WEFT_ENOMEM;
    memset(e, 0, sizeof(*e));
    weft_str *strs = (weft_str *)(e + 1);
    e->vary_names = strs;
    e->vary_vals = strs + nvary;
    e->names = strs + 2 * nvary;
    e->values = strs + 2 * nvary + nh;
    e->vary_present = (bool *)(strs + 2 * nvary + 2 * nh);
    char *p = (char *)(e->vary_present + nvary);

    size_t k = 0;
    for (size_t i = 0; i < nh; i++) {
        weft_str n = resp->names[i], v = resp->values[i];
        if (n.n)
            memcpy(p, n.p, n.n);
        e->names[i] = (weft_str){p, n.n};
        p += n.n;
        if (v.n)
            memcpy(p, v.p, v.n);
        e->values[i] = (weft_str){p, v.n};
        p += v.n;
        if (!name_is(n, WEFT_STR("vary")))
            continue;
        size_t pos = 0;
        while (list_next(v, &pos, &item)) {
            for (size_t j = 0; j < item.n; j++)
                p[j] = to_lower(item.p[j]);
            e->vary_names[k] = (weft_str){p, item.n};
            p += item.n;
            size_t vlen = 0;
            e->vary_present[k] = req_value(req, item, &vlen);
            if (e->vary_present[k])
                req_value_write(req, item, p);
            else
                vlen = 0;
            e->vary_vals[k] = (weft_str){p, vlen};
            p += vlen;
            k++;
        }
    }
    if (body.n)
        memcpy(p, body.p, body.n);
    e->body = (weft_str){p, body.n};
    e->nvary = nvary;
    e->nheaders = nh;
    e->status = status;
    e->size = size;
    *out = e;
    return 0;
}

/* ------------------------------------------------------------------ */
/* public API */

weft_cache *weft_cache_new(size_t max_bytes, int policy)
{
    if (policy != WEFT_CACHE_LRU && policy != WEFT_CACHE_LFU)
        return NULL;
    weft_cache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->buckets = calloc(INITIAL_BUCKETS, sizeof(*c->buckets));
    if (!c->buckets)
        goto fail_free_cache;
    c->nbuckets = INITIAL_BUCKETS;
    c->max_bytes = max_bytes;
    c->policy = policy;
    /* per-cache seed so colliding keys cannot be precomputed for every worker */
    c->seed = fmix64((uint64_t)(uintptr_t)c ^ 0x9e3779b97f4a7c15ULL);
    return c;

fail_free_cache:
    free(c);
    return NULL;
}

/* Pending waiters are dropped without callbacks: abandon them first. */
void weft_cache_free(weft_cache *c)
{
    if (!c)
        return;
    for (weft_cache_entry *e = c->lru_head, *next; e; e = next) {
        next = e->next;
        free(e);
    }
    for (weft_cache_entry *e = c->zombies, *next; e; e = next) {
        next = e->next;
        free(e);
    }
    for (size_t i = 0; i < c->nbuckets; i++) {
        for (struct record *r = c->buckets[i], *next; r; r = next) {
            next = r->chain;
            free(r->waiters);
            free(r);
        }
    }
    free(c->buckets);
    free(c->heap);
    free(c);
}

void weft_cache_stats_get(const weft_cache *c, weft_cache_stats *st)
{
    if (!st)
        return;
    if (!c) {
        memset(st, 0, sizeof(*st));
        return;
    }
    *st = c->st;
}

static int waiter_add(struct record *r, void *waiter, weft_cache_wait_cb cb)
{
    if (r->nwait == r->capwait) {
        if (r->capwait >= MAX_WAITERS)
            return WEFT_ETOOBIG;
        size_t cap = r->capwait ? r->capwait * 2 : 4;
        struct waiter *w = realloc(r->waiters, cap * sizeof(*w));
        if (!w)
            return WEFT_ENOMEM;
        r->waiters = w;
        r->capwait = cap;
    }
    r->waiters[r->nwait++] = (struct waiter){waiter, cb};
    return 0;
}

int weft_cache_lookup(weft_cache *c, weft_str key, const weft_hdrs *req, uint64_t now_ms,
                      weft_cache_hit *hit, void *waiter, weft_cache_wait_cb cb)
{
    if (hit)
        memset(hit, 0, sizeof(*hit));
    if (!c || !hit || (key.n && !key.p) || !hdrs_valid(req))
        return WEFT_CACHE_MISS;
    uint64_t h = key_hash(c, key);
    struct record *r = record_find(c, key, h);
    if (r) {
        weft_cache_entry *found = NULL;
        for (weft_cache_entry *e = r->variants, *next; e; e = next) {
            next = e->vnext;
            if (now_ms >= e->expires_at)
                entry_unlink(c, e); /* r stays: it is used below */
            else if (!found && variant_matches(e, req))
                found = e;
        }
        if (found) {
            entry_touch(c, found);
            make_hit(found, now_ms, hit);
            c->st.hits++;
            return WEFT_CACHE_HIT;
        }
        if (r->pending) {
            if (waiter && cb && waiter_add(r, waiter, cb) == 0) {
                c->st.coalesced++;
                return WEFT_CACHE_WAIT;
            }
            /* no coalescing asked for (or possible): fetch alongside */
            c->st.misses++;
            return WEFT_CACHE_MISS;
        }
    }
    c->st.misses++;
    if (!r)
        r = record_get(c, key, h); /* NULL: out of memory, just no coalescing */
    if (r) {
        r->pending = true;
        hit->fetcher = true;
    }
    return WEFT_CACHE_MISS;
}

/* Detach the waiter list before any callback so callbacks may re-enter. */
static struct waiter *waiters_take(struct record *r, size_t *n)
{
    struct waiter *w = r->waiters;
    *n = r->nwait;
    r->waiters = NULL;
    r->nwait = r->capwait = 0;
    r->pending = false;
    return w;
}

void weft_cache_abandon(weft_cache *c, weft_str key)
{
    if (!c || (key.n && !key.p))
        return;
    struct record *r = record_find(c, key, key_hash(c, key));
    if (!r || !r->pending)
        return;
    size_t n;
    struct waiter *w = waiters_take(r, &n);
    record_maybe_free(c, r);
    for (size_t i = 0; i < n; i++)
        w[i].cb(w[i].waiter, false, NULL);
    free(w);
}

int weft_cache_fill(weft_cache *c, weft_str key, const weft_hdrs *req, int status,
                    const weft_hdrs *resp, weft_str body, uint64_t ttl_ms, uint64_t now_ms)
{
    int rc;
    weft_cache_entry *e = NULL;
    if (!c)
        return WEFT_EINVAL;
    if ((key.n && !key.p) || (body.n && !body.p) || !hdrs_valid(req) || !hdrs_valid(resp) ||
        ttl_ms == 0) {
        rc = WEFT_EINVAL;
        goto fail_abandon;
    }
    rc = entry_build(c, key, req, status, resp, body, &e);
    if (rc < 0)
        goto fail_abandon;
    e->stored_at = now_ms;
    e->expires_at = sat_add64(now_ms, ttl_ms);
    if (c->policy == WEFT_CACHE_LFU && heap_reserve(c, c->heap_n + 1) < 0) {
        rc = WEFT_ENOMEM;
        goto fail_free_entry;
    }

    uint64_t h = key_hash(c, key);
    struct record *r = record_find(c, key, h);
    if (r) {
        for (weft_cache_entry *v = r->variants, *next; v; v = next) {
            next = v->vnext;
            if (same_variant(v, e))
                entry_unlink(c, v); /* replaced, not evicted */
        }
        while (r->nvariants >= MAX_VARIANTS) {
            weft_cache_entry *oldest = r->variants;
            while (oldest->vnext)
                oldest = oldest->vnext;
            entry_unlink(c, oldest);
            c->st.evictions++;
        }
        record_maybe_free(c, r);
    }
    while (c->st.bytes > c->max_bytes - e->size) {
        weft_cache_entry *victim = pick_victim(c);
        if (!victim)
            break;
        entry_evict(c, victim);
    }
    r = record_get(c, key, h); /* evictions may have freed the old one */
    if (!r) {
        rc = WEFT_ENOMEM;
        goto fail_free_entry;
    }
    entry_link(c, r, e);
    c->st.stores++;

    size_t n;
    struct waiter *w = waiters_take(r, &n);
    e->refs++; /* keeps e alive while callbacks evict or replace it */
    for (size_t i = 0; i < n; i++) {
        weft_cache_hit hit;
        make_hit(e, now_ms, &hit);
        w[i].cb(w[i].waiter, true, &hit);
    }
    free(w);
    entry_unref(c, e);
    return 0;

fail_free_entry:
    free(e);
fail_abandon:
    weft_cache_abandon(c, key);
    return rc;
}

void weft_cache_cancel_wait(weft_cache *c, weft_str key, void *waiter)
{
    if (!c || (key.n && !key.p))
        return;
    struct record *r = record_find(c, key, key_hash(c, key));
    if (!r)
        return;
    for (size_t i = 0; i < r->nwait; i++) {
        if (r->waiters[i].waiter != waiter)
            continue;
        memmove(&r->waiters[i], &r->waiters[i + 1], (r->nwait - i - 1) * sizeof(*r->waiters));
        r->nwait--;
        return;
    }
}

void weft_cache_hit_release(weft_cache *c, weft_cache_hit *hit)
{
    if (!c || !hit || !hit->e)
        return;
    entry_unref(c, hit->e);
    memset(hit, 0, sizeof(*hit));
}

void weft_cache_expire(weft_cache *c, uint64_t now_ms)
{
    if (!c)
        return;
    for (weft_cache_entry *e = c->lru_head, *next; e; e = next) {
        next = e->next;
        if (now_ms < e->expires_at)
            continue;
        struct record *r = e->rec;
        entry_unlink(c, e);
        record_maybe_free(c, r);
    }
}
