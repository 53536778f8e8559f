/*
 * eureka.c — Eureka-compatible views, registration translation and the
 * XML that Eureka's wire format needs (see eureka.h).
 *
 * Design. Eureka clients (the Netflix and Spring Cloud clients, Prometheus
 * eureka_sd_configs) speak InstanceInfo documents; this file maps them onto
 * the native model instead of keeping a second one, as consul.c does for
 * Consul. One document model serves both encodings: views are built as
 * JSON trees in Eureka's own JSON convention ({"$": 8080, "@enabled":
 * "true"} for an element with an attribute) and written either with
 * jansson or by a generic JSON-to-XML writer; registrations in XML are read
 * into the same convention and translated by the same code as JSON ones.
 * XML is what Eureka answers unless the Accept header mentions "json", and
 * what Prometheus parses (it sends no Accept header).
 *
 * Application names. Eureka upper-cases them; the registry keeps service
 * names as given. An Eureka registration joins the service that already
 * holds the instance, else one whose name matches case-insensitively, else
 * creates the lower-cased name (so "MYAPP" and the DNS name myapp.service
 * agree). Views show services upper-cased, grouping names that differ only
 * in case into one application.
 *
 * Fields the native model has no place for (hostName when it differs from
 * the address, VIP addresses, page URLs, the secure port) are kept in the
 * instance's meta under "eureka."-prefixed keys, only when they carry
 * information, and left out of Eureka's metadata again on the way back.
 * An instance reads as UP only while healthy in the native sense (UP,
 * leased, check passing); otherwise DOWN, or its own status.
 */
#include "eureka.h"

#include "http/http_int.h"
#include "weft/buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define K_HOST "eureka.hostName"
#define K_VIP "eureka.vipAddress"
#define K_SVIP "eureka.secureVipAddress"
#define K_HOME "eureka.homePageUrl"
#define K_STATUSPAGE "eureka.statusPageUrl"
#define K_HEALTH "eureka.healthCheckUrl"
#define K_SPORT "eureka.securePort"

static const char *const reserved[] = {K_HOST,       K_VIP,    K_SVIP, K_HOME,
                                       K_STATUSPAGE, K_HEALTH, K_SPORT, NULL};

#define OUT_MAX (64u << 20) /* cap on one rendered answer */
#define XML_DEPTH 32

static bool is_reserved(const char *k)
{
    for (size_t i = 0; reserved[i]; i++)
        if (strcmp(k, reserved[i]) == 0)
            return true;
    return false;
}

static const char *meta_str(const reg_instance *in, const char *key)
{
    json_t *v = in->meta ? json_object_get(in->meta, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static void upper(const char *s, char *out, size_t n)
{
    size_t i = 0;
    for (; s[i] && i + 1 < n; i++)
        out[i] = (char)(s[i] >= 'a' && s[i] <= 'z' ? s[i] - 32 : s[i]);
    out[i] = 0;
}

static void home_url(const char *host, unsigned port, char *buf, size_t n)
{
    char hp[300];
    weft_http_join_hostport(host, port, hp, sizeof hp);
    snprintf(buf, n, "http://%s/", hp);
}

int reg_eureka_status(const char *s)
{
    if (s && strcmp(s, "UNKNOWN") == 0)
        return REG_STARTING;
    return reg_status_from(s);
}

/* The status Eureka clients see: UP only while healthy. */
static int status_out(const reg_instance *in, uint64_t now)
{
    return in->status == REG_UP && !reg_instance_healthy(in, now) ? REG_DOWN : in->status;
}

const char *reg_eureka_locate(const reg_store *s, const char *app, const char *id)
{
    for (size_t i = 0; i < reg_service_count(s); i++) {
        size_t n;
        const char *name = reg_service_at(s, i, &n);
        if (n && (!app || strcasecmp(name, app) == 0) && reg_find(s, name, id))
            return name;
    }
    return NULL;
}

/* ---- views ---- */

static json_t *instance_json(const reg_instance *in, const char *app, bool xml, uint64_t now)
{
    const char *host = meta_str(in, K_HOST), *vip = meta_str(in, K_VIP),
               *svip = meta_str(in, K_SVIP), *home = meta_str(in, K_HOME),
               *spage = meta_str(in, K_STATUSPAGE), *health = meta_str(in, K_HEALTH),
               *sp = meta_str(in, K_SPORT);
    if (!host)
        host = in->address;
    long sport = sp ? strtol(sp, NULL, 10) : 0;
    if (sport < 1 || sport > 65535)
        sport = 0;
    char homebuf[600], healthbuf[1400];
    if (!home) {
        home_url(host, in->port, homebuf, sizeof homebuf);
        home = homebuf;
    }
    if (!health && in->check && in->check->kind == REG_CHECK_HTTP) {
        /* a native HTTP check is the instance's health check URL */
        if (in->check->target[0] == '/') {
            char hp[300];
            weft_http_join_hostport(in->address, in->port, hp, sizeof hp);
            snprintf(healthbuf, sizeof healthbuf, "http://%s%s", hp, in->check->target);
        } else {
            snprintf(healthbuf, sizeof healthbuf, "%s", in->check->target);
        }
        health = healthbuf;
    }
    json_t *meta = json_object();
    const char *k;
    json_t *v;
    json_object_foreach(in->meta, k, v) if (!is_reserved(k)) json_object_set(meta, k, v);
    if (json_object_size(meta) == 0) /* as Eureka writes an empty map */
        json_object_set_new(meta, "@class", json_string("java.util.Collections$EmptyMap"));
    int st = status_out(in, now);
    json_t *o = json_pack(
        "{s:s, s:s, s:s, s:s, s:s, s:s, s:{s:i, s:s}, s:{s:i, s:s}, s:i, s:{s:s, s:s},"
        " s:{s:i, s:I, s:i, s:i, s:i, s:i}, s:o, s:s}",
        "instanceId", in->id, "hostName", host, "app", app, "ipAddr", in->address, "status",
        reg_status_name(st), xml ? "overriddenstatus" : "overriddenStatus",
        in->status == REG_OUT_OF_SERVICE ? "OUT_OF_SERVICE" : "UNKNOWN", "port", "$",
        (int)in->port, "@enabled", "true", "securePort", "$", sport ? (int)sport : 443,
        "@enabled", sport ? "true" : "false", "countryId", 1, "dataCenterInfo", "@class",
        "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name", "MyOwn", "leaseInfo",
        "renewalIntervalInSecs", 30, "durationInSecs", (json_int_t)((in->ttl_ms + 999) / 1000),
        "registrationTimestamp", 0, "lastRenewalTimestamp", 0, "evictionTimestamp", 0,
        "serviceUpTimestamp", 0, "metadata", meta, "homePageUrl", home);
    if (!o)
        return NULL;
    if (spage)
        json_object_set_new(o, "statusPageUrl", json_string(spage));
    if (health)
        json_object_set_new(o, "healthCheckUrl", json_string(health));
    json_object_set_new(o, "vipAddress", json_string(vip ? vip : in->service));
    json_object_set_new(o, "secureVipAddress", json_string(svip ? svip : in->service));
    json_object_set_new(o, "isCoordinatingDiscoveryServer", json_string("false"));
    json_object_set_new(o, "lastUpdatedTimestamp", json_string("0"));
    json_object_set_new(o, "lastDirtyTimestamp", json_string("0"));
    json_object_set_new(o, "actionType", json_string("ADDED"));
    return o;
}

static bool vip_match(const reg_instance *in, int view, const char *vip)
{
    if (view != REG_EUREKA_VIP && view != REG_EUREKA_SVIP)
        return true;
    const char *v = meta_str(in, view == REG_EUREKA_VIP ? K_VIP : K_SVIP);
    return strcasecmp(v ? v : in->service, vip) == 0;
}

/* Counts per status, for Eureka's reconcile hash code. */
typedef struct tally {
    size_t n[4]; /* indexed by enum reg_status */
} tally;

/* One application: the instances of services svcs[0..n) (names equal but
 * for case). NULL if none passes the filter. */
static json_t *app_json(const reg_store *s, const char *const *svcs, size_t n, int view,
                        const char *vip, bool xml, uint64_t now, tally *t)
{
    char app[256];
    upper(svcs[0], app, sizeof app);
    json_t *insts = json_array();
    for (size_t k = 0; k < n; k++) {
        const reg_instance **v;
        size_t ni = reg_instances(s, svcs[k], &v);
        for (size_t i = 0; i < ni; i++) {
            if (!vip_match(v[i], view, vip))
                continue;
            json_array_append_new(insts, instance_json(v[i], app, xml, now));
            t->n[status_out(v[i], now)]++;
        }
    }
    if (json_array_size(insts) == 0) {
        json_decref(insts);
        return NULL;
    }
    return json_pack("{s:s, s:o}", "name", app, "instance", insts);
}

static int by_name(const void *a, const void *b)
{
    return strcasecmp(*(const char *const *)a, *(const char *const *)b);
}

/* Eureka's apps__hashcode: "STATUS_count_" for each status present, in
 * alphabetical order of the names. */
static void hashcode(const tally *t, char *buf, size_t n)
{
    static const int order[] = {REG_DOWN, REG_OUT_OF_SERVICE, REG_STARTING, REG_UP};
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < 4; i++) {
        if (!t->n[order[i]])
            continue;
        int w = snprintf(buf + used, n - used, "%s_%zu_", reg_status_name(order[i]),
                         t->n[order[i]]);
        if (w < 0 || (size_t)w >= n - used)
            return;
        used += (size_t)w;
    }
}

static json_t *apps_doc(const reg_store *s, int view, const char *name, bool xml, uint64_t now)
{
    size_t nsvc = reg_service_count(s), m = 0;
    const char **names = malloc((nsvc ? nsvc : 1) * sizeof *names);
    if (!names)
        return NULL;
    for (size_t i = 0; i < nsvc; i++) {
        size_t n;
        const char *svc = reg_service_at(s, i, &n);
        if (n && (view != REG_EUREKA_APP || strcasecmp(svc, name) == 0))
            names[m++] = svc;
    }
    qsort(names, m, sizeof *names, by_name);
    tally t = {{0}};
    json_t *apps = json_array();
    for (size_t i = 0, j; i < m; i = j) {
        for (j = i + 1; j < m && strcasecmp(names[i], names[j]) == 0; j++)
            ;
        json_t *a = app_json(s, names + i, j - i, view, name, xml, now, &t);
        if (a)
            json_array_append_new(apps, a);
    }
    free(names);
    if (view != REG_EUREKA_APPS && json_array_size(apps) == 0) {
        json_decref(apps);
        return json_null(); /* not found */
    }
    if (view == REG_EUREKA_APP) {
        json_t *a = json_incref(json_array_get(apps, 0));
        json_decref(apps);
        return json_pack("{s:o}", "application", a);
    }
    char hash[128], rev[24];
    hashcode(&t, hash, sizeof hash);
    snprintf(rev, sizeof rev, "%llu", (unsigned long long)reg_revision(s));
    return json_pack("{s:{s:s, s:s, s:o}}", "applications", "versions__delta", rev,
                     "apps__hashcode", hash, "application", apps);
}

/* ---- XML writer: Eureka's JSON convention back to elements ---- */

static bool xml_name_ok(const char *k)
{
    if (!((*k >= 'a' && *k <= 'z') || (*k >= 'A' && *k <= 'Z') || *k == '_'))
        return false;
    for (const char *p = k + 1; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-' || *p == '.'))
            return false;
    return true;
}

static int put(weft_buf *b, const char *s) { return weft_buf_append(b, s, strlen(s)); }

/* Escaped character data; characters XML 1.0 cannot carry become '?'. */
static int put_text(weft_buf *b, const char *s, bool attr)
{
    int rc = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p && rc == 0; p++) {
        const char *rep = NULL;
        char one[8];
        if (*p == '&')
            rep = "&amp;";
        else if (*p == '<')
            rep = "&lt;";
        else if (*p == '>')
            rep = "&gt;";
        else if (attr && *p == '"')
            rep = "&quot;";
        else if (attr && (*p == '\t' || *p == '\n' || *p == '\r')) {
            snprintf(one, sizeof one, "&#%d;", *p);
            rep = one;
        } else if (*p < 0x20 && *p != '\t' && *p != '\n' && *p != '\r')
            rep = "?";
        else if (p[0] == 0xEF && p[1] == 0xBF && (p[2] == 0xBE || p[2] == 0xBF)) {
            rep = "?"; /* U+FFFE, U+FFFF */
            p += 2;
        }
        rc = rep ? put(b, rep) : weft_buf_append(b, p, 1);
    }
    return rc;
}

static int put_scalar(weft_buf *b, json_t *v, bool attr)
{
    char num[40];
    if (json_is_string(v))
        return put_text(b, json_string_value(v), attr);
    if (json_is_integer(v))
        snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        snprintf(num, sizeof num, "%.17g", json_real_value(v));
    else if (json_is_boolean(v))
        snprintf(num, sizeof num, "%s", json_is_true(v) ? "true" : "false");
    else
        return 0;
    return put(b, num);
}

/* One element (an array: one per item). Keys that are not XML names (odd
 * metadata keys) are left out: Eureka's XML cannot carry them. */
static int put_elem(weft_buf *b, const char *name, json_t *v, int depth)
{
    if (!xml_name_ok(name) || depth > XML_DEPTH)
        return 0;
    int rc = 0;
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) if ((rc = put_elem(b, name, e, depth + 1)) < 0) return rc;
        return 0;
    }
    if ((rc = put(b, "<")) < 0 || (rc = put(b, name)) < 0)
        return rc;
    const char *k;
    json_t *e;
    bool content = !json_is_object(v) && !json_is_null(v);
    if (json_is_object(v)) {
        json_object_foreach(v, k, e) {
            if (k[0] != '@') {
                content = true;
                continue;
            }
            if (!xml_name_ok(k + 1) || json_is_object(e) || json_is_array(e))
                continue;
            if ((rc = put(b, " ")) < 0 || (rc = put(b, k + 1)) < 0 || (rc = put(b, "=\"")) < 0 ||
                (rc = put_scalar(b, e, true)) < 0 || (rc = put(b, "\"")) < 0)
                return rc;
        }
    }
    if (!content)
        return put(b, "/>");
    if ((rc = put(b, ">")) < 0)
        return rc;
    if (json_is_object(v)) {
        json_object_foreach(v, k, e) {
            if (strcmp(k, "$") == 0)
                rc = put_scalar(b, e, false);
            else if (k[0] != '@')
                rc = put_elem(b, k, e, depth + 1);
            if (rc < 0)
                return rc;
        }
    } else if ((rc = put_scalar(b, v, false)) < 0) {
        return rc;
    }
    if ((rc = put(b, "</")) < 0 || (rc = put(b, name)) < 0)
        return rc;
    return put(b, ">");
}

/* The document {"root": value} as XML, NUL-terminated. */
static int xml_dump(json_t *doc, char **out, size_t *len)
{
    weft_buf b;
    weft_buf_init(&b, OUT_MAX);
    const char *k;
    json_t *v;
    int rc = put(&b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    json_object_foreach(doc, k, v) if (rc == 0) rc = put_elem(&b, k, v, 0);
    if (rc == 0)
        rc = weft_buf_append(&b, "\n", 1); /* the NUL goes after it */
    if (rc == 0)
        rc = weft_buf_reserve(&b, 1);
    if (rc < 0) {
        weft_buf_release(&b);
        return WEFT_ENOMEM;
    }
    b.data[b.len] = 0;
    *out = b.data;
    *len = b.len;
    return 0;
}

int reg_eureka_render(const reg_store *s, int view, const char *name, const char *id, bool json,
                      uint64_t now_ms, char **out, size_t *len)
{
    json_t *doc;
    *out = NULL;
    *len = 0;
    if (view == REG_EUREKA_INSTANCE) {
        const char *svc = reg_eureka_locate(s, name, id);
        if (!svc)
            return WEFT_ENOTFOUND;
        char app[256];
        upper(svc, app, sizeof app);
        doc = json_pack("{s:o}", "instance", instance_json(reg_find(s, svc, id), app, !json, now_ms));
    } else {
        doc = apps_doc(s, view, name, !json, now_ms);
    }
    if (json_is_null(doc))
        return WEFT_ENOTFOUND;
    if (!doc)
        return WEFT_ENOMEM;
    int rc = 0;
    if (json) {
        *out = json_dumps(doc, JSON_COMPACT);
        *len = *out ? strlen(*out) : 0;
        rc = *out ? 0 : WEFT_ENOMEM;
    } else {
        rc = xml_dump(doc, out, len);
    }
    json_decref(doc);
    return rc;
}

/* ---- XML reader ----
 *
 * Enough XML for InstanceInfo documents from real clients: a declaration,
 * comments and processing instructions (skipped), elements, attributes,
 * character data with the five predefined entities and numeric character
 * references, CDATA sections. A DOCTYPE is refused (no entity expansion to
 * attack), and so are NUL bytes and non-ASCII names. Depth is bounded;
 * the body is bounded by the server's request limit. */

typedef struct xreader {
    const char *p, *end;
    char *why;
    size_t whylen;
} xreader;

static int xfail(xreader *x, const char *msg)
{
    snprintf(x->why, x->whylen, "invalid XML: %s", msg);
    return WEFT_EINVAL;
}

static bool xat(const xreader *x, const char *lit)
{
    size_t n = strlen(lit);
    return (size_t)(x->end - x->p) >= n && memcmp(x->p, lit, n) == 0;
}

static void xspace(xreader *x)
{
    while (x->p < x->end && (*x->p == ' ' || *x->p == '\t' || *x->p == '\n' || *x->p == '\r'))
        x->p++;
}

/* Skip past the next `lit`; false if it never comes. */
static bool xskip_past(xreader *x, const char *lit)
{
    size_t n = strlen(lit);
    for (; (size_t)(x->end - x->p) >= n; x->p++)
        if (memcmp(x->p, lit, n) == 0) {
            x->p += n;
            return true;
        }
    return false;
}

/* Comments and processing instructions (and the declaration). */
static int xmisc(xreader *x)
{
    for (;;) {
        xspace(x);
        if (xat(x, "<?")) {
            if (!xskip_past(x, "?>"))
                return xfail(x, "unterminated processing instruction");
        } else if (xat(x, "<!--")) {
            if (!xskip_past(x, "-->"))
                return xfail(x, "unterminated comment");
        } else if (xat(x, "<!")) {
            return xfail(x, "DTDs are not supported");
        } else {
            return 0;
        }
    }
}

static bool name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':'; }
static bool name_char(char c) { return name_start(c) || (c >= '0' && c <= '9') || c == '-' || c == '.'; }

static int xname(xreader *x, char *buf, size_t n)
{
    const char *s = x->p;
    if (x->p >= x->end || !name_start(*x->p))
        return xfail(x, "expected a name");
    while (x->p < x->end && name_char(*x->p))
        x->p++;
    if ((size_t)(x->p - s) >= n)
        return xfail(x, "name too long");
    memcpy(buf, s, (size_t)(x->p - s));
    buf[x->p - s] = 0;
    return 0;
}

static int utf8(weft_buf *b, unsigned long c)
{
    char u[4];
    size_t n;
    if (c < 0x80) {
        u[0] = (char)c;
        n = 1;
    } else if (c < 0x800) {
        u[0] = (char)(0xC0 | (c >> 6));
        u[1] = (char)(0x80 | (c & 0x3F));
        n = 2;
    } else if (c < 0x10000) {
        u[0] = (char)(0xE0 | (c >> 12));
        u[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        u[2] = (char)(0x80 | (c & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (c >> 18));
        u[1] = (char)(0x80 | ((c >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((c >> 6) & 0x3F));
        u[3] = (char)(0x80 | (c & 0x3F));
        n = 4;
    }
    return weft_buf_append(b, u, n);
}

/* An entity reference at x->p ('&'), decoded into b. */
static int xentity(xreader *x, weft_buf *b)
{
    static const struct {
        const char *name;
        char c;
    } named[] = {{"&lt;", '<'}, {"&gt;", '>'}, {"&amp;", '&'}, {"&quot;", '"'}, {"&apos;", '\''}};
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
        if (xat(x, named[i].name)) {
            x->p += strlen(named[i].name);
            return weft_buf_append(b, &named[i].c, 1);
        }
    if (!xat(x, "&#"))
        return xfail(x, "unknown entity");
    x->p += 2;
    int base = 10;
    if (x->p < x->end && *x->p == 'x') {
        base = 16;
        x->p++;
    }
    unsigned long c = 0;
    int digits = 0;
    for (; x->p < x->end && *x->p != ';'; x->p++, digits++) {
        char d = *x->p;
        int v = d >= '0' && d <= '9' ? d - '0'
                : base == 16 && d >= 'a' && d <= 'f' ? d - 'a' + 10
                : base == 16 && d >= 'A' && d <= 'F' ? d - 'A' + 10
                                                     : -1;
        if (v < 0 || digits > 7)
            return xfail(x, "bad character reference");
        c = c * (unsigned long)base + (unsigned long)v;
    }
    if (x->p >= x->end || digits == 0 || c == 0 || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return xfail(x, "bad character reference");
    x->p++;
    return utf8(b, c);
}

static int xattr_value(xreader *x, weft_buf *b)
{
    if (x->p >= x->end || (*x->p != '"' && *x->p != '\''))
        return xfail(x, "expected a quoted attribute value");
    char q = *x->p++;
    while (x->p < x->end && *x->p != q) {
        int rc;
        if (*x->p == '<')
            return xfail(x, "'<' in an attribute value");
        if (*x->p == '&')
            rc = xentity(x, b);
        else
            rc = weft_buf_append(b, x->p++, 1);
        if (rc < 0)
            return rc;
    }
    if (x->p >= x->end)
        return xfail(x, "unterminated attribute value");
    x->p++;
    return 0;
}

/* A string from the buffer; false if it is not UTF-8. */
static json_t *bufstr(weft_buf *b) { return json_stringn(b->data ? b->data : "", b->len); }

/* Add a child under its name: a second child of the same name makes an array. */
static void add_child(json_t *o, const char *name, json_t *v)
{
    json_t *old = json_object_get(o, name);
    if (!old) {
        json_object_set_new(o, name, v);
    } else if (json_is_array(old)) {
        json_array_append_new(old, v);
    } else {
        json_t *a = json_pack("[O, o]", old, v);
        json_object_set_new(o, name, a);
    }
}

static bool blank(const weft_buf *b)
{
    for (size_t i = 0; i < b->len; i++)
        if (b->data[i] != ' ' && b->data[i] != '\t' && b->data[i] != '\n' && b->data[i] != '\r')
            return false;
    return true;
}

/* An element at x->p ('<' name ...). */
static int xelement(xreader *x, int depth, char *name, size_t namelen, json_t **out)
{
    *out = NULL;
    if (depth > XML_DEPTH)
        return xfail(x, "nested too deeply");
    x->p++; /* '<' */
    int rc = xname(x, name, namelen);
    if (rc < 0)
        return rc;
    json_t *o = json_object(), *v;
    weft_buf text;
    weft_buf_init(&text, OUT_MAX);
    bool children = false;
    char key[132];
    for (;;) { /* attributes */
        xspace(x);
        if (x->p >= x->end) {
            rc = xfail(x, "unterminated start tag");
            goto fail;
        }
        if (*x->p == '>' || xat(x, "/>"))
            break;
        key[0] = '@';
        if ((rc = xname(x, key + 1, sizeof key - 1)) < 0)
            goto fail;
        xspace(x);
        if (x->p >= x->end || *x->p != '=') {
            rc = xfail(x, "expected '=' after an attribute name");
            goto fail;
        }
        x->p++;
        xspace(x);
        weft_buf_clear(&text);
        if ((rc = xattr_value(x, &text)) < 0)
            goto fail;
        if (json_object_get(o, key)) {
            rc = xfail(x, "duplicate attribute");
            goto fail;
        }
        if (!(v = bufstr(&text))) {
            rc = xfail(x, "attribute value is not UTF-8");
            goto fail;
        }
        json_object_set_new(o, key, v);
    }
    weft_buf_clear(&text);
    if (*x->p == '/') {
        x->p += 2;
        goto done;
    }
    x->p++;
    for (;;) { /* content */
        if (x->p >= x->end) {
            rc = xfail(x, "unterminated element");
            goto fail;
        }
        if (*x->p == '&') {
            if ((rc = xentity(x, &text)) < 0)
                goto fail;
        } else if (*x->p != '<') {
            const char *s = x->p;
            while (x->p < x->end && *x->p != '<' && *x->p != '&')
                x->p++;
            if ((rc = weft_buf_append(&text, s, (size_t)(x->p - s))) < 0)
                goto fail;
        } else if (xat(x, "<![CDATA[")) {
            const char *s = x->p += 9;
            if (!xskip_past(x, "]]>")) {
                rc = xfail(x, "unterminated CDATA section");
                goto fail;
            }
            if ((rc = weft_buf_append(&text, s, (size_t)(x->p - 3 - s))) < 0)
                goto fail;
        } else if (xat(x, "<!--")) {
            if (!xskip_past(x, "-->")) {
                rc = xfail(x, "unterminated comment");
                goto fail;
            }
        } else if (xat(x, "<?")) {
            if (!xskip_past(x, "?>")) {
                rc = xfail(x, "unterminated processing instruction");
                goto fail;
            }
        } else if (xat(x, "</")) {
            char end[128];
            x->p += 2;
            if ((rc = xname(x, end, sizeof end)) < 0)
                goto fail;
            xspace(x);
            if (strcmp(end, name) != 0 || x->p >= x->end || *x->p != '>') {
                rc = xfail(x, "mismatched end tag");
                goto fail;
            }
            x->p++;
            break;
        } else {
            char child[128];
            json_t *cv;
            if ((rc = xelement(x, depth + 1, child, sizeof child, &cv)) < 0)
                goto fail;
            add_child(o, child, cv);
            children = true;
        }
    }
done:
    if (!children && json_object_size(o) == 0) { /* text only (maybe none): a string */
        json_decref(o);
        if (!(o = bufstr(&text))) {
            rc = xfail(x, "text is not UTF-8");
            goto fail;
        }
    } else if (!blank(&text)) {
        if (!(v = bufstr(&text))) {
            rc = xfail(x, "text is not UTF-8");
            goto fail;
        }
        json_object_set_new(o, "$", v);
    }
    weft_buf_release(&text);
    *out = o;
    return 0;
fail:
    weft_buf_release(&text);
    json_decref(o);
    return rc < 0 ? rc : WEFT_EINVAL;
}

int reg_eureka_xml_parse(const char *p, size_t n, json_t **out, char *why, size_t whylen)
{
    xreader x = {p, p + n, why, whylen};
    *out = NULL;
    if (memchr(p, 0, n))
        return xfail(&x, "NUL byte");
    if (n >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) /* byte order mark */
        x.p += 3;
    int rc = xmisc(&x);
    if (rc < 0)
        return rc;
    if (x.p >= x.end || *x.p != '<')
        return xfail(&x, "expected an element");
    char name[128];
    json_t *v;
    if ((rc = xelement(&x, 0, name, sizeof name, &v)) < 0)
        return rc == WEFT_EINVAL ? rc : xfail(&x, "out of memory");
    if ((rc = xmisc(&x)) < 0 || x.p != x.end) {
        json_decref(v);
        return rc < 0 ? rc : xfail(&x, "content after the root element");
    }
    *out = json_pack("{s:o}", name, v);
    return *out ? 0 : xfail(&x, "out of memory");
}

/* ---- registration ---- */

/* A string field: NULL if absent or null, else the string; numbers and
 * booleans are taken as text, as Eureka's codec does. -1 for an object or
 * array. */
static int text_field(json_t *o, const char *key, const char **out, char *buf, size_t n)
{
    json_t *v = json_object_get(o, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v))
        *out = json_string_value(v);
    else if (json_is_integer(v))
        snprintf(buf, n, "%lld", (long long)json_integer_value(v));
    else if (json_is_boolean(v))
        snprintf(buf, n, "%s", json_is_true(v) ? "true" : "false");
    else
        return -1;
    if (!*out)
        *out = buf;
    return 0;
}

/* An integer given as a number or as decimal text. */
static bool int_value(json_t *v, long long lo, long long hi, long long *out)
{
    long long x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        while (*s == ' ')
            s++;
        if (!*s)
            return false;
        x = strtoll(s, &end, 10);
        while (*end == ' ')
            end++;
        if (*end)
            return false;
    } else {
        return false;
    }
    if (x < lo || x > hi)
        return false;
    *out = x;
    return true;
}

/* A port: {"$": N, "@enabled": "true"} (XML: <port enabled="true">N</port>)
 * or a bare N. *enabled defaults to true. */
static bool port_value(json_t *v, long long *port, bool *enabled)
{
    *enabled = true;
    if (json_is_object(v)) {
        json_t *e = json_object_get(v, "@enabled");
        const char *es = json_is_string(e) ? json_string_value(e) : NULL;
        if (es)
            *enabled = strcasecmp(es, "false") != 0;
        else if (json_is_boolean(e))
            *enabled = json_is_true(e);
        v = json_object_get(v, "$");
    }
    return int_value(v, 1, 65535, port);
}

static int bad(char *why, size_t whylen, const char *msg)
{
    snprintf(why, whylen, "%s", msg);
    return WEFT_EINVAL;
}

/* Keep an Eureka-only field in meta when it says something the model does not. */
static void keep(json_t *meta, const char *key, const char *value, const char *implied)
{
    if (value && *value && (!implied || strcmp(value, implied) != 0))
        json_object_set_new(meta, key, json_string(value));
}

/* Metadata: an object of scalar values (Eureka's "@class" marker dropped). */
static int copy_metadata(json_t *md, json_t *meta, char *why, size_t whylen)
{
    if (!md || json_is_null(md) || (json_is_string(md) && json_string_length(md) == 0))
        return 0; /* absent, or <metadata/> */
    if (!json_is_object(md))
        return bad(why, whylen, "instance.metadata: expected an object of strings");
    const char *k;
    json_t *v;
    json_object_foreach(md, k, v) {
        const char *s;
        char buf[32];
        if (k[0] == '@' || k[0] == '$')
            continue; /* attributes of <metadata> (Eureka's "@class") are not entries */
        if (text_field(md, k, &s, buf, sizeof buf) < 0 || !s) {
            snprintf(why, whylen, "instance.metadata.%.64s: expected a string", k);
            return WEFT_EINVAL;
        }
        json_object_set_new(meta, k, json_string(s));
    }
    return 0;
}

int reg_eureka_translate(const reg_store *s, const char *app, json_t *body, json_t **native,
                         char *svc, size_t svclen, char *id, size_t idlen, char *why,
                         size_t whylen)
{
    *native = NULL;
    json_t *in = json_is_object(body) ? json_object_get(body, "instance") : NULL;
    if (!json_is_object(in))
        return bad(why, whylen, "body: expected an InstanceInfo, {\"instance\": {...}}");
    static const char *const strs[] = {"hostName", "app",        "ipAddr",           "instanceId",
                                       "status",   "vipAddress", "secureVipAddress", "homePageUrl",
                                       "statusPageUrl", "healthCheckUrl"};
    enum { HOST, APP, IP, IID, STATUS, VIP, SVIP, HOME, SPAGE, HEALTH, NSTR };
    const char *f[NSTR];
    char nb[NSTR][32];
    for (int i = 0; i < NSTR; i++)
        if (text_field(in, strs[i], &f[i], nb[i], sizeof nb[i]) < 0) {
            snprintf(why, whylen, "instance.%s: expected a string", strs[i]);
            return WEFT_EINVAL;
        }
    if (!f[HOST] || !*f[HOST])
        return bad(why, whylen, "instance.hostName: missing");
    if (!f[APP] || !*f[APP])
        return bad(why, whylen, "instance.app: missing");
    if (strcasecmp(f[APP], app) != 0) {
        snprintf(why, whylen, "instance.app: %.64s does not match the application in the path",
                 f[APP]);
        return WEFT_EINVAL;
    }
    /* Eureka's instance id falls back to the host name */
    const char *iid = f[IID] && *f[IID] ? f[IID] : f[HOST];
    if (!reg_name_ok(iid))
        return bad(why, whylen, "instance.instanceId: 1-200 characters of letters, digits, "
                                "'.', '_', '-', ':'");
    int st = REG_UP; /* InstanceInfo's default */
    if (f[STATUS] && (st = reg_eureka_status(f[STATUS])) < 0)
        return bad(why, whylen, "instance.status: expected UP, DOWN, STARTING, OUT_OF_SERVICE "
                                "or UNKNOWN");
    long long port, sport = 0, ttl = REG_EUREKA_LEASE_S;
    bool port_on, sport_on = false;
    json_t *v = json_object_get(in, "port");
    if (!v)
        return bad(why, whylen, "instance.port: missing");
    if (!port_value(v, &port, &port_on))
        return bad(why, whylen, "instance.port: expected {\"$\": 1-65535, \"@enabled\": \"true\"}");
    if ((v = json_object_get(in, "securePort")) && !json_is_null(v) &&
        !port_value(v, &sport, &sport_on))
        return bad(why, whylen,
                   "instance.securePort: expected {\"$\": 1-65535, \"@enabled\": \"true\"}");
    json_t *lease = json_object_get(in, "leaseInfo");
    if (json_is_object(lease) && (v = json_object_get(lease, "durationInSecs"))) {
        long long d;
        if (!int_value(v, -2147483648LL, 2147483647LL, &d) || d > 86400)
            return bad(why, whylen, "instance.leaseInfo.durationInSecs: expected 1-86400");
        if (d > 0) /* Eureka: 0 or less means the default */
            ttl = d;
    }

    /* the service: where the instance is, else a case-insensitive match, else lower case */
    const char *name = reg_eureka_locate(s, app, iid);
    for (size_t i = 0; !name && i < reg_service_count(s); i++) {
        size_t n;
        const char *cand = reg_service_at(s, i, &n);
        if (n && strcasecmp(cand, app) == 0)
            name = cand;
    }
    if (name) {
        snprintf(svc, svclen, "%s", name);
    } else {
        size_t i = 0;
        for (; app[i] && i + 1 < svclen; i++)
            svc[i] = (char)(app[i] >= 'A' && app[i] <= 'Z' ? app[i] + 32 : app[i]);
        svc[i] = 0;
    }
    snprintf(id, idlen, "%s", iid);
    /* an operator's OUT_OF_SERVICE outlives the client re-registering UP
     * (Eureka's status override rules); DOWN and STARTING are the client's say */
    const reg_instance *old = reg_find(s, svc, id);
    if (old && old->status == REG_OUT_OF_SERVICE && st == REG_UP)
        st = REG_OUT_OF_SERVICE;

    const char *addr = f[IP] && *f[IP] ? f[IP] : f[HOST];
    json_t *meta = json_object();
    int rc = copy_metadata(json_object_get(in, "metadata"), meta, why, whylen);
    if (rc < 0) {
        json_decref(meta);
        return rc;
    }
    char home[600], sp[8];
    home_url(f[HOST], (unsigned)port, home, sizeof home);
    keep(meta, K_HOST, f[HOST], addr);
    keep(meta, K_VIP, f[VIP], svc);
    keep(meta, K_SVIP, f[SVIP], svc);
    keep(meta, K_HOME, f[HOME], home);
    keep(meta, K_STATUSPAGE, f[SPAGE], NULL);
    keep(meta, K_HEALTH, f[HEALTH], NULL);
    snprintf(sp, sizeof sp, "%lld", sport);
    keep(meta, K_SPORT, sport_on && sport ? sp : NULL, NULL);
    (void)port_on; /* a disabled plain port is still the instance's port */
    *native = json_pack("{s:s, s:I, s:s, s:I, s:o}", "address", addr, "port", (json_int_t)port,
                        "status", reg_status_name(st), "ttl", (json_int_t)ttl, "meta", meta);
    return *native ? 0 : bad(why, whylen, "out of memory");
}
