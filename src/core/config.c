/*
 * config.c — YAML configuration: loader, node tree and typed getters.
 *
 * libyaml's event parser feeds a small builder that turns the stream into our
 * own immutable tree. Every node keeps its line, column, parent and the key or
 * index it hangs from, so any error can be reported as
 * "FILE:LINE:COL: http.routes[2].path: reason" without callers threading a
 * path through their code. Events rather than libyaml's document API because
 * the document API silently resolves aliases, and because building as we go
 * lets us stop at the first duplicate key, tag or over-deep nesting in
 * document order, with the location of the offending token.
 *
 * All nodes, strings and arrays come from one arena owned by the weft_conf and
 * released at once by weft_conf_free(); with WEFT_DEBUG_ALLOC each allocation
 * is its own malloc so sanitizers see every object. Map and sequence children
 * are gathered in temporary growable arrays while their collection is open and
 * copied into the arena when it closes, so the finished tree is compact.
 *
 * Inputs are bounded: 16 MiB of text, 64 levels of nesting, 1 Mi nodes.
 * Getters take const nodes but set the node's `used` mark; the nodes are never
 * const objects, so casting the qualifier away is well defined.
 *
 * weft_conf_errorf(err, n, key, ...) picks the location and KEY this way:
 * if key is NULL or names n itself, n and n's path; if n is a mapping, the
 * value of `key` in it (or n when the key is absent) and path n.key; otherwise
 * n's location with `key` printed as given.
 */
#include "weft/config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#define CONF_MAX_BYTES ((size_t)16 << 20)
#define CONF_MAX_DEPTH 64
#define CONF_MAX_NODES ((size_t)1 << 20)
#define CONF_PATH_MAX 256
#define ARENA_CHUNK 16384

#define TAG_STR "tag:yaml.org,2002:str"
#define TAG_MAP "tag:yaml.org,2002:map"
#define TAG_SEQ "tag:yaml.org,2002:seq"

struct conf_entry {
    const char *key;
    int line, col; /* of the key, for "unknown key" and "duplicate key" */
    weft_conf_node *val;
};

struct weft_conf_node {
    unsigned char kind;
    bool quoted; /* quoted or tagged as a string: never null */
    bool null;   /* plain empty, "~" or "null" */
    bool used;
    int line, col;
    const char *file;
    const weft_conf_node *parent;
    const char *pkey; /* key in the parent mapping; NULL under a sequence */
    size_t pidx;      /* index in the parent sequence */
    const char *text; /* scalars */
    size_t len;       /* scalar bytes, or number of entries/items */
    struct conf_entry *ents;
    weft_conf_node **items;
};

struct chunk {
    struct chunk *next;
    size_t cap, used;
    max_align_t mem[];
};

struct weft_conf {
    struct chunk *chunks;
    const char *file;
    const char *src; /* the text parsed, NUL-terminated (in the arena) */
    size_t src_len;
    weft_conf_node *root;
};

/* ---- arena ------------------------------------------------------------- */

static void *arena_alloc(weft_conf *c, size_t n)
{
    const size_t align = alignof(max_align_t);
    struct chunk *k;
    size_t cap;

    if (n > SIZE_MAX / 2)
        return NULL;
    n = n ? (n + align - 1) & ~(align - 1) : align;
#ifndef WEFT_DEBUG_ALLOC
    k = c->chunks;
    if (k && k->cap - k->used >= n) {
        void *p = (char *)k->mem + k->used;
        k->used += n;
        return p;
    }
    cap = n > ARENA_CHUNK ? n : ARENA_CHUNK;
#else
    cap = n;
#endif
    k = malloc(sizeof *k + cap);
    if (!k)
        return NULL;
    k->cap = cap;
    k->used = n;
    /* An oversized block goes behind the head so the partly used head chunk
     * keeps serving small allocations. */
    if (c->chunks && cap == n && n > ARENA_CHUNK) {
        k->next = c->chunks->next;
        c->chunks->next = k;
    } else {
        k->next = c->chunks;
        c->chunks = k;
    }
    return k->mem;
}

static char *arena_strndup(weft_conf *c, const char *s, size_t n)
{
    char *p = arena_alloc(c, n + 1);
    if (!p)
        return NULL;
    if (n)
        memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void weft_conf_free(weft_conf *c)
{
    if (!c)
        return;
    struct chunk *k = c->chunks;
    while (k) {
        struct chunk *next = k->next;
        free(k);
        k = next;
    }
    free(c);
}

/* ---- paths and error messages ------------------------------------------ */

struct sbuf {
    char *p;
    size_t cap, len;
};

static void WEFT_PRINTF(2, 0) sb_vadd(struct sbuf *b, const char *fmt, va_list ap)
{
    if (b->len + 1 >= b->cap)
        return;
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    if (n < 0)
        return;
    b->len += (size_t)n;
    if (b->len >= b->cap)
        b->len = b->cap - 1;
}

static void WEFT_PRINTF(2, 3) sb_add(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sb_vadd(b, fmt, ap);
    va_end(ap);
}

/* Dotted path of n from the root ("" for the root): a.b[2].c */
static void path_of(const weft_conf_node *n, struct sbuf *b)
{
    const weft_conf_node *chain[CONF_MAX_DEPTH + 2];
    size_t depth = 0;

    for (; n && n->parent && depth < WEFT_ARRAY_LEN(chain); n = n->parent)
        chain[depth++] = n;
    while (depth--) {
        const weft_conf_node *x = chain[depth];
        if (x->pkey)
            sb_add(b, "%s%s", b->len ? "." : "", x->pkey);
        else
            sb_add(b, "[%zu]", x->pidx);
    }
}

static void path_join(const weft_conf_node *map, const char *key, char *buf, size_t cap)
{
    struct sbuf b = {buf, cap, 0};
    buf[0] = '\0';
    path_of(map, &b);
    if (key)
        sb_add(&b, "%s%s", b.len ? "." : "", key);
}

static int WEFT_PRINTF(6, 0) verr_at(weft_conf_err *err, const char *file, int line, int col,
                                     const char *path, const char *fmt, va_list ap)
{
    if (!err)
        return WEFT_ECONFIG;
    struct sbuf b = {err->msg, sizeof err->msg, 0};
    err->msg[0] = '\0';
    if (file)
        sb_add(&b, "%s:%d:%d: ", file, line, col);
    if (path && *path)
        sb_add(&b, "%s: ", path);
    sb_vadd(&b, fmt, ap);
    return WEFT_ECONFIG;
}

static int WEFT_PRINTF(6, 7) err_at(weft_conf_err *err, const char *file, int line, int col,
                                    const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verr_at(err, file, line, col, path, fmt, ap);
    va_end(ap);
    return WEFT_ECONFIG;
}

/* Error at node n, named by its own path. */
static int WEFT_PRINTF(3, 4) node_err(weft_conf_err *err, const weft_conf_node *n,
                                      const char *fmt, ...)
{
    char path[CONF_PATH_MAX];
    va_list ap;

    path_join(n, NULL, path, sizeof path);
    va_start(ap, fmt);
    verr_at(err, n->file, n->line, n->col, path, fmt, ap);
    va_end(ap);
    return WEFT_ECONFIG;
}

static int WEFT_PRINTF(2, 3) plain_err(weft_conf_err *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verr_at(err, NULL, 0, 0, NULL, fmt, ap);
    va_end(ap);
    return WEFT_ECONFIG;
}

/* ---- builder ----------------------------------------------------------- */

struct frame {
    weft_conf_node *node;
    struct conf_entry *ents; /* mappings */
    weft_conf_node **items;  /* sequences */
    size_t n, cap;
    uint32_t *tab; /* open-addressed index of ents (i + 1), for duplicates */
    size_t tabcap;
    bool have_key; /* a key was read; its value comes next */
    const char *key;
    int kline, kcol;
};

struct builder {
    weft_conf *c;
    weft_conf_err *err;
    const char *src;
    size_t srclen;
    struct frame st[CONF_MAX_DEPTH];
    int depth;
    size_t nodes;
    int docs;
    bool done;
};

static uint32_t hash_key(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static const struct conf_entry *frame_find(const struct frame *f, const char *key)
{
    if (!f->tabcap)
        return NULL;
    size_t mask = f->tabcap - 1;
    for (size_t i = hash_key(key) & mask; f->tab[i]; i = (i + 1) & mask) {
        const struct conf_entry *e = &f->ents[f->tab[i] - 1];
        if (strcmp(e->key, key) == 0)
            return e;
    }
    return NULL;
}

static void tab_put(uint32_t *tab, size_t cap, const char *key, uint32_t v)
{
    size_t i = hash_key(key) & (cap - 1);
    while (tab[i])
        i = (i + 1) & (cap - 1);
    tab[i] = v;
}

static int frame_grow(struct frame *f)
{
    if (f->n < f->cap)
        return 0;
    size_t cap = f->cap ? f->cap * 2 : 8;
    if (f->node->kind == WEFT_CONF_MAP) {
        struct conf_entry *e = realloc(f->ents, cap * sizeof *e);
        if (!e)
            return WEFT_ENOMEM;
        f->ents = e;
        /* keep the hash at most half full */
        uint32_t *tab = calloc(cap * 2, sizeof *tab);
        if (!tab)
            return WEFT_ENOMEM;
        for (size_t i = 0; i < f->n; i++)
            tab_put(tab, cap * 2, f->ents[i].key, (uint32_t)(i + 1));
        free(f->tab);
        f->tab = tab;
        f->tabcap = cap * 2;
    } else {
        weft_conf_node **it = realloc(f->items, cap * sizeof *it);
        if (!it)
            return WEFT_ENOMEM;
        f->items = it;
    }
    f->cap = cap;
    return 0;
}

static void frame_release(struct frame *f)
{
    free(f->ents);
    free(f->items);
    free(f->tab);
    memset(f, 0, sizeof *f);
}

static int oom(struct builder *b)
{
    plain_err(b->err, "%s: out of memory", b->c->file);
    return WEFT_ENOMEM;
}

/* Error at a mark, named by the slot being filled (parent path + key/index). */
static int WEFT_PRINTF(3, 4) slot_err(struct builder *b, const yaml_mark_t *m,
                                      const char *fmt, ...)
{
    char path[CONF_PATH_MAX];
    struct sbuf sb = {path, sizeof path, 0};
    va_list ap;

    path[0] = '\0';
    if (b->depth) {
        const struct frame *f = &b->st[b->depth - 1];
        path_of(f->node, &sb);
        if (f->node->kind == WEFT_CONF_MAP && f->have_key)
            sb_add(&sb, "%s%s", sb.len ? "." : "", f->key);
        else if (f->node->kind == WEFT_CONF_SEQ)
            sb_add(&sb, "[%zu]", f->n);
    }
    va_start(ap, fmt);
    verr_at(b->err, b->c->file, (int)m->line + 1, (int)m->column + 1, path, fmt, ap);
    va_end(ap);
    return WEFT_ECONFIG;
}

static bool is_null_text(const char *s, size_t n)
{
    return n == 0 || (n == 1 && s[0] == '~') ||
           (n == 4 && (!memcmp(s, "null", 4) || !memcmp(s, "Null", 4) || !memcmp(s, "NULL", 4)));
}

/* A node event: scalar, mapping start or sequence start. */
static int on_node(struct builder *b, const yaml_event_t *ev)
{
    const yaml_mark_t *m = &ev->start_mark;
    struct frame *f = b->depth ? &b->st[b->depth - 1] : NULL;
    const yaml_char_t *anchor, *tag;
    const char *text = NULL;
    size_t len = 0;
    bool quoted = false;
    int kind;

    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        kind = WEFT_CONF_SCALAR;
        anchor = ev->data.scalar.anchor;
        tag = ev->data.scalar.tag;
        text = (const char *)ev->data.scalar.value;
        len = ev->data.scalar.length;
        quoted = ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
        break;
    case YAML_MAPPING_START_EVENT:
        kind = WEFT_CONF_MAP;
        anchor = ev->data.mapping_start.anchor;
        tag = ev->data.mapping_start.tag;
        break;
    default:
        kind = WEFT_CONF_SEQ;
        anchor = ev->data.sequence_start.anchor;
        tag = ev->data.sequence_start.tag;
        break;
    }

    if (anchor)
        return slot_err(b, m, "anchors and aliases are not supported");
    if (tag) {
        const char *t = (const char *)tag;
        if (kind == WEFT_CONF_SCALAR && (!strcmp(t, "!") || !strcmp(t, TAG_STR)))
            quoted = true;
        else if (!((kind == WEFT_CONF_MAP && (!strcmp(t, "!") || !strcmp(t, TAG_MAP))) ||
                   (kind == WEFT_CONF_SEQ && (!strcmp(t, "!") || !strcmp(t, TAG_SEQ)))))
            return slot_err(b, m, "tag %s is not supported", t);
    }
    if (kind == WEFT_CONF_SCALAR && memchr(text, '\0', len))
        return slot_err(b, m, "NUL bytes are not supported");

    /* A key of the innermost open mapping. */
    if (f && f->node->kind == WEFT_CONF_MAP && !f->have_key) {
        if (kind != WEFT_CONF_SCALAR)
            return slot_err(b, m, "keys must be scalars");
        const struct conf_entry *dup = frame_find(f, text);
        if (dup) {
            char path[CONF_PATH_MAX];
            path_join(f->node, text, path, sizeof path);
            return err_at(b->err, b->c->file, (int)m->line + 1, (int)m->column + 1, path,
                          "duplicate key");
        }
        f->key = arena_strndup(b->c, text, len);
        if (!f->key)
            return oom(b);
        f->kline = (int)m->line + 1;
        f->kcol = (int)m->column + 1;
        f->have_key = true;
        return 0;
    }

    if (++b->nodes > CONF_MAX_NODES)
        return slot_err(b, m, "document has more than %zu nodes", CONF_MAX_NODES);

    bool null = kind == WEFT_CONF_SCALAR && !quoted && is_null_text(text, len);
    if (!f) {
        if (kind != WEFT_CONF_MAP && !null)
            return slot_err(b, m, "the top level must be a mapping");
        kind = WEFT_CONF_MAP; /* an empty document is an empty map */
        null = false;
    }
    if (kind != WEFT_CONF_SCALAR && b->depth == CONF_MAX_DEPTH)
        return slot_err(b, m, "nesting is deeper than %d levels", CONF_MAX_DEPTH);

    weft_conf_node *n = arena_alloc(b->c, sizeof *n);
    if (!n)
        return oom(b);
    memset(n, 0, sizeof *n);
    n->kind = (unsigned char)kind;
    n->quoted = quoted;
    n->null = null;
    n->line = (int)m->line + 1;
    n->col = (int)m->column + 1;
    n->file = b->c->file;
    if (kind == WEFT_CONF_SCALAR) {
        n->text = arena_strndup(b->c, text, len);
        if (!n->text)
            return oom(b);
        n->len = len;
    }

    if (!f) {
        b->c->root = n;
    } else {
        if (frame_grow(f))
            return oom(b);
        n->parent = f->node;
        if (f->node->kind == WEFT_CONF_MAP) {
            n->pkey = f->key;
            f->ents[f->n] = (struct conf_entry){f->key, f->kline, f->kcol, n};
            tab_put(f->tab, f->tabcap, f->key, (uint32_t)(f->n + 1));
            f->have_key = false;
        } else {
            n->pidx = f->n;
            f->items[f->n] = n;
        }
        f->n++;
    }

    /* A null root becomes an empty map with nothing to push. */
    if (ev->type != YAML_SCALAR_EVENT) {
        struct frame *nf = &b->st[b->depth++];
        memset(nf, 0, sizeof *nf);
        nf->node = n;
    }
    return 0;
}

static int on_end(struct builder *b)
{
    struct frame *f = &b->st[b->depth - 1];
    weft_conf_node *n = f->node;

    if (f->n) {
        if (n->kind == WEFT_CONF_MAP) {
            n->ents = arena_alloc(b->c, f->n * sizeof *n->ents);
            if (!n->ents)
                return oom(b);
            memcpy(n->ents, f->ents, f->n * sizeof *n->ents);
        } else {
            n->items = arena_alloc(b->c, f->n * sizeof *n->items);
            if (!n->items)
                return oom(b);
            memcpy(n->items, f->items, f->n * sizeof *n->items);
        }
    }
    n->len = f->n;
    frame_release(f);
    b->depth--;
    return 0;
}

/* Reader errors carry only a byte offset; turn it into line and column. */
static void offset_to_mark(const char *s, size_t len, size_t off, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off && i < len; i++) {
        if (s[i] == '\n') {
            (*line)++;
            *col = 1;
        } else if (((unsigned char)s[i] & 0xC0) != 0x80) {
            (*col)++;
        }
    }
}

static int syntax_err(struct builder *b, const yaml_parser_t *p)
{
    int line, col;

    if (p->error == YAML_MEMORY_ERROR)
        return oom(b);
    if (p->error == YAML_READER_ERROR) {
        offset_to_mark(b->src, b->srclen, p->problem_offset, &line, &col);
    } else {
        line = (int)p->problem_mark.line + 1;
        col = (int)p->problem_mark.column + 1;
    }
    return err_at(b->err, b->c->file, line, col, NULL, "%s",
                  p->problem ? p->problem : "invalid YAML");
}

static int on_event(struct builder *b, const yaml_event_t *ev)
{
    switch (ev->type) {
    case YAML_DOCUMENT_START_EVENT:
        if (b->docs++)
            return err_at(b->err, b->c->file, (int)ev->start_mark.line + 1,
                          (int)ev->start_mark.column + 1, NULL,
                          "multiple documents are not supported");
        return 0;
    case YAML_ALIAS_EVENT:
        return slot_err(b, &ev->start_mark, "aliases are not supported");
    case YAML_SCALAR_EVENT:
    case YAML_MAPPING_START_EVENT:
    case YAML_SEQUENCE_START_EVENT:
        return on_node(b, ev);
    case YAML_MAPPING_END_EVENT:
    case YAML_SEQUENCE_END_EVENT:
        return on_end(b);
    case YAML_STREAM_END_EVENT:
        b->done = true;
        return 0;
    default:
        return 0;
    }
}

int weft_conf_load_string(const char *name, const char *yaml, size_t len, weft_conf **out,
                          weft_conf_err *err)
{
    struct builder *b = NULL;
    yaml_parser_t parser;
    weft_conf *c;
    int rc;

    if (!out)
        return WEFT_EINVAL;
    *out = NULL;
    if (!name)
        name = "<string>";
    if (!yaml && len)
        return plain_err(err, "%s: no input", name);
    if (len > CONF_MAX_BYTES)
        return plain_err(err, "%s: document is larger than %zu MiB", name, CONF_MAX_BYTES >> 20);

    c = calloc(1, sizeof *c);
    if (!c)
        goto fail_nomem;
    c->file = arena_strndup(c, name, strlen(name));
    c->src = arena_strndup(c, yaml ? yaml : "", len);
    c->src_len = len;
    if (!c->file || !c->src)
        goto fail_free_conf;
    b = calloc(1, sizeof *b);
    if (!b)
        goto fail_free_conf;
    b->c = c;
    b->err = err;
    b->src = yaml ? yaml : "";
    b->srclen = len;

    if (!yaml_parser_initialize(&parser))
        goto fail_free_builder;
    yaml_parser_set_input_string(&parser, (const unsigned char *)b->src, len);
    yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING);

    rc = 0;
    while (!b->done && !rc) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            rc = syntax_err(b, &parser);
            break;
        }
        rc = on_event(b, &ev);
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    if (rc)
        goto fail_release_frames;

    if (!c->root) {
        c->root = arena_alloc(c, sizeof *c->root);
        if (!c->root) {
            rc = oom(b);
            goto fail_release_frames;
        }
        memset(c->root, 0, sizeof *c->root);
        c->root->kind = WEFT_CONF_MAP;
        c->root->line = 1;
        c->root->col = 1;
        c->root->file = c->file;
    }
    free(b);
    *out = c;
    return 0;

fail_release_frames:
    while (b->depth)
        frame_release(&b->st[--b->depth]);
    free(b);
    weft_conf_free(c);
    return rc;
fail_free_builder:
    free(b);
fail_free_conf:
    weft_conf_free(c);
fail_nomem:
    plain_err(err, "%s: out of memory", name);
    return WEFT_ENOMEM;
}

int weft_conf_load_file(const char *path, weft_conf **out, weft_conf_err *err)
{
    struct stat st;
    char *buf = NULL;
    size_t len = 0, cap;
    int fd, rc;

    if (!out || !path)
        return WEFT_EINVAL;
    *out = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return plain_err(err, "%s: %s", path, strerror(errno));
    if (fstat(fd, &st) < 0) {
        rc = plain_err(err, "%s: %s", path, strerror(errno));
        goto fail_close_fd;
    }
    if (S_ISDIR(st.st_mode)) {
        rc = plain_err(err, "%s: %s", path, strerror(EISDIR));
        goto fail_close_fd;
    }
    if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > CONF_MAX_BYTES) {
        rc = plain_err(err, "%s: document is larger than %zu MiB", path, CONF_MAX_BYTES >> 20);
        goto fail_close_fd;
    }
    /* Size from fstat is a hint only: pipes report 0 and files can grow. */
    cap = S_ISREG(st.st_mode) && st.st_size > 0 ? (size_t)st.st_size + 1 : 4096;
    buf = malloc(cap);
    if (!buf) {
        plain_err(err, "%s: out of memory", path);
        rc = WEFT_ENOMEM;
        goto fail_close_fd;
    }
    for (;;) {
        if (len == cap) {
            if (cap > CONF_MAX_BYTES) {
                rc = plain_err(err, "%s: document is larger than %zu MiB", path,
                               CONF_MAX_BYTES >> 20);
                goto fail_free_buf;
            }
            size_t ncap = cap * 2 > CONF_MAX_BYTES + 1 ? CONF_MAX_BYTES + 1 : cap * 2;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                plain_err(err, "%s: out of memory", path);
                rc = WEFT_ENOMEM;
                goto fail_free_buf;
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = plain_err(err, "%s: %s", path, strerror(errno));
            goto fail_free_buf;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    if (len > CONF_MAX_BYTES) {
        rc = plain_err(err, "%s: document is larger than %zu MiB", path, CONF_MAX_BYTES >> 20);
        goto fail_free_buf;
    }
    rc = weft_conf_load_string(path, buf, len, out, err);

fail_free_buf:
    free(buf);
fail_close_fd:
    close(fd);
    return rc;
}

/* ---- accessors --------------------------------------------------------- */

const char *weft_conf_source(const weft_conf *c, size_t *len)
{
    if (len)
        *len = c && c->src ? c->src_len : 0;
    return c && c->src ? c->src : "";
}

const weft_conf_node *weft_conf_root(const weft_conf *c)
{
    return c ? c->root : NULL;
}

int weft_conf_kind(const weft_conf_node *n)
{
    return n ? n->kind : 0;
}

int weft_conf_line(const weft_conf_node *n)
{
    return n ? n->line : 0;
}

int weft_conf_column(const weft_conf_node *n)
{
    return n ? n->col : 0;
}

const char *weft_conf_file(const weft_conf_node *n)
{
    return n ? n->file : NULL;
}

const char *weft_conf_scalar(const weft_conf_node *n)
{
    return n && n->kind == WEFT_CONF_SCALAR ? n->text : NULL;
}

static weft_conf_node *find_entry(const weft_conf_node *map, const char *key)
{
    if (!map || !key || map->kind != WEFT_CONF_MAP)
        return NULL;
    for (size_t i = 0; i < map->len; i++)
        if (strcmp(map->ents[i].key, key) == 0)
            return map->ents[i].val;
    return NULL;
}

const weft_conf_node *weft_conf_get(const weft_conf_node *map, const char *key)
{
    weft_conf_node *v = find_entry(map, key);
    if (v)
        v->used = true;
    return v;
}

size_t weft_conf_map_len(const weft_conf_node *map)
{
    return map && map->kind == WEFT_CONF_MAP ? map->len : 0;
}

const weft_conf_node *weft_conf_map_at(const weft_conf_node *map, size_t i, const char **key)
{
    if (key)
        *key = NULL;
    if (!map || map->kind != WEFT_CONF_MAP || i >= map->len)
        return NULL;
    if (key)
        *key = map->ents[i].key;
    map->ents[i].val->used = true;
    return map->ents[i].val;
}

size_t weft_conf_seq_len(const weft_conf_node *seq)
{
    return seq && seq->kind == WEFT_CONF_SEQ ? seq->len : 0;
}

const weft_conf_node *weft_conf_seq_at(const weft_conf_node *seq, size_t i)
{
    if (!seq || seq->kind != WEFT_CONF_SEQ || i >= seq->len)
        return NULL;
    seq->items[i]->used = true;
    return seq->items[i];
}

/* ---- typed getters ----------------------------------------------------- */

/* Fetch key's value (marking it used). *v is NULL when absent, when map is
 * NULL, or when map is a null scalar (`http:` with everything commented out
 * is an empty section). Any other non-mapping is an error. */
static int fetch(const weft_conf_node *map, const char *key, weft_conf_node **v,
                 weft_conf_err *err)
{
    *v = NULL;
    if (!map || !key || (map->kind == WEFT_CONF_SCALAR && map->null))
        return 0;
    if (map->kind != WEFT_CONF_MAP)
        return node_err(err, map, "expected a mapping");
    *v = find_entry(map, key);
    if (*v)
        (*v)->used = true;
    return 0;
}

/* Scalar text a typed getter may parse; NULL for nulls and collections. */
static const char *value_text(const weft_conf_node *v)
{
    return v->kind == WEFT_CONF_SCALAR && !v->null ? v->text : NULL;
}

enum parse_rc { PARSE_OK, PARSE_BAD, PARSE_RANGE };

static bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

/* Unsigned decimal digits at *s (at least one); stops at the first non-digit. */
static enum parse_rc parse_digits(const char **s, uint64_t *out)
{
    const char *p = *s;
    uint64_t v = 0;
    bool over = false;

    if (!is_digit(*p))
        return PARSE_BAD;
    for (; is_digit(*p); p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            over = true;
        else
            v = v * 10 + d;
    }
    *s = p;
    *out = v;
    return over ? PARSE_RANGE : PARSE_OK;
}

static enum parse_rc parse_int(const char *s, int64_t *out)
{
    bool neg = false;
    uint64_t mag;
    enum parse_rc rc;

    if (*s == '+' || *s == '-')
        neg = *s++ == '-';
    rc = parse_digits(&s, &mag);
    if (rc == PARSE_BAD || *s)
        return PARSE_BAD;
    if (rc == PARSE_RANGE || mag > (uint64_t)INT64_MAX + neg)
        return PARSE_RANGE;
    *out = neg ? (int64_t)(0 - mag) : (int64_t)mag;
    return PARSE_OK;
}

int weft_conf_string(const weft_conf_node *map, const char *key, const char **out,
                     weft_conf_err *err)
{
    weft_conf_node *v;
    int rc = fetch(map, key, &v, err);
    if (rc || !v)
        return rc;
    const char *s = value_text(v);
    if (!s)
        return node_err(err, v, "expected a string");
    *out = s;
    return 0;
}

int weft_conf_text(const weft_conf_node *n, const char **out, weft_conf_err *err)
{
    const char *s = n ? value_text(n) : NULL;
    if (!s)
        return n ? node_err(err, n, "expected a string")
                 : weft_conf_errorf(err, NULL, NULL, "expected a string");
    *out = s;
    return 0;
}

int weft_conf_int(const weft_conf_node *map, const char *key, int64_t min, int64_t max,
                  int64_t *out, weft_conf_err *err)
{
    weft_conf_node *v;
    int64_t x;
    int rc = fetch(map, key, &v, err);
    if (rc || !v)
        return rc;
    const char *s = value_text(v);
    if (!s || parse_int(s, &x) != PARSE_OK || x < min || x > max)
        return node_err(err, v, "expected an integer between %" PRId64 " and %" PRId64, min,
                        max);
    *out = x;
    return 0;
}

int weft_conf_bool(const weft_conf_node *map, const char *key, bool *out, weft_conf_err *err)
{
    static const char *const yes[] = {"true", "yes", "on"};
    static const char *const no[] = {"false", "no", "off"};
    weft_conf_node *v;
    int rc = fetch(map, key, &v, err);
    if (rc || !v)
        return rc;
    const char *s = value_text(v);
    if (s) {
        weft_str t = weft_str_from(s);
        for (size_t i = 0; i < WEFT_ARRAY_LEN(yes); i++) {
            if (weft_str_ieq(t, weft_str_from(yes[i]))) {
                *out = true;
                return 0;
            }
            if (weft_str_ieq(t, weft_str_from(no[i]))) {
                *out = false;
                return 0;
            }
        }
    }
    return node_err(err, v, "expected true or false");
}

/* Durations are computed in microseconds and rounded up to milliseconds, so
 * a non-zero duration never becomes 0 (which callers often read as "off"). */
static enum parse_rc parse_duration_ms(const char *s, int64_t *out)
{
    static const struct {
        const char *name;
        uint64_t us;
    } units[] = {{"us", 1},          {"ms", 1000},          {"s", 1000000},
                 {"m", 60000000ull}, {"h", 3600000000ull}};
    uint64_t ip, fp = 0, fscale = 1, unit = 0;
    bool nonzero;
    enum parse_rc rc;

    rc = parse_digits(&s, &ip);
    if (rc == PARSE_BAD)
        return PARSE_BAD;
    nonzero = ip != 0;
    bool frac = *s == '.';
    if (frac) {
        s++;
        if (!is_digit(*s))
            return PARSE_BAD;
        /* nine digits are below a microsecond even for hours */
        for (int nd = 0; is_digit(*s); s++, nd++) {
            nonzero |= *s != '0';
            if (nd < 9) {
                fp = fp * 10 + (uint64_t)(*s - '0');
                fscale *= 10;
            }
        }
    }
    if (!*s) {
        if (frac)
            return PARSE_BAD; /* a bare number must be whole milliseconds */
        unit = 1000;
    }
    for (size_t i = 0; i < WEFT_ARRAY_LEN(units) && !unit; i++)
        if (!strcmp(s, units[i].name))
            unit = units[i].us;
    if (!unit)
        return PARSE_BAD;
    if (rc == PARSE_RANGE)
        return PARSE_RANGE;

    uint64_t fus = fp * unit / fscale; /* fp < 1e9, unit <= 3.6e9: fits */
    if (ip > ((uint64_t)INT64_MAX - fus) / unit)
        return PARSE_RANGE;
    uint64_t us = ip * unit + fus;
    if (us == 0 && nonzero)
        us = 1; /* below a microsecond ("0.5us") is still not 0 */
    *out = (int64_t)(us / 1000 + (us % 1000 != 0));
    return PARSE_OK;
}

static void fmt_duration(char *buf, size_t cap, int64_t ms)
{
    if (ms != 0 && ms % 3600000 == 0)
        snprintf(buf, cap, "%" PRId64 "h", ms / 3600000);
    else if (ms != 0 && ms % 60000 == 0)
        snprintf(buf, cap, "%" PRId64 "m", ms / 60000);
    else if (ms != 0 && ms % 1000 == 0)
        snprintf(buf, cap, "%" PRId64 "s", ms / 1000);
    else
        snprintf(buf, cap, "%" PRId64 "ms", ms);
}

int weft_conf_duration_ms(const weft_conf_node *map, const char *key, int64_t min_ms,
                          int64_t max_ms, int64_t *out, weft_conf_err *err)
{
    weft_conf_node *v;
    int64_t x = 0;
    int rc = fetch(map, key, &v, err);
    if (rc || !v)
        return rc;
    const char *s = value_text(v);
    enum parse_rc prc = s ? parse_duration_ms(s, &x) : PARSE_BAD;
    if (prc == PARSE_BAD)
        return node_err(err, v, "expected a duration like 10s or 250ms");
    if (prc == PARSE_RANGE || x < min_ms || x > max_ms) {
        char lo[32], hi[32];
        fmt_duration(lo, sizeof lo, min_ms);
        fmt_duration(hi, sizeof hi, max_ms);
        return node_err(err, v, "expected a duration between %s and %s", lo, hi);
    }
    *out = x;
    return 0;
}

static enum parse_rc parse_size(const char *s, uint64_t *out)
{
    static const struct {
        const char *name;
        unsigned shift;
    } units[] = {{"", 0},    {"b", 0},    {"k", 10},   {"kb", 10}, {"kib", 10},
                 {"m", 20},  {"mb", 20},  {"mib", 20}, {"g", 30},  {"gb", 30},
                 {"gib", 30}, {"t", 40},  {"tb", 40},  {"tib", 40}};
    uint64_t n;
    enum parse_rc rc = parse_digits(&s, &n);

    if (rc == PARSE_BAD)
        return PARSE_BAD;
    weft_str suffix = weft_str_from(s);
    for (size_t i = 0; i < WEFT_ARRAY_LEN(units); i++) {
        if (!weft_str_ieq(suffix, weft_str_from(units[i].name)))
            continue;
        if (rc == PARSE_RANGE || n > (UINT64_MAX >> units[i].shift))
            return PARSE_RANGE;
        *out = n << units[i].shift;
        return PARSE_OK;
    }
    return PARSE_BAD;
}

static void fmt_size(char *buf, size_t cap, uint64_t v)
{
    static const char *const names[] = {"TiB", "GiB", "MiB", "KiB"};
    static const unsigned shifts[] = {40, 30, 20, 10};
    for (size_t i = 0; i < WEFT_ARRAY_LEN(names) && v; i++) {
        if (v % ((uint64_t)1 << shifts[i]) == 0) {
            snprintf(buf, cap, "%" PRIu64 "%s", v >> shifts[i], names[i]);
            return;
        }
    }
    snprintf(buf, cap, "%" PRIu64, v);
}

int weft_conf_size(const weft_conf_node *map, const char *key, uint64_t min, uint64_t max,
                   uint64_t *out, weft_conf_err *err)
{
    weft_conf_node *v;
    uint64_t x = 0;
    int rc = fetch(map, key, &v, err);
    if (rc || !v)
        return rc;
    const char *s = value_text(v);
    enum parse_rc prc = s ? parse_size(s, &x) : PARSE_BAD;
    if (prc == PARSE_BAD)
        return node_err(err, v, "expected a size like 64KiB");
    if (prc == PARSE_RANGE || x < min || x > max) {
        char lo[32], hi[32];
        fmt_size(lo, sizeof lo, min);
        fmt_size(hi, sizeof hi, max);
        return node_err(err, v, "expected a size between %s and %s", lo, hi);
    }
    *out = x;
    return 0;
}

int weft_conf_enum(const weft_conf_node *map, const char *key, const char *const *choices,
                   int *out, weft_conf_err *err)
{
    weft_conf_node *v;
    char list[384];
    struct sbuf b = {list, sizeof list, 0};
    int rc = fetch(map, key, &v, err);
    if (rc || !v)
        return rc;
    const char *s = value_text(v);
    list[0] = '\0';
    for (int i = 0; choices && choices[i]; i++) {
        if (s && !strcmp(s, choices[i])) {
            *out = i;
            return 0;
        }
        sb_add(&b, "%s%s", i ? ", " : "", choices[i]);
    }
    return node_err(err, v, "expected one of: %s", list);
}

/* ---- unused keys and caller errors ------------------------------------- */

static int check_node(const weft_conf_node *n, weft_conf_err *err)
{
    int rc;

    if (n->kind == WEFT_CONF_MAP) {
        for (size_t i = 0; i < n->len; i++) {
            const struct conf_entry *e = &n->ents[i];
            if (!e->val->used) {
                char path[CONF_PATH_MAX];
                path_join(n, e->key, path, sizeof path);
                return err_at(err, n->file, e->line, e->col, path, "unknown key");
            }
            if ((rc = check_node(e->val, err)))
                return rc;
        }
    } else if (n->kind == WEFT_CONF_SEQ) {
        for (size_t i = 0; i < n->len; i++)
            if ((rc = check_node(n->items[i], err)))
                return rc;
    }
    return 0;
}

int weft_conf_check_unused(const weft_conf_node *map, weft_conf_err *err)
{
    return map ? check_node(map, err) : 0;
}

int weft_conf_errorf(weft_conf_err *err, const weft_conf_node *n, const char *key,
                     const char *fmt, ...)
{
    char path[CONF_PATH_MAX];
    va_list ap;

    va_start(ap, fmt);
    if (!n) {
        verr_at(err, NULL, 0, 0, key, fmt, ap);
    } else if (!key || (n->pkey && !strcmp(n->pkey, key))) {
        path_join(n, NULL, path, sizeof path);
        verr_at(err, n->file, n->line, n->col, path, fmt, ap);
    } else if (n->kind == WEFT_CONF_MAP) {
        const weft_conf_node *v = find_entry(n, key);
        const weft_conf_node *at = v ? v : n;
        path_join(n, key, path, sizeof path);
        verr_at(err, at->file, at->line, at->col, path, fmt, ap);
    } else {
        verr_at(err, n->file, n->line, n->col, key, fmt, ap);
    }
    va_end(ap);
    return WEFT_ECONFIG;
}
