/*
 * etcd.h — the registry's etcd store: `--store etcd://HOST:PORT,...`.
 *
 * Registry state lives in an etcd v3 cluster, spoken to through etcd's
 * JSON gateway with Weft's own non-blocking HTTP client. The local
 * reg_store becomes a mirror of it: listed at start, then kept current
 * by a watch, so every read (lists, blocking queries, SSE, DNS, Consul
 * and Prometheus views) is served locally and several registry nodes
 * serve the same registry. Writes go to etcd and are answered once this
 * node's mirror has applied them (read-your-writes on the node that took
 * the write). See etcd.c for the key layout and the failure handling.
 *
 * Ownership: a reg_etcd belongs to the registry's loop and reads and
 * writes the store it was started with; every call is on that loop.
 * Strings passed in are copied; JSON bodies are borrowed for the call.
 */
#ifndef WEFT_REGISTRY_ETCD_H
#define WEFT_REGISTRY_ETCD_H

#include "store.h"
#include "weft/loop.h"

#define REG_ETCD_MAX_ENDPOINTS 16

typedef struct reg_etcd_url {
    char host[REG_ETCD_MAX_ENDPOINTS][256];
    uint16_t port[REG_ETCD_MAX_ENDPOINTS];
    size_t n;
    char prefix[128]; /* "/weft/registry" unless the URL has a path */
} reg_etcd_url;

/* Parse "etcd://HOST[:PORT][,HOST[:PORT]...][/PREFIX]" (port 2379 by
 * default, IPv6 as [ADDR]:PORT). 0, or WEFT_EINVAL with the reason in why. */
int reg_etcd_parse_url(const char *url, reg_etcd_url *out, char *why, size_t whylen);

typedef struct reg_etcd reg_etcd;

/* The mirror changed (watch events or a re-list were applied). */
typedef void (*reg_etcd_changed_fn)(void *ud);

/* Start listing and watching on loop. The store must be empty. */
int reg_etcd_start(const reg_etcd_url *url, reg_store *store, weft_loop *loop,
                   reg_etcd_changed_fn changed, void *ud, reg_etcd **out);
/* Cancel everything: pending operations complete with WEFT_ECANCELED. */
void reg_etcd_free(reg_etcd *e);
/* The first listing is in the mirror. */
bool reg_etcd_ready(const reg_etcd *e);

/* Completion of an operation, on the loop: rc 0, WEFT_ENOTFOUND (no such
 * instance, or its lease is gone: register again), WEFT_EAGAIN (lost a
 * race with concurrent updates too often), WEFT_ECANCELED (shutting
 * down) or another WEFT_E* (etcd unreachable: every endpoint failed for
 * the operation's whole time budget). rev: the revision to report;
 * changed: something visible changed; ttl_ms: a heartbeat's granted TTL. */
typedef void (*reg_etcd_done_fn)(void *ud, int rc, uint64_t rev, bool changed,
                                 uint64_t ttl_ms);

/* Register or replace: reg (the validated registration JSON, borrowed)
 * is stored as the value; in is its parsed form. With a TTL the
 * instance gets an etcd lease of its own. cb may be NULL. */
void reg_etcd_register(reg_etcd *e, const char *svc, const char *id, json_t *reg,
                       const reg_input *in, reg_etcd_done_fn cb, void *ud);
void reg_etcd_deregister(reg_etcd *e, const char *svc, const char *id, reg_etcd_done_fn cb,
                         void *ud);
/* Keep the instance's lease alive (a heartbeat). */
void reg_etcd_heartbeat(reg_etcd *e, const char *svc, const char *id, reg_etcd_done_fn cb,
                        void *ud);
void reg_etcd_set_status(reg_etcd *e, const char *svc, const char *id, int status,
                         reg_etcd_done_fn cb, void *ud);

#endif
