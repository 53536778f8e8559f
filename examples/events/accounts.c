/*
 * accounts — an example of event sourcing and CQRS with libweft.
 *
 * Write side: an account is an event stream `account-ID` in weft log.
 * `accounts deposit ID AMOUNT COUNT` runs COUNT deposit commands, 16 at a
 * time, through weft_es_execute: load the account by replaying its stream,
 * decide (a deposit appends `Deposited`; a withdrawal that would overdraw
 * appends nothing), append with the expected version, retry on conflict.
 * Several of these processes on one account race each other; optimistic
 * concurrency keeps every deposit exactly once.
 *
 * Read side: `accounts project GROUP SECONDS` consumes the Kafka topic
 * `account` (every stream's events, keyed by stream id) through
 * weft/events.h with a consumer group and prints the balances it built.
 * The same program works against a Kafka cluster: only --brokers changes.
 *
 *   accounts --log http://127.0.0.1:9093 deposit 42 10 100
 *   accounts --brokers 127.0.0.1:9092 project balances 5
 */
#include <weft/events.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- write side ---- */

typedef struct account {
    long long balance;
    long long events;
} account;

typedef struct job {
    weft_es *es;
    const char *stream;
    long long amount;
    int left, running, ok, failed, attempts;
    weft_loop *loop;
} job;

static void reset(void *state) { memset(state, 0, sizeof(account)); }

static void apply(void *state, const weft_es_event *ev)
{
    account *a = state;
    json_int_t amt = json_integer_value(json_object_get(ev->data, "amount"));
    if (ev->type && !strcmp(ev->type, "Deposited"))
        a->balance += amt;
    else if (ev->type && !strcmp(ev->type, "Withdrawn"))
        a->balance -= amt;
    a->events++;
}

static json_t *decide(void *state, int64_t version, void *ud)
{
    (void)version;
    account *a = state;
    job *j = ((void **)ud)[0];
    if (j->amount < 0 && a->balance + j->amount < 0)
        return NULL; /* no overdraft: nothing to append */
    return json_pack("[{s:s, s:{s:I}}]", "type", j->amount >= 0 ? "Deposited" : "Withdrawn", "data",
                     "amount", (json_int_t)(j->amount >= 0 ? j->amount : -j->amount));
}

static void start_one(job *j);

static void done(int err, const char *reason, int64_t version, int attempts, void *ud)
{
    void **slot = ud;
    job *j = slot[0];
    free(slot[1]);
    free(slot);
    (void)version;
    j->running--;
    j->attempts += attempts;
    if (err) {
        j->failed++;
        fprintf(stderr, "command failed: %s\n", reason ? reason : weft_strerror(err));
    } else {
        j->ok++;
    }
    if (j->left > 0)
        start_one(j);
    else if (j->running == 0)
        weft_loop_stop(j->loop);
}

static void start_one(job *j)
{
    void **slot = malloc(2 * sizeof(void *));
    account *state = calloc(1, sizeof *state);
    if (!slot || !state)
        abort();
    slot[0] = j;
    slot[1] = state;
    weft_es_command c = {.stream = j->stream, .state = state, .reset = reset, .apply = apply,
                         .decide = decide, .done = done, .ud = slot, .max_attempts = 50};
    j->left--;
    j->running++;
    if (weft_es_execute(j->es, &c) < 0)
        abort(); /* the state lives as long as the command: freed in done */
}

static int deposit(const char *log_url, const char *id, long long amount, int count)
{
    weft_loop *loop;
    if (weft_loop_new(&loop) < 0)
        return 1;
    char stream[256];
    snprintf(stream, sizeof stream, "account-%s", id);
    job j = {.stream = stream, .amount = amount, .left = count, .loop = loop};
    if (!(j.es = weft_es_new(loop, log_url))) {
        fprintf(stderr, "accounts: bad --log URL (http://HOST:PORT)\n");
        return 2;
    }
    for (int i = 0; i < 16 && j.left > 0; i++)
        start_one(&j);
    weft_loop_run(loop);
    weft_es_free(j.es);
    weft_loop_free(loop);
    printf("{\"ok\": %d, \"failed\": %d, \"attempts\": %d}\n", j.ok, j.failed, j.attempts);
    return j.failed ? 1 : 0;
}

/* ---- read side ---- */

typedef struct balance {
    char id[128];
    long long amount;
} balance;

static balance balances[1024];
static size_t nbalances;
static long long nevents;

static void project_one(const weft_event *ev, void *ud)
{
    (void)ud;
    json_t *d = json_loadb(ev->value.p, ev->value.n, 0, NULL);
    const char *type = NULL;
    for (size_t i = 0; i < ev->nheaders; i++)
        if (!strcmp(ev->headers[i].key, "weft.type"))
            type = ev->headers[i].value.p ? strndup(ev->headers[i].value.p, ev->headers[i].value.n)
                                          : NULL;
    long long amt = json_integer_value(json_object_get(d, "amount"));
    json_decref(d);
    if (!type)
        return;
    if (!strcmp(type, "Withdrawn"))
        amt = -amt;
    free((char *)type);
    size_t k = 0;
    while (k < nbalances && (strlen(balances[k].id) != ev->key.n ||
                             memcmp(balances[k].id, ev->key.p, ev->key.n) != 0))
        k++;
    if (k == nbalances && nbalances < 1024)
        snprintf(balances[nbalances++].id, sizeof balances[0].id, "%.*s", (int)ev->key.n, ev->key.p);
    if (k < 1024)
        balances[k].amount += amt;
    nevents++;
}

static int project(const char *brokers, const char *group, int seconds)
{
    weft_consumer_opts o;
    weft_consumer_opts_default(&o);
    o.brokers = brokers;
    o.group_id = group;
    o.topics = (const char *const[]){"account", NULL};
    char err[512];
    weft_consumer *c = weft_consumer_new(&o, err, sizeof err);
    if (!c) {
        fprintf(stderr, "accounts: %s\n", err);
        return 1;
    }
    uint64_t until = weft_now_us() + (uint64_t)seconds * 1000000;
    while (weft_now_us() < until)
        weft_consumer_poll(c, 200, project_one, NULL);
    weft_consumer_commit(c);
    weft_consumer_free(c);
    printf("{\"events\": %lld, \"balances\": {", nevents);
    for (size_t i = 0; i < nbalances; i++)
        printf("%s\"%s\": %lld", i ? ", " : "", balances[i].id, balances[i].amount);
    printf("}}\n");
    return 0;
}

int main(int argc, char **argv)
{
    const char *log_url = "http://127.0.0.1:9093", *brokers = "127.0.0.1:9092";
    int i = 1;
    for (; i + 1 < argc && !strncmp(argv[i], "--", 2); i += 2) {
        if (!strcmp(argv[i], "--log"))
            log_url = argv[i + 1];
        else if (!strcmp(argv[i], "--brokers"))
            brokers = argv[i + 1];
        else
            break;
    }
    if (i + 4 == argc && !strcmp(argv[i], "deposit"))
        return deposit(log_url, argv[i + 1], atoll(argv[i + 2]), atoi(argv[i + 3]));
    if (i + 3 == argc && !strcmp(argv[i], "project"))
        return project(brokers, argv[i + 1], atoi(argv[i + 2]));
    fprintf(stderr, "usage: accounts [--log URL] deposit ID AMOUNT COUNT\n"
                    "       accounts [--brokers HOST:PORT] project GROUP SECONDS\n");
    return 2;
}
