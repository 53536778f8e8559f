/*
 * metrics.c — per-worker metric slots merged at scrape time.
 *
 * Every worker owns a flat array of 64-bit slots; a series is an offset into
 * it (1 slot for counters and gauges, nbounds+3 for histograms: buckets,
 * +Inf, count, sum as double bits). Slots of different workers live in
 * separate allocations so workers never share a cache line. An update is a
 * relaxed load + relaxed store of the thread's own slot: on x86 and ARM that
 * is a plain mov, yet the scraper's concurrent relaxed loads are race-free
 * in the C11 model. Histograms are cumulative only at render time.
 */
#include "weft/metrics.h"

#include <math.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#include <dirent.h>
#include <unistd.h>

#define MAX_SERIES 1024
#define MAX_SLOTS 8192
#define NSETS (WEFT_METRICS_MAX_WORKERS + 1) /* + the "other" slot set */

typedef struct series {
    char *name, *help, *labels;
    int type;
    uint32_t slot;
    uint32_t nbounds;
    double *bounds;
    double (*fn)(void *);
    void *fn_arg;
} series;

struct weft_metrics {
    series s[MAX_SERIES];
    uint32_t nseries;
    uint32_t nslots;
    _Atomic uint64_t *sets[NSETS];
    pthread_mutex_t mu; /* guards lazy creation of slot sets */
    double start_time;
};

static _Thread_local int tl_worker = -1;

const double weft_latency_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                       0.05,   0.1,   0.25,   0.5,   1,    2.5,
                                       5,      10};
const size_t weft_latency_nbuckets = sizeof weft_latency_buckets / sizeof weft_latency_buckets[0];

static weft_metrics *global;
static pthread_once_t global_once = PTHREAD_ONCE_INIT;

static void make_global(void)
{
    global = calloc(1, sizeof *global);
    if (!global)
        abort(); /* start-up allocation of a few KiB; nothing can run without it */
    pthread_mutex_init(&global->mu, NULL);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    global->start_time = (double)tv.tv_sec + tv.tv_usec / 1e6;
}

weft_metrics *weft_metrics_global(void)
{
    pthread_once(&global_once, make_global);
    return global;
}

static _Atomic uint64_t *slots_for(weft_metrics *m, int set)
{
    _Atomic uint64_t *p = m->sets[set];
    if (WEFT_LIKELY(p != NULL))
        return p;
    pthread_mutex_lock(&m->mu);
    if (!m->sets[set])
        m->sets[set] = calloc(MAX_SLOTS, sizeof(uint64_t));
    p = m->sets[set];
    pthread_mutex_unlock(&m->mu);
    return p;
}

void weft_metrics_attach(weft_metrics *m, int worker)
{
    if (worker < 0 || worker >= WEFT_METRICS_MAX_WORKERS)
        worker = -1;
    tl_worker = worker;
    slots_for(m, worker < 0 ? WEFT_METRICS_MAX_WORKERS : worker);
}

static inline _Atomic uint64_t *my_slots(weft_metrics *m)
{
    int set = tl_worker < 0 ? WEFT_METRICS_MAX_WORKERS : tl_worker;
    return slots_for(m, set);
}

static bool valid_name(const char *n)
{
    if (!n || !*n)
        return false;
    for (const char *p = n; *p; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
                  (p != n && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

static bool label_name_char(char c, bool first)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
           (!first && c >= '0' && c <= '9');
}

/* A label set as it appears between the braces of the exposition format:
 * name="value"(,name="value")*, names [a-zA-Z_][a-zA-Z0-9_]*, values with
 * the escapes \\ \" \n only. It is copied verbatim into every rendered
 * line, so anything else would corrupt the whole scrape. */
static bool valid_labels(const char *l)
{
    const char *p = l;
    for (;;) {
        if (!label_name_char(*p, true))
            return false;
        while (label_name_char(*p, false))
            p++;
        if (*p++ != '=' || *p++ != '"')
            return false;
        for (;;) {
            char c = *p++;
            if (c == '\0' || c == '\n')
                return false;
            if (c == '"')
                break;
            if (c == '\\') {
                c = *p++;
                if (c != '\\' && c != '"' && c != 'n')
                    return false;
            }
        }
        if (*p == '\0')
            return true;
        if (*p++ != ',')
            return false;
    }
}

/* Registration may happen on any thread (the gateway registers per-route
 * series when a config is installed); it is serialised by m->mu and a new
 * series is fully written before nseries makes it visible to scrapers. */
static int add_series_locked(weft_metrics *m, const char *name, const char *help,
                             const char *labels, int type, uint32_t nslots, const double *bounds,
                             uint32_t nbounds, weft_metric *id);

static int add_series(weft_metrics *m, const char *name, const char *help, const char *labels,
                      int type, uint32_t nslots, const double *bounds, uint32_t nbounds,
                      weft_metric *id)
{
    pthread_mutex_lock(&m->mu);
    int rc = add_series_locked(m, name, help, labels, type, nslots, bounds, nbounds, id);
    pthread_mutex_unlock(&m->mu);
    return rc;
}

static int add_series_locked(weft_metrics *m, const char *name, const char *help,
                             const char *labels, int type, uint32_t nslots, const double *bounds,
                             uint32_t nbounds, weft_metric *id)
{
    if (!valid_name(name) || !help || (labels && *labels && !valid_labels(labels)))
        return WEFT_EINVAL;
    for (uint32_t i = 0; i < m->nseries; i++) {
        series *s = &m->s[i];
        if (strcmp(s->name, name) != 0)
            continue;
        if (s->type != type)
            return WEFT_EINVAL;
        if (strcmp(s->labels ? s->labels : "", labels ? labels : "") == 0) {
            if (id)
                *id = i;
            return 1; /* exists */
        }
    }
    if (m->nseries == MAX_SERIES || m->nslots + nslots > MAX_SLOTS)
        return WEFT_ETOOBIG;
    series *s = &m->s[m->nseries];
    memset(s, 0, sizeof *s);
    s->name = strdup(name);
    s->help = strdup(help);
    s->labels = labels && *labels ? strdup(labels) : NULL;
    if (!s->name || !s->help || (labels && *labels && !s->labels)) {
        free(s->name);
        free(s->help);
        free(s->labels);
        return WEFT_ENOMEM;
    }
    s->type = type;
    s->slot = m->nslots;
    if (nbounds) {
        s->bounds = malloc(nbounds * sizeof(double));
        if (!s->bounds) {
            free(s->name);
            free(s->help);
            free(s->labels);
            return WEFT_ENOMEM;
        }
        memcpy(s->bounds, bounds, nbounds * sizeof(double));
        s->nbounds = nbounds;
    }
    m->nslots += nslots;
    if (id)
        *id = m->nseries;
    atomic_thread_fence(memory_order_release);
    m->nseries++;
    return 0;
}

int weft_metrics_counter(weft_metrics *m, const char *name, const char *help,
                         const char *labels, weft_metric *id)
{
    int rc = add_series(m, name, help, labels, WEFT_COUNTER, 1, NULL, 0, id);
    return rc > 0 ? 0 : rc;
}

int weft_metrics_gauge(weft_metrics *m, const char *name, const char *help,
                       const char *labels, weft_metric *id)
{
    int rc = add_series(m, name, help, labels, WEFT_GAUGE, 1, NULL, 0, id);
    return rc > 0 ? 0 : rc;
}

int weft_metrics_gauge_fn(weft_metrics *m, const char *name, const char *help,
                          const char *labels, double (*fn)(void *arg), void *arg)
{
    weft_metric id;
    pthread_mutex_lock(&m->mu);
    int rc = add_series_locked(m, name, help, labels, WEFT_GAUGE, 1, NULL, 0, &id);
    if (rc >= 0) {
        m->s[id].fn = fn;
        m->s[id].fn_arg = arg;
    }
    pthread_mutex_unlock(&m->mu);
    return rc < 0 ? rc : 0;
}

int weft_metrics_histogram(weft_metrics *m, const char *name, const char *help,
                           const char *labels, const double *bounds, size_t nbounds,
                           weft_metric *id)
{
    if (!bounds || nbounds == 0 || nbounds > 64)
        return WEFT_EINVAL;
    /* +Inf is the implicit last bucket; an explicit one would render twice,
     * and NaN cannot be ordered */
    for (size_t i = 0; i < nbounds; i++)
        if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])))
            return WEFT_EINVAL;
    weft_metric sid;
    int rc = add_series(m, name, help, labels, WEFT_HISTOGRAM, (uint32_t)nbounds + 3, bounds,
                        (uint32_t)nbounds, &sid);
    if (rc < 0)
        return rc;
    if (id)
        *id = sid;
    return 0;
}

static inline void slot_add(_Atomic uint64_t *p, uint64_t n)
{
    atomic_store_explicit(p, atomic_load_explicit(p, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

void weft_metric_add(weft_metrics *m, weft_metric id, uint64_t n)
{
    if (id == WEFT_METRIC_NONE)
        return;
    slot_add(&my_slots(m)[m->s[id].slot], n);
}

void weft_metric_gauge_add(weft_metrics *m, weft_metric id, int64_t delta)
{
    if (id == WEFT_METRIC_NONE)
        return;
    slot_add(&my_slots(m)[m->s[id].slot], (uint64_t)delta);
}

void weft_metric_gauge_set(weft_metrics *m, weft_metric id, int64_t value)
{
    if (id == WEFT_METRIC_NONE)
        return;
    atomic_store_explicit(&my_slots(m)[m->s[id].slot], (uint64_t)value, memory_order_relaxed);
}

void weft_metric_observe(weft_metrics *m, weft_metric id, double v)
{
    if (id == WEFT_METRIC_NONE)
        return;
    const series *s = &m->s[id];
    _Atomic uint64_t *p = &my_slots(m)[s->slot];
    uint32_t b = 0;
    while (b < s->nbounds && v > s->bounds[b])
        b++;
    slot_add(&p[b], 1);                /* bucket (non-cumulative here) */
    slot_add(&p[s->nbounds + 1], 1);   /* count */
    uint64_t bits = atomic_load_explicit(&p[s->nbounds + 2], memory_order_relaxed);
    double sum;
    memcpy(&sum, &bits, sizeof sum);
    sum += v;
    memcpy(&bits, &sum, sizeof sum);
    atomic_store_explicit(&p[s->nbounds + 2], bits, memory_order_relaxed);
}

static uint64_t sum_slot(weft_metrics *m, uint32_t slot)
{
    uint64_t t = 0;
    for (int i = 0; i < NSETS; i++)
        if (m->sets[i])
            t += atomic_load_explicit(&m->sets[i][slot], memory_order_relaxed);
    return t;
}

static double sum_double_slot(weft_metrics *m, uint32_t slot)
{
    double t = 0;
    for (int i = 0; i < NSETS; i++) {
        if (!m->sets[i])
            continue;
        uint64_t bits = atomic_load_explicit(&m->sets[i][slot], memory_order_relaxed);
        double d;
        memcpy(&d, &bits, sizeof d);
        t += d;
    }
    return t;
}

double weft_metric_value(weft_metrics *m, weft_metric id)
{
    if (id == WEFT_METRIC_NONE)
        return 0;
    const series *s = &m->s[id];
    if (s->fn)
        return s->fn(s->fn_arg);
    if (s->type == WEFT_GAUGE)
        return (double)(int64_t)sum_slot(m, s->slot);
    if (s->type == WEFT_HISTOGRAM)
        return (double)sum_slot(m, s->slot + s->nbounds + 1);
    return (double)sum_slot(m, s->slot);
}

/* Format straight into the output buffer: measure, reserve, format. Lines
 * have no length limit (long label sets), and a line is never cut short. */
static int appendf(weft_buf *out, const char *fmt, ...) WEFT_PRINTF(2, 3);
static int appendf(weft_buf *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return WEFT_EINVAL;
    int rc = weft_buf_reserve(out, (size_t)n + 1); /* + vsnprintf's NUL */
    if (rc < 0)
        return rc;
    va_start(ap, fmt);
    vsnprintf(weft_buf_wptr(out), (size_t)n + 1, fmt, ap);
    va_end(ap);
    weft_buf_commit(out, (size_t)n);
    return 0;
}

static void fmt_double(char *b, size_t n, double v)
{
    if (isinf(v))
        snprintf(b, n, v > 0 ? "+Inf" : "-Inf");
    else if (isnan(v))
        snprintf(b, n, "NaN");
    else if (fabs(v) < 1e15 && v == (double)(int64_t)v) /* range first: the cast is UB beyond int64 */
        snprintf(b, n, "%lld", (long long)v);
    else {
        /* shortest text that reads back as the same double */
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(b, n, "%.*g", prec, v);
            if (strtod(b, NULL) == v)
                break;
        }
    }
}

/* HELP text escaped (\\ and \n) straight into out, however long. */
static int append_help(weft_buf *out, const char *src)
{
    int rc = 0;
    const char *run = src;
    for (; *src && rc == 0; src++) {
        if (*src != '\\' && *src != '\n')
            continue;
        rc = weft_buf_append(out, run, (size_t)(src - run));
        if (rc == 0)
            rc = weft_buf_append(out, *src == '\n' ? "\\n" : "\\\\", 2);
        run = src + 1;
    }
    if (rc == 0)
        rc = weft_buf_append(out, run, (size_t)(src - run));
    return rc;
}

static int render_series(weft_metrics *m, const series *s, weft_buf *out)
{
    char num[64];
    const char *lb = s->labels;
    int rc = 0;
    if (s->type != WEFT_HISTOGRAM) {
        fmt_double(num, sizeof num, weft_metric_value(m, (weft_metric)(s - m->s)));
        return appendf(out, "%s%s%s%s %s\n", s->name, lb ? "{" : "", lb ? lb : "", lb ? "}" : "",
                       num);
    }
    uint64_t cum = 0;
    for (uint32_t b = 0; b <= s->nbounds && rc == 0; b++) {
        cum += sum_slot(m, s->slot + b);
        if (b < s->nbounds)
            fmt_double(num, sizeof num, s->bounds[b]);
        else
            snprintf(num, sizeof num, "+Inf");
        rc = appendf(out, "%s_bucket{%s%sle=\"%s\"} %llu\n", s->name, lb ? lb : "", lb ? "," : "",
                     num, (unsigned long long)cum);
    }
    /* count comes from its own slot, which may run slightly ahead of the
     * buckets during a concurrent scrape; report the bucket total so the
     * exposition stays self-consistent (+Inf == count). */
    if (rc == 0) {
        fmt_double(num, sizeof num, sum_double_slot(m, s->slot + s->nbounds + 2));
        rc = appendf(out, "%s_sum%s%s%s %s\n", s->name, lb ? "{" : "", lb ? lb : "", lb ? "}" : "",
                     num);
    }
    if (rc == 0)
        rc = appendf(out, "%s_count%s%s%s %llu\n", s->name, lb ? "{" : "", lb ? lb : "",
                     lb ? "}" : "", (unsigned long long)cum);
    return rc;
}

static int render_process(weft_metrics *m, weft_buf *out)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    long rss_pages = 0, vsz_pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &vsz_pages, &rss_pages) != 2)
            rss_pages = vsz_pages = 0;
        fclose(f);
    }
    long page = sysconf(_SC_PAGESIZE);
    int fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        while (readdir(d))
            fds++;
        closedir(d);
        fds -= 3; /* ".", ".." and the directory's own fd */
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    int rc = appendf(out,
                     "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
                     "# TYPE process_cpu_seconds_total counter\n"
                     "process_cpu_seconds_total %.6f\n"
                     "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                     "# TYPE process_resident_memory_bytes gauge\n"
                     "process_resident_memory_bytes %ld\n",
                     cpu, rss_pages * page);
    if (rc == 0)
        rc = appendf(out,
                     "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
                     "# TYPE process_virtual_memory_bytes gauge\n"
                     "process_virtual_memory_bytes %ld\n"
                     "# HELP process_open_fds Number of open file descriptors.\n"
                     "# TYPE process_open_fds gauge\n"
                     "process_open_fds %d\n"
                     "# HELP process_max_fds Maximum number of open file descriptors.\n"
                     "# TYPE process_max_fds gauge\n"
                     "process_max_fds %llu\n"
                     "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
                     "# TYPE process_start_time_seconds gauge\n"
                     "process_start_time_seconds %.3f\n",
                     vsz_pages * page, fds, (unsigned long long)rl.rlim_cur, m->start_time);
    return rc;
}

int weft_metrics_render(weft_metrics *m, weft_buf *out)
{
    int rc = 0;
    for (uint32_t i = 0; i < m->nseries && rc == 0; i++) {
        const series *s = &m->s[i];
        bool first = true;
        for (uint32_t j = 0; j < i; j++)
            if (strcmp(m->s[j].name, s->name) == 0) {
                first = false;
                break;
            }
        if (!first)
            continue;
        static const char *const tnames[] = {"", "counter", "gauge", "histogram"};
        rc = appendf(out, "# HELP %s ", s->name);
        if (rc == 0)
            rc = append_help(out, s->help);
        if (rc == 0)
            rc = appendf(out, "\n# TYPE %s %s\n", s->name, tnames[s->type]);
        for (uint32_t j = i; j < m->nseries && rc == 0; j++)
            if (strcmp(m->s[j].name, s->name) == 0)
                rc = render_series(m, &m->s[j], out);
    }
    if (rc == 0)
        rc = render_process(m, out);
    return rc;
}
