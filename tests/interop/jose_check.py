"""Independent checks of writ's WIT-SVIDs and Workload Proof Tokens with PyJWT.

verify: argv = wit, wpt, wit_bundle_json (a JWK Set, use "wit-svid"), audience.
  Verifies the WIT against the bundle (typ wit+jwt, kid, ES256, no aud, cnf.jwk), then the WPT
  against cnf.jwk (typ wpt+jwt, aud, exp, jti, wth). Prints the WIT's sub.
prove: argv = wit, wit_svid_key (private JWK), audience.
  Makes a WPT with the private key PyJWT read from the JWK, prints it.
"""
import base64
import hashlib
import json
import secrets
import sys
import time

import jwt
from jwt import PyJWK


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def verify(wit, wpt, bundle_json, audience):
    keys = {k["kid"]: k for k in json.loads(bundle_json)["keys"]}
    h = jwt.get_unverified_header(wit)
    assert h["typ"] == "wit+jwt", h
    k = keys[h["kid"]]
    assert k["use"] == "wit-svid", k
    claims = jwt.decode(wit, PyJWK(k, algorithm="ES256").key, algorithms=["ES256"],
                        options={"verify_aud": False, "require": ["exp", "sub"]})
    assert "aud" not in claims, claims
    cnf = claims["cnf"]["jwk"]
    wh = jwt.get_unverified_header(wpt)
    assert wh["typ"] == "wpt+jwt", wh
    proof = jwt.decode(wpt, PyJWK(cnf).key, algorithms=[cnf.get("alg", "ES256")],
                       audience=audience, options={"require": ["exp", "jti", "aud"]})
    assert proof["exp"] - time.time() <= 300, proof
    assert len(proof["jti"]) >= 22, proof
    assert proof["wth"] == b64(hashlib.sha256(wit.encode()).digest()), proof
    print(claims["sub"])


def prove(wit, key_jwk, audience):
    key = PyJWK(json.loads(key_jwk))
    claims = {"aud": audience, "exp": int(time.time()) + 60, "jti": b64(secrets.token_bytes(16)),
              "wth": b64(hashlib.sha256(wit.encode()).digest())}
    print(jwt.encode(claims, key.key, algorithm="ES256", headers={"typ": "wpt+jwt"}))


if __name__ == "__main__":
    {"verify": verify, "prove": prove}[sys.argv[1]](*sys.argv[2:])
