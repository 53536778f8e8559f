/*
 * buf.c — bounded buffers and bump arenas (see buf.h).
 *
 * Growth doubles up to the cap; compaction happens only when the tail is
 * short, so steady-state keep-alive traffic never moves bytes. The arena
 * keeps its first block across resets so a request that fits in it costs
 * no malloc at all.
 */
#include "weft/buf.h"

#include <stdlib.h>

void weft_buf_init(weft_buf *b, size_t max)
{
    b->data = NULL;
    b->off = b->len = b->cap = 0;
    b->max = max;
}

void weft_buf_release(weft_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->off = b->len = b->cap = 0;
}

void weft_buf_compact(weft_buf *b)
{
    if (b->off == 0)
        return;
    size_t used = b->len - b->off;
    if (used)
        memmove(b->data, b->data + b->off, used);
    b->off = 0;
    b->len = used;
}

void weft_buf_shrink_if_empty(weft_buf *b)
{
    if (b->data && b->off == b->len)
        weft_buf_release(b);
}

int weft_buf_reserve(weft_buf *b, size_t n)
{
    if (b->cap - b->len >= n)
        return 0;
    size_t used = b->len - b->off;
    /* written as a subtraction: used + n can wrap for huge n */
    if (used > b->max || n > b->max - used)
        return WEFT_ETOOBIG;
    if (b->off && b->cap - used >= n) {
        weft_buf_compact(b);
        return 0;
    }
    size_t ncap = b->cap ? b->cap : 4096;
    while (ncap < used + n) {
        if (ncap > b->max / 2) { /* doubling would pass the cap (or wrap) */
            ncap = b->max;
            break;
        }
        ncap *= 2;
    }
    if (ncap > b->max)
        ncap = b->max;
    weft_buf_compact(b);
    char *nd = realloc(b->data, ncap);
    if (!nd)
        return WEFT_ENOMEM;
    b->data = nd;
    b->cap = ncap;
    return 0;
}

int weft_buf_append(weft_buf *b, const void *p, size_t n)
{
    int rc = weft_buf_reserve(b, n);
    if (rc < 0)
        return rc;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

/* ---- arena ---- */

struct weft_arena_block {
    weft_arena_block *next;
    size_t size, used;
    _Alignas(16) unsigned char mem[];
};

void weft_arena_init(weft_arena *a, size_t block_size, size_t max)
{
    a->head = NULL;
    a->block_size = block_size ? block_size : 4096;
    a->max = max;
    a->total = 0;
}

void *weft_arena_alloc(weft_arena *a, size_t n)
{
    /* Every size below is checked by subtraction so nothing can wrap: the
     * rounded size, total + need, and the block header + size passed to
     * malloc. */
    if (n > SIZE_MAX - sizeof(weft_arena_block) - 16)
        return NULL;
    size_t need = (n + 15) & ~(size_t)15;
    if (a->total > a->max || need > a->max - a->total)
        return NULL;
#ifdef WEFT_DEBUG_ALLOC
    weft_arena_block *b = malloc(sizeof *b + n);
    if (!b)
        return NULL;
    b->size = b->used = n;
    b->next = a->head;
    a->head = b;
    a->total += need;
    return b->mem;
#else
    weft_arena_block *b = a->head;
    if (!b || b->size - b->used < need) {
        size_t sz = need > a->block_size ? need : a->block_size;
        if (sz > SIZE_MAX - sizeof *b)
            return NULL;
        b = malloc(sizeof *b + sz);
        if (!b)
            return NULL;
        b->size = sz;
        b->used = 0;
        b->next = a->head;
        a->head = b;
    }
    void *p = b->mem + b->used;
    b->used += need;
    a->total += need;
    return p;
#endif
}

char *weft_arena_strdup(weft_arena *a, const char *p, size_t n)
{
    char *d = weft_arena_alloc(a, n + 1);
    if (!d)
        return NULL;
    if (n)
        memcpy(d, p, n);
    d[n] = '\0';
    return d;
}

void weft_arena_reset(weft_arena *a)
{
    weft_arena_block *b = a->head;
    if (!b)
        return;
#ifdef WEFT_DEBUG_ALLOC
    weft_arena_release(a);
#else
    /* keep the oldest block (the last in the list): it is the first-sized one */
    weft_arena_block *keep = NULL;
    while (b) {
        weft_arena_block *next = b->next;
        if (!next && b->size == a->block_size) {
            keep = b;
        } else {
            free(b);
        }
        b = next;
    }
    if (keep) {
        keep->used = 0;
        keep->next = NULL;
    }
    a->head = keep;
    a->total = 0;
#endif
}

void weft_arena_release(weft_arena *a)
{
    weft_arena_block *b = a->head;
    while (b) {
        weft_arena_block *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
    a->total = 0;
}
