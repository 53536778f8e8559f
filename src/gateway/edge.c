/*
 * edge.c — the gateway's edge features: rate limiting, authentication,
 * response caching, gzip compression and request aggregation.
 *
 * Each feature is a hook on the proxy path in proxy.c and is skipped
 * entirely (one pointer test) on routes that do not configure it.
 *
 * - Rate limiting: a token bucket per key (client IP, a header, or the API
 *   key) per route, shared by all workers under a mutex, because a limit
 *   must hold however a client's connections are spread over workers.
 *   Every answer carries RateLimit-Limit/-Remaining/-Reset; a denied one is
 *   429 with Retry-After.
 * - Authentication: API keys (hashed in the config) and JWT (auth.c). A
 *   failure is 401 with WWW-Authenticate (RFC 6750 error codes); a valid
 *   token that lacks a required claim is 403 insufficient_scope. Verified
 *   claims are forwarded as headers, and the same headers sent by the
 *   client are dropped so they cannot be spoofed.
 * - Cache: per-worker weft_cache (cache.c); the first miss for a key goes
 *   upstream, concurrent requests for it wait and are answered from the
 *   filled entry (coalescing). X-Cache: HIT|MISS, Age on hits.
 * - Compression: gzip (zlib, level 5) of compressible types when the client
 *   accepts it and the upstream did not encode; streamed, so memory stays
 *   bounded for any body size.
 * - Aggregation: several upstream GETs in parallel, composed into one JSON
 *   object; a part that fails or times out gets its configured fallback
 *   value (or null), and the failures are listed under "_errors".
 */
#include "auth.h"
#include "cache.h"
#include "gwrt.h"

#include "weft/log.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

/* ---------------------------------------------------------------- helpers */

static weft_str peer_ip(weft_http_req *r)
{
    const char *p = weft_http_req_peer(r);
    if (p[0] == '[') {
        const char *e = strchr(p, ']');
        return e ? (weft_str){p + 1, (size_t)(e - p - 1)} : weft_str_from(p);
    }
    const char *c = strrchr(p, ':');
    return (weft_str){p, c ? (size_t)(c - p) : strlen(p)};
}

static void add_uint_header(weft_http_req *r, const char *name, uint64_t v)
{
    char num[24];
    int n = snprintf(num, sizeof num, "%llu", (unsigned long long)v);
    weft_http_resp_header(r, weft_str_from(name), (weft_str){num, (size_t)n});
}

/* Collect the request's headers as parallel arrays (stack storage). */
typedef struct req_hdrs {
    weft_str names[128], values[128];
    weft_hdrs h;
} req_hdrs;

static void get_req_hdrs(weft_http_req *r, req_hdrs *rh)
{
    size_t n = weft_http_req_header_count(r);
    if (n > 128)
        n = 128;
    for (size_t i = 0; i < n; i++)
        weft_http_req_header_at(r, i, &rh->names[i], &rh->values[i]);
    rh->h = (weft_hdrs){rh->names, rh->values, n};
}

/* ---------------------------------------------------------------- rate limit */

static weft_str api_key_of(gw_req *g)
{
    const gw_auth_conf *a = g->route->auth;
    weft_str v = weft_http_req_header(g->r, weft_str_from(a && a->key_header ? a->key_header
                                                                            : "X-API-Key"));
    if (!v.p && a && a->key_query && !weft_http_req_query_param(g->r, a->key_query, &v))
        v = WEFT_STR_NULL;
    return v;
}

bool gw_edge_ratelimit(gw_req *g)
{
    gw_ratelimit_conf *rl = g->route->ratelimit;
    weft_str key;
    switch (rl->key) {
    case GW_RL_HEADER:
        key = weft_http_req_header(g->r, weft_str_from(rl->header));
        break;
    case GW_RL_API_KEY:
        key = api_key_of(g);
        break;
    default:
        key = peer_ip(g->r);
        break;
    }
    if (!key.p)
        key = WEFT_STR("-"); /* requests without the key share one bucket */
    weft_ratelimit_info info;
    pthread_mutex_lock(&rl->mu);
    bool ok = weft_ratelimit_take(rl->rl, key, weft_now_us(), &info);
    pthread_mutex_unlock(&rl->mu);
    weft_http_req *r = g->r;
    add_uint_header(r, "RateLimit-Limit", info.limit);
    add_uint_header(r, "RateLimit-Remaining", info.remaining);
    add_uint_header(r, "RateLimit-Reset", info.reset_s);
    if (ok)
        return true;
    weft_metric_inc(g->w->rt->m, g->rrt->m_ratelimited);
    add_uint_header(r, "Retry-After", info.retry_after_s ? info.retry_after_s : 1);
    g->error = "rate limited";
    gw_respond_local(g, 429, "rate limit exceeded", NULL, NULL);
    return false;
}

/* ---------------------------------------------------------------- auth */

static void deny(gw_req *g, int status, const char *scheme_error, const char *why)
{
    const gw_auth_conf *a = g->route->auth;
    char hdr[300];
    if (a->jwks) {
        if (scheme_error)
            snprintf(hdr, sizeof hdr, "Bearer realm=\"weft\", error=\"%s\", error_description=\"%s\"",
                     scheme_error, why);
        else
            snprintf(hdr, sizeof hdr, "Bearer realm=\"weft\"");
    } else {
        snprintf(hdr, sizeof hdr, "ApiKey realm=\"weft\"");
    }
    g->error = why;
    gw_respond_local(g, status, why, status == 401 || scheme_error ? "WWW-Authenticate" : NULL,
                     hdr);
}

static bool claim_text(json_t *v, char *buf, size_t n)
{
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        for (const char *p = s; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                return false; /* never forward control characters */
        snprintf(buf, n, "%s", s);
        return strlen(s) < n;
    }
    if (json_is_integer(v)) {
        snprintf(buf, n, "%lld", (long long)json_integer_value(v));
        return true;
    }
    if (json_is_real(v)) {
        snprintf(buf, n, "%.17g", json_real_value(v));
        return true;
    }
    if (json_is_boolean(v)) {
        snprintf(buf, n, "%s", json_is_true(v) ? "true" : "false");
        return true;
    }
    return false;
}

/* A claim satisfies a requirement if it equals the value, is an array that
 * contains it, or is a space-separated string (OAuth "scope") containing it. */
static bool claim_has(json_t *v, const char *want)
{
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t wl = strlen(want);
        for (const char *p = s; *p;) {
            while (*p == ' ')
                p++;
            const char *e = strchr(p, ' ');
            size_t l = e ? (size_t)(e - p) : strlen(p);
            if (l == wl && strncmp(p, want, wl) == 0)
                return true;
            if (!e)
                break;
            p = e;
        }
        return false;
    }
    if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) if (json_is_string(x) && strcmp(json_string_value(x), want) == 0) return true;
        return false;
    }
    char buf[64];
    return claim_text(v, buf, sizeof buf) && strcmp(buf, want) == 0;
}

static bool append_hdr(gw_req *g, weft_buf *b, const char *name, const char *value)
{
    (void)g;
    size_t nl = strlen(name), vl = strlen(value);
    if (weft_buf_reserve(b, nl + vl + 4) < 0)
        return false;
    weft_buf_append(b, name, nl);
    weft_buf_append(b, ": ", 2);
    weft_buf_append(b, value, vl);
    weft_buf_append(b, "\r\n", 2);
    return true;
}

static void keep_auth_hdrs(gw_req *g, weft_buf *b)
{
    if (!weft_buf_used(b))
        return;
    char *p = weft_http_req_alloc(g->r, weft_buf_used(b));
    if (p) {
        memcpy(p, weft_buf_rptr(b), weft_buf_used(b));
        g->auth_hdrs = (weft_str){p, weft_buf_used(b)};
    }
}

bool gw_edge_auth(gw_req *g)
{
    const gw_auth_conf *a = g->route->auth;
    weft_buf b;
    weft_buf_init(&b, 16384);
    if (a->keys) {
        weft_str key = api_key_of(g);
        if (key.p && key.n) {
            const char *name = weft_apikeys_match(a->keys, key);
            if (name) {
                append_hdr(g, &b, "X-Weft-Consumer", name);
                keep_auth_hdrs(g, &b);
                weft_buf_release(&b);
                return true;
            }
            if (!a->jwks) {
                weft_buf_release(&b);
                deny(g, 401, NULL, "invalid API key");
                return false;
            }
        } else if (!a->jwks) {
            weft_buf_release(&b);
            deny(g, 401, NULL, "missing API key");
            return false;
        }
    }
    /* JWT */
    weft_str authz = weft_http_req_header(g->r, WEFT_STR("Authorization"));
    if (authz.n < 7 || !weft_str_ieq((weft_str){authz.p, 7}, WEFT_STR("Bearer "))) {
        weft_buf_release(&b);
        deny(g, 401, authz.n ? "invalid_request" : NULL,
             authz.n ? "expected a Bearer token" : "missing bearer token");
        return false;
    }
    weft_str tok = {authz.p + 7, authz.n - 7};
    while (tok.n && tok.p[0] == ' ') {
        tok.p++;
        tok.n--;
    }
    weft_jwt_policy pol = {
        .algs = a->algs,
        .issuer = a->issuer,
        .audiences = (const char *const *)a->audiences,
        .naud = a->naud,
        .leeway_s = a->leeway_s,
        .require_exp = false,
    };
    json_t *claims = NULL;
    int rc = weft_jwt_verify(a->jwks, &pol, tok, (int64_t)time(NULL), &claims);
    if (rc != WEFT_JWT_OK) {
        weft_buf_release(&b);
        deny(g, 401, "invalid_token", weft_jwt_strerror(rc));
        return false;
    }
    for (size_t i = 0; i < a->nrequire; i++) {
        json_t *v = json_object_get(claims, a->require[i].name);
        if (!v || !claim_has(v, a->require[i].value)) {
            json_decref(claims);
            weft_buf_release(&b);
            deny(g, 403, "insufficient_scope", "token lacks a required claim");
            return false;
        }
    }
    for (size_t i = 0; i < a->nforward; i++) {
        json_t *v = json_object_get(claims, a->forward[i].name);
        char text[1024];
        if (v && claim_text(v, text, sizeof text))
            append_hdr(g, &b, a->forward[i].value, text);
    }
    json_decref(claims);
    keep_auth_hdrs(g, &b);
    weft_buf_release(&b);
    return true;
}

/* ---------------------------------------------------------------- gzip */

struct gw_gzip {
    z_stream zs;
};

static bool compressible(weft_str ct)
{
    static const char *const types[] = {"text/", "application/json", "application/javascript",
                                        "application/xml", "image/svg+xml",
                                        "application/x-ndjson"};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        size_t l = strlen(types[i]);
        if (ct.n >= l && weft_str_ieq((weft_str){ct.p, l}, (weft_str){types[i], l}))
            return true;
    }
    /* structured suffixes: application/problem+json, application/atom+xml */
    for (size_t i = 0; i + 4 <= ct.n; i++)
        if ((i + 5 <= ct.n && weft_str_ieq((weft_str){ct.p + i, 5}, WEFT_STR("+json"))) ||
            weft_str_ieq((weft_str){ct.p + i, 4}, WEFT_STR("+xml")))
            return true;
    return false;
}

/* Accept-Encoding lists gzip (or *) with a non-zero q. */
static bool accepts_gzip(weft_str ae)
{
    size_t i = 0;
    while (i < ae.n) {
        while (i < ae.n && (ae.p[i] == ' ' || ae.p[i] == ','))
            i++;
        size_t s = i;
        while (i < ae.n && ae.p[i] != ',')
            i++;
        weft_str item = {ae.p + s, i - s};
        size_t tl = 0;
        while (tl < item.n && item.p[tl] != ';' && item.p[tl] != ' ')
            tl++;
        weft_str tok = {item.p, tl};
        if (!weft_str_ieq(tok, WEFT_STR("gzip")) && !weft_str_eq(tok, WEFT_STR("*")))
            continue;
        const char *q = memchr(item.p, '=', item.n);
        if (q && item.n > (size_t)(q - item.p) + 1) {
            double qv = strtod(q + 1, NULL);
            if (qv <= 0)
                return false;
        }
        return true;
    }
    return false;
}

int64_t gw_edge_gzip_start(gw_req *g, int status, weft_str ctype, weft_str cenc, int64_t clen)
{
    const gw_route_conf *rt = g->route;
    if (status < 200 || status >= 300 || status == 204 || status == 206 || cenc.n ||
        !compressible(ctype) || (clen >= 0 && clen < (int64_t)rt->compress_min) ||
        !accepts_gzip(weft_http_req_header(g->r, WEFT_STR("Accept-Encoding"))))
        return clen;
    struct gw_gzip *gz = calloc(1, sizeof *gz);
    if (!gz)
        return clen;
    if (deflateInit2(&gz->zs, 5, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        free(gz);
        return clen;
    }
    g->gz = gz;
    weft_http_resp_header(g->r, WEFT_STR("Content-Encoding"), WEFT_STR("gzip"));
    weft_http_resp_header(g->r, WEFT_STR("Vary"), WEFT_STR("Accept-Encoding"));
    return -1; /* length unknown: chunked */
}

/* Forward the upstream's ETag. A body we gzip is another representation:
 * a strong validator must not claim it is byte-identical to the upstream's
 * (a cache combining ranges would mix the two), so it is weakened as nginx
 * does; one too long to rewrite here is dropped rather than kept strong. */
static void add_etag(weft_http_req *r, weft_str etag, bool gzipped)
{
    if (!gzipped || (etag.n >= 2 && etag.p[0] == 'W' && etag.p[1] == '/')) {
        weft_http_resp_header(r, WEFT_STR("ETag"), etag);
        return;
    }
    char weak[256];
    if (etag.n + 2 > sizeof weak)
        return;
    memcpy(weak, "W/", 2);
    memcpy(weak + 2, etag.p, etag.n);
    weft_http_resp_header(r, WEFT_STR("ETag"), (weft_str){weak, etag.n + 2});
}

void gw_edge_etag(gw_req *g, weft_str etag)
{
    add_etag(g->r, etag, g->gz != NULL);
}

static int gz_pump(gw_req *g, const void *in, size_t n, int flush)
{
    z_stream *zs = &g->gz->zs;
    unsigned char out[16384];
    int rc = 0;
    zs->next_in = (Bytef *)(uintptr_t)in;
    zs->avail_in = (uInt)n;
    do {
        zs->next_out = out;
        zs->avail_out = sizeof out;
        int zr = deflate(zs, flush);
        if (zr == Z_STREAM_ERROR)
            return WEFT_EIO;
        size_t have = sizeof out - zs->avail_out;
        if (have) {
            int w = weft_http_resp_write(g->r, out, have);
            if (w < 0)
                return w;
            if (w > rc)
                rc = w;
        }
        if (flush == Z_FINISH && zr == Z_STREAM_END)
            break;
    } while (zs->avail_out == 0 || (flush == Z_FINISH));
    return rc;
}

int gw_edge_gzip_write(gw_req *g, weft_str data)
{
    return gz_pump(g, data.p, data.n, Z_NO_FLUSH);
}

void gw_edge_gzip_end(gw_req *g)
{
    if (g->gz)
        gz_pump(g, NULL, 0, Z_FINISH);
}

void gw_edge_gzip_free(gw_req *g)
{
    if (!g->gz)
        return;
    deflateEnd(&g->gz->zs);
    free(g->gz);
    g->gz = NULL;
}

/* Compress a whole body at once (cache hits). Returns malloc'd output. */
static unsigned char *gzip_all(const void *in, size_t n, size_t *outlen)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (deflateInit2(&zs, 5, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return NULL;
    size_t cap = deflateBound(&zs, (uLong)n) + 32;
    unsigned char *out = malloc(cap);
    if (!out) {
        deflateEnd(&zs);
        return NULL;
    }
    zs.next_in = (Bytef *)(uintptr_t)in;
    zs.avail_in = (uInt)n;
    zs.next_out = out;
    zs.avail_out = (uInt)cap;
    int zr = deflate(&zs, Z_FINISH);
    *outlen = cap - zs.avail_out;
    deflateEnd(&zs);
    if (zr != Z_STREAM_END) {
        free(out);
        return NULL;
    }
    return out;
}

/* ---------------------------------------------------------------- cache */

#define CACHE_MAX_ENTRY (8u << 20)

static void respond_hit(gw_req *g, weft_cache_hit *hit)
{
    weft_http_req *r = g->r;
    gw_worker *w = g->w;
    weft_str ctype = WEFT_STR_NULL, cenc = WEFT_STR_NULL, etag = WEFT_STR_NULL;
    for (size_t i = 0; i < hit->nheaders; i++) {
        weft_str n = hit->names[i];
        if (weft_str_ieq(n, WEFT_STR("Content-Type")))
            ctype = hit->values[i];
        else if (weft_str_ieq(n, WEFT_STR("Content-Encoding")))
            cenc = hit->values[i];
        /* stored headers are end-to-end (see gw_edge_cache_response); the
         * route's response_headers apply to hits as to proxied answers */
        if (weft_str_ieq(n, WEFT_STR("Content-Type")) || weft_str_ieq(n, WEFT_STR("Age")) ||
            !gw_resp_header_passes(g, n))
            continue;
        if (g->route->compress && weft_str_ieq(n, WEFT_STR("ETag"))) {
            etag = hit->values[i]; /* after the gzip decision, as gw_edge_etag */
            continue;
        }
        weft_http_resp_header(r, n, hit->values[i]);
    }
    gw_resp_header_ops(g);
    weft_http_resp_header(r, WEFT_STR("X-Cache"), WEFT_STR("HIT"));
    add_uint_header(r, "Age", hit->age_s);
    int status = hit->status;
    unsigned char *gz = NULL;
    size_t gzlen = 0;
    weft_str body = hit->body;
    if (g->route->compress && weft_http_req_method(r) != WEFT_METHOD_HEAD && status >= 200 &&
        status < 300 && status != 204 && !cenc.n && compressible(ctype) &&
        body.n >= g->route->compress_min &&
        accepts_gzip(weft_http_req_header(r, WEFT_STR("Accept-Encoding")))) {
        gz = gzip_all(body.p, body.n, &gzlen);
        if (gz) {
            weft_http_resp_header(r, WEFT_STR("Content-Encoding"), WEFT_STR("gzip"));
            weft_http_resp_header(r, WEFT_STR("Vary"), WEFT_STR("Accept-Encoding"));
            body = (weft_str){(const char *)gz, gzlen};
        }
    }
    if (etag.n)
        add_etag(r, etag, gz != NULL);
    gw_count_final(g, status);
    weft_http_req_on_abort(r, NULL, NULL);
    gw_req_free(g);
    weft_http_respond(r, status, ctype, body.p, body.n);
    free(gz);
    weft_cache_hit_release(w->cache, hit);
}

static bool cache_lookup(gw_req *g, bool allow_wait);

static bool has_vary(const weft_cache_hit *hit)
{
    for (size_t i = 0; i < hit->nheaders; i++)
        if (weft_str_ieq(hit->names[i], WEFT_STR("Vary")) && hit->values[i].n)
            return true;
    return false;
}

static void waiter_cb(void *waiter, bool ok, weft_cache_hit *hit)
{
    gw_req *g = waiter;
    g->cache_waiting = false;
    if (ok && !has_vary(hit)) {
        weft_cache_hit copy = *hit; /* the reference travels with the copy */
        respond_hit(g, &copy);
        return;
    }
    if (ok) {
        /* The entry varies on request headers and was fetched for another
         * request: look again with ours (a hit if they match, else fetch). */
        weft_cache_hit copy = *hit;
        weft_cache_hit_release(g->w->cache, &copy);
        if (!cache_lookup(g, false))
            return;
    }
    gw_start_attempt(g); /* fetch ourselves */
}

/*
 * Host, target and, on routes with auth that do not share entries between
 * callers (authorized: false), the identity headers the gateway forwards:
 * the upstream is told who asks (X-Weft-Consumer, claim headers) and may
 * answer per consumer, so one consumer's entry must not serve another.
 */
static char *cache_key(gw_req *g, size_t *len)
{
    weft_str host = weft_http_req_host(g->r);
    weft_str target = weft_http_req_target(g->r);
    weft_str who = g->route->auth && !g->route->cache_auth ? g->auth_hdrs : WEFT_STR_NULL;
    *len = host.n + 1 + target.n + (who.n ? 1 + who.n : 0);
    char *k = weft_http_req_alloc(g->r, *len + 1);
    if (!k)
        return NULL;
    memcpy(k, host.p, host.n);
    k[host.n] = ' ';
    memcpy(k + host.n + 1, target.p, target.n);
    if (who.n) {
        /* a target never holds a newline, so this cannot be forged */
        k[host.n + 1 + target.n] = '\n';
        memcpy(k + host.n + 2 + target.n, who.p, who.n);
    }
    k[*len] = '\0';
    return k;
}

/* true: go on and fetch (maybe as the cache filler); false: answered or parked */
static bool cache_lookup(gw_req *g, bool allow_wait)
{
    req_hdrs rh;
    get_req_hdrs(g->r, &rh);
    int method = weft_http_req_method(g->r);
    if (!weft_cache_request_ok(method, &rh.h, g->route->cache_auth))
        return true;
    size_t klen;
    char *key = g->cache_key ? g->cache_key : cache_key(g, &klen);
    if (!key)
        return true;
    if (g->cache_key)
        klen = g->cache_key_len;
    bool head = method == WEFT_METHOD_HEAD;
    weft_cache_hit hit;
    int rc = weft_cache_lookup(g->w->cache, (weft_str){key, klen}, &rh.h,
                               weft_loop_now_ms(g->w->loop), &hit,
                               allow_wait && !head ? g : NULL, waiter_cb);
    weft_metrics *m = g->w->rt->m;
    if (rc == WEFT_CACHE_HIT) {
        weft_metric_inc(m, g->w->m_cache_hit);
        respond_hit(g, &hit);
        return false;
    }
    g->cache_key = key;
    g->cache_key_len = klen;
    if (rc == WEFT_CACHE_WAIT) {
        weft_metric_inc(m, g->w->m_cache_coalesced);
        g->cache_waiting = true;
        return false;
    }
    weft_metric_inc(m, g->w->m_cache_miss);
    /* Only the owner of the key's fetch may end it: an abandon from a
     * request fetching alongside (a HEAD, or a waiter whose Vary differed)
     * would release the GETs waiting for the owner's answer and send them
     * all upstream. Such a request fetches without storing. */
    if (!hit.fetcher)
        return true;
    if (head) {
        /* a HEAD answer has no body: it must not become the entry GETs get */
        weft_cache_abandon(g->w->cache, (weft_str){key, klen});
        return true;
    }
    g->cache_fill = true;
    size_t cap = g->gen->cfg->cache_max_bytes / 4;
    weft_buf_init(&g->cache_body, cap < CACHE_MAX_ENTRY ? cap : CACHE_MAX_ENTRY);
    return true;
}

bool gw_edge_cache_lookup(gw_req *g) { return cache_lookup(g, true); }

void gw_edge_cache_response(gw_req *g, const weft_http_cresp *resp)
{
    size_t n = resp->nheaders;
    g->cache_names = weft_http_req_alloc(g->r, sizeof(weft_str) * (n ? n : 1));
    g->cache_values = weft_http_req_alloc(g->r, sizeof(weft_str) * (n ? n : 1));
    if (!g->cache_names || !g->cache_values) {
        gw_edge_cache_done(g, false);
        return;
    }
    /* Only end-to-end headers are stored: hop-by-hop ones (including those
     * the upstream's Connection names, which a hit could no longer tell
     * apart) belong to the connection that carried the miss. */
    weft_str uconn = gw_resp_conn_tokens(resp->names, resp->values, n);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        weft_str name = resp->names[i];
        if (!gw_resp_forwardable(uconn, name))
            continue;
        char *nc = weft_http_req_alloc(g->r, name.n + resp->values[i].n + 1);
        if (!nc) {
            gw_edge_cache_done(g, false);
            return;
        }
        memcpy(nc, name.p, name.n);
        memcpy(nc + name.n, resp->values[i].p, resp->values[i].n);
        g->cache_names[k] = (weft_str){nc, name.n};
        g->cache_values[k] = (weft_str){nc + name.n, resp->values[i].n};
        k++;
    }
    g->cache_nheaders = k;
    g->status = resp->status;
}

void gw_edge_cache_body(gw_req *g, weft_str data)
{
    if (weft_buf_append(&g->cache_body, data.p, data.n) < 0)
        gw_edge_cache_done(g, false); /* too big to cache: stream only */
}

void gw_edge_cache_done(gw_req *g, bool ok)
{
    if (!g->cache_fill)
        return;
    g->cache_fill = false;
    weft_cache *c = g->w->cache;
    weft_str key = {g->cache_key, g->cache_key_len};
    uint64_t ttl = 0;
    weft_hdrs resp = {g->cache_names, g->cache_values, g->cache_nheaders};
    if (ok && g->cache_names && weft_cache_storable(g->status, &resp, g->route->cache_ttl_ms, &ttl)) {
        req_hdrs rh;
        get_req_hdrs(g->r, &rh);
        weft_cache_fill(c, key, &rh.h, g->status, &resp,
                        (weft_str){weft_buf_rptr(&g->cache_body), weft_buf_used(&g->cache_body)},
                        ttl, weft_loop_now_ms(g->w->loop));
    } else {
        weft_cache_abandon(c, key);
    }
    weft_buf_release(&g->cache_body);
}

void gw_edge_cache_cancel(gw_req *g)
{
    if (g->cache_waiting) {
        weft_cache_cancel_wait(g->w->cache, (weft_str){g->cache_key, g->cache_key_len}, g);
        g->cache_waiting = false;
    }
    if (g->cache_fill) {
        g->cache_fill = false;
        weft_cache_abandon(g->w->cache, (weft_str){g->cache_key, g->cache_key_len});
    }
    weft_buf_release(&g->cache_body);
}

/* ---------------------------------------------------------------- aggregation */

typedef struct agg_part {
    struct gw_agg *agg;
    size_t idx;
    weft_http_creq *q;
    weft_buf body;
    int status;
    int err;
    bool done;
    gw_cluster_rt *cl;
    gw_epset *set; /* held while the part is in flight */
    int ep;
    uint64_t start_us;
    weft_timer timer; /* the part's timeout: a deadline for the whole part */
} agg_part;

struct gw_agg {
    gw_req *g;
    size_t n, ndone;
    agg_part parts[];
};

static void agg_finish(struct gw_agg *a)
{
    gw_req *g = a->g;
    const gw_route_conf *rt = g->route;
    json_t *out = json_object();
    json_t *errs = json_object();
    for (size_t i = 0; i < a->n; i++) {
        agg_part *p = &a->parts[i];
        const gw_agg_part *pc = &rt->parts[i];
        json_t *v = NULL;
        const char *why = NULL;
        if (p->err)
            why = weft_strerror(p->err);
        else if (p->status < 200 || p->status > 299)
            why = "upstream status";
        else {
            json_error_t je;
            v = json_loadb(weft_buf_rptr(&p->body), weft_buf_used(&p->body), JSON_DECODE_ANY, &je);
            if (!v)
                why = "invalid JSON";
        }
        if (!v) {
            json_error_t je;
            v = pc->fallback_json ? json_loads(pc->fallback_json, JSON_DECODE_ANY, &je) : NULL;
            if (!v)
                v = json_null();
            char msg[96];
            if (p->status && !p->err)
                snprintf(msg, sizeof msg, "%s %d", why, p->status);
            else
                snprintf(msg, sizeof msg, "%s", why);
            json_object_set_new(errs, pc->name, json_string(msg));
        }
        json_object_set_new(out, pc->name, v);
    }
    bool partial = json_object_size(errs) > 0;
    if (partial)
        json_object_set(out, "_errors", errs);
    json_decref(errs);
    char *s = json_dumps(out, JSON_COMPACT);
    json_decref(out);
    weft_http_req *r = g->r;
    if (partial)
        weft_http_resp_header(r, WEFT_STR("X-Weft-Partial"), WEFT_STR("true"));
    gw_count_final(g, 200);
    weft_http_req_on_abort(r, NULL, NULL);
    gw_req_free(g); /* frees a */
    if (s)
        weft_http_respond(r, 200, WEFT_STR("application/json"), s, strlen(s));
    else
        weft_http_respond_error(r, 500, "cannot compose response");
    free(s);
}

/* The part's attempt is over: account it and drop the set reference. */
static void part_release(agg_part *p, uint64_t latency_us)
{
    if (p->ep >= 0 && p->set)
        gw_epset_on_done(p->set, p->ep, latency_us, weft_now_us());
    p->ep = -1;
    gw_epset_unref(p->set);
    p->set = NULL;
}

static void part_response(weft_http_creq *q, const weft_http_cresp *resp, void *ud)
{
    (void)q;
    agg_part *p = ud;
    p->status = resp->status;
}

/*
 * End a part, once, whatever ended it (its response, a failure, an
 * oversized body or its deadline); the last part to end composes the
 * answer, which frees the aggregation and so p: nothing may touch p after.
 */
static void part_end(agg_part *p, int err)
{
    struct gw_agg *a = p->agg;
    if (p->done)
        return;
    p->done = true;
    p->err = err;
    weft_timer_stop(a->g->w->loop, &p->timer);
    if (p->q) {
        weft_http_creq_cancel(p->q);
        p->q = NULL;
    }
    part_release(p, weft_now_us() - p->start_us);
    if (++a->ndone == a->n)
        agg_finish(a);
}

static void part_body(weft_http_creq *q, weft_str data, void *ud)
{
    (void)q;
    agg_part *p = ud;
    if (weft_buf_append(&p->body, data.p, data.n) < 0)
        part_end(p, WEFT_ETOOBIG);
}

static void part_done(weft_http_creq *q, int err, void *ud)
{
    (void)q;
    agg_part *p = ud;
    p->q = NULL; /* finished: nothing to cancel */
    part_end(p, err);
}

/* The client's timeout only bounds silence (the head, then each gap in the
 * body), so an upstream that trickles its body would hold the whole answer
 * far past the part's timeout: this timer bounds the part as documented. */
static void part_timeout(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    part_end(t->data, WEFT_ETIMEDOUT);
}

void gw_edge_aggregate(gw_req *g)
{
    const gw_route_conf *rt = g->route;
    struct gw_agg *a = calloc(1, sizeof *a + rt->nparts * sizeof(agg_part));
    if (!a) {
        gw_respond_local(g, 503, "out of memory", NULL, NULL);
        return;
    }
    a->g = g;
    a->n = rt->nparts;
    g->agg = a;
    weft_str id = weft_http_req_id(g->r);
    char idhdr[300];
    snprintf(idhdr, sizeof idhdr, "X-Request-Id: %.*s", (int)(id.n < 200 ? id.n : 200), id.p);
    const char *hdrs[] = {idhdr, NULL};
    weft_http_resp_header(g->r, WEFT_STR("X-Request-Id"), id);
    for (size_t i = 0; i < a->n; i++) {
        agg_part *p = &a->parts[i];
        const gw_agg_part *pc = &rt->parts[i];
        p->agg = a;
        p->idx = i;
        p->ep = -1;
        weft_timer_init(&p->timer, part_timeout, p);
        weft_buf_init(&p->body, 1u << 20);
        p->cl = &g->gen->clusters[pc->cluster];
        gw_epset *set = p->cl->set;
        p->ep = set->lb ? weft_lb_pick(set->lb, weft_rng_next(&g->w->rng), NULL, 0, &g->w->rng)
                        : -1;
        if (p->ep < 0) {
            p->err = WEFT_ENOTFOUND;
            p->done = true;
            a->ndone++;
            continue;
        }
        p->set = set;
        gw_epset_ref(set);
        const gw_endpoint_conf *e = &set->eps[p->ep];
        weft_lb_on_start(set->lb, p->ep);
        p->start_us = weft_now_us();
        weft_http_creq_opts o = {
            .method = "GET",
            .host = e->host,
            .port = e->port,
            .target = pc->path,
            .headers = hdrs,
            .timeout_ms = pc->timeout_ms,
            .on_response = part_response,
            .on_body = part_body,
            .on_done = part_done,
            .ud = p,
        };
        if (weft_http_client_request(p->cl->client, &o, &p->q) < 0) {
            part_release(p, 0);
            p->err = WEFT_EIO;
            p->done = true;
            a->ndone++;
        } else if (pc->timeout_ms) {
            weft_timer_start(g->w->loop, &p->timer, pc->timeout_ms);
        }
    }
    if (a->ndone == a->n)
        agg_finish(a);
}

void gw_edge_aggregate_cancel(gw_req *g)
{
    struct gw_agg *a = g->agg;
    if (!a)
        return;
    g->agg = NULL;
    for (size_t i = 0; i < a->n; i++) {
        agg_part *p = &a->parts[i];
        weft_timer_stop(g->w->loop, &p->timer);
        if (p->q)
            weft_http_creq_cancel(p->q);
        part_release(p, 0);
        weft_buf_release(&p->body);
    }
    free(a);
}
