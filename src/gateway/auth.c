/*
 * auth.c — API-key matching and JWT (JWS compact, RFC 7515/7519) verification.
 *
 * API keys are kept only as SHA-256 digests. A presented key is hashed once
 * and compared with CRYPTO_memcmp against every stored digest, without
 * stopping at the first match, so the time taken does not depend on which
 * key (if any) matched. Adding the same digest twice is refused (WEFT_EEXIST)
 * because a match must name exactly one consumer.
 *
 * JWKS documents are parsed once into ready EVP_PKEYs (built from the JWK
 * parameters with OSSL_PARAM_BLD + EVP_PKEY_fromdata) and raw HMAC secrets,
 * so the request path does no key parsing. The loader is strict: a key with a
 * malformed field fails the whole document with "keys[i]: field ...", since
 * a half-loaded key set is a silent outage. Keys we cannot use are skipped
 * instead (kty other than RSA/EC/oct, curves other than P-256, "use" other
 * than "sig", a JWK "alg" outside HS256/RS256/ES256); a document with no
 * usable key at all is an error. Bounds that keep one request's work small:
 * document <= 1 MiB, <= 100 keys, RSA modulus 2048..8192 bits (RFC 7518
 * 3.3 sets the 2048 floor), HMAC secrets >= 32 bytes (RFC 7518 3.2).
 *
 * Verification order: size (<= 16 KiB) and structure (exactly three
 * non-empty dot-separated parts of strict base64url: no padding, no '+' or
 * '/', zero trailing bits), header (JSON object, "alg" string, optional
 * string "kid"/"typ", no "crit" since we implement no extensions), alg
 * (known, in the policy mask), key selection, signature, and only then the
 * payload is decoded and parsed, so unauthenticated claims are never looked
 * at. "alg" is checked before the signature is required to be non-empty, so
 * an unsigned "none" token reports BAD_ALG rather than MALFORMED.
 *
 * Key selection: with a "kid", only keys carrying that kid are candidates
 * (none: NO_KEY); a candidate whose type or JWK "alg" does not fit the token
 * alg is a BAD_ALG (this is what stops alg confusion: an RSA key is never an
 * HMAC secret). Without a "kid", every key of the alg's type is tried and the
 * first that verifies wins; if there is none, NO_KEY.
 *
 * Claims: exp and nbf, when present, must be JSON numbers (else MALFORMED);
 * expired when now >= exp + leeway, not yet valid when now + leeway < nbf. A
 * missing exp under require_exp is reported as WEFT_JWT_EXPIRED: the contract
 * has no separate code, and a token with no lifetime is treated like one
 * whose lifetime is over. iss and aud are only examined when the policy asks;
 * a missing or wrongly typed claim is then BAD_ISSUER / BAD_AUDIENCE.
 * Duplicate member names in header or payload are MALFORMED (jansson's
 * JSON_REJECT_DUPLICATES) so two parsers cannot disagree about a claim.
 */
#include "gateway/auth.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>

#define JWKS_MAX_BYTES (1u << 20)
#define JWKS_MAX_KEYS 100
#define JWT_MAX_BYTES (16u * 1024)
#define RSA_MIN_BYTES 256  /* 2048 bits */
#define RSA_MAX_BYTES 1024 /* 8192 bits */
#define RSA_MAX_E_BYTES 8
#define HMAC_MIN_BYTES 32
#define SHA256_LEN 32
#define APIKEY_PREFIX "sha256:"
#define APIKEY_PREFIX_LEN 7
#define APIKEY_TEXT_LEN (APIKEY_PREFIX_LEN + 2 * SHA256_LEN)

static const char hex_digits[] = "0123456789abcdef";

/* ------------------------------------------------------------------ */
/* API keys */

struct apikey {
    char *name;
    unsigned char digest[SHA256_LEN];
};

struct weft_apikeys {
    struct apikey *v;
    size_t n, cap;
    EVP_MD *sha256; /* fetched once: the match path hashes every request */
};

weft_apikeys *weft_apikeys_new(void)
{
    weft_apikeys *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (!s->sha256) {
        free(s);
        return NULL;
    }
    return s;
}

void weft_apikeys_free(weft_apikeys *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i].name);
    free(s->v);
    EVP_MD_free(s->sha256);
    free(s);
}

int weft_apikeys_add(weft_apikeys *s, const char *name, const char *hashed)
{
    unsigned char digest[SHA256_LEN];

    if (!s || !name || !*name || !hashed)
        return WEFT_EINVAL;
    if (strlen(hashed) != APIKEY_TEXT_LEN || memcmp(hashed, APIKEY_PREFIX, APIKEY_PREFIX_LEN) != 0)
        return WEFT_EINVAL;
    const unsigned char *hx = (const unsigned char *)hashed + APIKEY_PREFIX_LEN;
    for (size_t i = 0; i < SHA256_LEN; i++) {
        int hi = weft_hexval(hx[2 * i]), lo = weft_hexval(hx[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return WEFT_EINVAL;
        digest[i] = (unsigned char)(hi << 4 | lo);
    }
    /* Config time, not secret-dependent timing: a plain compare is fine. */
    for (size_t i = 0; i < s->n; i++)
        if (memcmp(s->v[i].digest, digest, SHA256_LEN) == 0)
            return WEFT_EEXIST;
    if (s->n == s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 8;
        struct apikey *nv = realloc(s->v, ncap * sizeof(*nv));
        if (!nv)
            return WEFT_ENOMEM;
        s->v = nv;
        s->cap = ncap;
    }
    char *dup = strdup(name);
    if (!dup)
        return WEFT_ENOMEM;
    s->v[s->n].name = dup;
    memcpy(s->v[s->n].digest, digest, SHA256_LEN);
    s->n++;
    return 0;
}

const char *weft_apikeys_match(const weft_apikeys *s, weft_str presented)
{
    unsigned char digest[SHA256_LEN];
    unsigned int dlen = 0;

    if (!s || !presented.p || presented.n == 0 || s->n == 0)
        return NULL;
    if (!EVP_Digest(presented.p, presented.n, digest, &dlen, s->sha256, NULL) ||
        dlen != SHA256_LEN) {
        ERR_clear_error();
        return NULL;
    }
    /* Visit every key and select with masks, not branches, so neither the
     * position of the match nor its existence shows in the timing. */
    size_t found = 0, idx = 0;
    for (size_t i = 0; i < s->n; i++) {
        size_t eq = (size_t)0 - (size_t)(CRYPTO_memcmp(digest, s->v[i].digest, SHA256_LEN) == 0);
        eq &= ~found; /* keep the first match (digests are unique anyway) */
        idx = (idx & ~eq) | (i & eq);
        found |= eq;
    }
    OPENSSL_cleanse(digest, sizeof(digest));
    return found ? s->v[idx].name : NULL;
}

void weft_apikey_hash(weft_str key, char *out)
{
    unsigned char digest[SHA256_LEN];
    unsigned int dlen = 0;

    if (!out)
        return;
    out[0] = '\0';
    if (!EVP_Digest(key.p ? key.p : "", key.p ? key.n : 0, digest, &dlen, EVP_sha256(), NULL) ||
        dlen != SHA256_LEN) {
        ERR_clear_error();
        return;
    }
    memcpy(out, APIKEY_PREFIX, APIKEY_PREFIX_LEN);
    char *o = out + APIKEY_PREFIX_LEN;
    for (size_t i = 0; i < SHA256_LEN; i++) {
        *o++ = hex_digits[digest[i] >> 4];
        *o++ = hex_digits[digest[i] & 15];
    }
    *o = '\0';
}

/* ------------------------------------------------------------------ */
/* base64url (RFC 4648 section 5), strict */

static int b64url_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

static bool b64url_valid(const char *in, size_t n)
{
    if (n % 4 == 1)
        return false;
    for (size_t i = 0; i < n; i++)
        if (b64url_val((unsigned char)in[i]) < 0)
            return false;
    /* The bits past the last whole byte must be zero: one encoding per
     * value, so a token cannot be altered without changing its bytes. */
    if (n % 4 == 2 && (b64url_val((unsigned char)in[n - 1]) & 0x0f))
        return false;
    if (n % 4 == 3 && (b64url_val((unsigned char)in[n - 1]) & 0x03))
        return false;
    return true;
}

static size_t b64url_decoded_len(size_t n)
{
    return n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
}

/* Decode n chars into out (room for b64url_decoded_len(n) bytes).
 * Returns the byte count, or -1 if the input is not strict base64url. */
static long b64url_decode(const char *in, size_t n, unsigned char *out)
{
    if (!b64url_valid(in, n))
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    unsigned bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 6) | (uint32_t)b64url_val((unsigned char)in[i]);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    return (long)o;
}

/* ------------------------------------------------------------------ */
/* JWKS */

enum key_kind { KIND_OCT, KIND_RSA, KIND_EC };

struct jwk {
    enum key_kind kind;
    char *kid;             /* NULL when absent */
    unsigned alg;          /* WEFT_JWT_* bit from the JWK "alg", 0 when absent */
    EVP_PKEY *pkey;        /* RSA and EC */
    unsigned char *secret; /* oct */
    size_t secret_len;
};

struct weft_jwks {
    struct jwk *keys;
    size_t n;
    EVP_MD *sha256; /* fetched once for all verifications */
    EVP_MAC *hmac;
};

static void seterr(char *buf, size_t len, const char *fmt, ...) WEFT_PRINTF(3, 4);
static void seterr(char *buf, size_t len, const char *fmt, ...)
{
    if (!buf || len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

static unsigned alg_from_name(const char *s)
{
    if (strcmp(s, "HS256") == 0)
        return WEFT_JWT_HS256;
    if (strcmp(s, "RS256") == 0)
        return WEFT_JWT_RS256;
    if (strcmp(s, "ES256") == 0)
        return WEFT_JWT_ES256;
    return 0;
}

static enum key_kind kind_for_alg(unsigned alg)
{
    return alg == WEFT_JWT_HS256 ? KIND_OCT : alg == WEFT_JWT_RS256 ? KIND_RSA : KIND_EC;
}

static void jwk_release(struct jwk *k)
{
    free(k->kid);
    EVP_PKEY_free(k->pkey);
    if (k->secret) {
        OPENSSL_cleanse(k->secret, k->secret_len);
        free(k->secret);
    }
    memset(k, 0, sizeof(*k));
}

void weft_jwks_free(weft_jwks *k)
{
    if (!k)
        return;
    for (size_t i = 0; i < k->n; i++)
        jwk_release(&k->keys[i]);
    free(k->keys);
    EVP_MD_free(k->sha256);
    EVP_MAC_free(k->hmac);
    free(k);
}

size_t weft_jwks_count(const weft_jwks *k)
{
    return k ? k->n : 0;
}

/* Decode the base64url string member `field` of key `idx` into a fresh
 * buffer. Returns 0, or a WEFT_E* code with errbuf set. */
static int jwk_bytes(json_t *obj, size_t idx, const char *field, unsigned char **out,
                     size_t *outlen, char *errbuf, size_t errlen)
{
    json_t *v = json_object_get(obj, field);
    if (!v) {
        seterr(errbuf, errlen, "keys[%zu]: missing field \"%s\"", idx, field);
        return WEFT_ECONFIG;
    }
    if (!json_is_string(v)) {
        seterr(errbuf, errlen, "keys[%zu]: field \"%s\" must be a string", idx, field);
        return WEFT_ECONFIG;
    }
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (n == 0) {
        seterr(errbuf, errlen, "keys[%zu]: field \"%s\" is empty", idx, field);
        return WEFT_ECONFIG;
    }
    unsigned char *buf = malloc(b64url_decoded_len(n) + 1);
    if (!buf) {
        seterr(errbuf, errlen, "out of memory");
        return WEFT_ENOMEM;
    }
    long got = b64url_decode(s, n, buf);
    if (got < 0) {
        free(buf);
        seterr(errbuf, errlen, "keys[%zu]: field \"%s\" is not unpadded base64url", idx, field);
        return WEFT_ECONFIG;
    }
    *out = buf;
    *outlen = (size_t)got;
    return 0;
}

/* Build a public EVP_PKEY of type `type` from params. */
static EVP_PKEY *pkey_from_params(const char *type, OSSL_PARAM_BLD *bld)
{
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (!params || !ctx)
        goto out;
    if (EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pkey = NULL;
out:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pkey;
}

static int jwk_load_rsa(json_t *obj, size_t idx, struct jwk *k, char *errbuf, size_t errlen)
{
    unsigned char *n = NULL, *e = NULL;
    size_t nlen = 0, elen = 0;
    BIGNUM *bn_n = NULL, *bn_e = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    int rc;

    if ((rc = jwk_bytes(obj, idx, "n", &n, &nlen, errbuf, errlen)) < 0)
        goto out;
    if ((rc = jwk_bytes(obj, idx, "e", &e, &elen, errbuf, errlen)) < 0)
        goto out_free_n;
    /* Leading zero octets are not canonical (RFC 7518 6.3.1.1) but harmless. */
    size_t nskip = 0, eskip = 0;
    while (nskip < nlen && n[nskip] == 0)
        nskip++;
    while (eskip < elen && e[eskip] == 0)
        eskip++;
    rc = WEFT_ECONFIG;
    if (nlen - nskip < RSA_MIN_BYTES || nlen - nskip > RSA_MAX_BYTES) {
        seterr(errbuf, errlen, "keys[%zu]: field \"n\": modulus of %zu bits, need 2048..8192", idx,
               (nlen - nskip) * 8);
        goto out_free_e;
    }
    if (!(n[nlen - 1] & 1)) {
        seterr(errbuf, errlen, "keys[%zu]: field \"n\": modulus is even", idx);
        goto out_free_e;
    }
    if (elen - eskip == 0 || elen - eskip > RSA_MAX_E_BYTES || !(e[elen - 1] & 1) ||
        (elen - eskip == 1 && e[elen - 1] < 3)) {
        seterr(errbuf, errlen, "keys[%zu]: field \"e\": exponent must be odd, >= 3, <= 64 bits",
               idx);
        goto out_free_e;
    }
    rc = WEFT_ENOMEM;
    bn_n = BN_bin2bn(n + nskip, (int)(nlen - nskip), NULL);
    bn_e = BN_bin2bn(e + eskip, (int)(elen - eskip), NULL);
    bld = OSSL_PARAM_BLD_new();
    if (!bn_n || !bn_e || !bld || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn_n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, bn_e)) {
        seterr(errbuf, errlen, "keys[%zu]: out of memory", idx);
        goto out_free_bld;
    }
    k->pkey = pkey_from_params("RSA", bld);
    if (!k->pkey) {
        rc = WEFT_ECONFIG;
        seterr(errbuf, errlen, "keys[%zu]: fields \"n\"/\"e\": OpenSSL rejected the RSA key", idx);
        goto out_free_bld;
    }
    k->kind = KIND_RSA;
    rc = 0;
out_free_bld:
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn_n);
    BN_free(bn_e);
out_free_e:
    free(e);
out_free_n:
    free(n);
out:
    return rc;
}

static int jwk_load_ec(json_t *obj, size_t idx, struct jwk *k, char *errbuf, size_t errlen)
{
    unsigned char *x = NULL, *y = NULL;
    size_t xlen = 0, ylen = 0;
    unsigned char point[1 + 2 * 32];
    OSSL_PARAM_BLD *bld = NULL;
    EVP_PKEY_CTX *chk = NULL;
    int rc;

    if ((rc = jwk_bytes(obj, idx, "x", &x, &xlen, errbuf, errlen)) < 0)
        goto out;
    if ((rc = jwk_bytes(obj, idx, "y", &y, &ylen, errbuf, errlen)) < 0)
        goto out_free_x;
    rc = WEFT_ECONFIG;
    if (xlen != 32) {
        seterr(errbuf, errlen, "keys[%zu]: field \"x\": %zu bytes, P-256 needs 32", idx, xlen);
        goto out_free_y;
    }
    if (ylen != 32) {
        seterr(errbuf, errlen, "keys[%zu]: field \"y\": %zu bytes, P-256 needs 32", idx, ylen);
        goto out_free_y;
    }
    point[0] = 0x04; /* SEC 1 uncompressed point: 04 || x || y */
    memcpy(point + 1, x, 32);
    memcpy(point + 33, y, 32);
    bld = OSSL_PARAM_BLD_new();
    if (!bld ||
        !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, sizeof(point))) {
        rc = WEFT_ENOMEM;
        seterr(errbuf, errlen, "keys[%zu]: out of memory", idx);
        goto out_free_bld;
    }
    k->pkey = pkey_from_params("EC", bld);
    /* fromdata already refuses points off the curve; the explicit check
     * also covers the point at infinity and subgroup membership. */
    if (k->pkey)
        chk = EVP_PKEY_CTX_new_from_pkey(NULL, k->pkey, NULL);
    if (!k->pkey || !chk || EVP_PKEY_public_check(chk) != 1) {
        seterr(errbuf, errlen, "keys[%zu]: fields \"x\"/\"y\": not a point on P-256", idx);
        EVP_PKEY_free(k->pkey);
        k->pkey = NULL;
        goto out_free_bld;
    }
    k->kind = KIND_EC;
    rc = 0;
out_free_bld:
    EVP_PKEY_CTX_free(chk);
    OSSL_PARAM_BLD_free(bld);
out_free_y:
    free(y);
out_free_x:
    free(x);
out:
    return rc;
}

static int jwk_load_oct(json_t *obj, size_t idx, struct jwk *k, char *errbuf, size_t errlen)
{
    int rc = jwk_bytes(obj, idx, "k", &k->secret, &k->secret_len, errbuf, errlen);
    if (rc < 0)
        return rc;
    if (k->secret_len < HMAC_MIN_BYTES) {
        seterr(errbuf, errlen, "keys[%zu]: field \"k\": %zu-byte secret, HS256 needs >= %d", idx,
               k->secret_len, HMAC_MIN_BYTES);
        return WEFT_ECONFIG;
    }
    k->kind = KIND_OCT;
    return 0;
}

/* Optional string member: NULL when absent, error when of another type. */
static int jwk_opt_string(json_t *obj, size_t idx, const char *field, const char **out,
                          char *errbuf, size_t errlen)
{
    json_t *v = json_object_get(obj, field);
    *out = NULL;
    if (!v)
        return 0;
    if (!json_is_string(v)) {
        seterr(errbuf, errlen, "keys[%zu]: field \"%s\" must be a string", idx, field);
        return WEFT_ECONFIG;
    }
    *out = json_string_value(v);
    return 0;
}

/* Load keys[idx] into k. Returns 0 (loaded), 1 (skipped: not for us), or
 * a negative code with errbuf set. On anything but 0, k holds nothing. */
static int jwk_load(json_t *obj, size_t idx, struct jwk *k, char *errbuf, size_t errlen)
{
    const char *kty, *kid, *alg, *use, *crv;
    int rc;

    memset(k, 0, sizeof(*k));
    if (!json_is_object(obj)) {
        seterr(errbuf, errlen, "keys[%zu]: not a JSON object", idx);
        return WEFT_ECONFIG;
    }
    if ((rc = jwk_opt_string(obj, idx, "kty", &kty, errbuf, errlen)) < 0 ||
        (rc = jwk_opt_string(obj, idx, "kid", &kid, errbuf, errlen)) < 0 ||
        (rc = jwk_opt_string(obj, idx, "alg", &alg, errbuf, errlen)) < 0 ||
        (rc = jwk_opt_string(obj, idx, "use", &use, errbuf, errlen)) < 0)
        return rc;
    if (!kty) {
        seterr(errbuf, errlen, "keys[%zu]: missing field \"kty\"", idx);
        return WEFT_ECONFIG;
    }
    if (use && strcmp(use, "sig") != 0)
        return 1; /* an encryption key is not a verification key */
    unsigned a = 0;
    if (alg && !(a = alg_from_name(alg)))
        return 1; /* e.g. RS384 or PS256: valid JOSE, not ours */

    if (strcmp(kty, "RSA") == 0) {
        if (a && a != WEFT_JWT_RS256)
            goto bad_alg;
        rc = jwk_load_rsa(obj, idx, k, errbuf, errlen);
    } else if (strcmp(kty, "EC") == 0) {
        if ((rc = jwk_opt_string(obj, idx, "crv", &crv, errbuf, errlen)) < 0)
            return rc;
        if (!crv) {
            seterr(errbuf, errlen, "keys[%zu]: missing field \"crv\"", idx);
            return WEFT_ECONFIG;
        }
        if (strcmp(crv, "P-256") != 0)
            return 1;
        if (a && a != WEFT_JWT_ES256)
            goto bad_alg;
        rc = jwk_load_ec(obj, idx, k, errbuf, errlen);
    } else if (strcmp(kty, "oct") == 0) {
        if (a && a != WEFT_JWT_HS256)
            goto bad_alg;
        rc = jwk_load_oct(obj, idx, k, errbuf, errlen);
    } else {
        return 1;
    }
    if (rc < 0)
        goto fail;
    k->alg = a;
    if (kid && !(k->kid = strdup(kid))) {
        seterr(errbuf, errlen, "out of memory");
        rc = WEFT_ENOMEM;
        goto fail;
    }
    return 0;

bad_alg:
    seterr(errbuf, errlen, "keys[%zu]: field \"alg\": \"%s\" does not fit kty \"%s\"", idx, alg,
           kty);
    return WEFT_ECONFIG;
fail:
    jwk_release(k);
    return rc;
}

int weft_jwks_load_json(const char *json, size_t len, weft_jwks **out, char *errbuf, size_t errlen)
{
    json_error_t jerr;
    json_t *doc = NULL;
    weft_jwks *ks = NULL;
    size_t skipped = 0;
    int rc;

    if (out)
        *out = NULL;
    if (errbuf && errlen)
        errbuf[0] = '\0';
    if (!out || (!json && len)) {
        seterr(errbuf, errlen, "invalid argument");
        return WEFT_EINVAL;
    }
    if (len > JWKS_MAX_BYTES) {
        seterr(errbuf, errlen, "JWKS document of %zu bytes exceeds the %u-byte limit", len,
               JWKS_MAX_BYTES);
        return WEFT_ETOOBIG;
    }
    doc = json_loadb(json ? json : "", len, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) {
        seterr(errbuf, errlen, "JWKS is not valid JSON: %s (line %d, column %d)", jerr.text,
               jerr.line, jerr.column);
        return WEFT_ECONFIG;
    }
    rc = WEFT_ECONFIG;
    json_t *arr = json_is_object(doc) ? json_object_get(doc, "keys") : NULL;
    if (!arr) {
        seterr(errbuf, errlen, "JWKS must be an object with a \"keys\" array");
        goto fail_doc;
    }
    if (!json_is_array(arr)) {
        seterr(errbuf, errlen, "JWKS field \"keys\" must be an array");
        goto fail_doc;
    }
    size_t total = json_array_size(arr);
    if (total > JWKS_MAX_KEYS) {
        seterr(errbuf, errlen, "JWKS has %zu keys, the limit is %d", total, JWKS_MAX_KEYS);
        rc = WEFT_ETOOBIG;
        goto fail_doc;
    }
    rc = WEFT_ENOMEM;
    ks = calloc(1, sizeof(*ks));
    if (!ks || (total && !(ks->keys = calloc(total, sizeof(*ks->keys))))) {
        seterr(errbuf, errlen, "out of memory");
        goto fail_keys;
    }
    ks->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    ks->hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (!ks->sha256 || !ks->hmac) {
        seterr(errbuf, errlen, "OpenSSL lacks SHA256 or HMAC");
        rc = WEFT_EUNSUPPORTED;
        goto fail_keys;
    }
    for (size_t i = 0; i < total; i++) {
        rc = jwk_load(json_array_get(arr, i), i, &ks->keys[ks->n], errbuf, errlen);
        if (rc < 0)
            goto fail_keys;
        if (rc == 1)
            skipped++;
        else
            ks->n++;
    }
    if (ks->n == 0) {
        seterr(errbuf, errlen,
               "JWKS has no usable key (%zu skipped; supported: RSA, EC P-256, oct with "
               "HS256/RS256/ES256)",
               skipped);
        rc = WEFT_ECONFIG;
        goto fail_keys;
    }
    json_decref(doc);
    *out = ks;
    return 0;

fail_keys:
    weft_jwks_free(ks);
    ERR_clear_error();
fail_doc:
    json_decref(doc);
    return rc;
}

int weft_jwks_load_file(const char *path, weft_jwks **out, char *errbuf, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    int rc;

    if (out)
        *out = NULL;
    if (!path || !out) {
        seterr(errbuf, errlen, "invalid argument");
        return WEFT_EINVAL;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        seterr(errbuf, errlen, "%s: %s", path, strerror(e));
        return weft_err_from_errno(e);
    }
    /* Read one byte past the limit to tell "exactly 1 MiB" from "more". */
    buf = malloc(JWKS_MAX_BYTES + 1);
    if (!buf) {
        seterr(errbuf, errlen, "out of memory");
        rc = WEFT_ENOMEM;
        goto fail_close;
    }
    len = fread(buf, 1, JWKS_MAX_BYTES + 1, f);
    if (ferror(f)) {
        seterr(errbuf, errlen, "%s: read error", path);
        rc = WEFT_EIO;
        goto fail_free;
    }
    if (len > JWKS_MAX_BYTES) {
        seterr(errbuf, errlen, "%s: larger than the %u-byte JWKS limit", path, JWKS_MAX_BYTES);
        rc = WEFT_ETOOBIG;
        goto fail_free;
    }
    rc = weft_jwks_load_json(buf, len, out, errbuf, errlen);
    if (rc < 0 && errbuf && errlen) {
        /* Prefix the path so a config error points at its file. */
        char tmp[512];
        snprintf(tmp, sizeof(tmp), "%s", errbuf);
        seterr(errbuf, errlen, "%s: %s", path, tmp);
    }
fail_free:
    free(buf);
fail_close:
    fclose(f);
    return rc;
}

/* ------------------------------------------------------------------ */
/* JWT verification */

/* JWS ES256 signatures are R || S, 32 bytes each (RFC 7518 3.4); OpenSSL
 * wants DER: SEQUENCE { INTEGER r, INTEGER s }. Each INTEGER is minimal
 * big-endian with a 0x00 prefix when the top bit is set, so at most
 * 2 + 33 bytes and the SEQUENCE length always fits in one byte. */
static size_t der_integer(const unsigned char *v, size_t n, unsigned char *out)
{
    size_t skip = 0;
    while (skip < n - 1 && v[skip] == 0)
        skip++;
    size_t len = n - skip;
    bool pad = (v[skip] & 0x80) != 0;
    out[0] = 0x02;
    out[1] = (unsigned char)(len + pad);
    size_t o = 2;
    if (pad)
        out[o++] = 0x00;
    memcpy(out + o, v + skip, len);
    return o + len;
}

static size_t ecdsa_raw_to_der(const unsigned char raw[64], unsigned char der[72])
{
    size_t n = 2;
    n += der_integer(raw, 32, der + n);
    n += der_integer(raw + 32, 32, der + n);
    der[0] = 0x30;
    der[1] = (unsigned char)(n - 2);
    return n;
}

static bool verify_hmac(const weft_jwks *ks, const struct jwk *k, const char *msg, size_t msglen,
                        const unsigned char *sig, size_t siglen)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    size_t maclen = 0;
    bool ok = false;
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };

    if (siglen != SHA256_LEN)
        return false;
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(ks->hmac);
    if (!ctx)
        return false;
    if (EVP_MAC_init(ctx, k->secret, k->secret_len, params) == 1 &&
        EVP_MAC_update(ctx, (const unsigned char *)msg, msglen) == 1 &&
        EVP_MAC_final(ctx, mac, &maclen, sizeof(mac)) == 1 && maclen == SHA256_LEN)
        ok = CRYPTO_memcmp(mac, sig, SHA256_LEN) == 0;
    EVP_MAC_CTX_free(ctx);
    OPENSSL_cleanse(mac, sizeof(mac));
    return ok;
}

static bool verify_pkey(const weft_jwks *ks, const struct jwk *k, const char *msg, size_t msglen,
                        const unsigned char *sig, size_t siglen)
{
    unsigned char der[72];
    EVP_PKEY_CTX *pctx = NULL;
    bool ok = false;

    if (k->kind == KIND_EC) {
        if (siglen != 64)
            return false;
        siglen = ecdsa_raw_to_der(sig, der);
        sig = der;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx)
        return false;
    if (EVP_DigestVerifyInit(ctx, &pctx, ks->sha256, NULL, k->pkey) != 1)
        goto out;
    if (k->kind == KIND_RSA && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0)
        goto out;
    ok = EVP_DigestVerify(ctx, sig, siglen, (const unsigned char *)msg, msglen) == 1;
out:
    EVP_MD_CTX_free(ctx);
    return ok;
}

static bool key_verifies(const weft_jwks *ks, const struct jwk *k, const char *msg, size_t msglen,
                         const unsigned char *sig, size_t siglen)
{
    bool ok = k->kind == KIND_OCT ? verify_hmac(ks, k, msg, msglen, sig, siglen)
                                  : verify_pkey(ks, k, msg, msglen, sig, siglen);
    /* Failed verifies leave entries in the thread's OpenSSL error queue;
     * clear them so a long-lived worker does not accumulate them. */
    if (!ok)
        ERR_clear_error();
    return ok;
}

static bool key_fits(const struct jwk *k, unsigned alg)
{
    return k->kind == kind_for_alg(alg) && (k->alg == 0 || k->alg == alg);
}

/* Find a key that verifies the signature; returns a WEFT_JWT_* result. */
static int check_signature(const weft_jwks *ks, unsigned alg, json_t *kid, const char *msg,
                           size_t msglen, const unsigned char *sig, size_t siglen)
{
    bool candidate = false, wrong_kind = false;

    for (size_t i = 0; i < ks->n; i++) {
        const struct jwk *k = &ks->keys[i];
        if (kid) {
            if (!k->kid || strlen(k->kid) != json_string_length(kid) ||
                memcmp(k->kid, json_string_value(kid), json_string_length(kid)) != 0)
                continue;
            if (!key_fits(k, alg)) {
                wrong_kind = true;
                continue;
            }
        } else if (!key_fits(k, alg)) {
            continue;
        }
        candidate = true;
        if (key_verifies(ks, k, msg, msglen, sig, siglen))
            return WEFT_JWT_OK;
    }
    if (candidate)
        return WEFT_JWT_BAD_SIGNATURE;
    return wrong_kind ? WEFT_JWT_BAD_ALG : WEFT_JWT_NO_KEY;
}

static bool json_str_eq(json_t *v, const char *s)
{
    size_t n = strlen(s);
    return json_is_string(v) && json_string_length(v) == n &&
           memcmp(json_string_value(v), s, n) == 0;
}

static int check_claims(const weft_jwt_policy *pol, json_t *claims, int64_t now_s)
{
    double now = (double)now_s, leeway = (double)pol->leeway_s;
    json_t *exp = json_object_get(claims, "exp");
    json_t *nbf = json_object_get(claims, "nbf");

    if ((exp && !json_is_number(exp)) || (nbf && !json_is_number(nbf)))
        return WEFT_JWT_MALFORMED;
    if (exp) {
        if (now >= json_number_value(exp) + leeway)
            return WEFT_JWT_EXPIRED;
    } else if (pol->require_exp) {
        return WEFT_JWT_EXPIRED; /* no lifetime: see the comment at the top */
    }
    if (nbf && now + leeway < json_number_value(nbf))
        return WEFT_JWT_NOT_YET_VALID;
    if (pol->issuer && !json_str_eq(json_object_get(claims, "iss"), pol->issuer))
        return WEFT_JWT_BAD_ISSUER;
    if (pol->naud > 0 && pol->audiences) {
        json_t *aud = json_object_get(claims, "aud");
        for (size_t i = 0; i < pol->naud; i++) {
            const char *want = pol->audiences[i];
            if (!want)
                continue;
            if (json_is_string(aud) && json_str_eq(aud, want))
                return WEFT_JWT_OK;
            if (json_is_array(aud)) {
                size_t j;
                json_t *v;
                json_array_foreach(aud, j, v)
                {
                    if (json_str_eq(v, want))
                        return WEFT_JWT_OK;
                }
            }
        }
        return WEFT_JWT_BAD_AUDIENCE;
    }
    return WEFT_JWT_OK;
}

/* Decode one base64url part and parse it as a JSON object. */
static json_t *decode_json_part(const char *p, size_t n, unsigned char *scratch)
{
    long len = b64url_decode(p, n, scratch);
    if (len <= 0)
        return NULL;
    json_t *v = json_loadb((const char *)scratch, (size_t)len, JSON_REJECT_DUPLICATES, NULL);
    if (v && !json_is_object(v)) {
        json_decref(v);
        v = NULL;
    }
    return v;
}

int weft_jwt_verify(const weft_jwks *keys, const weft_jwt_policy *pol, weft_str token,
                    int64_t now_s, json_t **claims)
{
    static const weft_jwt_policy default_policy = {0};
    unsigned char *scratch = NULL;
    json_t *header = NULL, *payload = NULL;
    int rc = WEFT_JWT_MALFORMED;

    if (claims)
        *claims = NULL;
    if (!pol)
        pol = &default_policy;
    if (!token.p || token.n == 0 || token.n > JWT_MAX_BYTES)
        return WEFT_JWT_MALFORMED;

    /* header "." payload "." signature: exactly two dots. */
    const char *t = token.p, *end = token.p + token.n;
    const char *d1 = memchr(t, '.', token.n);
    if (!d1)
        return WEFT_JWT_MALFORMED;
    const char *d2 = memchr(d1 + 1, '.', (size_t)(end - d1 - 1));
    if (!d2 || memchr(d2 + 1, '.', (size_t)(end - d2 - 1)))
        return WEFT_JWT_MALFORMED;
    size_t hlen = (size_t)(d1 - t), plen = (size_t)(d2 - d1 - 1), slen = (size_t)(end - d2 - 1);
    if (hlen == 0 || plen == 0 || !b64url_valid(t, hlen) || !b64url_valid(d1 + 1, plen) ||
        !b64url_valid(d2 + 1, slen))
        return WEFT_JWT_MALFORMED;

    scratch = malloc(b64url_decoded_len(token.n) + 1);
    if (!scratch)
        return WEFT_JWT_MALFORMED; /* no better code in the contract; fails closed */

    header = decode_json_part(t, hlen, scratch);
    if (!header)
        goto out;
    json_t *alg_v = json_object_get(header, "alg");
    json_t *kid = json_object_get(header, "kid");
    json_t *typ = json_object_get(header, "typ");
    if (!json_is_string(alg_v) || (kid && !json_is_string(kid)) || (typ && !json_is_string(typ)) ||
        json_object_get(header, "crit"))
        goto out;
    unsigned alg = alg_from_name(json_string_value(alg_v));
    unsigned allowed = pol->algs ? pol->algs : (WEFT_JWT_HS256 | WEFT_JWT_RS256 | WEFT_JWT_ES256);
    if (!alg || !(alg & allowed)) {
        rc = WEFT_JWT_BAD_ALG;
        goto out;
    }
    if (slen == 0)
        goto out; /* MALFORMED */
    if (!keys) {
        rc = WEFT_JWT_NO_KEY;
        goto out;
    }
    long siglen = b64url_decode(d2 + 1, slen, scratch);
    rc = check_signature(keys, alg, kid, t, (size_t)(d2 - t), scratch, (size_t)siglen);
    if (rc != WEFT_JWT_OK)
        goto out;

    rc = WEFT_JWT_MALFORMED;
    payload = decode_json_part(d1 + 1, plen, scratch);
    if (!payload)
        goto out;
    rc = check_claims(pol, payload, now_s);
    if (rc == WEFT_JWT_OK && claims) {
        *claims = payload;
        payload = NULL;
    }
out:
    json_decref(payload);
    json_decref(header);
    free(scratch);
    return rc;
}

const char *weft_jwt_strerror(int result)
{
    switch (result) {
    case WEFT_JWT_OK: return "valid token";
    case WEFT_JWT_MALFORMED: return "malformed token";
    case WEFT_JWT_BAD_ALG: return "algorithm not allowed";
    case WEFT_JWT_NO_KEY: return "no matching key";
    case WEFT_JWT_BAD_SIGNATURE: return "invalid signature";
    case WEFT_JWT_EXPIRED: return "token expired";
    case WEFT_JWT_NOT_YET_VALID: return "token not yet valid";
    case WEFT_JWT_BAD_ISSUER: return "invalid issuer";
    case WEFT_JWT_BAD_AUDIENCE: return "invalid audience";
    default: return "unknown error";
    }
}
