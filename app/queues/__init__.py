"""RQ, as this service uses it: what is enqueued and how (enqueue.py), waking the drain
(waker.py), and whether a job is still going to run (liveness.py, the relay's checks)."""
