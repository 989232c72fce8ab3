"""py-spiffe (the `spiffe` package on PyPI) against a writ agent: fetch X509-SVIDs, bundles and
JWT-SVIDs, validate a JWT through the agent and locally against the JWT bundle, and verify the
X509-SVID chain against the bundle with the `cryptography` package.

Usage: python py_spiffe_check.py unix:///path/to/api.sock EXPECTED_SPIFFE_ID
Prints "ok" and exits 0 when every check passes.
"""
import sys

from cryptography.hazmat.primitives.asymmetric import ec
from spiffe import JwtSvid, SpiffeId, TrustDomain, WorkloadApiClient


def main() -> int:
    socket, expected = sys.argv[1], sys.argv[2]
    client = WorkloadApiClient(socket_path=socket)
    svid = client.fetch_x509_svid()
    assert str(svid.spiffe_id) == expected, f"got {svid.spiffe_id}"
    bundles = client.fetch_x509_bundles()
    bundle = bundles.get_bundle_for_trust_domain(TrustDomain("example.org"))
    assert bundle is not None, "no bundle for example.org"
    # The leaf is signed by one of the bundle's authorities (directly: writ's CA is the root).
    leaf = svid.leaf
    ok = False
    for ca in bundle.x509_authorities:
        try:
            ca.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm))
            ok = True
        except Exception:
            pass
    assert ok, "leaf does not verify against any bundle authority"
    jwt = client.fetch_jwt_svid(audience={"py-audience"})
    assert str(jwt.spiffe_id) == expected
    validated = client.validate_jwt_svid(jwt.token, "py-audience")
    assert str(validated.spiffe_id) == expected
    try:
        client.validate_jwt_svid(jwt.token, "someone-else")
        raise AssertionError("a token for another audience was accepted")
    except AssertionError:
        raise
    except Exception:
        pass
    jwt_bundles = client.fetch_jwt_bundles()
    jb = jwt_bundles.get_bundle_for_trust_domain(TrustDomain("example.org"))
    assert jb is not None, "no JWT bundle for example.org"
    local = JwtSvid.parse_and_validate(jwt.token, jb, {"py-audience"})
    assert str(local.spiffe_id) == expected
    assert SpiffeId(expected) == local.spiffe_id
    client.close()
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
