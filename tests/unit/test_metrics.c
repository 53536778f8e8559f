/*
 * test_metrics.c — unit tests for the metrics registry: registration rules,
 * per-worker slots merged at scrape time, and the Prometheus text rendering.
 *
 * The registry is process-wide (weft_metrics_global) and cannot be reset, so
 * every test uses its own metric names (prefix "tm_"). The promtool check
 * renders the whole registry, so it runs before the tests that register
 * deliberately odd series. Cases that may trip a sanitizer run in a forked
 * child, so an abort is one failed test rather than the end of the binary.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "weft/metrics.h"

/* ------------------------------------------------------------------ */
/* helpers */

/* Render the global registry into a NUL-terminated malloc'd string. */
static char *render_all(void)
{
    weft_buf b;
    weft_buf_init(&b, 16u << 20);
    int rc = weft_metrics_render(weft_metrics_global(), &b);
    if (rc == 0)
        rc = weft_buf_append(&b, "", 1);
    if (rc != 0) {
        weft_buf_release(&b);
        return NULL;
    }
    char *s = malloc(weft_buf_used(&b));
    if (s)
        memcpy(s, weft_buf_rptr(&b), weft_buf_used(&b));
    weft_buf_release(&b);
    return s;
}

/* Is `line` (without its newline) a whole line of text? */
static bool has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++) {
        bool start = p == text || p[-1] == '\n';
        if (start && p[n] == '\n')
            return true;
    }
    return false;
}

static int count_substr(const char *text, const char *needle)
{
    int n = 0;
    size_t len = strlen(needle);
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += len)
        n++;
    return n;
}

/* Offset of a whole line, or -1. */
static long line_pos(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return (long)(p - text);
    return -1;
}

static void assert_line(const char *text, const char *line)
{
    if (!has_line(text, line))
        fail_msg("missing line: %s", line);
}

/* The text of the first line starting with prefix (static buffer), or NULL. */
static const char *find_line_prefix(const char *text, const char *prefix)
{
    static char out[4096];
    for (const char *p = text; (p = strstr(p, prefix)) != NULL; p++) {
        if (p != text && p[-1] != '\n')
            continue;
        const char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len >= sizeof out)
            len = sizeof out - 1;
        memcpy(out, p, len);
        out[len] = '\0';
        return out;
    }
    return NULL;
}

static void shortest(char *b, size_t n, double v)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(b, n, "%.*g", prec, v);
        if (strtod(b, NULL) == v)
            return;
    }
}

static int run_in_child(int (*fn)(void))
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0)
        _exit(fn());
    int st = 0;
    while (waitpid(pid, &st, 0) < 0) {
    }
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return -1;
}

/* ------------------------------------------------------------------ */
/* counters and gauges */

static void test_counter_inc_add_value(void **state)
{
    (void)state;
    weft_metrics *m = weft_metrics_global();
    assert_ptr_equal(m, weft_metrics_global());
    weft_metric id;
    assert_int_equal(weft_metrics_counter(m, "tm_requests_total", "Requests seen.", NULL, &id), 0);
    assert_true(weft_metric_value(m, id) == 0.0);
    weft_metric_inc(m, id);
    assert_true(weft_metric_value(m, id) == 1.0);
    weft_metric_add(m, id, 41);
    assert_true(weft_metric_value(m, id) == 42.0);
    weft_metric_add(m, id, 0);
    assert_true(weft_metric_value(m, id) == 42.0);
    char *t = render_all();
    assert_non_null(t);
    assert_line(t, "# HELP tm_requests_total Requests seen.");
    assert_line(t, "# TYPE tm_requests_total counter");
    assert_line(t, "tm_requests_total 42");
    free(t);
}

static void test_gauge_add_negative_and_set(void **state)
{
    (void)state;
    weft_metrics *m = weft_metrics_global();
    weft_metric id;
    assert_int_equal(weft_metrics_gauge(m, "tm_inflight", "In flight.", NULL, &id), 0);
    weft_metric_gauge_add(m, id, 10);
    weft_metric_gauge_add(m, id, -15);
    assert_true(weft_metric_value(m, id) == -5.0);
    char *t = render_all();
    assert_non_null(t);
    assert_line(t, "# TYPE tm_inflight gauge");
    assert_line(t, "tm_inflight -5");
    free(t);
    weft_metric_gauge_set(m, id, 7);
    assert_true(weft_metric_value(m, id) == 7.0);
    weft_metric_gauge_add(m, id, -7);
    assert_true(weft_metric_value(m, id) == 0.0);
    t = render_all();
    assert_line(t, "tm_inflight 0");
    free(t);
}

typedef struct worker_arg {
    weft_metrics *m;
    weft_metric ctr, gauge;
    int index;
} worker_arg;

static void *worker_main(void *p)
{
    worker_arg *a = p;
    weft_metrics_attach(a->m, a->index);
    for (int i = 0; i < 100000; i++)
        weft_metric_inc(a->m, a->ctr);
    weft_metric_gauge_add(a->m, a->gauge, a->index + 1); /* 1+2+3+4 */
    weft_metric_gauge_add(a->m, a->gauge, -2);           /* per worker, summed */
    return NULL;
}

static void test_per_worker_merge(void **state)
{
    (void)state;
    weft_metrics *m = weft_metrics_global();
    weft_metric ctr, g;
    assert_int_equal(weft_metrics_counter(m, "tm_worker_ops_total", "Ops.", NULL, &ctr), 0);
    assert_int_equal(weft_metrics_gauge(m, "tm_worker_level", "Level.", NULL, &g), 0);
    pthread_t th[4];
    worker_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (worker_arg){m, ctr, g, i};
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    assert_true(weft_metric_value(m, ctr) == 400000.0);
    assert_true(weft_metric_value(m, g) == 2.0); /* 10 - 8 */
    /* the unattached main thread adds through the shared "other" slot */
    weft_metric_add(m, ctr, 5);
    assert_true(weft_metric_value(m, ctr) == 400005.0);
    char *t = render_all();
    assert_line(t, "tm_worker_ops_total 400005");
    assert_line(t, "tm_worker_level 2");
    free(t);
}

static void *scrape_main(void *p)
{
    /* concurrent scrapes while workers update: must be race-free (TSan/ASan) */
    int *stop = p;
    while (!__atomic_load_n(stop, __ATOMIC_ACQUIRE)) {
        char *t = render_all();
        free(t);
    }
    return NULL;
}

static void test_scrape_during_updates(void **state)
{
    (void)state;
    weft_metrics *m = weft_metrics_global();
    weft_metric ctr, g;
    assert_int_equal(weft_metrics_counter(m, "tm_busy_ops_total", "Ops.", NULL, &ctr), 0);
    assert_int_equal(weft_metrics_gauge(m, "tm_busy_level", "Level.", NULL, &g), 0);
    int stop = 0;
    pthread_t scraper;
    assert_int_equal(pthread_create(&scraper, NULL, scrape_main, &stop), 0);
    pthread_t th[4];
    worker_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (worker_arg){m, ctr, g, 4 + i};
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    pthread_join(scraper, NULL);
    assert_true(weft_metric_value(m, ctr) == 400000.0);
    assert_true(weft_metric_value(m, g) == 5 + 6 + 7 + 8 - 8);
}

/* ------------------------------------------------------------------ */
/* labels, HELP/TYPE grouping */

static void test_labels_and_help_type_once(void **state)
{
    (void)state;
    weft_metrics *m = weft_metrics_global();
    weft_metric ok, other, err;
    assert_int_equal(weft_metrics_counter(m, "tm_responses_total", "Responses by class.",
                                          "code=\"2xx\"", &ok), 0);
    /* another name registered in between */
    assert_int_equal(weft_metrics_counter(m, "tm_between_total", "Between.", NULL, &other), 0);
    assert_int_equal(weft_metrics_counter(m, "tm_responses_total", "Responses by class.",
                                          "code=\"5xx\"", &err), 0);
    assert_int_not_equal(ok, err);
    weft_metric_add(m, ok, 3);
    weft_metric_inc(m, err);
    char *t = render_all();
    assert_line(t, "tm_responses_total{code=\"2xx\"} 3");
    assert_line(t, "tm_responses_total{code=\"5xx\"} 1");
    assert_int_equal(count_substr(t, "# HELP tm_responses_total "), 1);
    assert_int_equal(count_substr(t, "# TYPE tm_responses_total "), 1);
    /* both label sets follow their single HELP/TYPE block, in registration order */
    long help = line_pos(t, "# HELP tm_responses_total Responses by class.");
    long type = line_pos(t, "# TYPE tm_responses_total counter");
    long a = line_pos(t, "tm_responses_total{code=\"2xx\"} 3");
    long b = line_pos(t, "tm_responses_total{code=\"5xx\"} 1");
    long between = line_pos(t, "# HELP tm_between_total Between.");
    assert_true(help >= 0 && type > help && a > type && b > a);
    assert_true(between > b);
    /* no other lines between the block's lines */
    const char *after_type = t + type + strlen("# TYPE tm_responses_total counter\n");
    assert_ptr_equal(after_type, t + a);
    assert_ptr_equal(t + a + strlen("tm_responses_total{code=\"2xx\"} 3\n"), t + b);
    free(t);
}

static void test_duplicate_registration_same_id(void **state)
{
    (void)state;
    weft_metrics *m = weft_metrics_global();
    weft_metric a, b, c, d, e;
    assert_int_equal(weft_metrics_counter(m, "tm_dup_total", "Dup.", NULL, &a), 0);
    assert_int_equal(weft_metrics_counter(m, "tm_dup_total", "Dup.", NULL, &b), 0);
    assert_int_equal(a, b);
    /* NULL and "" are the same (empty) label set */
    assert_int_equal(weft_metrics_counter(m, "tm_dup_total", "Dup.", "", &c), 0);
    assert_int_equal(a, c);
    assert_int_equal(weft_metrics_counter(m, "tm_dup_total", "Dup.", "k=\"v\"", &d), 0);
    assert_int_not_equal(a, d);
    assert_int_equal(weft_metrics_counter(m, "tm_dup_total", "Dup.", "k=\"v\"", &e), 0);
    assert_int_equal(d, e);
    /* id may be NULL */
    assert_int_equal(weft_metrics_counter(m, "tm_dup_total", "Dup.", NULL, NULL), 0);
    weft_metric_inc(m, a);
    weft_metric_inc(m, b);
    assert_true(weft_metric_value(m, a) == 2.0);
    assert_true(weft_metric_value(m, d) == 0.0);
    char *t = render_all();
    assert_int_equal(count_substr(t, "\ntm_dup_total "), 1);
    assert_line(t, "tm_dup_total 2");
    assert_line(t, "tm_dup_total{k=\"v\"} 0");
    free(t);
    /* histograms too */
    static const double bounds[] = {1, 2};
    weft_metric h1, h2;
    assert_int_equal(weft_metrics_histogram(m, "tm_dup_seconds", "Dup h.", NULL, bounds, 2, &h1), 0);
    assert_int_equal(weft_metrics_histogram(m, "tm_dup_seconds", "Dup h.", NULL, bounds, 2, &h2), 0);
    assert_int_equal(h1, h2);
}

static void test_type_clash_rejected(void **state)
{
    (void)state;
    weft_metrics *m = weft_metrics_global();
    weft_metric id, id2;
    static const double bounds[] = {1};
    assert_int_equal(weft_metrics_counter(m, "tm_clash_total", "Clash.", NULL, &id), 0);
    id2 = 12345;
    assert_int_equal(weft_metrics_gauge(m, "tm_clash_total", "Clash.", NULL, &id2), WEFT_EINVAL);
    assert_int_equal(id2, 12345); /* untouched */
    assert_int_equal(weft_metrics_gauge(m, "tm_clash_total", "Clash.", "a=\"b\"", &id2), WEFT_EINVAL);
    assert_int_equal(weft_metrics_histogram(m, "tm_clash_total", "Clash.", NULL, bounds, 1, &id2),
                     WEFT_EINVAL);
    assert_int_equal(weft_metrics_gauge_fn(m, "tm_clash_total", "Clash.", NULL, NULL, NULL),
                     WEFT_EINVAL);
    char *t = render_all();
    assert_line(t, "# TYPE tm_clash_total counter");
    assert_int_equal(count_substr(t, "# TYPE tm_clash_total "), 1);
    free(t);
}

static void test_invalid_names_rejected(void **state)
{
    (void)state;
    weft_metrics *m = weft_metrics_global();
    weft_metric id;
    static const char *const bad[] = {"", "1abc", "has space", "has-dash", "dot.name",
                                      "caf\xc3\xa9", "q\"uote", "brace{", "new\nline"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(weft_metrics_counter(m, bad[i], "Bad.", NULL, &id), WEFT_EINVAL);
        assert_int_equal(weft_metrics_gauge(m, bad[i], "Bad.", NULL, &id), WEFT_EINVAL);
    }
    assert_int_equal(weft_metrics_counter(m, NULL, "Bad.", NULL, &id), WEFT_EINVAL);
    /* help is required */
    assert_int_equal(weft_metrics_counter(m, "tm_nohelp_total", NULL, NULL, &id), WEFT_EINVAL);
    /* digits after the first character, underscores, upper case are fine */
    assert_int_equal(weft_metrics_counter(m, "_tm_ok9_total", "Ok.", NULL, &id), 0);
    assert_int_equal(weft_metrics_gauge(m, "tm_Ok_upper", "Ok.", NULL, &id), 0);
}

static void test_histogram_bounds_validated(void **state)
{
    (void)state;
    weft_metrics *m = weft_metrics_global();
    weft_metric id;
    static const double eq[] = {1, 1}, down[] = {2, 1}, ok[] = {0.1, 0.2};
    double many[65];
    for (int i = 0; i < 65; i++)
        many[i] = i + 1;
    assert_int_equal(weft_metrics_histogram(m, "tm_hb1_seconds", "B.", NULL, eq, 2, &id), WEFT_EINVAL);
    assert_int_equal(weft_metrics_histogram(m, "tm_hb2_seconds", "B.", NULL, down, 2, &id), WEFT_EINVAL);
    assert_int_equal(weft_metrics_histogram(m, "tm_hb3_seconds", "B.", NULL, ok, 0, &id), WEFT_EINVAL);
    assert_int_equal(weft_metrics_histogram(m, "tm_hb4_seconds", "B.", NULL, many, 65, &id), WEFT_EINVAL);
    assert_int_equal(weft_metrics_histogram(m, "tm_hb5_seconds", "B.", NULL, many, 64, &id), 0);
    /* rejected ones were not registered */
    char *t = render_all();
    assert_null(strstr(t, "tm_hb1_seconds"));
    assert_null(strstr(t, "tm_hb2_seconds"));
    assert_null(strstr(t, "tm_hb4_seconds"));
    assert_line(t, "tm_hb5_seconds_bucket{le=\"64\"} 0");
    free(t);
}

/* ------------------------------------------------------------------ */
/* histograms */

static void test_histogram_render_cumulative(void **state)
{
    (void)state;
    weft_metrics *m = weft_metrics_global();
    static const double bounds[] = {0.0005, 0.1, 1, 2.5};
    weft_metric id;
    assert_int_equal(weft_metrics_histogram(m, "tm_latency_seconds", "Latency.", NULL, bounds, 4, &id), 0);
    static const double obs[] = {0.0001, 0.0005, 0.05, 0.5, 2, 3, 100};
    double sum = 0;
    for (size_t i = 0; i < sizeof obs / sizeof obs[0]; i++) {
        weft_metric_observe(m, id, obs[i]);
        sum += obs[i];
    }
    assert_true(weft_metric_value(m, id) == 7.0); /* value of a histogram = count */
    char *t = render_all();
    assert_line(t, "# HELP tm_latency_seconds Latency.");
    assert_line(t, "# TYPE tm_latency_seconds histogram");
    /* a value equal to a bound falls in that bound's bucket (le = "<=") */
    assert_line(t, "tm_latency_seconds_bucket{le=\"0.0005\"} 2");
    assert_line(t, "tm_latency_seconds_bucket{le=\"0.1\"} 3");
    assert_line(t, "tm_latency_seconds_bucket{le=\"1\"} 4");
    assert_line(t, "tm_latency_seconds_bucket{le=\"2.5\"} 5");
    assert_line(t, "tm_latency_seconds_bucket{le=\"+Inf\"} 7");
    assert_line(t, "tm_latency_seconds_count 7");
    char sbuf[64], line[128];
    shortest(sbuf, sizeof sbuf, sum);
    snprintf(line, sizeof line, "tm_latency_seconds_sum %s", sbuf);
    assert_line(t, line);
    /* order: buckets ascending, then _sum, then _count */
    long b0 = line_pos(t, "tm_latency_seconds_bucket{le=\"0.0005\"} 2");
    long binf = line_pos(t, "tm_latency_seconds_bucket{le=\"+Inf\"} 7");
    long ps = line_pos(t, line);
    long pc = line_pos(t, "tm_latency_seconds_count 7");
    assert_true(b0 < binf && binf < ps && ps < pc);
    free(t);
}

static void test_histogram_with_labels(void **state)
{
    (void)state;
    weft_metrics *m = weft_metrics_global();
    static const double bounds[] = {0.25, 0.5};
    weft_metric get, post;
    assert_int_equal(weft_metrics_histogram(m, "tm_req_seconds", "Req.", "method=\"GET\"", bounds, 2, &get), 0);
    assert_int_equal(weft_metrics_histogram(m, "tm_req_seconds", "Req.", "method=\"POST\"", bounds, 2, &post), 0);
    weft_metric_observe(m, get, 0.25);
    weft_metric_observe(m, get, 0.75);
    weft_metric_observe(m, post, 0.5);
    char *t = render_all();
    assert_int_equal(count_substr(t, "# TYPE tm_req_seconds histogram"), 1);
    assert_line(t, "tm_req_seconds_bucket{method=\"GET\",le=\"0.25\"} 1");
    assert_line(t, "tm_req_seconds_bucket{method=\"GET\",le=\"0.5\"} 1");
    assert_line(t, "tm_req_seconds_bucket{method=\"GET\",le=\"+Inf\"} 2");
    assert_line(t, "tm_req_seconds_sum{method=\"GET\"} 1");
    assert_line(t, "tm_req_seconds_count{method=\"GET\"} 2");
    assert_line(t, "tm_req_seconds_bucket{method=\"POST\",le=\"0.25\"} 0");
    assert_line(t, "tm_req_seconds_bucket{method=\"POST\",le=\"0.5\"} 1");
    assert_line(t, "tm_req_seconds_bucket{method=\"POST\",le=\"+Inf\"} 1");
    assert_line(t, "tm_req_seconds_sum{method=\"POST\"} 0.5");
    assert_line(t, "tm_req_seconds_count{method=\"POST\"} 1");
    free(t);
}

static void test_latency_buckets_shortest_le(void **state)
{
    (void)state;
    weft_metrics *m = weft_metrics_global();
    assert_int_equal(weft_latency_nbuckets, 14);
    assert_true(weft_latency_buckets[0] == 0.0005);
    assert_true(weft_latency_buckets[13] == 10.0);
    weft_metric id;
    assert_int_equal(weft_metrics_histogram(m, "tm_std_seconds", "Std.", NULL, weft_latency_buckets,
                                            weft_latency_nbuckets, &id), 0);
    weft_metric_observe(m, id, 0.003);
    char *t = render_all();
    static const char *const les[] = {"0.0005", "0.001", "0.0025", "0.005", "0.01",
                                      "0.025",  "0.05",  "0.1",    "0.25",  "0.5",
                                      "1",      "2.5",   "5",      "10"};
    char line[128];
    for (size_t i = 0; i < 14; i++) {
        snprintf(line, sizeof line, "tm_std_seconds_bucket{le=\"%s\"} %d", les[i], i >= 3 ? 1 : 0);
        assert_line(t, line);
    }
    assert_line(t, "tm_std_seconds_bucket{le=\"+Inf\"} 1");
    assert_line(t, "tm_std_seconds_sum 0.003");
    assert_null(strstr(t, "0.00050000000000000001"));
    assert_null(strstr(t, "0.0050000000000000001"));
    free(t);
}

/* ------------------------------------------------------------------ */
/* gauge_fn, help escaping, process metrics */

static int fn_calls;
static double fn_value(void *arg)
{
    fn_calls++;
    return *(const double *)arg;
}

static void test_gauge_fn_called_at_render(void **state)
{
    (void)state;
    weft_metrics *m = weft_metrics_global();
    static double v = 42.5;
    static double tenth = 0.1;
    assert_int_equal(weft_metrics_gauge_fn(m, "tm_computed", "Computed.", NULL, fn_value, &v), 0);
    assert_int_equal(weft_metrics_gauge_fn(m, "tm_computed", "Computed.", "part=\"b\"", fn_value, &tenth), 0);
    fn_calls = 0;
    char *t = render_all();
    assert_int_equal(fn_calls, 2);
    assert_line(t, "# TYPE tm_computed gauge");
    assert_line(t, "tm_computed 42.5");
    assert_line(t, "tm_computed{part=\"b\"} 0.1");
    free(t);
    v = -3;
    t = render_all();
    assert_int_equal(fn_calls, 4);
    assert_line(t, "tm_computed -3");
    free(t);
    v = 1;
}

static void test_help_escaping(void **state)
{
    (void)state;
    weft_metrics *m = weft_metrics_global();
    weft_metric id;
    assert_int_equal(weft_metrics_counter(m, "tm_escaped_total", "Line one\nline two with C:\\path.",
                                          NULL, &id), 0);
    char *t = render_all();
    assert_line(t, "# HELP tm_escaped_total Line one\\nline two with C:\\\\path.");
    assert_line(t, "# TYPE tm_escaped_total counter");
    free(t);
}

static void test_process_metrics_present(void **state)
{
    (void)state;
    char *t = render_all();
    assert_non_null(t);
    static const char *const names[] = {"process_cpu_seconds_total", "process_resident_memory_bytes",
                                        "process_virtual_memory_bytes", "process_open_fds",
                                        "process_max_fds", "process_start_time_seconds"};
    static const char *const types[] = {"counter", "gauge", "gauge", "gauge", "gauge", "gauge"};
    char want[256];
    for (int i = 0; i < 6; i++) {
        snprintf(want, sizeof want, "# TYPE %s %s", names[i], types[i]);
        assert_line(t, want);
        snprintf(want, sizeof want, "# HELP %s ", names[i]);
        assert_int_equal(count_substr(t, want), 1);
        snprintf(want, sizeof want, "%s ", names[i]);
        const char *l = find_line_prefix(t, want);
        assert_non_null(l);
        double v = strtod(l + strlen(want), NULL);
        if (i == 0)
            assert_true(v >= 0);
        else if (i == 5) {
            struct timeval tv;
            gettimeofday(&tv, NULL);
            assert_true(v > (double)tv.tv_sec - 3600 && v <= (double)tv.tv_sec + 1);
        } else
            assert_true(v > 0);
    }
    free(t);
}

static void test_render_appends_to_existing(void **state)
{
    (void)state;
    weft_buf b;
    weft_buf_init(&b, 16u << 20);
    assert_int_equal(weft_buf_append(&b, "PREFIX\n", 7), 0);
    assert_int_equal(weft_metrics_render(weft_metrics_global(), &b), 0);
    assert_memory_equal(weft_buf_rptr(&b), "PREFIX\n", 7);
    assert_true(weft_buf_used(&b) > 7);
    assert_int_equal(weft_buf_rptr(&b)[weft_buf_used(&b) - 1], '\n');
    weft_buf_release(&b);
    /* a too-small output buffer reports the error */
    weft_buf_init(&b, 64);
    assert_int_equal(weft_metrics_render(weft_metrics_global(), &b), WEFT_ETOOBIG);
    weft_buf_release(&b);
}

static void test_promtool_check(void **state)
{
    (void)state;
    if (access("/usr/bin/promtool", X_OK) != 0)
        skip();
    char *t = render_all();
    assert_non_null(t);
    char path[] = "/tmp/weft_metrics_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t n = strlen(t);
    assert_int_equal(write(fd, t, n), (ssize_t)n);
    close(fd);
    free(t);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "/usr/bin/promtool check metrics < %s 2>&1", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char out[4096];
    size_t got = fread(out, 1, sizeof out - 1, p);
    out[got] = '\0';
    int st = pclose(p);
    unlink(path);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        fail_msg("promtool check metrics failed (status %d): %s", st, out);
}

/* ------------------------------------------------------------------ */
/* edge cases (registered after the promtool check on purpose) */

static void test_label_syntax_rejected(void **state)
{
    (void)state;
    /* metrics.h: "WEFT_EINVAL for a bad name/label syntax" */
    weft_metrics *m = weft_metrics_global();
    weft_metric id;
    static const char *const bad[] = {
        "code=\"2xx",     /* unterminated value */
        "code=2xx",       /* unquoted value */
        "1code=\"x\"",    /* label name starts with a digit */
        "co de=\"x\"",    /* space in label name */
        "code=\"a\"b\"",  /* junk after the value */
        "le=\"1\"}",      /* stray brace */
    };
    int accepted = 0;
    char names[64];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(names, sizeof names, "tm_badlabel%zu_total", i);
        if (weft_metrics_counter(m, names, "Bad label.", bad[i], &id) != WEFT_EINVAL)
            accepted++;
    }
    assert_int_equal(accepted, 0);
}

static void test_long_labels_render_whole_line(void **state)
{
    (void)state;
    weft_metrics *m = weft_metrics_global();
    char labels[1200];
    memcpy(labels, "path=\"", 6);
    memset(labels + 6, 'x', 1100);
    memcpy(labels + 1106, "\"", 2);
    weft_metric id;
    assert_int_equal(weft_metrics_counter(m, "tm_long_total", "Long.", labels, &id), 0);
    weft_metric_inc(m, id);
    char want[1300];
    snprintf(want, sizeof want, "tm_long_total{%s} 1", labels);
    char *t = render_all();
    bool ok = has_line(t, want);
    free(t);
    assert_true(ok);
}

static void test_histogram_explicit_inf_bound(void **state)
{
    (void)state;
    /* an explicit +Inf last bound must not produce two le="+Inf" series */
    weft_metrics *m = weft_metrics_global();
    static const double bounds[] = {1, INFINITY};
    weft_metric id;
    int rc = weft_metrics_histogram(m, "tm_infb_seconds", "Inf.", NULL, bounds, 2, &id);
    if (rc == WEFT_EINVAL)
        return; /* rejecting it is fine too */
    assert_int_equal(rc, 0);
    weft_metric_observe(m, id, 5);
    char *t = render_all();
    int n = count_substr(t, "tm_infb_seconds_bucket{le=\"+Inf\"}");
    free(t);
    assert_int_equal(n, 1);
}

static double huge_value(void *arg)
{
    (void)arg;
    return 1e300;
}

static int child_render_huge(void)
{
    weft_metrics *m = weft_metrics_global();
    if (weft_metrics_gauge_fn(m, "tm_huge", "Huge.", NULL, huge_value, NULL) != 0)
        return 2;
    char *t = render_all();
    int rc = t && has_line(t, "tm_huge 1e+300") ? 0 : 1;
    free(t);
    return rc;
}

static void test_render_huge_gauge_value(void **state)
{
    (void)state;
    /* in a child: with -fsanitize=float-cast-overflow (clang's UBSan) a
     * (int64_t) cast of 1e300 aborts the process */
    assert_int_equal(run_in_child(child_render_huge), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_inc_add_value),
        cmocka_unit_test(test_gauge_add_negative_and_set),
        cmocka_unit_test(test_per_worker_merge),
        cmocka_unit_test(test_scrape_during_updates),
        cmocka_unit_test(test_labels_and_help_type_once),
        cmocka_unit_test(test_duplicate_registration_same_id),
        cmocka_unit_test(test_type_clash_rejected),
        cmocka_unit_test(test_invalid_names_rejected),
        cmocka_unit_test(test_histogram_bounds_validated),
        cmocka_unit_test(test_histogram_render_cumulative),
        cmocka_unit_test(test_histogram_with_labels),
        cmocka_unit_test(test_latency_buckets_shortest_le),
        cmocka_unit_test(test_gauge_fn_called_at_render),
        cmocka_unit_test(test_help_escaping),
        cmocka_unit_test(test_process_metrics_present),
        cmocka_unit_test(test_render_appends_to_existing),
        cmocka_unit_test(test_promtool_check),
        cmocka_unit_test(test_label_syntax_rejected),
        cmocka_unit_test(test_long_labels_render_whole_line),
        cmocka_unit_test(test_histogram_explicit_inf_bound),
        cmocka_unit_test(test_render_huge_gauge_value),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
