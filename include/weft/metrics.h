/*
 * metrics.h — counters, gauges and histograms kept per worker thread,
 * merged when scraped, rendered in the Prometheus text format (0.0.4).
 *
 * Hot-path updates touch only the calling thread's own slots: no locks and
 * no atomic read-modify-write (a relaxed load and store of a value that only
 * this thread writes). The scraper sums all workers' slots with relaxed
 * loads, so a scrape sees each counter at some recent value, never torn.
 *
 * Lifecycle: register every series at start-up, before worker threads call
 * weft_metrics_attach(); registration is not thread-safe. Series are
 * identified by a weft_metric id (an index). A series is a name plus an
 * optional fixed label set, e.g. name "weft_http_responses_total" with
 * labels "code=\"2xx\"". Series sharing a name must share type and help.
 *
 * Ownership: the registry copies names, help and labels. One process-wide
 * registry (weft_metrics_global) is what /metrics serves.
 */
#ifndef WEFT_METRICS_H
#define WEFT_METRICS_H

#include "weft/buf.h"
#include "weft/weft.h"

typedef struct weft_metrics weft_metrics;
typedef uint32_t weft_metric;

/* An id that names no series: updates to it are ignored and its value reads
 * 0. A failed registration leaves *id untouched, so a caller that presets
 * *id to this gets a series the registry refused (bad labels, full) simply
 * missing rather than written over another series. */
#define WEFT_METRIC_NONE UINT32_MAX

enum weft_metric_type { WEFT_COUNTER = 1, WEFT_GAUGE, WEFT_HISTOGRAM };

#define WEFT_METRICS_MAX_WORKERS 256

/* The process-wide registry (created on first use; never freed). */
weft_metrics *weft_metrics_global(void);

/* Register a series. labels may be NULL. Returns 0 and *id, WEFT_EINVAL
 * for a bad name/label syntax or a type clash, WEFT_ETOOBIG when full (then
 * *id is untouched: see WEFT_METRIC_NONE).
 * Registering the same name+labels twice returns the existing id. */
int weft_metrics_counter(weft_metrics *m, const char *name, const char *help,
                         const char *labels, weft_metric *id);
int weft_metrics_gauge(weft_metrics *m, const char *name, const char *help,
                       const char *labels, weft_metric *id);
/* bounds: strictly increasing upper bounds (the +Inf bucket is implicit). */
int weft_metrics_histogram(weft_metrics *m, const char *name, const char *help,
                           const char *labels, const double *bounds, size_t nbounds,
                           weft_metric *id);
/* A gauge computed at scrape time by fn(arg) (called on the scraping thread). */
int weft_metrics_gauge_fn(weft_metrics *m, const char *name, const char *help,
                          const char *labels, double (*fn)(void *arg), void *arg);

/* Bind the calling thread to worker slot `worker` (0..MAX_WORKERS-1).
 * Threads never attached write to a shared "other" slot: use that only from
 * one non-worker thread (e.g. the main thread). */
void weft_metrics_attach(weft_metrics *m, int worker);

/* Hot-path updates on the calling thread's slot. */
void weft_metric_add(weft_metrics *m, weft_metric id, uint64_t n);
static inline void weft_metric_inc(weft_metrics *m, weft_metric id) { weft_metric_add(m, id, 1); }
/* Per-worker gauges are summed across workers at scrape time. */
void weft_metric_gauge_add(weft_metrics *m, weft_metric id, int64_t delta);
void weft_metric_gauge_set(weft_metrics *m, weft_metric id, int64_t value);
void weft_metric_observe(weft_metrics *m, weft_metric id, double v);

/* Sum of a counter or gauge over all workers (for tests and admin APIs). */
double weft_metric_value(weft_metrics *m, weft_metric id);

/* Render every series in Prometheus text format, plus process_* metrics,
 * appending to out. Thread-safe against updates (not against registration). */
int weft_metrics_render(weft_metrics *m, weft_buf *out);

/* Standard latency buckets in seconds (0.0005 .. 10). */
extern const double weft_latency_buckets[];
extern const size_t weft_latency_nbuckets;

#endif
