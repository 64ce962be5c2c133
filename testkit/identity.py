"""Who the tests and benchmarks are to the service: the run's secrets, keys and signed user tokens.

One place, so a test, the fault scenarios and the benchmarks sign what the processes they start
will accept (the values go to the service through `testkit.database.service_env`).
"""
import time
import uuid

import jwt

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256"
API_KEY = "test-api-key"
OTHER_API_KEY = "second-service-key"
SERVICE = {"X-API-Key": API_KEY}
OTHER_SERVICE = {"X-API-Key": OTHER_API_KEY}


def make_token(user_id=None, customers=None, exp_in=300, secret=JWT_SECRET, **claims):
    """A signed user token; every part can be spoiled for the auth tests."""
    payload = {"sub": str(user_id or uuid.uuid4())}
    if exp_in is not None:
        payload["exp"] = int(time.time()) + exp_in
    if customers is not None:
        payload["customers"] = [str(c) for c in customers]
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


def bearer(user_id=None, **claims):
    """The headers that authenticate as `user_id` (make_token's claims and spoilers pass through)."""
    return {"Authorization": f"Bearer {make_token(user_id, **claims)}"}
