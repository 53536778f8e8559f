/*
 * weft.h — the base of libweft: error codes, string slices, version.
 *
 * Every action in libweft returns 0 on success or a negative WEFT_E* code;
 * predicates return bool; I/O returns < 0 error, 0 would-block, > 0 bytes.
 * Strings that cross an API are weft_str (pointer + length), never a guess
 * at NUL termination. A weft_str never owns its bytes: whoever hands one out
 * says how long the bytes stay valid.
 */
#ifndef WEFT_WEFT_H
#define WEFT_WEFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define WEFT_VERSION "0.1.0"

/* X-macro table: name, value, message. Values are stable (they appear in logs). */
#define WEFT_ERRORS(X)                                                     \
    X(WEFT_OK, 0, "success")                                               \
    X(WEFT_ENOMEM, -1, "out of memory")                                    \
    X(WEFT_EINVAL, -2, "invalid argument")                                 \
    X(WEFT_EAGAIN, -3, "would block / incomplete input")                   \
    X(WEFT_EIO, -4, "I/O error")                                           \
    X(WEFT_ECLOSED, -5, "connection closed by peer")                       \
    X(WEFT_ERESET, -6, "connection reset by peer")                         \
    X(WEFT_EREFUSED, -7, "connection refused")                             \
    X(WEFT_ETIMEDOUT, -8, "timed out")                                     \
    X(WEFT_ETOOBIG, -9, "too large")                                       \
    X(WEFT_EPROTO, -10, "protocol error")                                  \
    X(WEFT_ECONFIG, -11, "configuration error")                            \
    X(WEFT_ENOTFOUND, -12, "not found")                                    \
    X(WEFT_EEXIST, -13, "already exists")                                  \
    X(WEFT_ECANCELED, -14, "canceled")                                     \
    X(WEFT_ESYS, -15, "system call failed (see errno)")                    \
    X(WEFT_EUNSUPPORTED, -16, "not supported")                             \
    X(WEFT_EADDR, -17, "bad address")                                      \
    X(WEFT_ECIRCUIT, -18, "circuit breaker open")                          \
    X(WEFT_ENOHOST, -19, "no healthy instance")

enum weft_error {
#define WEFT_ERR_ENUM(name, val, msg) name = val,
    WEFT_ERRORS(WEFT_ERR_ENUM)
#undef WEFT_ERR_ENUM
};

/* Human-readable message for a WEFT_E* code; never NULL. Thread-safe. */
const char *weft_strerror(int err);

/* Map an errno value to the closest WEFT_E* code. */
int weft_err_from_errno(int e);

/* A borrowed byte slice. */
typedef struct weft_str {
    const char *p;
    size_t n;
} weft_str;

#define WEFT_STR(lit) ((weft_str){(lit), sizeof(lit) - 1})
#define WEFT_STR_NULL ((weft_str){NULL, 0})

static inline weft_str weft_str_from(const char *s)
{
    return (weft_str){s, s ? strlen(s) : 0};
}

static inline bool weft_str_eq(weft_str a, weft_str b)
{
    return a.n == b.n && (a.n == 0 || memcmp(a.p, b.p, a.n) == 0);
}

/* ASCII case-insensitive equality (header names, tokens). */
bool weft_str_ieq(weft_str a, weft_str b);

/* The value of a hexadecimal digit (either case), or -1. */
static inline int weft_hexval(int c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* 1..max bytes, each a letter, digit, '.', '_', ':' or '-': the names of
 * services, instances and event streams. */
bool weft_name_ok(weft_str s, size_t max);
/* A copy of s[0..n) in which every ill-formed UTF-8 sequence (RFC 3629)
 * is replaced by U+FFFD, for text from outside (file names, peers) that
 * must go into JSON. malloc'd and NUL-terminated, owned by the caller;
 * NULL when out of memory. */
char *weft_utf8_lossy(const char *s, size_t n);

#define WEFT_UNUSED(x) ((void)(x))
#define WEFT_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#if defined(__GNUC__)
#define WEFT_LIKELY(x) __builtin_expect(!!(x), 1)
#define WEFT_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define WEFT_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define WEFT_LIKELY(x) (x)
#define WEFT_UNLIKELY(x) (x)
#define WEFT_PRINTF(a, b)
#endif

#endif
