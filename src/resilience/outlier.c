/*
 * outlier.c — passive outlier detection with Envoy's consecutive-error rules.
 *
 * Each host keeps two streak counters fed by real responses:
 *   consec_5xx      5xx, gateway errors and connect failures increment it;
 *   consec_gateway  gateway errors (502/503/504) and connect failures
 *                   increment it, a non-gateway 5xx resets it;
 * a success resets both. Connect failures count for both streaks because
 * Envoy (without split_external_local_origin_errors) maps a local connect
 * failure to a 503. When a streak reaches its threshold (0 = detector off)
 * the host is ejected, unless the hosts currently ejected already number
 * max(1, floor(n × max_ejection_percent / 100)) — never eject the whole
 * cluster on a bad day. A refused ejection keeps the streak, so the host is
 * ejected on its next error once room frees up.
 *
 * Ejection lasts min(base × times_ejected, max) where times_ejected counts
 * this ejection: 30 s, 60 s, 90 s ... capped at 300 s with the defaults.
 * Streaks restart from zero after an ejection. Results for a host already
 * ejected are counted but cannot eject it again. There is no timer:
 * weft_outlier_tick() (called from the owner's periodic timer) returns
 * expired hosts; weft_outlier_ejected() is already false for them.
 * times_ejected never decays (Envoy decays it per interval when the host is
 * healthy; callers that want that can decrement it themselves).
 *
 * Option values of 0 mean: threshold off; base_ejection_ms → 30 s;
 * max_ejection_ms → max(300 s, base) (Envoy's rule); max_ejection_percent
 * → the "at least one host" floor only.
 */
#include "weft/resilience.h"

void weft_outlier_opts_default(weft_outlier_opts *o)
{
    if (!o)
        return;
    o->consecutive_5xx = 5;
    o->consecutive_gateway = 5;
    o->base_ejection_ms = 30000;
    o->max_ejection_ms = 300000;
    o->max_ejection_percent = 10;
}

static size_t ejected_count(const weft_outlier_host *hosts, size_t n, uint64_t now_ms)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += weft_outlier_ejected(&hosts[i], now_ms);
    return c;
}

bool weft_outlier_record(const weft_outlier_opts *o, weft_outlier_host *hosts, size_t n, size_t i,
                         int outcome, uint64_t now_ms)
{
    weft_outlier_opts d;
    if (!o) {
        weft_outlier_opts_default(&d);
        o = &d;
    }
    if (!hosts || i >= n)
        return false;
    weft_outlier_host *h = &hosts[i];
    switch (outcome) {
    case WEFT_OUTCOME_SUCCESS:
        h->consec_5xx = 0;
        h->consec_gateway = 0;
        return false;
    case WEFT_OUTCOME_5XX:
        if (h->consec_5xx != UINT32_MAX)
            h->consec_5xx++;
        h->consec_gateway = 0;
        break;
    case WEFT_OUTCOME_GATEWAY:
    case WEFT_OUTCOME_CONNECT_FAIL:
        if (h->consec_5xx != UINT32_MAX)
            h->consec_5xx++;
        if (h->consec_gateway != UINT32_MAX)
            h->consec_gateway++;
        break;
    default: return false;
    }
    if (weft_outlier_ejected(h, now_ms))
        return false;
    bool trip = (o->consecutive_5xx && h->consec_5xx >= o->consecutive_5xx) ||
                (o->consecutive_gateway && h->consec_gateway >= o->consecutive_gateway);
    if (!trip)
        return false;

    uint32_t pct = o->max_ejection_percent > 100 ? 100 : o->max_ejection_percent;
    size_t max_ejected = (size_t)((uint64_t)n * pct / 100);
    if (max_ejected < 1)
        max_ejected = 1;
    if (ejected_count(hosts, n, now_ms) >= max_ejected)
        return false;

    uint64_t base = o->base_ejection_ms ? o->base_ejection_ms : 30000;
    uint64_t cap = o->max_ejection_ms;
    if (cap == 0)
        cap = base > 300000 ? base : 300000;
    if (h->times_ejected != UINT32_MAX)
        h->times_ejected++;
    uint64_t dur = base * h->times_ejected; /* both < 2^32: no overflow */
    if (dur > cap)
        dur = cap;
    h->ejected_until_ms = now_ms + dur; /* dur >= 1, so never the "not ejected" 0 */
    h->consec_5xx = 0;
    h->consec_gateway = 0;
    return true;
}

size_t weft_outlier_tick(weft_outlier_host *hosts, size_t n, uint64_t now_ms)
{
    size_t back = 0;
    if (!hosts)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (hosts[i].ejected_until_ms != 0 && hosts[i].ejected_until_ms <= now_ms) {
            hosts[i].ejected_until_ms = 0;
            back++;
        }
    }
    return back;
}
