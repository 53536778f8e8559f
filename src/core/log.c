/*
 * log.c — structured log lines in text (key=value) or JSON form.
 *
 * Each line is formatted into a stack buffer and written with a single
 * write(2): lines from different threads never interleave and no lock is
 * needed. Values are escaped so a log line is always one line and always
 * parseable (quotes in text mode when a value has spaces, '=' or quotes;
 * JSON string escaping in JSON mode; ill-formed UTF-8 becomes U+FFFD in
 * JSON, and non-finite numbers become null). Lines longer than the buffer
 * are cut and marked with truncated=true rather than split: the cut falls
 * after the last complete field, or inside a long string value between two
 * characters with the value's closing quote kept, so a truncated line is
 * still valid JSON / logfmt.
 */
#include "weft/log.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int weft_log_level_ = WEFT_LOG_INFO;
static int log_format = WEFT_LOG_TEXT;
static int log_fd = 2;
static _Thread_local const char *tl_reqid;
static _Thread_local size_t tl_reqid_len;

void weft_log_set_level(int level) { weft_log_level_ = level; }
void weft_log_set_format(int format) { log_format = format; }
void weft_log_set_fd(int fd) { log_fd = fd; }
int weft_log_fd(void) { return log_fd; }

void weft_log_set_request_id(const char *id, size_t len)
{
    tl_reqid = id;
    tl_reqid_len = id ? len : 0;
}

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

int weft_log_level_from(const char *s)
{
    for (int i = 0; i < 5; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    if (strcmp(s, "warning") == 0)
        return WEFT_LOG_WARN;
    return -1;
}

int weft_log_format_from(const char *s)
{
    if (strcmp(s, "text") == 0)
        return WEFT_LOG_TEXT;
    if (strcmp(s, "json") == 0)
        return WEFT_LOG_JSON;
    return -1;
}

/* Output buffer. Nothing is ever written past cap, and nothing is written
 * in part except string values, which are cut only between characters (an
 * escape or a UTF-8 sequence is never split) and always get their closing
 * quote. Once cut, every later put is ignored. */
typedef struct out {
    char *p;
    size_t n, cap;
    bool cut;  /* something did not fit */
    bool kept; /* ...but the value being written was cut cleanly */
} out;

static void put(out *o, const char *s, size_t n)
{
    if (o->cut)
        return;
    if (n > o->cap - o->n) {
        o->cut = true;
        return;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

static void putc_(out *o, char c) { put(o, &c, 1); }

static void putf(out *o, const char *fmt, ...) WEFT_PRINTF(2, 3);
static void putf(out *o, const char *fmt, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0)
        put(o, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), or 0 if it is not one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
    if (c >= 0xc2 && c <= 0xdf)
        len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return len;
}

char *weft_utf8_lossy(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    if (n > (SIZE_MAX - 1) / 3)
        return NULL;
    char *copy = malloc(n * 3 + 1), *p = copy; /* one byte -> at most 3 */
    if (!copy)
        return NULL;
    for (size_t i = 0; i < n;) {
        size_t len = u[i] < 0x80 ? 1 : utf8_len(u + i, n - i);
        if (len) {
            memcpy(p, u + i, len);
            p += len;
            i += len;
        } else {
            memcpy(p, "\xef\xbf\xbd", 3);
            p += 3;
            i++;
        }
    }
    *p = '\0';
    return copy;
}

/* A double-quoted string with JSON escapes (also the quoting used for
 * logfmt). In JSON mode ill-formed UTF-8 becomes U+FFFD so the line stays
 * valid JSON; in text mode such bytes pass through as they are. If the
 * string does not fit it is cut between characters and still closed. */
static void put_quoted(out *o, const char *str, size_t n, bool json)
{
    const unsigned char *s = (const unsigned char *)str;
    if (o->cut)
        return;
    if (o->cap - o->n < 2) {
        o->cut = true;
        return;
    }
    o->p[o->n++] = '"';
    size_t room = o->cap - 1; /* the closing quote always fits */
    for (size_t i = 0; i < n;) {
        /* fast path: copy a run of printable ASCII that needs no escape */
        size_t j = i;
        while (j < n && s[j] >= 0x20 && s[j] < 0x7f && s[j] != '"' && s[j] != '\\')
            j++;
        if (j > i) {
            size_t run = j - i;
            if (run > room - o->n) {
                run = room - o->n; /* cut between (single-byte) characters */
                memcpy(o->p + o->n, s + i, run);
                o->n += run;
                o->cut = true;
                o->kept = true;
                break;
            }
            memcpy(o->p + o->n, s + i, run);
            o->n += run;
            i = j;
            continue;
        }
        char esc[8];
        const char *u = esc;
        size_t ulen, used = 1;
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            ulen = 2;
        } else if (c < 0x20 || c == 0x7f) {
            ulen = (size_t)snprintf(esc, sizeof esc, "\\u%04x", c);
        } else if (c < 0x80) {
            u = (const char *)s + i;
            ulen = 1;
        } else if ((used = utf8_len(s + i, n - i)) > 0) {
            u = (const char *)s + i;
            ulen = used;
        } else {
            used = 1;
            if (json) {
                u = "\\ufffd";
                ulen = 6;
            } else {
                u = (const char *)s + i;
                ulen = 1;
            }
        }
        if (ulen > room - o->n) {
            o->cut = true;
            o->kept = true;
            break;
        }
        memcpy(o->p + o->n, u, ulen);
        o->n += ulen;
        i += used;
    }
    o->p[o->n++] = '"';
}

static void put_text_str(out *o, const char *s, size_t n)
{
    bool quote = n == 0;
    for (size_t i = 0; i < n && !quote; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c == '"' || c == '=' || c == 0x7f)
            quote = true;
    }
    if (quote) {
        put_quoted(o, s, n, false); /* JSON escaping is a fine quoting for logfmt too */
        return;
    }
    if (o->cut)
        return;
    size_t room = o->cap - o->n;
    if (n > room) {
        /* a bare value may be cut anywhere but inside a UTF-8 sequence
         * (and not to nothing: an empty value must be quoted) */
        size_t k = room;
        while (k > 0 && room - k < 3 && ((unsigned char)s[k] & 0xc0) == 0x80)
            k--; /* at most 3 continuation bytes belong to one sequence */
        o->cut = true;
        if (k == 0)
            return;
        o->kept = true;
        n = k;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

static void put_str(out *o, const char *s, size_t n)
{
    if (log_format == WEFT_LOG_JSON)
        put_quoted(o, s, n, true);
    else
        put_text_str(o, s, n);
}

static void put_key(out *o, const char *k, bool first)
{
    if (log_format == WEFT_LOG_JSON) {
        if (!first)
            putc_(o, ',');
        put_quoted(o, k, strlen(k), true);
        putc_(o, ':');
    } else {
        if (!first)
            putc_(o, ' ');
        put(o, k, strlen(k));
        putc_(o, '=');
    }
}

static void put_u64(out *o, uint64_t v)
{
    char tmp[24];
    size_t n = sizeof tmp;
    do {
        tmp[--n] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(o, tmp + n, sizeof tmp - n);
}

static void put_value(out *o, const weft_kv *f)
{
    bool json = log_format == WEFT_LOG_JSON;
    switch (f->type) {
    case WEFT_KV_S:
        if (f->v.s)
            put_str(o, f->v.s, strlen(f->v.s));
        else
            put(o, "null", 4);
        break;
    case WEFT_KV_SL: put_str(o, f->v.sl.p ? f->v.sl.p : "", f->v.sl.n); break;
    case WEFT_KV_I:
        if (f->v.i < 0) {
            putc_(o, '-');
            put_u64(o, (uint64_t)0 - (uint64_t)f->v.i);
        } else {
            put_u64(o, (uint64_t)f->v.i);
        }
        break;
    case WEFT_KV_U: put_u64(o, f->v.u); break;
    case WEFT_KV_MS: { /* microseconds shown as milliseconds with 3 decimals */
        put_u64(o, f->v.u / 1000);
        char frac[4] = {'.', (char)('0' + f->v.u / 100 % 10), (char)('0' + f->v.u / 10 % 10),
                        (char)('0' + f->v.u % 10)};
        put(o, frac, 4);
        break;
    }
    case WEFT_KV_F:
        /* JSON has no NaN or Infinity; text keeps nan/inf */
        if (json && !isfinite(f->v.f))
            put(o, "null", 4);
        else
            putf(o, "%.6g", f->v.f);
        break;
    case WEFT_KV_B: put(o, f->v.b ? "true" : "false", f->v.b ? 4 : 5); break;
    default: put(o, "null", 4); break;
    }
}

/* Append one key/value field. Returns false once the line is full: then
 * the output ends after the last complete field, or after this field's
 * value if that was cut cleanly (a string cut between characters). */
static bool put_field(out *o, const char *key, const weft_kv *f, bool first)
{
    size_t mark = o->n;
    put_key(o, key, first);
    if (o->cut) {
        o->n = mark;
        return false;
    }
    o->kept = false;
    put_value(o, f);
    if (o->cut) {
        if (!o->kept)
            o->n = mark;
        return false;
    }
    return true;
}

/* Per-thread cache of the "YYYY-MM-DDTHH:MM:SS" part of the timestamp:
 * busy loggers (the access log) pay for gmtime once per second. */
static _Thread_local time_t tl_ts_sec = -1;
static _Thread_local char tl_ts[80];

size_t weft_log_format(char *buf, size_t size, int level, const char *msg, const weft_kv *fields)
{
    if (size < 64 || level < 0 || level > WEFT_LOG_ERROR)
        return 0;
    /* 32 bytes past cap stay free for the truncation marker and closing marks */
    out o = {buf, 0, size - 32, false, false};
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (tv.tv_sec != tl_ts_sec) {
        struct tm tm;
        time_t secs = tv.tv_sec;
        gmtime_r(&secs, &tm);
        snprintf(tl_ts, sizeof tl_ts, "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
        tl_ts_sec = tv.tv_sec;
    }
    char ts[96];
    size_t tn = strlen(tl_ts);
    memcpy(ts, tl_ts, tn);
    int ms = (int)(tv.tv_usec / 1000);
    ts[tn++] = '.';
    ts[tn++] = (char)('0' + ms / 100);
    ts[tn++] = (char)('0' + ms / 10 % 10);
    ts[tn++] = (char)('0' + ms % 10);
    ts[tn++] = 'Z';
    if (log_format == WEFT_LOG_JSON)
        putc_(&o, '{');
    /* ts and level always fit, so the line never ends right after '{' */
    bool more = put_field(&o, "ts", &WEFT_KV_SLICE("ts", ((weft_str){ts, tn})), true) &&
                put_field(&o, "level", &WEFT_KV_STR("level", level_names[level]), false) &&
                put_field(&o, "msg", &WEFT_KV_STR("msg", msg), false);
    if (more && tl_reqid)
        more = put_field(&o, "request_id",
                         &WEFT_KV_SLICE("request_id", ((weft_str){tl_reqid, tl_reqid_len})), false);
    for (const weft_kv *f = fields; more && f && f->key; f++)
        more = put_field(&o, f->key, f, false);
    /* the reserved room, for the closing marks only */
    o.cap = size;
    if (o.cut) {
        static const char tj[] = ",\"truncated\":true", tt[] = " truncated=true";
        o.cut = false;
        if (log_format == WEFT_LOG_JSON)
            put(&o, tj, sizeof tj - 1);
        else
            put(&o, tt, sizeof tt - 1);
    }
    if (log_format == WEFT_LOG_JSON)
        putc_(&o, '}');
    putc_(&o, '\n');
    return o.n;
}

void weft_log_kv(int level, const char *msg, const weft_kv *fields)
{
    if (level < weft_log_level_ || level < 0 || level > WEFT_LOG_ERROR)
        return;
    char buf[4096];
    out o = {buf, weft_log_format(buf, sizeof buf, level, msg, fields), sizeof buf, false, false};
    size_t off = 0;
    while (off < o.n) {
        ssize_t w = write(log_fd, buf + off, o.n - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        off += (size_t)w;
    }
}
