/*
 * error.c — the error table and small string helpers shared by every module.
 *
 * Error codes come from one X-macro table in weft.h so that the enum, the
 * messages and the errno mapping cannot drift apart.
 */
#include "weft/weft.h"

#include <errno.h>

const char *weft_strerror(int err)
{
    switch (err) {
#define WEFT_ERR_CASE(name, val, msg) \
    case val:                         \
        return msg;
        WEFT_ERRORS(WEFT_ERR_CASE)
#undef WEFT_ERR_CASE
    default:
        return "unknown error";
    }
}

int weft_err_from_errno(int e)
{
    switch (e) {
    case 0: return WEFT_OK;
    case ENOMEM: return WEFT_ENOMEM;
    case EINVAL: return WEFT_EINVAL;
    case EAGAIN: return WEFT_EAGAIN;
    case ECONNRESET:
    case EPIPE: return WEFT_ERESET;
    case ECONNREFUSED: return WEFT_EREFUSED;
    case ETIMEDOUT: return WEFT_ETIMEDOUT;
    case ENOENT: return WEFT_ENOTFOUND;
    case EEXIST:
    case EADDRINUSE: return WEFT_EEXIST;
    case ECANCELED: return WEFT_ECANCELED;
    case EADDRNOTAVAIL:
    case EAFNOSUPPORT: return WEFT_EADDR;
    default: return WEFT_ESYS;
    }
}

static inline unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c | 0x20) : c;
}

bool weft_name_ok(weft_str s, size_t max)
{
    if (s.n == 0 || s.n > max)
        return false;
    for (size_t i = 0; i < s.n; i++) {
        char c = s.p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return false;
    }
    return true;
}

bool weft_str_ieq(weft_str a, weft_str b)
{
    if (a.n != b.n)
        return false;
    for (size_t i = 0; i < a.n; i++)
        if (lower((unsigned char)a.p[i]) != lower((unsigned char)b.p[i]))
            return false;
    return true;
}
