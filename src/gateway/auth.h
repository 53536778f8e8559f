/*
 * auth.h — gateway authentication: API keys and JWT (RFC 7519) verification.
 *
 * API keys are never stored in clear in the config: each is given as
 * "sha256:<64 hex>" (weft_apikey_hash prints that form); a presented key is
 * hashed and compared in constant time.
 *
 * JWTs are verified with OpenSSL 3 (HS256, RS256, ES256) against keys loaded
 * from a JWKS document (RFC 7517). Checks: structure, base64url, header alg
 * in the policy's allowed list and matching the key type (no "none", no
 * alg confusion: an RSA key never verifies an HS256 token), kid selects the
 * key when present, signature, exp, nbf (with leeway), iss, aud (string or
 * array).
 *
 * Ownership: key sets and API-key sets are immutable after loading and may
 * be shared read-only between worker threads. The claims object returned by
 * weft_jwt_verify is a new jansson reference owned by the caller.
 */
#ifndef WEFT_GATEWAY_AUTH_H
#define WEFT_GATEWAY_AUTH_H

#include "weft/weft.h"

#include <jansson.h>

/* ---- API keys ---- */
typedef struct weft_apikeys weft_apikeys;
weft_apikeys *weft_apikeys_new(void);
void weft_apikeys_free(weft_apikeys *s);
/* Add "sha256:<hex>" with a name (the consumer, forwarded as a header).
 * Returns WEFT_EINVAL if the hash text is malformed. */
int weft_apikeys_add(weft_apikeys *s, const char *name, const char *hashed);
/* Name of the matching key, or NULL. Constant-time per stored key. */
const char *weft_apikeys_match(const weft_apikeys *s, weft_str presented);
/* "sha256:" + 64 lowercase hex of SHA-256(key), NUL-terminated; out >= 72 bytes. */
void weft_apikey_hash(weft_str key, char *out);

/* ---- JWT ---- */
typedef struct weft_jwks weft_jwks;
/* Load a JWKS JSON document ({"keys":[...]}): kty RSA (n, e), EC P-256
 * (crv, x, y), oct (k); optional kid and alg. errbuf gets a reason on error. */
int weft_jwks_load_file(const char *path, weft_jwks **out, char *errbuf, size_t errlen);
int weft_jwks_load_json(const char *json, size_t len, weft_jwks **out, char *errbuf, size_t errlen);
void weft_jwks_free(weft_jwks *k);
size_t weft_jwks_count(const weft_jwks *k);

enum weft_jwt_alg { WEFT_JWT_HS256 = 1 << 0, WEFT_JWT_RS256 = 1 << 1, WEFT_JWT_ES256 = 1 << 2 };

typedef struct weft_jwt_policy {
    unsigned algs;             /* allowed algorithms (mask); 0 = all three */
    const char *issuer;        /* required "iss" if non-NULL */
    const char *const *audiences; /* token "aud" must contain one of these if naud > 0 */
    size_t naud;
    uint32_t leeway_s;         /* clock skew allowance for exp/nbf; default 0 */
    bool require_exp;          /* reject tokens without exp */
} weft_jwt_policy;

enum weft_jwt_result {
    WEFT_JWT_OK = 0,
    WEFT_JWT_MALFORMED = -1,   /* not three base64url parts / bad JSON */
    WEFT_JWT_BAD_ALG = -2,     /* alg not allowed or not matching the key */
    WEFT_JWT_NO_KEY = -3,      /* no key for kid/alg */
    WEFT_JWT_BAD_SIGNATURE = -4,
    WEFT_JWT_EXPIRED = -5,
    WEFT_JWT_NOT_YET_VALID = -6,
    WEFT_JWT_BAD_ISSUER = -7,
    WEFT_JWT_BAD_AUDIENCE = -8,
};
/* Verify `token` (without "Bearer "). On WEFT_JWT_OK, *claims (if non-NULL)
 * receives the payload object (caller decrefs). */
int weft_jwt_verify(const weft_jwks *keys, const weft_jwt_policy *pol, weft_str token,
                    int64_t now_s, json_t **claims);
/* Short reason for a result, suitable for WWW-Authenticate error_description. */
const char *weft_jwt_strerror(int result);

#endif
