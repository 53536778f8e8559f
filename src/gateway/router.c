/*
 * router.c — first-match route selection over an immutable config.
 *
 * Routes are tried in config order and the first whose every condition
 * holds wins, as in Envoy and nginx `location` with explicit order. The
 * checks are ordered cheapest first (method mask, path prefix/exact, host)
 * so the common case of a few prefix routes costs a handful of compares;
 * regexes (pcre2, JIT-compiled at load) run only when the cheap checks pass.
 */
#include "gw.h"

#include <string.h>
#include <strings.h>

static bool host_matches(const char *pattern, weft_str host)
{
    /* drop :port */
    for (size_t i = host.n; i > 0; i--) {
        if (host.p[i - 1] == ':') {
            host.n = i - 1;
            break;
        }
        if (host.p[i - 1] < '0' || host.p[i - 1] > '9')
            break;
    }
    size_t pl = strlen(pattern);
    if (pattern[0] == '*' && pattern[1] == '.') {
        /* "*.example.com" matches "a.example.com", not "example.com" */
        size_t sl = pl - 1; /* ".example.com" */
        return host.n > sl && strncasecmp(host.p + host.n - sl, pattern + 1, sl) == 0;
    }
    return host.n == pl && strncasecmp(host.p, pattern, pl) == 0;
}

/* One match-data block per thread, reused: no allocation per request. */
static _Thread_local pcre2_match_data *tl_md;

static bool regex_matches(const pcre2_code *re, weft_str s)
{
    if (!tl_md)
        tl_md = pcre2_match_data_create(16, NULL);
    if (!tl_md)
        return false;
    int rc = pcre2_jit_match(re, (PCRE2_SPTR)s.p, s.n, 0, 0, tl_md, NULL);
    if (rc == PCRE2_ERROR_JIT_BADOPTION)
        rc = pcre2_match(re, (PCRE2_SPTR)s.p, s.n, 0, 0, tl_md, NULL);
    /* rc == 0 means the ovector was too small: still a match */
    return rc >= 0;
}

void gw_router_thread_done(void)
{
    pcre2_match_data_free(tl_md);
    tl_md = NULL;
}

bool gw_kv_matches(const gw_kv_match *m, weft_str value)
{
    if (m->absent)
        return value.p == NULL;
    if (value.p == NULL)
        return false;
    if (m->value)
        return value.n == strlen(m->value) && memcmp(value.p, m->value, value.n) == 0;
    if (m->regex)
        return regex_matches(m->regex, value);
    return true; /* presence */
}

bool gw_cookie_get(weft_str h, const char *name, weft_str *value)
{
    size_t nl = strlen(name);
    size_t i = 0;
    while (i < h.n) {
        while (i < h.n && (h.p[i] == ' ' || h.p[i] == ';'))
            i++;
        size_t start = i;
        while (i < h.n && h.p[i] != ';')
            i++;
        const char *eq = memchr(h.p + start, '=', i - start);
        if (eq && (size_t)(eq - (h.p + start)) == nl && memcmp(h.p + start, name, nl) == 0) {
            const char *v = eq + 1;
            size_t vl = (size_t)(h.p + i - v);
            while (vl && v[vl - 1] == ' ')
                vl--;
            if (vl >= 2 && v[0] == '"' && v[vl - 1] == '"') {
                v++;
                vl -= 2;
            }
            *value = (weft_str){v, vl};
            return true;
        }
    }
    return false;
}


int gw_route_match(const gw_config *c, const weft_http_req *req)
{
    int method = weft_http_req_method(req);
    weft_str path = weft_http_req_path(req);
    for (size_t i = 0; i < c->nroutes; i++) {
        const gw_route_conf *r = &c->routes[i];
        if (r->methods && !(r->methods & WEFT_M(method)))
            continue;
        switch (r->path_kind) {
        case GW_PATH_EXACT:
            if (path.n != strlen(r->path) || memcmp(path.p, r->path, path.n) != 0)
                continue;
            break;
        case GW_PATH_PREFIX: {
            size_t pl = strlen(r->path);
            if (path.n < pl || memcmp(path.p, r->path, pl) != 0)
                continue;
            break;
        }
        case GW_PATH_REGEX:
            if (!regex_matches(r->path_re, path))
                continue;
            break;
        default:
            break;
        }
        if (r->host && !host_matches(r->host, weft_http_req_host(req)))
            continue;
        bool ok = true;
        for (size_t k = 0; ok && k < r->nheaders; k++)
            ok = gw_kv_matches(&r->headers[k],
                               weft_http_req_header(req, weft_str_from(r->headers[k].name)));
        for (size_t k = 0; ok && k < r->nquery; k++) {
            weft_str v = WEFT_STR_NULL;
            if (!weft_http_req_query_param(req, r->query[k].name, &v))
                v = WEFT_STR_NULL;
            else if (!v.p)
                v.p = "";
            ok = gw_kv_matches(&r->query[k], v);
        }
        if (ok)
            return (int)i;
    }
    return -1;
}
