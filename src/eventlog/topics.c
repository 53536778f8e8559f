/*
 * topics.c — the topic catalogue of `weft log`.
 *
 * On disk (DATA is --data):
 *   DATA/NAME.topic          the topic's definition, JSON:
 *                            {"partitions": N, "retention_ms": R, "retention_bytes": B,
 *                             "segment_bytes": S, "fsync": "always"|"interval",
 *                             "fsync_interval_ms": I}
 *                            written to NAME.topic.tmp, fsync'd, renamed, directory fsync'd
 *   DATA/NAME-P/             partition P's log (plog.c: segments and indexes)
 *   DATA/NAME-P.ID-delete/   a tombstone: partition P of a deleted topic,
 *                            waiting to be removed. ID is 20 hex digits
 *                            (the delete's wall-clock time in ns and a
 *                            counter), unique per delete; NAME is cut to
 *                            TOMB_NAME_MAX characters so the name fits
 *                            NAME_MAX. Never opened as a partition: a
 *                            partition directory ends in "-" and digits.
 * A topic exists once its .topic file does; partition directories are
 * created before it, so a crash in between leaves only empty directories.
 *
 * Deletion is crash-safe (Kafka's "-delete" directories): every partition
 * directory is renamed to a tombstone and the data directory fsync'd
 * before the .topic file is unlinked (and the directory fsync'd again);
 * the tombstones are removed after that. A crash before the unlink
 * leaves the topic with empty partitions (the delete was not answered;
 * the client retries it); tombstones a crash or a failed removal leaves
 * are removed at startup (elog_topics_load). CreateTopics (and
 * auto-create, and the streams code) discards a partition directory it
 * finds when there is no NAME.topic (an orphan: left by a delete of an
 * older version, which unlinked the definition first, or by a crash
 * during a create) the same way, tombstone first, so a new topic never
 * starts with the batches and offsets of a deleted one. With a NAME.topic
 * that could not be loaded, the directories are reused as before.
 *
 * Each partition keeps, on the loop, the produce requests waiting for their
 * data to be durable (a FIFO in offset order: the plog's durable callback
 * completes a prefix), the fetches parked on it, and the idempotent
 * producers' recent batches.
 */
#include "elog.h"

#include "weft/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct pwait {
    struct pwait *next;    /* in the partition's FIFO */
    struct pwait *sibling; /* next wait of the same request */
    kreq *q;               /* NULL: the request went away */
    void (*fn)(void *ud);  /* set: a callback waits (streams.c), not a request */
    void *ud;
    int64_t end;           /* durable once the log is durable up to here */
    size_t err_at;         /* q: where its partition's error code is in the response */
};

bool elog_topic_name_ok(weft_str n)
{
    if (n.n == 0 || n.n > 249 || (n.n == 1 && n.p[0] == '.') ||
        (n.n == 2 && n.p[0] == '.' && n.p[1] == '.'))
        return false;
    for (size_t i = 0; i < n.n; i++) {
        char c = n.p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

ktopic *elog_topic_find(elog *e, weft_str name)
{
    for (size_t i = 0; i < e->ntopics; i++)
        if (weft_str_eq(weft_str_from(e->topics[i]->name), name))
            return e->topics[i];
    return NULL;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return weft_err_from_errno(errno);
    int rc = fsync(fd) < 0 ? weft_err_from_errno(errno) : 0;
    close(fd);
    return rc;
}

/* ---- tombstones (see the top of this file) ---- */

#define TOMB_SUFFIX "-delete"
#define TOMB_NAME_MAX 200

static bool is_tombstone(const char *name)
{
    size_t n = strlen(name), k = strlen(TOMB_SUFFIX);
    return n > k && strcmp(name + n - k, TOMB_SUFFIX) == 0;
}

/* A fresh tombstone id: 20 hex digits, unique in this process and (by
 * the clock) across restarts. */
static void tomb_id(char out[24])
{
    static unsigned seq;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    unsigned long long ns = (unsigned long long)ts.tv_sec * 1000000000ull +
                            (unsigned long long)ts.tv_nsec;
    snprintf(out, 24, "%016llx%04x", ns, ++seq & 0xffffu);
}

static void part_path(const elog *e, const char *topic, int32_t part, char *out, size_t n)
{
    snprintf(out, n, "%s/%s-%d", e->data_dir, topic, (int)part);
}

static void tomb_path(const elog *e, const char *topic, int32_t part, const char *id, char *out,
                      size_t n)
{
    snprintf(out, n, "%s/%.*s-%d.%s" TOMB_SUFFIX, e->data_dir, TOMB_NAME_MAX, topic, (int)part, id);
}

/* Remove a partition directory or tombstone: its files, then itself. 0 if
 * it is gone (or never was), else a WEFT_E* error (what is left of a
 * tombstone is removed at the next start). */
static int remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : weft_err_from_errno(errno);
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (unlinkat(dirfd(d), de->d_name, 0) < 0 && errno != ENOENT && rc == 0)
            rc = weft_err_from_errno(errno);
    }
    closedir(d);
    if (rmdir(dir) < 0 && errno != ENOENT && rc == 0)
        rc = weft_err_from_errno(errno);
    return rc;
}

/* Rename the tombstones of the first n partitions back (a delete that
 * could not finish). Best effort: the renames just succeeded. */
static void tomb_undo(elog *e, const char *topic, int32_t n, const char *id)
{
    char dir[4096], tomb[4096];
    for (int32_t i = 0; i < n; i++) {
        part_path(e, topic, i, dir, sizeof dir);
        tomb_path(e, topic, i, id, tomb, sizeof tomb);
        rename(tomb, dir);
    }
}

/* Rename the partition directories 0..npart-1 of topic (those that exist)
 * to tombstones of a new id, and make the renames durable: after this no
 * crash can bring their data back under the topic's name. All or nothing:
 * on failure the renamed ones are renamed back. 0 or a WEFT_E* error. */
static int tomb_parts(elog *e, const char *topic, int32_t npart, char id[24])
{
    char dir[4096], tomb[4096];
    bool moved = false;
    int rc = 0;
    tomb_id(id);
    for (int32_t i = 0; i < npart; i++) {
        part_path(e, topic, i, dir, sizeof dir);
        tomb_path(e, topic, i, id, tomb, sizeof tomb);
        if (rename(dir, tomb) == 0) {
            moved = true;
        } else if (errno != ENOENT) {
            rc = weft_err_from_errno(errno);
            weft_log(WEFT_LOG_ERROR, "cannot rename a partition directory to its tombstone",
                     WEFT_KV_STR("dir", dir), WEFT_KV_STR("error", weft_strerror(rc)));
            tomb_undo(e, topic, i, id);
            return rc;
        }
    }
    if (moved && (rc = fsync_dir(e->data_dir)) < 0)
        tomb_undo(e, topic, npart, id);
    return rc;
}

/* Remove the tombstones of a delete; a failure is logged and left to the
 * next start. */
static void tomb_remove(elog *e, const char *topic, int32_t npart, const char *id)
{
    char tomb[4096];
    for (int32_t i = 0; i < npart; i++) {
        tomb_path(e, topic, i, id, tomb, sizeof tomb);
        int rc = remove_dir(tomb);
        if (rc < 0)
            weft_log(WEFT_LOG_WARN, "cannot remove a deleted partition; removed at the next start",
                     WEFT_KV_STR("dir", tomb), WEFT_KV_STR("error", weft_strerror(rc)));
    }
}

/* Before a create: partition directories of a topic without a definition
 * file are leftovers (an orphan of an older version's delete, or of a
 * crashed create); tombstone them and remove them, so the new topic does
 * not start with their batches. */
static int discard_orphans(elog *e, const char *topic, int32_t npart)
{
    char def[4096], id[24];
    snprintf(def, sizeof def, "%s/%s.topic", e->data_dir, topic);
    if (access(def, F_OK) == 0)
        return 0; /* a definition that could not be loaded: its data stays */
    int rc = tomb_parts(e, topic, npart, id);
    if (rc == 0)
        tomb_remove(e, topic, npart, id);
    return rc;
}

static int write_def(elog *e, const ktopic *t)
{
    const plog_opts *l = &t->conf.log;
    json_t *j = json_pack("{s:i, s:I, s:I, s:I, s:s, s:i}", "partitions", (int)t->npart,
                          "retention_ms", (json_int_t)l->retention_ms, "retention_bytes",
                          (json_int_t)l->retention_bytes, "segment_bytes",
                          (json_int_t)l->segment_bytes, "fsync",
                          l->fsync == PLOG_FSYNC_ALWAYS ? "always" : "interval",
                          "fsync_interval_ms", (int)l->fsync_interval_ms);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text)
        return WEFT_ENOMEM;
    char tmp[4200], path[4096];
    snprintf(path, sizeof path, "%s/%s.topic", e->data_dir, t->name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int rc = 0, fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    size_t n = strlen(text);
    if (fd < 0 || write(fd, text, n) != (ssize_t)n || fsync(fd) < 0 || rename(tmp, path) < 0)
        rc = weft_err_from_errno(errno ? errno : EIO);
    if (fd >= 0)
        close(fd);
    free(text);
    return rc < 0 ? rc : fsync_dir(e->data_dir);
}

static void topic_free(ktopic *t)
{
    if (!t)
        return;
    for (int32_t i = 0; t->parts && i < t->npart; i++) {
        kpart *p = &t->parts[i];
        plog_close(p->log);
        while (p->waits_head) {
            struct pwait *w = p->waits_head;
            p->waits_head = w->next;
            free(w);
        }
        while (p->producers) {
            struct pstate *ps = p->producers;
            p->producers = ps->next;
            free(ps);
        }
    }
    free(t->parts);
    free(t->name);
    free(t);
}

/* Open (or create) the partition logs of t. */
static int open_parts(elog *e, ktopic *t)
{
    t->parts = calloc((size_t)t->npart, sizeof *t->parts);
    if (!t->parts)
        return WEFT_ENOMEM;
    for (int32_t i = 0; i < t->npart; i++) {
        kpart *p = &t->parts[i];
        p->t = t;
        p->index = i;
        char dir[4096];
        part_path(e, t->name, i, dir, sizeof dir);
        int rc = plog_open(e->loop, dir, &t->conf.log, elog_part_durable, p, &p->log);
        if (rc < 0) {
            weft_log(WEFT_LOG_ERROR, "cannot open a partition log", WEFT_KV_STR("dir", dir),
                     WEFT_KV_STR("error", weft_strerror(rc)));
            return rc;
        }
    }
    return 0;
}

static int add_topic(elog *e, ktopic *t)
{
    if (e->ntopics == e->cap_topics) {
        size_t nc = e->cap_topics ? e->cap_topics * 2 : 16;
        ktopic **nt = realloc(e->topics, nc * sizeof *nt);
        if (!nt)
            return WEFT_ENOMEM;
        e->topics = nt;
        e->cap_topics = nc;
    }
    e->topics[e->ntopics++] = t;
    return 0;
}

int elog_topic_create(elog *e, weft_str name, int32_t partitions, const elog_topic_conf *conf,
                      ktopic **out)
{
    if (!elog_topic_name_ok(name))
        return KE_INVALID_TOPIC_EXCEPTION;
    if (elog_topic_find(e, name))
        return KE_TOPIC_ALREADY_EXISTS;
    if (partitions < 1 || partitions > 10000)
        return KE_INVALID_PARTITIONS;
    ktopic *t = calloc(1, sizeof *t);
    if (!t || !(t->name = strndup(name.p, name.n))) {
        free(t);
        return WEFT_ENOMEM;
    }
    t->npart = partitions;
    t->conf = *conf;
    t->conf.partitions = partitions;
    int rc = discard_orphans(e, t->name, partitions);
    if (rc == 0)
        rc = open_parts(e, t);
    if (rc == 0)
        rc = write_def(e, t);
    if (rc == 0)
        rc = add_topic(e, t);
    if (rc < 0) {
        topic_free(t);
        return rc;
    }
    weft_log(WEFT_LOG_INFO, "topic created", WEFT_KV_STR("topic", t->name),
             WEFT_KV_INT("partitions", partitions));
    if (out)
        *out = t;
    return 0;
}

static int load_one(elog *e, const char *file)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", e->data_dir, file);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    size_t nl = strlen(file) - strlen(".topic");
    weft_str name = {file, nl};
    if (!j || !elog_topic_name_ok(name)) {
        weft_log(WEFT_LOG_ERROR, "unreadable topic definition; topic skipped",
                 WEFT_KV_STR("file", path), WEFT_KV_STR("error", j ? "bad name" : je.text));
        json_decref(j);
        return 0;
    }
    ktopic *t = calloc(1, sizeof *t);
    if (!t || !(t->name = strndup(file, nl))) {
        free(t);
        json_decref(j);
        return WEFT_ENOMEM;
    }
    t->conf = e->o.defaults;
    json_int_t np = json_integer_value(json_object_get(j, "partitions"));
    json_t *v;
    if ((v = json_object_get(j, "retention_ms")))
        t->conf.log.retention_ms = json_integer_value(v);
    if ((v = json_object_get(j, "retention_bytes")))
        t->conf.log.retention_bytes = json_integer_value(v);
    if ((v = json_object_get(j, "segment_bytes")) && json_integer_value(v) >= 1024)
        t->conf.log.segment_bytes = (uint64_t)json_integer_value(v);
    const char *fs = json_string_value(json_object_get(j, "fsync"));
    if (fs)
        t->conf.log.fsync = strcmp(fs, "interval") == 0 ? PLOG_FSYNC_INTERVAL : PLOG_FSYNC_ALWAYS;
    if ((v = json_object_get(j, "fsync_interval_ms")) && json_integer_value(v) > 0)
        t->conf.log.fsync_interval_ms = (uint32_t)json_integer_value(v);
    json_decref(j);
    if (np < 1 || np > 10000) {
        weft_log(WEFT_LOG_ERROR, "bad partition count in topic definition; topic skipped",
                 WEFT_KV_STR("file", path));
        topic_free(t);
        return 0;
    }
    t->npart = (int32_t)np;
    t->conf.partitions = t->npart;
    int rc = open_parts(e, t);
    for (int32_t i = 0; rc == 0 && i < t->npart; i++)
        elog_producers_rebuild(&t->parts[i]);
    if (rc == 0)
        rc = add_topic(e, t);
    if (rc < 0)
        topic_free(t);
    return rc;
}

int elog_topics_load(elog *e)
{
    if (mkdir(e->data_dir, 0755) < 0 && errno != EEXIST) {
        weft_log(WEFT_LOG_ERROR, "cannot create the data directory", WEFT_KV_STR("dir", e->data_dir),
                 WEFT_KV_STR("error", strerror(errno)));
        return weft_err_from_errno(errno);
    }
    DIR *d = opendir(e->data_dir);
    if (!d) {
        weft_log(WEFT_LOG_ERROR, "cannot read the data directory", WEFT_KV_STR("dir", e->data_dir),
                 WEFT_KV_STR("error", strerror(errno)));
        return weft_err_from_errno(errno);
    }
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n > 6 && strcmp(de->d_name + n - 6, ".topic") == 0) {
            rc = load_one(e, de->d_name);
        } else if (is_tombstone(de->d_name)) { /* a delete that did not finish */
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", e->data_dir, de->d_name);
            int r = remove_dir(path);
            weft_log(r < 0 ? WEFT_LOG_WARN : WEFT_LOG_INFO,
                     r < 0 ? "cannot remove a deleted partition" : "deleted partition removed",
                     WEFT_KV_STR("dir", path), WEFT_KV_STR("error", r < 0 ? weft_strerror(r) : ""));
        }
    }
    closedir(d);
    weft_log(WEFT_LOG_INFO, "topics loaded", WEFT_KV_UINT("topics", e->ntopics));
    return rc;
}

void elog_topics_close(elog *e)
{
    for (size_t i = 0; i < e->ntopics; i++)
        topic_free(e->topics[i]);
    free(e->topics);
    e->topics = NULL;
    e->ntopics = e->cap_topics = 0;
}

/* Tombstones first (durably), then the definition, then the data: a crash
 * at any point leaves either the whole topic (its partitions maybe
 * already empty) or no topic and only tombstones (see the top). */
int elog_topic_delete(elog *e, ktopic *t)
{
    char path[4096], id[24];
    int rc = tomb_parts(e, t->name, t->npart, id);
    if (rc < 0)
        return rc;
    snprintf(path, sizeof path, "%s/%s.topic", e->data_dir, t->name);
    if (unlink(path) < 0) {
        rc = weft_err_from_errno(errno);
        tomb_undo(e, t->name, t->npart, id); /* the logs are open: the topic goes on */
        return rc;
    }
    if ((rc = fsync_dir(e->data_dir)) < 0)
        weft_log(WEFT_LOG_WARN, "cannot fsync the data directory after a delete",
                 WEFT_KV_STR("topic", t->name), WEFT_KV_STR("error", weft_strerror(rc)));
    for (size_t i = 0; i < e->ntopics; i++)
        if (e->topics[i] == t) {
            e->topics[i] = e->topics[--e->ntopics];
            break;
        }
    for (int32_t i = 0; i < t->npart; i++) {
        plog_close(t->parts[i].log);
        t->parts[i].log = NULL;
    }
    tomb_remove(e, t->name, t->npart, id);
    weft_log(WEFT_LOG_INFO, "topic deleted", WEFT_KV_STR("topic", t->name));
    topic_free(t);
    return 0;
}

/* ---- durability waits ---- */

void elog_part_durable(plog *l, int64_t durable_end, void *ud)
{
    kpart *p = ud;
    /* after a failed flush nothing past durable_end will become durable:
     * answer those waits now, as failures (fn callbacks look for
     * plog_failed themselves) */
    bool failed = plog_failed(l) != 0;
    while (p->waits_head && (failed || p->waits_head->end <= durable_end)) {
        struct pwait *w = p->waits_head;
        p->waits_head = w->next;
        if (!p->waits_head)
            p->waits_tail = NULL;
        if (w->fn) { /* unlinked first: the callback may append and wait again */
            void (*fn)(void *) = w->fn;
            void *arg = w->ud;
            free(w);
            fn(arg);
            continue;
        }
        kreq *q = w->q;
        if (q) {
            /* unlink w from its request's sibling list */
            struct pwait **pp = (struct pwait **)&q->state;
            while (*pp && *pp != w)
                pp = &(*pp)->sibling;
            if (*pp)
                *pp = w->sibling;
            if (w->end > durable_end) { /* KAFKA_STORAGE_ERROR, no offset */
                kf_writer *kw = kreq_writer(q);
                kf_w_patch_i16(kw, w->err_at, 56);
                kf_w_patch_i64(kw, w->err_at + 2, -1);
            }
            if (--q->waits == 0)
                kreq_complete(q);
        }
        free(w);
    }
}

static void produce_cancel(kreq *q)
{
    for (struct pwait *w = q->state; w; w = w->sibling)
        w->q = NULL;
    q->state = NULL;
}

static struct pwait *wait_push(kpart *p, int64_t end)
{
    struct pwait *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->end = end;
    if (p->waits_tail)
        p->waits_tail->next = w;
    else
        p->waits_head = w;
    p->waits_tail = w;
    return w;
}

int elog_wait_durable(kpart *p, kreq *q, int64_t end, size_t err_at)
{
    if (plog_failed(p->log))
        return WEFT_EIO; /* its failure has been reported: nothing would end the wait */
    struct pwait *w = wait_push(p, end);
    if (!w)
        return WEFT_ENOMEM;
    w->q = q;
    w->err_at = err_at;
    w->sibling = q->state;
    q->state = w;
    q->cancel = produce_cancel;
    q->waits++;
    return 0;
}

int elog_wait_durable_fn(kpart *p, int64_t end, void (*fn)(void *ud), void *ud)
{
    if (plog_failed(p->log))
        return WEFT_EIO;
    struct pwait *w = wait_push(p, end);
    if (!w)
        return WEFT_ENOMEM;
    w->fn = fn;
    w->ud = ud;
    return 0;
}

bool elog_topic_internal(weft_str name)
{
    return name.n >= 7 && memcmp(name.p, "__weft_", 7) == 0;
}
