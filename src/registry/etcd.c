/*
 * etcd.c — the registry's etcd store (see etcd.h): registry state in an
 * etcd v3 cluster, mirrored into the local reg_store.
 *
 * Wire: etcd's JSON gateway (HTTP/1.1 POST of JSON, keys and values in
 * base64, 64-bit numbers as strings) through Weft's non-blocking HTTP
 * client on the registry's loop — nothing here blocks. Layout:
 *
 *   {prefix}/instances/{service}/{id} -> the registration JSON (the body
 *                                        of PUT /v1/services/S/instances/I)
 *
 * attached to one etcd lease per instance with a TTL (granted with the TTL
 * rounded up to whole seconds; etcd raises it to its minimum). etcd owns
 * expiry: a lease that is not kept alive is revoked by etcd, which deletes
 * the key, and every node hears the delete.
 *
 * The mirror: at start every node ranges the prefix (in pages of 1000, all
 * at the first page's revision R), loads that snapshot into its store, and
 * watches from R + 1, applying each event with etcd's revisions — an
 * instance's revision is its key's mod_revision and the registry revision
 * is the last applied event's, so every node reports the same numbers and
 * a client may move between nodes with its index. If the watch is
 * cancelled because its start revision was compacted, the node re-lists:
 * the store's history is reset to the new revision (SSE watchers behind it
 * get "relist") and the snapshot is applied as a difference.
 *
 * Writes: register (lease grant, then put, then revoke of the lease the
 * instance had before), deregister (delete, then revoke), status (a
 * compare-and-swap transaction on the key's mod_revision, retried from
 * the current value when another write won), heartbeat (lease keepalive;
 * an instance unknown to this node's mirror is looked up in etcd first,
 * so a client may heartbeat any node). A write that made a change is
 * answered once the mirror has applied its revision — read-your-writes on
 * the node that took it — or after WAIT_MS if the watch is down (the
 * write is committed in etcd either way).
 *
 * Failover: calls go to the current endpoint; a transport error, a
 * timeout or a 5xx answer (no leader, leader changed, request timed out)
 * moves the current endpoint on and the call is sent again, with a short
 * backoff, until CALL_BUDGET_MS has passed. Every call is safe to repeat:
 * put, range and keepalive are idempotent, a repeated deregister or revoke
 * that finds nothing after an earlier attempt that may have landed counts
 * as done, and a repeated lease grant can only leave an unused lease that
 * etcd expires. The watch, when its stream ends, is re-established on the
 * next endpoint from the last applied revision, so no event is lost.
 *
 * Watch liveness: a member that stops answering with its connection left
 * open (stopped, or cut off from the majority by a partition) leaves the
 * watch stream silent, and etcd's progress notifications are minutes
 * apart. So once the stream has been silent for PROBE_MS (2 s), the node
 * probes the watch's endpoint with a linearizable read of one key (a
 * range of the prefix key itself, count only; it needs the member to
 * reach a quorum), PROBE_TIMEOUT_MS (2 s) to answer, and again PROBE_MS
 * after each answer while the silence lasts. A probe that fails, times
 * out or gets an answer other than 200 restarts the watch on the next
 * endpoint, as does any call that fails on the watch's endpoint: a dead
 * watch is replaced within about 4 to 6 s, and resumes from the last
 * applied revision (or re-lists if that was compacted) like any restart.
 */
#include "etcd.h"

#include "weft/http.h"
#include "weft/log.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ATTEMPT_MS 2000      /* one try on one endpoint */
#define CALL_BUDGET_MS 12000 /* every endpoint, all tries: then the call fails */
#define WAIT_MS 3000         /* a write waits this long for the mirror */
#define WATCH_CREATED_MS 5000
#define PROBE_MS 2000         /* watch silent this long: probe its endpoint */
#define PROBE_TIMEOUT_MS 2000 /* a probe not answered by then: the watch is dead */
#define LIST_PAGE 1000
#define MAX_BODY (256u << 20)
#define MAX_TXN_TRIES 5

typedef struct call call;
typedef void (*call_fn)(call *c, int err, json_t *resp);
typedef struct op op;

struct call {
    reg_etcd *e;
    call *prev, *next;
    const char *path;
    char *body;
    size_t len;
    size_t ep;
    int attempts;
    bool maybe_applied; /* an earlier attempt may have reached etcd */
    uint64_t deadline_ms;
    weft_http_creq *q;
    int status;
    weft_buf resp;
    weft_timer retry;
    call_fn fn;
    void *ud;
};

enum op_kind { OP_REGISTER = 1, OP_DEREGISTER, OP_HEARTBEAT, OP_STATUS };

struct op {
    reg_etcd *e;
    op *prev, *next; /* waiting for the mirror */
    int kind;
    char *svc, *id, *key;
    char *value;         /* register: the value to put */
    uint64_t ttl_s;      /* register: lease TTL to grant, 0: none */
    uint64_t lease;      /* register: the new lease; heartbeat: the lease */
    uint64_t old_lease;  /* register: the lease to revoke after the put */
    int status, tries;   /* status change */
    uint64_t want_rev, wait_until_ms;
    bool changed;
    uint64_t ttl_ms;
    reg_etcd_done_fn cb;
    void *ud;
};

typedef struct snap_kv {
    char *svc, *id;
    json_t *value;
    uint64_t create_rev, mod_rev, lease;
} snap_kv;

struct reg_etcd {
    weft_loop *loop;
    weft_http_client *hc;
    reg_store *store;
    reg_etcd_url url;
    size_t cur; /* endpoint for the next call */
    char *kprefix; /* "{prefix}/instances/" */
    char *kp64, *kend64;
    reg_etcd_changed_fn changed;
    void *ud;
    bool ready, stopping;
    uint64_t rev; /* last etcd revision applied to the mirror */
    call *calls;
    op *waiting;
    weft_timer wait_timer;
    /* listing */
    bool listing;
    uint64_t list_rev;
    snap_kv *snap;
    size_t nsnap, capsnap;
    weft_timer list_timer;
    /* watch */
    weft_http_creq *wq;
    int wstatus;
    weft_buf wbuf;
    weft_timer watch_timer; /* reconnect backoff, or "created" deadline */
    bool wcreated;
    uint32_t wbackoff_ms;
    size_t wep;          /* the watch's endpoint */
    uint64_t wlast_ms;   /* when the watch stream last sent anything */
    weft_http_creq *pq;  /* liveness probe of the watch's endpoint */
    int pstatus;
    weft_timer probe_timer;
};

static uint64_t now_ms(reg_etcd *e) { return weft_loop_now_ms(e->loop); }

/* ---- URL ---- */

int reg_etcd_parse_url(const char *url, reg_etcd_url *out, char *why, size_t whylen)
{
    memset(out, 0, sizeof *out);
    snprintf(out->prefix, sizeof out->prefix, "/weft/registry");
    if (!url || strncmp(url, "etcd://", 7) != 0) {
        snprintf(why, whylen, "expected etcd://HOST:PORT[,HOST:PORT...][/PREFIX]");
        return WEFT_EINVAL;
    }
    const char *p = url + 7, *slash = strchr(p, '/');
    const char *end = slash ? slash : p + strlen(p);
    if (slash) {
        size_t n = strlen(slash);
        while (n > 1 && slash[n - 1] == '/')
            n--;
        bool ok = n > 1 && n < sizeof out->prefix;
        for (size_t i = 0; ok && i < n; i++)
            ok = slash[i] > ' ' && slash[i] < 0x7f && slash[i] != '"' && slash[i] != '\\';
        if (!ok) {
            snprintf(why, whylen, "prefix: expected /PATH of at most %zu printable characters",
                     sizeof out->prefix - 2);
            return WEFT_EINVAL;
        }
        memcpy(out->prefix, slash, n);
        out->prefix[n] = 0;
    }
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *e = comma ? comma : end;
        if (out->n == REG_ETCD_MAX_ENDPOINTS) {
            snprintf(why, whylen, "at most %d endpoints", REG_ETCD_MAX_ENDPOINTS);
            return WEFT_EINVAL;
        }
        const char *h = p, *he, *colon = NULL;
        if (p < e && *p == '[') {
            const char *rb = memchr(p, ']', (size_t)(e - p));
            if (!rb || rb == p + 1) {
                snprintf(why, whylen, "endpoint %zu: unterminated [IPv6 address]", out->n + 1);
                return WEFT_EINVAL;
            }
            h = p + 1;
            he = rb;
            if (rb + 1 < e && rb[1] != ':') {
                snprintf(why, whylen, "endpoint %zu: expected :PORT after ]", out->n + 1);
                return WEFT_EINVAL;
            }
            colon = rb + 1 < e ? rb + 1 : NULL;
        } else {
            colon = memchr(p, ':', (size_t)(e - p));
            he = colon ? colon : e;
        }
        size_t hl = (size_t)(he - h);
        bool hok = hl > 0 && hl < sizeof out->host[0];
        for (size_t i = 0; hok && i < hl; i++)
            hok = h[i] > ' ' && h[i] < 0x7f && h[i] != '@' && h[i] != '/';
        if (!hok) {
            snprintf(why, whylen, "endpoint %zu: expected HOST:PORT", out->n + 1);
            return WEFT_EINVAL;
        }
        unsigned long port = 2379;
        if (colon) {
            port = 0;
            const char *q = colon + 1;
            if (q == e || e - q > 5)
                port = 0;
            for (; q < e && q - colon <= 6; q++) {
                if (*q < '0' || *q > '9') {
                    port = 0;
                    break;
                }
                port = port * 10 + (unsigned long)(*q - '0');
            }
            if (port < 1 || port > 65535) {
                snprintf(why, whylen, "endpoint %zu: port must be 1-65535", out->n + 1);
                return WEFT_EINVAL;
            }
        }
        memcpy(out->host[out->n], h, hl);
        out->host[out->n][hl] = 0;
        out->port[out->n] = (uint16_t)port;
        out->n++;
        p = comma ? comma + 1 : end;
        if (comma && p == end) {
            snprintf(why, whylen, "empty endpoint after ','");
            return WEFT_EINVAL;
        }
    }
    if (out->n == 0) {
        snprintf(why, whylen, "no endpoint: expected etcd://HOST:PORT[,HOST:PORT...]");
        return WEFT_EINVAL;
    }
    return 0;
}

/* ---- encoding ---- */

static char *b64(const void *p, size_t n)
{
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    if (out)
        EVP_EncodeBlock((unsigned char *)out, p, (int)n);
    return out;
}

/* Decode a base64 string; NUL-terminated result (length in *n), or NULL. */
static char *unb64(const char *s, size_t *n)
{
    size_t len = s ? strlen(s) : 0;
    if (len % 4 || len > MAX_BODY)
        return NULL;
    unsigned char *out = malloc(len / 4 * 3 + 1);
    if (!out)
        return NULL;
    int k = len ? EVP_DecodeBlock(out, (const unsigned char *)s, (int)len) : 0;
    if (k < 0) {
        free(out);
        return NULL;
    }
    for (size_t i = len; i > 0 && s[i - 1] == '='; i--)
        k--; /* EVP_DecodeBlock counts the padding as zero bytes */
    out[k] = 0;
    *n = (size_t)k;
    return (char *)out;
}

/* A uint64 member sent as a string (the gateway's int64) or a number. */
static uint64_t jnum(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (json_is_integer(v))
        return (uint64_t)json_integer_value(v);
    return json_is_string(v) ? strtoull(json_string_value(v), NULL, 10) : 0;
}

static json_t *jstr_u64(uint64_t v)
{
    char b[24];
    snprintf(b, sizeof b, "%llu", (unsigned long long)v);
    return json_string(b);
}

static char *inst_key(reg_etcd *e, const char *svc, const char *id)
{
    size_t n = strlen(e->kprefix) + strlen(svc) + strlen(id) + 2;
    char *k = malloc(n);
    if (k)
        snprintf(k, n, "%s%s/%s", e->kprefix, svc, id);
    return k;
}

/* ---- calls: one JSON request, with failover across the endpoints ---- */

static void call_attempt(call *c);

static void call_free(call *c)
{
    reg_etcd *e = c->e;
    if (c->q)
        weft_http_creq_cancel(c->q);
    weft_timer_stop(e->loop, &c->retry);
    if (c->prev)
        c->prev->next = c->next;
    else
        e->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    weft_buf_release(&c->resp);
    free(c->body);
    free(c);
}

static void watch_again(reg_etcd *e, const char *why, int err);

/* Endpoint ep failed: the current endpoint moves on (unless another call
 * already moved it), and a watch on ep is restarted elsewhere. */
static void endpoint_failed(reg_etcd *e, size_t ep, int err, int status)
{
    if (e->cur == ep && e->url.n > 1) {
        e->cur = (ep + 1) % e->url.n;
        weft_log(WEFT_LOG_WARN, "etcd endpoint failed, using the next one",
                 WEFT_KV_STR("endpoint", e->url.host[ep]), WEFT_KV_INT("port", e->url.port[ep]),
                 WEFT_KV_STR("error", err ? weft_strerror(err) : "server error"),
                 WEFT_KV_INT("status", status), WEFT_KV_STR("next", e->url.host[e->cur]),
                 WEFT_KV_INT("next_port", e->url.port[e->cur]));
    }
    if (e->wq && e->wep == ep) /* watch_again cancels it first: no recursion */
        watch_again(e, "a call to the watch's endpoint failed", err ? err : WEFT_EIO);
}

static void call_retry_cb(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    call_attempt(t->data);
}

/* Deliver the result and free the call (fn may start other calls). */
static void call_finish(call *c, int err, json_t *resp)
{
    c->fn(c, err, resp);
    json_decref(resp);
    call_free(c);
}

static void call_failed(call *c, int err)
{
    reg_etcd *e = c->e;
    endpoint_failed(e, c->ep, err, err ? 0 : c->status);
    c->maybe_applied = true;
    uint64_t backoff = 50u * (uint64_t)(c->attempts < 10 ? c->attempts : 10);
    if (e->stopping || now_ms(e) + backoff >= c->deadline_ms) {
        call_finish(c, err ? err : WEFT_EIO, NULL);
        return;
    }
    weft_timer_start(e->loop, &c->retry, backoff);
}

static void call_resp(weft_http_creq *q, const weft_http_cresp *resp, void *ud)
{
    (void)q;
    call *c = ud;
    c->status = resp->status;
}

static void call_body(weft_http_creq *q, weft_str data, void *ud)
{
    (void)q;
    call *c = ud;
    if (weft_buf_append(&c->resp, data.p, data.n) < 0)
        c->status = -1; /* too large: treated as a protocol error */
}

static void call_done(weft_http_creq *q, int err, void *ud)
{
    (void)q;
    call *c = ud;
    c->q = NULL;
    if (err == 0 && c->status < 0)
        err = WEFT_ETOOBIG;
    if (err || c->status >= 500) {
        call_failed(c, err);
        return;
    }
    json_t *j = json_loadb(weft_buf_rptr(&c->resp), weft_buf_used(&c->resp), 0, NULL);
    if (!j) {
        call_failed(c, WEFT_EPROTO);
        return;
    }
    /* streaming endpoints (keepalive) wrap their one answer in "result" */
    json_t *res = json_object_get(j, "result");
    if (res) {
        json_incref(res);
        json_decref(j);
        j = res;
    }
    call_finish(c, 0, j);
}

static void call_attempt(call *c)
{
    reg_etcd *e = c->e;
    c->ep = e->cur;
    c->attempts++;
    c->status = 0;
    weft_buf_clear(&c->resp);
    static const char *const hdrs[] = {"Content-Type: application/json", NULL};
    weft_http_creq_opts o = {
        .method = "POST",
        .host = e->url.host[c->ep],
        .port = e->url.port[c->ep],
        .target = c->path,
        .headers = hdrs,
        .body = c->body,
        .body_len = c->len,
        .timeout_ms = ATTEMPT_MS,
        .on_response = call_resp,
        .on_body = call_body,
        .on_done = call_done,
        .ud = c,
    };
    int rc = weft_http_client_request(e->hc, &o, &c->q);
    if (rc < 0) {
        c->q = NULL;
        call_failed(c, rc);
    }
}

/* POST req (consumed) to path; fn gets (0, the answer's JSON) for any
 * status below 500, or an error once every try failed. */
static void call_start(reg_etcd *e, const char *path, json_t *req, call_fn fn, void *ud)
{
    call *c = calloc(1, sizeof *c);
    char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    if (!c || !body || e->stopping) {
        free(c);
        free(body);
        fn(&(call){.e = e, .ud = ud}, e->stopping ? WEFT_ECANCELED : WEFT_ENOMEM, NULL);
        return;
    }
    c->e = e;
    c->path = path;
    c->body = body;
    c->len = strlen(body);
    c->fn = fn;
    c->ud = ud;
    c->deadline_ms = now_ms(e) + CALL_BUDGET_MS;
    weft_buf_init(&c->resp, MAX_BODY);
    weft_timer_init(&c->retry, call_retry_cb, c);
    c->next = e->calls;
    if (e->calls)
        e->calls->prev = c;
    e->calls = c;
    call_attempt(c);
}

/* gRPC status code of an error answer, -1 if the answer is not an error. */
static int grpc_code(json_t *resp)
{
    json_t *code = json_object_get(resp, "code");
    return json_object_get(resp, "error") && json_is_integer(code)
               ? (int)json_integer_value(code)
               : -1;
}

static void ignore_answer(call *c, int err, json_t *resp)
{
    (void)c;
    (void)err;
    (void)resp;
}

static void revoke(reg_etcd *e, uint64_t lease)
{
    if (lease)
        call_start(e, "/v3/lease/revoke", json_pack("{s:o}", "ID", jstr_u64(lease)),
                   ignore_answer, NULL);
}

/* ---- the mirror ---- */

/* Split "{kprefix}svc/id" into svc and id (validated); false if not ours. */
static bool split_key(reg_etcd *e, const char *key, char *svc, char *id)
{
    size_t pl = strlen(e->kprefix);
    if (strncmp(key, e->kprefix, pl) != 0)
        return false;
    const char *s = key + pl, *slash = strchr(s, '/');
    if (!slash || slash == s || slash - s > 200 || strlen(slash + 1) > 200)
        return false;
    memcpy(svc, s, (size_t)(slash - s));
    svc[slash - s] = 0;
    strcpy(id, slash + 1);
    return reg_name_ok(svc) && reg_name_ok(id);
}

/* Apply a put of a registration value to the mirror; a value that is not a
 * valid registration (written by someone else) removes the instance. */
static void mirror_put(reg_etcd *e, const char *svc, const char *id, json_t *value,
                       uint64_t create_rev, uint64_t mod_rev, uint64_t lease)
{
    reg_input in;
    char why[200];
    const char *tagv[64];
    if (reg_input_from_json(value, &in, why, sizeof why) < 0) {
        weft_log(WEFT_LOG_WARN, "etcd: ignoring an invalid registration", WEFT_KV_STR("service", svc),
                 WEFT_KV_STR("id", id), WEFT_KV_STR("error", why));
        reg_apply_delete(e->store, svc, id, mod_rev);
        return;
    }
    json_t *tags = json_object_get(value, "tags");
    for (size_t i = 0; i < in.ntags; i++)
        tagv[i] = json_string_value(json_array_get(tags, i));
    in.tags = tagv;
    if (reg_apply_put(e->store, svc, id, &in, create_rev, mod_rev, lease, now_ms(e)) < 0)
        weft_log(WEFT_LOG_ERROR, "etcd: out of memory applying a change",
                 WEFT_KV_STR("service", svc), WEFT_KV_STR("id", id));
}

/* A kv from a range or an event: decoded key and value. */
static bool kv_decode(reg_etcd *e, json_t *kv, char *svc, char *id, json_t **value)
{
    size_t n;
    char *key = unb64(json_string_value(json_object_get(kv, "key")), &n);
    bool ok = key && split_key(e, key, svc, id);
    free(key);
    if (!ok || !value)
        return ok;
    char *v = unb64(json_string_value(json_object_get(kv, "value")), &n);
    *value = v ? json_loadb(v, n, 0, NULL) : NULL;
    free(v);
    return true;
}

static void complete_waiting(reg_etcd *e, bool all);

static void mirror_changed(reg_etcd *e)
{
    e->changed(e->ud);
    complete_waiting(e, false);
}

/* ---- listing ---- */

static void list_page(reg_etcd *e, const char *from64);
static void watch_start(reg_etcd *e);

static void snap_clear(reg_etcd *e)
{
    for (size_t i = 0; i < e->nsnap; i++) {
        free(e->snap[i].svc);
        free(e->snap[i].id);
        json_decref(e->snap[i].value);
    }
    free(e->snap);
    e->snap = NULL;
    e->nsnap = e->capsnap = 0;
}

static void list_retry_cb(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    reg_etcd *e = t->data;
    list_page(e, e->kp64);
}

static void list_restart(reg_etcd *e, uint64_t after_ms)
{
    snap_clear(e);
    e->list_rev = 0;
    weft_timer_start(e->loop, &e->list_timer, after_ms);
}

/* The snapshot is complete: make the mirror equal to it, at list_rev. */
static void list_apply(reg_etcd *e)
{
    reg_store *s = e->store;
    uint64_t rev = e->list_rev;
    /* below the new floor: loaded without history; watchers behind re-list */
    reg_history_reset(s, rev);
    json_t *seen = json_object();
    for (size_t i = 0; i < e->nsnap; i++) {
        snap_kv *k = &e->snap[i];
        char both[420];
        snprintf(both, sizeof both, "%s/%s", k->svc, k->id);
        json_object_set_new(seen, both, json_true());
        if (k->value)
            mirror_put(e, k->svc, k->id, k->value, k->create_rev, k->mod_rev, k->lease);
        else
            reg_apply_delete(s, k->svc, k->id, k->mod_rev);
    }
    /* what the mirror has and etcd no longer has */
    for (size_t i = 0; i < reg_service_count(s); i++) {
        const char *name = reg_service_at(s, i, NULL);
        const reg_instance **v;
        size_t n = reg_instances(s, name, &v);
        for (size_t j = 0; j < n;) {
            char both[420];
            snprintf(both, sizeof both, "%s/%s", name, v[j]->id);
            if (json_object_get(seen, both)) {
                j++;
                continue;
            }
            char id[256];
            snprintf(id, sizeof id, "%s", v[j]->id);
            reg_apply_delete(s, name, id, rev); /* moves the last one into slot j */
            n = reg_instances(s, name, &v);
        }
    }
    json_decref(seen);
    reg_history_reset(s, rev);
    size_t count = e->nsnap;
    snap_clear(e);
    e->rev = rev;
    e->listing = false;
    bool first = !e->ready;
    e->ready = true;
    weft_log(WEFT_LOG_INFO, first ? "etcd: registry loaded" : "etcd: registry re-listed",
             WEFT_KV_UINT("instances", count), WEFT_KV_UINT("revision", rev));
    mirror_changed(e);
    watch_start(e);
}

static void list_answer(call *c, int err, json_t *resp)
{
    reg_etcd *e = c->e;
    if (err == WEFT_ECANCELED)
        return;
    if (err || grpc_code(resp) >= 0) {
        /* a compacted list revision (code 11) starts over at a new one */
        const char *msg = err ? weft_strerror(err) : json_string_value(json_object_get(resp, "error"));
        weft_log(WEFT_LOG_WARN, "etcd: cannot list the registry, retrying",
                 WEFT_KV_STR("error", msg ? msg : "?"));
        list_restart(e, err ? 1000 : 0);
        return;
    }
    json_t *hdr = json_object_get(resp, "header");
    if (!e->list_rev)
        e->list_rev = jnum(hdr, "revision");
    size_t i;
    json_t *kv, *kvs = json_object_get(resp, "kvs");
    const char *last = NULL;
    json_array_foreach(kvs, i, kv) {
        last = json_string_value(json_object_get(kv, "key"));
        char svc[256], id[256];
        json_t *value = NULL;
        if (!kv_decode(e, kv, svc, id, &value))
            continue;
        if (e->nsnap == e->capsnap) {
            size_t nc = e->capsnap ? e->capsnap * 2 : 256;
            snap_kv *ns = realloc(e->snap, nc * sizeof *ns);
            if (!ns) {
                json_decref(value);
                list_restart(e, 1000);
                return;
            }
            e->snap = ns;
            e->capsnap = nc;
        }
        snap_kv *k = &e->snap[e->nsnap++];
        k->svc = strdup(svc);
        k->id = strdup(id);
        k->value = value;
        k->create_rev = jnum(kv, "create_revision");
        k->mod_rev = jnum(kv, "mod_revision");
        k->lease = jnum(kv, "lease");
    }
    json_t *more = json_object_get(resp, "more");
    if (json_is_true(more) && last) {
        /* the next page starts right after the last key: key + "\0" */
        size_t n;
        char *raw = unb64(last, &n);
        char *next = raw ? realloc(raw, n + 1) : NULL;
        char *from = next ? (next[n] = 0, b64(next, n + 1)) : NULL;
        free(next ? next : raw);
        if (!from) {
            list_restart(e, 1000);
            return;
        }
        list_page(e, from);
        free(from);
        return;
    }
    list_apply(e);
}

static void list_page(reg_etcd *e, const char *from64)
{
    e->listing = true;
    json_t *req = json_pack("{s:s, s:s, s:s}", "key", from64, "range_end", e->kend64, "limit",
                            "1000");
    if (req && e->list_rev)
        json_object_set_new(req, "revision", jstr_u64(e->list_rev));
    call_start(e, "/v3/kv/range", req, list_answer, NULL);
}

static void watch_stop(reg_etcd *e);

static void relist(reg_etcd *e)
{
    watch_stop(e);
    weft_timer_stop(e->loop, &e->watch_timer);
    snap_clear(e);
    e->list_rev = 0;
    list_page(e, e->kp64);
}

/* ---- watch ---- */

/* POST req (consumed) to the watch's endpoint, with o's callbacks and
 * timeout; *out is NULL when it fails. */
static int wep_post(reg_etcd *e, const char *target, json_t *req, weft_http_creq_opts *o,
                    weft_http_creq **out)
{
    static const char *const hdrs[] = {"Content-Type: application/json", NULL};
    char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    o->method = "POST";
    o->host = e->url.host[e->wep];
    o->port = e->url.port[e->wep];
    o->target = target;
    o->headers = hdrs;
    o->body = body;
    o->body_len = body ? strlen(body) : 0;
    o->ud = e;
    int rc = body ? weft_http_client_request(e->hc, o, out) : WEFT_ENOMEM;
    free(body);
    if (rc < 0)
        *out = NULL;
    return rc;
}

/* Cancel the watch stream and its liveness probe (no callback follows). */
static void watch_stop(reg_etcd *e)
{
    if (e->wq)
        weft_http_creq_cancel(e->wq);
    e->wq = NULL;
    if (e->pq)
        weft_http_creq_cancel(e->pq);
    e->pq = NULL;
    weft_timer_stop(e->loop, &e->probe_timer);
}

/* Probe again when the stream will have been silent for PROBE_MS. */
static void probe_arm(reg_etcd *e)
{
    uint64_t due = e->wlast_ms + PROBE_MS, now = now_ms(e);
    weft_timer_start(e->loop, &e->probe_timer, due > now ? due - now : 0);
}

static void probe_resp(weft_http_creq *q, const weft_http_cresp *resp, void *ud)
{
    (void)q;
    reg_etcd *e = ud;
    e->pstatus = resp->status;
}

static void probe_done(weft_http_creq *q, int err, void *ud)
{
    (void)q;
    reg_etcd *e = ud;
    e->pq = NULL;
    if (err || e->pstatus != 200) {
        weft_log(WEFT_LOG_WARN, "etcd: the watch's endpoint failed a liveness probe",
                 WEFT_KV_STR("endpoint", e->url.host[e->wep]),
                 WEFT_KV_INT("port", e->url.port[e->wep]),
                 WEFT_KV_STR("error", err ? weft_strerror(err) : "server error"),
                 WEFT_KV_INT("status", e->pstatus));
        watch_again(e, "no answer to a liveness probe", err ? err : WEFT_EIO);
        return;
    }
    weft_timer_start(e->loop, &e->probe_timer, PROBE_MS);
}

/* The watch has been silent for PROBE_MS: is its endpoint still there? A
 * linearizable read of one key, which the member answers only while it
 * is in touch with a quorum. */
static void probe_timer_cb(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    reg_etcd *e = t->data;
    if (!e->wq || !e->wcreated || e->pq)
        return;
    if (now_ms(e) < e->wlast_ms + PROBE_MS) {
        probe_arm(e);
        return;
    }
    weft_http_creq_opts o = {
        .timeout_ms = PROBE_TIMEOUT_MS,
        .on_response = probe_resp,
        .on_done = probe_done,
    };
    e->pstatus = 0;
    int rc = wep_post(e, "/v3/kv/range",
                      json_pack("{s:s, s:b}", "key", e->kp64, "count_only", 1), &o, &e->pq);
    if (rc < 0) {
        if (rc == WEFT_ENOMEM)
            weft_timer_start(e->loop, &e->probe_timer, PROBE_MS);
        else
            watch_again(e, "cannot probe the watch's endpoint", rc);
    }
}

static void watch_timer_cb(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    reg_etcd *e = t->data;
    if (e->wq) /* no "created" answer in time: try another endpoint */
        watch_again(e, "no answer to the watch request", WEFT_ETIMEDOUT);
    else
        watch_start(e);
}

static void watch_events(reg_etcd *e, json_t *events)
{
    size_t i;
    json_t *ev;
    bool any = false;
    /* one revision can carry several events (a txn, a range delete, a
     * lease with several keys): skip only what was applied before this
     * message, not the events after the first one of a revision */
    uint64_t applied = e->rev;
    json_array_foreach(events, i, ev) {
        json_t *kv = json_object_get(ev, "kv");
        uint64_t mod = jnum(kv, "mod_revision");
        const char *type = json_string_value(json_object_get(ev, "type"));
        bool del = type && strcmp(type, "DELETE") == 0;
        char svc[256], id[256];
        json_t *value = NULL;
        if (mod > applied && kv_decode(e, kv, svc, id, del ? NULL : &value)) {
            if (del)
                reg_apply_delete(e->store, svc, id, mod);
            else if (value)
                mirror_put(e, svc, id, value, jnum(kv, "create_revision"), mod,
                           jnum(kv, "lease"));
            else
                reg_apply_delete(e->store, svc, id, mod); /* not JSON: not a registration */
            any = true;
        }
        json_decref(value);
        if (mod > e->rev)
            e->rev = mod;
    }
    if (any)
        mirror_changed(e);
    else
        complete_waiting(e, false);
}

static void watch_line(reg_etcd *e, const char *line, size_t n)
{
    json_t *j = json_loadb(line, n, 0, NULL);
    json_t *res = json_object_get(j, "result");
    if (!res) {
        json_t *err = json_object_get(j, "error");
        const char *msg = json_is_object(err) ? json_string_value(json_object_get(err, "message"))
                                              : json_string_value(err);
        json_decref(j);
        watch_again(e, msg ? msg : "unreadable watch message", 0);
        return;
    }
    uint64_t compact = jnum(res, "compact_revision");
    if (compact) {
        weft_log(WEFT_LOG_WARN, "etcd: watch start revision compacted, re-listing",
                 WEFT_KV_UINT("revision", e->rev), WEFT_KV_UINT("compacted", compact));
        json_decref(j);
        relist(e);
        return;
    }
    if (json_is_true(json_object_get(res, "canceled"))) {
        json_decref(j);
        watch_again(e, "watch canceled by etcd", 0);
        return;
    }
    if (json_is_true(json_object_get(res, "created")) && !e->wcreated) {
        e->wcreated = true;
        e->wbackoff_ms = 0;
        weft_timer_stop(e->loop, &e->watch_timer);
        probe_arm(e);
    }
    json_t *events = json_object_get(res, "events");
    if (json_array_size(events))
        watch_events(e, events);
    json_decref(j);
}

static void watch_resp(weft_http_creq *q, const weft_http_cresp *resp, void *ud)
{
    (void)q;
    reg_etcd *e = ud;
    e->wstatus = resp->status;
}

static void watch_body(weft_http_creq *q, weft_str data, void *ud)
{
    reg_etcd *e = ud;
    e->wlast_ms = now_ms(e);
    if (e->wstatus != 200 || weft_buf_append(&e->wbuf, data.p, data.n) < 0)
        return; /* on_done restarts it */
    /* newline-delimited JSON messages */
    for (;;) {
        char *p = weft_buf_rptr(&e->wbuf);
        char *nl = memchr(p, '\n', weft_buf_used(&e->wbuf));
        if (!nl)
            break;
        size_t n = (size_t)(nl - p);
        weft_buf_consume(&e->wbuf, n + 1);
        if (n)
            watch_line(e, p, n);
        if (e->wq != q)
            return; /* the line ended this watch */
    }
    weft_buf_compact(&e->wbuf);
}

static void watch_done(weft_http_creq *q, int err, void *ud)
{
    (void)q;
    reg_etcd *e = ud;
    e->wq = NULL;
    watch_stop(e);
    watch_again(e, err ? weft_strerror(err) : "watch stream ended", err);
}

/* The watch ended or failed: resume from the last applied revision on the
 * next endpoint, after a backoff that grows while it keeps failing. */
static void watch_again(reg_etcd *e, const char *why, int err)
{
    watch_stop(e);
    if (e->stopping)
        return;
    /* either way the watch resumes elsewhere than on wep */
    if (!e->wcreated || err || e->wstatus >= 500)
        endpoint_failed(e, e->wep, err, err ? 0 : e->wstatus);
    else if (e->cur == e->wep && e->url.n > 1)
        e->cur = (e->cur + 1) % e->url.n;
    weft_log(WEFT_LOG_WARN, "etcd: watch interrupted, resuming", WEFT_KV_STR("reason", why),
             WEFT_KV_UINT("from_revision", e->rev + 1));
    e->wbackoff_ms = e->wbackoff_ms ? e->wbackoff_ms * 2 : 50;
    if (e->wbackoff_ms > 1000)
        e->wbackoff_ms = 1000;
    weft_timer_start(e->loop, &e->watch_timer, e->wbackoff_ms);
}

static void watch_start(reg_etcd *e)
{
    if (e->stopping || e->listing)
        return;
    json_t *req = json_pack("{s:{s:s, s:s, s:o}}", "create_request", "key", e->kp64, "range_end",
                            e->kend64, "start_revision", jstr_u64(e->rev + 1));
    weft_http_creq_opts o = {
        .on_response = watch_resp,
        .on_body = watch_body,
        .on_done = watch_done,
    };
    e->wcreated = false;
    e->wstatus = 0;
    e->wep = e->cur;
    e->wlast_ms = now_ms(e);
    weft_buf_clear(&e->wbuf);
    int rc = wep_post(e, "/v3/watch", req, &o, &e->wq);
    if (rc < 0) {
        watch_again(e, weft_strerror(rc), rc);
        return;
    }
    weft_timer_start(e->loop, &e->watch_timer, WATCH_CREATED_MS);
}

/* ---- operations ---- */

static void op_free(op *o)
{
    free(o->svc);
    free(o->id);
    free(o->key);
    free(o->value);
    free(o);
}

static void op_complete(op *o, int rc, uint64_t rev)
{
    if (o->cb)
        o->cb(o->ud, rc, rev, o->changed, o->ttl_ms);
    op_free(o);
}

static void wait_timer_cb(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    reg_etcd *e = t->data;
    complete_waiting(e, false);
}

/* Answer the writes whose revision the mirror has reached (all: every
 * one, at shutdown); those waiting too long are answered anyway. */
static void complete_waiting(reg_etcd *e, bool all)
{
    uint64_t now = now_ms(e);
    for (op *o = e->waiting, *next; o; o = next) {
        next = o->next;
        if (!all && o->want_rev > e->rev && now < o->wait_until_ms)
            continue;
        if (o->prev)
            o->prev->next = o->next;
        else
            e->waiting = o->next;
        if (o->next)
            o->next->prev = o->prev;
        if (!all && o->want_rev > e->rev)
            weft_log(WEFT_LOG_WARN, "etcd: answering a write before this node's mirror has it",
                     WEFT_KV_UINT("revision", o->want_rev), WEFT_KV_UINT("mirror", e->rev));
        op_complete(o, all ? WEFT_ECANCELED : 0, o->want_rev);
    }
    if (e->waiting && !e->stopping)
        weft_timer_start(e->loop, &e->wait_timer, 100);
}

/* A write landed at revision rev: answer once the mirror has applied it. */
static void op_landed(op *o, uint64_t rev)
{
    reg_etcd *e = o->e;
    o->changed = true;
    if (rev <= e->rev || e->stopping) {
        op_complete(o, e->stopping ? WEFT_ECANCELED : 0, rev);
        return;
    }
    o->want_rev = rev;
    o->wait_until_ms = now_ms(e) + WAIT_MS;
    o->prev = NULL;
    o->next = e->waiting;
    if (e->waiting)
        e->waiting->prev = o;
    e->waiting = o;
    if (!weft_timer_active(&e->wait_timer))
        weft_timer_start(e->loop, &e->wait_timer, 100);
}

static op *op_new(reg_etcd *e, int kind, const char *svc, const char *id, reg_etcd_done_fn cb,
                  void *ud)
{
    op *o = calloc(1, sizeof *o);
    if (o) {
        o->e = e;
        o->kind = kind;
        o->cb = cb;
        o->ud = ud;
        o->svc = strdup(svc);
        o->id = strdup(id);
        o->key = inst_key(e, svc, id);
    }
    if (!o || !o->svc || !o->id || !o->key) {
        if (o)
            op_free(o);
        if (cb)
            cb(ud, WEFT_ENOMEM, 0, false, 0);
        return NULL;
    }
    return o;
}

/* An etcd answer that is an error: 404 (lease not found) is "register
 * again"; anything else a failure. */
static int answer_rc(int err, json_t *resp)
{
    if (err)
        return err;
    int code = grpc_code(resp);
    return code < 0 ? 0 : code == 5 ? WEFT_ENOTFOUND : WEFT_EIO;
}

/* -- register -- */

static void reg_put_answer(call *c, int err, json_t *resp)
{
    op *o = c->ud;
    int rc = answer_rc(err, resp);
    if (rc < 0) {
        revoke(o->e, o->lease); /* the new lease keeps nothing */
        op_complete(o, rc == WEFT_ENOTFOUND ? WEFT_EIO : rc, 0);
        return;
    }
    if (o->old_lease != o->lease)
        revoke(o->e, o->old_lease);
    op_landed(o, jnum(json_object_get(resp, "header"), "revision"));
}

static void put_value(op *o)
{
    char *k64 = b64(o->key, strlen(o->key)), *v64 = b64(o->value, strlen(o->value));
    json_t *req = k64 && v64 ? json_pack("{s:s, s:s}", "key", k64, "value", v64) : NULL;
    if (req && o->lease)
        json_object_set_new(req, "lease", jstr_u64(o->lease));
    free(k64);
    free(v64);
    call_start(o->e, "/v3/kv/put", req, reg_put_answer, o);
}

static void reg_grant_answer(call *c, int err, json_t *resp)
{
    op *o = c->ud;
    int rc = answer_rc(err, resp);
    o->lease = rc ? 0 : jnum(resp, "ID");
    if (rc < 0 || !o->lease) {
        op_complete(o, rc < 0 && rc != WEFT_ENOTFOUND ? rc : WEFT_EIO, 0);
        return;
    }
    put_value(o);
}

static void reg_write(op *o)
{
    if (!o->ttl_s) {
        put_value(o);
        return;
    }
    call_start(o->e, "/v3/lease/grant", json_pack("{s:o}", "TTL", jstr_u64(o->ttl_s)),
               reg_grant_answer, o);
}

/* An identical re-registration: renewing the lease is all it does. */
static void reg_renew_answer(call *c, int err, json_t *resp)
{
    op *o = c->ud;
    if (!err && grpc_code(resp) < 0 && jnum(resp, "TTL") > 0) {
        op_complete(o, 0, reg_revision(o->e->store));
        return;
    }
    reg_write(o); /* the lease is gone (or unknown): register anew */
}

void reg_etcd_register(reg_etcd *e, const char *svc, const char *id, json_t *reg,
                       const reg_input *in, reg_etcd_done_fn cb, void *ud)
{
    op *o = op_new(e, OP_REGISTER, svc, id, cb, ud);
    if (!o)
        return;
    o->value = json_dumps(reg, JSON_COMPACT);
    if (!o->value) {
        op_complete(o, WEFT_ENOMEM, 0);
        return;
    }
    o->ttl_s = (in->ttl_ms + 999) / 1000;
    const reg_instance *cur = reg_find(e->store, svc, id);
    o->old_lease = cur ? cur->lease_id : 0;
    if (cur && reg_input_matches(cur, in) && (cur->lease_id != 0) == (in->ttl_ms != 0)) {
        if (!cur->lease_id) {
            op_complete(o, 0, reg_revision(e->store));
            return;
        }
        o->lease = cur->lease_id;
        call_start(e, "/v3/lease/keepalive", json_pack("{s:o}", "ID", jstr_u64(cur->lease_id)),
                   reg_renew_answer, o);
        return;
    }
    reg_write(o);
}

/* -- deregister -- */

static void dereg_answer(call *c, int err, json_t *resp)
{
    op *o = c->ud;
    int rc = answer_rc(err, resp);
    if (rc < 0) {
        op_complete(o, rc == WEFT_ENOTFOUND ? WEFT_EIO : rc, 0);
        return;
    }
    uint64_t rev = jnum(json_object_get(resp, "header"), "revision");
    if (jnum(resp, "deleted") == 0) {
        /* nothing there: not found, unless an earlier try of ours may have
         * deleted it already */
        op_complete(o, c->maybe_applied ? 0 : WEFT_ENOTFOUND, reg_revision(o->e->store));
        return;
    }
    revoke(o->e, jnum(json_array_get(json_object_get(resp, "prev_kvs"), 0), "lease"));
    op_landed(o, rev);
}

void reg_etcd_deregister(reg_etcd *e, const char *svc, const char *id, reg_etcd_done_fn cb,
                         void *ud)
{
    op *o = op_new(e, OP_DEREGISTER, svc, id, cb, ud);
    if (!o)
        return;
    char *k64 = b64(o->key, strlen(o->key));
    json_t *req = k64 ? json_pack("{s:s, s:b}", "key", k64, "prev_kv", 1) : NULL;
    free(k64);
    call_start(e, "/v3/kv/deleterange", req, dereg_answer, o);
}

/* -- heartbeat -- */

static void hb_keepalive_answer(call *c, int err, json_t *resp)
{
    op *o = c->ud;
    int rc = answer_rc(err, resp);
    uint64_t ttl = rc ? 0 : jnum(resp, "TTL");
    if (rc == 0 && ttl == 0)
        rc = WEFT_ENOTFOUND; /* etcd's way of saying the lease is gone */
    o->ttl_ms = ttl * 1000;
    op_complete(o, rc, 0);
}

static void hb_keepalive(op *o)
{
    call_start(o->e, "/v3/lease/keepalive", json_pack("{s:o}", "ID", jstr_u64(o->lease)),
               hb_keepalive_answer, o);
}

static void hb_lookup_answer(call *c, int err, json_t *resp)
{
    op *o = c->ud;
    int rc = answer_rc(err, resp);
    json_t *kv = json_array_get(json_object_get(resp, "kvs"), 0);
    if (rc < 0 || !kv) {
        op_complete(o, rc < 0 ? rc : WEFT_ENOTFOUND, 0);
        return;
    }
    o->lease = jnum(kv, "lease");
    if (!o->lease) { /* registered without a TTL: nothing to renew */
        op_complete(o, 0, 0);
        return;
    }
    hb_keepalive(o);
}

void reg_etcd_heartbeat(reg_etcd *e, const char *svc, const char *id, reg_etcd_done_fn cb,
                        void *ud)
{
    op *o = op_new(e, OP_HEARTBEAT, svc, id, cb, ud);
    if (!o)
        return;
    const reg_instance *in = reg_find(e->store, svc, id);
    if (in && !in->lease_id) {
        op_complete(o, 0, 0);
        return;
    }
    if (in) {
        o->lease = in->lease_id;
        hb_keepalive(o);
        return;
    }
    /* not in this node's mirror (yet): ask etcd which lease keeps it */
    char *k64 = b64(o->key, strlen(o->key));
    json_t *req = k64 ? json_pack("{s:s}", "key", k64) : NULL;
    free(k64);
    call_start(e, "/v3/kv/range", req, hb_lookup_answer, o);
}

/* -- status: compare-and-swap on the key's mod_revision -- */

static void status_txn(op *o, json_t *value, uint64_t mod_rev, uint64_t lease);

static void status_answer(call *c, int err, json_t *resp)
{
    op *o = c->ud;
    int rc = answer_rc(err, resp);
    if (rc < 0) {
        op_complete(o, rc, 0); /* ENOTFOUND: the lease ran out meanwhile */
        return;
    }
    if (json_is_true(json_object_get(resp, "succeeded"))) {
        op_landed(o, jnum(json_object_get(resp, "header"), "revision"));
        return;
    }
    /* another write won (or this node had not seen the key): retry from
     * the current value, which the failure branch returned */
    json_t *rr = json_object_get(json_array_get(json_object_get(resp, "responses"), 0),
                                 "response_range");
    json_t *kv = json_array_get(json_object_get(rr, "kvs"), 0);
    char svc[256], id[256];
    json_t *value = NULL;
    if (!kv || !kv_decode(o->e, kv, svc, id, &value) || !json_is_object(value)) {
        json_decref(value);
        op_complete(o, WEFT_ENOTFOUND, 0);
        return;
    }
    if (++o->tries >= MAX_TXN_TRIES) {
        json_decref(value);
        op_complete(o, WEFT_EAGAIN, 0);
        return;
    }
    status_txn(o, value, jnum(kv, "mod_revision"), jnum(kv, "lease"));
    json_decref(value);
}

/* value: the registration as it is at mod_rev (NULL: unknown here). */
static void status_txn(op *o, json_t *value, uint64_t mod_rev, uint64_t lease)
{
    reg_etcd *e = o->e;
    const char *st = json_string_value(json_object_get(value, "status"));
    if (value && reg_status_from(st ? st : "UP") == o->status) {
        op_complete(o, 0, reg_revision(e->store)); /* already so */
        return;
    }
    char *k64 = b64(o->key, strlen(o->key)), *v64 = NULL;
    if (value) {
        json_object_set_new(value, "status", json_string(reg_status_name(o->status)));
        char *v = json_dumps(value, JSON_COMPACT);
        v64 = v ? b64(v, strlen(v)) : NULL;
        free(v);
    }
    json_t *put = json_pack("{s:s?, s:s?}", "key", k64, "value", v64 ? v64 : "");
    if (put && lease)
        json_object_set_new(put, "lease", jstr_u64(lease));
    /* unknown here: "LESS than 0" never holds, so the failure branch reads the key */
    json_t *req = k64 && put ? json_pack("{s:[{s:s, s:s, s:s, s:o}], s:[{s:O}], s:[{s:{s:s}}]}",
                                         "compare", "key", k64, "target", "MOD", "result",
                                         value ? "EQUAL" : "LESS", "mod_revision",
                                         jstr_u64(mod_rev), "success",
                                         "request_put", put, "failure", "request_range", "key",
                                         k64)
                             : NULL;
    json_decref(put);
    free(k64);
    free(v64);
    call_start(e, "/v3/kv/txn", req, status_answer, o);
}

void reg_etcd_set_status(reg_etcd *e, const char *svc, const char *id, int status,
                         reg_etcd_done_fn cb, void *ud)
{
    op *o = op_new(e, OP_STATUS, svc, id, cb, ud);
    if (!o)
        return;
    o->status = status;
    const reg_instance *in = reg_find(e->store, svc, id);
    json_t *value = in ? reg_instance_body(in) : NULL;
    status_txn(o, value, in ? in->mod_rev : 0, in ? in->lease_id : 0);
    json_decref(value);
}

/* ---- lifecycle ---- */

int reg_etcd_start(const reg_etcd_url *url, reg_store *store, weft_loop *loop,
                   reg_etcd_changed_fn changed, void *ud, reg_etcd **out)
{
    reg_etcd *e = calloc(1, sizeof *e);
    if (!e)
        return WEFT_ENOMEM;
    e->loop = loop;
    e->store = store;
    e->url = *url;
    e->changed = changed;
    e->ud = ud;
    weft_buf_init(&e->wbuf, 64u << 20);
    weft_timer_init(&e->wait_timer, wait_timer_cb, e);
    weft_timer_init(&e->list_timer, list_retry_cb, e);
    weft_timer_init(&e->watch_timer, watch_timer_cb, e);
    weft_timer_init(&e->probe_timer, probe_timer_cb, e);
    size_t n = strlen(url->prefix) + sizeof "/instances/";
    e->kprefix = malloc(n);
    if (e->kprefix)
        snprintf(e->kprefix, n, "%s/instances/", url->prefix);
    /* the range [prefix, prefix with its last byte + 1) is every key under it */
    char *end = e->kprefix ? strdup(e->kprefix) : NULL;
    if (end)
        end[strlen(end) - 1]++;
    e->kp64 = e->kprefix ? b64(e->kprefix, strlen(e->kprefix)) : NULL;
    e->kend64 = end ? b64(end, strlen(end)) : NULL;
    free(end);
    weft_http_client_opts ho;
    weft_http_client_opts_default(&ho);
    ho.response_timeout_ms = 0; /* calls set theirs; the watch has none */
    ho.connect_timeout_ms = 1000;
    ho.max_idle_per_host = 256;
    e->hc = weft_http_client_new(loop, &ho);
    if (!e->kp64 || !e->kend64 || !e->hc) {
        reg_etcd_free(e);
        return WEFT_ENOMEM;
    }
    list_page(e, e->kp64);
    *out = e;
    return 0;
}

bool reg_etcd_ready(const reg_etcd *e) { return e->ready; }

void reg_etcd_free(reg_etcd *e)
{
    if (!e)
        return;
    e->stopping = true;
    watch_stop(e);
    weft_timer_stop(e->loop, &e->watch_timer);
    weft_timer_stop(e->loop, &e->list_timer);
    weft_timer_stop(e->loop, &e->wait_timer);
    complete_waiting(e, true);
    while (e->calls)
        call_finish(e->calls, WEFT_ECANCELED, NULL);
    weft_http_client_free(e->hc);
    snap_clear(e);
    weft_buf_release(&e->wbuf);
    free(e->kprefix);
    free(e->kp64);
    free(e->kend64);
    free(e);
}
