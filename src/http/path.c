/*
 * path.c — request path normalization (RFC 3986 6.2.2), for proxies.
 *
 * A proxy that routes (and authorizes) by path prefix must see the path the
 * way the server behind it will: `/public/../admin/x`, `/%61dmin/x` and
 * `//admin/x` all name `/admin/x` to most origin servers, and would slip
 * past a route on `/admin/`. So the path is put in its normal form before
 * matching and the normal form is what goes upstream, as Envoy does with
 * normalize_path and merge_slashes (both recommended there) and nginx by
 * default.
 *
 * Three steps, in one pass each: percent-encoded *unreserved* characters
 * (ALPHA DIGIT - . _ ~) are decoded, since they are equivalent by
 * definition; escapes of anything else (%2F, %25, %3F...) are kept, since
 * decoding those changes the meaning. Dot segments are removed with RFC
 * 3986 5.2.4's algorithm, never climbing above the root. Optionally, runs
 * of '/' become one. The common case — nothing to do — is one scan with no
 * writes (weft_http_path_normal), so the gateway pays a few ns per request.
 */
#include "weft/http.h"

#include <string.h>

static bool unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

/* The character %XX at p[i] stands for, if it is an unreserved one; else -1. */
static int unreserved_escape(weft_str p, size_t i)
{
    if (i + 2 >= p.n)
        return -1;
    int hi = weft_hexval((unsigned char)p.p[i + 1]), lo = weft_hexval((unsigned char)p.p[i + 2]);
    if (hi < 0 || lo < 0)
        return -1;
    int c = hi << 4 | lo;
    return unreserved((unsigned char)c) ? c : -1;
}

bool weft_http_path_normal(weft_str p, bool merge_slashes)
{
    for (size_t i = 0; i < p.n; i++) {
        char c = p.p[i];
        if (c == '%' && unreserved_escape(p, i) >= 0)
            return false;
        if (c != '/')
            continue;
        /* a segment "." or "..", or an empty one inside the path */
        size_t j = i + 1;
        if (j < p.n && p.p[j] == '.') {
            size_t k = j + 1;
            if (k < p.n && p.p[k] == '.')
                k++;
            if (k == p.n || p.p[k] == '/')
                return false;
        }
        if (merge_slashes && j < p.n && p.p[j] == '/')
            return false;
    }
    return true;
}

size_t weft_http_path_normalize(weft_str p, bool merge_slashes, char *out)
{
    /* 1: decode unreserved escapes (the result is never longer) */
    size_t n = 0;
    for (size_t i = 0; i < p.n; i++) {
        int c = p.p[i] == '%' ? unreserved_escape(p, i) : -1;
        if (c >= 0) {
            out[n++] = (char)c;
            i += 2;
        } else {
            out[n++] = p.p[i];
        }
    }
    if (!n || out[0] != '/')
        return n; /* asterisk-form and the like: nothing more to do */
    /* 2 and 3: walk the segments of out[0..n), writing in place behind the
     * read position (o <= i always) */
    size_t o = 0, i = 0;
    while (i < n) {
        size_t j = i + 1; /* out[i] == '/' */
        while (j < n && out[j] != '/')
            j++;
        size_t len = j - i - 1;
        const char *seg = out + i + 1;
        bool last = j == n;
        if ((len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.')) {
            if (len == 2) { /* drop the last segment written, never the root */
                while (o > 0 && out[o - 1] != '/')
                    o--;
                if (o > 0)
                    o--;
            }
            if (last)
                out[o++] = '/'; /* "/a/." and "/a/b/.." end in a directory */
        } else if (len == 0 && merge_slashes && !last) {
            /* an empty segment: "//" */
        } else {
            memmove(out + o, out + i, len + 1);
            o += len + 1;
        }
        i = j;
    }
    if (!o)
        out[o++] = '/';
    return o;
}
