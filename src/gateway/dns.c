/*
 * dns.c — cluster endpoints discovered through DNS (c-ares), per worker.
 *
 * A cluster with `dns: {name, type, port}` resolves its name on each worker's
 * own loop: c-ares sockets are registered as ordinary weft_io watchers and
 * its timeouts as a weft_timer, so resolution never blocks a worker and
 * needs no thread. A/AAAA answers become endpoints "ip:port" (the configured
 * port); SRV answers (RFC 2782) keep the lowest-priority group, take port and
 * weight from each record and resolve each target's addresses.
 *
 * Refresh follows the records' TTL (at least 1 s, at most the configured
 * refresh interval). A changed answer replaces the cluster's endpoint set
 * (epset.c carries health, ejection and latency state over by id); an
 * unchanged one does nothing. On failure — timeout, NXDOMAIN, no records —
 * the last known endpoints keep serving (stale on error), the failure is
 * counted in weft_gateway_dns_failures_total and retried after 1 s. An SRV
 * answer one of whose targets could not be looked up for now (timeout,
 * SERVFAIL, refused) is such a failure too: taking the smaller set would
 * drop that target's endpoints until the next refresh, and the set would
 * flap with the resolver's hiccups. A target that does not exist (NXDOMAIN,
 * no records) is an answer: its endpoints go.
 */
#include "gwrt.h"

#include "weft/log.h"

#include <ares.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SOCKS 16
#define MIN_TTL_MS 1000
#define RETRY_MS 1000

typedef struct dns_sock {
    int fd;
    weft_io io;
    struct gw_dns *d;
} dns_sock;

struct gw_dns {
    gw_cluster_rt *cl;
    ares_channel ch;
    weft_timer refresh;
    weft_timer ares_timer;
    dns_sock socks[MAX_SOCKS];
    bool running;      /* a resolution is in flight */
    bool stopping;
    /* results being collected */
    gw_endpoint_conf *acc;
    size_t nacc, cap;
    size_t pending;    /* SRV target lookups still out */
    uint32_t min_ttl_s;
    int error;         /* first c-ares status that failed */
    bool partial;      /* an SRV target's lookup failed for now (not "no such name") */
};

static pthread_once_t ares_once = PTHREAD_ONCE_INIT;
static void ares_global_init(void) { ares_library_init(ARES_LIB_INIT_ALL); }

static weft_loop *loop_of(struct gw_dns *d) { return d->cl->gen->w->loop; }

static void rearm_ares_timer(struct gw_dns *d)
{
    struct timeval tv, *t = ares_timeout(d->ch, NULL, &tv);
    if (!t) {
        weft_timer_stop(loop_of(d), &d->ares_timer);
        return;
    }
    uint64_t ms = (uint64_t)t->tv_sec * 1000 + (uint64_t)t->tv_usec / 1000 + 1;
    weft_timer_start(loop_of(d), &d->ares_timer, ms);
}

static void on_sock_io(weft_loop *loop, weft_io *io, unsigned events)
{
    (void)loop;
    dns_sock *s = io->data;
    struct gw_dns *d = s->d;
    int fd = s->fd;
    ares_process_fd(d->ch, (events & (WEFT_IO_READ | WEFT_IO_HUP | WEFT_IO_ERROR)) ? fd : ARES_SOCKET_BAD,
                    (events & WEFT_IO_WRITE) ? fd : ARES_SOCKET_BAD);
    if (!d->stopping)
        rearm_ares_timer(d);
}

static void on_ares_timer(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    struct gw_dns *d = t->data;
    ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    if (!d->stopping)
        rearm_ares_timer(d);
}

/* c-ares tells us which sockets to watch. */
static void sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    struct gw_dns *d = data;
    dns_sock *slot = NULL, *free_slot = NULL;
    for (int i = 0; i < MAX_SOCKS; i++) {
        if (d->socks[i].fd == fd && d->socks[i].d)
            slot = &d->socks[i];
        else if (!d->socks[i].d && !free_slot)
            free_slot = &d->socks[i];
    }
    if (!readable && !writable) {
        if (slot) {
            weft_io_stop(loop_of(d), &slot->io);
            slot->d = NULL;
            slot->fd = -1;
        }
        return;
    }
    if (!slot) {
        if (!free_slot)
            return; /* more than MAX_SOCKS sockets: c-ares times those out */
        slot = free_slot;
        slot->d = d;
        slot->fd = fd;
        weft_io_init(&slot->io, fd, on_sock_io, slot);
    }
    weft_io_start(loop_of(d), &slot->io, (readable ? WEFT_IO_READ : 0) | (writable ? WEFT_IO_WRITE : 0));
}

static void add_endpoint(struct gw_dns *d, const struct sockaddr *sa, uint16_t port, uint32_t weight)
{
    char ip[INET6_ADDRSTRLEN];
    char id[INET6_ADDRSTRLEN + 10];
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ip, sizeof ip);
        snprintf(id, sizeof id, "%s:%u", ip, port);
    } else if (sa->sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof ip);
        snprintf(id, sizeof id, "[%s]:%u", ip, port);
    } else {
        return;
    }
    for (size_t i = 0; i < d->nacc; i++)
        if (strcmp(d->acc[i].id, id) == 0)
            return; /* the same address twice (e.g. two SRV targets) */
    if (d->nacc == d->cap) {
        size_t ncap = d->cap ? d->cap * 2 : 8;
        gw_endpoint_conf *n = realloc(d->acc, ncap * sizeof *n);
        if (!n)
            return;
        d->acc = n;
        d->cap = ncap;
    }
    gw_endpoint_conf *e = &d->acc[d->nacc];
    e->host = strdup(ip);
    e->id = strdup(id);
    e->port = port;
    e->weight = weight ? weight : 1;
    if (!e->host || !e->id) {
        free(e->host);
        free(e->id);
        return;
    }
    d->nacc++;
}

static void clear_acc(struct gw_dns *d)
{
    for (size_t i = 0; i < d->nacc; i++) {
        free(d->acc[i].host);
        free(d->acc[i].id);
    }
    d->nacc = 0;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(((const gw_endpoint_conf *)a)->id, ((const gw_endpoint_conf *)b)->id);
}

static void finish(struct gw_dns *d)
{
    gw_cluster_rt *cl = d->cl;
    weft_metrics *m = cl->gen->w->rt->m;
    d->running = false;
    uint64_t next_ms = cl->conf->dns_refresh_ms;
    /* a partial SRV answer only when there is nothing better to keep */
    if (d->nacc == 0 || (d->partial && cl->set->n > 0)) {
        weft_metric_inc(m, cl->m_dns_fail);
        weft_log(WEFT_LOG_WARN, "dns discovery failed; keeping the last endpoints",
                 WEFT_KV_STR("cluster", cl->conf->name), WEFT_KV_STR("name", cl->conf->dns_name),
                 WEFT_KV_STR("error", d->error ? ares_strerror(d->error) : "no records"),
                 WEFT_KV_UINT("endpoints", cl->set->n));
        next_ms = RETRY_MS;
    } else {
        qsort(d->acc, d->nacc, sizeof *d->acc, cmp_id);
        if (!gw_epset_equals(cl->set, d->acc, d->nacc)) {
            if (gw_cluster_set_endpoints(cl, d->acc, d->nacc) == 0) {
                weft_metric_inc(m, cl->m_dns_updates);
                weft_log(WEFT_LOG_INFO, "dns endpoints updated", WEFT_KV_STR("cluster", cl->conf->name),
                         WEFT_KV_UINT("endpoints", d->nacc), WEFT_KV_UINT("ttl_s", d->min_ttl_s));
            }
        }
        uint64_t ttl_ms = (uint64_t)d->min_ttl_s * 1000;
        if (ttl_ms < next_ms)
            next_ms = ttl_ms < MIN_TTL_MS ? MIN_TTL_MS : ttl_ms;
    }
    clear_acc(d);
    weft_timer_start(loop_of(d), &d->refresh, next_ms);
}

static void note_ttl(struct gw_dns *d, uint32_t ttl)
{
    if (ttl < d->min_ttl_s)
        d->min_ttl_s = ttl;
}

/* ---- A / AAAA ---- */

typedef struct addr_req {
    struct gw_dns *d;
    uint16_t port;
    uint32_t weight;
} addr_req;

static void on_addrinfo(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    (void)timeouts;
    addr_req *ar = arg;
    struct gw_dns *d = ar->d;
    if (d->stopping) {
        if (res)
            ares_freeaddrinfo(res);
        free(ar);
        return;
    }
    if (status == ARES_SUCCESS && res) {
        for (struct ares_addrinfo_node *n = res->nodes; n; n = n->ai_next) {
            add_endpoint(d, n->ai_addr, ar->port, ar->weight);
            if (n->ai_ttl >= 0)
                note_ttl(d, (uint32_t)n->ai_ttl);
        }
    } else {
        if (!d->error)
            d->error = status;
        if (status != ARES_ENOTFOUND && status != ARES_ENODATA)
            d->partial = true;
    }
    if (res)
        ares_freeaddrinfo(res);
    free(ar);
    if (--d->pending == 0)
        finish(d);
}

static void lookup_addrs(struct gw_dns *d, const char *name, uint16_t port, uint32_t weight)
{
    addr_req *ar = malloc(sizeof *ar);
    if (!ar) {
        d->error = ARES_ENOMEM;
        return;
    }
    ar->d = d;
    ar->port = port;
    ar->weight = weight;
    struct ares_addrinfo_hints hints = {0};
    hints.ai_family = d->cl->conf->dns_family;
    hints.ai_socktype = SOCK_STREAM;
    d->pending++;
    ares_getaddrinfo(d->ch, name, NULL, &hints, on_addrinfo, ar);
}

/* ---- SRV ---- */

/* TTL of the first answer record (c-ares does not expose it for SRV). */
static uint32_t first_answer_ttl(const unsigned char *buf, int len)
{
    if (len < 12)
        return 0;
    int qd = (buf[4] << 8) | buf[5], an = (buf[6] << 8) | buf[7];
    int p = 12;
    for (int q = 0; q <= qd && p < len; q++) {
        /* skip a name: labels, or a compression pointer */
        while (p < len) {
            unsigned l = buf[p];
            if (l == 0) {
                p++;
                break;
            }
            if ((l & 0xC0) == 0xC0) {
                p += 2;
                break;
            }
            p += 1 + (int)l;
        }
        if (q < qd)
            p += 4; /* qtype, qclass */
    }
    if (an == 0 || p + 8 > len)
        return 0;
    p += 4; /* type, class */
    return ((uint32_t)buf[p] << 24) | ((uint32_t)buf[p + 1] << 16) | ((uint32_t)buf[p + 2] << 8) |
           buf[p + 3];
}

static void on_srv(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    (void)timeouts;
    struct gw_dns *d = arg;
    if (d->stopping)
        return;
    struct ares_srv_reply *srv = NULL;
    if (status == ARES_SUCCESS)
        status = ares_parse_srv_reply(abuf, alen, &srv);
    if (status != ARES_SUCCESS || !srv) {
        d->error = status != ARES_SUCCESS ? status : ARES_ENODATA;
        if (srv)
            ares_free_data(srv);
        if (--d->pending == 0)
            finish(d);
        return;
    }
    note_ttl(d, first_answer_ttl(abuf, alen));
    unsigned short best = 0xFFFF;
    for (struct ares_srv_reply *r = srv; r; r = r->next)
        if (r->priority < best)
            best = r->priority;
    for (struct ares_srv_reply *r = srv; r; r = r->next)
        if (r->priority == best && r->port != 0 && strcmp(r->host, ".") != 0)
            lookup_addrs(d, r->host, r->port, r->weight);
    ares_free_data(srv);
    if (--d->pending == 0)
        finish(d);
}

static void resolve(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    struct gw_dns *d = t->data;
    if (d->running || d->stopping)
        return;
    d->running = true;
    d->error = 0;
    d->partial = false;
    d->min_ttl_s = UINT32_MAX;
    clear_acc(d);
    const gw_cluster_conf *cc = d->cl->conf;
    d->pending = 1; /* held until the initial query is issued */
    if (cc->dns_srv) {
        d->pending++;
        ares_query(d->ch, cc->dns_name, 1 /* C_IN */, 33 /* T_SRV */, on_srv, d);
    } else {
        lookup_addrs(d, cc->dns_name, cc->dns_port, 1);
    }
    if (--d->pending == 0) {
        finish(d);
        return;
    }
    rearm_ares_timer(d);
}

int gw_dns_start(gw_cluster_rt *cl)
{
    pthread_once(&ares_once, ares_global_init);
    struct gw_dns *d = calloc(1, sizeof *d);
    if (!d)
        return WEFT_ENOMEM;
    d->cl = cl;
    for (int i = 0; i < MAX_SOCKS; i++)
        d->socks[i].fd = -1;
    struct ares_options o;
    memset(&o, 0, sizeof o);
    o.sock_state_cb = sock_state;
    o.sock_state_cb_data = d;
    o.timeout = 1000; /* ms per try */
    o.tries = 2;
    int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
    if (ares_init_options(&d->ch, &o, mask) != ARES_SUCCESS) {
        free(d);
        return WEFT_ESYS;
    }
    if (cl->conf->dns_resolver &&
        ares_set_servers_ports_csv(d->ch, cl->conf->dns_resolver) != ARES_SUCCESS) {
        weft_log(WEFT_LOG_ERROR, "bad dns resolver address", WEFT_KV_STR("cluster", cl->conf->name),
                 WEFT_KV_STR("resolver", cl->conf->dns_resolver));
    }
    weft_timer_init(&d->refresh, resolve, d);
    weft_timer_init(&d->ares_timer, on_ares_timer, d);
    cl->dns = d;
    weft_timer_start(loop_of(d), &d->refresh, 0);
    return 0;
}

void gw_dns_stop(gw_cluster_rt *cl)
{
    struct gw_dns *d = cl->dns;
    if (!d)
        return;
    cl->dns = NULL;
    d->stopping = true;
    weft_loop *loop = loop_of(d);
    weft_timer_stop(loop, &d->refresh);
    weft_timer_stop(loop, &d->ares_timer);
    ares_destroy(d->ch); /* runs pending callbacks, which see stopping */
    for (int i = 0; i < MAX_SOCKS; i++)
        if (d->socks[i].d)
            weft_io_stop(loop, &d->socks[i].io);
    clear_acc(d);
    free(d->acc);
    free(d);
}
