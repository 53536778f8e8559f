/*
 * test_registry_eureka.c — the Eureka translation layer without I/O: the
 * XML reader (documents real clients send, and the malformed ones it must
 * refuse with a message), registration translation (mapping, defaults,
 * case handling, the OUT_OF_SERVICE override rule), and rendering in JSON
 * and XML, checked by reading the XML back with the reader: one document
 * model, two encodings.
 *
 * Expectations come from eureka.h and Eureka's REST API, not from what
 * the code happens to print.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "registry/eureka.h"
#include "registry/store.h"

/* ------------------------------------------------------------------ helpers */

static json_t *xml(const char *doc)
{
    json_t *out = NULL;
    char why[200] = "";
    int rc = reg_eureka_xml_parse(doc, strlen(doc), &out, why, sizeof why);
    if (rc != 0)
        fail_msg("parse failed: %s (%s)", why, doc);
    return out;
}

static void xml_err(const char *doc, size_t n, const char *msg)
{
    json_t *out = (json_t *)1;
    char why[200] = "";
    assert_int_equal(reg_eureka_xml_parse(doc, n, &out, why, sizeof why), WEFT_EINVAL);
    assert_null(out);
    assert_string_equal(why, msg);
}

static void assert_json(json_t *got, const char *want_text)
{
    json_t *want = json_loads(want_text, 0, NULL);
    assert_non_null(want);
    if (!json_equal(got, want)) {
        char *g = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS);
        fail_msg("got %s\nwant %s", g, want_text);
    }
    json_decref(want);
}

/* An InstanceInfo body with the fields real clients send. */
static json_t *info(const char *app, const char *id, const char *host, const char *ip, int port)
{
    json_t *i = json_pack("{s:s, s:s, s:s, s:s, s:{s:i, s:s}, s:{s:s}}", "instanceId", id,
                          "hostName", host, "app", app, "status", "UP", "port", "$", port,
                          "@enabled", "true", "metadata", "@class",
                          "java.util.Collections$EmptyMap");
    if (ip)
        json_object_set_new(i, "ipAddr", json_string(ip));
    return json_pack("{s:o}", "instance", i);
}

/* Translate and store, as api.c does. Consumes body. */
static void put(reg_store *s, const char *app, json_t *body)
{
    json_t *native;
    char svc[256], id[256], why[200] = "";
    int rc = reg_eureka_translate(s, app, body, &native, svc, sizeof svc, id, sizeof id, why,
                                  sizeof why);
    json_decref(body);
    if (rc != 0)
        fail_msg("translate: %s", why);
    reg_input in;
    assert_int_equal(reg_input_from_json(native, &in, why, sizeof why), 0);
    assert_true(reg_put(s, svc, id, &in, 0) >= 0);
    json_decref(native);
}

static void translate_err(json_t *body, const char *msg)
{
    reg_store *s = reg_store_new(NULL);
    json_t *native = (json_t *)1;
    char svc[256], id[256], why[200] = "";
    assert_int_equal(reg_eureka_translate(s, "APP", body, &native, svc, sizeof svc, id,
                                          sizeof id, why, sizeof why),
                     WEFT_EINVAL);
    assert_null(native);
    assert_string_equal(why, msg);
    json_decref(body);
    reg_store_free(s);
}

static json_t *render(const reg_store *s, int view, const char *name, const char *id, bool json)
{
    char *out;
    size_t len;
    assert_int_equal(reg_eureka_render(s, view, name, id, json, 0, &out, &len), 0);
    assert_int_equal(strlen(out), len);
    json_t *doc = json ? json_loads(out, 0, NULL) : xml(out);
    assert_non_null(doc);
    free(out);
    return doc;
}

/* ------------------------------------------------------------------ XML reader */

static void test_xml_shapes(void **state)
{
    (void)state;
    json_t *d = xml("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- c -->\n"
                    "<instance>\n  <hostName>h</hostName>\n  <port enabled=\"true\">80</port>\n"
                    "  <metadata class=\"java.util.Collections$EmptyMap\"/>\n"
                    "  <empty></empty><blank>  </blank>\n</instance>\n");
    assert_json(d, "{\"instance\": {\"hostName\": \"h\", \"port\": {\"@enabled\": \"true\", "
                   "\"$\": \"80\"}, \"metadata\": {\"@class\": "
                   "\"java.util.Collections$EmptyMap\"}, \"empty\": \"\", \"blank\": \"  \"}}");
    json_decref(d);
    /* repeated children become an array, in order */
    d = xml("<applications><application><name>A</name></application>"
            "<application><name>B</name></application>"
            "<application><name>C</name></application></applications>");
    assert_json(d, "{\"applications\": {\"application\": [{\"name\": \"A\"}, {\"name\": \"B\"}, "
                   "{\"name\": \"C\"}]}}");
    json_decref(d);
}

static void test_xml_text(void **state)
{
    (void)state;
    json_t *d = xml("\xEF\xBB\xBF<v a='x &quot;y&quot; &#9;'>&lt;&gt;&amp;&apos;&quot;"
                    "&#65;&#x42;&#xe9;&#x1F600;<![CDATA[<&>]]><!-- no --><?pi x?>z</v>");
    assert_json(d, "{\"v\": {\"@a\": \"x \\\"y\\\" \\t\", "
                   "\"$\": \"<>&'\\\"AB\\u00e9\\ud83d\\ude00<&>z\"}}");
    json_decref(d);
}

static void test_xml_errors(void **state)
{
    (void)state;
#define E(doc, msg) xml_err(doc, sizeof doc - 1, msg)
    E("", "invalid XML: expected an element");
    E("hello", "invalid XML: expected an element");
    E("<a>", "invalid XML: unterminated element");
    E("<a", "invalid XML: unterminated start tag");
    E("<a></b>", "invalid XML: mismatched end tag");
    E("<a></a><b/>", "invalid XML: content after the root element");
    E("<a/>trailing", "invalid XML: content after the root element");
    E("<!DOCTYPE a><a/>", "invalid XML: DTDs are not supported");
    E("<a>&nbsp;</a>", "invalid XML: unknown entity");
    E("<a>&#xD800;</a>", "invalid XML: bad character reference");
    E("<a>&#x110000;</a>", "invalid XML: bad character reference");
    E("<a>&#;</a>", "invalid XML: bad character reference");
    E("<a>&#12</a>", "invalid XML: bad character reference");
    E("<a>&#x12345678;</a>", "invalid XML: bad character reference");
    E("<a x=1/>", "invalid XML: expected a quoted attribute value");
    E("<a x/>", "invalid XML: expected '=' after an attribute name");
    E("<a x='<'/>", "invalid XML: '<' in an attribute value");
    E("<a x='1/>", "invalid XML: unterminated attribute value");
    E("<a x='1' x='2'/>", "invalid XML: duplicate attribute");
    E("<1a/>", "invalid XML: expected a name");
    E("<a><!-- x</a>", "invalid XML: unterminated comment");
    E("<a><![CDATA[x</a>", "invalid XML: unterminated CDATA section");
    E("<?xml", "invalid XML: unterminated processing instruction");
    E("<a>\xff</a>", "invalid XML: text is not UTF-8");
    E("<a x='\xc3'/>", "invalid XML: attribute value is not UTF-8");
    E("<a>\0</a>", "invalid XML: NUL byte");
#undef E
    char deep[400] = "";
    for (int i = 0; i < 40; i++)
        strcat(deep, "<a>");
    xml_err(deep, strlen(deep), "invalid XML: nested too deeply");
    char longname[300] = "<";
    memset(longname + 1, 'n', 200);
    strcat(longname, "/>");
    xml_err(longname, strlen(longname), "invalid XML: name too long");
}

/* ------------------------------------------------------------------ translation */

static void test_translate_mapping(void **state)
{
    (void)state;
    reg_store *s = reg_store_new(NULL);
    json_t *b = info("MYAPP", "h1:myapp:8080", "h1.example", "10.0.0.7", 8080);
    json_t *i = json_object_get(b, "instance");
    json_object_set_new(i, "securePort", json_pack("{s:s, s:s}", "$", "8443", "@enabled", "true"));
    json_object_set_new(i, "leaseInfo", json_pack("{s:i}", "durationInSecs", 20));
    json_object_set_new(i, "metadata", json_pack("{s:s, s:i}", "zone", "z1", "n", 5));
    json_object_set_new(i, "vipAddress", json_string("myapp"));
    json_object_set_new(i, "secureVipAddress", json_string("secure.myapp"));
    json_object_set_new(i, "homePageUrl", json_string("http://h1.example:8080/"));
    json_object_set_new(i, "statusPageUrl", json_string("http://h1.example:8080/info"));
    json_object_set_new(i, "healthCheckUrl", json_string("http://h1.example:8080/health"));
    json_object_set_new(i, "someFutureField", json_string("ignored"));
    json_t *native;
    char svc[256], id[256], why[200] = "";
    assert_int_equal(reg_eureka_translate(s, "myapp", b, &native, svc, sizeof svc, id, sizeof id,
                                          why, sizeof why),
                     0);
    assert_string_equal(svc, "myapp"); /* new service: lower case */
    assert_string_equal(id, "h1:myapp:8080");
    /* implied values (vipAddress = the service, the default home page) are not kept */
    assert_json(native,
                "{\"address\": \"10.0.0.7\", \"port\": 8080, \"status\": \"UP\", \"ttl\": 20,"
                " \"meta\": {\"zone\": \"z1\", \"n\": \"5\", \"eureka.hostName\": \"h1.example\","
                " \"eureka.secureVipAddress\": \"secure.myapp\","
                " \"eureka.statusPageUrl\": \"http://h1.example:8080/info\","
                " \"eureka.healthCheckUrl\": \"http://h1.example:8080/health\","
                " \"eureka.securePort\": \"8443\"}}");
    json_decref(native);
    json_decref(b);
    /* minimal: id falls back to hostName, address to hostName, default lease */
    b = json_pack("{s:{s:s, s:s, s:i}}", "instance", "hostName", "10.1.1.1", "app", "x", "port",
                  81);
    assert_int_equal(reg_eureka_translate(s, "X", b, &native, svc, sizeof svc, id, sizeof id, why,
                                          sizeof why),
                     0);
    assert_string_equal(id, "10.1.1.1");
    assert_json(native, "{\"address\": \"10.1.1.1\", \"port\": 81, \"status\": \"UP\","
                        " \"ttl\": 90, \"meta\": {}}");
    json_decref(native);
    json_decref(b);
    reg_store_free(s);
}

static void test_translate_from_xml(void **state)
{
    (void)state;
    reg_store *s = reg_store_new(NULL);
    json_t *b = xml("<instance><instanceId>i1</instanceId><hostName>127.0.0.1</hostName>"
                    "<app>SVC</app><status>UNKNOWN</status><port enabled='false'>99</port>"
                    "<securePort enabled='false'>443</securePort>"
                    "<leaseInfo><durationInSecs>0</durationInSecs></leaseInfo>"
                    "<metadata><k>v</k><e/></metadata></instance>");
    json_t *native;
    char svc[256], id[256], why[200] = "";
    assert_int_equal(reg_eureka_translate(s, "SVC", b, &native, svc, sizeof svc, id, sizeof id,
                                          why, sizeof why),
                     0);
    /* UNKNOWN is STARTING; a duration of 0 is Eureka's default */
    assert_json(native, "{\"address\": \"127.0.0.1\", \"port\": 99, \"status\": \"STARTING\","
                        " \"ttl\": 90, \"meta\": {\"k\": \"v\", \"e\": \"\"}}");
    json_decref(native);
    json_decref(b);
    reg_store_free(s);
}

static void test_translate_errors(void **state)
{
    (void)state;
    const char *shape = "body: expected an InstanceInfo, {\"instance\": {...}}";
    translate_err(json_pack("[]"), shape);
    translate_err(json_pack("{s:s}", "instance", "x"), shape);
    translate_err(json_pack("{s:{s:s, s:i}}", "instance", "app", "APP", "port", 1),
                  "instance.hostName: missing");
    translate_err(json_pack("{s:{s:s, s:s, s:i}}", "instance", "hostName", "", "app", "APP",
                            "port", 1),
                  "instance.hostName: missing");
    translate_err(json_pack("{s:{s:s, s:i}}", "instance", "hostName", "h", "port", 1),
                  "instance.app: missing");
    translate_err(json_pack("{s:{s:s, s:s, s:i}}", "instance", "hostName", "h", "app", "B",
                            "port", 1),
                  "instance.app: B does not match the application in the path");
    translate_err(json_pack("{s:{s:s, s:s}}", "instance", "hostName", "h", "app", "app"),
                  "instance.port: missing");
    const char *portmsg = "instance.port: expected {\"$\": 1-65535, \"@enabled\": \"true\"}";
    translate_err(json_pack("{s:{s:s, s:s, s:{s:i}}}", "instance", "hostName", "h", "app", "APP",
                            "port", "$", 65536),
                  portmsg);
    translate_err(json_pack("{s:{s:s, s:s, s:{s:s}}}", "instance", "hostName", "h", "app", "APP",
                            "port", "$", "8o"),
                  portmsg);
    translate_err(json_pack("{s:{s:s, s:s, s:{}}}", "instance", "hostName", "h", "app", "APP",
                            "port"),
                  portmsg);
    translate_err(json_pack("{s:{s:s, s:s, s:i, s:s}}", "instance", "hostName", "h", "app", "APP",
                            "port", 1, "status", "up"),
                  "instance.status: expected UP, DOWN, STARTING, OUT_OF_SERVICE or UNKNOWN");
    translate_err(json_pack("{s:{s:s, s:s, s:i, s:[]}}", "instance", "hostName", "h", "app",
                            "APP", "port", 1, "ipAddr"),
                  "instance.ipAddr: expected a string");
    translate_err(json_pack("{s:{s:s, s:s, s:i, s:{s:i}}}", "instance", "hostName", "h", "app",
                            "APP", "port", 1, "leaseInfo", "durationInSecs", 86401),
                  "instance.leaseInfo.durationInSecs: expected 1-86400");
    translate_err(json_pack("{s:{s:s, s:s, s:i, s:{s:[]}}}", "instance", "hostName", "h", "app",
                            "APP", "port", 1, "metadata", "k"),
                  "instance.metadata.k: expected a string");
    translate_err(json_pack("{s:{s:s, s:s, s:i, s:s}}", "instance", "hostName", "h", "app", "APP",
                            "port", 1, "instanceId", "a/b"),
                  "instance.instanceId: 1-200 characters of letters, digits, '.', '_', '-', ':'");
}

static void test_translate_case_and_override(void **state)
{
    (void)state;
    reg_store *s = reg_store_new(NULL);
    reg_input in = {.address = "10.0.0.1", .port = 80, .weight = 1, .status = REG_UP};
    assert_true(reg_put(s, "Catalog", "n1", &in, 0) > 0);
    /* joins the service that matches case-insensitively */
    put(s, "CATALOG", info("CATALOG", "e1", "10.0.0.2", NULL, 81));
    assert_non_null(reg_find(s, "Catalog", "e1"));
    assert_string_equal(reg_eureka_locate(s, "catalog", "e1"), "Catalog");
    assert_null(reg_eureka_locate(s, "other", "e1"));
    assert_string_equal(reg_eureka_locate(s, NULL, "n1"), "Catalog");
    /* the operator's OUT_OF_SERVICE outlives an UP re-registration, not a DOWN */
    assert_true(reg_set_status(s, "Catalog", "e1", REG_OUT_OF_SERVICE, 0) > 0);
    put(s, "catalog", info("catalog", "e1", "10.0.0.2", NULL, 81));
    assert_int_equal(reg_find(s, "Catalog", "e1")->status, REG_OUT_OF_SERVICE);
    json_t *b = info("CATALOG", "e1", "10.0.0.2", NULL, 81);
    json_object_set_new(json_object_get(b, "instance"), "status", json_string("DOWN"));
    put(s, "CATALOG", b);
    assert_int_equal(reg_find(s, "Catalog", "e1")->status, REG_DOWN);
    reg_store_free(s);
}

static void test_status_names(void **state)
{
    (void)state;
    assert_int_equal(reg_eureka_status("UP"), REG_UP);
    assert_int_equal(reg_eureka_status("DOWN"), REG_DOWN);
    assert_int_equal(reg_eureka_status("OUT_OF_SERVICE"), REG_OUT_OF_SERVICE);
    assert_int_equal(reg_eureka_status("STARTING"), REG_STARTING);
    assert_int_equal(reg_eureka_status("UNKNOWN"), REG_STARTING);
    assert_int_equal(reg_eureka_status("up"), -1);
    assert_int_equal(reg_eureka_status(NULL), -1);
}

/* ------------------------------------------------------------------ rendering */

static reg_store *sample(void)
{
    reg_store *s = reg_store_new(NULL);
    json_t *b = info("WEB", "w1", "web-host", "10.0.0.1", 8080);
    json_object_set_new(json_object_get(b, "instance"), "metadata",
                        json_pack("{s:s}", "team", "a<b&c"));
    put(s, "WEB", b);
    put(s, "WEB", info("WEB", "w2", "10.0.0.2", NULL, 8081));
    put(s, "API", info("API", "a1", "10.0.0.3", NULL, 9000));
    assert_true(reg_set_status(s, "web", "w2", REG_OUT_OF_SERVICE, 0) > 0);
    /* a native instance: odd meta key, control character, no lease */
    json_t *meta = json_pack("{s:s, s:s}", "a b", "x", "ctl", "x\001y");
    reg_input in = {.address = "::1", .port = 70, .weight = 1, .status = REG_DOWN, .meta = meta};
    assert_true(reg_put(s, "Api", "n1", &in, 0) > 0);
    json_decref(meta);
    return s;
}

/* The sample's /apps in one encoding (*doc owns it), its hash code checked. */
static json_t *sample_apps(const reg_store *s, bool json, json_t **doc)
{
    *doc = render(s, REG_EUREKA_APPS, NULL, NULL, json);
    json_t *apps = json_object_get(*doc, "applications");
    assert_string_equal(json_string_value(json_object_get(apps, "apps__hashcode")),
                        "DOWN_1_OUT_OF_SERVICE_1_UP_2_");
    return apps;
}

static void test_render_apps_json(void **state)
{
    (void)state;
    reg_store *s = sample();
    json_t *d, *apps = sample_apps(s, true, &d);
    json_t *list = json_object_get(apps, "application");
    assert_int_equal(json_array_size(list), 2);
    /* sorted; "API" groups the services "API"'s lower-cased "api" and "Api" */
    json_t *api = json_array_get(list, 0), *web = json_array_get(list, 1);
    assert_string_equal(json_string_value(json_object_get(api, "name")), "API");
    assert_int_equal(json_array_size(json_object_get(api, "instance")), 2);
    json_t *w1 = json_array_get(json_object_get(web, "instance"), 0);
    assert_json(json_object_get(w1, "port"), "{\"$\": 8080, \"@enabled\": \"true\"}");
    assert_string_equal(json_string_value(json_object_get(w1, "hostName")), "web-host");
    assert_string_equal(json_string_value(json_object_get(w1, "ipAddr")), "10.0.0.1");
    assert_string_equal(json_string_value(json_object_get(w1, "app")), "WEB");
    assert_json(json_object_get(w1, "metadata"), "{\"team\": \"a<b&c\"}");
    assert_string_equal(json_string_value(json_object_get(w1, "homePageUrl")),
                        "http://web-host:8080/");
    json_decref(d);
    /* one instance, a native one: IPv6 home page, no lease, its status */
    d = render(s, REG_EUREKA_INSTANCE, "api", "n1", true);
    json_t *n1 = json_object_get(d, "instance");
    assert_string_equal(json_string_value(json_object_get(n1, "homePageUrl")), "http://[::1]:70/");
    assert_string_equal(json_string_value(json_object_get(n1, "status")), "DOWN");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(n1, "leaseInfo"),
                                                        "durationInSecs")),
                     0);
    json_decref(d);
    reg_store_free(s);
}

static void test_render_xml_reads_back(void **state)
{
    (void)state;
    reg_store *s = sample();
    json_t *d, *apps = sample_apps(s, false, &d);
    json_t *web = json_array_get(json_object_get(apps, "application"), 1);
    json_t *w1 = json_array_get(json_object_get(web, "instance"), 0);
    json_t *w2 = json_array_get(json_object_get(web, "instance"), 1);
    /* numbers come back as text; attributes as "@" keys; escapes undone */
    assert_json(json_object_get(w1, "port"), "{\"@enabled\": \"true\", \"$\": \"8080\"}");
    assert_json(json_object_get(w1, "metadata"), "{\"team\": \"a<b&c\"}");
    assert_string_equal(json_string_value(json_object_get(w2, "overriddenstatus")),
                        "OUT_OF_SERVICE");
    assert_json(json_object_get(w2, "metadata"),
                "{\"@class\": \"java.util.Collections$EmptyMap\"}");
    json_decref(d);
    /* XML cannot carry the key "a b" nor U+0001: left out and replaced */
    d = render(s, REG_EUREKA_INSTANCE, NULL, "n1", false);
    assert_json(json_object_get(json_object_get(d, "instance"), "metadata"),
                "{\"ctl\": \"x?y\"}");
    json_decref(d);
    /* one application */
    d = render(s, REG_EUREKA_APP, "web", NULL, false);
    assert_string_equal(json_string_value(json_object_get(json_object_get(d, "application"),
                                                          "name")),
                        "WEB");
    json_decref(d);
    reg_store_free(s);
}

static void test_render_not_found_and_vips(void **state)
{
    (void)state;
    reg_store *s = sample();
    char *out = (char *)1;
    size_t len;
    assert_int_equal(reg_eureka_render(s, REG_EUREKA_APP, "nope", NULL, true, 0, &out, &len),
                     WEFT_ENOTFOUND);
    assert_null(out);
    assert_int_equal(reg_eureka_render(s, REG_EUREKA_INSTANCE, "web", "a1", true, 0, &out, &len),
                     WEFT_ENOTFOUND);
    assert_int_equal(reg_eureka_render(s, REG_EUREKA_VIP, "none", NULL, true, 0, &out, &len),
                     WEFT_ENOTFOUND);
    /* the VIP defaults to the service name, case-insensitively */
    json_t *d = render(s, REG_EUREKA_VIP, "WEB", NULL, true);
    json_t *list = json_object_get(json_object_get(d, "applications"), "application");
    assert_int_equal(json_array_size(list), 1);
    assert_int_equal(json_array_size(json_object_get(json_array_get(list, 0), "instance")), 2);
    json_decref(d);
    /* an empty registry is an empty list, not a 404 */
    reg_store *e = reg_store_new(NULL);
    d = render(e, REG_EUREKA_APPS, NULL, NULL, false);
    assert_json(d, "{\"applications\": {\"versions__delta\": \"0\", \"apps__hashcode\": \"\"}}");
    json_decref(d);
    reg_store_free(e);
    reg_store_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_xml_shapes),
        cmocka_unit_test(test_xml_text),
        cmocka_unit_test(test_xml_errors),
        cmocka_unit_test(test_translate_mapping),
        cmocka_unit_test(test_translate_from_xml),
        cmocka_unit_test(test_translate_errors),
        cmocka_unit_test(test_translate_case_and_override),
        cmocka_unit_test(test_status_names),
        cmocka_unit_test(test_render_apps_json),
        cmocka_unit_test(test_render_xml_reads_back),
        cmocka_unit_test(test_render_not_found_and_vips),
    };
    return cmocka_run_group_tests_name("registry_eureka", tests, NULL, NULL);
}
