/*
 * health.c — active health checks and the endpoint health verdict.
 *
 * Each endpoint of a cluster with health_check configured is probed every
 * interval (jittered by ±10 % so checks of many endpoints and workers do not
 * align): an HTTP GET of the configured path through a small dedicated
 * client pool (2xx = pass), or a bare TCP connect; a check not over within
 * the timeout (answer included) fails. healthy_threshold
 * consecutive passes mark it healthy, unhealthy_threshold consecutive
 * failures mark it down. Endpoints start healthy so a fresh gateway serves
 * at once; a down endpoint is noticed within
 * unhealthy_threshold × interval. A reload that leaves a cluster's checks
 * unchanged carries each remaining endpoint's verdict and streaks over
 * (gw_epset_inherit), and its first check then comes a normal interval
 * later; a changed check starts over from healthy.
 *
 * Each worker runs its own checks (no shared state on the request path);
 * with W workers an endpoint sees W probes per interval. An endpoint is
 * eligible for balancing when its active check says healthy and outlier
 * detection has not ejected it; panic mode in the balancer covers the
 * case where too few remain.
 */
#include "gwrt.h"

#include "http/http_int.h"
#include "weft/log.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static void refresh_set(gw_epset *set, uint64_t now_ms)
{
    if (!set->lb)
        return;
    weft_lb_endpoint *eps = weft_lb_endpoints(set->lb);
    for (size_t i = 0; i < set->n; i++)
        eps[i].healthy = set->hc[i].healthy && !weft_outlier_ejected(&set->outlier[i], now_ms);
}

void gw_cluster_refresh_health(gw_cluster_rt *cl, uint64_t now_ms)
{
    refresh_set(cl->set, now_ms);
}

static void schedule(gw_hc_ep *h, bool soon)
{
    const gw_health_conf *hc = &h->set->cl->conf->health;
    gw_worker *w = h->set->cl->gen->w;
    uint64_t base = soon ? hc->interval_ms / 10 + 1 : hc->interval_ms;
    uint64_t jitter = base / 10 ? weft_rng_below(&w->rng, base / 5 + 1) : 0;
    weft_timer_start(w->loop, &h->timer, base - base / 10 + jitter);
}

static void verdict(gw_hc_ep *h, bool ok)
{
    gw_cluster_rt *cl = h->set->cl;
    const gw_health_conf *hc = &cl->conf->health;
    bool was = h->healthy;
    if (ok) {
        h->fail_streak = 0;
        if (++h->ok_streak >= hc->healthy_threshold)
            h->healthy = true;
    } else {
        h->ok_streak = 0;
        weft_metric_inc(cl->gen->w->rt->m, cl->m_hc_fail);
        if (++h->fail_streak >= hc->unhealthy_threshold)
            h->healthy = false;
    }
    if (was != h->healthy) {
        weft_log(WEFT_LOG_WARN, h->healthy ? "endpoint healthy" : "endpoint unhealthy",
                 WEFT_KV_STR("cluster", cl->conf->name),
                 WEFT_KV_STR("endpoint", h->set->eps[h->idx].id));
        refresh_set(h->set, weft_loop_now_ms(cl->gen->w->loop));
    }
    schedule(h, false);
}

static void http_done(weft_http_creq *q, int err, void *ud)
{
    gw_hc_ep *h = ud;
    (void)q;
    h->q = NULL;
    verdict(h, err == 0 && h->resp_ok);
}

static void http_resp(weft_http_creq *q, const weft_http_cresp *resp, void *ud)
{
    gw_hc_ep *h = ud;
    (void)q;
    h->resp_ok = resp->status >= 200 && resp->status <= 299;
}

static void tcp_close(gw_hc_ep *h)
{
    if (h->fd >= 0) {
        weft_io_stop(h->set->cl->gen->w->loop, &h->io);
        close(h->fd);
        h->fd = -1;
    }
}

static void tcp_ready(weft_loop *loop, weft_io *io, unsigned events)
{
    (void)loop;
    (void)events;
    gw_hc_ep *h = io->data;
    int rc = weft_tcp_connect_result(h->fd);
    tcp_close(h);
    verdict(h, rc == 0);
}

static void probe(weft_loop *loop, weft_timer *t)
{
    gw_hc_ep *h = t->data;
    gw_cluster_rt *cl = h->set->cl;
    const gw_health_conf *hc = &cl->conf->health;
    const gw_endpoint_conf *e = &h->set->eps[h->idx];
    if (h->q || h->fd >= 0) {
        /* previous probe still running past its timeout: it failed */
        if (h->q) {
            weft_http_creq_cancel(h->q);
            h->q = NULL;
        }
        tcp_close(h);
        verdict(h, false);
        return;
    }
    h->started_ms = weft_loop_now_ms(loop);
    h->resp_ok = false;
    if (!hc->tcp) {
        weft_http_creq_opts o = {
            .method = "GET",
            .host = e->host,
            .port = e->port,
            .target = hc->path,
            .timeout_ms = hc->timeout_ms,
            .on_response = http_resp,
            .on_done = http_done,
            .ud = h,
        };
        if (weft_http_client_request(cl->gen->w->hc_client, &o, &h->q) < 0) {
            verdict(h, false);
            return;
        }
        /* The client's timeout bounds the head and then each body read; a
         * check must end within timeout_ms whatever the answer does. */
        if (hc->timeout_ms)
            weft_timer_start(loop, &h->timer, hc->timeout_ms);
        return;
    }
    char spec[300];
    weft_http_join_hostport(e->host, e->port, spec, sizeof spec);
    int fd = weft_tcp_connect_start(spec);
    if (fd < 0) {
        verdict(h, false);
        return;
    }
    h->fd = fd;
    weft_io_init(&h->io, h->fd, tcp_ready, h);
    weft_io_start(loop, &h->io, WEFT_IO_WRITE);
    /* the timeout: re-enter probe() after timeout_ms, which fails it */
    weft_timer_start(loop, &h->timer, hc->timeout_ms);
}

void gw_health_start(gw_epset *set)
{
    if (!set->cl->conf->health.enabled || set->checks_running)
        return;
    set->checks_running = true;
    for (size_t i = 0; i < set->n; i++) {
        gw_hc_ep *h = &set->hc[i];
        weft_timer_init(&h->timer, probe, h);
        schedule(h, !h->carried);
    }
}

void gw_health_stop(gw_epset *set)
{
    if (!set->checks_running)
        return;
    set->checks_running = false;
    weft_loop *loop = set->cl->gen->w->loop;
    for (size_t i = 0; i < set->n; i++) {
        gw_hc_ep *h = &set->hc[i];
        weft_timer_stop(loop, &h->timer);
        if (h->q) {
            weft_http_creq_cancel(h->q);
            h->q = NULL;
        }
        tcp_close(h);
    }
}
