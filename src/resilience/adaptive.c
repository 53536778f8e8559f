/*
 * adaptive.c — adaptive concurrency limit, Netflix's Gradient2.
 *
 * Instead of a fixed max-inflight, the limit follows the ratio of a long
 * RTT average (the "no-load" latency, an EMA over long_window samples) to
 * the latest RTT. While latency holds steady the gradient is 1 and the
 * limit creeps up by queue_size per sample (smoothed); when requests start
 * queueing, the short RTT rises above the long one and the gradient (with
 * 1.5× tolerance, floored at 0.5) pulls the limit down. Per sample:
 *
 *   long  = EMA(rtt, 2/(long_window+1)); the first sample sets it
 *   if long/short > 2: long ×= 0.95   (recover quickly after a latency drop)
 *   g     = dropped ? 0.5 : clamp(1.5 × long/short, 0.5, 1.0)
 *   if inflight < limit/2 and g >= 1: keep the limit (app-limited: an
 *       idle server proves nothing about capacity, so never grow then)
 *   new   = limit × g + queue_size
 *   limit = clamp(limit × (1 − smoothing) + new × smoothing, min, max)
 *
 * `inflight` in the app-limited test is the count while this request was
 * still in flight (before release decrements it), the closest we have to
 * Netflix's inflight-at-start. Unlike Netflix, an app-limited sample may
 * still shrink the limit (the rule only blocks growth). RTTs below 1 µs
 * count as 1 µs. Option values of 0 mean the default for initial_limit,
 * min_limit, max_limit and long_window (queue_size 0 is valid: no headroom);
 * max_limit is raised to min_limit if below it, the initial limit is
 * clamped between them, and smoothing outside (0, 1] means the default.
 */
#include "weft/resilience.h"

#include <math.h>

void weft_adaptive_opts_default(weft_adaptive_opts *o)
{
    if (!o)
        return;
    o->initial_limit = 20;
    o->min_limit = 5;
    o->max_limit = 1000;
    o->smoothing = 0.2;
    o->queue_size = 4;
    o->long_window = 600;
}

void weft_adaptive_init(weft_adaptive *a, const weft_adaptive_opts *o)
{
    if (!a)
        return;
    memset(a, 0, sizeof *a);
    weft_adaptive_opts d;
    weft_adaptive_opts_default(&d);
    a->o = o ? *o : d;
    if (!a->o.initial_limit)
        a->o.initial_limit = d.initial_limit;
    if (!a->o.min_limit)
        a->o.min_limit = d.min_limit;
    if (!a->o.max_limit)
        a->o.max_limit = d.max_limit;
    if (a->o.max_limit < a->o.min_limit)
        a->o.max_limit = a->o.min_limit;
    if (!(a->o.smoothing > 0 && a->o.smoothing <= 1))
        a->o.smoothing = d.smoothing;
    if (!a->o.long_window)
        a->o.long_window = d.long_window;
    double l = a->o.initial_limit;
    if (l < a->o.min_limit)
        l = a->o.min_limit;
    if (l > a->o.max_limit)
        l = a->o.max_limit;
    a->limit = l;
}

bool weft_adaptive_acquire(weft_adaptive *a)
{
    if (!a || a->inflight >= (uint32_t)a->limit)
        return false;
    a->inflight++;
    return true;
}

void weft_adaptive_release(weft_adaptive *a, uint64_t rtt_us, bool dropped)
{
    if (!a)
        return;
    uint32_t inflight = a->inflight;
    if (a->inflight)
        a->inflight--;
    a->samples++;
    double rtt = rtt_us < 1 ? 1.0 : (double)rtt_us;
    a->short_rtt = rtt;
    if (a->samples == 1 || a->long_rtt <= 0) {
        a->long_rtt = rtt;
    } else {
        double k = 2.0 / ((double)a->o.long_window + 1.0);
        a->long_rtt += (rtt - a->long_rtt) * k;
    }
    if (a->long_rtt / a->short_rtt > 2)
        a->long_rtt *= 0.95;
    double g;
    if (dropped) {
        g = 0.5;
    } else {
        g = 1.5 * a->long_rtt / a->short_rtt;
        g = g < 0.5 ? 0.5 : g > 1.0 ? 1.0 : g;
    }
    if ((double)inflight < a->limit / 2 && g >= 1.0)
        return;
    double nl = a->limit * g + a->o.queue_size;
    nl = a->limit * (1 - a->o.smoothing) + nl * a->o.smoothing;
    if (nl < a->o.min_limit)
        nl = a->o.min_limit;
    if (nl > a->o.max_limit)
        nl = a->o.max_limit;
    a->limit = nl;
}
