/*
 * group.c — the consumer group coordinator of `weft log` (Kafka's classic
 * protocol) and committed offsets.
 *
 * State machine (Kafka's GroupMetadata/GroupCoordinator):
 *   Empty --join--> PreparingRebalance --all joined / timeout--> CompletingRebalance
 *   CompletingRebalance --leader's SyncGroup--> Stable
 *   Stable --join (new member, the leader, changed metadata), leave,
 *   expiry--> PreparingRebalance
 *   CompletingRebalance --join (new member, changed metadata), leave,
 *   expiry--> PreparingRebalance
 *   (an unchanged rejoin otherwise gets the current generation again)
 *   PreparingRebalance with no member left --> Empty
 *
 * The join barrier: JoinGroup requests are parked until every known member
 * has rejoined or the rebalance timeout (the members' largest) passes;
 * members that did not rejoin are dropped. A group that was empty waits
 * group_initial_delay_ms first (Kafka's group.initial.rebalance.delay.ms)
 * so that consumers started together land in one generation; each new
 * member restarts that delay, but never past the rebalance timeout from
 * the first join. A join into a group with members must offer a protocol
 * they all support, else it alone is refused (INCONSISTENT_GROUP_PROTOCOL).
 * Completing the join bumps the generation, chooses the protocol every member
 * supports (by votes), keeps the leader if it stayed (else the first
 * member), and sends the leader every member's metadata; followers get an
 * empty list. SyncGroup from followers parks until the leader's arrives
 * with the assignments.
 *
 * Liveness: a sweep every 250 ms expires members silent for their session
 * timeout — never one whose JoinGroup or SyncGroup is parked (it is
 * waiting on us, not dead), and its session starts over when that request
 * is answered. Existing members learn of a rebalance from
 * their next Heartbeat (REBALANCE_IN_PROGRESS).
 *
 * Offsets: committed offsets are kept per group/topic/partition and
 * appended to DATA/__consumer_offsets.jsonl (one JSON object per commit,
 * fdatasync'd before the commit is answered, NOT_COORDINATOR if that
 * fails, so the client commits again; a line only partly written is cut
 * off); loading replays it (last write wins) and rewrites it compacted
 * (to a new file, synced, renamed over, directory synced) when it has
 * grown past 16 MiB.
 */
#include "elog.h"

#include "weft/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SWEEP_MS 250
#define MIN_SESSION_MS 6000
#define MAX_SESSION_MS 1800000
#define COMPACT_BYTES (16u << 20)

enum { G_EMPTY = 0, G_PREPARING, G_COMPLETING, G_STABLE };
static const char *const state_names[] = {"Empty", "PreparingRebalance", "CompletingRebalance",
                                          "Stable"};

typedef struct kproto {
    char *name;
    uint8_t *meta;
    size_t len;
} kproto;

/* The protocols a JoinGroup offers (views into the request). */
typedef struct koffer {
    weft_str name, meta;
} koffer;

typedef struct kmember {
    struct kmember *next;
    char *id, *instance_id, *client_id, *host;
    int32_t session_ms, rebalance_ms;
    kproto *protos;
    int nprotos;
    kreq *join, *sync; /* parked requests */
    uint8_t *assignment;
    size_t assign_len;
    uint64_t last_seen_ms;
} kmember;

typedef struct koffset {
    struct koffset *next;
    char *topic;
    int32_t partition;
    int64_t offset;
    int32_t leader_epoch;
    char *metadata;
} koffset;

typedef struct kgroup {
    struct kgroup *next;
    kgroups *gs;
    char *id;
    int state;
    int32_t generation;
    char *protocol_type, *protocol, *leader;
    kmember *members;
    int nmembers;
    bool initial; /* waiting out the initial delay */
    uint64_t initial_end; /* new members extend it up to here */
    weft_timer timer;
    koffset *offsets;
} kgroup;

struct kgroups {
    elog *e;
    kgroup *groups;
    weft_timer sweep;
    int fd;
    uint64_t file_bytes;
    uint64_t member_seq;
};

/* ---- helpers ---- */

static char *dupn(weft_str s)
{
    return strndup(s.p ? s.p : "", s.p ? s.n : 0);
}

/* Names are kept as C strings: one with a NUL byte could never be found
 * again, so it is refused. */
static bool has_nul(weft_str s) { return s.p && memchr(s.p, '\0', s.n) != NULL; }

static uint64_t now_ms(kgroups *gs) { return weft_loop_now_ms(gs->e->loop); }

static kgroup *group_find(kgroups *gs, weft_str id)
{
    for (kgroup *g = gs->groups; g; g = g->next)
        if (weft_str_eq(weft_str_from(g->id), id))
            return g;
    return NULL;
}

static void group_timer_cb(weft_loop *loop, weft_timer *t);

static kgroup *group_get(kgroups *gs, weft_str id)
{
    kgroup *g = group_find(gs, id);
    if (g || has_nul(id))
        return g;
    g = calloc(1, sizeof *g);
    if (!g || !(g->id = dupn(id))) {
        free(g);
        return NULL;
    }
    g->gs = gs;
    weft_timer_init(&g->timer, group_timer_cb, g);
    g->next = gs->groups;
    gs->groups = g;
    return g;
}

static kmember *member_find(kgroup *g, weft_str id)
{
    for (kmember *m = g->members; m; m = m->next)
        if (weft_str_eq(weft_str_from(m->id), id))
            return m;
    return NULL;
}

static void protos_drop(kproto *p, int n);

static void protos_free(kmember *m)
{
    protos_drop(m->protos, m->nprotos);
    m->protos = NULL;
    m->nprotos = 0;
}

static void protos_drop(kproto *p, int n)
{
    for (int i = 0; p && i < n; i++) {
        free(p[i].name);
        free(p[i].meta);
    }
    free(p);
}

/* A copy of what a JoinGroup offers, or NULL when out of memory. */
static kproto *protos_copy(const koffer *offer, int n)
{
    kproto *p = calloc(n ? (size_t)n : 1, sizeof *p);
    for (int i = 0; p && i < n; i++) {
        size_t ml = offer[i].meta.n;
        p[i].name = dupn(offer[i].name);
        p[i].meta = malloc(ml ? ml : 1);
        p[i].len = ml;
        if (!p[i].name || !p[i].meta) {
            protos_drop(p, i + 1);
            return NULL;
        }
        if (ml)
            memcpy(p[i].meta, offer[i].meta.p, ml);
    }
    return p;
}

static void member_free(kmember *m)
{
    protos_free(m);
    free(m->id);
    free(m->instance_id);
    free(m->client_id);
    free(m->host);
    free(m->assignment);
    free(m);
}

/* The join/sync response writers. */
static void answer_join(kgroup *g, kmember *m, kreq *q, int err)
{
    int16_t v = q->api_version;
    kf_writer *w = kreq_writer(q);
    if (v >= 2)
        kf_w_i32(w, 0);
    kf_w_i16(w, (int16_t)err);
    kf_w_i32(w, err ? -1 : g->generation);
    kf_w_cstr(w, err || !g->protocol ? "" : g->protocol);
    kf_w_cstr(w, err || !g->leader ? "" : g->leader);
    kf_w_cstr(w, m ? m->id : "");
    if (!err && m && g->leader && !strcmp(m->id, g->leader)) {
        kf_w_i32(w, g->nmembers);
        for (kmember *o = g->members; o; o = o->next) {
            kf_w_cstr(w, o->id);
            if (v >= 5)
                kf_w_str(w, o->instance_id ? weft_str_from(o->instance_id) : WEFT_STR_NULL);
            const kproto *p = NULL;
            for (int i = 0; i < o->nprotos; i++)
                if (!strcmp(o->protos[i].name, g->protocol))
                    p = &o->protos[i];
            kf_w_bytes(w, p ? (const void *)(p->meta ? p->meta : (uint8_t *)"") : "",
                       p ? p->len : 0);
        }
    } else {
        kf_w_i32(w, 0);
    }
    kreq_complete(q);
}

static void answer_sync(kreq *q, int err, const uint8_t *a, size_t n)
{
    kf_writer *w = kreq_writer(q);
    if (q->api_version >= 1)
        kf_w_i32(w, 0);
    kf_w_i16(w, (int16_t)err);
    kf_w_bytes(w, err ? "" : (a ? (const void *)a : ""), err ? 0 : n);
    kreq_complete(q);
}

static void simple_answer(kreq *q, int err, int16_t throttle_from)
{
    kf_writer *w = kreq_writer(q);
    if (q->api_version >= throttle_from)
        kf_w_i32(w, 0);
    kf_w_i16(w, (int16_t)err);
    kreq_complete(q);
}

/* Take a parked JoinGroup/SyncGroup out of its slot so it can be answered. */
static kreq *unpark(kreq **slot)
{
    kreq *q = *slot;
    *slot = NULL;
    q->cancel = NULL;
    q->state = NULL;
    return q;
}

/* ---- the state machine ---- */

static void complete_join(kgroup *g);

static int32_t rebalance_timeout(kgroup *g)
{
    int32_t t = 0;
    for (kmember *m = g->members; m; m = m->next)
        if (m->rebalance_ms > t)
            t = m->rebalance_ms;
    return t > 0 ? t : 60000;
}

static void prepare_rebalance(kgroup *g)
{
    if (g->state == G_PREPARING)
        return;
    /* members waiting in SyncGroup of the old generation must rejoin; they
     * were alive while parked, so their session starts over now */
    uint64_t now = now_ms(g->gs);
    for (kmember *m = g->members; m; m = m->next)
        if (m->sync) {
            kreq *q = unpark(&m->sync);
            m->last_seen_ms = now;
            answer_sync(q, KE_REBALANCE_IN_PROGRESS, NULL, 0);
        }
    bool was_empty = g->state == G_EMPTY;
    g->state = G_PREPARING;
    g->initial = was_empty && g->gs->e->o.group_initial_delay_ms > 0;
    uint32_t delay = g->gs->e->o.group_initial_delay_ms, rebalance = (uint32_t)rebalance_timeout(g);
    uint32_t wait = g->initial ? delay : rebalance;
    /* as Kafka's InitialDelayedJoin: extensions stop at the rebalance timeout */
    g->initial_end = now + (rebalance > delay ? rebalance : delay);
    weft_timer_start(g->gs->e->loop, &g->timer, wait);
    weft_log(WEFT_LOG_INFO, "group rebalancing", WEFT_KV_STR("group", g->id),
             WEFT_KV_INT("members", g->nmembers), WEFT_KV_INT("generation", g->generation));
}

/* Restart the initial delay, but not past initial_end. */
static void extend_initial_delay(kgroup *g)
{
    uint64_t now = now_ms(g->gs), wait = g->gs->e->o.group_initial_delay_ms;
    if (now + wait > g->initial_end)
        wait = g->initial_end > now ? g->initial_end - now : 0;
    weft_timer_start(g->gs->e->loop, &g->timer, wait);
}

static bool all_joined(kgroup *g)
{
    for (kmember *m = g->members; m; m = m->next)
        if (!m->join)
            return false;
    return true;
}

static void maybe_complete_join(kgroup *g)
{
    if (g->state == G_PREPARING && !g->initial && all_joined(g))
        complete_join(g);
}

static void remove_member(kgroup *g, kmember *m, int err_for_parked)
{
    kmember **pp = &g->members;
    while (*pp && *pp != m)
        pp = &(*pp)->next;
    if (*pp)
        *pp = m->next;
    g->nmembers--;
    if (m->join) {
        kreq *q = unpark(&m->join);
        answer_join(g, NULL, q, err_for_parked);
    }
    if (m->sync) {
        kreq *q = unpark(&m->sync);
        answer_sync(q, err_for_parked, NULL, 0);
    }
    if (g->leader && !strcmp(g->leader, m->id)) {
        free(g->leader);
        g->leader = NULL;
    }
    member_free(m);
}

/* Choose the protocol every member supports; most first-preferences wins. */
static char *choose_protocol(kgroup *g)
{
    if (!g->members)
        return NULL;
    const char *best = NULL;
    int best_votes = -1;
    kmember *first = g->members;
    for (int i = 0; i < first->nprotos; i++) {
        const char *cand = first->protos[i].name;
        bool everyone = true;
        int votes = 0;
        for (kmember *m = g->members; m && everyone; m = m->next) {
            int at = -1;
            for (int k = 0; k < m->nprotos; k++)
                if (!strcmp(m->protos[k].name, cand))
                    at = k;
            everyone = at >= 0;
            votes += at == 0;
        }
        if (everyone && votes > best_votes) {
            best = cand;
            best_votes = votes;
        }
    }
    return best ? strdup(best) : NULL;
}

static void complete_join(kgroup *g)
{
    weft_timer_stop(g->gs->e->loop, &g->timer);
    /* members that did not rejoin in time are out */
    for (kmember *m = g->members, *next; m; m = next) {
        next = m->next;
        if (!m->join)
            remove_member(g, m, KE_UNKNOWN_MEMBER_ID);
    }
    g->generation++;
    free(g->protocol);
    g->protocol = choose_protocol(g);
    if (!g->members) {
        g->state = G_EMPTY;
        free(g->protocol_type);
        g->protocol_type = NULL;
        weft_log(WEFT_LOG_INFO, "group empty", WEFT_KV_STR("group", g->id),
                 WEFT_KV_INT("generation", g->generation));
        return;
    }
    if (!g->leader) {
        /* the first member that joined (the list is newest-first) */
        kmember *last = g->members;
        while (last->next)
            last = last->next;
        g->leader = strdup(last->id);
    }
    g->state = G_COMPLETING;
    uint64_t now = now_ms(g->gs);
    for (kmember *m = g->members; m; m = m->next) {
        free(m->assignment);
        m->assignment = NULL;
        m->assign_len = 0;
        m->last_seen_ms = now;
        /* answering may flush, fail and close a connection, whose cancel
         * hooks then unpark the joins of later members parked on it */
        if (!m->join)
            continue;
        kreq *q = unpark(&m->join);
        answer_join(g, m, q, g->protocol ? KE_NONE : KE_INCONSISTENT_GROUP_PROTOCOL);
    }
    weft_log(WEFT_LOG_INFO, "group joined", WEFT_KV_STR("group", g->id),
             WEFT_KV_INT("generation", g->generation), WEFT_KV_INT("members", g->nmembers),
             WEFT_KV_STR("leader", g->leader), WEFT_KV_STR("protocol", g->protocol ? g->protocol : ""));
}

static void group_timer_cb(weft_loop *loop, weft_timer *t)
{
    (void)loop;
    kgroup *g = t->data;
    if (g->state != G_PREPARING)
        return;
    if (g->initial) { /* the initial delay is over: now wait for stragglers as usual */
        g->initial = false;
        if (!all_joined(g)) {
            weft_timer_start(g->gs->e->loop, &g->timer, (uint64_t)rebalance_timeout(g));
            return;
        }
    }
    complete_join(g);
}

/* A parked join or sync whose connection died. */
static void parked_cancel(kreq *q)
{
    kmember *m = q->state;
    if (m) {
        if (m->join == q)
            m->join = NULL;
        if (m->sync == q)
            m->sync = NULL;
    }
    q->state = NULL;
}

static void group_free(kgroups *gs, kgroup *g);

static void sweep_cb(weft_loop *loop, weft_timer *t)
{
    kgroups *gs = t->data;
    uint64_t now = weft_loop_now_ms(loop);
    /* groups with nothing left (no member, no committed offset) are dropped */
    for (kgroup **pp = &gs->groups; *pp;) {
        kgroup *g = *pp;
        if (g->state == G_EMPTY && !g->members && !g->offsets) {
            *pp = g->next;
            group_free(gs, g);
        } else {
            pp = &g->next;
        }
    }
    for (kgroup *g = gs->groups; g; g = g->next) {
        bool changed = false;
        for (kmember *m = g->members, *next; m; m = next) {
            next = m->next;
            if (m->join || m->sync || now < m->last_seen_ms + (uint64_t)m->session_ms)
                continue;
            weft_log(WEFT_LOG_INFO, "group member expired", WEFT_KV_STR("group", g->id),
                     WEFT_KV_STR("member", m->id));
            remove_member(g, m, KE_UNKNOWN_MEMBER_ID);
            changed = true;
        }
        if (!changed)
            continue;
        if (g->state == G_STABLE || g->state == G_COMPLETING)
            prepare_rebalance(g);
        if (g->state == G_PREPARING && !g->members)
            complete_join(g);
        else
            maybe_complete_join(g);
    }
    weft_timer_start(loop, t, SWEEP_MS);
}

/* ---- offsets persistence ---- */

static koffset *offset_find(kgroup *g, weft_str topic, int32_t partition)
{
    for (koffset *o = g->offsets; o; o = o->next)
        if (o->partition == partition && weft_str_eq(weft_str_from(o->topic), topic))
            return o;
    return NULL;
}

static koffset *offset_set(kgroup *g, weft_str topic, int32_t partition, int64_t offset,
                           int32_t epoch, weft_str meta)
{
    if (has_nul(topic))
        return NULL;
    koffset *o = offset_find(g, topic, partition);
    if (!o) {
        o = calloc(1, sizeof *o);
        if (!o || !(o->topic = dupn(topic))) {
            free(o);
            return NULL;
        }
        o->partition = partition;
        o->next = g->offsets;
        g->offsets = o;
    }
    char *md = meta.p ? dupn(meta) : NULL;
    free(o->metadata);
    o->metadata = md;
    o->offset = offset;
    o->leader_epoch = epoch;
    return o;
}

static int offsets_path(kgroups *gs, char *buf, size_t n, const char *suffix)
{
    return snprintf(buf, n, "%s/__consumer_offsets.jsonl%s", gs->e->data_dir, suffix);
}

/* Append one offset as a JSON line to fd, which is `size` bytes long. A
 * failed or short write is cut off again, so that the next line does not
 * land after half a line (both would be lost at load). */
static int write_line(int fd, uint64_t size, kgroup *g, koffset *o)
{
    json_t *j = json_pack("{s:s, s:s, s:i, s:I, s:i, s:s?}", "group", g->id, "topic", o->topic,
                          "partition", (int)o->partition, "offset", (json_int_t)o->offset,
                          "epoch", (int)o->leader_epoch, "metadata", o->metadata);
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!s)
        return WEFT_ENOMEM;
    size_t n = strlen(s);
    s[n] = '\n'; /* json_dumps leaves room for the NUL we overwrite; write n+1 */
    ssize_t w = write(fd, s, n + 1);
    free(s);
    if (w == (ssize_t)(n + 1))
        return (int)(n + 1);
    if (w > 0 && ftruncate(fd, (off_t)size) < 0)
        weft_log(WEFT_LOG_ERROR, "committed offsets: cannot cut a partly written line",
                 WEFT_KV_STR("error", strerror(errno)));
    return WEFT_EIO;
}

static void offsets_compact(kgroups *gs)
{
    char path[4096], tmp[4096];
    offsets_path(gs, path, sizeof path, "");
    offsets_path(gs, tmp, sizeof tmp, ".tmp");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    uint64_t bytes = 0;
    bool ok = true;
    for (kgroup *g = gs->groups; g && ok; g = g->next)
        for (koffset *o = g->offsets; o && ok; o = o->next) {
            int n = write_line(fd, bytes, g, o);
            ok = n > 0;
            bytes += n > 0 ? (uint64_t)n : 0;
        }
    if (ok && fsync(fd) == 0 && rename(tmp, path) == 0) {
        int dfd = open(gs->e->data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0 || fsync(dfd) < 0) /* the rename itself must survive a crash */
            weft_log(WEFT_LOG_ERROR, "committed offsets: cannot sync the data directory",
                     WEFT_KV_STR("error", strerror(errno)));
        if (dfd >= 0)
            close(dfd);
        close(gs->fd);
        gs->fd = fd;
        gs->file_bytes = bytes;
        return;
    }
    close(fd);
    unlink(tmp);
}

static void offsets_load(kgroups *gs)
{
    char path[4096];
    offsets_path(gs, path, sizeof path, "");
    FILE *f = fopen(path, "r");
    size_t lines = 0, bad = 0;
    if (f) {
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        while ((n = getline(&line, &cap, f)) > 0) {
            json_t *j = json_loadb(line, (size_t)n, 0, NULL);
            const char *gid = json_string_value(json_object_get(j, "group"));
            const char *topic = json_string_value(json_object_get(j, "topic"));
            kgroup *g = gid ? group_get(gs, weft_str_from(gid)) : NULL;
            if (g && topic) {
                offset_set(g, weft_str_from(topic),
                           (int32_t)json_integer_value(json_object_get(j, "partition")),
                           json_integer_value(json_object_get(j, "offset")),
                           (int32_t)json_integer_value(json_object_get(j, "epoch")),
                           weft_str_from(json_string_value(json_object_get(j, "metadata"))));
                lines++;
            } else {
                bad++; /* a torn last line after a crash: that commit was never answered */
            }
            json_decref(j);
        }
        free(line);
        fclose(f);
    }
    if (bad)
        weft_log(WEFT_LOG_WARN, "committed offsets: unreadable lines skipped",
                 WEFT_KV_UINT("lines", bad));
    gs->fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    gs->file_bytes = (uint64_t)lseek(gs->fd, 0, SEEK_END);
    if (gs->file_bytes > COMPACT_BYTES || bad)
        offsets_compact(gs);
    weft_log(WEFT_LOG_INFO, "committed offsets loaded", WEFT_KV_UINT("records", lines));
}

/* ---- API handlers ---- */

static int session_ok(int32_t ms) { return ms >= MIN_SESSION_MS && ms <= MAX_SESSION_MS; }

/* Kafka's supportsProtocols: a group with members takes a join only if it
 * offers a protocol every current member supports; otherwise the rebalance
 * it starts could choose none and every member would be refused. */
static bool offers_common_protocol(kgroup *g, const koffer *offer, int n)
{
    for (int i = 0; i < n; i++) {
        bool everyone = true;
        for (kmember *m = g->members; m && everyone; m = m->next) {
            everyone = false;
            for (int k = 0; k < m->nprotos && !everyone; k++)
                everyone = weft_str_eq(weft_str_from(m->protos[k].name), offer[i].name);
        }
        if (everyone)
            return true;
    }
    return false;
}

static void h_find_coordinator(elog *e, kreq *q, kf_reader *r)
{
    int16_t v = q->api_version;
    weft_str key = kf_str(r);
    int8_t type = v >= 1 ? kf_i8(r) : 0;
    if (!kf_ok(r)) {
        elog_fail_request(e, q, "malformed group request");
        return;
    }
    int err = type != 0 ? KE_COORDINATOR_NOT_AVAILABLE : !key.n ? KE_INVALID_GROUP_ID : KE_NONE;
    kf_writer *w = kreq_writer(q);
    if (v >= 1)
        kf_w_i32(w, 0);
    kf_w_i16(w, (int16_t)err);
    if (v >= 1)
        kf_w_str(w, err ? weft_str_from("transactions are not supported") : WEFT_STR_NULL);
    kf_w_i32(w, err ? -1 : 0);
    kf_w_cstr(w, err ? "" : e->adv_host);
    kf_w_i32(w, err ? -1 : e->adv_port);
    kreq_complete(q);
}

static void h_join(kgroups *gs, kreq *q, kf_reader *r)
{
    int16_t v = q->api_version;
    weft_str gid = kf_str(r);
    int32_t session = kf_i32(r);
    int32_t rebalance = v >= 1 ? kf_i32(r) : session;
    weft_str mid = kf_str(r);
    weft_str inst = v >= 5 ? kf_str(r) : WEFT_STR_NULL;
    weft_str ptype = kf_str(r);
    int32_t np = kf_array(r, 6, false);
    koffer protos[64];
    int n = 0;
    for (int32_t i = 0; i < np && kf_ok(r); i++) {
        weft_str name = kf_str(r), meta = kf_bytes(r);
        if (n < (int)WEFT_ARRAY_LEN(protos)) {
            protos[n].name = name;
            protos[n++].meta = meta;
        }
    }
    if (!kf_ok(r)) {
        elog_fail_request(gs->e, q, "malformed group request");
        return;
    }
    kgroup *g = NULL;
    int err = KE_NONE;
    if (!gid.n || has_nul(gid))
        err = KE_INVALID_GROUP_ID;
    else if (!session_ok(session))
        err = KE_INVALID_SESSION_TIMEOUT;
    else if (!(g = group_get(gs, gid)))
        err = KE_COORDINATOR_NOT_AVAILABLE;
    else if (n == 0 || !ptype.n ||
             (g->protocol_type && g->nmembers && !weft_str_eq(weft_str_from(g->protocol_type), ptype)) ||
             (g->nmembers && !offers_common_protocol(g, protos, n)))
        err = KE_INCONSISTENT_GROUP_PROTOCOL;
    kmember *m = NULL;
    if (!err && mid.n && !(m = member_find(g, mid)))
        err = KE_UNKNOWN_MEMBER_ID;
    if (err) {
        kgroup tmp = {0};
        answer_join(&tmp, NULL, q, err);
        weft_metric_inc(gs->e->m, gs->e->m_errors);
        return;
    }
    bool fresh = !m;
    bool changed = fresh || m->nprotos != n;
    for (int i = 0; !changed && i < n; i++)
        changed = !weft_str_eq(weft_str_from(m->protos[i].name), protos[i].name) ||
                  !weft_str_eq((weft_str){(const char *)m->protos[i].meta, m->protos[i].len},
                               protos[i].meta);
    /* copy everything the member record will hold first, so that running
     * out of memory leaves the group as it was */
    kproto *offered = changed ? protos_copy(protos, n) : NULL;
    char *cid = strdup(q->client_id), *host = strdup(kreq_peer(q));
    char *iid = inst.p ? dupn(inst) : NULL, *pt = g->protocol_type ? NULL : dupn(ptype);
    kmember *nm = fresh ? calloc(1, sizeof *nm) : NULL;
    if (fresh && nm) {
        char id[256];
        snprintf(id, sizeof id, "%s-%llx-%llx", q->client_id[0] ? q->client_id : "member",
                 (unsigned long long)weft_loop_wall_s(gs->e->loop),
                 (unsigned long long)++gs->member_seq);
        nm->id = strdup(id);
    }
    if ((changed && !offered) || !cid || !host || (inst.p && !iid) ||
        (!g->protocol_type && !pt) || (fresh && (!nm || !nm->id))) {
        protos_drop(offered, n);
        free(pt);
        free(cid);
        free(host);
        free(iid);
        if (nm)
            free(nm->id);
        free(nm);
        elog_fail_request(gs->e, q, "out of memory");
        return;
    }
    if (fresh) {
        m = nm;
        m->next = g->members;
        g->members = m;
        g->nmembers++;
    }
    if (changed) {
        protos_free(m);
        m->protos = offered;
        m->nprotos = n;
    }
    m->session_ms = session;
    m->rebalance_ms = rebalance;
    free(m->client_id);
    m->client_id = cid;
    free(m->host);
    m->host = host;
    free(m->instance_id);
    m->instance_id = iid;
    m->last_seen_ms = now_ms(gs);
    if (pt)
        g->protocol_type = pt;
    if (m->join) { /* a retried join replaces the parked one */
        kreq *old = unpark(&m->join);
        answer_join(g, m, old, KE_REBALANCE_IN_PROGRESS);
    }
    /* Kafka's doJoinGroup for a known member: rejoining unchanged while the
     * assignment is being synced (its JoinGroup answer was lost, say), or
     * as a follower of a stable group, gets the current generation again
     * (the leader with every member's metadata) instead of a rebalance */
    if (!changed && g->leader &&
        (g->state == G_COMPLETING || (g->state == G_STABLE && strcmp(g->leader, m->id) != 0))) {
        answer_join(g, m, q, KE_NONE);
        return;
    }
    m->join = q;
    q->state = m;
    q->cancel = parked_cancel;
    if (g->state != G_PREPARING)
        prepare_rebalance(g);
    else if (g->initial && fresh) /* more consumers arriving: extend the initial delay */
        extend_initial_delay(g);
    maybe_complete_join(g);
}

/* Look up group + member + generation for Sync/Heartbeat/Commit. */
static int check_member(kgroups *gs, weft_str gid, int32_t gen, weft_str mid, kgroup **gp,
                        kmember **mp)
{
    kgroup *g = group_find(gs, gid);
    kmember *m = g ? member_find(g, mid) : NULL;
    *gp = g;
    *mp = m;
    if (!m)
        return KE_UNKNOWN_MEMBER_ID;
    if (gen != g->generation)
        return KE_ILLEGAL_GENERATION;
    return KE_NONE;
}

static void h_sync(kgroups *gs, kreq *q, kf_reader *r)
{
    int16_t v = q->api_version;
    weft_str gid = kf_str(r);
    int32_t gen = kf_i32(r);
    weft_str mid = kf_str(r);
    if (v >= 3)
        kf_str(r);
    int32_t na = kf_array(r, 6, false);
    kf_reader assigns = *r;
    for (int32_t i = 0; i < na; i++) {
        kf_str(r);
        kf_bytes(r);
    }
    if (!kf_ok(r)) {
        elog_fail_request(gs->e, q, "malformed group request");
        return;
    }
    kgroup *g;
    kmember *m;
    int err = check_member(gs, gid, gen, mid, &g, &m);
    if (!err && g->state == G_PREPARING)
        err = KE_REBALANCE_IN_PROGRESS;
    if (err) {
        weft_metric_inc(gs->e->m, gs->e->m_errors);
        answer_sync(q, err, NULL, 0);
        return;
    }
    m->last_seen_ms = now_ms(gs);
    if (g->state == G_STABLE) {
        answer_sync(q, KE_NONE, m->assignment, m->assign_len);
        return;
    }
    /* CompletingRebalance */
    if (m->sync) {
        kreq *old = unpark(&m->sync);
        answer_sync(old, KE_REBALANCE_IN_PROGRESS, NULL, 0);
    }
    m->sync = q;
    q->state = m;
    q->cancel = parked_cancel;
    if (!g->leader || strcmp(g->leader, m->id) != 0)
        return; /* followers wait for the leader's assignments */
    for (int32_t i = 0; i < na; i++) {
        weft_str to = kf_str(&assigns), a = kf_bytes(&assigns);
        kmember *o = member_find(g, to);
        if (!o)
            continue;
        free(o->assignment);
        o->assignment = malloc(a.n ? a.n : 1);
        o->assign_len = o->assignment ? a.n : 0;
        if (o->assignment && a.n)
            memcpy(o->assignment, a.p, a.n);
    }
    g->state = G_STABLE;
    uint64_t now = now_ms(gs);
    for (kmember *o = g->members; o; o = o->next)
        if (o->sync) { /* parked followers get a full session from now */
            kreq *sq = unpark(&o->sync);
            o->last_seen_ms = now;
            answer_sync(sq, KE_NONE, o->assignment, o->assign_len);
        }
    weft_log(WEFT_LOG_INFO, "group stable", WEFT_KV_STR("group", g->id),
             WEFT_KV_INT("generation", g->generation), WEFT_KV_INT("members", g->nmembers));
}

static void h_heartbeat(kgroups *gs, kreq *q, kf_reader *r)
{
    int16_t v = q->api_version;
    weft_str gid = kf_str(r);
    int32_t gen = kf_i32(r);
    weft_str mid = kf_str(r);
    if (v >= 3)
        kf_str(r);
    if (!kf_ok(r)) {
        elog_fail_request(gs->e, q, "malformed group request");
        return;
    }
    kgroup *g;
    kmember *m;
    int err = check_member(gs, gid, gen, mid, &g, &m);
    if (m)
        m->last_seen_ms = now_ms(gs);
    if (!err && g->state != G_STABLE)
        err = KE_REBALANCE_IN_PROGRESS;
    simple_answer(q, err, 1);
}

static void h_leave(kgroups *gs, kreq *q, kf_reader *r)
{
    weft_str gid = kf_str(r), mid = kf_str(r);
    if (!kf_ok(r)) {
        elog_fail_request(gs->e, q, "malformed group request");
        return;
    }
    kgroup *g = group_find(gs, gid);
    kmember *m = g ? member_find(g, mid) : NULL;
    if (!m) {
        simple_answer(q, KE_UNKNOWN_MEMBER_ID, 1);
        return;
    }
    weft_log(WEFT_LOG_INFO, "group member left", WEFT_KV_STR("group", g->id),
             WEFT_KV_STR("member", m->id));
    remove_member(g, m, KE_UNKNOWN_MEMBER_ID);
    if (g->state == G_STABLE || g->state == G_COMPLETING)
        prepare_rebalance(g);
    if (g->state == G_PREPARING && !g->members)
        complete_join(g);
    else
        maybe_complete_join(g);
    simple_answer(q, KE_NONE, 1);
}

/* The offsets a commit wrote are not durable: every partition its response
 * (topics array at `at`) answered without an error — exactly those written
 * — gets NOT_COORDINATOR (16), what Kafka answers when its offsets log
 * cannot be written, so the client commits again. */
static void commit_not_durable(kf_writer *w, size_t at)
{
    kf_reader rd;
    kf_reader_init(&rd, (const uint8_t *)weft_buf_rptr(w->b) + at, weft_buf_used(w->b) - at);
    int32_t nt = kf_i32(&rd);
    for (int32_t i = 0; i < nt && kf_ok(&rd); i++) {
        kf_str(&rd);
        int32_t np = kf_i32(&rd);
        for (int32_t k = 0; k < np && kf_ok(&rd); k++) {
            kf_i32(&rd);
            size_t err_at = at + rd.off;
            if (kf_i16(&rd) == KE_NONE && kf_ok(&rd))
                kf_w_patch_i16(w, err_at, 16);
        }
    }
}

static void h_offset_commit(kgroups *gs, kreq *q, kf_reader *r)
{
    int16_t v = q->api_version;
    weft_str gid = kf_str(r);
    int32_t gen = v >= 1 ? kf_i32(r) : -1;
    weft_str mid = v >= 1 ? kf_str(r) : WEFT_STR_NULL;
    if (v >= 2 && v <= 4)
        kf_i64(r); /* retention time */
    if (v >= 7)
        kf_str(r);
    kf_reader body = *r;
    /* structure first: nothing is committed from a malformed request */
    int32_t nt = kf_array(r, 6, false);
    for (int32_t i = 0; i < nt && kf_ok(r); i++) {
        kf_str(r);
        int32_t np = kf_array(r, 14, false);
        for (int32_t k = 0; k < np && kf_ok(r); k++) {
            kf_i32(r);
            kf_i64(r);
            if (v >= 6)
                kf_i32(r);
            if (v == 1)
                kf_i64(r);
            kf_str(r);
        }
    }
    if (!kf_ok(r)) {
        elog_fail_request(gs->e, q, "malformed group request");
        return;
    }
    kgroup *g = group_find(gs, gid);
    int err = KE_NONE;
    if (!gid.n || has_nul(gid))
        err = KE_INVALID_GROUP_ID;
    else if (gen < 0 && (!g || g->state == G_EMPTY))
        err = KE_NONE; /* a simple (group-less) commit */
    else if (!g || !member_find(g, mid))
        err = KE_UNKNOWN_MEMBER_ID;
    else if (gen != g->generation)
        err = KE_ILLEGAL_GENERATION;
    else if (g->state == G_COMPLETING)
        err = KE_REBALANCE_IN_PROGRESS;
    if (!err && !g && !(g = group_get(gs, gid)))
        err = KE_COORDINATOR_NOT_AVAILABLE;
    if (!err) {
        kmember *m = member_find(g, mid);
        if (m)
            m->last_seen_ms = now_ms(gs);
    }
    *r = body;
    kf_writer *w = kreq_writer(q);
    if (v >= 3)
        kf_w_i32(w, 0);
    nt = kf_array(r, 6, false);
    size_t topics_at = weft_buf_used(w->b);
    kf_w_i32(w, nt);
    bool wrote = false;
    for (int32_t i = 0; i < nt; i++) {
        weft_str topic = kf_str(r);
        kf_w_str(w, topic);
        int32_t np = kf_array(r, 14, false);
        kf_w_i32(w, np);
        for (int32_t k = 0; k < np; k++) {
            int32_t part = kf_i32(r);
            int64_t off = kf_i64(r);
            int32_t epoch = v >= 6 ? kf_i32(r) : -1;
            if (v == 1)
                kf_i64(r);
            weft_str meta = kf_str(r);
            int perr = err;
            if (!perr && meta.n > 4096)
                perr = 12; /* OFFSET_METADATA_TOO_LARGE */
            koffset *o = perr ? NULL : offset_set(g, topic, part, off, epoch, meta);
            if (!perr && !o)
                perr = has_nul(topic) ? KE_INVALID_TOPIC_EXCEPTION : KE_COORDINATOR_NOT_AVAILABLE;
            if (!perr) {
                int nw = write_line(gs->fd, gs->file_bytes, g, o);
                if (nw < 0)
                    perr = KE_COORDINATOR_NOT_AVAILABLE;
                else
                    gs->file_bytes += (uint64_t)nw;
                wrote = true;
            }
            kf_w_i32(w, part);
            kf_w_i16(w, (int16_t)perr);
        }
    }
    if (wrote && fdatasync(gs->fd) < 0) {
        weft_log(WEFT_LOG_ERROR, "committed offsets: fdatasync failed",
                 WEFT_KV_STR("error", strerror(errno)));
        commit_not_durable(w, topics_at);
    }
    if (gs->file_bytes > COMPACT_BYTES)
        offsets_compact(gs);
    kreq_complete(q);
}

static void write_offset(kf_writer *w, int16_t v, int32_t part, const koffset *o)
{
    kf_w_i32(w, part);
    kf_w_i64(w, o ? o->offset : -1);
    if (v >= 5)
        kf_w_i32(w, o ? o->leader_epoch : -1);
    kf_w_str(w, o && o->metadata ? weft_str_from(o->metadata) : weft_str_from(""));
    kf_w_i16(w, KE_NONE);
}

static void h_offset_fetch(kgroups *gs, kreq *q, kf_reader *r)
{
    int16_t v = q->api_version;
    weft_str gid = kf_str(r);
    int32_t nt = kf_array(r, 6, v >= 2);
    kf_reader topics = *r;
    for (int32_t i = 0; i < nt; i++) {
        kf_str(r);
        int32_t np = kf_array(r, 4, false);
        for (int32_t k = 0; k < np; k++)
            kf_i32(r);
    }
    if (!kf_ok(r)) {
        elog_fail_request(gs->e, q, "malformed group request");
        return;
    }
    kgroup *g = group_find(gs, gid);
    kf_writer *w = kreq_writer(q);
    if (v >= 3)
        kf_w_i32(w, 0);
    if (nt < 0) { /* every committed offset of the group */
        size_t at = kf_w_mark(w);
        int32_t count = 0;
        for (koffset *o = g ? g->offsets : NULL; o; o = o->next, count++) {
            kf_w_cstr(w, o->topic);
            kf_w_i32(w, 1);
            write_offset(w, v, o->partition, o);
        }
        kf_w_patch_i32(w, at, count);
    } else {
        *r = topics;
        kf_w_i32(w, nt);
        for (int32_t i = 0; i < nt; i++) {
            weft_str topic = kf_str(r);
            kf_w_str(w, topic);
            int32_t np = kf_array(r, 4, false);
            kf_w_i32(w, np);
            for (int32_t k = 0; k < np; k++) {
                int32_t part = kf_i32(r);
                write_offset(w, v, part, g ? offset_find(g, topic, part) : NULL);
            }
        }
    }
    if (v >= 2)
        kf_w_i16(w, gid.n ? KE_NONE : KE_INVALID_GROUP_ID);
    kreq_complete(q);
}

static void h_list_groups(kgroups *gs, kreq *q)
{
    kf_writer *w = kreq_writer(q);
    if (q->api_version >= 1)
        kf_w_i32(w, 0);
    kf_w_i16(w, KE_NONE);
    size_t at = kf_w_mark(w);
    int32_t n = 0;
    for (kgroup *g = gs->groups; g; g = g->next, n++) {
        kf_w_cstr(w, g->id);
        kf_w_cstr(w, g->protocol_type ? g->protocol_type : "");
    }
    kf_w_patch_i32(w, at, n);
    kreq_complete(q);
}

static void h_describe_groups(kgroups *gs, kreq *q, kf_reader *r)
{
    int32_t n = kf_array(r, 2, false);
    kf_reader ids = *r;
    for (int32_t i = 0; i < n; i++)
        kf_str(r);
    if (!kf_ok(r)) {
        elog_fail_request(gs->e, q, "malformed group request");
        return;
    }
    kf_writer *w = kreq_writer(q);
    if (q->api_version >= 1)
        kf_w_i32(w, 0);
    kf_w_i32(w, n);
    for (int32_t i = 0; i < n; i++) {
        weft_str id = kf_str(&ids);
        kgroup *g = group_find(gs, id);
        kf_w_i16(w, KE_NONE);
        kf_w_str(w, id);
        kf_w_cstr(w, g ? state_names[g->state] : "Dead");
        kf_w_cstr(w, g && g->protocol_type ? g->protocol_type : "");
        kf_w_cstr(w, g && g->state == G_STABLE && g->protocol ? g->protocol : "");
        kf_w_i32(w, g ? g->nmembers : 0);
        for (kmember *m = g ? g->members : NULL; m; m = m->next) {
            kf_w_cstr(w, m->id);
            kf_w_cstr(w, m->client_id ? m->client_id : "");
            kf_w_cstr(w, m->host ? m->host : "");
            const kproto *p = NULL;
            for (int k = 0; g->protocol && k < m->nprotos; k++)
                if (!strcmp(m->protos[k].name, g->protocol))
                    p = &m->protos[k];
            kf_w_bytes(w, p && p->meta ? (const void *)p->meta : "", p ? p->len : 0);
            kf_w_bytes(w, m->assignment ? (const void *)m->assignment : "", m->assign_len);
        }
    }
    kreq_complete(q);
}

void elog_handle_group(elog *e, kreq *q, kf_reader *r)
{
    kgroups *gs = e->groups; /* the version was checked by elog_handle */
    switch (q->api_key) {
    case KA_FIND_COORDINATOR: h_find_coordinator(e, q, r); break;
    case KA_JOIN_GROUP: h_join(gs, q, r); break;
    case KA_SYNC_GROUP: h_sync(gs, q, r); break;
    case KA_HEARTBEAT: h_heartbeat(gs, q, r); break;
    case KA_LEAVE_GROUP: h_leave(gs, q, r); break;
    case KA_OFFSET_COMMIT: h_offset_commit(gs, q, r); break;
    case KA_OFFSET_FETCH: h_offset_fetch(gs, q, r); break;
    case KA_LIST_GROUPS: h_list_groups(gs, q); break;
    case KA_DESCRIBE_GROUPS: h_describe_groups(gs, q, r); break;
    default: elog_fail_request(e, q, "unsupported API"); break;
    }
}

void elog_groups_conn_closed(kgroups *gs, kconn *c)
{
    (void)gs;
    (void)c; /* parked requests were unlinked by their cancel hooks; members
              * stay until their session times out, as in Kafka */
}

kgroups *elog_groups_new(elog *e)
{
    kgroups *gs = calloc(1, sizeof *gs);
    if (!gs)
        return NULL;
    gs->e = e;
    gs->fd = -1;
    offsets_load(gs);
    if (gs->fd < 0) {
        weft_log(WEFT_LOG_ERROR, "cannot open the committed offsets file",
                 WEFT_KV_STR("error", strerror(errno)));
        elog_groups_free(gs);
        return NULL;
    }
    weft_timer_init(&gs->sweep, sweep_cb, gs);
    weft_timer_start(e->loop, &gs->sweep, SWEEP_MS);
    return gs;
}

static void group_free(kgroups *gs, kgroup *g)
{
    weft_timer_stop(gs->e->loop, &g->timer);
    while (g->members) {
        kmember *m = g->members;
        g->members = m->next;
        if (m->join) {
            m->join->state = NULL;
            m->join->cancel = NULL;
        }
        if (m->sync) {
            m->sync->state = NULL;
            m->sync->cancel = NULL;
        }
        member_free(m);
    }
    while (g->offsets) {
        koffset *o = g->offsets;
        g->offsets = o->next;
        free(o->topic);
        free(o->metadata);
        free(o);
    }
    free(g->id);
    free(g->protocol_type);
    free(g->protocol);
    free(g->leader);
    free(g);
}

void elog_groups_free(kgroups *gs)
{
    if (!gs)
        return;
    weft_timer_stop(gs->e->loop, &gs->sweep);
    while (gs->groups) {
        kgroup *g = gs->groups;
        gs->groups = g->next;
        group_free(gs, g);
    }
    if (gs->fd >= 0)
        close(gs->fd);
    free(gs);
}
