/*
 * store.c — registry state: services, instances, revisions, leases,
 * change history, self-preservation (see store.h).
 *
 * Layout: services live in an array, each with an array of instance
 * pointers (listing a service is a walk of one array); an open-addressing
 * hash table keyed by "service\0id" finds an instance in O(1) for
 * heartbeats, the hot operation. The change history is a ring of the last
 * N events, each carrying the instance's JSON so a watcher can be served
 * without touching the live objects.
 *
 * Self-preservation (Eureka's idea, bounded): leases are swept every call
 * to reg_sweep; expiries are counted over a window. If evicting the
 * instances whose leases just ran out would remove more than `threshold`
 * of all leased instances within one window — the signature of a network
 * partition between the registry and its clients, not of N crashes — the
 * registry keeps them (marked expired) and says so; eviction resumes once
 * the share falls back, typically because heartbeats returned. Below
 * `preservation_min` leases the rule is off, so a small system still
 * evicts a single crashed instance.
 */
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct reg_service {
    char *name;
    reg_instance **inst;
    size_t n, cap;
    uint64_t rev;
} reg_service;

struct reg_store {
    reg_store_opts o;
    reg_service *svc;
    size_t nsvc, capsvc;
    /* (service, id) -> instance */
    reg_instance **table;
    size_t tcap, tcount, ttomb; /* live entries and deletion markers */
    uint64_t rev;
    /* history ring: events in revision order; revisions may have gaps
     * (the etcd store numbers changes with etcd's revisions) */
    reg_event *ring;
    size_t rhead, rcount;
    uint64_t floor; /* changes at or below this revision are not retained */
    /* self-preservation */
    bool preserving;
    uint64_t window_start_ms;
    size_t window_expired;
    size_t window_leased; /* leases when the window started: the share's denominator */
    size_t leased;
};

static const char *const status_names[] = {"UP", "DOWN", "OUT_OF_SERVICE", "STARTING"};

const char *reg_status_name(int st)
{
    return st >= 0 && st < 4 ? status_names[st] : "UNKNOWN";
}

int reg_status_from(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (s && strcmp(s, status_names[i]) == 0)
            return i;
    return -1;
}

void reg_store_opts_default(reg_store_opts *o)
{
    o->history = 10000;
    o->preservation_threshold = 0.15;
    o->preservation_min = 10;
    o->sweep_window_ms = 1000;
}

bool reg_name_ok(const char *s)
{
    return weft_name_ok(weft_str_from(s), 200);
}

/* ---- hash table ---- */

static uint64_t key_hash(const char *svc, const char *id)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = svc; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

#define TOMB ((reg_instance *)1)

static size_t slot_of(const reg_store *s, const char *svc, const char *id, bool *found)
{
    size_t mask = s->tcap - 1, i = key_hash(svc, id) & mask, first_tomb = SIZE_MAX;
    for (;;) {
        reg_instance *e = s->table[i];
        if (!e) {
            *found = false;
            return first_tomb != SIZE_MAX ? first_tomb : i;
        }
        if (e == TOMB) {
            if (first_tomb == SIZE_MAX)
                first_tomb = i;
        } else if (strcmp(e->service, svc) == 0 && strcmp(e->id, id) == 0) {
            *found = true;
            return i;
        }
        i = (i + 1) & mask;
    }
}

/* Rebuild the table, doubling it only when live entries need the room;
 * otherwise the rebuild just clears the deletion markers. */
static int table_grow(reg_store *s)
{
    size_t ncap = !s->tcap ? 1024 : (s->tcount + 1) * 2 > s->tcap ? s->tcap * 2 : s->tcap;
    reg_instance **old = s->table;
    size_t ocap = s->tcap;
    s->table = calloc(ncap, sizeof *s->table);
    if (!s->table) {
        s->table = old;
        return WEFT_ENOMEM;
    }
    s->tcap = ncap;
    s->tcount = 0;
    s->ttomb = 0;
    for (size_t i = 0; i < ocap; i++) {
        reg_instance *e = old[i];
        if (e && e != TOMB) {
            bool f;
            s->table[slot_of(s, e->service, e->id, &f)] = e;
            s->tcount++;
        }
    }
    free(old);
    return 0;
}

/* ---- lifecycle ---- */

reg_store *reg_store_new(const reg_store_opts *o)
{
    reg_store *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    if (o)
        s->o = *o;
    else
        reg_store_opts_default(&s->o);
    if (s->o.history < 16)
        s->o.history = 16;
    s->ring = calloc(s->o.history, sizeof *s->ring);
    if (!s->ring || table_grow(s) < 0) {
        free(s->ring);
        free(s);
        return NULL;
    }
    return s;
}

static void inst_free(reg_instance *in)
{
    if (!in)
        return;
    free(in->service);
    free(in->id);
    free(in->address);
    for (size_t i = 0; i < in->ntags; i++)
        free(in->tags[i]);
    free(in->tags);
    json_decref(in->meta);
    free(in->zone);
    free(in->version);
    if (in->check)
        free(in->check->target);
    free(in->check);
    free(in);
}

static void event_clear(reg_event *e)
{
    free(e->service);
    free(e->id);
    free(e->json);
    memset(e, 0, sizeof *e);
}

void reg_store_free(reg_store *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nsvc; i++) {
        for (size_t j = 0; j < s->svc[i].n; j++)
            inst_free(s->svc[i].inst[j]);
        free(s->svc[i].inst);
        free(s->svc[i].name);
    }
    free(s->svc);
    free(s->table);
    for (size_t i = 0; i < s->o.history; i++)
        event_clear(&s->ring[i]);
    free(s->ring);
    free(s);
}

/* ---- input ---- */

/* Seconds as a number, or a duration string: "10s", "500ms", "1m". */
bool reg_duration_text(const char *t, bool bare_ok, double *secs)
{
    char *end;
    double d = strtod(t, &end);
    if (end == t || !(d >= 0 && d < 1e12)) /* also refuses nan, inf */
        return false;
    if ((*end == '\0' && bare_ok) || strcmp(end, "s") == 0)
        *secs = d;
    else if (strcmp(end, "ms") == 0)
        *secs = d / 1000;
    else if (strcmp(end, "m") == 0)
        *secs = d * 60;
    else
        return false;
    return true;
}

static bool parse_duration(json_t *v, double min_s, double max_s, uint64_t *ms)
{
    double secs = -1;
    if (json_is_number(v))
        secs = json_number_value(v);
    else if (json_is_string(v) && !reg_duration_text(json_string_value(v), false, &secs))
        return false;
    if (!(secs >= min_s && secs <= max_s))
        return false;
    *ms = (uint64_t)(secs * 1000 + 0.5);
    return true;
}

static bool target_chars_ok(const char *t)
{
    for (; *t; t++)
        if (*t <= ' ' || *t == '"' || (unsigned char)*t >= 0x7f)
            return false;
    return true;
}

int reg_check_http_split(const char *target, const char *addr, uint16_t port, char *host,
                         size_t hostlen, uint16_t *oport, const char **path)
{
    if (target[0] == '/') {
        if (strlen(addr) >= hostlen)
            return WEFT_EINVAL;
        strcpy(host, addr);
        *oport = port;
        *path = target;
        return 0;
    }
    if (strncmp(target, "http://", 7) != 0)
        return WEFT_EINVAL;
    const char *hp = target + 7, *slash = strchr(hp, '/');
    *path = slash ? slash : "/";
    size_t n = slash ? (size_t)(slash - hp) : strlen(hp);
    const char *colon = NULL;
    if (n && hp[0] == '[') {
        const char *rb = memchr(hp, ']', n);
        if (!rb || rb == hp + 1)
            return WEFT_EINVAL;
        if ((size_t)(rb - hp - 1) >= hostlen)
            return WEFT_EINVAL;
        memcpy(host, hp + 1, (size_t)(rb - hp - 1));
        host[rb - hp - 1] = 0;
        colon = rb + 1 < hp + n ? rb + 1 : NULL;
        if (colon && *colon != ':')
            return WEFT_EINVAL;
    } else {
        colon = memchr(hp, ':', n);
        size_t hl = colon ? (size_t)(colon - hp) : n;
        if (hl == 0 || hl >= hostlen)
            return WEFT_EINVAL;
        memcpy(host, hp, hl);
        host[hl] = 0;
    }
    if (!colon) {
        *oport = 80;
        return 0;
    }
    unsigned long pv = 0;
    const char *q = colon + 1, *e = hp + n;
    if (q == e || e - q > 5)
        return WEFT_EINVAL;
    for (; q < e; q++) {
        if (*q < '0' || *q > '9')
            return WEFT_EINVAL;
        pv = pv * 10 + (unsigned long)(*q - '0');
    }
    if (pv < 1 || pv > 65535)
        return WEFT_EINVAL;
    *oport = (uint16_t)pv;
    return 0;
}

static int check_from_json(json_t *v, reg_check *c, char *why, size_t whylen)
{
    memset(c, 0, sizeof *c);
    if (!json_is_object(v)) {
        snprintf(why, whylen, "check: expected an object with \"http\" or \"tcp\"");
        return WEFT_EINVAL;
    }
    static const char *const known[] = {"http",      "tcp",    "interval",
                                        "timeout",   "failures", "successes",
                                        "status",    "deregister_after", NULL};
    const char *key;
    json_t *f;
    json_object_foreach(v, key, f) {
        bool ok = false;
        for (size_t i = 0; known[i]; i++)
            ok |= strcmp(key, known[i]) == 0;
        if (!ok) {
            snprintf(why, whylen, "check.%.64s: unknown field", key);
            return WEFT_EINVAL;
        }
    }
    json_t *h = json_object_get(v, "http"), *t = json_object_get(v, "tcp");
    if ((h != NULL) == (t != NULL)) {
        snprintf(why, whylen, "check: expected exactly one of \"http\" and \"tcp\"");
        return WEFT_EINVAL;
    }
    char host[256];
    uint16_t port;
    const char *path;
    if (h) {
        c->kind = REG_CHECK_HTTP;
        if (!json_is_string(h) || json_string_length(h) > 1024 ||
            !target_chars_ok(json_string_value(h)) ||
            reg_check_http_split(json_string_value(h), "x", 1, host, sizeof host, &port,
                                 &path) < 0) {
            snprintf(why, whylen,
                     "check.http: expected a path (\"/health\") or an http://host:port/path URL");
            return WEFT_EINVAL;
        }
        c->target = (char *)json_string_value(h);
    } else {
        c->kind = REG_CHECK_TCP;
        const char *tv = json_is_string(t) ? json_string_value(t) : NULL;
        char url[300];
        bool ok = tv && strlen(tv) < 260 && target_chars_ok(tv);
        if (ok && *tv) {
            snprintf(url, sizeof url, "http://%s", tv);
            ok = strchr(tv, '/') == NULL &&
                 reg_check_http_split(url, "x", 1, host, sizeof host, &port, &path) == 0;
            /* the port is required: the last ':' must follow any ']' */
            const char *lc = strrchr(tv, ':'), *rb = strrchr(tv, ']');
            ok = ok && lc && (!rb || lc > rb);
        }
        if (!ok) {
            snprintf(why, whylen,
                     "check.tcp: expected \"\" (the instance's address) or \"host:port\"");
            return WEFT_EINVAL;
        }
        c->target = (char *)tv;
    }
    uint64_t ms = 10000;
    f = json_object_get(v, "interval");
    if (f && !parse_duration(f, 0.05, 3600, &ms)) {
        snprintf(why, whylen, "check.interval: expected 0.05-3600 seconds or a duration like \"10s\"");
        return WEFT_EINVAL;
    }
    c->interval_ms = (uint32_t)ms;
    ms = c->interval_ms < 5000 ? c->interval_ms : 5000;
    f = json_object_get(v, "timeout");
    if (f && (!parse_duration(f, 0.01, 3600, &ms) || ms > c->interval_ms)) {
        snprintf(why, whylen, "check.timeout: expected a duration no longer than the interval");
        return WEFT_EINVAL;
    }
    c->timeout_ms = (uint32_t)ms;
    static const char *const counts[] = {"failures", "successes"};
    for (int k = 0; k < 2; k++) {
        f = json_object_get(v, counts[k]);
        json_int_t n = 1;
        if (f && (!json_is_integer(f) || (n = json_integer_value(f)) < 1 || n > 100)) {
            snprintf(why, whylen, "check.%s: expected an integer 1-100", counts[k]);
            return WEFT_EINVAL;
        }
        if (k == 0)
            c->failures = (uint8_t)n;
        else
            c->successes = (uint8_t)n;
    }
    f = json_object_get(v, "deregister_after");
    if (f) {
        if (!parse_duration(f, 1, 86400 * 30, &ms)) {
            snprintf(why, whylen,
                     "check.deregister_after: expected 1 s to 30 days, like \"1m\"");
            return WEFT_EINVAL;
        }
        c->deregister_after_ms = (uint32_t)ms;
    }
    f = json_object_get(v, "status");
    const char *st = f ? json_string_value(f) : "critical";
    if (!st || (strcmp(st, "passing") != 0 && strcmp(st, "critical") != 0)) {
        snprintf(why, whylen, "check.status: expected \"passing\" or \"critical\"");
        return WEFT_EINVAL;
    }
    c->passing = strcmp(st, "passing") == 0;
    return 0;
}

json_t *reg_check_json(const reg_check *c)
{
    char iv[32], to[32], da[32];
    snprintf(iv, sizeof iv, "%ums", (unsigned)c->interval_ms);
    snprintf(to, sizeof to, "%ums", (unsigned)c->timeout_ms);
    json_t *o = json_pack("{s:s, s:s, s:s, s:i, s:i, s:s}",
                          c->kind == REG_CHECK_HTTP ? "http" : "tcp", c->target, "interval", iv,
                          "timeout", to, "failures", (int)c->failures, "successes",
                          (int)c->successes, "status", c->passing ? "passing" : "critical");
    if (o && c->deregister_after_ms) {
        snprintf(da, sizeof da, "%ums", (unsigned)c->deregister_after_ms);
        json_object_set_new(o, "deregister_after", json_string(da));
    }
    return o;
}

int reg_input_from_json(json_t *body, reg_input *in, char *why, size_t whylen)
{
    memset(in, 0, sizeof *in);
    in->weight = 1;
    in->status = REG_UP;
    if (!json_is_object(body)) {
        snprintf(why, whylen, "body: expected a JSON object");
        return WEFT_EINVAL;
    }
    static const char *const known[] = {"address", "port", "tags",   "meta", "zone",
                                        "version", "weight", "status", "ttl", "check", NULL};
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v) {
        bool ok = false;
        for (size_t i = 0; known[i]; i++)
            ok |= strcmp(key, known[i]) == 0;
        if (!ok) {
            snprintf(why, whylen, "%s: unknown field", key);
            return WEFT_EINVAL;
        }
    }
    v = json_object_get(body, "address");
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 253) {
        snprintf(why, whylen, "address: expected a host name or IP address");
        return WEFT_EINVAL;
    }
    in->address = json_string_value(v);
    for (const char *p = in->address; *p; p++)
        if (*p <= ' ' || *p == '/' || *p == '"' || (unsigned char)*p >= 0x7f) {
            snprintf(why, whylen, "address: invalid character");
            return WEFT_EINVAL;
        }
    v = json_object_get(body, "port");
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 65535) {
        snprintf(why, whylen, "port: expected an integer 1-65535");
        return WEFT_EINVAL;
    }
    in->port = json_integer_value(v);
    v = json_object_get(body, "weight");
    if (v) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 1000) {
            snprintf(why, whylen, "weight: expected an integer 1-1000");
            return WEFT_EINVAL;
        }
        in->weight = json_integer_value(v);
    }
    v = json_object_get(body, "status");
    if (v) {
        in->status = json_is_string(v) ? reg_status_from(json_string_value(v)) : -1;
        if (in->status < 0) {
            snprintf(why, whylen, "status: expected UP, DOWN, OUT_OF_SERVICE or STARTING");
            return WEFT_EINVAL;
        }
    }
    static const char *const strs[] = {"zone", "version"};
    for (int k = 0; k < 2; k++) {
        v = json_object_get(body, strs[k]);
        if (v && (!json_is_string(v) || json_string_length(v) > 200)) {
            snprintf(why, whylen, "%s: expected a string of at most 200 bytes", strs[k]);
            return WEFT_EINVAL;
        }
        if (v && k == 0)
            in->zone = json_string_value(v);
        if (v && k == 1)
            in->version = json_string_value(v);
    }
    v = json_object_get(body, "ttl");
    if (v) {
        if (!parse_duration(v, 0.1, 86400, &in->ttl_ms)) {
            snprintf(why, whylen, "ttl: expected seconds (0.1-86400) or a duration like \"10s\"");
            return WEFT_EINVAL;
        }
    }
    v = json_object_get(body, "tags");
    if (v) {
        if (!json_is_array(v) || json_array_size(v) > 64) {
            snprintf(why, whylen, "tags: expected an array of at most 64 strings");
            return WEFT_EINVAL;
        }
        size_t i;
        json_t *t;
        json_array_foreach(v, i, t) if (!json_is_string(t) || json_string_length(t) > 200)
        {
            snprintf(why, whylen, "tags[%zu]: expected a string of at most 200 bytes", i);
            return WEFT_EINVAL;
        }
        in->ntags = json_array_size(v);
    }
    v = json_object_get(body, "meta");
    if (v) {
        if (!json_is_object(v) || json_object_size(v) > 64) {
            snprintf(why, whylen, "meta: expected an object of at most 64 string values");
            return WEFT_EINVAL;
        }
        const char *mk;
        json_t *mv;
        json_object_foreach(v, mk, mv) {
            if (!json_is_string(mv) || json_string_length(mv) > 1024 || strlen(mk) > 128) {
                snprintf(why, whylen, "meta.%.64s: expected a string (at most 1 KiB)", mk);
                return WEFT_EINVAL;
            }
        }
        in->meta = v;
    }
    v = json_object_get(body, "check");
    if (v && check_from_json(v, &in->check, why, whylen) < 0)
        return WEFT_EINVAL;
    return 0;
}

/* ---- events ---- */

/* Append a change at revision rev. A change at or below the floor is
 * older than the retained history (a re-list applying a snapshot) and is
 * not recorded; evicting the oldest event raises the floor to it. */
static void record(reg_store *s, uint64_t rev, int kind, const char *svc, const char *id,
                   char *json)
{
    if (rev <= s->floor) {
        free(json);
        return;
    }
    reg_event *e = &s->ring[s->rhead];
    if (s->rcount == s->o.history)
        s->floor = e->rev;
    event_clear(e);
    e->rev = rev;
    e->kind = kind;
    e->service = strdup(svc);
    e->id = strdup(id);
    e->json = json;
    s->rhead = (s->rhead + 1) % s->o.history;
    if (s->rcount < s->o.history)
        s->rcount++;
}

int64_t reg_changes(const reg_store *s, uint64_t since, const reg_event **out, size_t max)
{
    if (since >= s->rev)
        return 0;
    if (since < s->floor)
        return WEFT_ETOOBIG;
    /* the ring is in revision order. In memory mode every revision records
     * exactly one event, so the revisions are consecutive and since + 1 is
     * found by arithmetic; with the etcd store they have gaps: binary search */
    size_t first = (s->rhead + s->o.history - s->rcount) % s->o.history;
    size_t lo = 0, hi = s->rcount;
    uint64_t oldest = s->rcount ? s->ring[first].rev : 0;
    if (s->rcount && s->ring[(first + s->rcount - 1) % s->o.history].rev - oldest ==
                         s->rcount - 1)
        lo = hi = since + 1 > oldest ? (size_t)(since + 1 - oldest) : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->ring[(first + mid) % s->o.history].rev <= since)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t n = 0;
    for (size_t k = lo; k < s->rcount && n < max; k++)
        out[n++] = &s->ring[(first + k) % s->o.history];
    return (int64_t)n;
}

/* ---- queries ---- */

static reg_service *find_svc(const reg_store *s, const char *name, size_t *idx)
{
    for (size_t i = 0; i < s->nsvc; i++)
        if (strcmp(s->svc[i].name, name) == 0) {
            if (idx)
                *idx = i;
            return &s->svc[i];
        }
    return NULL;
}

const reg_instance *reg_find(const reg_store *s, const char *service, const char *id)
{
    bool f;
    size_t i = slot_of(s, service, id, &f);
    return f ? s->table[i] : NULL;
}

uint64_t reg_revision(const reg_store *s) { return s->rev; }
bool reg_self_preservation(const reg_store *s) { return s->preserving; }
size_t reg_service_count(const reg_store *s) { return s->nsvc; }
size_t reg_instance_total(const reg_store *s) { return s->tcount; }

uint64_t reg_service_revision(const reg_store *s, const char *service)
{
    const reg_service *sv = find_svc(s, service, NULL);
    return sv ? sv->rev : 0;
}

const char *reg_service_at(const reg_store *s, size_t i, size_t *ninstances)
{
    if (i >= s->nsvc)
        return NULL;
    if (ninstances)
        *ninstances = s->svc[i].n;
    return s->svc[i].name;
}

size_t reg_instances(const reg_store *s, const char *service, const reg_instance ***out)
{
    const reg_service *sv = find_svc(s, service, NULL);
    *out = sv ? (const reg_instance **)sv->inst : NULL;
    return sv ? sv->n : 0;
}

bool reg_instance_healthy(const reg_instance *in, uint64_t now_ms)
{
    return in->status == REG_UP && !in->expired &&
           (in->ttl_ms == 0 || now_ms < in->expires_ms) && (!in->check || in->check->passing);
}

json_t *reg_instance_json(const reg_instance *in, uint64_t now_ms)
{
    json_t *tags = json_array();
    for (size_t i = 0; i < in->ntags; i++)
        json_array_append_new(tags, json_string(in->tags[i]));
    /* the output shares the (never mutated) meta object by reference */
    json_t *meta = in->meta ? json_incref(in->meta) : json_object();
    json_t *o = json_pack("{s:s, s:s, s:s, s:i, s:o, s:o, s:i, s:s, s:I, s:I, s:b}", "service",
                          in->service, "id", in->id, "address", in->address, "port",
                          (int)in->port, "tags", tags, "meta", meta, "weight", (int)in->weight,
                          "status", reg_status_name(in->status), "create_revision",
                          (json_int_t)in->create_rev, "revision", (json_int_t)in->mod_rev,
                          "healthy", reg_instance_healthy(in, now_ms));
    if (!o)
        return NULL;
    if (in->zone)
        json_object_set_new(o, "zone", json_string(in->zone));
    if (in->version)
        json_object_set_new(o, "version", json_string(in->version));
    if (in->ttl_ms)
        json_object_set_new(o, "ttl_ms", json_integer((json_int_t)in->ttl_ms));
    if (in->lease_id) { /* etcd store: etcd keeps the deadline */
        char lease[20];
        snprintf(lease, sizeof lease, "%llx", (unsigned long long)in->lease_id);
        json_object_set_new(o, "lease", json_string(lease));
    } else if (in->ttl_ms) {
        int64_t left = (int64_t)in->expires_ms - (int64_t)now_ms;
        json_object_set_new(o, "lease_remaining_ms", json_integer(left > 0 ? left : 0));
    }
    if (in->expired)
        json_object_set_new(o, "expired", json_true());
    if (in->check)
        json_object_set_new(o, "check", reg_check_json(in->check));
    return o;
}

json_t *reg_instance_body(const reg_instance *in)
{
    json_t *tags = json_array();
    for (size_t i = 0; i < in->ntags; i++)
        json_array_append_new(tags, json_string(in->tags[i]));
    json_t *o = json_pack("{s:s, s:i, s:o, s:i, s:s}", "address", in->address, "port",
                          (int)in->port, "tags", tags, "weight", (int)in->weight, "status",
                          reg_status_name(in->status));
    if (!o)
        return NULL;
    if (in->meta)
        json_object_set(o, "meta", in->meta);
    if (in->check) /* the definition, with the current state as its initial one */
        json_object_set_new(o, "check", reg_check_json(in->check));
    if (in->zone)
        json_object_set_new(o, "zone", json_string(in->zone));
    if (in->version)
        json_object_set_new(o, "version", json_string(in->version));
    if (in->ttl_ms)
        json_object_set_new(o, "ttl", json_real((double)in->ttl_ms / 1000.0));
    return o;
}

static char *inst_dump(const reg_instance *in, uint64_t now_ms)
{
    json_t *o = reg_instance_json(in, now_ms);
    char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return t;
}

/* ---- mutations ---- */

static bool same_check(const reg_check *c, const reg_check *x)
{
    if (!c)
        return x->kind == REG_CHECK_NONE;
    return c->kind == x->kind && strcmp(c->target, x->target) == 0 &&
           c->interval_ms == x->interval_ms && c->timeout_ms == x->timeout_ms &&
           c->failures == x->failures && c->successes == x->successes &&
           c->deregister_after_ms == x->deregister_after_ms;
}

static bool same_input(const reg_instance *in, const reg_input *x)
{
    if (!same_check(in->check, &x->check))
        return false;
    if (strcmp(in->address, x->address) != 0 || in->port != (uint16_t)x->port ||
        in->weight != (uint32_t)x->weight || in->status != x->status || in->ntags != x->ntags ||
        in->ttl_ms != x->ttl_ms)
        return false;
    if ((in->zone == NULL) != (x->zone == NULL) || (in->zone && strcmp(in->zone, x->zone)))
        return false;
    if ((in->version == NULL) != (x->version == NULL) ||
        (in->version && strcmp(in->version, x->version)))
        return false;
    for (size_t i = 0; i < in->ntags; i++)
        if (strcmp(in->tags[i], x->tags[i]) != 0)
            return false;
    json_t *empty = json_object();
    bool meq = json_equal(in->meta ? in->meta : empty, x->meta ? x->meta : empty);
    json_decref(empty);
    return meq;
}

bool reg_input_matches(const reg_instance *in, const reg_input *x) { return same_input(in, x); }

static int fill(reg_instance *in, const reg_input *x)
{
    free(in->address);
    for (size_t i = 0; i < in->ntags; i++)
        free(in->tags[i]);
    free(in->tags);
    json_decref(in->meta);
    free(in->zone);
    free(in->version);
    in->address = strdup(x->address);
    in->port = (uint16_t)x->port;
    in->ntags = x->ntags;
    in->tags = x->ntags ? calloc(x->ntags, sizeof *in->tags) : NULL;
    for (size_t i = 0; i < x->ntags && in->tags; i++)
        in->tags[i] = strdup(x->tags[i]);
    in->meta = x->meta ? json_deep_copy(x->meta) : NULL;
    in->zone = x->zone ? strdup(x->zone) : NULL;
    in->version = x->version ? strdup(x->version) : NULL;
    in->weight = (uint32_t)x->weight;
    in->status = x->status;
    in->ttl_ms = x->ttl_ms;
    if (!same_check(in->check, &x->check)) {
        /* a new definition starts over from its initial state */
        if (in->check)
            free(in->check->target);
        free(in->check);
        in->check = NULL;
        if (x->check.kind != REG_CHECK_NONE) {
            in->check = malloc(sizeof *in->check);
            if (!in->check)
                return WEFT_ENOMEM;
            *in->check = x->check;
            in->check->target = strdup(x->check.target);
            in->check->ok_streak = in->check->fail_streak = 0;
            in->check->next_ms = 0;
            in->check->critical_since_ms = 0;
            in->check->probe_id = 0;
            if (!in->check->target)
                return WEFT_ENOMEM;
        }
    }
    if (!in->address || (x->ntags && !in->tags))
        return WEFT_ENOMEM;
    return 0;
}

/* Register or replace at revision rev (ours: the next one; the etcd
 * store's: etcd's). Applied changes (apply) carry etcd's create revision,
 * lease and check state, and never expire here: etcd expires them. */
static int64_t put_at(reg_store *s, const char *service, const char *id, const reg_input *x,
                      uint64_t now_ms, uint64_t rev, uint64_t create_rev, uint64_t lease,
                      bool apply)
{
    bool found;
    /* markers count as used slots: a probe must always find an empty one */
    if ((s->tcount + s->ttomb + 1) * 4 > s->tcap * 3 && table_grow(s) < 0)
        return WEFT_ENOMEM;
    size_t slot = slot_of(s, service, id, &found);
    reg_instance *in = found ? s->table[slot] : NULL;
    uint64_t expires = apply ? UINT64_MAX : now_ms + x->ttl_ms;
    if (in) {
        if (apply && in->mod_rev == rev)
            return 0; /* this change was applied already */
        in->expires_ms = expires;
        bool was_expired = in->expired;
        in->expired = false;
        if (!apply && same_input(in, x) && !was_expired)
            return 0; /* idempotent re-registration: lease refreshed only */
        if (in->ttl_ms && !x->ttl_ms)
            s->leased--;
        else if (!in->ttl_ms && x->ttl_ms)
            s->leased++;
        if (fill(in, x) < 0)
            return WEFT_ENOMEM;
    } else {
        size_t si;
        reg_service *sv = find_svc(s, service, &si);
        if (!sv) {
            if (s->nsvc == s->capsvc) {
                size_t nc = s->capsvc ? s->capsvc * 2 : 16;
                reg_service *ns = realloc(s->svc, nc * sizeof *ns);
                if (!ns)
                    return WEFT_ENOMEM;
                s->svc = ns;
                s->capsvc = nc;
            }
            sv = &s->svc[s->nsvc];
            memset(sv, 0, sizeof *sv);
            sv->name = strdup(service);
            if (!sv->name)
                return WEFT_ENOMEM;
            s->nsvc++;
        }
        if (sv->n == sv->cap) {
            size_t nc = sv->cap ? sv->cap * 2 : 8;
            reg_instance **ni = realloc(sv->inst, nc * sizeof *ni);
            if (!ni)
                return WEFT_ENOMEM;
            sv->inst = ni;
            sv->cap = nc;
        }
        in = calloc(1, sizeof *in);
        if (!in)
            return WEFT_ENOMEM;
        in->service = strdup(service);
        in->id = strdup(id);
        if (!in->service || !in->id || fill(in, x) < 0) {
            inst_free(in);
            return WEFT_ENOMEM;
        }
        in->expires_ms = expires;
        sv->inst[sv->n++] = in;
        if (s->table[slot] == TOMB)
            s->ttomb--;
        s->table[slot] = in;
        s->tcount++;
        if (x->ttl_ms)
            s->leased++;
        in->create_rev = create_rev;
    }
    if (apply) {
        in->lease_id = lease;
        if (in->check) /* the state travels with the registration */
            in->check->passing = x->check.passing;
    }
    if (rev > s->rev)
        s->rev = rev;
    in->mod_rev = rev;
    reg_service *sv = find_svc(s, service, NULL);
    if (rev > sv->rev)
        sv->rev = rev;
    record(s, rev, REG_EV_PUT, service, id, inst_dump(in, now_ms));
    return (int64_t)rev;
}

int64_t reg_put(reg_store *s, const char *service, const char *id, const reg_input *x,
                uint64_t now_ms)
{
    return put_at(s, service, id, x, now_ms, s->rev + 1, s->rev + 1, 0, false);
}

int64_t reg_apply_put(reg_store *s, const char *service, const char *id, const reg_input *in,
                      uint64_t create_rev, uint64_t mod_rev, uint64_t lease, uint64_t now_ms)
{
    return put_at(s, service, id, in, now_ms, mod_rev, create_rev, lease, true);
}

static void remove_instance(reg_store *s, reg_instance *in, uint64_t rev)
{
    bool f;
    size_t slot = slot_of(s, in->service, in->id, &f);
    if (f) {
        s->table[slot] = TOMB;
        s->ttomb++;
    }
    s->tcount--;
    if (in->ttl_ms)
        s->leased--;
    reg_service *sv = find_svc(s, in->service, NULL);
    for (size_t i = 0; sv && i < sv->n; i++)
        if (sv->inst[i] == in) {
            sv->inst[i] = sv->inst[--sv->n];
            break;
        }
    if (rev > s->rev)
        s->rev = rev;
    if (sv && rev > sv->rev)
        sv->rev = rev;
    json_t *d = json_pack("{s:s, s:s}", "service", in->service, "id", in->id);
    char *t = d ? json_dumps(d, JSON_COMPACT) : NULL;
    json_decref(d);
    record(s, rev, REG_EV_DELETE, in->service, in->id, t);
    inst_free(in);
}

int64_t reg_delete(reg_store *s, const char *service, const char *id)
{
    reg_instance *in = (reg_instance *)reg_find(s, service, id);
    if (!in)
        return WEFT_ENOTFOUND;
    remove_instance(s, in, s->rev + 1);
    return (int64_t)s->rev;
}

int64_t reg_apply_delete(reg_store *s, const char *service, const char *id, uint64_t rev)
{
    reg_instance *in = (reg_instance *)reg_find(s, service, id);
    if (!in)
        return WEFT_ENOTFOUND;
    remove_instance(s, in, rev);
    return (int64_t)rev;
}

int reg_heartbeat(reg_store *s, const char *service, const char *id, uint64_t now_ms)
{
    reg_instance *in = (reg_instance *)reg_find(s, service, id);
    if (!in)
        return WEFT_ENOTFOUND;
    in->expires_ms = now_ms + in->ttl_ms;
    if (in->expired) {
        /* back from self-preservation: visible again, which is a change */
        in->expired = false;
        s->rev++;
        in->mod_rev = s->rev;
        find_svc(s, service, NULL)->rev = s->rev;
        record(s, s->rev, REG_EV_PUT, service, id, inst_dump(in, now_ms));
    }
    return 0;
}

int64_t reg_set_status(reg_store *s, const char *service, const char *id, int status,
                       uint64_t now_ms)
{
    reg_instance *in = (reg_instance *)reg_find(s, service, id);
    if (!in)
        return WEFT_ENOTFOUND;
    if (in->status == status)
        return 0;
    in->status = status;
    s->rev++;
    in->mod_rev = s->rev;
    find_svc(s, service, NULL)->rev = s->rev;
    record(s, s->rev, REG_EV_PUT, service, id, inst_dump(in, now_ms));
    return (int64_t)s->rev;
}

int64_t reg_set_check(reg_store *s, const char *service, const char *id, bool passing,
                      uint64_t now_ms)
{
    reg_instance *in = (reg_instance *)reg_find(s, service, id);
    if (!in)
        return WEFT_ENOTFOUND;
    if (!in->check || in->check->passing == passing)
        return 0;
    in->check->passing = passing;
    s->rev++;
    in->mod_rev = s->rev;
    find_svc(s, service, NULL)->rev = s->rev;
    record(s, s->rev, REG_EV_PUT, service, id, inst_dump(in, now_ms));
    return (int64_t)s->rev;
}

size_t reg_sweep(reg_store *s, uint64_t now_ms)
{
    if (now_ms - s->window_start_ms >= s->o.sweep_window_ms || s->leased > s->window_leased) {
        if (now_ms - s->window_start_ms >= s->o.sweep_window_ms) {
            s->window_start_ms = now_ms;
            s->window_expired = 0;
        }
        s->window_leased = s->leased; /* evictions in the window do not shrink it */
    }
    /* candidates: leases that ran out and are not already held */
    size_t due = 0;
    for (size_t i = 0; i < s->nsvc; i++)
        for (size_t j = 0; j < s->svc[i].n; j++) {
            const reg_instance *in = s->svc[i].inst[j];
            if (in->ttl_ms && !in->expired && now_ms >= in->expires_ms)
                due++;
        }
    size_t held = 0;
    for (size_t i = 0; i < s->nsvc; i++)
        for (size_t j = 0; j < s->svc[i].n; j++)
            held += s->svc[i].inst[j]->expired;
    if (due == 0 && held == 0) {
        s->preserving = false;
        return 0;
    }
    size_t leased = s->window_leased > s->leased ? s->window_leased : s->leased;
    bool protect = leased >= s->o.preservation_min &&
                   (double)(s->window_expired + due + held) >
                       s->o.preservation_threshold * (double)leased;
    if (protect) {
        /* keep them, marked expired (unhealthy), until heartbeats return */
        for (size_t i = 0; i < s->nsvc; i++)
            for (size_t j = 0; j < s->svc[i].n; j++) {
                reg_instance *in = s->svc[i].inst[j];
                if (in->ttl_ms && !in->expired && now_ms >= in->expires_ms) {
                    in->expired = true;
                    s->rev++;
                    in->mod_rev = s->rev;
                    s->svc[i].rev = s->rev;
                    record(s, s->rev, REG_EV_PUT, in->service, in->id, inst_dump(in, now_ms));
                }
            }
        s->preserving = true;
        return 0;
    }
    s->preserving = false;
    size_t removed = 0;
    for (size_t i = 0; i < s->nsvc; i++) {
        for (size_t j = 0; j < s->svc[i].n;) {
            reg_instance *in = s->svc[i].inst[j];
            if (in->ttl_ms && (in->expired || now_ms >= in->expires_ms)) {
                remove_instance(s, in, s->rev + 1); /* moves the last instance into slot j */
                removed++;
            } else {
                j++;
            }
        }
    }
    s->window_expired += removed;
    return removed;
}

reg_instance *reg_find_mut(reg_store *s, const char *service, const char *id)
{
    return (reg_instance *)reg_find(s, service, id);
}

void reg_set_expiry(reg_store *s, const char *service, const char *id, uint64_t expires_ms)
{
    reg_instance *in = reg_find_mut(s, service, id);
    if (in)
        in->expires_ms = expires_ms;
}

void reg_restore_revision(reg_store *s, uint64_t rev)
{
    if (rev > s->rev)
        reg_history_reset(s, rev); /* the history before the restart is gone */
}

void reg_history_reset(reg_store *s, uint64_t rev)
{
    if (rev > s->rev)
        s->rev = rev;
    for (size_t i = 0; i < s->nsvc; i++)
        s->svc[i].rev = s->rev;
    /* watchers behind this point must re-list */
    for (size_t i = 0; i < s->o.history; i++)
        event_clear(&s->ring[i]);
    s->rhead = s->rcount = 0;
    s->floor = s->rev;
}
