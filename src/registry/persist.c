/*
 * persist.c — registry state on disk through journal.c.
 *
 * Each record is one JSON object:
 *   {"op":"put","rev":R,"service":S,"id":I,"instance":{registration fields},
 *    "expires_wall_ms":W}
 *   {"op":"del","rev":R,"service":S,"id":I}
 * A "put" carries the instance's whole state, so replay is "last record
 * wins" and needs no history. Lease deadlines are stored in wall-clock
 * milliseconds (the monotonic clock does not survive a restart).
 *
 * Heartbeats are the hot path and are not journaled one by one: a lease is
 * written again only when it has moved by half its TTL since it was last
 * written. On replay a lease is restored to (written deadline + TTL/2),
 * which is never earlier than the true deadline and at most TTL/2 later —
 * so a live client is never dropped by a restart, and a dead one expires
 * at most half a TTL late. Registrations, deregistrations and status
 * changes are acknowledged only after the fdatasync that covers them.
 *
 * When the journal passes 64 MiB it is compacted: a snapshot of every
 * instance (as "put" records) replaces snapshot + journal. The same
 * snapshot is written when changes could not be journaled one by one
 * (reg_persist_resync: a sweep evicted more than the store's history holds).
 */
#include "persist.h"

#include "journal.h"
#include "weft/log.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SNAPSHOT_AFTER_BYTES (64u << 20)

struct reg_persist {
    reg_journal *j;
    reg_store *store;
    uint64_t now_ms;
    bool dirty;
    bool resync; /* the journal missed changes: the next commit snapshots */
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int append_json(reg_persist *p, json_t *rec)
{
    char *t = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
    json_decref(rec);
    if (!t)
        return WEFT_ENOMEM;
    int rc = reg_journal_append(p->j, t, strlen(t));
    free(t);
    if (rc == 0)
        p->dirty = true;
    return rc;
}

static json_t *put_record(const reg_instance *in, uint64_t now_ms)
{
    json_t *o = json_pack("{s:s, s:I, s:s, s:s, s:o}", "op", "put", "rev",
                          (json_int_t)in->mod_rev, "service", in->service, "id", in->id,
                          "instance", reg_instance_body(in));
    if (o && in->ttl_ms) {
        int64_t left = (int64_t)in->expires_ms - (int64_t)now_ms;
        json_object_set_new(o, "expires_wall_ms", json_integer(wall_ms() + left));
    }
    return o;
}

void reg_persist_put(reg_persist *p, reg_instance *in, uint64_t now_ms)
{
    if (append_json(p, put_record(in, now_ms)) < 0)
        weft_log(WEFT_LOG_ERROR, "registry journal append failed", WEFT_KV_STR("id", in->id));
    in->journaled_expires_ms = in->expires_ms;
}

void reg_persist_lease(reg_persist *p, reg_instance *in, uint64_t now_ms)
{
    if (in->ttl_ms && in->expires_ms >= in->journaled_expires_ms + in->ttl_ms / 2)
        reg_persist_put(p, in, now_ms);
}

void reg_persist_del(reg_persist *p, const char *service, const char *id)
{
    if (append_json(p, json_pack("{s:s, s:I, s:s, s:s}", "op", "del", "rev",
                                 (json_int_t)reg_revision(p->store), "service", service, "id",
                                 id)) < 0)
        weft_log(WEFT_LOG_ERROR, "registry journal append failed", WEFT_KV_STR("id", id));
}

bool reg_persist_dirty(const reg_persist *p) { return p->dirty; }

void reg_persist_resync(reg_persist *p)
{
    p->resync = true;
    p->dirty = true;
}

/* ---- replay ---- */

typedef struct replay_ctx {
    reg_store *store;
    uint64_t now_ms;
    int64_t now_wall;
    uint64_t max_rev;
    uint64_t applied, skipped;
} replay_ctx;

static int replay(void *ud, const char *rec, size_t len)
{
    replay_ctx *c = ud;
    json_t *o = json_loadb(rec, len, 0, NULL);
    const char *op = o ? json_string_value(json_object_get(o, "op")) : NULL;
    const char *svc = o ? json_string_value(json_object_get(o, "service")) : NULL;
    const char *id = o ? json_string_value(json_object_get(o, "id")) : NULL;
    json_int_t rev = o ? json_integer_value(json_object_get(o, "rev")) : 0;
    if (!op || !reg_name_ok(svc) || !reg_name_ok(id)) {
        c->skipped++; /* a record we cannot read is skipped, never fatal */
        json_decref(o);
        return 0;
    }
    if ((uint64_t)rev > c->max_rev)
        c->max_rev = (uint64_t)rev;
    if (strcmp(op, "del") == 0) {
        reg_delete(c->store, svc, id);
        c->applied++;
    } else if (strcmp(op, "put") == 0) {
        reg_input in;
        char why[200];
        json_t *body = json_object_get(o, "instance");
        const char *tagv[64];
        if (reg_input_from_json(body, &in, why, sizeof why) == 0) {
            json_t *tags = json_object_get(body, "tags");
            for (size_t i = 0; i < in.ntags; i++)
                tagv[i] = json_string_value(json_array_get(tags, i));
            in.tags = tagv;
            if (reg_put(c->store, svc, id, &in, c->now_ms) >= 0) {
                if (in.check.kind != REG_CHECK_NONE) /* the state as last written */
                    reg_set_check(c->store, svc, id, in.check.passing, c->now_ms);
                json_t *w = json_object_get(o, "expires_wall_ms");
                if (in.ttl_ms && json_is_integer(w)) {
                    /* the written deadline + TTL/2 bounds the true one from above */
                    int64_t left = json_integer_value(w) + (int64_t)(in.ttl_ms / 2) - c->now_wall;
                    uint64_t exp = left > 0 ? c->now_ms + (uint64_t)left : c->now_ms;
                    reg_set_expiry(c->store, svc, id, exp);
                    /* what is on disk is the written deadline, not exp: the
                     * next lease record is due half a TTL past it */
                    reg_instance *inst = reg_find_mut(c->store, svc, id);
                    if (inst)
                        inst->journaled_expires_ms = exp > in.ttl_ms / 2 ? exp - in.ttl_ms / 2 : 0;
                }
                c->applied++;
            }
        } else {
            c->skipped++;
        }
    } else {
        c->skipped++;
    }
    json_decref(o);
    return 0;
}

int reg_persist_open(const char *dir, reg_store *store, uint64_t now_ms, reg_persist **out)
{
    reg_persist *p = calloc(1, sizeof *p);
    if (!p)
        return WEFT_ENOMEM;
    p->store = store;
    replay_ctx c = {.store = store, .now_ms = now_ms, .now_wall = wall_ms()};
    reg_journal_stats st;
    int rc = reg_journal_open(dir, replay, &c, &p->j, &st);
    if (rc < 0) {
        free(p);
        return rc;
    }
    reg_restore_revision(store, c.max_rev);
    weft_log(WEFT_LOG_INFO, "registry state loaded", WEFT_KV_STR("dir", dir),
             WEFT_KV_UINT("instances", reg_instance_total(store)),
             WEFT_KV_UINT("revision", reg_revision(store)),
             WEFT_KV_UINT("snapshot_records", st.snapshot_records),
             WEFT_KV_UINT("journal_records", st.journal_records),
             WEFT_KV_UINT("truncated_bytes", st.truncated_bytes),
             WEFT_KV_UINT("skipped_records", c.skipped));
    if (st.snapshot_damaged)
        weft_log(WEFT_LOG_ERROR, "registry snapshot was damaged: state may be incomplete",
                 WEFT_KV_STR("dir", dir));
    *out = p;
    return 0;
}

/* ---- compaction ---- */

typedef struct emit_ctx {
    reg_persist *p;
    uint64_t now_ms;
} emit_ctx;

static int emit_all(void *ud, reg_journal_writer *w)
{
    emit_ctx *e = ud;
    reg_store *s = e->p->store;
    for (size_t i = 0; i < reg_service_count(s); i++) {
        const char *name = reg_service_at(s, i, NULL);
        const reg_instance **v;
        size_t n = reg_instances(s, name, &v);
        for (size_t k = 0; k < n; k++) {
            json_t *r = put_record(v[k], e->now_ms);
            char *t = r ? json_dumps(r, JSON_COMPACT) : NULL;
            json_decref(r);
            if (!t)
                return WEFT_ENOMEM;
            int rc = reg_journal_snapshot_add(w, t, strlen(t));
            free(t);
            if (rc < 0)
                return rc;
        }
    }
    /* keep the revision even if nothing is registered */
    json_t *r = json_pack("{s:s, s:I, s:s, s:s}", "op", "rev", "rev",
                          (json_int_t)reg_revision(s), "service", "_", "id", "_");
    char *t = r ? json_dumps(r, JSON_COMPACT) : NULL;
    json_decref(r);
    int rc = t ? reg_journal_snapshot_add(w, t, strlen(t)) : WEFT_ENOMEM;
    free(t);
    return rc;
}

int reg_persist_commit(reg_persist *p, uint64_t now_ms)
{
    if (!p->dirty)
        return 0;
    int rc = reg_journal_sync(p->j);
    if (rc < 0) {
        weft_log(WEFT_LOG_ERROR, "registry journal sync failed", WEFT_KV_STR("error", weft_strerror(rc)));
        return rc;
    }
    p->dirty = false;
    if (p->resync || reg_journal_size(p->j) > SNAPSHOT_AFTER_BYTES) {
        emit_ctx e = {p, now_ms};
        int src = reg_journal_snapshot(p->j, emit_all, &e);
        if (src < 0) {
            weft_log(WEFT_LOG_WARN,
                     p->resync ? "registry snapshot failed; changes the journal missed are not "
                                 "durable, retried at the next commit"
                               : "registry snapshot failed; the journal keeps growing",
                     WEFT_KV_STR("error", weft_strerror(src)));
            p->dirty |= p->resync;
        } else {
            p->resync = false;
        }
    }
    return 0;
}

void reg_persist_close(reg_persist *p)
{
    if (!p)
        return;
    reg_journal_close(p->j);
    free(p);
}
