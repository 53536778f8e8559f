/*
 * events.c — producing and consuming through librdkafka, and event
 * sourcing over weft log's streams API (see include/weft/events.h).
 *
 * Producer on a loop: librdkafka writes a byte to a pipe whenever its main
 * queue (where delivery reports land) goes from empty to non-empty
 * (rd_kafka_queue_io_event_enable); the loop watches the pipe and serves
 * the queue with rd_kafka_poll(rk, 0). No timer, no extra thread of ours.
 *
 * Event sourcing: a command is a small state machine on the loop —
 * load (GET /streams/S?from=V, page by page, applying each event) →
 * decide → append (POST /streams/S with the expected version and the
 * events, each given an id once) → done; a 409 (someone appended first)
 * waits a jittered backoff, resets the state and starts over; a transport
 * failure of the append is retried with the same ids, which the server
 * deduplicates.
 */
#include "weft/events.h"

#include "regwatch.h"
#include "weft/buf.h"
#include "weft/http.h"
#include "weft/log.h"
#include "weft/resilience.h"

#include <errno.h>
#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- librdkafka plumbing ---- */

static int apply_config(rd_kafka_conf_t *conf, const char *const *kv, char *err, size_t errlen)
{
    for (size_t i = 0; kv && kv[i]; i += 2) {
        if (!kv[i + 1]) {
            snprintf(err, errlen, "config: '%s' has no value", kv[i]);
            return WEFT_EINVAL;
        }
        if (rd_kafka_conf_set(conf, kv[i], kv[i + 1], err, errlen) != RD_KAFKA_CONF_OK)
            return WEFT_EINVAL;
    }
    return 0;
}

static int map_err(rd_kafka_resp_err_t e)
{
    switch (e) {
    case RD_KAFKA_RESP_ERR_NO_ERROR: return 0;
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT: return WEFT_ETIMEDOUT;
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE: return WEFT_ETOOBIG;
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART: return WEFT_ENOTFOUND;
    default: return WEFT_EIO;
    }
}

/* ---- producer ---- */

struct weft_producer {
    rd_kafka_t *rk;
    weft_loop *loop;
    int pipefd[2];
    weft_io io;
};

typedef struct dr_ctx {
    weft_delivery_cb cb;
    void *ud;
} dr_ctx;

void weft_producer_opts_default(weft_producer_opts *o)
{
    memset(o, 0, sizeof *o);
    o->acks = "all";
    o->idempotent = true;
    o->linger_ms = 5;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    dr_ctx *d = m->_private;
    if (!d)
        return;
    if (d->cb)
        d->cb(map_err(m->err), m->err ? rd_kafka_err2str(m->err) : NULL, m->partition, m->offset,
              d->ud);
    free(d);
}

weft_producer *weft_producer_new(const weft_producer_opts *o, char *err, size_t errlen)
{
    if (!o->brokers) {
        snprintf(err, errlen, "brokers are required");
        return NULL;
    }
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char linger[16];
    snprintf(linger, sizeof linger, "%u", o->linger_ms);
    const char *base[] = {"bootstrap.servers", o->brokers,
                          "acks", o->acks ? o->acks : "all",
                          "enable.idempotence", o->idempotent ? "true" : "false",
                          "linger.ms", linger,
                          NULL};
    if (apply_config(conf, base, err, errlen) < 0 || apply_config(conf, o->config, err, errlen) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    weft_producer *p = calloc(1, sizeof *p);
    if (!p) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    p->pipefd[0] = p->pipefd[1] = -1;
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, errlen); /* takes conf on success */
    if (!p->rk) {
        rd_kafka_conf_destroy(conf);
        free(p);
        return NULL;
    }
    return p;
}

int weft_produce(weft_producer *p, const char *topic, weft_str key, weft_str value,
                 const weft_event_header *headers, size_t nheaders, weft_delivery_cb cb, void *ud)
{
    if (!p || !topic)
        return WEFT_EINVAL;
    dr_ctx *d = calloc(1, sizeof *d);
    if (!d)
        return WEFT_ENOMEM;
    d->cb = cb;
    d->ud = ud;
    rd_kafka_headers_t *hs = nheaders ? rd_kafka_headers_new(nheaders) : NULL;
    for (size_t i = 0; i < nheaders; i++)
        rd_kafka_header_add(hs, headers[i].key, -1, headers[i].value.p,
                            headers[i].value.p ? (ssize_t)headers[i].value.n : 0);
    rd_kafka_resp_err_t e = rd_kafka_producev(
        p->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_KEY(key.p, key.p ? key.n : 0), RD_KAFKA_V_VALUE((void *)value.p, value.n),
        RD_KAFKA_V_HEADERS(hs), RD_KAFKA_V_OPAQUE(d), RD_KAFKA_V_END);
    if (e) { /* on failure the headers stay ours */
        if (hs)
            rd_kafka_headers_destroy(hs);
        free(d);
        return map_err(e);
    }
    return 0;
}

int weft_producer_poll(weft_producer *p, int timeout_ms) { return rd_kafka_poll(p->rk, timeout_ms); }

int weft_producer_flush(weft_producer *p, int timeout_ms)
{
    return rd_kafka_flush(p->rk, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR ? 0 : WEFT_ETIMEDOUT;
}

static void pipe_cb(weft_loop *loop, weft_io *io, unsigned ev)
{
    (void)loop;
    (void)ev;
    weft_producer *p = io->data;
    char buf[256];
    while (read(p->pipefd[0], buf, sizeof buf) > 0)
        ;
    rd_kafka_poll(p->rk, 0);
}

int weft_producer_attach(weft_producer *p, weft_loop *loop)
{
    if (p->loop)
        return WEFT_EINVAL;
    if (pipe2(p->pipefd, O_NONBLOCK | O_CLOEXEC) < 0)
        return weft_err_from_errno(errno);
    rd_kafka_queue_t *q = rd_kafka_queue_get_main(p->rk);
    rd_kafka_queue_io_event_enable(q, p->pipefd[1], "1", 1);
    rd_kafka_queue_destroy(q);
    p->loop = loop;
    weft_io_init(&p->io, p->pipefd[0], pipe_cb, p);
    int rc = weft_io_start(loop, &p->io, WEFT_IO_READ);
    rd_kafka_poll(p->rk, 0); /* anything queued before the pipe existed */
    return rc;
}

void weft_producer_free(weft_producer *p)
{
    if (!p)
        return;
    if (p->loop) {
        weft_io_stop(p->loop, &p->io);
        rd_kafka_queue_t *q = rd_kafka_queue_get_main(p->rk);
        rd_kafka_queue_io_event_enable(q, -1, NULL, 0);
        rd_kafka_queue_destroy(q);
    }
    if (rd_kafka_flush(p->rk, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        /* still undelivered (brokers down): purge them so that each one's
         * delivery callback runs with an error (and its context is freed)
         * instead of silently going with the handle */
        rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_flush(p->rk, 1000);
    }
    rd_kafka_destroy(p->rk);
    for (int i = 0; i < 2; i++)
        if (p->pipefd[i] >= 0)
            close(p->pipefd[i]);
    free(p);
}

/* ---- consumer ---- */

struct weft_consumer {
    rd_kafka_t *rk;
    bool fatal_logged;
};

void weft_consumer_opts_default(weft_consumer_opts *o)
{
    memset(o, 0, sizeof *o);
    o->from_beginning = true;
    o->auto_commit = true;
}

weft_consumer *weft_consumer_new(const weft_consumer_opts *o, char *err, size_t errlen)
{
    if (!o->brokers || !o->group_id || !o->topics || !o->topics[0]) {
        snprintf(err, errlen, "brokers, group_id and topics are required");
        return NULL;
    }
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *base[] = {"bootstrap.servers", o->brokers,
                          "group.id", o->group_id,
                          "auto.offset.reset", o->from_beginning ? "earliest" : "latest",
                          "enable.auto.commit", o->auto_commit ? "true" : "false",
                          NULL};
    if (apply_config(conf, base, err, errlen) < 0 || apply_config(conf, o->config, err, errlen) < 0) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    weft_consumer *c = calloc(1, sizeof *c);
    if (!c || !(c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, errlen))) {
        rd_kafka_conf_destroy(conf);
        free(c);
        return NULL;
    }
    rd_kafka_poll_set_consumer(c->rk);
    size_t n = 0;
    while (o->topics[n])
        n++;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n);
    for (size_t i = 0; i < n; i++)
        rd_kafka_topic_partition_list_add(l, o->topics[i], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(c->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) {
        snprintf(err, errlen, "subscribe: %s", rd_kafka_err2str(e));
        rd_kafka_destroy(c->rk);
        free(c);
        return NULL;
    }
    return c;
}

/* A fatal error (rd_kafka_fatal_error: fenced by another member with the
 * same group.instance.id, say) ends the consumer: librdkafka stops
 * fetching and raises it only once, so a caller told 0 would poll a dead
 * consumer forever. Logged the first time; 0 if there is none, else a
 * WEFT_E* code (WEFT_EIO unless the cause maps to a better one). */
static int consumer_fatal(weft_consumer *c)
{
    char why[512];
    rd_kafka_resp_err_t e = rd_kafka_fatal_error(c->rk, why, sizeof why);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    if (!c->fatal_logged) {
        weft_log(WEFT_LOG_ERROR, "consumer: fatal error, the consumer is dead",
                 WEFT_KV_STR("error", why), WEFT_KV_STR("code", rd_kafka_err2name(e)));
        c->fatal_logged = true;
    }
    int rc = map_err(e);
    return rc < 0 ? rc : WEFT_EIO;
}

int weft_consumer_poll(weft_consumer *c, int timeout_ms, void (*cb)(const weft_event *ev, void *ud),
                       void *ud)
{
    rd_kafka_message_t *m = rd_kafka_consumer_poll(c->rk, timeout_ms);
    if (!m) /* a fatal error is raised once: every later poll must see it too */
        return consumer_fatal(c);
    if (m->err) {
        /* transient (librdkafka retries by itself): reported, not fatal */
        int rc = m->err == RD_KAFKA_RESP_ERR__FATAL ? consumer_fatal(c) : 0;
        if (rc == 0 && m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
            weft_log(WEFT_LOG_WARN, "consumer", WEFT_KV_STR("error", rd_kafka_message_errstr(m)));
        rd_kafka_message_destroy(m);
        return rc;
    }
    weft_event_header hs[WEFT_EVENT_MAX_HEADERS];
    size_t nh = 0;
    rd_kafka_headers_t *rh = NULL;
    if (rd_kafka_message_headers(m, &rh) == RD_KAFKA_RESP_ERR_NO_ERROR && rh) {
        const char *name;
        const void *val;
        size_t size;
        while (nh < WEFT_ARRAY_LEN(hs) &&
               rd_kafka_header_get_all(rh, nh, &name, &val, &size) == RD_KAFKA_RESP_ERR_NO_ERROR) {
            hs[nh].key = name;
            hs[nh].value = (weft_str){val, val ? size : 0};
            nh++;
        }
    }
    rd_kafka_timestamp_type_t tt;
    weft_event ev = {
        .topic = rd_kafka_topic_name(m->rkt),
        .partition = m->partition,
        .offset = m->offset,
        .timestamp_ms = rd_kafka_message_timestamp(m, &tt),
        .key = {m->key, m->key ? m->key_len : 0},
        .value = {m->payload, m->payload ? m->len : 0},
        .nheaders = nh,
        .headers = hs,
    };
    cb(&ev, ud);
    rd_kafka_message_destroy(m);
    return 1;
}

int weft_consumer_commit(weft_consumer *c)
{
    rd_kafka_resp_err_t e = rd_kafka_commit(c->rk, NULL, 0);
    return e == RD_KAFKA_RESP_ERR_NO_ERROR || e == RD_KAFKA_RESP_ERR__NO_OFFSET ? 0 : map_err(e);
}

void weft_consumer_free(weft_consumer *c)
{
    if (!c)
        return;
    rd_kafka_consumer_close(c->rk);
    rd_kafka_destroy(c->rk);
    free(c);
}

/* ---- event sourcing ---- */

typedef struct es_cmd es_cmd;

struct weft_es {
    weft_loop *loop;
    char *host;
    uint16_t port;
    weft_http_client *http;
    weft_rng rng;
    es_cmd *cmds;
};

struct es_cmd {
    es_cmd *next, *prev;
    weft_es *es;
    weft_es_command c;
    char *stream;
    int attempts, post_tries;
    int64_t version, from;
    json_t *events; /* decided, with ids */
    weft_http_creq *q;
    int status;
    weft_buf body;
    weft_timer timer;
    bool posting;
};

static void es_load(es_cmd *k);
static void es_post(es_cmd *k);

static void es_unlink_free(es_cmd *k)
{
    weft_es *es = k->es;
    if (k->prev)
        k->prev->next = k->next;
    else
        es->cmds = k->next;
    if (k->next)
        k->next->prev = k->prev;
    weft_timer_stop(es->loop, &k->timer);
    if (k->q)
        weft_http_creq_cancel(k->q);
    json_decref(k->events);
    weft_buf_release(&k->body);
    free(k->stream);
    free(k);
}

static void es_done(es_cmd *k, int err, const char *reason)
{
    /* k is freed before done runs: done may free the weft_es (which frees
     * every command still linked) or start another command */
    weft_es_command c = k->c;
    int64_t version = k->version;
    int attempts = k->attempts;
    es_unlink_free(k);
    c.done(err, reason, version, attempts, c.ud);
}

static void es_on_response(weft_http_creq *q, const weft_http_cresp *resp, void *ud)
{
    (void)q;
    ((es_cmd *)ud)->status = resp->status;
}

static void es_on_body(weft_http_creq *q, weft_str d, void *ud)
{
    es_cmd *k = ud;
    if (weft_buf_append(&k->body, d.p, d.n) < 0) {
        weft_http_creq_cancel(q);
        k->q = NULL;
        es_done(k, WEFT_ETOOBIG, "answer too large");
    }
}

/* Give every decided event an id (once: retries reuse them). */
static int add_ids(es_cmd *k)
{
    size_t i;
    json_t *ev;
    json_array_foreach(k->events, i, ev) {
        if (!json_is_object(ev))
            return WEFT_EINVAL;
        if (json_object_get(ev, "id"))
            continue;
        char id[40];
        uint64_t a = weft_rng_next(&k->es->rng), b = weft_rng_next(&k->es->rng);
        snprintf(id, sizeof id, "%08x-%04x-4%03x-%04x-%012llx", (unsigned)(a >> 32),
                 (unsigned)(a >> 16) & 0xffff, (unsigned)a & 0xfff,
                 (unsigned)(0x8000 | ((b >> 48) & 0x3fff)),
                 (unsigned long long)(b & 0xffffffffffffULL));
        json_object_set_new(ev, "id", json_string(id));
    }
    return 0;
}

static void es_decide(es_cmd *k)
{
    json_decref(k->events);
    k->events = k->c.decide(k->c.state, k->version, k->c.ud);
    /* checked before the size: json_array_size of an object is 0 too, and
     * a single event returned without its array must not read as "nothing
     * to append" */
    if (k->events && !json_is_array(k->events)) {
        es_done(k, WEFT_EINVAL, "decide must return an array of event objects");
        return;
    }
    if (!k->events || json_array_size(k->events) == 0) {
        es_done(k, 0, NULL); /* nothing to append */
        return;
    }
    if (add_ids(k) < 0) {
        es_done(k, WEFT_EINVAL, "decide must return an array of event objects");
        return;
    }
    k->post_tries = 0;
    es_post(k);
}

static void es_timer(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    es_cmd *k = t->data;
    if (k->posting)
        es_post(k);
    else
        es_load(k);
}

/* Handle a page of the stream: apply events, then load more or decide. */
static void es_loaded(es_cmd *k)
{
    if (k->status == 404) { /* no such stream yet */
        k->version = -1;
        es_decide(k);
        return;
    }
    json_t *o = json_loadb(weft_buf_rptr(&k->body), weft_buf_used(&k->body), 0, NULL);
    json_t *evs = json_object_get(o, "events");
    if (k->status != 200 || !json_is_array(evs)) {
        json_decref(o);
        es_done(k, WEFT_EPROTO, "unexpected answer loading the stream");
        return;
    }
    size_t i;
    json_t *ev;
    json_array_foreach(evs, i, ev) {
        weft_es_event e = {
            .type = json_string_value(json_object_get(ev, "type")),
            .data = json_object_get(ev, "data"),
            .metadata = json_object_get(ev, "metadata"),
            .version = json_integer_value(json_object_get(ev, "version")),
            .position = json_integer_value(json_object_get(ev, "position")),
        };
        k->c.apply(k->c.state, &e);
        k->version = e.version;
    }
    json_t *next = json_object_get(o, "next");
    bool more = json_is_integer(next);
    k->from = more ? json_integer_value(next) : k->from;
    json_decref(o);
    if (more)
        es_load(k);
    else
        es_decide(k);
}

static void es_posted(es_cmd *k)
{
    if (k->status == 200) {
        json_t *o = json_loadb(weft_buf_rptr(&k->body), weft_buf_used(&k->body), 0, NULL);
        json_t *lv = json_object_get(o, "last_version");
        if (json_is_integer(lv))
            k->version = json_integer_value(lv);
        json_decref(o);
        es_done(k, 0, NULL);
        return;
    }
    if (k->status == 409) {
        if (k->attempts >= k->c.max_attempts) {
            es_done(k, WEFT_EEXIST, "wrong expected version: still conflicting");
            return;
        }
        /* someone else appended: rebuild the state and decide again */
        k->posting = false;
        uint64_t wait = weft_backoff_full_jitter(&k->es->rng, (uint32_t)k->attempts, 5, 200);
        weft_timer_start(k->es->loop, &k->timer, wait);
        return;
    }
    char why[200];
    snprintf(why, sizeof why, "append answered %d: %.*s", k->status,
             (int)(weft_buf_used(&k->body) > 120 ? 120 : weft_buf_used(&k->body)),
             weft_buf_rptr(&k->body));
    es_done(k, WEFT_EPROTO, why);
}

static void es_on_done(weft_http_creq *q, int err, void *ud)
{
    (void)q;
    es_cmd *k = ud;
    k->q = NULL;
    if (err) {
        /* the same request again (appends carry their ids: no duplicates) */
        if (++k->post_tries <= 3) {
            weft_timer_start(k->es->loop, &k->timer, 50u << k->post_tries);
            return;
        }
        es_done(k, err, weft_strerror(err));
        return;
    }
    if (k->posting)
        es_posted(k);
    else
        es_loaded(k);
}

static void es_request(es_cmd *k, const char *method, const char *target, const char *body)
{
    weft_buf_clear(&k->body);
    k->status = 0;
    weft_http_creq_opts o = {
        .method = method,
        .host = k->es->host,
        .port = k->es->port,
        .target = target,
        .headers = (const char *const[]){"Content-Type: application/json", NULL},
        .body = body,
        .body_len = body ? strlen(body) : 0,
        .timeout_ms = 10000,
        .on_response = es_on_response,
        .on_body = es_on_body,
        .on_done = es_on_done,
        .ud = k,
    };
    if (weft_http_client_request(k->es->http, &o, &k->q) < 0) {
        k->q = NULL;
        es_done(k, WEFT_ENOMEM, "cannot send");
    }
}

static void es_load(es_cmd *k)
{
    if (k->from == 0) { /* a fresh load: start from an empty state */
        k->attempts++;
        k->version = -1;
        k->c.reset(k->c.state);
    }
    char target[512];
    snprintf(target, sizeof target, "/streams/%s?from=%lld&limit=1000", k->stream,
             (long long)k->from);
    es_request(k, "GET", target, NULL);
}

static void es_post(es_cmd *k)
{
    k->posting = true;
    json_t *req = json_pack("{s:o, s:O}", "expected_version",
                            k->version >= 0 ? json_integer(k->version) : json_string("no_stream"),
                            "events", k->events);
    char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    if (!body) {
        es_done(k, WEFT_ENOMEM, "out of memory");
        return;
    }
    k->from = 0; /* a conflict reloads from the start */
    char target[512];
    snprintf(target, sizeof target, "/streams/%s", k->stream);
    es_request(k, "POST", target, body); /* last: a request that cannot be sent frees k */
    free(body);
}

weft_es *weft_es_new(weft_loop *loop, const char *url)
{
    weft_es *es = calloc(1, sizeof *es);
    if (!es)
        return NULL;
    es->loop = loop;
    weft_http_client_opts ho;
    weft_http_client_opts_default(&ho);
    if (regwatch_parse_url(url, &es->host, &es->port) < 0 ||
        !(es->http = weft_http_client_new(loop, &ho))) {
        free(es->host);
        free(es);
        return NULL;
    }
    weft_rng_seed(&es->rng, weft_now_us() ^ (uint64_t)(uintptr_t)es);
    return es;
}

void weft_es_free(weft_es *es)
{
    if (!es)
        return;
    while (es->cmds)
        es_unlink_free(es->cmds);
    weft_http_client_free(es->http);
    free(es->host);
    free(es);
}

int weft_es_execute(weft_es *es, const weft_es_command *cmd)
{
    if (!cmd->stream || !cmd->reset || !cmd->apply || !cmd->decide || !cmd->done ||
        strpbrk(cmd->stream, "/?# \r\n%"))
        return WEFT_EINVAL;
    es_cmd *k = calloc(1, sizeof *k);
    if (!k || !(k->stream = strdup(cmd->stream))) {
        free(k);
        return WEFT_ENOMEM;
    }
    k->es = es;
    k->c = *cmd;
    if (k->c.max_attempts <= 0)
        k->c.max_attempts = 10;
    weft_buf_init(&k->body, 64u << 20);
    weft_timer_init(&k->timer, es_timer, k);
    k->next = es->cmds;
    if (es->cmds)
        es->cmds->prev = k;
    es->cmds = k;
    weft_timer_start(es->loop, &k->timer, 0); /* callbacks never run inside execute */
    return 0;
}
