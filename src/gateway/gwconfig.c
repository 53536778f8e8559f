/*
 * gwconfig.c — gateway.yaml into an immutable, validated gw_config.
 *
 * Validation is complete before anything is used: references between
 * routes and clusters are resolved to indices, regexes are compiled
 * (pcre2, JIT when available), and every problem is reported as
 * FILE:LINE:COL: KEY: reason through weft_conf. Unknown keys are caught by
 * weft_conf_check_unused() in the caller once the whole document (common
 * keys included) has been read. Defaults follow the reference systems:
 * Envoy for outlier detection and retry backoff, Hystrix for the breaker,
 * Finagle/Linkerd for the retry budget, P2C over peak-EWMA for balancing.
 */
#include "gw.h"

#include "sdk/regwatch.h"

#include "auth.h"
#include "cache.h"

#include "http/codec.h"
#include "weft/log.h"

#include <inttypes.h>
#include <jansson.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        weft_conf_errorf(err, __VA_ARGS__);                                                        \
        goto fail;                                                                                 \
    } while (0)

/* Out of memory: an error at n, and the function returns WEFT_ENOMEM. The
 * parsers below keep `ret` for that: FAIL and plain `goto fail` leave it at
 * 0 and `fail:` returns WEFT_ECONFIG, while a failing step that may run out
 * of memory (get_str, a sub-parser) is stored in ret and passed on. */
#define NOMEM(n)                                                                                   \
    do {                                                                                           \
        weft_conf_errorf(err, (n), NULL, "out of memory");                                         \
        ret = WEFT_ENOMEM;                                                                         \
        goto fail;                                                                                 \
    } while (0)

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static void kv_free(gw_kv_match *m)
{
    free(m->name);
    free(m->value);
    if (m->regex)
        pcre2_code_free(m->regex);
}

static void ops_free(gw_header_ops *o)
{
    for (size_t i = 0; i < o->nset; i++) {
        free(o->set[i].name);
        free(o->set[i].value);
    }
    for (size_t i = 0; i < o->nadd; i++) {
        free(o->add[i].name);
        free(o->add[i].value);
    }
    for (size_t i = 0; i < o->nremove; i++)
        free(o->remove[i]);
    free(o->set);
    free(o->add);
    free(o->remove);
}

static void config_free(gw_config *c)
{
    for (size_t i = 0; i < c->nclusters; i++) {
        gw_cluster_conf *cl = &c->clusters[i];
        free(cl->name);
        for (size_t j = 0; j < cl->neps; j++) {
            free(cl->eps[j].host);
            free(cl->eps[j].id);
        }
        free(cl->eps);
        free(cl->hash_name);
        free(cl->health.path);
        free(cl->dns_name);
        free(cl->dns_resolver);
        free(cl->disc_host);
        free(cl->disc_service);
        free(cl->disc_zone);
    }
    free(c->clusters);
    for (size_t i = 0; i < c->nroutes; i++) {
        gw_route_conf *r = &c->routes[i];
        free(r->name);
        free(r->host);
        free(r->path);
        if (r->path_re)
            pcre2_code_free(r->path_re);
        for (size_t j = 0; j < r->nheaders; j++)
            kv_free(&r->headers[j]);
        free(r->headers);
        for (size_t j = 0; j < r->nquery; j++)
            kv_free(&r->query[j]);
        free(r->query);
        for (size_t j = 0; j < r->nsplits; j++) {
            if (r->splits[j].when_header) {
                kv_free(r->splits[j].when_header);
                free(r->splits[j].when_header);
            }
            free(r->splits[j].when_cookie);
            free(r->splits[j].when_cookie_value);
        }
        free(r->splits);
        free(r->strip_prefix);
        free(r->prefix_rewrite);
        ops_free(&r->req_ops);
        ops_free(&r->resp_ops);
        free(r->location);
        free(r->body);
        free(r->content_type);
        free(r->fallback_body);
        free(r->fallback_type);
        if (r->ratelimit) {
            weft_ratelimit_free(r->ratelimit->rl);
            pthread_mutex_destroy(&r->ratelimit->mu);
            free(r->ratelimit->header);
            free(r->ratelimit);
        }
        if (r->auth) {
            gw_auth_conf *a = r->auth;
            weft_apikeys_free(a->keys);
            weft_jwks_free(a->jwks);
            free(a->key_header);
            free(a->key_query);
            free(a->issuer);
            for (size_t k = 0; k < a->naud; k++)
                free(a->audiences[k]);
            free(a->audiences);
            for (size_t k = 0; k < a->nforward; k++) {
                free(a->forward[k].name);
                free(a->forward[k].value);
            }
            free(a->forward);
            for (size_t k = 0; k < a->nrequire; k++) {
                free(a->require[k].name);
                free(a->require[k].value);
            }
            free(a->require);
            free(a);
        }
        for (size_t k = 0; k < r->nparts; k++) {
            free(r->parts[k].name);
            free(r->parts[k].path);
            free(r->parts[k].fallback_json);
        }
        free(r->parts);
    }
    free(c->routes);
    free(c->path);
    free(c->yaml_text);
    free(c->deadline_header);
    free(c);
}

void gw_config_ref(gw_config *c) { atomic_fetch_add(&c->refs, 1); }

void gw_config_unref(gw_config *c)
{
    if (c && atomic_fetch_sub(&c->refs, 1) == 1)
        config_free(c);
}

int gw_cluster_index(const gw_config *c, const char *name)
{
    for (size_t i = 0; i < c->nclusters; i++)
        if (strcmp(c->clusters[i].name, name) == 0)
            return (int)i;
    return -1;
}

static pcre2_code *compile_re(const char *pattern, char *why, size_t whylen)
{
    int ec;
    PCRE2_SIZE off;
    /* PCRE2_MATCH_INVALID_UTF: subjects are request bytes, and header values
     * may hold any obs-text byte. The router uses pcre2_jit_match, which
     * does not validate UTF-8: without this flag an invalid sequence is
     * undefined behaviour (a lone lead byte swallows the bytes after it and
     * can read past the value's end). With it, invalid bytes simply match
     * nothing. */
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_MATCH_INVALID_UTF, &ec, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        snprintf(why, whylen, "bad regex at offset %zu: %s", (size_t)off, (char *)msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* best effort */
    return re;
}

static bool valid_token(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 32 || c >= 127 || strchr("\"(),/:;<=>?@[\\]{}", c))
            return false;
    }
    return true;
}

static bool valid_value(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 32 && *s != '\t')
            return false;
    return true;
}

/* "host:port" endpoint text. */
/* "host:port" or "[v6]:port": a non-empty host of name/address characters
 * (brackets balanced, only around an IPv6 literal) and a decimal port. */
static int parse_endpoint(const char *text, gw_endpoint_conf *ep)
{
    const char *colon = strrchr(text, ':');
    if (!colon || colon == text)
        return WEFT_EINVAL;
    const char *ps = colon + 1;
    if (*ps < '0' || *ps > '9')
        return WEFT_EINVAL; /* no sign, no spaces */
    char *end;
    long port = strtol(ps, &end, 10);
    if (*end || port < 1 || port > 65535)
        return WEFT_EINVAL;
    size_t hl = (size_t)(colon - text);
    const char *h = text;
    bool bracketed = h[0] == '[';
    if (bracketed) {
        if (hl < 3 || h[hl - 1] != ']')
            return WEFT_EINVAL;
        h++;
        hl -= 2;
    }
    for (size_t i = 0; i < hl; i++) {
        char c = h[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '-' || c == '_' || (bracketed && (c == ':' || c == '%'));
        if (!ok)
            return WEFT_EINVAL;
    }
    ep->host = strndup(h, hl);
    ep->port = (uint16_t)port;
    ep->id = strdup(text);
    if (!ep->host || !ep->id)
        return WEFT_ENOMEM;
    return 0;
}

static int get_str(const weft_conf_node *m, const char *key, char **out, weft_conf_err *err)
{
    const char *s = NULL;
    if (weft_conf_string(m, key, &s, err) < 0)
        return WEFT_ECONFIG;
    if (s) {
        char *d = strdup(s);
        if (!d)
            return weft_conf_errorf(err, m, key, "out of memory"), WEFT_ENOMEM;
        free(*out);
        *out = d;
    }
    return 0;
}

/* Item i of a list of names or codes: a non-empty string. A null item
 * (`- ~`, `- null`, `-`) is an error at the item, not the text "~" or
 * "null"; so are mappings and sequences. */
static int seq_name(const weft_conf_node *seq, size_t i, const char **out, weft_conf_err *err)
{
    const weft_conf_node *it = weft_conf_seq_at(seq, i);
    if (weft_conf_text(it, out, err) < 0)
        return WEFT_ECONFIG;
    if (!**out)
        return weft_conf_errorf(err, it, NULL, "expected a non-empty string");
    return 0;
}

static int get_dur(const weft_conf_node *m, const char *key, uint32_t *out, weft_conf_err *err)
{
    int64_t v = *out;
    if (weft_conf_duration_ms(m, key, 0, 24LL * 3600 * 1000, &v, err) < 0)
        return WEFT_ECONFIG;
    *out = (uint32_t)v;
    return 0;
}

static int get_u32(const weft_conf_node *m, const char *key, int64_t min, int64_t max,
                   uint32_t *out, weft_conf_err *err)
{
    int64_t v = *out;
    if (weft_conf_int(m, key, min, max, &v, err) < 0)
        return WEFT_ECONFIG;
    *out = (uint32_t)v;
    return 0;
}

static int parse_cluster(const char *name, const weft_conf_node *n, gw_cluster_conf *cl,
                         weft_conf_err *err)
{
    int ret = 0;
    cl->name = strdup(name);
    cl->health.path = strdup("/health");
    if (!cl->name || !cl->health.path)
        NOMEM(n);
    cl->lb = WEFT_LB_P2C_EWMA;
    cl->panic_percent = 50;
    cl->connect_timeout_ms = 2000;
    cl->idle_timeout_ms = 30000;
    cl->max_idle = 64;
    cl->max_pending = 1024;
    cl->health.interval_ms = 5000;
    cl->health.timeout_ms = 1000;
    cl->health.healthy_threshold = 2;
    cl->health.unhealthy_threshold = 3;
    weft_outlier_opts_default(&cl->outlier);
    cl->outlier_enabled = true;
    weft_breaker_opts_default(&cl->breaker);
    cl->breaker_enabled = true;
    weft_adaptive_opts_default(&cl->adaptive_opts);

    if (weft_conf_kind(n) != WEFT_CONF_MAP)
        FAIL(n, NULL, "a cluster is a mapping (endpoints, lb, health_check, ...)");
    const weft_conf_node *eps = weft_conf_get(n, "endpoints");
    const weft_conf_node *dns = weft_conf_get(n, "dns");
    const weft_conf_node *disc = weft_conf_get(n, "discovery");
    if (!!eps + !!dns + !!disc > 1)
        FAIL(disc ? disc : dns, NULL, "give one of endpoints, dns, discovery");
    if (disc) {
        const char *url = NULL;
        if (weft_conf_string(disc, "registry", &url, err) < 0 ||
            (ret = get_str(disc, "service", &cl->disc_service, err)) < 0 ||
            (ret = get_str(disc, "zone", &cl->disc_zone, err)) < 0)
            goto fail;
        if (!url)
            FAIL(disc, "registry", "expected the registry's URL, http://HOST:PORT");
        if (regwatch_parse_url(url, &cl->disc_host, &cl->disc_port) < 0)
            FAIL(weft_conf_get(disc, "registry"), NULL, "expected http://HOST:PORT");
        if (!cl->disc_service || !cl->disc_service[0])
            FAIL(disc, "service", "missing the service name to discover");
        goto endpoints_done;
    }
    if (dns) {
        static const char *const types[] = {"a", "aaaa", "a_or_aaaa", "srv", NULL};
        int type = 2;
        int64_t port = 0;
        cl->dns_refresh_ms = 30000;
        if ((ret = get_str(dns, "name", &cl->dns_name, err)) < 0 ||
            weft_conf_enum(dns, "type", types, &type, err) < 0 ||
            weft_conf_int(dns, "port", 1, 65535, &port, err) < 0 ||
            get_dur(dns, "refresh", &cl->dns_refresh_ms, err) < 0 ||
            (ret = get_str(dns, "resolver", &cl->dns_resolver, err)) < 0)
            goto fail;
        if (!cl->dns_name || !cl->dns_name[0])
            FAIL(dns, "name", "missing the DNS name to resolve");
        cl->dns_srv = type == 3;
        cl->dns_family = type == 0 ? AF_INET : type == 1 ? AF_INET6 : AF_UNSPEC;
        if (!cl->dns_srv && port == 0)
            FAIL(dns, "port", "A/AAAA discovery needs the endpoints' port");
        cl->dns_port = (uint16_t)port;
        if (cl->dns_refresh_ms < 100)
            FAIL(weft_conf_get(dns, "refresh"), NULL, "must be at least 100ms");
        goto endpoints_done;
    }
    if (!eps || weft_conf_kind(eps) != WEFT_CONF_SEQ || weft_conf_seq_len(eps) == 0)
        FAIL(eps ? eps : n, eps ? NULL : "endpoints",
             "a cluster needs a non-empty list of endpoints (\"host:port\" or {address, weight}) "
             "or dns: {name, port, type}");
    /* neps only once eps exists: config_free walks eps[0..neps) */
    cl->eps = calloc(weft_conf_seq_len(eps), sizeof *cl->eps);
    if (!cl->eps)
        NOMEM(eps);
    cl->neps = weft_conf_seq_len(eps);
    for (size_t i = 0; i < cl->neps; i++) {
        const weft_conf_node *e = weft_conf_seq_at(eps, i);
        const char *addr = NULL;
        cl->eps[i].weight = 1;
        if (weft_conf_kind(e) == WEFT_CONF_SCALAR) {
            addr = weft_conf_scalar(e);
        } else if (weft_conf_kind(e) == WEFT_CONF_MAP) {
            if (weft_conf_string(e, "address", &addr, err) < 0 ||
                get_u32(e, "weight", 1, 1000, &cl->eps[i].weight, err) < 0)
                goto fail;
            if (!addr)
                FAIL(e, "address", "missing address (host:port)");
        } else {
            FAIL(e, NULL, "expected \"host:port\" or {address: host:port, weight: N}");
        }
        int erc = parse_endpoint(addr, &cl->eps[i]);
        if (erc == WEFT_ENOMEM)
            NOMEM(e);
        if (erc < 0)
            FAIL(e, NULL, "bad endpoint '%s' (want host:port with port 1-65535)", addr);
    }
endpoints_done:;
    const char *lb = NULL;
    if (weft_conf_string(n, "lb", &lb, err) < 0)
        goto fail;
    if (lb) {
        cl->lb = weft_lb_algo_from(lb);
        if (cl->lb < 0)
            FAIL(weft_conf_get(n, "lb"), NULL,
                 "unknown balancer '%s' (p2c_ewma, round_robin, weighted_round_robin, "
                 "least_request, random, ring_hash, maglev)",
                 lb);
    }
    const weft_conf_node *hash = weft_conf_get(n, "hash");
    if (hash) {
        bool src = false;
        const char *hdr = NULL, *cookie = NULL;
        if (weft_conf_bool(hash, "source_ip", &src, err) < 0 ||
            weft_conf_string(hash, "header", &hdr, err) < 0 ||
            weft_conf_string(hash, "cookie", &cookie, err) < 0)
            goto fail;
        /* one key only: with two, one of them would silently be ignored */
        if (src + !!hdr + !!cookie > 1)
            FAIL(hash, NULL,
                 "choose one of: source_ip: true, header: NAME, cookie: NAME (not several)");
        if (!src && !hdr && !cookie)
            FAIL(hash, NULL, "hash needs one of: source_ip: true, header: NAME, cookie: NAME");
        cl->hash_on = hdr ? GW_HASH_HEADER : cookie ? GW_HASH_COOKIE : GW_HASH_SOURCE_IP;
        if (hdr || cookie) {
            cl->hash_name = strdup(hdr ? hdr : cookie);
            if (!cl->hash_name)
                NOMEM(hash);
        }
    } else if (cl->lb == WEFT_LB_RING_HASH || cl->lb == WEFT_LB_MAGLEV) {
        cl->hash_on = GW_HASH_SOURCE_IP;
    }
    if (get_u32(n, "panic_threshold", 0, 100, &cl->panic_percent, err) < 0 ||
        get_dur(n, "connect_timeout", &cl->connect_timeout_ms, err) < 0 ||
        get_dur(n, "idle_timeout", &cl->idle_timeout_ms, err) < 0 ||
        get_u32(n, "max_idle", 0, 100000, &cl->max_idle, err) < 0 ||
        get_u32(n, "max_requests", 0, 10000000, &cl->max_requests, err) < 0 ||
        get_u32(n, "max_connections", 0, 1000000, &cl->max_connections, err) < 0 ||
        get_u32(n, "max_pending", 0, 1000000, &cl->max_pending, err) < 0)
        goto fail;
    const weft_conf_node *hc = weft_conf_get(n, "health_check");
    if (hc) {
        cl->health.enabled = true;
        bool en = true;
        if (weft_conf_bool(hc, "enabled", &en, err) < 0 ||
            weft_conf_bool(hc, "tcp", &cl->health.tcp, err) < 0 ||
            (ret = get_str(hc, "path", &cl->health.path, err)) < 0 ||
            get_dur(hc, "interval", &cl->health.interval_ms, err) < 0 ||
            get_dur(hc, "timeout", &cl->health.timeout_ms, err) < 0 ||
            get_u32(hc, "healthy_threshold", 1, 100, &cl->health.healthy_threshold, err) < 0 ||
            get_u32(hc, "unhealthy_threshold", 1, 100, &cl->health.unhealthy_threshold, err) < 0)
            goto fail;
        cl->health.enabled = en;
        if (cl->health.interval_ms < 10)
            FAIL(hc, "interval", "must be at least 10ms");
        if (cl->health.path[0] != '/')
            FAIL(hc, "path", "must start with /");
    }
    const weft_conf_node *od = weft_conf_get(n, "outlier_detection");
    if (od) {
        if (weft_conf_kind(od) == WEFT_CONF_SCALAR) {
            if (weft_conf_bool(n, "outlier_detection", &cl->outlier_enabled, err) < 0)
                goto fail;
        } else if (get_u32(od, "consecutive_5xx", 0, 1000, &cl->outlier.consecutive_5xx, err) < 0 ||
                   get_u32(od, "consecutive_gateway_errors", 0, 1000,
                           &cl->outlier.consecutive_gateway, err) < 0 ||
                   get_dur(od, "base_ejection_time", &cl->outlier.base_ejection_ms, err) < 0 ||
                   get_dur(od, "max_ejection_time", &cl->outlier.max_ejection_ms, err) < 0 ||
                   get_u32(od, "max_ejection_percent", 0, 100, &cl->outlier.max_ejection_percent,
                           err) < 0) {
            goto fail;
        }
    }
    const weft_conf_node *cb = weft_conf_get(n, "circuit_breaker");
    if (cb) {
        if (weft_conf_kind(cb) == WEFT_CONF_SCALAR) {
            if (weft_conf_bool(n, "circuit_breaker", &cl->breaker_enabled, err) < 0)
                goto fail;
        } else {
            int64_t slow = (int64_t)(cl->breaker.slow_call_us / 1000);
            if (get_dur(cb, "window", &cl->breaker.window_ms, err) < 0 ||
                get_u32(cb, "min_requests", 1, 1000000, &cl->breaker.min_requests, err) < 0 ||
                get_u32(cb, "error_percent", 1, 100, &cl->breaker.error_percent, err) < 0 ||
                get_dur(cb, "sleep_window", &cl->breaker.sleep_ms, err) < 0 ||
                get_u32(cb, "half_open_requests", 1, 1000, &cl->breaker.half_open_probes, err) < 0 ||
                weft_conf_duration_ms(cb, "slow_call", 0, 3600000, &slow, err) < 0)
                goto fail;
            cl->breaker.slow_call_us = (uint64_t)slow * 1000;
            if (cl->breaker.window_ms < 100)
                FAIL(cb, "window", "must be at least 100ms");
        }
    }
    const weft_conf_node *ac = weft_conf_get(n, "adaptive_concurrency");
    if (ac) {
        cl->adaptive = true;
        if (get_u32(ac, "initial_limit", 1, 100000, &cl->adaptive_opts.initial_limit, err) < 0 ||
            get_u32(ac, "min_limit", 1, 100000, &cl->adaptive_opts.min_limit, err) < 0 ||
            get_u32(ac, "max_limit", 1, 100000, &cl->adaptive_opts.max_limit, err) < 0)
            goto fail;
        /* the limiter would quietly raise max_limit to min_limit and clamp
         * initial_limit into the range: say so instead */
        const weft_adaptive_opts *ao = &cl->adaptive_opts;
        if (ao->min_limit > ao->max_limit)
            FAIL(ac, weft_conf_get(ac, "min_limit") ? "min_limit" : "max_limit",
                 "min_limit (%" PRIu32 ") is greater than max_limit (%" PRIu32 ")",
                 ao->min_limit, ao->max_limit);
        if (weft_conf_get(ac, "initial_limit") &&
            (ao->initial_limit < ao->min_limit || ao->initial_limit > ao->max_limit))
            FAIL(ac, "initial_limit",
                 "must be between min_limit (%" PRIu32 ") and max_limit (%" PRIu32 ")",
                 ao->min_limit, ao->max_limit);
    }
    return 0;
fail:
    return ret < 0 ? ret : WEFT_ECONFIG;
}

/* {Name: value | {regex: RE} | {present: true} | {absent: true}} */
static int parse_kv_map(const weft_conf_node *m, const char *what, gw_kv_match **out, size_t *nout,
                        bool header_names, weft_conf_err *err)
{
    int ret = 0;
    if (weft_conf_kind(m) != WEFT_CONF_MAP)
        FAIL(m, NULL, "%s is a mapping of name to value, {regex: ...}, {present: true} or "
                      "{absent: true}", what);
    size_t n = weft_conf_map_len(m);
    *out = calloc(n ? n : 1, sizeof **out);
    if (!*out)
        NOMEM(m);
    *nout = n;
    for (size_t i = 0; i < n; i++) {
        const char *key;
        const weft_conf_node *v = weft_conf_map_at(m, i, &key);
        gw_kv_match *k = &(*out)[i];
        k->name = strdup(key);
        if (!k->name)
            NOMEM(v);
        if (header_names && !valid_token(key))
            FAIL(v, key, "not a valid header name");
        if (weft_conf_kind(v) == WEFT_CONF_SCALAR) {
            const char *sv = NULL;
            if (weft_conf_string(m, key, &sv, err) < 0) /* null is an error */
                goto fail;
            k->value = strdup(sv);
            if (!k->value)
                NOMEM(v);
        } else {
            const char *re = NULL;
            bool present = false, absent = false;
            if (weft_conf_string(v, "regex", &re, err) < 0 ||
                weft_conf_bool(v, "present", &present, err) < 0 ||
                weft_conf_bool(v, "absent", &absent, err) < 0 ||
                (ret = get_str(v, "exact", &k->value, err)) < 0)
                goto fail;
            if (re) {
                char why[200];
                k->regex = compile_re(re, why, sizeof why);
                if (!k->regex)
                    FAIL(v, "regex", "%s", why);
            }
            k->absent = absent;
            if (!re && !present && !absent && !k->value)
                FAIL(v, NULL, "give exact, regex, present: true or absent: true");
        }
    }
    return 0;
fail:
    return ret < 0 ? ret : WEFT_ECONFIG;
}

static int parse_header_ops(const weft_conf_node *n, gw_header_ops *o, weft_conf_err *err)
{
    int ret = 0;
    static const char *const kinds[] = {"set", "add"};
    for (int k = 0; k < 2; k++) {
        const weft_conf_node *m = weft_conf_get(n, kinds[k]);
        if (!m)
            continue;
        if (weft_conf_kind(m) != WEFT_CONF_MAP)
            FAIL(m, kinds[k], "expected a mapping of header name to value");
        size_t cnt = weft_conf_map_len(m);
        gw_header_op *ops = calloc(cnt ? cnt : 1, sizeof *ops);
        if (!ops)
            NOMEM(m);
        if (k == 0) {
            o->set = ops;
            o->nset = cnt;
        } else {
            o->add = ops;
            o->nadd = cnt;
        }
        for (size_t i = 0; i < cnt; i++) {
            const char *key;
            const weft_conf_node *v = weft_conf_map_at(m, i, &key);
            const char *val = NULL;
            if (!valid_token(key))
                FAIL(v, key, "not a valid header name");
            /* typed read: a YAML null (~, null, empty) is an error, not the text "null" */
            if (weft_conf_string(m, key, &val, err) < 0)
                goto fail;
            if (!val || !valid_value(val))
                FAIL(v, key, "expected a header value without control characters");
            ops[i].name = strdup(key);
            ops[i].value = strdup(val);
            if (!ops[i].name || !ops[i].value)
                NOMEM(v);
        }
    }
    const weft_conf_node *rm = weft_conf_get(n, "remove");
    if (rm) {
        if (weft_conf_kind(rm) != WEFT_CONF_SEQ)
            FAIL(rm, "remove", "expected a list of header names");
        size_t cnt = weft_conf_seq_len(rm);
        o->remove = calloc(cnt ? cnt : 1, sizeof *o->remove);
        if (!o->remove)
            NOMEM(rm);
        o->nremove = cnt;
        for (size_t i = 0; i < o->nremove; i++) {
            const char *s;
            if (seq_name(rm, i, &s, err) < 0)
                goto fail;
            if (!valid_token(s))
                FAIL(weft_conf_seq_at(rm, i), NULL, "not a valid header name");
            o->remove[i] = strdup(s);
            if (!o->remove[i])
                NOMEM(weft_conf_seq_at(rm, i));
        }
    }
    return 0;
fail:
    return ret < 0 ? ret : WEFT_ECONFIG;
}

static int parse_retry(const weft_conf_node *n, gw_retry_conf *rc, weft_conf_err *err)
{
    if (get_u32(n, "attempts", 1, 10, &rc->attempts, err) < 0 ||
        weft_conf_bool(n, "all_methods", &rc->all_methods, err) < 0)
        goto fail;
    const weft_conf_node *on = weft_conf_get(n, "on");
    if (on) {
        if (weft_conf_kind(on) != WEFT_CONF_SEQ)
            FAIL(on, "on", "expected a list of conditions");
        rc->on = 0;
        static const char *const names[] = {"connect-failure", "reset", "5xx", "gateway-error",
                                            "retriable-status", "timeout"};
        for (size_t i = 0; i < weft_conf_seq_len(on); i++) {
            const char *s;
            int bit = -1;
            if (seq_name(on, i, &s, err) < 0)
                goto fail;
            for (int b = 0; b < 6; b++)
                if (strcmp(s, names[b]) == 0)
                    bit = b;
            if (bit < 0)
                FAIL(weft_conf_seq_at(on, i), NULL,
                     "unknown retry condition (connect-failure, reset, 5xx, gateway-error, "
                     "retriable-status, timeout)");
            rc->on |= 1u << bit;
        }
    }
    const weft_conf_node *st = weft_conf_get(n, "statuses");
    if (st) {
        if (weft_conf_kind(st) != WEFT_CONF_SEQ || weft_conf_seq_len(st) > 16)
            FAIL(st, "statuses", "expected a list of up to 16 status codes");
        rc->nstatuses = weft_conf_seq_len(st);
        for (size_t i = 0; i < rc->nstatuses; i++) {
            /* three plain digits: strtol also took " 500" and "+500" */
            const char *s;
            if (weft_conf_text(weft_conf_seq_at(st, i), &s, err) < 0)
                goto fail;
            if (strlen(s) != 3 || s[0] < '1' || s[0] > '5' || s[1] < '0' || s[1] > '9' ||
                s[2] < '0' || s[2] > '9')
                FAIL(weft_conf_seq_at(st, i), NULL, "expected a status code 100-599");
            rc->statuses[i] = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
        }
        rc->on |= GW_RETRY_STATUS;
    }
    const weft_conf_node *bo = weft_conf_get(n, "backoff");
    if (bo && (get_dur(bo, "base", &rc->backoff_base_ms, err) < 0 ||
               get_dur(bo, "max", &rc->backoff_max_ms, err) < 0))
        goto fail;
    /* the first delay is base and every delay is capped at max: base > max
     * would silently mean max for every retry */
    if (bo && rc->backoff_base_ms > rc->backoff_max_ms)
        FAIL(bo, weft_conf_get(bo, "base") ? "base" : "max",
             "base (%" PRIu32 "ms) is greater than max (%" PRIu32 "ms)", rc->backoff_base_ms,
             rc->backoff_max_ms);
    const weft_conf_node *bu = weft_conf_get(n, "budget");
    if (bu) {
        if (weft_conf_kind(bu) == WEFT_CONF_SCALAR) {
            if (weft_conf_bool(n, "budget", &rc->budget_enabled, err) < 0)
                goto fail;
        } else {
            uint32_t pct = (uint32_t)(rc->budget_percent * 100 + 0.5);
            if (get_u32(bu, "percent", 0, 100, &pct, err) < 0 ||
                get_u32(bu, "min_retries_per_sec", 0, 100000, &rc->budget_min_per_sec, err) < 0 ||
                get_dur(bu, "ttl", &rc->budget_ttl_ms, err) < 0)
                goto fail;
            rc->budget_percent = pct / 100.0;
            if (rc->budget_ttl_ms < 1000 || rc->budget_ttl_ms > 60000)
                FAIL(bu, "ttl", "must be between 1s and 60s");
        }
    }
    return 0;
fail:
    return WEFT_ECONFIG;
}

static int parse_split_item(const gw_config *c, const weft_conf_node *it, gw_split *sp,
                            weft_conf_err *err)
{
    int ret = 0;
    const char *cl = NULL;
    sp->weight = 1;
    if (weft_conf_string(it, "cluster", &cl, err) < 0 ||
        get_u32(it, "weight", 0, 1000000, &sp->weight, err) < 0)
        goto fail;
    if (!cl)
        FAIL(it, "cluster", "missing cluster");
    sp->cluster = gw_cluster_index(c, cl);
    if (sp->cluster < 0)
        FAIL(weft_conf_get(it, "cluster"), NULL, "no cluster named '%s'", cl);
    const weft_conf_node *h = weft_conf_get(it, "header");
    if (h) {
        gw_kv_match *km = NULL;
        size_t nk = 0;
        if ((ret = parse_kv_map(h, "header", &km, &nk, true, err)) < 0) {
            if (km) {
                for (size_t i = 0; i < nk; i++)
                    kv_free(&km[i]);
                free(km);
            }
            goto fail;
        }
        if (nk != 1) {
            for (size_t i = 0; i < nk; i++)
                kv_free(&km[i]);
            free(km);
            FAIL(h, "header", "give exactly one header");
        }
        sp->when_header = km;
    }
    const weft_conf_node *ck = weft_conf_get(it, "cookie");
    if (ck) {
        if ((ret = get_str(ck, "name", &sp->when_cookie, err)) < 0 ||
            (ret = get_str(ck, "value", &sp->when_cookie_value, err)) < 0)
            goto fail;
        if (!sp->when_cookie)
            FAIL(ck, "name", "missing cookie name");
    }
    return 0;
fail:
    return ret < 0 ? ret : WEFT_ECONFIG;
}

static int parse_ratelimit(const weft_conf_node *n, gw_route_conf *r, weft_conf_err *err)
{
    int ret = 0;
    gw_ratelimit_conf *rl = calloc(1, sizeof *rl);
    if (!rl)
        NOMEM(n);
    pthread_mutex_init(&rl->mu, NULL);
    r->ratelimit = rl;
    int64_t rps = 0;
    uint32_t burst = 0;
    const char *key = NULL;
    if (weft_conf_int(n, "requests_per_second", 1, 10000000, &rps, err) < 0 ||
        get_u32(n, "burst", 1, 100000000, &burst, err) < 0 ||
        weft_conf_string(n, "key", &key, err) < 0)
        goto fail;
    if (rps == 0)
        FAIL(n, "requests_per_second", "missing: the sustained rate per key");
    rl->rate = (double)rps;
    rl->burst = burst ? burst : (uint32_t)rps;
    if (!key || strcmp(key, "client_ip") == 0) {
        rl->key = GW_RL_CLIENT_IP;
    } else if (strcmp(key, "api_key") == 0) {
        rl->key = GW_RL_API_KEY;
    } else if (strncmp(key, "header:", 7) == 0 && valid_token(key + 7)) {
        rl->key = GW_RL_HEADER;
        rl->header = strdup(key + 7);
        if (!rl->header)
            NOMEM(weft_conf_get(n, "key"));
    } else {
        FAIL(weft_conf_get(n, "key"), NULL, "expected client_ip, api_key or header:NAME");
    }
    rl->rl = weft_ratelimit_new(rl->rate, rl->burst, 100000);
    if (!rl->rl)
        FAIL(n, NULL, "cannot create the rate limiter");
    return 0;
fail:
    return ret < 0 ? ret : WEFT_ECONFIG;
}

static int parse_auth(const char *cfgpath, const weft_conf_node *n, gw_route_conf *r,
                      weft_conf_err *err)
{
    int ret = 0;
    gw_auth_conf *a = calloc(1, sizeof *a);
    if (!a)
        NOMEM(n);
    r->auth = a;
    const weft_conf_node *ak = weft_conf_get(n, "api_keys");
    if (ak) {
        a->key_header = strdup("X-API-Key");
        if (!a->key_header)
            NOMEM(ak);
        if ((ret = get_str(ak, "header", &a->key_header, err)) < 0 ||
            (ret = get_str(ak, "query", &a->key_query, err)) < 0)
            goto fail;
        const weft_conf_node *keys = weft_conf_get(ak, "keys");
        if (!keys || weft_conf_kind(keys) != WEFT_CONF_SEQ || weft_conf_seq_len(keys) == 0)
            FAIL(keys ? keys : ak, keys ? NULL : "keys",
                 "expected a list of {name, hash: \"sha256:<hex>\"} (weft hash-key prints one)");
        a->keys = weft_apikeys_new();
        if (!a->keys)
            NOMEM(keys);
        for (size_t i = 0; i < weft_conf_seq_len(keys); i++) {
            const weft_conf_node *k = weft_conf_seq_at(keys, i);
            const char *name = NULL, *hash = NULL;
            if (weft_conf_string(k, "name", &name, err) < 0 ||
                weft_conf_string(k, "hash", &hash, err) < 0)
                goto fail;
            if (!name || !hash)
                FAIL(k, NULL, "each key needs name and hash");
            if (!name[0] || !valid_value(name))
                FAIL(weft_conf_get(k, "name"), NULL, "expected a non-empty consumer name");
            int rc = weft_apikeys_add(a->keys, name, hash);
            if (rc < 0)
                FAIL(weft_conf_get(k, "hash"), NULL,
                     rc == WEFT_EEXIST ? "duplicate key hash"
                                       : "expected \"sha256:\" followed by 64 hex digits");
        }
    }
    const weft_conf_node *jw = weft_conf_get(n, "jwt");
    if (jw) {
        const char *jwks = NULL;
        if (weft_conf_string(jw, "jwks", &jwks, err) < 0)
            goto fail;
        if (!jwks)
            FAIL(jw, "jwks", "missing: path to a JWKS file");
        char path[1024], why[512];
        if (jwks[0] != '/' && cfgpath && strrchr(cfgpath, '/')) {
            /* relative to the config file's directory */
            int dl = (int)(strrchr(cfgpath, '/') - cfgpath);
            snprintf(path, sizeof path, "%.*s/%s", dl, cfgpath, jwks);
        } else {
            snprintf(path, sizeof path, "%s", jwks);
        }
        if (weft_jwks_load_file(path, &a->jwks, why, sizeof why) < 0)
            FAIL(weft_conf_get(jw, "jwks"), NULL, "%s", why);
        uint32_t leeway = 0;
        if ((ret = get_str(jw, "issuer", &a->issuer, err)) < 0 || get_dur(jw, "leeway", &leeway, err) < 0)
            goto fail;
        /* whole seconds, rounded up: 500ms must not become no leeway at all */
        a->leeway_s = leeway / 1000 + (leeway % 1000 != 0);
        const weft_conf_node *aud = weft_conf_get(jw, "audiences");
        if (aud) {
            if (weft_conf_kind(aud) != WEFT_CONF_SEQ)
                FAIL(aud, "audiences", "expected a list of strings");
            size_t cnt = weft_conf_seq_len(aud);
            a->audiences = calloc(cnt ? cnt : 1, sizeof *a->audiences);
            if (!a->audiences)
                NOMEM(aud);
            a->naud = cnt;
            for (size_t i = 0; i < a->naud; i++) {
                const char *v;
                if (seq_name(aud, i, &v, err) < 0)
                    goto fail;
                a->audiences[i] = strdup(v);
                if (!a->audiences[i])
                    NOMEM(weft_conf_seq_at(aud, i));
            }
        }
        const weft_conf_node *alg = weft_conf_get(jw, "algorithms");
        if (alg) {
            if (weft_conf_kind(alg) != WEFT_CONF_SEQ)
                FAIL(alg, "algorithms", "expected a list like [RS256, ES256]");
            for (size_t i = 0; i < weft_conf_seq_len(alg); i++) {
                const char *v;
                if (seq_name(alg, i, &v, err) < 0)
                    goto fail;
                if (strcmp(v, "HS256") == 0)
                    a->algs |= WEFT_JWT_HS256;
                else if (strcmp(v, "RS256") == 0)
                    a->algs |= WEFT_JWT_RS256;
                else if (strcmp(v, "ES256") == 0)
                    a->algs |= WEFT_JWT_ES256;
                else
                    FAIL(weft_conf_seq_at(alg, i), NULL, "supported: HS256, RS256, ES256");
            }
        }
        static const char *const maps[] = {"forward_claims", "require_claims"};
        for (int m = 0; m < 2; m++) {
            const weft_conf_node *fc = weft_conf_get(jw, maps[m]);
            if (!fc)
                continue;
            if (weft_conf_kind(fc) != WEFT_CONF_MAP)
                FAIL(fc, maps[m], "expected a mapping of claim to %s",
                     m == 0 ? "header name" : "required value");
            size_t cnt = weft_conf_map_len(fc);
            gw_header_op *ops = calloc(cnt ? cnt : 1, sizeof *ops);
            if (!ops)
                NOMEM(fc);
            if (m == 0) {
                a->forward = ops;
                a->nforward = cnt;
            } else {
                a->require = ops;
                a->nrequire = cnt;
            }
            for (size_t i = 0; i < cnt; i++) {
                const char *claim;
                const weft_conf_node *v = weft_conf_map_at(fc, i, &claim);
                /* typed read: a null is an error, not the text "~" or "null" */
                const char *val;
                if (weft_conf_text(v, &val, err) < 0)
                    goto fail;
                if (m == 0 && !valid_token(val))
                    FAIL(v, claim, m == 0 ? "expected a header name" : "expected a value");
                ops[i].name = strdup(claim);
                ops[i].value = strdup(val);
                if (!ops[i].name || !ops[i].value)
                    NOMEM(v);
            }
        }
    }
    if (!a->keys && !a->jwks)
        FAIL(n, NULL, "auth needs api_keys, jwt, or both");
    return 0;
fail:
    return ret < 0 ? ret : WEFT_ECONFIG;
}

static int parse_aggregate(gw_config *c, const weft_conf_node *n, gw_route_conf *r,
                           weft_conf_err *err)
{
    int ret = 0;
    const weft_conf_node *parts = weft_conf_get(n, "parts");
    if (!parts || weft_conf_kind(parts) != WEFT_CONF_SEQ || weft_conf_seq_len(parts) == 0)
        FAIL(parts ? parts : n, parts ? NULL : "parts",
             "aggregate needs a list of parts {name, cluster, path, timeout, fallback}");
    r->parts = calloc(weft_conf_seq_len(parts), sizeof *r->parts);
    if (!r->parts)
        NOMEM(parts);
    r->nparts = weft_conf_seq_len(parts);
    for (size_t i = 0; i < r->nparts; i++) {
        const weft_conf_node *p = weft_conf_seq_at(parts, i);
        gw_agg_part *ap = &r->parts[i];
        const char *cl = NULL;
        ap->timeout_ms = 1000;
        if ((ret = get_str(p, "name", &ap->name, err)) < 0 || weft_conf_string(p, "cluster", &cl, err) < 0 ||
            (ret = get_str(p, "path", &ap->path, err)) < 0 || get_dur(p, "timeout", &ap->timeout_ms, err) < 0 ||
            (ret = get_str(p, "fallback", &ap->fallback_json, err)) < 0)
            goto fail;
        if (!ap->name || !cl || !ap->path || ap->path[0] != '/')
            FAIL(p, NULL, "each part needs name, cluster and a path starting with /");
        ap->cluster = gw_cluster_index(c, cl);
        if (ap->cluster < 0)
            FAIL(weft_conf_get(p, "cluster"), NULL, "no cluster named '%s'", cl);
        if (ap->fallback_json) {
            json_error_t je;
            json_t *j = json_loads(ap->fallback_json, JSON_DECODE_ANY, &je);
            if (!j)
                FAIL(weft_conf_get(p, "fallback"), NULL, "fallback must be JSON text: %s", je.text);
            json_decref(j);
        }
        for (size_t k = 0; k < i; k++)
            if (strcmp(r->parts[k].name, ap->name) == 0)
                FAIL(p, "name", "duplicate part name '%s'", ap->name);
    }
    return 0;
fail:
    return ret < 0 ? ret : WEFT_ECONFIG;
}

static int parse_route(gw_config *c, const weft_conf_node *n, gw_route_conf *r, size_t idx,
                       weft_conf_err *err)
{
    int ret = 0;
    char why[200];
    r->timeout_ms = 15000;
    r->retry.attempts = 2;
    r->retry.on = GW_RETRY_CONNECT | GW_RETRY_RESET;
    r->retry.backoff_base_ms = 25;
    r->retry.backoff_max_ms = 250;
    r->retry.budget_enabled = true;
    r->retry.budget_percent = 0.2;
    r->retry.budget_min_per_sec = 10;
    r->retry.budget_ttl_ms = 10000;
    if (weft_conf_kind(n) != WEFT_CONF_MAP)
        FAIL(n, NULL, "a route is a mapping (match, cluster | split | redirect | direct, ...)");
    if ((ret = get_str(n, "name", &r->name, err)) < 0)
        goto fail;
    if (!r->name) {
        char tmp[32];
        snprintf(tmp, sizeof tmp, "route%zu", idx);
        r->name = strdup(tmp);
        if (!r->name)
            NOMEM(n);
    }
    const weft_conf_node *m = weft_conf_get(n, "match");
    if (m) {
        const char *p = NULL;
        int kinds = 0;
        if ((ret = get_str(m, "host", &r->host, err)) < 0)
            goto fail;
        static const char *const pk[] = {"path", "prefix", "regex"};
        for (int k = 0; k < 3; k++) {
            const char *v = NULL;
            if (weft_conf_string(m, pk[k], &v, err) < 0)
                goto fail;
            if (!v)
                continue;
            kinds++;
            p = v;
            r->path_kind = k == 0 ? GW_PATH_EXACT : k == 1 ? GW_PATH_PREFIX : GW_PATH_REGEX;
            if (k < 2 && v[0] != '/')
                FAIL(weft_conf_get(m, pk[k]), NULL, "must start with /");
        }
        if (kinds > 1)
            FAIL(m, NULL, "give only one of path, prefix, regex");
        if (p) {
            r->path = strdup(p);
            if (!r->path)
                NOMEM(m);
            if (r->path_kind == GW_PATH_REGEX) {
                r->path_re = compile_re(p, why, sizeof why);
                if (!r->path_re)
                    FAIL(weft_conf_get(m, "regex"), NULL, "%s", why);
            }
        }
        const weft_conf_node *meth = weft_conf_get(m, "methods");
        if (meth) {
            if (weft_conf_kind(meth) != WEFT_CONF_SEQ)
                FAIL(meth, "methods", "expected a list like [GET, POST]");
            for (size_t i = 0; i < weft_conf_seq_len(meth); i++) {
                const char *s;
                if (seq_name(meth, i, &s, err) < 0)
                    goto fail;
                int mid = weft_http_method_from(weft_str_from(s));
                if (mid == WEFT_METHOD_UNKNOWN)
                    FAIL(weft_conf_seq_at(meth, i), NULL, "unknown method '%s'", s);
                r->methods |= WEFT_M(mid);
            }
        }
        const weft_conf_node *h = weft_conf_get(m, "headers");
        if (h && (ret = parse_kv_map(h, "headers", &r->headers, &r->nheaders, true, err)) < 0)
            goto fail;
        const weft_conf_node *q = weft_conf_get(m, "query");
        if (q && (ret = parse_kv_map(q, "query", &r->query, &r->nquery, false, err)) < 0)
            goto fail;
    }
    /* action: exactly one of cluster, split, redirect, direct */
    const weft_conf_node *acl = weft_conf_get(n, "cluster");
    const weft_conf_node *asp = weft_conf_get(n, "split");
    const weft_conf_node *ard = weft_conf_get(n, "redirect");
    const weft_conf_node *adr = weft_conf_get(n, "direct");
    const weft_conf_node *agg = weft_conf_get(n, "aggregate");
    int nact = !!acl + !!asp + !!ard + !!adr + !!agg;
    if (nact != 1)
        FAIL(n, NULL, "a route needs exactly one of: cluster, split, redirect, direct, aggregate");
    if (agg) {
        r->action = GW_ACT_AGGREGATE;
        if ((ret = parse_aggregate(c, agg, r, err)) < 0)
            goto fail;
    }
    if (acl) {
        const char *name = weft_conf_scalar(acl);
        int ci = name ? gw_cluster_index(c, name) : -1;
        if (ci < 0)
            FAIL(acl, NULL, "no cluster named '%s'", name ? name : "");
        r->splits = calloc(1, sizeof *r->splits);
        if (!r->splits)
            NOMEM(acl);
        r->nsplits = 1;
        r->splits[0].cluster = ci;
        r->splits[0].weight = 1;
        r->split_total = 1;
    } else if (asp) {
        if (weft_conf_kind(asp) != WEFT_CONF_SEQ || weft_conf_seq_len(asp) == 0)
            FAIL(asp, NULL, "split is a list of {cluster, weight[, header | cookie]}");
        r->splits = calloc(weft_conf_seq_len(asp), sizeof *r->splits);
        if (!r->splits)
            NOMEM(asp);
        r->nsplits = weft_conf_seq_len(asp);
        for (size_t i = 0; i < r->nsplits; i++) {
            if ((ret = parse_split_item(c, weft_conf_seq_at(asp, i), &r->splits[i], err)) < 0)
                goto fail;
            if (!r->splits[i].when_header && !r->splits[i].when_cookie) {
                if (r->splits[i].weight > UINT32_MAX - r->split_total)
                    FAIL(weft_conf_seq_at(asp, i), NULL,
                         "the weights add up to more than %" PRIu32, UINT32_MAX);
                r->split_total += r->splits[i].weight;
            }
        }
        if (r->split_total == 0)
            FAIL(asp, NULL, "at least one weighted (unconditional) split needs weight > 0");
    } else if (ard) {
        r->action = GW_ACT_REDIRECT;
        r->status = 302;
        uint32_t st = 302;
        if ((ret = get_str(ard, "location", &r->location, err)) < 0 ||
            get_u32(ard, "status", 301, 308, &st, err) < 0)
            goto fail;
        r->status = (int)st;
        if (st != 301 && st != 302 && st != 303 && st != 307 && st != 308)
            FAIL(ard, "status", "expected a redirect status: 301, 302, 303, 307 or 308");
        if (!r->location || !valid_value(r->location))
            FAIL(ard, "location", "missing or invalid location");
    } else if (adr) {
        r->action = GW_ACT_DIRECT;
        uint32_t st = 200;
        if (get_u32(adr, "status", 200, 599, &st, err) < 0 ||
            (ret = get_str(adr, "body", &r->body, err)) < 0 ||
            (ret = get_str(adr, "content_type", &r->content_type, err)) < 0)
            goto fail;
        r->status = (int)st;
        r->body_len = r->body ? strlen(r->body) : 0;
        if (!r->content_type && !(r->content_type = strdup("text/plain; charset=utf-8")))
            NOMEM(adr);
    }
    if ((ret = get_str(n, "strip_prefix", &r->strip_prefix, err)) < 0 ||
        (ret = get_str(n, "prefix_rewrite", &r->prefix_rewrite, err)) < 0 ||
        get_dur(n, "timeout", &r->timeout_ms, err) < 0 ||
        get_dur(n, "per_try_timeout", &r->per_try_timeout_ms, err) < 0)
        goto fail;
    if (r->timeout_ms == 0)
        FAIL(weft_conf_get(n, "timeout"), NULL, "must be greater than 0");
    const weft_conf_node *rq = weft_conf_get(n, "request_headers");
    if (rq && (ret = parse_header_ops(rq, &r->req_ops, err)) < 0)
        goto fail;
    const weft_conf_node *rs = weft_conf_get(n, "response_headers");
    if (rs && (ret = parse_header_ops(rs, &r->resp_ops, err)) < 0)
        goto fail;
    const weft_conf_node *rt = weft_conf_get(n, "retry");
    if (rt) {
        if (weft_conf_kind(rt) == WEFT_CONF_SCALAR) {
            bool on = true;
            if (weft_conf_bool(n, "retry", &on, err) < 0)
                goto fail;
            if (!on)
                r->retry.attempts = 1;
        } else if (parse_retry(rt, &r->retry, err) < 0) {
            goto fail;
        }
    }
    const weft_conf_node *rlc = weft_conf_get(n, "rate_limit");
    if (rlc && (ret = parse_ratelimit(rlc, r, err)) < 0)
        goto fail;
    const weft_conf_node *au = weft_conf_get(n, "auth");
    if (au && (ret = parse_auth(c->path, au, r, err)) < 0)
        goto fail;
    const weft_conf_node *ca = weft_conf_get(n, "cache");
    r->cache_ttl_ms = 60000; /* when the response gives no lifetime */
    if (ca) {
        if (weft_conf_kind(ca) == WEFT_CONF_SCALAR) {
            if (weft_conf_bool(n, "cache", &r->cache, err) < 0)
                goto fail;
        } else {
            r->cache = true;
            if (get_dur(ca, "ttl", &r->cache_ttl_ms, err) < 0 ||
                weft_conf_bool(ca, "authorized", &r->cache_auth, err) < 0)
                goto fail;
        }
    }
    r->compress_min = 256;
    const weft_conf_node *cz = weft_conf_get(n, "compress");
    if (cz) {
        if (weft_conf_kind(cz) == WEFT_CONF_SCALAR) {
            if (weft_conf_bool(n, "compress", &r->compress, err) < 0)
                goto fail;
        } else {
            r->compress = true;
            uint64_t mn = r->compress_min;
            if (weft_conf_size(cz, "min_size", 0, 1u << 30, &mn, err) < 0)
                goto fail;
            r->compress_min = (uint32_t)mn;
        }
    }
    const weft_conf_node *fb = weft_conf_get(n, "fallback");
    if (fb) {
        uint32_t st = 503;
        r->fallback = true;
        if (get_u32(fb, "status", 200, 599, &st, err) < 0 ||
            (ret = get_str(fb, "body", &r->fallback_body, err)) < 0 ||
            (ret = get_str(fb, "content_type", &r->fallback_type, err)) < 0)
            goto fail;
        r->fallback_status = (int)st;
        r->fallback_body_len = r->fallback_body ? strlen(r->fallback_body) : 0;
        if (!r->fallback_type && !(r->fallback_type = strdup("application/json")))
            NOMEM(fb);
    }
    return 0;
fail:
    return ret < 0 ? ret : WEFT_ECONFIG;
}

int gw_config_from_conf(const char *path, const weft_conf_node *root, gw_config **out,
                        weft_conf_err *err)
{
    int ret = 0;
    gw_config *c = calloc(1, sizeof *c);
    if (!c)
        return WEFT_ENOMEM;
    atomic_init(&c->refs, 1);
    c->path = dup_or_null(path);
    c->access_log = false;
    c->xff = true;
    c->via = true;
    c->deadline_header = strdup("X-Weft-Deadline-Ms");
    if ((path && !c->path) || !c->deadline_header)
        NOMEM(root);
    if (weft_conf_bool(root, "access_log", &c->access_log, err) < 0 ||
        weft_conf_bool(root, "forwarded_headers", &c->xff, err) < 0 ||
        weft_conf_bool(root, "via", &c->via, err) < 0 ||
        (ret = get_str(root, "deadline_header", &c->deadline_header, err)) < 0)
        goto fail;
    /* sent on every upstream request; the proxy formats it in a small buffer */
    if (c->deadline_header[0] &&
        (!valid_token(c->deadline_header) || strlen(c->deadline_header) > 64))
        FAIL(root, "deadline_header",
             "expected a header name of at most 64 characters, or \"\" for none");
    c->cache_max_bytes = 64u << 20;
    c->cache_policy = WEFT_CACHE_LRU;
    const weft_conf_node *cc = weft_conf_get(root, "cache");
    if (cc) {
        uint64_t mb = c->cache_max_bytes;
        static const char *const pol[] = {"lru", "lfu", NULL};
        if (weft_conf_size(cc, "max_bytes", 4096, (uint64_t)1 << 40, &mb, err) < 0 ||
            weft_conf_enum(cc, "policy", pol, &c->cache_policy, err) < 0)
            goto fail;
        c->cache_max_bytes = (size_t)mb;
    }
    const weft_conf_node *cls = weft_conf_get(root, "clusters");
    if (cls) {
        if (weft_conf_kind(cls) != WEFT_CONF_MAP)
            FAIL(cls, "clusters", "expected a mapping of cluster name to cluster");
        size_t cnt = weft_conf_map_len(cls);
        c->clusters = calloc(cnt ? cnt : 1, sizeof *c->clusters);
        if (!c->clusters)
            NOMEM(cls);
        c->nclusters = cnt;
        for (size_t i = 0; i < c->nclusters; i++) {
            const char *name;
            const weft_conf_node *cn = weft_conf_map_at(cls, i, &name);
            if ((ret = parse_cluster(name, cn, &c->clusters[i], err)) < 0)
                goto fail;
        }
    }
    const weft_conf_node *rts = weft_conf_get(root, "routes");
    if (!rts || weft_conf_kind(rts) != WEFT_CONF_SEQ || weft_conf_seq_len(rts) == 0)
        FAIL(rts ? rts : root, rts ? NULL : "routes", "the gateway needs a list of routes");
    c->routes = calloc(weft_conf_seq_len(rts), sizeof *c->routes);
    if (!c->routes)
        NOMEM(rts);
    c->nroutes = weft_conf_seq_len(rts);
    for (size_t i = 0; i < c->nroutes; i++)
        if ((ret = parse_route(c, weft_conf_seq_at(rts, i), &c->routes[i], i, err)) < 0)
            goto fail;
    *out = c;
    return 0;
fail:
    config_free(c);
    return ret < 0 ? ret : WEFT_ECONFIG;
}

int gw_config_load(const char *path, gw_config **out, weft_conf_err *err)
{
    weft_conf *doc;
    int rc = weft_conf_load_file(path, &doc, err);
    if (rc < 0)
        return WEFT_ECONFIG;
    rc = gw_config_from_conf(path, weft_conf_root(doc), out, err);
    weft_conf_free(doc);
    return rc;
}
