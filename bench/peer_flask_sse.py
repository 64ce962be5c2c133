"""The peer of the stream benchmarks (bench/rig.py starts it): a minimal Flask-SSE 1.0.0 app, as its
documentation sets it up.

    REDIS_URL=redis://127.0.0.1:6379/0 gunicorn -k gevent --worker-connections 20000 \
        -b 127.0.0.1:8001 --chdir bench peer_flask_sse:app

GET  /stream?channel=<name>   Flask-SSE's own blueprint: one Redis pub/sub connection per stream
POST /publish                 {"channels": [...], "data": {...}}: `sse.publish(data, channel=c)` per channel
GET  /healthz                 for the benchmark's start-up wait

Nothing here is tuned: this is what a user of Flask-SSE gets. (`sse.publish` builds a new
Redis client, hence a new connection, on every call: that is Flask-SSE's own code.)
"""
import os

from flask import Flask, jsonify, request
from flask_sse import sse

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
app.register_blueprint(sse, url_prefix="/stream")


@app.post("/publish")
def publish():
    body = request.get_json()
    channels = body.get("channels") or ["sse"]
    for channel in channels:
        sse.publish(body["data"], channel=channel)
    return jsonify({"published": len(channels)})


@app.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})
