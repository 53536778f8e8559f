/*
 * fuzz_kafka_request.c — libFuzzer harness for `weft log`'s request
 * decoders and handlers.
 *
 * One broker is started once on a scratch data directory (auto-create off,
 * one topic "t" with two partitions, fsync interval so the flusher threads
 * stay idle). Byte 0 of the input picks an API key from the implemented
 * set and byte 1 its version (so most inputs reach a real decoder); the
 * rest is the request body after the header. Every frame goes through the
 * same path as a socket's (header parse, dispatch, response building);
 * parked requests are cancelled. Topics the input creates are deleted
 * again so the broker's state stays bounded. ASan/UBSan catch the rest.
 */
#include "eventlog/elog.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

static elog *g_e;
static weft_loop *g_loop;
static char g_dir[64];

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* The scratch directory goes when the fuzzer exits (libFuzzer calls exit). */
static void cleanup(void)
{
    if (g_dir[0])
        nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static const int16_t keys[] = {0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22};

static void setup(void)
{
    /* tmpfs when there is one: fsyncs are free there */
    char dir[64];
    snprintf(dir, sizeof dir, "%s/weft-fuzz-log.XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(dir))
        abort();
    snprintf(g_dir, sizeof g_dir, "%s", dir);
    atexit(cleanup);
    elog_opts o;
    elog_opts_default(&o);
    o.data_dir = dir;
    o.auto_create = false;
    o.defaults.log.fsync = PLOG_FSYNC_INTERVAL;
    o.defaults.log.fsync_interval_ms = 3600000;
    o.group_initial_delay_ms = 0;
    if (weft_loop_new(&g_loop) < 0 || !(g_e = elog_new(&o)) || elog_start(g_e, g_loop) < 0)
        abort();
    elog_topic_conf tc = o.defaults;
    if (elog_topic_create(g_e, (weft_str){"t", 1}, 2, &tc, NULL) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_e)
        setup();
    if (size < 2 || size > 1 << 16)
        return 0;
    uint8_t frame[(1 << 16) + 16];
    int16_t key = keys[data[0] % (sizeof keys / sizeof keys[0])];
    int16_t ver = (int16_t)(data[1] % 13);
    size_t n = 0;
    frame[n++] = (uint8_t)(key >> 8);
    frame[n++] = (uint8_t)key;
    frame[n++] = (uint8_t)(ver >> 8);
    frame[n++] = (uint8_t)ver;
    memcpy(frame + n, "\0\0\0\1\0\1f", 7); /* correlation id 1, client id "f" */
    n += 7;
    memcpy(frame + n, data + 2, size - 2);
    n += size - 2;
    elog_handle_frame(g_e, frame, n);
    /* the loop never runs here, so the group sweep does not either: start
     * over with no groups now and then */
    static unsigned calls;
    if (++calls % 512 == 0) {
        elog_groups_free(g_e->groups);
        char path[4200];
        snprintf(path, sizeof path, "%s/__consumer_offsets.jsonl", g_e->data_dir);
        unlink(path);
        if (!(g_e->groups = elog_groups_new(g_e)))
            abort();
    }
    /* keep the broker's state bounded: only "t" survives */
    for (size_t i = 0; i < g_e->ntopics;) {
        if (strcmp(g_e->topics[i]->name, "t") != 0)
            elog_topic_delete(g_e, g_e->topics[i]);
        else
            i++;
    }
    return 0;
}
