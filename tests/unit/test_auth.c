/*
 * test_auth.c — unit tests for gateway API keys and JWT verification.
 *
 * Real crypto throughout, no mocks: the committed fixtures under
 * data/auth/ (made once by data/auth/gen.sh) hold an RSA 2048 and an EC
 * P-256 key pair and a JWKS with their public halves plus an oct key. Tokens
 * are built and signed here at run time with OpenSSL EVP using the private
 * PEMs, so every case exercises the same signature code a real issuer's
 * token would. The fixture directory is found from __FILE__, so the binary
 * runs from any working directory of a build made from this source tree.
 *
 * Attack cases covered: alg "none", alg confusion (an HS256 token keyed with
 * the RSA public key's PEM text), non-canonical and padded base64url, ES256
 * signatures of the wrong size, tokens from a different key under the same
 * kid, oversize tokens, and duplicate claims.
 */
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "gateway/auth.h"

#define NOW INT64_C(1700000000)
#define ISSUER "https://issuer.example"

static char g_dir[PATH_MAX];
static json_t *g_doc; /* jwks.json as JSON, to build variants of it */
static weft_jwks *g_jwks;
static EVP_PKEY *g_rsa, *g_ec; /* private keys matching rsa1 and ec1 */
static unsigned char g_hs[64]; /* the hs1 secret */
static size_t g_hs_len;
static char *g_rsa_pub_pem; /* text of rsa_pub.pem, for the alg-confusion case */

/* ------------------------------------------------------------------ */
/* helpers */

static const char *data_path(const char *name)
{
    static char buf[PATH_MAX];
    snprintf(buf, sizeof(buf), "%s%s", g_dir, name);
    return buf;
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = calloc(1, 1 << 16);
    size_t n = buf ? fread(buf, 1, (1 << 16) - 1, f) : 0;
    fclose(f);
    if (buf && n == 0) {
        free(buf);
        buf = NULL;
    }
    return buf;
}

static EVP_PKEY *read_private_key(const char *name)
{
    FILE *f = fopen(data_path(name), "rb");
    if (!f)
        return NULL;
    EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    return k;
}

/* Independent encoder (the library only decodes). out: 4*n/3 + 4 bytes. */
static char *b64url(const void *data, size_t n, char *out)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = data;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = al[v >> 18];
        out[o++] = al[(v >> 12) & 63];
        out[o++] = al[(v >> 6) & 63];
        out[o++] = al[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = al[v >> 18];
        out[o++] = al[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = al[v >> 18];
        out[o++] = al[(v >> 12) & 63];
        out[o++] = al[(v >> 6) & 63];
    }
    out[o] = '\0';
    return out;
}

static int b64url_char(char c)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const char *p = strchr(al, c);
    return p && c ? (int)(p - al) : -1;
}

static size_t b64url_dec(const char *s, unsigned char *out)
{
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;
    for (; *s; s++) {
        int v = b64url_char(*s);
        if (v < 0)
            return 0;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    return o;
}

enum signer { SIGN_HS, SIGN_RS, SIGN_ES, SIGN_EMPTY };

/* Build "b64(hdr).b64(payload).b64(sig)"; the caller frees. For SIGN_HS,
 * secret/slen is the HMAC key; for RS/ES, pk is the private key. */
static char *make_token_with(const char *hdr, const char *payload, enum signer how, EVP_PKEY *pk,
                             const void *secret, size_t slen)
{
    size_t hn = strlen(hdr), pn = strlen(payload);
    char *tok = malloc(hn * 2 + pn * 2 + 2048);
    unsigned char sig[1024];
    size_t siglen = 0;
    assert_non_null(tok);
    b64url(hdr, hn, tok);
    strcat(tok, ".");
    b64url(payload, pn, tok + strlen(tok));
    size_t mlen = strlen(tok);

    if (how == SIGN_HS) {
        assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, secret, slen,
                                  (const unsigned char *)tok, mlen, sig, sizeof(sig), &siglen));
    } else if (how == SIGN_RS || how == SIGN_ES) {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        assert_non_null(ctx);
        assert_int_equal(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, pk), 1);
        siglen = sizeof(sig);
        assert_int_equal(EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)tok, mlen), 1);
        EVP_MD_CTX_free(ctx);
        if (how == SIGN_ES) {
            /* DER ECDSA-Sig-Value -> JWS R || S */
            const unsigned char *p = sig;
            ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)siglen);
            assert_non_null(es);
            const BIGNUM *r, *s;
            ECDSA_SIG_get0(es, &r, &s);
            assert_int_equal(BN_bn2binpad(r, sig, 32), 32);
            assert_int_equal(BN_bn2binpad(s, sig + 32, 32), 32);
            ECDSA_SIG_free(es);
            siglen = 64;
        }
    }
    strcat(tok, ".");
    b64url(sig, siglen, tok + strlen(tok));
    return tok;
}

static char *tok_hs(const char *payload)
{
    return make_token_with("{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"hs1\"}", payload, SIGN_HS,
                           NULL, g_hs, g_hs_len);
}

static char *tok_rs(const char *payload)
{
    return make_token_with("{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"rsa1\"}", payload, SIGN_RS,
                           g_rsa, NULL, 0);
}

static char *tok_es(const char *payload)
{
    return make_token_with("{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"ec1\"}", payload, SIGN_ES,
                           g_ec, NULL, 0);
}

static const char *fmt(const char *f, ...) WEFT_PRINTF(1, 2);
static const char *fmt(const char *f, ...)
{
    static char buf[4096];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof(buf), f, ap);
    va_end(ap);
    return buf;
}

/* A payload that passes every check of full_policy() at NOW. */
static const char *good_payload(void)
{
    static char buf[256]; /* not fmt()'s buffer: both may be arguments of one call */
    snprintf(buf, sizeof(buf),
             "{\"sub\":\"alice\",\"iss\":\"" ISSUER "\",\"aud\":\"api\",\"iat\":%lld,\"exp\":%lld}",
             (long long)NOW, (long long)(NOW + 600));
    return buf;
}

static const char *const g_auds[] = {"api"};

static weft_jwt_policy full_policy(void)
{
    weft_jwt_policy p = {0};
    p.issuer = ISSUER;
    p.audiences = g_auds;
    p.naud = 1;
    return p;
}

static int verify(const char *tok, const weft_jwt_policy *pol, int64_t now)
{
    return weft_jwt_verify(g_jwks, pol, weft_str_from(tok), now, NULL);
}

/* Change one character in the middle of the signature to another valid one. */
static void tamper_sig(char *tok)
{
    char *p = strrchr(tok, '.') + 5;
    *p = *p == 'A' ? 'B' : 'A';
}

/* Replace the signature part with base64url(sig). */
static char *with_sig(const char *tok, const unsigned char *sig, size_t n)
{
    size_t keep = (size_t)(strrchr(tok, '.') - tok) + 1;
    char *out = malloc(keep + n * 2 + 8);
    assert_non_null(out);
    memcpy(out, tok, keep);
    b64url(sig, n, out + keep);
    return out;
}

static int load_doc(json_t *doc, char *err, size_t errlen, weft_jwks **out)
{
    char *text = json_dumps(doc, JSON_COMPACT);
    assert_non_null(text);
    int rc = weft_jwks_load_json(text, strlen(text), out, err, errlen);
    free(text);
    json_decref(doc);
    return rc;
}

/* The fixture's key i, copied, for building JWKS variants. */
static json_t *fixture_key(size_t i)
{
    return json_deep_copy(json_array_get(json_object_get(g_doc, "keys"), i));
}

#define assert_contains(hay, needle)                                                               \
    do {                                                                                           \
        if (!strstr((hay), (needle)))                                                              \
            fail_msg("expected \"%s\" to contain \"%s\"", (hay), (needle));                        \
    } while (0)

/* ------------------------------------------------------------------ */
/* fixture setup */

static int group_setup(void **state)
{
    (void)state;
    const char *file = __FILE__;
    const char *slash = strrchr(file, '/');
    size_t dirlen = slash ? (size_t)(slash - file) + 1 : 0;
    snprintf(g_dir, sizeof(g_dir), "%.*sdata/auth/", (int)dirlen, file);

    char err[256] = "";
    if (weft_jwks_load_file(data_path("jwks.json"), &g_jwks, err, sizeof(err)) != 0) {
        fprintf(stderr, "cannot load %s: %s\n", data_path("jwks.json"), err);
        return -1;
    }
    g_doc = json_load_file(data_path("jwks.json"), 0, NULL);
    g_rsa = read_private_key("rsa_priv.pem");
    g_ec = read_private_key("ec_priv.pem");
    g_rsa_pub_pem = read_text(data_path("rsa_pub.pem"));
    if (!g_doc || !g_rsa || !g_ec || !g_rsa_pub_pem) {
        fprintf(stderr, "cannot read fixtures under %s\n", g_dir);
        return -1;
    }
    const char *k =
        json_string_value(json_object_get(json_array_get(json_object_get(g_doc, "keys"), 2), "k"));
    if (!k || strlen(k) > 80)
        return -1;
    g_hs_len = b64url_dec(k, g_hs);
    return g_hs_len >= 32 ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    weft_jwks_free(g_jwks);
    json_decref(g_doc);
    EVP_PKEY_free(g_rsa);
    EVP_PKEY_free(g_ec);
    free(g_rsa_pub_pem);
    return 0;
}

/* ------------------------------------------------------------------ */
/* API keys */

static void test_apikey_hash_known_vectors(void **state)
{
    (void)state;
    char out[72];
    weft_apikey_hash(WEFT_STR("secret"), out);
    assert_string_equal(out,
                        "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b");
    weft_apikey_hash(WEFT_STR(""), out);
    assert_string_equal(out,
                        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_int_equal(strlen(out), 71);
}

static void test_apikeys_match(void **state)
{
    (void)state;
    weft_apikeys *s = weft_apikeys_new();
    assert_non_null(s);
    const char *keys[] = {"k-alpha", "k-beta", "k-gamma", "k-delta"};
    const char *names[] = {"alpha", "beta", "gamma", "delta"};
    char h[72];
    for (size_t i = 0; i < 4; i++) {
        weft_apikey_hash(weft_str_from(keys[i]), h);
        assert_int_equal(weft_apikeys_add(s, names[i], h), 0);
    }
    /* each position, including first and last, names its own consumer */
    for (size_t i = 0; i < 4; i++) {
        const char *m = weft_apikeys_match(s, weft_str_from(keys[i]));
        assert_non_null(m);
        assert_string_equal(m, names[i]);
    }
    assert_null(weft_apikeys_match(s, WEFT_STR("k-epsilon")));
    assert_null(weft_apikeys_match(s, WEFT_STR("k-alph")));   /* prefix */
    assert_null(weft_apikeys_match(s, WEFT_STR("k-alphaa"))); /* extension */
    assert_null(weft_apikeys_match(s, WEFT_STR("")));
    assert_null(weft_apikeys_match(s, WEFT_STR_NULL));
    assert_null(weft_apikeys_match(NULL, WEFT_STR("k-alpha")));
    weft_apikeys_free(s);
}

static void test_apikeys_empty_set(void **state)
{
    (void)state;
    weft_apikeys *s = weft_apikeys_new();
    assert_non_null(s);
    assert_null(weft_apikeys_match(s, WEFT_STR("anything")));
    weft_apikeys_free(s);
    weft_apikeys_free(NULL);
}

static void test_apikeys_add_rejects_malformed(void **state)
{
    (void)state;
    weft_apikeys *s = weft_apikeys_new();
    const char *good = "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
    const char *bad[] = {
        "",
        "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b", /* no prefix */
        "SHA256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b",
        "sha1:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b",
        "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25",   /* 63 */
        "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25bb", /* 65 */
        "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25g",  /* not hex */
        "sha256: bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b",
        "sha256:secret",
    };
    for (size_t i = 0; i < WEFT_ARRAY_LEN(bad); i++)
        assert_int_equal(weft_apikeys_add(s, "x", bad[i]), WEFT_EINVAL);
    assert_int_equal(weft_apikeys_add(s, NULL, good), WEFT_EINVAL);
    assert_int_equal(weft_apikeys_add(s, "", good), WEFT_EINVAL);
    assert_int_equal(weft_apikeys_add(s, "x", NULL), WEFT_EINVAL);
    assert_int_equal(weft_apikeys_add(NULL, "x", good), WEFT_EINVAL);
    assert_null(weft_apikeys_match(s, WEFT_STR("secret"))); /* nothing was added */
    weft_apikeys_free(s);
}

static void test_apikeys_uppercase_hex_and_duplicates(void **state)
{
    (void)state;
    weft_apikeys *s = weft_apikeys_new();
    assert_int_equal(
        weft_apikeys_add(s, "ops",
                         "sha256:2BB80D537B1DA3E38BD30361AA855686BDE0EACD7162FEF6A25FE97BF527A25B"),
        0);
    assert_string_equal(weft_apikeys_match(s, WEFT_STR("secret")), "ops");
    /* same digest in lower case: a second consumer for one key is refused */
    assert_int_equal(
        weft_apikeys_add(s, "other",
                         "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"),
        WEFT_EEXIST);
    assert_string_equal(weft_apikeys_match(s, WEFT_STR("secret")), "ops");
    weft_apikeys_free(s);
}

static void test_apikeys_many(void **state)
{
    (void)state;
    weft_apikeys *s = weft_apikeys_new();
    char key[32], name[32], h[72];
    for (int i = 0; i < 100; i++) { /* crosses several growth steps */
        snprintf(key, sizeof(key), "key-%d", i);
        snprintf(name, sizeof(name), "c%d", i);
        weft_apikey_hash(weft_str_from(key), h);
        assert_int_equal(weft_apikeys_add(s, name, h), 0);
    }
    for (int i = 0; i < 100; i += 7) {
        snprintf(key, sizeof(key), "key-%d", i);
        snprintf(name, sizeof(name), "c%d", i);
        assert_string_equal(weft_apikeys_match(s, weft_str_from(key)), name);
    }
    assert_null(weft_apikeys_match(s, WEFT_STR("key-100")));
    weft_apikeys_free(s);
}

/* ------------------------------------------------------------------ */
/* JWKS loading */

static void test_jwks_fixture_loads(void **state)
{
    (void)state;
    assert_int_equal(weft_jwks_count(g_jwks), 3);
    assert_int_equal(weft_jwks_count(NULL), 0);
    weft_jwks_free(NULL);
}

static void test_jwks_not_json(void **state)
{
    (void)state;
    char err[256];
    weft_jwks *k = (weft_jwks *)1;
    assert_int_equal(weft_jwks_load_json("{keys: nope", 11, &k, err, sizeof(err)), WEFT_ECONFIG);
    assert_null(k);
    assert_contains(err, "not valid JSON");
    assert_int_equal(weft_jwks_load_json("", 0, &k, err, sizeof(err)), WEFT_ECONFIG);
    /* a NULL errbuf is allowed */
    assert_int_equal(weft_jwks_load_json("[]", 2, &k, NULL, 0), WEFT_ECONFIG);
}

static void test_jwks_missing_keys(void **state)
{
    (void)state;
    char err[256];
    weft_jwks *k = NULL;
    assert_int_equal(weft_jwks_load_json("{}", 2, &k, err, sizeof(err)), WEFT_ECONFIG);
    assert_contains(err, "\"keys\"");
    assert_int_equal(weft_jwks_load_json("{\"keys\":{}}", 11, &k, err, sizeof(err)), WEFT_ECONFIG);
    assert_contains(err, "\"keys\" must be an array");
    assert_int_equal(weft_jwks_load_json("{\"keys\":[]}", 11, &k, err, sizeof(err)), WEFT_ECONFIG);
    assert_contains(err, "no usable key");
    assert_int_equal(weft_jwks_load_json("{\"keys\":[5]}", 12, &k, err, sizeof(err)), WEFT_ECONFIG);
    assert_contains(err, "keys[0]: not a JSON object");
    assert_null(k);
}

static void test_jwks_bad_rsa(void **state)
{
    (void)state;
    char err[256];
    weft_jwks *k = NULL;
    /* the error names the index of the bad key, here the second one */
    json_t *rsa = fixture_key(0);
    json_object_set_new(rsa, "n", json_string("vV7+yI5J"));
    assert_int_equal(
        load_doc(json_pack("{s:[o,o]}", "keys", fixture_key(2), rsa), err, sizeof(err), &k),
        WEFT_ECONFIG);
    assert_contains(err, "keys[1]");
    assert_contains(err, "field \"n\"");
    assert_contains(err, "base64url");

    rsa = fixture_key(0);
    json_object_set_new(rsa, "n", json_string("AQAB")); /* 17-bit modulus */
    assert_int_equal(load_doc(json_pack("{s:[o]}", "keys", rsa), err, sizeof(err), &k),
                     WEFT_ECONFIG);
    assert_contains(err, "keys[0]: field \"n\": modulus of 24 bits");

    rsa = fixture_key(0);
    json_object_del(rsa, "e");
    assert_int_equal(load_doc(json_pack("{s:[o]}", "keys", rsa), err, sizeof(err), &k),
                     WEFT_ECONFIG);
    assert_contains(err, "keys[0]: missing field \"e\"");

    rsa = fixture_key(0);
    json_object_set_new(rsa, "e", json_string("AQAA")); /* even exponent */
    assert_int_equal(load_doc(json_pack("{s:[o]}", "keys", rsa), err, sizeof(err), &k),
                     WEFT_ECONFIG);
    assert_contains(err, "field \"e\"");

    rsa = fixture_key(0);
    json_object_set_new(rsa, "n", json_integer(7));
    assert_int_equal(load_doc(json_pack("{s:[o]}", "keys", rsa), err, sizeof(err), &k),
                     WEFT_ECONFIG);
    assert_contains(err, "field \"n\" must be a string");
    assert_null(k);
}

static void test_jwks_bad_ec_and_oct(void **state)
{
    (void)state;
    char err[256];
    weft_jwks *k = NULL;
    json_t *ec = fixture_key(1);
    json_object_set_new(ec, "x", json_string("AAAA"));
    assert_int_equal(load_doc(json_pack("{s:[o]}", "keys", ec), err, sizeof(err), &k),
                     WEFT_ECONFIG);
    assert_contains(err, "keys[0]: field \"x\": 3 bytes");

    /* a valid-looking point that is not on the curve */
    ec = fixture_key(1);
    json_object_set_new(ec, "y", json_string("AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA"));
    assert_int_equal(load_doc(json_pack("{s:[o]}", "keys", ec), err, sizeof(err), &k),
                     WEFT_ECONFIG);
    assert_contains(err, "not a point on P-256");

    ec = fixture_key(1);
    json_object_del(ec, "crv");
    assert_int_equal(load_doc(json_pack("{s:[o]}", "keys", ec), err, sizeof(err), &k),
                     WEFT_ECONFIG);
    assert_contains(err, "missing field \"crv\"");

    json_t *oct = fixture_key(2);
    json_object_set_new(oct, "k", json_string("c2hvcnQ")); /* "short" */
    assert_int_equal(load_doc(json_pack("{s:[o]}", "keys", oct), err, sizeof(err), &k),
                     WEFT_ECONFIG);
    assert_contains(err, "keys[0]: field \"k\": 5-byte secret");

    oct = fixture_key(2);
    json_object_set_new(oct, "k", json_string("cXG9P0xCp_PsO2JGDPF7R7j_tZRq_Yvkl7CzevGdrdQ="));
    assert_int_equal(load_doc(json_pack("{s:[o]}", "keys", oct), err, sizeof(err), &k),
                     WEFT_ECONFIG);
    assert_contains(err, "field \"k\" is not unpadded base64url");

    json_t *nokty = fixture_key(2);
    json_object_del(nokty, "kty");
    assert_int_equal(load_doc(json_pack("{s:[o]}", "keys", nokty), err, sizeof(err), &k),
                     WEFT_ECONFIG);
    assert_contains(err, "keys[0]: missing field \"kty\"");

    json_t *kid = fixture_key(2);
    json_object_set_new(kid, "kid", json_integer(1));
    assert_int_equal(load_doc(json_pack("{s:[o]}", "keys", kid), err, sizeof(err), &k),
                     WEFT_ECONFIG);
    assert_contains(err, "field \"kid\" must be a string");
    assert_null(k);
}

static void test_jwks_alg_must_fit_kty(void **state)
{
    (void)state;
    char err[256];
    weft_jwks *k = NULL;
    json_t *rsa = fixture_key(0);
    json_object_set_new(rsa, "alg", json_string("HS256"));
    assert_int_equal(load_doc(json_pack("{s:[o]}", "keys", rsa), err, sizeof(err), &k),
                     WEFT_ECONFIG);
    assert_contains(err, "keys[0]: field \"alg\": \"HS256\" does not fit kty \"RSA\"");
    assert_null(k);
}

static void test_jwks_unsupported_only(void **state)
{
    (void)state;
    char err[256];
    weft_jwks *k = NULL;
    json_t *p384 =
        json_pack("{s:s,s:s,s:s,s:s}", "kty", "EC", "crv", "P-384", "x", "AA", "y", "AA");
    json_t *okp = json_pack("{s:s,s:s,s:s}", "kty", "OKP", "crv", "Ed25519", "x", "AA");
    json_t *enc = fixture_key(0);
    json_object_set_new(enc, "use", json_string("enc"));
    json_t *ps = fixture_key(0);
    json_object_set_new(ps, "alg", json_string("PS256"));
    assert_int_equal(
        load_doc(json_pack("{s:[o,o,o,o]}", "keys", p384, okp, enc, ps), err, sizeof(err), &k),
        WEFT_ECONFIG);
    assert_contains(err, "no usable key (4 skipped");
    assert_null(k);
}

static void test_jwks_skips_unsupported_keeps_rest(void **state)
{
    (void)state;
    char err[256] = "";
    weft_jwks *k = NULL;
    json_t *okp = json_pack("{s:s,s:s,s:s}", "kty", "OKP", "crv", "Ed25519", "x", "AA");
    assert_int_equal(
        load_doc(json_pack("{s:[o,o]}", "keys", okp, fixture_key(1)), err, sizeof(err), &k), 0);
    assert_int_equal(weft_jwks_count(k), 1);
    /* the kept key still verifies */
    char *tok = tok_es(good_payload());
    weft_jwt_policy pol = full_policy();
    assert_int_equal(weft_jwt_verify(k, &pol, weft_str_from(tok), NOW, NULL), WEFT_JWT_OK);
    free(tok);
    weft_jwks_free(k);
}

static void test_jwks_size_and_file_errors(void **state)
{
    (void)state;
    char err[512];
    weft_jwks *k = NULL;
    size_t big = (1u << 20) + 1;
    char *buf = malloc(big);
    assert_non_null(buf);
    memset(buf, ' ', big);
    assert_int_equal(weft_jwks_load_json(buf, big, &k, err, sizeof(err)), WEFT_ETOOBIG);
    assert_contains(err, "limit");
    free(buf);

    assert_int_equal(weft_jwks_load_file(data_path("no-such.json"), &k, err, sizeof(err)),
                     WEFT_ENOTFOUND);
    assert_contains(err, "no-such.json");
    /* a content error from a file is prefixed with its path */
    assert_int_equal(weft_jwks_load_file(data_path("rsa_pub.pem"), &k, err, sizeof(err)),
                     WEFT_ECONFIG);
    assert_contains(err, "rsa_pub.pem: JWKS is not valid JSON");
    assert_null(k);
    assert_int_equal(weft_jwks_load_json(NULL, 5, &k, err, sizeof(err)), WEFT_EINVAL);
}

/* ------------------------------------------------------------------ */
/* JWT: valid tokens */

static void check_valid(char *tok)
{
    weft_jwt_policy pol = full_policy();
    json_t *claims = NULL;
    assert_int_equal(weft_jwt_verify(g_jwks, &pol, weft_str_from(tok), NOW, &claims), WEFT_JWT_OK);
    assert_non_null(claims);
    assert_string_equal(json_string_value(json_object_get(claims, "sub")), "alice");
    assert_int_equal(json_integer_value(json_object_get(claims, "exp")), NOW + 600);
    json_decref(claims);
    /* claims is optional */
    assert_int_equal(verify(tok, &pol, NOW), WEFT_JWT_OK);
    /* no policy: any of the three algs, no iss/aud checks */
    assert_int_equal(verify(tok, NULL, NOW), WEFT_JWT_OK);
    free(tok);
}

static void test_jwt_hs256_valid(void **state)
{
    (void)state;
    check_valid(tok_hs(good_payload()));
}

static void test_jwt_rs256_valid(void **state)
{
    (void)state;
    check_valid(tok_rs(good_payload()));
}

static void test_jwt_es256_valid(void **state)
{
    (void)state;
    check_valid(tok_es(good_payload()));
}

static void test_jwt_without_kid_tries_keys_of_the_alg(void **state)
{
    (void)state;
    check_valid(make_token_with("{\"alg\":\"RS256\"}", good_payload(), SIGN_RS, g_rsa, NULL, 0));
    check_valid(make_token_with("{\"alg\":\"ES256\"}", good_payload(), SIGN_ES, g_ec, NULL, 0));
    check_valid(
        make_token_with("{\"alg\":\"HS256\"}", good_payload(), SIGN_HS, NULL, g_hs, g_hs_len));
}

/* ------------------------------------------------------------------ */
/* JWT: signatures */

static void check_tampered(char *tok)
{
    weft_jwt_policy pol = full_policy();
    json_t *claims = (json_t *)1;
    tamper_sig(tok);
    assert_int_equal(weft_jwt_verify(g_jwks, &pol, weft_str_from(tok), NOW, &claims),
                     WEFT_JWT_BAD_SIGNATURE);
    assert_null(claims); /* cleared on failure */
    free(tok);
}

static void test_jwt_tampered_signatures(void **state)
{
    (void)state;
    check_tampered(tok_hs(good_payload()));
    check_tampered(tok_rs(good_payload()));
    check_tampered(tok_es(good_payload()));
}

static void test_jwt_tampered_payload(void **state)
{
    (void)state;
    char *tok = tok_rs(good_payload());
    char *orig =
        tok_rs(fmt("{\"sub\":\"mallory\",\"iss\":\"" ISSUER "\",\"aud\":\"api\",\"exp\":%lld}",
                   (long long)(NOW + 600)));
    /* splice mallory's payload under alice's signature */
    char *d1 = strchr(tok, '.'), *d2 = strrchr(tok, '.');
    char *o1 = strchr(orig, '.'), *o2 = strrchr(orig, '.');
    char *spliced = malloc(strlen(tok) + strlen(orig));
    sprintf(spliced, "%.*s%.*s%s", (int)(d1 - tok), tok, (int)(o2 - o1), o1, d2);
    weft_jwt_policy pol = full_policy();
    assert_int_equal(verify(spliced, &pol, NOW), WEFT_JWT_BAD_SIGNATURE);
    free(spliced);
    free(tok);
    free(orig);
}

static void test_jwt_signed_by_other_key(void **state)
{
    (void)state;
    weft_jwt_policy pol = full_policy();
    EVP_PKEY *rsa2 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    EVP_PKEY *ec2 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(rsa2);
    assert_non_null(ec2);
    unsigned char other[32];
    memset(other, 0x5a, sizeof(other));

    char *t = make_token_with("{\"alg\":\"RS256\",\"kid\":\"rsa1\"}", good_payload(), SIGN_RS, rsa2,
                              NULL, 0);
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_BAD_SIGNATURE);
    free(t);
    t = make_token_with("{\"alg\":\"ES256\",\"kid\":\"ec1\"}", good_payload(), SIGN_ES, ec2, NULL,
                        0);
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_BAD_SIGNATURE);
    free(t);
    t = make_token_with("{\"alg\":\"HS256\",\"kid\":\"hs1\"}", good_payload(), SIGN_HS, NULL, other,
                        32);
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_BAD_SIGNATURE);
    free(t);
    /* no kid: every RSA key tried, none verifies */
    t = make_token_with("{\"alg\":\"RS256\"}", good_payload(), SIGN_RS, rsa2, NULL, 0);
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_BAD_SIGNATURE);
    free(t);
    EVP_PKEY_free(rsa2);
    EVP_PKEY_free(ec2);
}

static void test_jwt_es256_signature_length(void **state)
{
    (void)state;
    weft_jwt_policy pol = full_policy();
    char *tok = tok_es(good_payload());
    unsigned char raw[80];
    size_t n = b64url_dec(strrchr(tok, '.') + 1, raw);
    assert_int_equal(n, 64);
    raw[64] = 0;
    char *t63 = with_sig(tok, raw, 63);
    char *t65 = with_sig(tok, raw, 65);
    assert_int_equal(verify(t63, &pol, NOW), WEFT_JWT_BAD_SIGNATURE);
    assert_int_equal(verify(t65, &pol, NOW), WEFT_JWT_BAD_SIGNATURE);
    /* a DER signature (what OpenSSL emits) is not a JWS signature */
    unsigned char der[80];
    unsigned char *p = der;
    ECDSA_SIG *es = ECDSA_SIG_new();
    ECDSA_SIG_set0(es, BN_bin2bn(raw, 32, NULL), BN_bin2bn(raw + 32, 32, NULL));
    int dlen = i2d_ECDSA_SIG(es, &p);
    ECDSA_SIG_free(es);
    assert_true(dlen > 0);
    char *tder = with_sig(tok, der, (size_t)dlen);
    assert_int_equal(verify(tder, &pol, NOW), WEFT_JWT_BAD_SIGNATURE);
    /* all-zero r and s */
    memset(raw, 0, 64);
    char *tzero = with_sig(tok, raw, 64);
    assert_int_equal(verify(tzero, &pol, NOW), WEFT_JWT_BAD_SIGNATURE);
    assert_int_equal(verify(tok, &pol, NOW), WEFT_JWT_OK);
    free(t63);
    free(t65);
    free(tder);
    free(tzero);
    free(tok);
}

static void test_jwt_hs256_signature_length(void **state)
{
    (void)state;
    weft_jwt_policy pol = full_policy();
    char *tok = tok_hs(good_payload());
    unsigned char raw[40];
    assert_int_equal(b64url_dec(strrchr(tok, '.') + 1, raw), 32);
    char *t31 = with_sig(tok, raw, 31); /* a truncated MAC is not accepted */
    assert_int_equal(verify(t31, &pol, NOW), WEFT_JWT_BAD_SIGNATURE);
    raw[32] = 0;
    char *t33 = with_sig(tok, raw, 33); /* nor the right MAC with a byte appended */
    assert_int_equal(verify(t33, &pol, NOW), WEFT_JWT_BAD_SIGNATURE);
    assert_int_equal(verify(tok, &pol, NOW), WEFT_JWT_OK);
    free(t31);
    free(t33);
    free(tok);
}

/* ------------------------------------------------------------------ */
/* JWT: algorithms and keys */

static void test_jwt_alg_none(void **state)
{
    (void)state;
    weft_jwt_policy pol = full_policy();
    char *t = make_token_with("{\"alg\":\"none\"}", good_payload(), SIGN_EMPTY, NULL, NULL, 0);
    assert_int_equal(t[strlen(t) - 1], '.'); /* the classic unsigned token */
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_BAD_ALG);
    assert_int_equal(verify(t, NULL, NOW), WEFT_JWT_BAD_ALG);
    free(t);
    const char *algs[] = {"None", "NONE", "hs256", "HS384", "RS512", "PS256", "EdDSA", ""};
    for (size_t i = 0; i < WEFT_ARRAY_LEN(algs); i++) {
        t = make_token_with(fmt("{\"alg\":\"%s\"}", algs[i]), good_payload(), SIGN_HS, NULL, g_hs,
                            g_hs_len);
        assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_BAD_ALG);
        free(t);
    }
}

static void test_jwt_alg_confusion(void **state)
{
    (void)state;
    weft_jwt_policy pol = full_policy();
    /* HS256 keyed with the RSA public key text, pointing at the RSA key */
    char *t = make_token_with("{\"alg\":\"HS256\",\"kid\":\"rsa1\"}", good_payload(), SIGN_HS, NULL,
                              g_rsa_pub_pem, strlen(g_rsa_pub_pem));
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_BAD_ALG);
    free(t);
    /* the same without a kid only ever meets the oct key */
    t = make_token_with("{\"alg\":\"HS256\"}", good_payload(), SIGN_HS, NULL, g_rsa_pub_pem,
                        strlen(g_rsa_pub_pem));
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_BAD_SIGNATURE);
    free(t);
    /* RS256 naming the EC key, ES256 naming the HMAC key */
    t = make_token_with("{\"alg\":\"RS256\",\"kid\":\"ec1\"}", good_payload(), SIGN_RS, g_rsa, NULL,
                        0);
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_BAD_ALG);
    free(t);
    t = make_token_with("{\"alg\":\"ES256\",\"kid\":\"hs1\"}", good_payload(), SIGN_ES, g_ec, NULL,
                        0);
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_BAD_ALG);
    free(t);
}

static void test_jwt_alg_policy_mask(void **state)
{
    (void)state;
    weft_jwt_policy pol = full_policy();
    pol.algs = WEFT_JWT_RS256 | WEFT_JWT_ES256;
    char *hs = tok_hs(good_payload()), *rs = tok_rs(good_payload()), *es = tok_es(good_payload());
    assert_int_equal(verify(hs, &pol, NOW), WEFT_JWT_BAD_ALG);
    assert_int_equal(verify(rs, &pol, NOW), WEFT_JWT_OK);
    assert_int_equal(verify(es, &pol, NOW), WEFT_JWT_OK);
    pol.algs = WEFT_JWT_HS256;
    assert_int_equal(verify(hs, &pol, NOW), WEFT_JWT_OK);
    assert_int_equal(verify(rs, &pol, NOW), WEFT_JWT_BAD_ALG);
    assert_int_equal(verify(es, &pol, NOW), WEFT_JWT_BAD_ALG);
    free(hs);
    free(rs);
    free(es);
}

static void test_jwt_unknown_kid(void **state)
{
    (void)state;
    weft_jwt_policy pol = full_policy();
    char *t = make_token_with("{\"alg\":\"RS256\",\"kid\":\"rsa2\"}", good_payload(), SIGN_RS,
                              g_rsa, NULL, 0);
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_NO_KEY);
    free(t);
    t = make_token_with("{\"alg\":\"RS256\",\"kid\":\"\"}", good_payload(), SIGN_RS, g_rsa, NULL,
                        0);
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_NO_KEY);
    free(t);
    /* no keys at all */
    t = tok_rs(good_payload());
    assert_int_equal(weft_jwt_verify(NULL, &pol, weft_str_from(t), NOW, NULL), WEFT_JWT_NO_KEY);
    free(t);
}

static void test_jwt_no_key_of_alg_type(void **state)
{
    (void)state;
    char err[256];
    weft_jwks *only_ec = NULL;
    assert_int_equal(
        load_doc(json_pack("{s:[o]}", "keys", fixture_key(1)), err, sizeof(err), &only_ec), 0);
    char *t = make_token_with("{\"alg\":\"RS256\"}", good_payload(), SIGN_RS, g_rsa, NULL, 0);
    assert_int_equal(weft_jwt_verify(only_ec, NULL, weft_str_from(t), NOW, NULL), WEFT_JWT_NO_KEY);
    free(t);
    weft_jwks_free(only_ec);
}

/* ------------------------------------------------------------------ */
/* JWT: structure */

static void test_jwt_part_count(void **state)
{
    (void)state;
    weft_jwt_policy pol = full_policy();
    char *tok = tok_hs(good_payload());
    char *buf = malloc(strlen(tok) + 16);
    /* two parts */
    snprintf(buf, strlen(tok) + 16, "%.*s", (int)(strrchr(tok, '.') - tok), tok);
    assert_int_equal(verify(buf, &pol, NOW), WEFT_JWT_MALFORMED);
    /* four parts */
    snprintf(buf, strlen(tok) + 16, "%s.AAAA", tok);
    assert_int_equal(verify(buf, &pol, NOW), WEFT_JWT_MALFORMED);
    /* one part, empty token, dots only */
    assert_int_equal(verify("abc", &pol, NOW), WEFT_JWT_MALFORMED);
    assert_int_equal(verify("", &pol, NOW), WEFT_JWT_MALFORMED);
    assert_int_equal(verify("..", &pol, NOW), WEFT_JWT_MALFORMED);
    assert_int_equal(weft_jwt_verify(g_jwks, &pol, WEFT_STR_NULL, NOW, NULL), WEFT_JWT_MALFORMED);
    /* empty header */
    snprintf(buf, strlen(tok) + 16, "%s", strchr(tok, '.'));
    assert_int_equal(verify(buf, &pol, NOW), WEFT_JWT_MALFORMED);
    free(buf);
    free(tok);
}

static void test_jwt_bad_base64(void **state)
{
    (void)state;
    weft_jwt_policy pol = full_policy();
    char *tok = tok_hs(good_payload());
    size_t n = strlen(tok);
    const char bad[] = {'+', '/', '*', ' ', '=', '\0'};
    for (size_t i = 0; i < sizeof(bad) - 1; i++) {
        char *t = strdup(tok);
        t[strchr(t, '.') - t + 3] = bad[i]; /* inside the payload */
        assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_MALFORMED);
        t[strchr(tok, '.') - tok + 3] = tok[strchr(tok, '.') - tok + 3];
        t[n - 4] = bad[i]; /* inside the signature */
        assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_MALFORMED);
        free(t);
    }
    /* an embedded NUL within the length is not base64url either */
    char *t = strdup(tok);
    t[2] = '\0';
    assert_int_equal(weft_jwt_verify(g_jwks, &pol, (weft_str){t, n}, NOW, NULL),
                     WEFT_JWT_MALFORMED);
    free(t);
    free(tok);
}

static void test_jwt_padding_rejected(void **state)
{
    (void)state;
    weft_jwt_policy pol = full_policy();
    char *tok = tok_hs(good_payload()); /* 32-byte MAC: 43 chars, so "=" would pad it */
    char *t = malloc(strlen(tok) + 2);
    sprintf(t, "%s=", tok);
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_MALFORMED);
    free(t);
    free(tok);
}

static void test_jwt_noncanonical_base64(void **state)
{
    (void)state;
    weft_jwt_policy pol = full_policy();
    char *tok = tok_hs(good_payload());
    size_t n = strlen(tok);
    /* 43 chars carry 258 bits; setting the 2 spare bits decodes to the same
     * MAC, but must not be a second valid spelling of the token */
    int v = b64url_char(tok[n - 1]);
    assert_int_equal(v & 3, 0);
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    tok[n - 1] = al[v + 1];
    assert_int_equal(verify(tok, &pol, NOW), WEFT_JWT_MALFORMED);
    free(tok);
}

static void test_jwt_bad_header(void **state)
{
    (void)state;
    weft_jwt_policy pol = full_policy();
    const char *headers[] = {
        "not json",
        "[\"HS256\"]",
        "{}",
        "{\"alg\":256}",
        "{\"alg\":\"HS256\",\"kid\":7}",
        "{\"alg\":\"HS256\",\"typ\":true}",
        "{\"alg\":\"HS256\",\"crit\":[\"exp\"],\"exp\":1}",
        "{\"alg\":\"HS256\",\"alg\":\"none\"}", /* duplicate member */
        "{\"alg\":\"HS256\"} trailing",
    };
    for (size_t i = 0; i < WEFT_ARRAY_LEN(headers); i++) {
        char *t = make_token_with(headers[i], good_payload(), SIGN_HS, NULL, g_hs, g_hs_len);
        int rc = verify(t, &pol, NOW);
        if (rc != WEFT_JWT_MALFORMED)
            fail_msg("header %s: got %d, want %d", headers[i], rc, WEFT_JWT_MALFORMED);
        free(t);
    }
}

static void test_jwt_bad_payload(void **state)
{
    (void)state;
    weft_jwt_policy pol = {0};
    const char *payloads[] = {
        "[1,2,3]",
        "\"alice\"",
        "not json",
        "{\"sub\":\"a\",\"sub\":\"b\"}",
        "{\"exp\":\"soon\"}",
        "{\"nbf\":null}",
    };
    for (size_t i = 0; i < WEFT_ARRAY_LEN(payloads); i++) {
        char *t = tok_hs(payloads[i]);
        int rc = verify(t, &pol, NOW);
        if (rc != WEFT_JWT_MALFORMED)
            fail_msg("payload %s: got %d, want %d", payloads[i], rc, WEFT_JWT_MALFORMED);
        free(t);
    }
    /* an empty object is a valid (if useless) claim set */
    char *t = tok_hs("{}");
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_OK);
    free(t);
}

static void test_jwt_empty_signature(void **state)
{
    (void)state;
    weft_jwt_policy pol = full_policy();
    char *t = make_token_with("{\"alg\":\"HS256\",\"kid\":\"hs1\"}", good_payload(), SIGN_EMPTY,
                              NULL, NULL, 0);
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_MALFORMED);
    free(t);
}

static void test_jwt_too_long(void **state)
{
    (void)state;
    weft_jwt_policy pol = {0};
    /* a correctly signed token just over 16 KiB */
    char *pl = malloc(13000);
    strcpy(pl, "{\"pad\":\"");
    memset(pl + 8, 'x', 12400);
    strcpy(pl + 8 + 12400, "\"}");
    char *t = tok_hs(pl);
    assert_true(strlen(t) > 16 * 1024);
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_MALFORMED);
    free(t);
    /* and one comfortably under the limit passes */
    pl[8 + 8000] = '\0';
    strcat(pl, "\"}");
    t = tok_hs(pl);
    assert_true(strlen(t) < 16 * 1024);
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_OK);
    free(t);
    free(pl);
}

/* ------------------------------------------------------------------ */
/* JWT: claims */

static void test_jwt_expired(void **state)
{
    (void)state;
    weft_jwt_policy pol = full_policy();
    char *t = tok_rs(good_payload()); /* exp = NOW + 600 */
    assert_int_equal(verify(t, &pol, NOW + 599), WEFT_JWT_OK);
    assert_int_equal(verify(t, &pol, NOW + 600), WEFT_JWT_EXPIRED); /* now >= exp */
    assert_int_equal(verify(t, &pol, NOW + 100000), WEFT_JWT_EXPIRED);
    free(t);
}

static void test_jwt_exp_leeway(void **state)
{
    (void)state;
    weft_jwt_policy pol = full_policy();
    char *t = tok_es(good_payload());
    pol.leeway_s = 60;
    assert_int_equal(verify(t, &pol, NOW + 630), WEFT_JWT_OK);
    assert_int_equal(verify(t, &pol, NOW + 659), WEFT_JWT_OK);
    assert_int_equal(verify(t, &pol, NOW + 660), WEFT_JWT_EXPIRED);
    pol.leeway_s = 30;
    assert_int_equal(verify(t, &pol, NOW + 630), WEFT_JWT_EXPIRED);
    free(t);
    /* fractional NumericDate */
    t = tok_hs(fmt("{\"exp\":%lld.5}", (long long)NOW));
    pol = (weft_jwt_policy){0};
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_OK);
    assert_int_equal(verify(t, &pol, NOW + 1), WEFT_JWT_EXPIRED);
    free(t);
}

static void test_jwt_require_exp(void **state)
{
    (void)state;
    weft_jwt_policy pol = {0};
    char *t = tok_hs("{\"sub\":\"alice\"}");
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_OK);
    pol.require_exp = true;
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_EXPIRED); /* documented choice */
    free(t);
}

static void test_jwt_nbf(void **state)
{
    (void)state;
    weft_jwt_policy pol = {0};
    char *t =
        tok_rs(fmt("{\"nbf\":%lld,\"exp\":%lld}", (long long)(NOW + 10), (long long)(NOW + 600)));
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_NOT_YET_VALID);
    assert_int_equal(verify(t, &pol, NOW + 9), WEFT_JWT_NOT_YET_VALID);
    assert_int_equal(verify(t, &pol, NOW + 10), WEFT_JWT_OK);
    pol.leeway_s = 10;
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_OK);
    pol.leeway_s = 9;
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_NOT_YET_VALID);
    free(t);
}

static void test_jwt_issuer(void **state)
{
    (void)state;
    weft_jwt_policy pol = full_policy();
    const char *bad[] = {
        "{\"iss\":\"https://evil.example\",\"aud\":\"api\"}",
        "{\"iss\":\"https://issuer.exampl\",\"aud\":\"api\"}",
        "{\"iss\":\"https://issuer.example/\",\"aud\":\"api\"}",
        "{\"aud\":\"api\"}",
        "{\"iss\":[\"https://issuer.example\"],\"aud\":\"api\"}",
    };
    for (size_t i = 0; i < WEFT_ARRAY_LEN(bad); i++) {
        char *t = tok_hs(bad[i]);
        int rc = verify(t, &pol, NOW);
        if (rc != WEFT_JWT_BAD_ISSUER)
            fail_msg("payload %s: got %d, want %d", bad[i], rc, WEFT_JWT_BAD_ISSUER);
        free(t);
    }
    /* no issuer in the policy: iss is not examined */
    pol.issuer = NULL;
    char *t = tok_hs(bad[0]);
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_OK);
    free(t);
}

static void test_jwt_audience(void **state)
{
    (void)state;
    weft_jwt_policy pol = full_policy();
    const char *bad[] = {
        "{\"iss\":\"" ISSUER "\",\"aud\":\"other\"}",
        "{\"iss\":\"" ISSUER "\",\"aud\":\"ap\"}",
        "{\"iss\":\"" ISSUER "\"}",
        "{\"iss\":\"" ISSUER "\",\"aud\":[]}",
        "{\"iss\":\"" ISSUER "\",\"aud\":[\"x\",\"y\"]}",
        "{\"iss\":\"" ISSUER "\",\"aud\":1}",
        "{\"iss\":\"" ISSUER "\",\"aud\":[[\"api\"]]}",
    };
    for (size_t i = 0; i < WEFT_ARRAY_LEN(bad); i++) {
        char *t = tok_es(bad[i]);
        int rc = verify(t, &pol, NOW);
        if (rc != WEFT_JWT_BAD_AUDIENCE)
            fail_msg("payload %s: got %d, want %d", bad[i], rc, WEFT_JWT_BAD_AUDIENCE);
        free(t);
    }
}

static void test_jwt_audience_array(void **state)
{
    (void)state;
    weft_jwt_policy pol = full_policy();
    char *t = tok_rs("{\"iss\":\"" ISSUER "\",\"aud\":[\"billing\",7,\"api\"]}");
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_OK);
    free(t);
    /* several allowed audiences: any one is enough */
    const char *const auds[] = {"admin", "billing"};
    pol.audiences = auds;
    pol.naud = 2;
    t = tok_rs("{\"iss\":\"" ISSUER "\",\"aud\":\"billing\"}");
    assert_int_equal(verify(t, &pol, NOW), WEFT_JWT_OK);
    free(t);
}

/* ------------------------------------------------------------------ */
/* misc */

static void test_jwt_strerror(void **state)
{
    (void)state;
    assert_string_equal(weft_jwt_strerror(WEFT_JWT_EXPIRED), "token expired");
    assert_string_equal(weft_jwt_strerror(WEFT_JWT_BAD_SIGNATURE), "invalid signature");
    assert_string_equal(weft_jwt_strerror(WEFT_JWT_MALFORMED), "malformed token");
    assert_string_equal(weft_jwt_strerror(WEFT_JWT_BAD_ALG), "algorithm not allowed");
    assert_string_equal(weft_jwt_strerror(WEFT_JWT_NO_KEY), "no matching key");
    assert_string_equal(weft_jwt_strerror(WEFT_JWT_NOT_YET_VALID), "token not yet valid");
    assert_string_equal(weft_jwt_strerror(WEFT_JWT_BAD_ISSUER), "invalid issuer");
    assert_string_equal(weft_jwt_strerror(WEFT_JWT_BAD_AUDIENCE), "invalid audience");
    assert_string_equal(weft_jwt_strerror(WEFT_JWT_OK), "valid token");
    assert_string_equal(weft_jwt_strerror(-99), "unknown error");
    /* usable inside a quoted WWW-Authenticate parameter */
    for (int r = 0; r >= -9; r--)
        assert_null(strpbrk(weft_jwt_strerror(r), "\"\\"));
}

struct thread_arg {
    const char *toks[3];
    int failures;
};

static void *verify_thread(void *p)
{
    struct thread_arg *a = p;
    weft_jwt_policy pol = full_policy();
    for (int i = 0; i < 60; i++)
        if (weft_jwt_verify(g_jwks, &pol, weft_str_from(a->toks[i % 3]), NOW, NULL) != WEFT_JWT_OK)
            a->failures++;
    return NULL;
}

static void test_jwt_shared_keys_across_threads(void **state)
{
    (void)state;
    char *hs = tok_hs(good_payload()), *rs = tok_rs(good_payload()), *es = tok_es(good_payload());
    pthread_t th[4];
    struct thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (struct thread_arg){{hs, rs, es}, 0};
        assert_int_equal(pthread_create(&th[i], NULL, verify_thread, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    free(hs);
    free(rs);
    free(es);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_apikey_hash_known_vectors),
        cmocka_unit_test(test_apikeys_match),
        cmocka_unit_test(test_apikeys_empty_set),
        cmocka_unit_test(test_apikeys_add_rejects_malformed),
        cmocka_unit_test(test_apikeys_uppercase_hex_and_duplicates),
        cmocka_unit_test(test_apikeys_many),
        cmocka_unit_test(test_jwks_fixture_loads),
        cmocka_unit_test(test_jwks_not_json),
        cmocka_unit_test(test_jwks_missing_keys),
        cmocka_unit_test(test_jwks_bad_rsa),
        cmocka_unit_test(test_jwks_bad_ec_and_oct),
        cmocka_unit_test(test_jwks_alg_must_fit_kty),
        cmocka_unit_test(test_jwks_unsupported_only),
        cmocka_unit_test(test_jwks_skips_unsupported_keeps_rest),
        cmocka_unit_test(test_jwks_size_and_file_errors),
        cmocka_unit_test(test_jwt_hs256_valid),
        cmocka_unit_test(test_jwt_rs256_valid),
        cmocka_unit_test(test_jwt_es256_valid),
        cmocka_unit_test(test_jwt_without_kid_tries_keys_of_the_alg),
        cmocka_unit_test(test_jwt_tampered_signatures),
        cmocka_unit_test(test_jwt_tampered_payload),
        cmocka_unit_test(test_jwt_signed_by_other_key),
        cmocka_unit_test(test_jwt_es256_signature_length),
        cmocka_unit_test(test_jwt_hs256_signature_length),
        cmocka_unit_test(test_jwt_alg_none),
        cmocka_unit_test(test_jwt_alg_confusion),
        cmocka_unit_test(test_jwt_alg_policy_mask),
        cmocka_unit_test(test_jwt_unknown_kid),
        cmocka_unit_test(test_jwt_no_key_of_alg_type),
        cmocka_unit_test(test_jwt_part_count),
        cmocka_unit_test(test_jwt_bad_base64),
        cmocka_unit_test(test_jwt_padding_rejected),
        cmocka_unit_test(test_jwt_noncanonical_base64),
        cmocka_unit_test(test_jwt_bad_header),
        cmocka_unit_test(test_jwt_bad_payload),
        cmocka_unit_test(test_jwt_empty_signature),
        cmocka_unit_test(test_jwt_too_long),
        cmocka_unit_test(test_jwt_expired),
        cmocka_unit_test(test_jwt_exp_leeway),
        cmocka_unit_test(test_jwt_require_exp),
        cmocka_unit_test(test_jwt_nbf),
        cmocka_unit_test(test_jwt_issuer),
        cmocka_unit_test(test_jwt_audience),
        cmocka_unit_test(test_jwt_audience_array),
        cmocka_unit_test(test_jwt_strerror),
        cmocka_unit_test(test_jwt_shared_keys_across_threads),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
