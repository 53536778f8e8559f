/*
 * elog.h — internals of `weft log`, the Kafka-protocol event log.
 *
 * One loop owns everything (topics, partitions, groups, connections), as
 * the registry does: the produce path takes no lock at all; fsync runs on
 * each partition's flusher thread (src/eventlog/plog.c) and reports back to
 * the loop. Modules:
 *   broker.c  connections, framing, the in-order response queue, sendfile
 *   topics.c  the topic catalogue: partitions (plogs), config, persistence
 *   kapi.c    the Kafka APIs except groups
 *   group.c   the consumer group coordinator and committed offsets
 *
 * Ownership: the broker owns topics, groups and connections; a kreq belongs
 * to its connection and is freed after its response is written (or when
 * the connection dies, after its cancel hook ran).
 */
#ifndef WEFT_EVENTLOG_ELOG_H
#define WEFT_EVENTLOG_ELOG_H

#include "eventlog/plog.h"
#include "kafka/wire.h"
#include "weft/buf.h"
#include "weft/loop.h"
#include "weft/metrics.h"

#include <jansson.h>

/* Kafka error codes (Errors.java). */
enum {
    KE_NONE = 0,
    KE_OFFSET_OUT_OF_RANGE = 1,
    KE_CORRUPT_MESSAGE = 2,
    KE_UNKNOWN_TOPIC_OR_PARTITION = 3,
    KE_INVALID_FETCH_SIZE = 4,
    KE_LEADER_NOT_AVAILABLE = 5,
    KE_REQUEST_TIMED_OUT = 7,
    KE_MESSAGE_TOO_LARGE = 10,
    KE_COORDINATOR_NOT_AVAILABLE = 15,
    KE_NOT_COORDINATOR = 16,
    KE_INVALID_TOPIC_EXCEPTION = 17,
    KE_INVALID_REQUIRED_ACKS = 21,
    KE_ILLEGAL_GENERATION = 22,
    KE_INCONSISTENT_GROUP_PROTOCOL = 23,
    KE_INVALID_GROUP_ID = 24,
    KE_UNKNOWN_MEMBER_ID = 25,
    KE_INVALID_SESSION_TIMEOUT = 26,
    KE_REBALANCE_IN_PROGRESS = 27,
    KE_INVALID_COMMIT_OFFSET_SIZE = 28,
    KE_UNSUPPORTED_VERSION = 35,
    KE_TOPIC_ALREADY_EXISTS = 36,
    KE_INVALID_PARTITIONS = 37,
    KE_INVALID_REPLICATION_FACTOR = 38,
    KE_INVALID_REQUEST = 42,
    KE_INVALID_CONFIG = 40,
    KE_POLICY_VIOLATION = 44,
    KE_OUT_OF_ORDER_SEQUENCE_NUMBER = 45,
    KE_DUPLICATE_SEQUENCE_NUMBER = 46,
    KE_INVALID_PRODUCER_EPOCH = 47,
    KE_UNKNOWN_PRODUCER_ID = 59,
    KE_GROUP_ID_NOT_FOUND = 69,
    KE_NON_EMPTY_GROUP = 68,
    KE_INVALID_RECORD = 87,
};

/* Kafka API keys. */
enum {
    KA_PRODUCE = 0,
    KA_FETCH = 1,
    KA_LIST_OFFSETS = 2,
    KA_METADATA = 3,
    KA_OFFSET_COMMIT = 8,
    KA_OFFSET_FETCH = 9,
    KA_FIND_COORDINATOR = 10,
    KA_JOIN_GROUP = 11,
    KA_HEARTBEAT = 12,
    KA_LEAVE_GROUP = 13,
    KA_SYNC_GROUP = 14,
    KA_DESCRIBE_GROUPS = 15,
    KA_LIST_GROUPS = 16,
    KA_API_VERSIONS = 18,
    KA_CREATE_TOPICS = 19,
    KA_DELETE_TOPICS = 20,
    KA_INIT_PRODUCER_ID = 22,
};

typedef struct elog elog;
typedef struct kconn kconn;
typedef struct kreq kreq;
typedef struct ktopic ktopic;
typedef struct kpart kpart;
typedef struct kgroups kgroups;

/* ---- options ---- */
typedef struct elog_topic_conf {
    int32_t partitions;   /* for auto-created topics: default 1 */
    plog_opts log;
} elog_topic_conf;

typedef struct elog_opts {
    const char *data_dir;       /* required */
    const char *advertise_host; /* Metadata's broker host; default the listen host */
    int32_t advertise_port;
    bool auto_create;           /* default true */
    elog_topic_conf defaults;
    size_t max_request;         /* default 100 MiB (Kafka's socket.request.max.bytes) */
    uint32_t group_initial_delay_ms; /* default 3000 (group.initial.rebalance.delay.ms) */
    uint32_t retention_check_ms;     /* default 30000 (log.retention.check.interval.ms) */
} elog_opts;
void elog_opts_default(elog_opts *o);

/* ---- a request and its response ---- */

/* A response is a sequence of parts: bytes from kreq->out, or a file range
 * sent with sendfile (fetched records). */
typedef struct kpartv {
    bool file;
    size_t mem_off, mem_len; /* bytes of out */
    plog_slice slice;
} kpartv;

struct kreq {
    kreq *next;
    kconn *c;
    int16_t api_key, api_version;
    int32_t corr;
    char client_id[128]; /* from the request header (truncated) */
    bool done;        /* response complete, may be sent when at the head */
    bool no_response; /* acks=0 produce */
    bool failed;      /* close the connection instead of answering */
    uint64_t start_us; /* when it was read (weft_now_us), for the duration histograms */
    weft_buf out;     /* [size placeholder][correlation id][body...] */
    kf_writer w;
    kpartv *parts;
    size_t nparts, cap_parts, cut; /* cut: out bytes already covered by parts */
    /* sending */
    size_t part_i, part_off;
    /* async completion (produce durability, fetch long-poll, group barriers) */
    int waits;                     /* outstanding waits; done when it reaches 0 */
    void (*cancel)(kreq *q);       /* connection died while parked: unlink q from every
                                      list that holds it (it is freed after) */
    void *state;
};

/* Start the response body (after the header); used by every handler. */
kf_writer *kreq_writer(kreq *q);
/* Append a file range to the response (fetch records); takes the slice. */
void kreq_add_slice(kreq *q, plog_slice *s);
/* Finish: the response may go out once the requests before it have. */
void kreq_complete(kreq *q);

/* ---- the broker ---- */
struct elog {
    elog_opts o;
    weft_loop *loop;
    char *data_dir;
    char adv_host[256];
    int32_t adv_port;
    /* topics */
    ktopic **topics;
    size_t ntopics, cap_topics;
    weft_timer retention_timer;
    /* producers */
    int64_t next_producer_id;
    /* groups */
    kgroups *groups;
    /* connections */
    kconn *conns;
    size_t nconns;
    bool draining;
    void (*drained)(weft_loop *loop, void *ud); /* elog_drain_then */
    void *drained_ud;
    /* metrics */
    weft_metrics *m;
    weft_metric m_requests, m_produced_records, m_produced_bytes, m_fetched_bytes, m_conns,
        m_errors, m_produce_dur, m_fetch_dur;
};

/* ---- topics.c ---- */

/* An idempotent producer's recent batches on one partition (Kafka keeps
 * the last 5: a retried batch is answered with its original offset). */
#define ELOG_PRODUCER_BATCHES 5
struct pstate {
    struct pstate *next;
    int64_t pid;
    int16_t epoch;
    int n, head; /* ring of the last n batches, newest at head */
    struct {
        int32_t first_seq, last_seq;
        int64_t base_offset;
    } b[ELOG_PRODUCER_BATCHES];
};

struct kpart {
    ktopic *t;
    int32_t index;
    plog *log;
    /* produce requests waiting for durability, in offset order */
    struct pwait *waits_head, *waits_tail;
    /* fetch requests parked on this partition */
    struct fwait *fetchers;
    /* idempotent producers */
    struct pstate *producers;
};

struct ktopic {
    char *name;
    int32_t npart;
    kpart *parts;
    elog_topic_conf conf;
};

/* Topic names: 1-249 of [A-Za-z0-9._-], not "." or "..". */
bool elog_topic_name_ok(weft_str name);
ktopic *elog_topic_find(elog *e, weft_str name);
/* Create a topic (directories, config file, partition logs). 0 or a
 * KE_* error code (positive) on a bad request, or a WEFT_E* on I/O. */
int elog_topic_create(elog *e, weft_str name, int32_t partitions, const elog_topic_conf *conf,
                      ktopic **out);
/* Open every topic found in the data directory. */
int elog_topics_load(elog *e);
void elog_topics_close(elog *e);
int elog_topic_delete(elog *e, ktopic *t);
/* Complete q (one of its waits) once p is durable up to end. err_at: the
 * position in q's response of the partition's error code (int16, then the
 * int64 base offset), set to KAFKA_STORAGE_ERROR and -1 if the partition's
 * log fails before then. WEFT_EIO if it has already failed, WEFT_ENOMEM. */
int elog_wait_durable(kpart *p, kreq *q, int64_t end, size_t err_at);
/* Call fn(ud) on the loop once p is durable up to end (waits complete in
 * FIFO order; a wait is never cancelled, and is dropped without a call if
 * the topic closes first), or once its log has failed (plog_failed: fn
 * compares plog_durable_offset with end). 0, WEFT_EIO (it has already
 * failed) or WEFT_ENOMEM. */
int elog_wait_durable_fn(kpart *p, int64_t end, void (*fn)(void *ud), void *ud);
/* Topics named __weft_* belong to the broker itself (the streams log):
 * Kafka clients may read them by name but not produce to, create or
 * delete them, and all-topics Metadata does not list them. */
bool elog_topic_internal(weft_str name);
/* A partition's durable callback -> produce requests waiting on it. */
void elog_part_durable(plog *l, int64_t durable_end, void *ud);

/* ---- kapi.c ---- */
/* Handle one request (header parsed, body in r): checks the API version,
 * then dispatches (group APIs to group.c). */
void elog_handle(elog *e, kreq *q, kf_reader *r);
/* A request that cannot be answered: logged, and the connection closes
 * (Kafka's behaviour for undecodable requests). */
void elog_fail_request(elog *e, kreq *q, const char *why);
/* Rebuild a partition's idempotent-producer state from its log (open). */
void elog_producers_rebuild(kpart *p);
/* Data arrived on a partition: wake parked fetches. */
void elog_fetch_wake(kpart *p);

/* ---- group.c ---- */
kgroups *elog_groups_new(elog *e);
void elog_groups_free(kgroups *g);
void elog_handle_group(elog *e, kreq *q, kf_reader *r);
/* A connection closed: nothing pending of it may stay parked. */
void elog_groups_conn_closed(kgroups *g, kconn *c);

/* The connection's peer "ip:port" (for DescribeGroups), "" if gone. */
const char *kreq_peer(const kreq *q);

/* ---- broker.c ---- */
elog *elog_new(const elog_opts *o);
void elog_free(elog *e);
int elog_listen(elog *e, const char *hostport); /* before start */
const char *elog_address(const elog *e);
int elog_start(elog *e, weft_loop *loop);
void elog_drain(elog *e);
/* Like elog_drain, but once Kafka requests in flight are done call
 * done(loop, ud) instead of stopping the loop (another component on the
 * same loop, the streams API, drains after it). */
void elog_drain_then(elog *e, void (*done)(weft_loop *loop, void *ud), void *ud);
void elog_stop(elog *e);
/* For the fuzz harness: handle one frame (no size prefix) detached from
 * any connection. */
int elog_handle_frame(elog *e, const uint8_t *p, size_t n);

#endif
