/*
 * regwatch.h — a service's healthy instances from weft registry, kept
 * fresh by a blocking-query watch. Shared by the gateway's registry
 * discovery and the SDK's client: one implementation of "watch a service".
 *
 * Ownership: the watch belongs to one loop and must be stopped on it. The
 * endpoint array passed to on_update is valid during the call only.
 */
#ifndef WEFT_SDK_REGWATCH_H
#define WEFT_SDK_REGWATCH_H

#include "weft/loop.h"
#include "weft/weft.h"

typedef struct regwatch regwatch;

typedef struct regwatch_ep {
    const char *host; /* the instance's address */
    const char *id;   /* "host:port" ("[v6]:port") */
    uint16_t port;
    uint32_t weight;  /* 1..1000 */
} regwatch_ep;

typedef struct regwatch_cbs {
    /* Every successful answer: the healthy instances (zone preference
     * applied), possibly unchanged since the last call. During the call
     * regwatch_stale() still tells whether the previous query had failed.
     * Callbacks must not stop the watch. */
    void (*on_update)(void *ud, const regwatch_ep *eps, size_t n, uint64_t revision);
    /* The registry failed or answered badly; the watch retries with backoff
     * (100 ms doubling to 2 s). `first` is true for the first failure after
     * a success (the moment the caller's view turns stale). */
    void (*on_error)(void *ud, const char *why, bool first);
    void *ud;
} regwatch_cbs;

/* Parse "http://HOST:PORT[/]" (HOST an IP literal, [v6] bracketed, or a
 * name). *host is malloc'd. 0 or WEFT_EINVAL / WEFT_ENOMEM. */
int regwatch_parse_url(const char *url, char **host, uint16_t *port);

/* Start watching `service` at the registry host:port; with `zone`,
 * instances of that zone are used alone while any is healthy. Strings are
 * copied. The first query goes out at once. NULL on allocation failure. */
regwatch *regwatch_start(weft_loop *loop, const char *host, uint16_t port, const char *service,
                         const char *zone, const regwatch_cbs *cbs);
/* Stop and free (no callback afterwards). NULL is fine. */
void regwatch_stop(regwatch *w);
/* Whether the last query failed (the caller keeps serving its last list). */
bool regwatch_stale(const regwatch *w);

#endif
