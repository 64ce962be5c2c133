"""Developer tooling: start real PostgreSQL/Redis on a bare machine (see services.py) and run the app (up.py)."""
