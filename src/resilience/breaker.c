/*
 * breaker.c — circuit breaker: Hystrix's rolling time window for the trip
 * decision, resilience4j's bounded half-open probing to recover.
 *
 * CLOSED counts outcomes in WEFT_BREAKER_BUCKETS time buckets spanning
 * window_ms (old buckets are zeroed as time advances, so failures expire).
 * A success slower than slow_call_us counts as a failure: a backend that
 * answers in 30 s is as broken as one that errors. Each record in CLOSED
 * re-evaluates: with at least min_requests outcomes in the window and
 * failures·100 >= error_percent·total, the breaker OPENs.
 *
 * OPEN refuses everything until sleep_ms after it opened; the first allow()
 * after that moves it to HALF_OPEN (lazily: there is no timer, and
 * weft_breaker_state() is a pure read that keeps reporting OPEN until an
 * allow() takes the transition). HALF_OPEN lets at most half_open_probes
 * requests be in flight at once; any failed probe re-OPENs (new sleep), and
 * once half_open_probes probes have succeeded the breaker CLOSEs. Entering
 * OPEN or CLOSED clears the window, so a recovered backend starts fresh.
 *
 * Records that arrive while OPEN come from requests admitted before the
 * trip; they are ignored. In HALF_OPEN a record counts as a probe outcome
 * only while a probe is out (probes_out > 0); otherwise it is such a
 * straggler too. Option values of 0 mean the default, except sleep_ms
 * (0 = probe at once) and slow_call_us (0 = off); error_percent is capped
 * at 100.
 */
#include "weft/resilience.h"

#include "resilience/resilience_int.h"

void weft_breaker_opts_default(weft_breaker_opts *o)
{
    if (!o)
        return;
    o->window_ms = 10000;
    o->min_requests = 20;
    o->error_percent = 50;
    o->sleep_ms = 5000;
    o->half_open_probes = 1;
    o->slow_call_us = 0;
}

static void clear_window(weft_breaker *b)
{
    memset(b->ok, 0, sizeof b->ok);
    memset(b->fail, 0, sizeof b->fail);
}

static void set_state(weft_breaker *b, int state, uint64_t now_ms)
{
    b->state = state;
    b->transitions++;
    b->probes_out = 0;
    b->probes_ok = 0;
    if (state == WEFT_BREAKER_OPEN)
        b->opened_at_ms = now_ms;
    if (state != WEFT_BREAKER_HALF_OPEN)
        clear_window(b);
}

void weft_breaker_init(weft_breaker *b, const weft_breaker_opts *o)
{
    if (!b)
        return;
    memset(b, 0, sizeof *b);
    weft_breaker_opts d;
    weft_breaker_opts_default(&d);
    if (o) {
        b->o = *o;
        if (!b->o.window_ms)
            b->o.window_ms = d.window_ms;
        if (!b->o.min_requests)
            b->o.min_requests = d.min_requests;
        if (!b->o.error_percent)
            b->o.error_percent = d.error_percent;
        if (b->o.error_percent > 100)
            b->o.error_percent = 100;
        if (!b->o.half_open_probes)
            b->o.half_open_probes = d.half_open_probes;
    } else {
        b->o = d;
    }
    b->state = WEFT_BREAKER_CLOSED;
}

static size_t roll(weft_breaker *b, uint64_t now_ms)
{
    uint64_t bms = b->o.window_ms / WEFT_BREAKER_BUCKETS;
    if (bms == 0)
        bms = 1;
    weft_window_roll_(&b->epoch, now_ms / bms, b->ok, b->fail, WEFT_BREAKER_BUCKETS);
    return (size_t)(b->epoch % WEFT_BREAKER_BUCKETS);
}

static void sums(const weft_breaker *b, uint64_t *ok, uint64_t *fail)
{
    uint64_t o = 0, f = 0;
    for (size_t i = 0; i < WEFT_BREAKER_BUCKETS; i++) {
        o += b->ok[i];
        f += b->fail[i];
    }
    *ok = o;
    *fail = f;
}

bool weft_breaker_allow(weft_breaker *b, uint64_t now_ms)
{
    if (!b)
        return false;
    switch (b->state) {
    case WEFT_BREAKER_CLOSED: return true;
    case WEFT_BREAKER_OPEN:
        if (now_ms < b->opened_at_ms + b->o.sleep_ms)
            return false;
        set_state(b, WEFT_BREAKER_HALF_OPEN, now_ms);
        /* fall through */
    case WEFT_BREAKER_HALF_OPEN:
        if (b->probes_out >= b->o.half_open_probes)
            return false;
        b->probes_out++;
        return true;
    default: return false;
    }
}

void weft_breaker_record(weft_breaker *b, uint64_t now_ms, bool success, uint64_t duration_us)
{
    if (!b)
        return;
    bool failed = !success || (b->o.slow_call_us && duration_us > b->o.slow_call_us);
    if (b->state == WEFT_BREAKER_CLOSED) {
        size_t i = roll(b, now_ms);
        weft_sat_inc_(failed ? &b->fail[i] : &b->ok[i]);
        uint64_t ok, fail;
        sums(b, &ok, &fail);
        uint64_t total = ok + fail;
        if (total >= b->o.min_requests && fail * 100 >= (uint64_t)b->o.error_percent * total)
            set_state(b, WEFT_BREAKER_OPEN, now_ms);
        return;
    }
    if (b->state != WEFT_BREAKER_HALF_OPEN || b->probes_out == 0)
        return; /* a straggler admitted before the trip */
    if (failed) {
        set_state(b, WEFT_BREAKER_OPEN, now_ms);
        return;
    }
    b->probes_out--;
    b->probes_ok++;
    if (b->probes_ok >= b->o.half_open_probes)
        set_state(b, WEFT_BREAKER_CLOSED, now_ms);
}

void weft_breaker_release(weft_breaker *b)
{
    if (b && b->state == WEFT_BREAKER_HALF_OPEN && b->probes_out > 0)
        b->probes_out--;
}

int weft_breaker_state(weft_breaker *b, uint64_t now_ms)
{
    WEFT_UNUSED(now_ms);
    return b ? b->state : WEFT_EINVAL;
}

void weft_breaker_counts(weft_breaker *b, uint64_t now_ms, uint32_t *ok, uint32_t *fail)
{
    uint64_t o = 0, f = 0;
    if (b) {
        roll(b, now_ms);
        sums(b, &o, &f);
    }
    if (ok)
        *ok = o > UINT32_MAX ? UINT32_MAX : (uint32_t)o;
    if (fail)
        *fail = f > UINT32_MAX ? UINT32_MAX : (uint32_t)f;
}

const char *weft_breaker_state_name(int state)
{
    switch (state) {
    case WEFT_BREAKER_CLOSED: return "closed";
    case WEFT_BREAKER_OPEN: return "open";
    case WEFT_BREAKER_HALF_OPEN: return "half_open";
    default: return "unknown";
    }
}
