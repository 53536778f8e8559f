/*
 * log.h — structured logging: levels, key=value or JSON lines, request id.
 *
 * A log line is a message plus typed fields:
 *   weft_log(WEFT_LOG_INFO, "listening", WEFT_KV_STR("addr", a), WEFT_KV_INT("workers", n));
 * prints, in text mode,
 *   ts=2026-11-22T10:00:00.123Z level=info msg=listening addr=127.0.0.1:8080 workers=2
 * and in JSON mode one JSON object per line. The request id of the request
 * being handled on this thread (weft_log_set_request_id) is added as
 * request_id=... automatically.
 *
 * Every line is valid logfmt / JSON whatever the input: in JSON mode
 * ill-formed UTF-8 is replaced by U+FFFD and NaN/Inf floats are logged as
 * null. A line longer than 4 KiB is cut after its last complete field (or
 * inside a long string value, between characters, with the quote closed)
 * and ends with truncated=true.
 *
 * Thread-safety: every call may be made from any thread; each line is
 * written with one write(2) so lines never interleave. The level check is a
 * plain load, so disabled levels cost one comparison.
 * Ownership: strings passed in are only read during the call.
 */
#ifndef WEFT_LOG_H
#define WEFT_LOG_H

#include "weft/weft.h"

enum weft_log_level {
    WEFT_LOG_DEBUG = 0,
    WEFT_LOG_INFO = 1,
    WEFT_LOG_WARN = 2,
    WEFT_LOG_ERROR = 3,
    WEFT_LOG_OFF = 4,
};

enum weft_log_format { WEFT_LOG_TEXT = 0, WEFT_LOG_JSON = 1 };

enum weft_kv_type { WEFT_KV_END_ = 0, WEFT_KV_S, WEFT_KV_SL, WEFT_KV_I, WEFT_KV_U, WEFT_KV_F, WEFT_KV_B, WEFT_KV_MS };

typedef struct weft_kv {
    const char *key;
    int type;
    union {
        const char *s;
        weft_str sl;
        int64_t i;
        uint64_t u;
        double f;
        bool b;
    } v;
} weft_kv;

#define WEFT_KV_STR(k, val) ((weft_kv){.key = (k), .type = WEFT_KV_S, .v.s = (val)})
#define WEFT_KV_SLICE(k, val) ((weft_kv){.key = (k), .type = WEFT_KV_SL, .v.sl = (val)})
#define WEFT_KV_INT(k, val) ((weft_kv){.key = (k), .type = WEFT_KV_I, .v.i = (int64_t)(val)})
#define WEFT_KV_UINT(k, val) ((weft_kv){.key = (k), .type = WEFT_KV_U, .v.u = (uint64_t)(val)})
#define WEFT_KV_FLOAT(k, val) ((weft_kv){.key = (k), .type = WEFT_KV_F, .v.f = (double)(val)})
#define WEFT_KV_BOOL(k, val) ((weft_kv){.key = (k), .type = WEFT_KV_B, .v.b = (val)})
/* A duration given in microseconds, written as milliseconds with 3 decimals
 * ("12.345"): exact, and cheaper than a float format. */
#define WEFT_KV_MS(k, usec) ((weft_kv){.key = (k), .type = WEFT_KV_MS, .v.u = (uint64_t)(usec)})

extern int weft_log_level_;

/* Log msg with fields. Fields are a list of WEFT_KV_* values. */
#define weft_log(level, msg, ...)                                                   \
    do {                                                                            \
        if ((int)(level) >= weft_log_level_)                                        \
            weft_log_kv((level), (msg), (const weft_kv[]){__VA_ARGS__ __VA_OPT__(, ) \
                                                          {.key = NULL}});           \
    } while (0)

void weft_log_kv(int level, const char *msg, const weft_kv *fields);

/* Format one line (with its newline) into buf[0..size) exactly as
 * weft_log_kv would write it, regardless of the level filter; returns its
 * length (0 if size < 64). For callers that batch lines themselves, such as
 * the gateway's buffered access log. */
size_t weft_log_format(char *buf, size_t size, int level, const char *msg, const weft_kv *fields);

/* The fd log lines go to (for callers that write formatted lines themselves). */
int weft_log_fd(void);

/* Configuration, normally once at start-up (not thread-safe against logging). */
void weft_log_set_level(int level);
void weft_log_set_format(int format);
void weft_log_set_fd(int fd); /* default 2 (stderr) */
/* Parse "debug|info|warn|error|off" / "text|json"; return -1 if unknown. */
int weft_log_level_from(const char *s);
int weft_log_format_from(const char *s);

/* Request id attached to lines logged on this thread; NULL clears it.
 * The pointer must stay valid until cleared. */
void weft_log_set_request_id(const char *id, size_t len);

#endif
