"""The online conversion of an unpartitioned history (app/history/convert.py), with the service
running and under load: tests/history/conversion.py is the scenario (also run by hand at 10 M rows)."""
import pytest

from tests.history.conversion import run


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_unpartitioned_history_is_converted_online_while_the_service_runs(pg_server, redis_proc, tmp_path):
    figures, problems = run(pg_server, redis_proc.url, rows=60_000, log_dir=str(tmp_path), users=300,
                            span=20_000, batch=5_000)
    print(figures)
    assert problems == []
