/*
 * events.h — events in and out of Weft services.
 *
 * PRODUCER and CONSUMER wrap librdkafka, so the same code runs against
 * `weft log` on one machine and against a Kafka cluster later: only the
 * broker list changes. Defaults are the safe ones (acks=all, idempotent
 * producer, committed offsets). The producer can be attached to a weft
 * event loop: librdkafka signals its delivery queue through a pipe the
 * loop watches, so delivery callbacks run on the loop's thread with no
 * polling timer.
 *
 * EVENT SOURCING (weft_es): an aggregate is loaded by replaying its stream
 * from weft log's streams API (`weft log --http`), a decision function
 * turns the state into new events, which are appended with the expected
 * version the state was built at; on a conflict (someone appended first)
 * the aggregate is reloaded and the decision made again, up to a bound,
 * with jittered backoff. Event ids are generated once per decision, so a
 * retried append after a lost answer is deduplicated by the server.
 *
 * Ownership: strings and buffers passed in are copied. Results passed to
 * callbacks are valid during the callback. Threading: a producer may be
 * used from any thread (librdkafka's rules); an attached producer delivers
 * on the loop; weft_es belongs to one loop.
 */
#ifndef WEFT_EVENTS_H
#define WEFT_EVENTS_H

#include "weft/loop.h"
#include "weft/weft.h"

#include <jansson.h>

/* ---- producer ---- */

typedef struct weft_producer weft_producer;

typedef struct weft_producer_opts {
    const char *brokers;        /* "host:port[,host:port...]" (required) */
    const char *acks;           /* "all" (default), "1" or "0" */
    bool idempotent;            /* default true (needs acks=all) */
    uint32_t linger_ms;         /* batching delay; default 5 */
    const char *const *config;  /* extra librdkafka settings: "key", "value", ..., NULL */
} weft_producer_opts;
void weft_producer_opts_default(weft_producer_opts *o);

typedef struct weft_event_header {
    const char *key;
    weft_str value; /* value.p == NULL: null */
} weft_event_header;

/* Delivery report: err 0 and the record's partition and offset, or a
 * WEFT_E* code with librdkafka's reason. */
typedef void (*weft_delivery_cb)(int err, const char *reason, int32_t partition, int64_t offset,
                                 void *ud);

/* NULL on error, with a message in err. */
weft_producer *weft_producer_new(const weft_producer_opts *o, char *err, size_t errlen);
/* Queue a record (key may be WEFT_STR_NULL); the callback follows from
 * weft_producer_poll / flush, or on the loop once attached. 0 or a WEFT_E*
 * code (WEFT_ETOOBIG: local queue full). */
int weft_produce(weft_producer *p, const char *topic, weft_str key, weft_str value,
                 const weft_event_header *headers, size_t nheaders, weft_delivery_cb cb, void *ud);
/* Serve delivery callbacks for up to timeout_ms; returns how many ran. */
int weft_producer_poll(weft_producer *p, int timeout_ms);
/* Wait until everything queued is delivered (or timeout): 0 or WEFT_ETIMEDOUT. */
int weft_producer_flush(weft_producer *p, int timeout_ms);
/* Deliver callbacks on this loop from now on (call on the loop's thread). */
int weft_producer_attach(weft_producer *p, weft_loop *loop);
/* Flushes for up to 10 s, then frees: records still undelivered then are
 * purged, and their callbacks run (with an error) before it returns.
 * Detaches first (on the loop's thread). */
void weft_producer_free(weft_producer *p);

/* ---- consumer ---- */

typedef struct weft_consumer weft_consumer;

typedef struct weft_consumer_opts {
    const char *brokers;        /* required */
    const char *group_id;       /* consumer group (required) */
    const char *const *topics;  /* NULL-terminated (required) */
    bool from_beginning;        /* without a committed offset: earliest (default) or latest */
    bool auto_commit;           /* commit consumed offsets every 5 s; default true */
    const char *const *config;  /* extra librdkafka settings: "key", "value", ..., NULL */
} weft_consumer_opts;
void weft_consumer_opts_default(weft_consumer_opts *o);

/* At most this many headers of a message reach the consumer's callback
 * (the first ones, in the order they were produced); more are dropped. */
#define WEFT_EVENT_MAX_HEADERS 64

typedef struct weft_event {
    const char *topic;
    int32_t partition;
    int64_t offset;
    int64_t timestamp_ms;
    weft_str key, value;
    size_t nheaders;                  /* at most WEFT_EVENT_MAX_HEADERS */
    const weft_event_header *headers;
} weft_event;

weft_consumer *weft_consumer_new(const weft_consumer_opts *o, char *err, size_t errlen);
/* Wait up to timeout_ms for one event: 1 (cb ran), 0 (none, or a
 * transient error, which is logged and retried by librdkafka), < 0 a fatal
 * error (WEFT_EIO, say: fenced by another consumer with the same
 * group.instance.id): the consumer is dead, every later poll returns it
 * too; free it and make a new one. */
int weft_consumer_poll(weft_consumer *c, int timeout_ms, void (*cb)(const weft_event *ev, void *ud),
                       void *ud);
/* Commit the offsets of everything consumed so far (synchronously). */
int weft_consumer_commit(weft_consumer *c);
/* Commit, leave the group, free. */
void weft_consumer_free(weft_consumer *c);

/* ---- event sourcing over `weft log --http` ---- */

typedef struct weft_es weft_es;

typedef struct weft_es_event {
    const char *type;
    json_t *data;     /* borrowed */
    json_t *metadata; /* borrowed, may be NULL */
    int64_t version;  /* in the stream, from 0 */
    int64_t position; /* in the whole log */
} weft_es_event;

/* NULL on a bad URL ("http://HOST:PORT") or allocation failure. */
weft_es *weft_es_new(weft_loop *loop, const char *url);
/* Cancels commands in flight (their callbacks do not run). */
void weft_es_free(weft_es *es);

typedef struct weft_es_command {
    const char *stream;
    void *state;                               /* the caller's aggregate */
    void (*reset)(void *state);                /* back to "no events" (before each load) */
    void (*apply)(void *state, const weft_es_event *ev);
    /* New events for the current state (a new reference to a JSON array of
     * {"type", "data", "metadata"?} objects; ids are added), or NULL when
     * there is nothing to append. `version` is -1 for a new stream. */
    json_t *(*decide)(void *state, int64_t version, void *ud);
    /* err 0: appended (version = the stream's last version) or nothing to
     * do; WEFT_EEXIST: still conflicting after max_attempts; other WEFT_E*:
     * transport or server errors (reason says which). */
    void (*done)(int err, const char *reason, int64_t version, int attempts, void *ud);
    void *ud;
    int max_attempts; /* default 10 */
} weft_es_command;

/* Load, decide, append with the expected version, retry on conflict. 0
 * (done will run) or WEFT_EINVAL / WEFT_ENOMEM. */
int weft_es_execute(weft_es *es, const weft_es_command *cmd);

#endif
