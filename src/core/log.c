/*
 * log.c — structured log lines in text (key=value) or JSON form.
 *
 * Each line is formatted into a stack buffer and written with a single
 * write(2): lines from different threads never interleave and no lock is
 * needed. Values are escaped so a log line is always one line and always
 * parseable (quotes in text mode when a value has spaces, '=' or quotes;
 * JSON string escaping in JSON mode). Lines longer than the buffer are cut
 * and marked with truncated=true rather than split.
 */
#include "weft/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
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

typedef struct out {
    char *p;
    size_t n, cap;
    bool cut;
} out;

static void put(out *o, const char *s, size_t n)
{
    if (o->n + n > o->cap) {
        n = o->cap - o->n;
        o->cut = true;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

static void putc_(out *o, char c)
{
    if (o->n < o->cap)
        o->p[o->n++] = c;
    else
        o->cut = true;
}

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

static void put_json_str(out *o, const char *s, size_t n)
{
    putc_(o, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            putc_(o, '\\');
            putc_(o, (char)c);
        } else if (c < 0x20 || c == 0x7f) {
            putf(o, "\\u%04x", c);
        } else {
            putc_(o, (char)c);
        }
    }
    putc_(o, '"');
}

static void put_text_str(out *o, const char *s, size_t n)
{
    bool quote = n == 0;
    for (size_t i = 0; i < n && !quote; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c == '"' || c == '=' || c == 0x7f)
            quote = true;
    }
    if (!quote) {
        put(o, s, n);
        return;
    }
    put_json_str(o, s, n); /* JSON escaping is a fine quoting for logfmt too */
}

static void put_str(out *o, const char *s, size_t n)
{
    if (log_format == WEFT_LOG_JSON)
        put_json_str(o, s, n);
    else
        put_text_str(o, s, n);
}

static void put_key(out *o, const char *k, bool first)
{
    if (log_format == WEFT_LOG_JSON) {
        if (!first)
            putc_(o, ',');
        put_json_str(o, k, strlen(k));
        putc_(o, ':');
    } else {
        if (!first)
            putc_(o, ' ');
        put(o, k, strlen(k));
        putc_(o, '=');
    }
}

void weft_log_kv(int level, const char *msg, const weft_kv *fields)
{
    if (level < weft_log_level_ || level < 0 || level > WEFT_LOG_ERROR)
        return;
    char buf[4096];
    out o = {buf, 0, sizeof buf - 32, false};
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    time_t secs = tv.tv_sec;
    gmtime_r(&secs, &tm);
    char ts[40];
    int tn = snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                      tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                      (int)(tv.tv_usec / 1000));
    if (log_format == WEFT_LOG_JSON)
        putc_(&o, '{');
    put_key(&o, "ts", true);
    put_str(&o, ts, (size_t)tn);
    put_key(&o, "level", false);
    put_str(&o, level_names[level], strlen(level_names[level]));
    put_key(&o, "msg", false);
    put_str(&o, msg, strlen(msg));
    if (tl_reqid) {
        put_key(&o, "request_id", false);
        put_str(&o, tl_reqid, tl_reqid_len);
    }
    for (const weft_kv *f = fields; f && f->key; f++) {
        put_key(&o, f->key, false);
        switch (f->type) {
        case WEFT_KV_S:
            if (f->v.s)
                put_str(&o, f->v.s, strlen(f->v.s));
            else
                put(&o, "null", 4);
            break;
        case WEFT_KV_SL: put_str(&o, f->v.sl.p ? f->v.sl.p : "", f->v.sl.n); break;
        case WEFT_KV_I: putf(&o, "%lld", (long long)f->v.i); break;
        case WEFT_KV_U: putf(&o, "%llu", (unsigned long long)f->v.u); break;
        case WEFT_KV_F: putf(&o, "%.6g", f->v.f); break;
        case WEFT_KV_B: put(&o, f->v.b ? "true" : "false", f->v.b ? 4 : 5); break;
        default: put(&o, "null", 4); break;
        }
    }
    /* room was reserved past o.cap for the closing marks */
    o.cap = sizeof buf;
    if (o.cut) {
        static const char tj[] = ",\"truncated\":true", tt[] = " truncated=true";
        if (log_format == WEFT_LOG_JSON)
            put(&o, tj, sizeof tj - 1);
        else
            put(&o, tt, sizeof tt - 1);
    }
    if (log_format == WEFT_LOG_JSON)
        putc_(&o, '}');
    putc_(&o, '\n');
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
