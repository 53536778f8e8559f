/*
 * codec.c — strict HTTP/1.1 head parser and chunked-body decoder.
 *
 * The head parser is resumable with offsets only: p->scanned is how far
 * the bytes have been checked, p->line_start where the current line began,
 * p->lines how many non-empty lines (request/status line + fields) are
 * complete. Each byte is classified once, eight at a time (SWAR) with a
 * 256-entry table for the stragglers, so bare CR/LF, CTLs and the
 * request-line and head limits are caught the moment they arrive and a
 * slowloris costs O(bytes). Every line is parsed as soon as its CRLF
 * arrives, straight into *h; only the lines finished in earlier calls are
 * split again (they are known valid) when the blank line shows up,
 * because the buffer may have moved since. Leading empty lines are always
 * exactly two bytes, so "request line not seen yet" is lines == 0 and their
 * count is line_start / 2 — no extra state.
 *
 * Every decision depends only on the bytes before the current position,
 * never on where the caller's buffer happens to end, so feeding a message
 * in any number of pieces gives the one-shot answer (the fuzzers check it).
 *
 * The chunked decoder is a byte state machine that never looks back, so
 * callers may drop consumed bytes; data spans are handed out in place.
 */
#include "http/codec.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

/* ---- character classes ---- */

enum {
    C_TCHAR = 1,  /* token character (RFC 9110 5.6.2) */
    C_RLSP = 2,   /* stops the request-line scan: not SP / VCHAR */
    C_HDRSP = 4,  /* stops the field-line scan: CTL other than HTAB, DEL */
    C_HOST = 8,   /* allowed in Host / authority (reg-name, IP-literal, port) */
    C_QDTEXT = 16 /* qdtext of a quoted-string */
};

static const uint8_t ctab[256] = {
    6,  6,  6,  6,  6,  6,  6,  6,  6,  18, 6,  6,  6,  6,  6,  6,  /* 0x00 */
    6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  /* 0x10 */
    16, 25, 0,  17, 25, 25, 25, 25, 24, 24, 25, 25, 24, 25, 25, 16, /* 0x20 */
    25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 24, 24, 16, 24, 16, 16, /* 0x30 */
    16, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, /* 0x40 */
    25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 24, 0,  24, 17, 25, /* 0x50 */
    17, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, /* 0x60 */
    25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 25, 16, 17, 16, 25, 6,  /* 0x70 */
    18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, /* 0x80 */
    18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, /* 0x90 */
    18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, /* 0xA0 */
    18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, /* 0xB0 */
    18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, /* 0xC0 */
    18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, /* 0xD0 */
    18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, /* 0xE0 */
    18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, 18, /* 0xF0 */
};

#define IS(c, cls) (ctab[(unsigned char)(c)] & (cls))
#define IS_WS(c) ((c) == ' ' || (c) == '\t')

/* SWAR helpers: exact "some byte < n" (n <= 128) and "some byte == 0". */
#define REP8(b) (UINT64_C(0x0101010101010101) * (uint8_t)(b))
#define HASLESS(x, n) (((x) - REP8(n)) & ~(x) & REP8(0x80))
#define HASZERO(x) (((x) - REP8(1)) & ~(x) & REP8(0x80))

#define MAX_LEADING_CRLF 4           /* empty lines tolerated before the first line */
#define HEAD_HARD_MAX (UINT32_C(1) << 30) /* keeps offsets and the int return safe */
#define MAX_CONTENT_LENGTH (UINT64_C(1) << 53)
#define MAX_CHUNK_SIZE (UINT64_C(1) << 62)

static inline unsigned char lower(unsigned char c)
{
    return (unsigned char)(c >= 'A' && c <= 'Z' ? c | 0x20 : c);
}

static inline bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Case-insensitive compare of s[0..n) against a lowercase literal. */
static bool ieq_lit(const char *s, size_t n, const char *lit, size_t litn)
{
    if (n != litn)
        return false;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)s[i]) != (unsigned char)lit[i])
            return false;
    return true;
}

#define IEQ(s, n, lit) ieq_lit((s), (n), lit, sizeof(lit) - 1)

static weft_str trim_ows(const char *s, size_t n)
{
    while (n > 0 && IS_WS(s[0])) {
        s++;
        n--;
    }
    while (n > 0 && IS_WS(s[n - 1]))
        n--;
    return (weft_str){s, n};
}

/* ---- small public helpers ---- */

void weft_http_limits_default(weft_http_limits *l)
{
    l->max_request_line = 8192;
    l->max_header_bytes = 32768;
    l->max_headers = 100;
}

void weft_http_parser_init(weft_http_parser *p)
{
    memset(p, 0, sizeof(*p));
}

static const char *const method_names[] = {
    [WEFT_METHOD_UNKNOWN] = "UNKNOWN", [WEFT_METHOD_GET] = "GET",
    [WEFT_METHOD_HEAD] = "HEAD",       [WEFT_METHOD_POST] = "POST",
    [WEFT_METHOD_PUT] = "PUT",         [WEFT_METHOD_DELETE] = "DELETE",
    [WEFT_METHOD_CONNECT] = "CONNECT", [WEFT_METHOD_OPTIONS] = "OPTIONS",
    [WEFT_METHOD_TRACE] = "TRACE",     [WEFT_METHOD_PATCH] = "PATCH",
};

static int method_lookup(const char *s, size_t n)
{
    switch (n) {
    case 3:
        if (memcmp(s, "GET", 3) == 0)
            return WEFT_METHOD_GET;
        if (memcmp(s, "PUT", 3) == 0)
            return WEFT_METHOD_PUT;
        break;
    case 4:
        if (memcmp(s, "POST", 4) == 0)
            return WEFT_METHOD_POST;
        if (memcmp(s, "HEAD", 4) == 0)
            return WEFT_METHOD_HEAD;
        break;
    case 5:
        if (memcmp(s, "PATCH", 5) == 0)
            return WEFT_METHOD_PATCH;
        if (memcmp(s, "TRACE", 5) == 0)
            return WEFT_METHOD_TRACE;
        break;
    case 6:
        if (memcmp(s, "DELETE", 6) == 0)
            return WEFT_METHOD_DELETE;
        break;
    case 7:
        if (memcmp(s, "OPTIONS", 7) == 0)
            return WEFT_METHOD_OPTIONS;
        if (memcmp(s, "CONNECT", 7) == 0)
            return WEFT_METHOD_CONNECT;
        break;
    default:
        break;
    }
    return WEFT_METHOD_UNKNOWN;
}

int weft_http_method_from(weft_str tok)
{
    if (tok.p == NULL)
        return WEFT_METHOD_UNKNOWN;
    return method_lookup(tok.p, tok.n);
}

const char *weft_http_method_name(int method)
{
    if (method < 0 || (size_t)method >= WEFT_ARRAY_LEN(method_names))
        return method_names[WEFT_METHOD_UNKNOWN];
    return method_names[method];
}

const char *weft_http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 305: return "Use Proxy";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 418: return "I'm a teapot";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 511: return "Network Authentication Required";
    default: return "Unknown";
    }
}

const weft_http_header *weft_http_head_find(const weft_http_head *h, weft_str name)
{
    uint32_t n = h->nheaders < WEFT_HTTP_MAX_HEADERS_CAP ? h->nheaders
                                                         : WEFT_HTTP_MAX_HEADERS_CAP;
    for (uint32_t i = 0; i < n; i++)
        if (weft_str_ieq(h->headers[i].name, name))
            return &h->headers[i];
    return NULL;
}

/* ---- head parser ---- */

typedef struct ctx {
    weft_http_parser *p;
    const char *buf;
    size_t len;
    weft_http_head *h;
    size_t max_rl;   /* request/status line content bytes */
    size_t max_head; /* whole head incl. leading CRLFs and the blank line */
    uint32_t max_hdr;
    bool resp;
    int req_method;
} ctx;

static int fail(ctx *c, int status, const char *why)
{
    c->p->status = c->resp ? 502 : status;
    c->p->error = why;
    return WEFT_EPROTO;
}

/*
 * Advance i over bytes that need no attention (none of `mask`), up to stop.
 * Sixteen bytes at a time with SSE2 where available (every x86-64), else
 * eight at a time in a register; candidates (CTLs incl. CR/LF, DEL, and
 * bytes >= 0x80 on the request line) are then confirmed with the table,
 * since HTAB and obs-text are fine in field lines.
 */
static size_t skip_plain(const unsigned char *b, size_t i, size_t stop, uint8_t mask)
{
    const bool rl = mask == C_RLSP;
#if defined(__SSE2__)
    const __m128i c1f = _mm_set1_epi8(0x1f), c7f = _mm_set1_epi8(0x7f);
    const unsigned himask = rl ? 0xffffu : 0;
    while (stop - i >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(b + i));
        __m128i ctl = _mm_cmpeq_epi8(_mm_max_epu8(v, c1f), c1f); /* v <= 0x1f */
        __m128i del = _mm_cmpeq_epi8(v, c7f);
        unsigned m = (unsigned)_mm_movemask_epi8(_mm_or_si128(ctl, del)) |
                     ((unsigned)_mm_movemask_epi8(v) & himask);
        while (m) {
            size_t j = i + (size_t)__builtin_ctz(m);
            if (ctab[b[j]] & mask)
                return j;
            m &= m - 1;
        }
        i += 16;
    }
#endif
    for (;;) {
        while (stop - i >= 8) {
            uint64_t x;
            memcpy(&x, b + i, 8);
            uint64_t hit = HASLESS(x, 0x20) | HASZERO(x ^ REP8(0x7f));
            if (rl)
                hit |= x & REP8(0x80);
            if (hit)
                break;
            i += 8;
        }
        /* A word with a flagged byte (maybe only a harmless HTAB), or the tail. */
        size_t end = stop - i > 8 ? i + 8 : stop;
        for (; i < end; i++)
            if (ctab[b[i]] & mask)
                return i;
        if (i >= stop)
            return i;
    }
}

/* Host header value or absolute-form authority: reg-name / IP-literal [":" port]. */
static bool valid_host(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!IS(s[i], C_HOST))
            return false;
    return true;
}

static int parse_target(ctx *c, const char *t, size_t n)
{
    weft_http_head *h = c->h;
    const char *q;

    h->target = (weft_str){t, n};
    h->query = (weft_str){t + n, 0};
    h->authority = (weft_str){t, 0};
    if (memchr(t, '#', n))
        return fail(c, 400, "fragment in request target");
    if (t[0] == '/') {
        q = memchr(t, '?', n);
        if (q) {
            h->path = (weft_str){t, (size_t)(q - t)};
            h->query = (weft_str){q + 1, n - (size_t)(q - t) - 1};
        } else {
            h->path = (weft_str){t, n};
        }
        return 0;
    }
    if (n == 1 && t[0] == '*') {
        if (h->method != WEFT_METHOD_OPTIONS)
            return fail(c, 400, "asterisk-form target without OPTIONS");
        h->path = (weft_str){t, 1};
        return 0;
    }
    size_t off;
    if (n >= 7 && IEQ(t, 7, "http://"))
        off = 7;
    else if (n >= 8 && IEQ(t, 8, "https://"))
        off = 8;
    else
        return fail(c, 400, "invalid request target");
    size_t ae = off;
    while (ae < n && t[ae] != '/' && t[ae] != '?')
        ae++;
    if (ae == off)
        return fail(c, 400, "empty authority in absolute-form target");
    if (!valid_host(t + off, ae - off))
        return fail(c, 400, "invalid authority in absolute-form target");
    h->authority = (weft_str){t + off, ae - off};
    q = memchr(t + ae, '?', n - ae);
    size_t pe = q ? (size_t)(q - t) : n;
    if (pe == ae)
        h->path = WEFT_STR("/");
    else
        h->path = (weft_str){t + ae, pe - ae};
    if (q)
        h->query = (weft_str){q + 1, n - pe - 1};
    return 0;
}

/* method SP request-target SP HTTP-version; bytes already known SP/VCHAR. */
static int parse_request_line(ctx *c, size_t s, size_t e)
{
    weft_http_head *h = c->h;
    const char *b = c->buf + s;
    size_t n = e - s;
    const char *sp = memchr(b, ' ', n);

    if (!sp)
        return fail(c, 400, "malformed request line");
    size_t ml = (size_t)(sp - b);
    if (ml == 0)
        return fail(c, 400, "empty method");
    for (size_t i = 0; i < ml; i++)
        if (!IS(b[i], C_TCHAR))
            return fail(c, 400, "invalid character in method");
    /* The version is the fixed-size tail " HTTP/d.d". */
    if (n < ml + 1 + 1 + 9)
        return fail(c, 400, "malformed request line");
    const char *v = b + n - 8;
    if (v[-1] != ' ' || memcmp(v, "HTTP/", 5) != 0 || !is_digit(v[5]) ||
        v[6] != '.' || !is_digit(v[7]))
        return fail(c, 400, "malformed HTTP version");
    const char *t = sp + 1;
    size_t tn = (size_t)(v - 1 - t);
    if (tn == 0 || memchr(t, ' ', tn))
        return fail(c, 400, "malformed request line");
    if (v[5] != '1')
        return fail(c, 505, "HTTP major version not 1");
    h->version_minor = v[7] != '0';
    h->method_str = (weft_str){b, ml};
    h->method = method_lookup(b, ml);
    if (h->method == WEFT_METHOD_UNKNOWN)
        return fail(c, 501, "unknown method");
    if (h->method == WEFT_METHOD_CONNECT)
        return fail(c, 501, "CONNECT not supported");
    return parse_target(c, t, tn);
}

/* HTTP-version SP 3DIGIT [SP reason-phrase]; the reason may be empty or absent. */
static int parse_status_line(ctx *c, size_t s, size_t e)
{
    weft_http_head *h = c->h;
    const char *b = c->buf + s;
    size_t n = e - s;

    if (n < 12 || memcmp(b, "HTTP/", 5) != 0 || !is_digit(b[5]) || b[6] != '.' ||
        !is_digit(b[7]) || b[8] != ' ' || !is_digit(b[9]) || !is_digit(b[10]) ||
        !is_digit(b[11]) || (n > 12 && b[12] != ' '))
        return fail(c, 502, "malformed status line");
    if (b[5] != '1')
        return fail(c, 502, "HTTP major version not 1");
    int st = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
    if (st < 100 || st > 599)
        return fail(c, 502, "status code out of range");
    h->version_minor = b[7] != '0';
    h->status = st;
    h->reason = n > 12 ? (weft_str){b + 13, n - 13} : (weft_str){b + 12, 0};
    return 0;
}

static int parse_first_line(ctx *c, size_t s, size_t e)
{
    return c->resp ? parse_status_line(c, s, e) : parse_request_line(c, s, e);
}

/* field-name ":" OWS field-value OWS; the scan already rejected CTLs. */
static int parse_field_line(ctx *c, size_t s, size_t e, uint32_t k)
{
    const char *b = c->buf + s;
    size_t n = e - s;

    if (IS_WS(b[0]))
        return fail(c, 400, "obsolete line folding");
    if (k >= c->max_hdr)
        return fail(c, 431, "too many header fields");
    /* One pass finds the colon and validates the name. */
    size_t nl = 0;
    while (nl < n && IS(b[nl], C_TCHAR))
        nl++;
    if (nl == n || b[nl] != ':')
        return fail(c, 400, !memchr(b + nl, ':', n - nl) ? "header line without colon"
                            : IS_WS(b[nl])                ? "whitespace before colon"
                                                          : "invalid character in header name");
    if (nl == 0)
        return fail(c, 400, "empty header name");
    c->h->headers[k].name = (weft_str){b, nl};
    c->h->headers[k].value = trim_ows(b + nl + 1, n - nl - 1);
    return 0;
}

/* Split again the lines finished by earlier calls (known valid) into *h. */
static int reparse(ctx *c, size_t upto)
{
    size_t pos = 0;
    uint32_t k = 0;
    bool first = true;
    int rc;

    while (pos < upto) {
        const char *lf = memchr(c->buf + pos, '\n', upto - pos);
        if (!lf)
            return fail(c, 400, "internal: lost line");
        size_t e = (size_t)(lf - c->buf) - 1;
        if (e == pos) {
            pos += 2;
            continue;
        }
        if (first) {
            rc = parse_first_line(c, pos, e);
            first = false;
        } else {
            rc = parse_field_line(c, pos, e, k++);
        }
        if (rc)
            return rc;
        pos = e + 2;
    }
    return 0;
}

/*
 * Content-Length: 1*DIGIT, or a list of identical such values (RFC 9110
 * 8.6). Returns false on anything else or a value above 2^53.
 */
static bool parse_cl(weft_str v, bool *have, uint64_t *out)
{
    size_t i = 0;
    for (;;) {
        while (i < v.n && IS_WS(v.p[i]))
            i++;
        size_t d0 = i;
        uint64_t x = 0;
        while (i < v.n && is_digit(v.p[i])) {
            x = x * 10 + (uint64_t)(v.p[i] - '0');
            if (x > MAX_CONTENT_LENGTH)
                return false;
            i++;
        }
        if (i == d0)
            return false;
        if (*have && x != *out)
            return false;
        *have = true;
        *out = x;
        while (i < v.n && IS_WS(v.p[i]))
            i++;
        if (i == v.n)
            return true;
        if (v.p[i] != ',')
            return false;
        i++;
    }
}

typedef struct te_info {
    bool present;
    bool bad;         /* syntax error */
    uint32_t chunked; /* number of "chunked" codings */
    uint32_t other;   /* number of other codings */
    bool last_chunked;
} te_info;

/* transfer-coding list: token [ OWS ";" ... ] elements, empty ones skipped. */
static void parse_te(weft_str v, te_info *te)
{
    size_t i = 0;
    te->present = true;
    while (i < v.n) {
        while (i < v.n && (IS_WS(v.p[i]) || v.p[i] == ','))
            i++;
        if (i == v.n)
            break;
        size_t t0 = i;
        while (i < v.n && IS(v.p[i], C_TCHAR))
            i++;
        size_t tn = i - t0;
        size_t j = i;
        while (j < v.n && IS_WS(v.p[j]))
            j++;
        bool params = j < v.n && v.p[j] == ';';
        if (tn == 0 || (j < v.n && v.p[j] != ',' && !params)) {
            te->bad = true;
            return;
        }
        if (params) {
            /* Parameters are not interpreted; skip to the next element. */
            while (j < v.n && v.p[j] != ',')
                j++;
        }
        if (IEQ(v.p + t0, tn, "chunked")) {
            if (params) {
                te->bad = true;
                return;
            }
            te->chunked++;
            te->last_chunked = true;
        } else {
            te->other++;
            te->last_chunked = false;
        }
        i = j;
    }
}

typedef struct conn_info {
    bool close, keep_alive, upgrade;
} conn_info;

static void parse_connection(weft_str v, conn_info *ci)
{
    size_t i = 0;
    /* The usual single-token values, without splitting. */
    if (IEQ(v.p, v.n, "keep-alive")) {
        ci->keep_alive = true;
        return;
    }
    if (IEQ(v.p, v.n, "close")) {
        ci->close = true;
        return;
    }
    while (i < v.n) {
        while (i < v.n && (IS_WS(v.p[i]) || v.p[i] == ','))
            i++;
        size_t t0 = i;
        while (i < v.n && v.p[i] != ',')
            i++;
        weft_str t = trim_ows(v.p + t0, i - t0);
        if (IEQ(t.p, t.n, "close"))
            ci->close = true;
        else if (IEQ(t.p, t.n, "keep-alive"))
            ci->keep_alive = true;
        else if (IEQ(t.p, t.n, "upgrade"))
            ci->upgrade = true;
    }
}

static void reset_common(weft_http_head *h)
{
    h->body_kind = WEFT_BODY_NONE;
    h->content_length = 0;
    h->keep_alive = false;
    h->expect_continue = false;
    h->upgrade = false;
}

static int request_semantics(ctx *c)
{
    weft_http_head *h = c->h;
    te_info te = {0};
    conn_info ci = {0};
    bool have_cl = false, expect_bad = false;
    uint64_t cl = 0;
    uint32_t nhost = 0;

    reset_common(h);
    h->status = 0;
    h->reason = (weft_str){h->method_str.p, 0};
    h->host = (weft_str){h->method_str.p, 0};
    for (uint32_t i = 0; i < h->nheaders; i++) {
        const weft_http_header *f = &h->headers[i];
        const char *nm = f->name.p;
        switch (f->name.n) {
        case 4:
            if (IEQ(nm, 4, "host")) {
                nhost++;
                h->host = f->value;
            }
            break;
        case 6:
            if (IEQ(nm, 6, "expect")) {
                if (IEQ(f->value.p, f->value.n, "100-continue"))
                    h->expect_continue = true;
                else
                    expect_bad = true;
            }
            break;
        case 10:
            if (IEQ(nm, 10, "connection"))
                parse_connection(f->value, &ci);
            break;
        case 14:
            if (IEQ(nm, 14, "content-length") && !parse_cl(f->value, &have_cl, &cl))
                return fail(c, 400, "invalid Content-Length");
            break;
        case 17:
            if (IEQ(nm, 17, "transfer-encoding"))
                parse_te(f->value, &te);
            break;
        default:
            break;
        }
    }
    if (nhost > 1)
        return fail(c, 400, "duplicate Host");
    if (nhost == 0 && h->version_minor >= 1)
        return fail(c, 400, "missing Host");
    if (!valid_host(h->host.p, h->host.n))
        return fail(c, 400, "invalid Host");
    if (h->authority.n) /* absolute-form: its authority is the host (RFC 9112 3.2.2) */
        h->host = h->authority;
    if (te.present) {
        if (have_cl)
            return fail(c, 400, "both Content-Length and Transfer-Encoding");
        if (h->version_minor == 0)
            return fail(c, 400, "Transfer-Encoding in HTTP/1.0 request");
        if (te.bad)
            return fail(c, 400, "malformed Transfer-Encoding");
        if (te.chunked > 1)
            return fail(c, 400, "chunked applied more than once");
        if (te.other > 0)
            return fail(c, 501, "unsupported transfer-coding");
        if (te.chunked == 0)
            return fail(c, 400, "empty Transfer-Encoding");
        h->body_kind = WEFT_BODY_CHUNKED;
    } else if (have_cl) {
        h->body_kind = WEFT_BODY_LENGTH;
        h->content_length = cl;
    }
    if (expect_bad)
        return fail(c, 417, "unsupported expectation");
    if (h->version_minor == 0)
        h->expect_continue = false; /* RFC 9110 10.1.1: ignore for HTTP/1.0 */
    h->upgrade = ci.upgrade;
    h->keep_alive = !ci.close && (h->version_minor >= 1 || ci.keep_alive);
    return 0;
}

static int response_semantics(ctx *c)
{
    weft_http_head *h = c->h;
    te_info te = {0};
    conn_info ci = {0};
    bool have_cl = false;
    uint64_t cl = 0;

    reset_common(h);
    h->method = WEFT_METHOD_UNKNOWN;
    h->method_str = h->target = h->path = h->query = h->authority = h->host =
        (weft_str){h->reason.p, 0};
    for (uint32_t i = 0; i < h->nheaders; i++) {
        const weft_http_header *f = &h->headers[i];
        const char *nm = f->name.p;
        switch (f->name.n) {
        case 10:
            if (IEQ(nm, 10, "connection"))
                parse_connection(f->value, &ci);
            break;
        case 14:
            if (IEQ(nm, 14, "content-length") && !parse_cl(f->value, &have_cl, &cl))
                return fail(c, 502, "invalid Content-Length");
            break;
        case 17:
            if (IEQ(nm, 17, "transfer-encoding"))
                parse_te(f->value, &te);
            break;
        default:
            break;
        }
    }
    if (te.present) {
        if (have_cl)
            return fail(c, 502, "both Content-Length and Transfer-Encoding");
        if (te.bad)
            return fail(c, 502, "malformed Transfer-Encoding");
        if (te.chunked > 1)
            return fail(c, 502, "chunked applied more than once");
        if (te.chunked == 0 && te.other == 0)
            return fail(c, 502, "empty Transfer-Encoding");
    }
    int st = h->status;
    if (c->req_method == WEFT_METHOD_HEAD || st < 200 || st == 204 || st == 304 ||
        (c->req_method == WEFT_METHOD_CONNECT && st < 300))
        h->body_kind = WEFT_BODY_NONE;
    else if (te.present)
        h->body_kind = te.last_chunked ? WEFT_BODY_CHUNKED : WEFT_BODY_EOF;
    else if (have_cl)
        h->body_kind = WEFT_BODY_LENGTH;
    else
        h->body_kind = WEFT_BODY_EOF;
    if (have_cl)
        h->content_length = cl;
    h->upgrade = ci.upgrade;
    /* A body delimited by close leaves nothing to keep alive. */
    h->keep_alive = !ci.close && (h->version_minor >= 1 || ci.keep_alive) &&
                    h->body_kind != WEFT_BODY_EOF;
    return 0;
}

static int finish(ctx *c, size_t entry_ls, size_t end, uint32_t nfields)
{
    int rc;
    if (entry_ls > 0 && (rc = reparse(c, entry_ls)) != 0)
        return rc;
    c->h->nheaders = nfields;
    rc = c->resp ? response_semantics(c) : request_semantics(c);
    return rc ? rc : (int)end;
}

static int parse_head(ctx *c)
{
    weft_http_parser *p = c->p;
    const unsigned char *b = (const unsigned char *)c->buf;
    const size_t len = c->len;
    size_t i = p->scanned, ls = p->line_start;
    uint32_t lines = p->lines;
    const size_t entry_ls = ls;
    const uint8_t first_mask = c->resp ? C_HDRSP : C_RLSP;
    int rc;

    if (p->status != 0)
        return WEFT_EPROTO;
    if (i > len || ls > i || (lines == 0 && ls % 2 != 0))
        return WEFT_EINVAL;
    for (;;) {
        const bool first = lines == 0;
        if (i >= c->max_head)
            return fail(c, 431, "header section too large");
        size_t stop = len < c->max_head ? len : c->max_head;
        if (first && stop - ls > c->max_rl)
            stop = ls + c->max_rl;
        i = skip_plain(b, i, stop, first ? first_mask : C_HDRSP);
        if (i >= stop) {
            if (i >= c->max_head)
                return fail(c, 431, "header section too large");
            if (i >= len)
                break;
            /* Stopped by the request-line limit: only its CR may follow. */
            if (b[i] != '\r')
                return fail(c, 414, c->resp ? "status line too long" : "request line too long");
        }
        if (b[i] != '\r') {
            if (b[i] == '\n')
                return fail(c, 400, "bare LF");
            return fail(c, 400, !first ? "control character in header"
                                : c->resp ? "control character in status line"
                                          : "invalid character in request line");
        }
        if (i + 1 >= len)
            break; /* CR at the end: wait for its LF */
        if (b[i + 1] != '\n')
            return fail(c, 400, "bare CR");
        if (i == ls) {
            if (!first) {
                size_t end = i + 2;
                if (end > c->max_head)
                    return fail(c, 431, "header section too large");
                p->scanned = (uint32_t)i;
                p->line_start = (uint32_t)ls;
                p->lines = lines;
                return finish(c, entry_ls, end, lines - 1);
            }
            if (ls / 2 >= MAX_LEADING_CRLF)
                return fail(c, 400, "too many empty lines before request");
        } else {
            rc = first ? parse_first_line(c, ls, i) : parse_field_line(c, ls, i, lines - 1);
            if (rc)
                return rc;
            lines++;
        }
        i += 2;
        ls = i;
    }
    p->scanned = (uint32_t)i;
    p->line_start = (uint32_t)ls;
    p->lines = lines;
    return WEFT_EAGAIN;
}

static void ctx_init(ctx *c, weft_http_parser *p, const weft_http_limits *lim,
                     const char *buf, size_t len, weft_http_head *h)
{
    weft_http_limits d;
    if (!lim) {
        weft_http_limits_default(&d);
        lim = &d;
    }
    c->p = p;
    c->buf = buf;
    c->len = len;
    c->h = h;
    c->max_rl = lim->max_request_line;
    c->max_head = lim->max_header_bytes < HEAD_HARD_MAX ? lim->max_header_bytes : HEAD_HARD_MAX;
    c->max_hdr = lim->max_headers < WEFT_HTTP_MAX_HEADERS_CAP ? lim->max_headers
                                                             : WEFT_HTTP_MAX_HEADERS_CAP;
}

int weft_http_parse_request(weft_http_parser *p, const weft_http_limits *lim,
                            const char *buf, size_t len, weft_http_head *h)
{
    ctx c;
    if (!p || !h || (!buf && len))
        return WEFT_EINVAL;
    ctx_init(&c, p, lim, buf, len, h);
    c.resp = false;
    c.req_method = WEFT_METHOD_UNKNOWN;
    return parse_head(&c);
}

int weft_http_parse_response(weft_http_parser *p, const weft_http_limits *lim,
                             const char *buf, size_t len, int req_method,
                             weft_http_head *h)
{
    ctx c;
    if (!p || !h || (!buf && len))
        return WEFT_EINVAL;
    ctx_init(&c, p, lim, buf, len, h);
    c.resp = true;
    c.req_method = req_method;
    return parse_head(&c);
}

/* ---- chunked decoder ---- */

enum {
    CK_SIZE = 0,      /* chunk-size hex digits; line_len counts them */
    CK_SIZE_WS,       /* BWS that must lead to ';' */
    CK_EXT_PRE_NAME,  /* after ';': BWS, then ext-name */
    CK_EXT_NAME,      /* in ext-name */
    CK_EXT_NAME_WS,   /* BWS after ext-name: '=' or ';' must follow */
    CK_EXT_PRE_VAL,   /* after '=': BWS, then token or quoted-string */
    CK_EXT_VAL,       /* in a token ext-val */
    CK_EXT_QS,        /* in a quoted-string ext-val */
    CK_EXT_QP,        /* after a backslash in the quoted-string */
    CK_EXT_AFTER_QS,  /* after the closing quote */
    CK_SIZE_LF,       /* CR of the size line seen */
    CK_DATA,          /* `remaining` data bytes to hand out */
    CK_DATA_CR,       /* CRLF after the data */
    CK_DATA_LF,
    CK_TR_START,      /* start of a trailer line, or the final CRLF */
    CK_TR_NAME,
    CK_TR_VALUE,
    CK_TR_LF,         /* CR after a trailer field seen */
    CK_END_LF,        /* CR of the final empty line seen */
    CK_DONE,
    CK_ERROR,
};

void weft_chunked_init(weft_chunked *d)
{
    memset(d, 0, sizeof(*d));
    d->state = CK_SIZE;
    d->max_line = 4096;
    d->max_trailer_bytes = 8192;
}


static int ck_fail(weft_chunked *d, const char *why)
{
    d->state = CK_ERROR;
    d->error = why;
    return WEFT_EPROTO;
}

int weft_chunked_decode(weft_chunked *d, const char *in, size_t len,
                        size_t *consumed, weft_str *data)
{
    const unsigned char *b = (const unsigned char *)in;
    size_t i = 0;
    int rc = WEFT_EAGAIN;

    *data = WEFT_STR_NULL;
    *consumed = 0;
    if (d->state == CK_ERROR)
        return WEFT_EPROTO;
    if (d->state == CK_DONE)
        return 0;
    if (!in && len)
        return WEFT_EINVAL;
    while (i < len) {
        int st = d->state;
        if (st == CK_DATA) {
            size_t take = len - i;
            if (d->remaining < take)
                take = (size_t)d->remaining;
            *data = (weft_str){in + i, take};
            d->remaining -= take;
            i += take;
            if (d->remaining == 0)
                d->state = CK_DATA_CR;
            rc = 0;
            goto out;
        }
        unsigned char ch = b[i++];
        if (st < CK_SIZE_LF) {
            /* Every byte of the size line counts against max_line. */
            if (++d->line_len > d->max_line) {
                rc = ck_fail(d, "chunk-size line too long");
                goto out;
            }
        } else if (st >= CK_TR_START) {
            if (++d->trailer_bytes > d->max_trailer_bytes) {
                rc = ck_fail(d, "trailer section too large");
                goto out;
            }
        }
        switch (st) {
        case CK_SIZE: {
            int hv = weft_hexval(ch);
            if (hv >= 0) {
                if (d->line_len > 16 || d->remaining > (MAX_CHUNK_SIZE >> 4))
                    goto too_big;
                d->remaining = (d->remaining << 4) | (unsigned)hv;
                if (d->remaining > MAX_CHUNK_SIZE)
                    goto too_big;
                break;
            }
            if (d->line_len == 1) {
                rc = ck_fail(d, ch == '\n' ? "bare LF in chunk-size line"
                                           : "missing chunk size");
                goto out;
            }
            if (ch == '\r')
                d->state = CK_SIZE_LF;
            else if (ch == ';')
                d->state = CK_EXT_PRE_NAME;
            else if (IS_WS(ch))
                d->state = CK_SIZE_WS;
            else
                goto bad_line;
            break;
        }
        case CK_SIZE_WS:
            if (ch == ';')
                d->state = CK_EXT_PRE_NAME;
            else if (!IS_WS(ch))
                goto bad_line;
            break;
        case CK_EXT_PRE_NAME:
            if (IS(ch, C_TCHAR))
                d->state = CK_EXT_NAME;
            else if (!IS_WS(ch))
                goto bad_line;
            break;
        case CK_EXT_NAME:
            if (IS(ch, C_TCHAR))
                break;
            if (ch == '=')
                d->state = CK_EXT_PRE_VAL;
            else if (ch == ';')
                d->state = CK_EXT_PRE_NAME;
            else if (ch == '\r')
                d->state = CK_SIZE_LF;
            else if (IS_WS(ch))
                d->state = CK_EXT_NAME_WS;
            else
                goto bad_line;
            break;
        case CK_EXT_NAME_WS:
            if (ch == '=')
                d->state = CK_EXT_PRE_VAL;
            else if (ch == ';')
                d->state = CK_EXT_PRE_NAME;
            else if (!IS_WS(ch))
                goto bad_line;
            break;
        case CK_EXT_PRE_VAL:
            if (IS(ch, C_TCHAR))
                d->state = CK_EXT_VAL;
            else if (ch == '"')
                d->state = CK_EXT_QS;
            else if (!IS_WS(ch))
                goto bad_line;
            break;
        case CK_EXT_VAL:
            if (IS(ch, C_TCHAR))
                break;
            if (ch == ';')
                d->state = CK_EXT_PRE_NAME;
            else if (ch == '\r')
                d->state = CK_SIZE_LF;
            else if (IS_WS(ch))
                d->state = CK_SIZE_WS;
            else
                goto bad_line;
            break;
        case CK_EXT_QS:
            if (ch == '"')
                d->state = CK_EXT_AFTER_QS;
            else if (ch == '\\')
                d->state = CK_EXT_QP;
            else if (!IS(ch, C_QDTEXT))
                goto bad_line;
            break;
        case CK_EXT_QP:
            if (IS(ch, C_HDRSP))
                goto bad_line;
            d->state = CK_EXT_QS;
            break;
        case CK_EXT_AFTER_QS:
            if (ch == ';')
                d->state = CK_EXT_PRE_NAME;
            else if (ch == '\r')
                d->state = CK_SIZE_LF;
            else if (IS_WS(ch))
                d->state = CK_SIZE_WS;
            else
                goto bad_line;
            break;
        case CK_SIZE_LF:
            if (ch != '\n') {
                rc = ck_fail(d, "bare CR in chunk-size line");
                goto out;
            }
            d->line_len = 0;
            d->state = d->remaining ? CK_DATA : CK_TR_START;
            break;
        case CK_DATA_CR:
            if (ch != '\r') {
                rc = ck_fail(d, "chunk data not followed by CRLF");
                goto out;
            }
            d->state = CK_DATA_LF;
            break;
        case CK_DATA_LF:
            if (ch != '\n') {
                rc = ck_fail(d, "chunk data not followed by CRLF");
                goto out;
            }
            d->state = CK_SIZE;
            break;
        case CK_TR_START:
            if (ch == '\r') {
                d->state = CK_END_LF;
            } else if (IS(ch, C_TCHAR)) {
                d->state = CK_TR_NAME;
            } else {
                rc = ck_fail(d, IS_WS(ch)   ? "obsolete line folding in trailer"
                                : ch == ':' ? "empty trailer field name"
                                : ch == '\n' ? "bare LF in trailer"
                                             : "invalid trailer field");
                goto out;
            }
            break;
        case CK_TR_NAME:
            if (ch == ':') {
                d->state = CK_TR_VALUE;
            } else if (!IS(ch, C_TCHAR)) {
                rc = ck_fail(d, "invalid trailer field name");
                goto out;
            }
            break;
        case CK_TR_VALUE:
            if (ch == '\r') {
                d->state = CK_TR_LF;
            } else if (IS(ch, C_HDRSP)) {
                rc = ck_fail(d, ch == '\n' ? "bare LF in trailer"
                                           : "control character in trailer");
                goto out;
            }
            break;
        case CK_TR_LF:
            if (ch != '\n') {
                rc = ck_fail(d, "bare CR in trailer");
                goto out;
            }
            d->trailers++;
            d->state = CK_TR_START;
            break;
        case CK_END_LF:
            if (ch != '\n') {
                rc = ck_fail(d, "bare CR in trailer");
                goto out;
            }
            d->state = CK_DONE;
            d->done = true;
            rc = 0;
            goto out;
        default:
            rc = ck_fail(d, "invalid decoder state");
            goto out;
        }
        continue;
    bad_line:
        rc = ck_fail(d, ch == '\n' ? "bare LF in chunk-size line"
                                   : "invalid chunk-size line");
        goto out;
    too_big:
        rc = ck_fail(d, "chunk size too large");
        goto out;
    }
out:
    *consumed = i;
    return rc;
}
