/*
 * store.h — the registry's model: services, instances, revisions, TTL
 * leases, the change history watchers read from, and self-preservation.
 *
 * Pure state with time passed in (milliseconds, monotonic): no I/O, no
 * loop, so every rule is unit-testable and the HTTP, DNS and compatibility
 * layers all read the same thing.
 *
 * Revisions: one counter for the whole registry, bumped by every change
 * (register or update with a difference, deregister, status change,
 * expiry); each service remembers the revision of its last change.
 * Heartbeats change nothing visible and so bump nothing: watchers wake only
 * for real changes. The last `history` changes are retained in order; a
 * watcher that asks for an older revision must re-list.
 *
 * With the etcd store (etcd.h) the store is a mirror: changes are applied
 * with etcd's revisions (reg_apply_*), which have gaps, and etcd, not the
 * sweep, expires leases.
 *
 * Ownership: the store owns everything in it; pointers it hands out are
 * valid until the next call that modifies the store. Threading: one thread.
 */
#ifndef WEFT_REGISTRY_STORE_H
#define WEFT_REGISTRY_STORE_H

#include "weft/weft.h"

#include <jansson.h>

enum reg_status { REG_UP = 0, REG_DOWN, REG_OUT_OF_SERVICE, REG_STARTING };
const char *reg_status_name(int status);
int reg_status_from(const char *s); /* -1 if unknown */

/* An active health check the registry runs against an instance (Consul
 * semantics: the instance is unhealthy while its check is critical). The
 * store keeps the definition and the state; api.c runs the probes. */
enum reg_check_kind { REG_CHECK_NONE = 0, REG_CHECK_HTTP, REG_CHECK_TCP };
typedef struct reg_check {
    int kind;
    char *target; /* HTTP: "/path" on the instance or "http://host:port/path";
                     TCP: "" (the instance's address:port) or "host:port" */
    uint32_t interval_ms, timeout_ms;
    uint8_t failures, successes; /* consecutive results needed to flip */
    uint32_t deregister_after_ms; /* critical this long: deregistered; 0 = never */
    bool passing;                /* input: the initial state; instance: the current one */
    /* prober bookkeeping (api.c) */
    uint8_t ok_streak, fail_streak;
    uint64_t next_ms;
    uint64_t critical_since_ms; /* 0 while passing or not yet seen */
    uint64_t probe_id; /* the probe in flight, 0 if none */
} reg_check;

/* Split an HTTP check target into host, port and path for the instance at
 * addr:port. 0, or WEFT_EINVAL. */
int reg_check_http_split(const char *target, const char *addr, uint16_t port, char *host,
                         size_t hostlen, uint16_t *oport, const char **path);
/* The check as JSON (definition plus "status"), new reference. */
json_t *reg_check_json(const reg_check *c);

typedef struct reg_instance {
    char *service;
    char *id;
    char *address;
    uint16_t port;
    char **tags;
    size_t ntags;
    json_t *meta; /* object of string values */
    char *zone;
    char *version;
    uint32_t weight;
    int status;
    uint64_t ttl_ms;     /* 0: no lease, removed only by deregistration */
    uint64_t expires_ms; /* lease deadline */
    uint64_t create_rev, mod_rev;
    bool expired;        /* lease ran out but self-preservation kept it */
    uint64_t journaled_expires_ms; /* persistence: the lease deadline last written */
    reg_check *check; /* NULL without an active check */
    uint64_t lease_id; /* etcd store: the etcd lease that keeps it (0: none); etcd
                          expires it, so expires_ms is then never reached here */
} reg_instance;

enum reg_event_kind { REG_EV_PUT = 1, REG_EV_DELETE = 2 };

typedef struct reg_event {
    uint64_t rev;
    int kind;
    char *service;
    char *id;
    char *json; /* the instance as JSON (PUT) or {"service","id"} (DELETE) */
} reg_event;

typedef struct reg_store reg_store;

typedef struct reg_store_opts {
    size_t history;                /* retained changes; default 10000 */
    double preservation_threshold; /* 0.15: stop evicting above this share */
    size_t preservation_min;       /* only with at least this many leases; default 10 */
    uint64_t sweep_window_ms;      /* expiries counted per window; default 1000 */
} reg_store_opts;
void reg_store_opts_default(reg_store_opts *o);

reg_store *reg_store_new(const reg_store_opts *o);
void reg_store_free(reg_store *s);

/* Validated input for a registration. Strings are copied. */
typedef struct reg_input {
    const char *address;
    int64_t port;     /* 1..65535 */
    const char *const *tags;
    size_t ntags;
    json_t *meta;     /* borrowed; object of strings or NULL */
    const char *zone;
    const char *version;
    int64_t weight;   /* 1..1000, default 1 */
    int status;       /* default REG_UP */
    uint64_t ttl_ms;  /* 0 = no lease */
    reg_check check;  /* kind REG_CHECK_NONE: no check; target borrowed */
} reg_input;

/* Parse and validate a JSON registration body. On error returns
 * WEFT_EINVAL and a message ("port: must be 1-65535") in why. Unknown
 * fields are errors. in->meta borrows from body. in->ntags is set but
 * in->tags is left NULL: the caller points it at an array of the strings
 * of body["tags"] (validated here) before reg_put. */
int reg_input_from_json(json_t *body, reg_input *in, char *why, size_t whylen);
/* A duration as text: "10s", "500ms", "2m", or (bare_ok) bare seconds
 * ("2.5"). false for anything else (negative, nan, other units, junk). */
bool reg_duration_text(const char *s, bool bare_ok, double *secs);
/* Validate a service name or instance id: 1-200 chars of [A-Za-z0-9._:-]. */
bool reg_name_ok(const char *s);

/* Register or replace. Returns the new global revision if something
 * changed, 0 if the registration was identical (a re-register refreshes the
 * lease only), or WEFT_ENOMEM. */
int64_t reg_put(reg_store *s, const char *service, const char *id, const reg_input *in,
                uint64_t now_ms);
/* Whether registering x again would change nothing visible about in (the
 * check's definition is compared, not its state). */
bool reg_input_matches(const reg_instance *in, const reg_input *x);
/* Deregister. Revision, or WEFT_ENOTFOUND. */
int64_t reg_delete(reg_store *s, const char *service, const char *id);

/* Mirror of an external store (the etcd store): apply a change that
 * happened there at revision mod_rev (which becomes the registry revision
 * if higher; revisions may have gaps but must not go back, except below
 * the history floor, see reg_history_reset). The instance keeps the given
 * create revision and lease, takes the check state from in->check.passing,
 * and never expires locally. Re-applying the same mod_rev is a no-op (0).
 * Revision, 0, or WEFT_ENOMEM / WEFT_ENOTFOUND. */
int64_t reg_apply_put(reg_store *s, const char *service, const char *id, const reg_input *in,
                      uint64_t create_rev, uint64_t mod_rev, uint64_t lease, uint64_t now_ms);
int64_t reg_apply_delete(reg_store *s, const char *service, const char *id, uint64_t rev);
/* Forget the change history up to rev and raise the registry revision and
 * every service's to it (at least): watchers behind it must re-list, and
 * changes applied at or below it afterwards are not recorded (a snapshot
 * being loaded). */
void reg_history_reset(reg_store *s, uint64_t rev);
/* The instance's registration fields (the reg_input_from_json input that
 * recreates it, the check with its current state as the initial one); new
 * reference. */
json_t *reg_instance_body(const reg_instance *in);
/* Renew the lease. 0, or WEFT_ENOTFOUND (the client must register again). */
int reg_heartbeat(reg_store *s, const char *service, const char *id, uint64_t now_ms);
/* Set the status. Revision (0 if unchanged), or WEFT_ENOTFOUND. */
int64_t reg_set_status(reg_store *s, const char *service, const char *id, int status,
                       uint64_t now_ms);

/* Record a check result that flips the state (passing or critical).
 * Revision (0 if unchanged or the instance has no check), or
 * WEFT_ENOTFOUND. */
int64_t reg_set_check(reg_store *s, const char *service, const char *id, bool passing,
                      uint64_t now_ms);

/* Restore: set an instance's lease deadline (replay of a journal). */
void reg_set_expiry(reg_store *s, const char *service, const char *id, uint64_t expires_ms);
/* Restore: raise the global revision to rev, and every service's revision
 * with it (clients holding an older index re-read after a restart). */
void reg_restore_revision(reg_store *s, uint64_t rev);
/* Mutable access for the persistence layer's bookkeeping fields. */
reg_instance *reg_find_mut(reg_store *s, const char *service, const char *id);

/* Expire leases (call every ~100 ms). Returns how many instances were
 * removed; honours self-preservation. */
size_t reg_sweep(reg_store *s, uint64_t now_ms);
bool reg_self_preservation(const reg_store *s);

uint64_t reg_revision(const reg_store *s);
/* Revision of the service's last change (0 if it never existed). */
uint64_t reg_service_revision(const reg_store *s, const char *service);

/* Iteration. */
size_t reg_service_count(const reg_store *s);
const char *reg_service_at(const reg_store *s, size_t i, size_t *ninstances);
size_t reg_instances(const reg_store *s, const char *service, const reg_instance ***out);
const reg_instance *reg_find(const reg_store *s, const char *service, const char *id);
size_t reg_instance_total(const reg_store *s);

/* An instance is healthy when UP, its lease has not run out and its check
 * (if any) is passing. */
bool reg_instance_healthy(const reg_instance *in, uint64_t now_ms);
/* The instance as a JSON object (new reference). */
json_t *reg_instance_json(const reg_instance *in, uint64_t now_ms);

/* History: events with rev > since, oldest first, at most max. Returns the
 * count, or WEFT_ETOOBIG if `since` is older than the retained history
 * (the caller must re-list). */
int64_t reg_changes(const reg_store *s, uint64_t since, const reg_event **out, size_t max);

#endif
