/*
 * cache.h — the gateway's in-memory HTTP response cache (RFC 9111 subset).
 *
 * Bounded in bytes (keys + headers + bodies + overhead), evicting by LRU or
 * LFU (configurable). Freshness from Cache-Control s-maxage / max-age (a
 * shared cache prefers s-maxage), else a route default; responses with
 * no-store or private, or with Set-Cookie, or with "Vary: *" are not stored.
 * Vary is honoured: an entry remembers the request header values named by
 * the response's Vary and only matches requests that carry the same values.
 * Requests with Cache-Control: no-store are never answered from cache.
 *
 * Request coalescing: weft_cache_lookup reports a MISS to the first caller
 * for a key (which then fetches and must call weft_cache_fill or
 * weft_cache_abandon) and WAIT to later callers while that fetch is in
 * flight, so one miss goes upstream once; waiters are handed back to the
 * caller by weft_cache_fill/abandon through a callback.
 *
 * Ownership: the cache owns copies of everything stored. A weft_cache_hit
 * holds a reference that keeps its entry alive until weft_cache_hit_release
 * even if it is evicted meanwhile. Threading: one cache per worker thread;
 * no locks.
 */
#ifndef WEFT_GATEWAY_CACHE_H
#define WEFT_GATEWAY_CACHE_H

#include "weft/weft.h"

enum weft_cache_policy { WEFT_CACHE_LRU = 0, WEFT_CACHE_LFU = 1 };

typedef struct weft_cache weft_cache;
typedef struct weft_cache_entry weft_cache_entry;

/* A header list: parallel arrays, as the gateway already holds them. */
typedef struct weft_hdrs {
    const weft_str *names;
    const weft_str *values;
    size_t n;
} weft_hdrs;

weft_cache *weft_cache_new(size_t max_bytes, int policy);
void weft_cache_free(weft_cache *c);

typedef struct weft_cache_stats {
    uint64_t hits, misses, stores, evictions, coalesced;
    size_t bytes, entries;
} weft_cache_stats;
void weft_cache_stats_get(const weft_cache *c, weft_cache_stats *st);

/*
 * Decide whether a response may be stored and for how long.
 * Returns true and *ttl_ms if storable: status 200, 203, 204, 300, 301, 404,
 * 405, 410, 414, 501 (heuristically cacheable) with an explicit or default
 * lifetime > 0; false if no-store, private, no-cache, Set-Cookie, Vary: *,
 * or ttl would be 0.
 */
bool weft_cache_storable(int status, const weft_hdrs *resp, uint64_t default_ttl_ms,
                         uint64_t *ttl_ms);
/* Whether a request may be answered from cache (GET/HEAD, no "no-store"/"no-cache"
 * in its Cache-Control, no Authorization unless allow_auth). */
bool weft_cache_request_ok(int method, const weft_hdrs *req, bool allow_auth);

enum weft_cache_lookup_result { WEFT_CACHE_HIT = 0, WEFT_CACHE_MISS = 1, WEFT_CACHE_WAIT = 2 };

typedef struct weft_cache_hit {
    weft_cache_entry *e;
    int status;
    const weft_str *names;   /* stored response headers */
    const weft_str *values;
    size_t nheaders;
    weft_str body;
    uint64_t age_s;          /* for the Age header */
    /* MISS only: true when this caller now owns the key's fetch and must end
     * it with weft_cache_fill or weft_cache_abandon; false when a fetch by
     * someone else is already in flight (a "fetch alongside": do not
     * abandon, that would release the other fetch's waiters). */
    bool fetcher;
} weft_cache_hit;

/* waiter callback: ok = the fetch filled the entry (then *hit is valid and
 * must be released), or false (the fetch was abandoned: fetch yourself). */
typedef void (*weft_cache_wait_cb)(void *waiter, bool ok, weft_cache_hit *hit);

/*
 * Look up key (method-independent: the caller builds it from host + target)
 * for a request with headers req.
 *   HIT  -> *hit filled (release it when done).
 *   MISS -> caller fetches; if hit->fetcher it then must call
 *           weft_cache_fill() or weft_cache_abandon().
 *   WAIT -> another fetch for this key is in flight; `waiter` will be passed
 *           to cb when it completes (coalescing). Pass waiter == NULL to
 *           disable coalescing for this call (then WAIT is never returned).
 */
int weft_cache_lookup(weft_cache *c, weft_str key, const weft_hdrs *req, uint64_t now_ms,
                      weft_cache_hit *hit, void *waiter, weft_cache_wait_cb cb);
/* Store a fetched response (copies it) for key with the given ttl; the
 * request headers give the Vary values. Wakes waiters with HITs. If the
 * response is not storable, call weft_cache_abandon instead. Returns 0 or
 * WEFT_ETOOBIG (larger than the whole cache: waiters are told to fetch). */
int weft_cache_fill(weft_cache *c, weft_str key, const weft_hdrs *req, int status,
                    const weft_hdrs *resp, weft_str body, uint64_t ttl_ms, uint64_t now_ms);
/* The fetch for key failed or was not storable: waiters are released (ok=false). */
void weft_cache_abandon(weft_cache *c, weft_str key);
/* Drop a waiter that went away before the fetch finished (client disconnected). */
void weft_cache_cancel_wait(weft_cache *c, weft_str key, void *waiter);
void weft_cache_hit_release(weft_cache *c, weft_cache_hit *hit);
/* Remove entries whose lifetime ended (also done lazily by lookup). */
void weft_cache_expire(weft_cache *c, uint64_t now_ms);

#endif
