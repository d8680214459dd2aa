#!/usr/bin/env python3
"""Verify a Badge token as an independent OIDC relying party would: starting from
the issuer's discovery URL alone, with PyJWT's PyJWKClient. Prints the claims as JSON
on success; exits non-zero otherwise."""

import argparse
import json
import ssl
import sys
import urllib.request

import jwt


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--issuer", required=True)
    p.add_argument("--ca", required=True, help="CA bundle that signed the discovery server")
    p.add_argument("--token", required=True)
    p.add_argument("--audience", required=True)
    a = p.parse_args()

    ctx = ssl.create_default_context(cafile=a.ca)
    url = a.issuer.rstrip("/") + "/.well-known/openid-configuration"
    with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
        ctype = r.headers.get("Content-Type", "")
        if not ctype.startswith("application/json"):
            print(f"discovery content type {ctype!r}", file=sys.stderr)
            return 2
        disc = json.load(r)
    if disc.get("issuer") != a.issuer:
        print(f"discovery issuer {disc.get('issuer')!r} != {a.issuer!r}", file=sys.stderr)
        return 2
    client = jwt.PyJWKClient(disc["jwks_uri"], ssl_context=ctx, cache_keys=False)
    signing_key = client.get_signing_key_from_jwt(a.token)
    claims = jwt.decode(
        a.token,
        signing_key.key,
        algorithms=disc["id_token_signing_alg_values_supported"],
        audience=a.audience,
        issuer=a.issuer,
        options={"require": ["exp", "iat", "nbf", "iss", "sub", "aud"]},
    )
    print(json.dumps(claims))
    return 0


if __name__ == "__main__":
    sys.exit(main())
