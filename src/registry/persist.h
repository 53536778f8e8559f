/*
 * persist.h — the registry's durability: every change is journaled and
 * made durable (group-committed fdatasync) before it is acknowledged.
 *
 * Ownership: a reg_persist owns its journal; it reads and writes the store
 * it was opened with. Threading: the registry's loop thread only.
 */
#ifndef WEFT_REGISTRY_PERSIST_H
#define WEFT_REGISTRY_PERSIST_H

#include "store.h"

typedef struct reg_persist reg_persist;

/* Open DIR and replay it into the store (now_ms: the loop clock). */
int reg_persist_open(const char *dir, reg_store *store, uint64_t now_ms, reg_persist **out);
/* Record the instance's full state (after register/update/status/heartbeat). */
void reg_persist_put(reg_persist *p, reg_instance *in, uint64_t now_ms);
void reg_persist_del(reg_persist *p, const char *service, const char *id);
/* A heartbeat moved the lease: journal it only if it moved by half a TTL
 * since it was last written (at most two records per TTL per instance). */
void reg_persist_lease(reg_persist *p, reg_instance *in, uint64_t now_ms);
bool reg_persist_dirty(const reg_persist *p);
/* Changes were made that can no longer be journaled one by one (the store's
 * history no longer holds them): the next commit writes the whole state as
 * a snapshot, retried by later commits until one succeeds. */
void reg_persist_resync(reg_persist *p);
/* fdatasync what was appended; compact into a snapshot when the journal is
 * large. Returns 0 or a WEFT_E* code (then nothing since the last
 * successful commit is durable). */
int reg_persist_commit(reg_persist *p, uint64_t now_ms);
void reg_persist_close(reg_persist *p);

#endif
