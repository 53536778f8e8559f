/*
 * buf.h — bounded byte buffers and arenas.
 *
 * weft_buf: a growable byte buffer with a hard cap fixed at init. Readable
 * bytes are data[off .. len); consuming from the front only advances `off`
 * (no memmove per request), and space is reclaimed by compaction when the
 * tail runs out. The buffer owns `data`; weft_buf_release frees it.
 *
 * weft_arena: a bump allocator for per-connection and per-request memory,
 * released all at once with weft_arena_reset/weft_arena_release. Built with
 * WEFT_DEBUG_ALLOC (the sanitizer build) every allocation is its own malloc
 * so ASan sees each object's bounds.
 *
 * Threading: neither type is thread-safe; each belongs to one connection.
 */
#ifndef WEFT_BUF_H
#define WEFT_BUF_H

#include "weft/weft.h"

typedef struct weft_buf {
    char *data;
    size_t off; /* first unread byte */
    size_t len; /* end of written bytes */
    size_t cap; /* allocated size */
    size_t max; /* hard cap on cap */
} weft_buf;

/* Caller-owned struct; no memory is allocated until the first write. */
void weft_buf_init(weft_buf *b, size_t max);
void weft_buf_release(weft_buf *b);

static inline size_t weft_buf_used(const weft_buf *b) { return b->len - b->off; }
static inline char *weft_buf_rptr(const weft_buf *b) { return b->data + b->off; }
static inline char *weft_buf_wptr(const weft_buf *b) { return b->data + b->len; }
static inline size_t weft_buf_avail(const weft_buf *b) { return b->cap - b->len; }

/* Ensure at least n writable bytes at the tail (compacting, then growing up
 * to max). Returns 0 or WEFT_ETOOBIG / WEFT_ENOMEM. */
int weft_buf_reserve(weft_buf *b, size_t n);
/* Append n bytes (reserve + copy). */
int weft_buf_append(weft_buf *b, const void *p, size_t n);
/* Mark n bytes written after writing into weft_buf_wptr(). */
static inline void weft_buf_commit(weft_buf *b, size_t n) { b->len += n; }
/* Drop n bytes from the front; empties reset to offset 0. */
static inline void weft_buf_consume(weft_buf *b, size_t n)
{
    b->off += n;
    if (b->off >= b->len)
        b->off = b->len = 0;
}
/* Move unread bytes to the front. */
void weft_buf_compact(weft_buf *b);
/* Drop everything, keep the allocation. */
static inline void weft_buf_clear(weft_buf *b) { b->off = b->len = 0; }
/* Free the allocation if the buffer is empty (idle connections hold no memory). */
void weft_buf_shrink_if_empty(weft_buf *b);

typedef struct weft_arena_block weft_arena_block;
typedef struct weft_arena {
    weft_arena_block *head;
    size_t block_size;
    size_t max;   /* total bytes cap; allocations beyond it fail */
    size_t total; /* bytes handed out */
} weft_arena;

void weft_arena_init(weft_arena *a, size_t block_size, size_t max);
/* 16-byte aligned memory valid until reset/release; NULL if over max or OOM. */
void *weft_arena_alloc(weft_arena *a, size_t n);
/* Copy bytes into the arena (NUL-terminated for convenience). */
char *weft_arena_strdup(weft_arena *a, const char *p, size_t n);
/* Free everything but keep one block for reuse. */
void weft_arena_reset(weft_arena *a);
void weft_arena_release(weft_arena *a);

#endif
