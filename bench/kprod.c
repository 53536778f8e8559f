/*
 * kprod.c — the Kafka load generator of `bench/eventlog.py`: produces N
 * records of S bytes with librdkafka and reports records/s, MB/s and the
 * per-record delivery latency (produce() to delivery report); or consumes
 * N records from the beginning of a partition and reports records/s, MB/s.
 *
 * Our own tool rather than rdkafka_performance (not packaged by Debian) so
 * that the latency is per record, the clients are separate connections
 * (one rd_kafka_t each, one thread each, like one Redis connection each on
 * the Redis side), and any delivery error makes the run fail.
 *
 * Producer settings (throughput-oriented, stated in docs/benchmarks.md):
 * linger.ms 5 (librdkafka's default), batch.num.messages 10000, batch.size
 * 1000000 (under the broker's 1 MiB batch limit), at most 5 requests in
 * flight per connection (Kafka's idempotent-producer limit), no
 * compression, Nagle off. -l and -i change linger and in-flight; -r paces
 * the records (open loop, records/s over all clients) for latency runs.
 *
 * Output: one line of key=value pairs, e.g.
 *   mode=produce records=200000 bytes=20000000 secs=1.234 rps=162074
 *   mbps=16.21 p50_us=812.0 p99_us=2900.1 max_us=4100.0 errors=0
 * A paced run with one client adds librdkafka's own view of the same
 * records from its statistics (one window spanning the run): int_p50_us/
 * int_p99_us (queued in the producer), outbuf_* (request built, waiting for
 * librdkafka's broker thread to send it) and rtt_* (request sent to response
 * read, the produce request latency Kafka clients report), so the client's
 * share of the delivery latency can be told from the broker's.
 * Exit status: 0, or 1 on any delivery/consume error or time-out, 2 on
 * bad usage.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#define MAX_CLIENTS 64
#define STALL_SECS 30

typedef struct opts {
    const char *mode, *brokers, *topic, *acks;
    long records, size, clients, linger_ms, inflight;
    double rate;
} opts;

typedef struct client {
    const opts *o;
    long first, count; /* this client's slice of the record numbers */
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt;
    atomic_long delivered;
    _Atomic double last_dr; /* when the latest delivery report came */
    atomic_bool stop;       /* tells the poller to end */
    double end;
    int rc;
} client;

static uint64_t *g_sent_ns;  /* per record: when produce() was called */
static uint32_t *g_lat_ns;   /* per record: delivery latency, capped at ~4 s */
static atomic_long g_errors; /* delivery errors over all clients */
static char *g_payload;
static pthread_barrier_t g_start;
static double g_t0;

/* librdkafka's own latency histograms (statistics JSON) of the broker that
 * served the most requests, for the paced (-r) runs: int_latency (in the
 * producer's queue), outbuf_latency (request built, waiting for its broker
 * thread to send it) and rtt (request sent to response read: the produce
 * request latency Kafka clients report). One statistics window covers the
 * whole run; g_stats_at says when it was taken. */
typedef struct hist {
    double p50, p99;
    long cnt;
} hist;
static hist g_int, g_outbuf, g_rtt;
static _Atomic double g_stats_at;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    client *c = opaque;
    long i = (long)(uintptr_t)m->_private;
    uint64_t lat = now_ns() - g_sent_ns[i];
    g_lat_ns[i] = lat > UINT32_MAX ? UINT32_MAX : (uint32_t)lat;
    if (m->err) {
        if (atomic_fetch_add(&g_errors, 1) < 5)
            fprintf(stderr, "kprod: delivery failed: %s\n", rd_kafka_err2str(m->err));
    }
    atomic_store(&c->last_dr, now_s());
    atomic_fetch_add(&c->delivered, 1);
}

/* The histogram `"name": { ... }` at or after *at; moves *at past it. */
static bool parse_hist(const char **at, const char *name, hist *h)
{
    char key[64];
    snprintf(key, sizeof key, "\"%s\":", name);
    const char *p = strstr(*at, key), *e = p ? strchr(p, '}') : NULL;
    if (!e)
        return false;
    const char *c = strstr(p, "\"cnt\":"), *a = strstr(p, "\"p50\":"), *b = strstr(p, "\"p99\":");
    if (!c || !a || !b || c > e || a > e || b > e)
        return false;
    h->cnt = atol(c + 6);
    h->p50 = atof(a + 6);
    h->p99 = atof(b + 6);
    *at = e;
    return true;
}

static int stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    (void)rk, (void)len, (void)opaque;
    long best = -1;
    const char *at = json;
    hist in, ob, rt;
    while (parse_hist(&at, "int_latency", &in) && parse_hist(&at, "outbuf_latency", &ob) &&
           parse_hist(&at, "rtt", &rt))
        if (rt.cnt > best) {
            best = rt.cnt;
            g_int = in, g_outbuf = ob, g_rtt = rt;
        }
    if (best >= 0 && atomic_load(&g_stats_at) == 0)
        atomic_store(&g_stats_at, now_s());
    return 0; /* librdkafka frees json */
}

static int set(rd_kafka_conf_t *conf, const char *k, const char *v)
{
    char err[256];
    if (rd_kafka_conf_set(conf, k, v, err, sizeof err) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "kprod: %s=%s: %s\n", k, v, err);
        return -1;
    }
    return 0;
}

static rd_kafka_t *make_handle(const opts *o, rd_kafka_type_t type, void *opaque)
{
    char err[256], num[32];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (set(conf, "bootstrap.servers", o->brokers) < 0 ||
        set(conf, "socket.nagle.disable", "true") < 0)
        goto fail;
    if (type == RD_KAFKA_PRODUCER) {
        snprintf(num, sizeof num, "%ld", o->linger_ms);
        if (set(conf, "linger.ms", num) < 0)
            goto fail;
        snprintf(num, sizeof num, "%ld", o->inflight);
        if (set(conf, "max.in.flight.requests.per.connection", num) < 0 ||
            set(conf, "acks", o->acks) < 0 || set(conf, "batch.num.messages", "10000") < 0 ||
            set(conf, "batch.size", "1000000") < 0 ||
            set(conf, "queue.buffering.max.messages", "200000") < 0 ||
            set(conf, "compression.codec", "none") < 0 ||
            set(conf, "message.timeout.ms", "30000") < 0)
            goto fail;
        rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
        if (o->rate > 0 && o->clients == 1) {
            /* one window from start-up to just after the run */
            snprintf(num, sizeof num, "%.0f", (double)o->records / o->rate * 1000 + 2000);
            if (set(conf, "statistics.interval.ms", num) < 0)
                goto fail;
            rd_kafka_conf_set_stats_cb(conf, stats_cb);
        }
        rd_kafka_conf_set_opaque(conf, opaque);
    } else {
        /* keep up to ~64 MB of fetched records queued ahead of the reader */
        if (set(conf, "fetch.message.max.bytes", "1048576") < 0 ||
            set(conf, "queued.max.messages.kbytes", "65536") < 0)
            goto fail;
    }
    rd_kafka_t *rk = rd_kafka_new(type, conf, err, sizeof err);
    if (!rk) {
        fprintf(stderr, "kprod: rd_kafka_new: %s\n", err);
        goto fail; /* rd_kafka_new takes the conf only when it succeeds */
    }
    return rk;
fail:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

/* Connect and learn the topic (creating it on brokers that auto-create)
 * before the clock starts. */
static int warm_up(rd_kafka_t *rk, rd_kafka_topic_t *rkt)
{
    const struct rd_kafka_metadata *md = NULL;
    for (int tries = 0; tries < 50; tries++) {
        rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, 5000);
        if (!err) {
            bool ok = md->topic_cnt == 1 && !md->topics[0].err && md->topics[0].partition_cnt > 0;
            rd_kafka_metadata_destroy(md);
            if (ok)
                return 0;
        }
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "kprod: no metadata for the topic\n");
    return -1;
}

/* Serves the delivery reports of one client as they arrive, so that their
 * latency is not rounded up to the producing thread's next poll. */
static void *poll_thread(void *arg)
{
    client *c = arg;
    while (!atomic_load(&c->stop))
        rd_kafka_poll(c->rk, 20);
    rd_kafka_poll(c->rk, 0);
    return NULL;
}

static void sleep_until(double due)
{
    for (double t = now_s(); t < due; t = now_s()) {
        struct timespec ts = {(time_t)(due - t),
                              (long)((due - t - (double)(time_t)(due - t)) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

/* Wait while no record is delivered; false after STALL_SECS without one. */
static bool progressing(client *c, long *seen, double *last)
{
    long d = atomic_load(&c->delivered);
    double t = now_s();
    if (d != *seen) {
        *seen = d;
        *last = t;
    } else if (t - *last > STALL_SECS) {
        fprintf(stderr, "kprod: no delivery for %d s (%ld of %ld)\n", STALL_SECS, d, c->count);
        return false;
    }
    struct timespec ts = {0, 100 * 1000};
    nanosleep(&ts, NULL);
    return true;
}

static void *produce_thread(void *arg)
{
    client *c = arg;
    const opts *o = c->o;
    double per_client = o->rate > 0 ? o->rate / (double)o->clients : 0;
    pthread_t poller;
    pthread_create(&poller, NULL, poll_thread, c);
    pthread_barrier_wait(&g_start);
    double t0 = g_t0, last = now_s();
    long seen = 0;
    for (long k = 0; k < c->count; k++) {
        long i = c->first + k;
        if (per_client > 0)
            sleep_until(t0 + (double)k / per_client);
        for (;;) {
            g_sent_ns[i] = now_ns();
            if (rd_kafka_produce(c->rkt, RD_KAFKA_PARTITION_UA, 0, g_payload, (size_t)o->size, NULL,
                                 0, (void *)(uintptr_t)i) == 0)
                break;
            if (rd_kafka_last_error() != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                fprintf(stderr, "kprod: produce: %s\n", rd_kafka_err2str(rd_kafka_last_error()));
                c->rc = 1;
                goto out;
            }
            if (!progressing(c, &seen, &last)) { /* queue full: let the poller drain it */
                c->rc = 1;
                goto out;
            }
        }
    }
    while (atomic_load(&c->delivered) < c->count) {
        if (!progressing(c, &seen, &last)) {
            c->rc = 1;
            goto out;
        }
    }
    c->end = atomic_load(&c->last_dr);
out:
    atomic_store(&c->stop, true);
    pthread_join(poller, NULL);
    return NULL;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double pct_us(const uint32_t *sorted, long n, double q)
{
    long i = (long)(q * (double)n);
    if (i >= n)
        i = n - 1;
    return sorted[i] / 1000.0;
}

static int run_produce(const opts *o)
{
    int rc = 1;
    client cl[MAX_CLIENTS];
    memset(cl, 0, sizeof cl);
    g_sent_ns = calloc((size_t)o->records, sizeof *g_sent_ns);
    g_lat_ns = calloc((size_t)o->records, sizeof *g_lat_ns);
    g_payload = malloc((size_t)o->size);
    if (!g_sent_ns || !g_lat_ns || !g_payload) {
        fprintf(stderr, "kprod: out of memory\n");
        return 1;
    }
    uint64_t x = 88172645463325252ull; /* xorshift: incompressible payload */
    for (long i = 0; i < o->size; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        g_payload[i] = (char)x;
    }
    long base = o->records / o->clients, extra = o->records % o->clients, first = 0;
    for (long k = 0; k < o->clients; k++) {
        cl[k].o = o;
        cl[k].first = first;
        cl[k].count = base + (k < extra);
        first += cl[k].count;
        cl[k].rk = make_handle(o, RD_KAFKA_PRODUCER, &cl[k]);
        if (!cl[k].rk)
            goto out;
        cl[k].rkt = rd_kafka_topic_new(cl[k].rk, o->topic, NULL);
        if (warm_up(cl[k].rk, cl[k].rkt) < 0)
            goto out;
    }
    pthread_t th[MAX_CLIENTS];
    pthread_barrier_init(&g_start, NULL, (unsigned)o->clients + 1);
    for (long k = 0; k < o->clients; k++)
        pthread_create(&th[k], NULL, produce_thread, &cl[k]);
    g_t0 = now_s();
    pthread_barrier_wait(&g_start);
    double end = g_t0;
    rc = 0;
    for (long k = 0; k < o->clients; k++) {
        pthread_join(th[k], NULL);
        rc |= cl[k].rc;
        if (cl[k].end > end)
            end = cl[k].end;
    }
    long errors = atomic_load(&g_errors);
    char lib[256] = "";
    if (rc == 0 && o->rate > 0 && o->clients == 1) {
        /* wait for the window that ends after the run (served by poll) */
        double give_up = now_s() + 10;
        while (atomic_load(&g_stats_at) == 0 && now_s() < give_up)
            rd_kafka_poll(cl[0].rk, 100);
        if (atomic_load(&g_stats_at) >= end)
            snprintf(lib, sizeof lib,
                     " int_p50_us=%.0f int_p99_us=%.0f outbuf_p50_us=%.0f outbuf_p99_us=%.0f "
                     "rtt_p50_us=%.0f rtt_p99_us=%.0f rtt_cnt=%ld",
                     g_int.p50, g_int.p99, g_outbuf.p50, g_outbuf.p99, g_rtt.p50, g_rtt.p99,
                     g_rtt.cnt);
    }
    if (rc == 0) {
        double secs = end - g_t0;
        qsort(g_lat_ns, (size_t)o->records, sizeof *g_lat_ns, cmp_u32);
        printf("mode=produce records=%ld bytes=%ld clients=%ld acks=%s secs=%.3f rps=%.0f "
               "mbps=%.2f p50_us=%.1f p99_us=%.1f max_us=%.1f errors=%ld%s\n",
               o->records, o->records * o->size, o->clients, o->acks, secs,
               (double)o->records / secs, (double)(o->records * o->size) / secs / 1e6,
               pct_us(g_lat_ns, o->records, 0.50), pct_us(g_lat_ns, o->records, 0.99),
               pct_us(g_lat_ns, o->records, 1.0), errors, lib);
    }
    if (errors)
        rc = 1;
out:
    for (long k = 0; k < o->clients; k++) {
        if (cl[k].rkt)
            rd_kafka_topic_destroy(cl[k].rkt);
        if (cl[k].rk)
            rd_kafka_destroy(cl[k].rk);
    }
    return rc;
}

static int run_consume(const opts *o)
{
    int rc = 1;
    rd_kafka_t *rk = make_handle(o, RD_KAFKA_CONSUMER, NULL);
    if (!rk)
        return 1;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, o->topic, NULL);
    if (warm_up(rk, rkt) < 0)
        goto out;
    double t0 = now_s(), last_progress = t0;
    if (rd_kafka_consume_start(rkt, 0, RD_KAFKA_OFFSET_BEGINNING) < 0) {
        fprintf(stderr, "kprod: consume_start: %s\n", rd_kafka_err2str(rd_kafka_last_error()));
        goto out;
    }
    rd_kafka_message_t *batch[1024];
    long got = 0, bytes = 0;
    while (got < o->records) {
        /* ask for no more than is left: the call blocks until it has them all */
        long want = o->records - got < 1024 ? o->records - got : 1024;
        ssize_t n = rd_kafka_consume_batch(rkt, 0, 1000, batch, (size_t)want);
        if (n < 0) {
            fprintf(stderr, "kprod: consume: %s\n", rd_kafka_err2str(rd_kafka_last_error()));
            goto stop;
        }
        for (ssize_t k = 0; k < n; k++) {
            if (batch[k]->err && batch[k]->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                fprintf(stderr, "kprod: consume: %s\n", rd_kafka_err2str(batch[k]->err));
                for (; k < n; k++)
                    rd_kafka_message_destroy(batch[k]);
                goto stop;
            }
            if (!batch[k]->err) {
                got++;
                bytes += (long)batch[k]->len;
            }
            rd_kafka_message_destroy(batch[k]);
        }
        double t = now_s();
        if (n > 0)
            last_progress = t;
        else if (t - last_progress > STALL_SECS) {
            fprintf(stderr, "kprod: nothing consumed for %d s (%ld of %ld)\n", STALL_SECS, got,
                    o->records);
            goto stop;
        }
    }
    double secs = now_s() - t0;
    printf("mode=consume records=%ld bytes=%ld secs=%.3f rps=%.0f mbps=%.2f\n", got, bytes, secs,
           (double)got / secs, (double)bytes / secs / 1e6);
    rc = 0;
stop:
    rd_kafka_consume_stop(rkt, 0);
out:
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    return rc;
}

static void usage(void)
{
    fprintf(stderr, "usage: weft-bench-kprod produce -b HOST:PORT -t TOPIC -n RECORDS -s BYTES\n"
                    "                        [-a 1|all] [-c CLIENTS] [-l LINGER_MS] [-i INFLIGHT]\n"
                    "                        [-r RECORDS_PER_SEC]\n"
                    "       weft-bench-kprod consume -b HOST:PORT -t TOPIC -n RECORDS\n");
    exit(2);
}

int main(int argc, char **argv)
{
    opts o = {
        .acks = "1", .records = 100000, .size = 100, .clients = 1, .linger_ms = 5, .inflight = 5};
    if (argc < 2)
        usage();
    o.mode = argv[1];
    for (int i = 2; i < argc; i++) {
        if (i + 1 >= argc || argv[i][0] != '-' || strlen(argv[i]) != 2)
            usage();
        const char *v = argv[++i];
        switch (argv[i - 1][1]) {
        case 'b': o.brokers = v; break;
        case 't': o.topic = v; break;
        case 'a': o.acks = v; break;
        case 'n': o.records = atol(v); break;
        case 's': o.size = atol(v); break;
        case 'c': o.clients = atol(v); break;
        case 'l': o.linger_ms = atol(v); break;
        case 'i': o.inflight = atol(v); break;
        case 'r': o.rate = atof(v); break;
        default: usage();
        }
    }
    if (!o.brokers || !o.topic || o.records < 1 || o.size < 0 || o.clients < 1 ||
        o.clients > MAX_CLIENTS || o.inflight < 1)
        usage();
    if (strcmp(o.mode, "produce") == 0)
        return run_produce(&o);
    if (strcmp(o.mode, "consume") == 0)
        return run_consume(&o);
    usage();
    return 2;
}
