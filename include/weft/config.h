/*
 * config.h — YAML configuration with exact error locations.
 *
 * A file is loaded (libyaml) into an immutable tree of nodes, each carrying
 * its line and column. Components read it through typed getters that mark
 * each key as used; weft_conf_check_unused() then reports the first key
 * nobody asked for — so unknown or misspelt keys are errors, not silence.
 * Every error message has the form "FILE:LINE:COL: KEY: reason".
 *
 * Ownership: a weft_conf (document) owns every node and string in it;
 * nodes and the const char * they return live until weft_conf_free().
 * Threading: a document is built and read by one thread; once built it may
 * be shared read-only, but the "used" marks make getters non-reentrant.
 */
#ifndef WEFT_CONFIG_H
#define WEFT_CONFIG_H

#include "weft/weft.h"

typedef struct weft_conf weft_conf;           /* a loaded document */
typedef struct weft_conf_node weft_conf_node; /* a node in it */

enum weft_conf_kind { WEFT_CONF_SCALAR = 1, WEFT_CONF_MAP, WEFT_CONF_SEQ };

/* Error text buffer filled by every call that can fail. */
typedef struct weft_conf_err {
    char msg[512];
} weft_conf_err;

/* Load a YAML file. Returns 0 and *out, or WEFT_ECONFIG with err->msg set
 * ("FILE:LINE:COL: reason" for syntax errors, "FILE: reason" for I/O).
 * An empty file yields an empty map. The root must be a mapping. */
int weft_conf_load_file(const char *path, weft_conf **out, weft_conf_err *err);
/* Same, from memory; `name` is used as FILE in messages. */
int weft_conf_load_string(const char *name, const char *yaml, size_t len,
                          weft_conf **out, weft_conf_err *err);
void weft_conf_free(weft_conf *c);

const weft_conf_node *weft_conf_root(const weft_conf *c);
/* The text the document was parsed from (owned by the document, with a NUL
 * after the last byte); its length in *len. */
const char *weft_conf_source(const weft_conf *c, size_t *len);
int weft_conf_kind(const weft_conf_node *n);
int weft_conf_line(const weft_conf_node *n);   /* 1-based */
int weft_conf_column(const weft_conf_node *n); /* 1-based */
const char *weft_conf_file(const weft_conf_node *n);
/* Scalar text (NUL-terminated, owned by the document); NULL if not a scalar. */
const char *weft_conf_scalar(const weft_conf_node *n);

/* Mappings. weft_conf_get marks the key used; returns NULL if absent or if
 * `map` is not a mapping. Duplicate keys are rejected at load time. */
const weft_conf_node *weft_conf_get(const weft_conf_node *map, const char *key);
size_t weft_conf_map_len(const weft_conf_node *map);
/* i-th entry in document order (marks it used); key text in *key. */
const weft_conf_node *weft_conf_map_at(const weft_conf_node *map, size_t i, const char **key);

/* Sequences. */
size_t weft_conf_seq_len(const weft_conf_node *seq);
const weft_conf_node *weft_conf_seq_at(const weft_conf_node *seq, size_t i);

/*
 * Typed getters for `key` in `map`. If the key is absent they leave *out
 * unchanged (so callers preset defaults) and return 0. If present but of the
 * wrong type or out of range they return WEFT_ECONFIG with
 * "FILE:LINE:COL: KEY: reason" in err (KEY is the dotted path when known).
 */
int weft_conf_string(const weft_conf_node *map, const char *key, const char **out, weft_conf_err *err);
/* The text of node n itself, typically a sequence item. A null (plain empty,
 * ~ or null — unless quoted), a mapping or a sequence is WEFT_ECONFIG with
 * "FILE:LINE:COL: KEY: expected a string" at n; weft_conf_scalar() would
 * return "~" or "null" as text. */
int weft_conf_text(const weft_conf_node *n, const char **out, weft_conf_err *err);
int weft_conf_int(const weft_conf_node *map, const char *key, int64_t min, int64_t max,
                  int64_t *out, weft_conf_err *err);
int weft_conf_bool(const weft_conf_node *map, const char *key, bool *out, weft_conf_err *err);
/* Durations: "250ms", "10s", "2m", "1h", "1500us"; a bare integer means
 * milliseconds. Result in milliseconds, must be within [min_ms, max_ms]. */
int weft_conf_duration_ms(const weft_conf_node *map, const char *key, int64_t min_ms,
                          int64_t max_ms, int64_t *out, weft_conf_err *err);
/* Sizes: "512", "64k"/"64KiB", "8m"/"8MiB", "1g"/"1GiB" (powers of 1024). */
int weft_conf_size(const weft_conf_node *map, const char *key, uint64_t min, uint64_t max,
                   uint64_t *out, weft_conf_err *err);
/* One of `choices` (NULL-terminated array); *out = index. */
int weft_conf_enum(const weft_conf_node *map, const char *key, const char *const *choices,
                   int *out, weft_conf_err *err);

/* After reading a mapping, report the first key in it (recursively through
 * nested maps and sequences of maps that were fetched) that was never read:
 * "FILE:LINE:COL: KEY: unknown key". Returns 0 if all keys were used. */
int weft_conf_check_unused(const weft_conf_node *map, weft_conf_err *err);

/* Format an error at node n: "FILE:LINE:COL: KEY: <fmt...>". Returns WEFT_ECONFIG. */
int weft_conf_errorf(weft_conf_err *err, const weft_conf_node *n, const char *key,
                     const char *fmt, ...) WEFT_PRINTF(4, 5);

#endif
