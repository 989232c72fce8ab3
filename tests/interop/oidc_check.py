"""An OIDC relying party that knows only the issuer URL (as a cloud provider is configured):
fetches discovery, then the JWKS it names, and validates a JWT-SVID with PyJWT's PyJWKClient.

argv: issuer, token, audience. Prints the token's sub.
"""
import json
import sys
import urllib.request

import jwt

issuer, token, audience = sys.argv[1:4]
with urllib.request.urlopen(issuer + "/.well-known/openid-configuration", timeout=10) as r:
    conf = json.load(r)
assert conf["issuer"] == issuer, conf
key = jwt.PyJWKClient(conf["jwks_uri"], cache_keys=False).get_signing_key_from_jwt(token)
claims = jwt.decode(token, key.key, algorithms=conf["id_token_signing_alg_values_supported"],
                    audience=audience, issuer=issuer, options={"require": ["exp", "sub", "iss"]})
print(claims["sub"])
