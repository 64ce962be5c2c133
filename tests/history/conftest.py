"""Fixtures of the history's tests."""
import pytest

DEFAULT_SPAN = 10_000_000      # the migration's and HISTORY_PARTITION_ROWS' default


@pytest.fixture
def owner_conn(clean):
    """A connection as the schema's owner (the release's and the operator's role), not autocommit;
    afterwards partitions are made ahead of wherever the test left the sequence, for the next test."""
    import psycopg2
    from app.history import partitions
    conn = psycopg2.connect(clean["MIGRATION_DATABASE_URL"])
    yield conn
    conn.rollback()
    partitions.ensure(conn, DEFAULT_SPAN)
    conn.close()
