"""What the tests (tests/), the fault scenarios and the benchmarks (bench/) share: real services
started the Procfile's way, a database and a Redis of a run's own, and the calls a client makes.

    identity       the run's secrets and API keys; make_token, bearer
    database       Database (created, migrated, dropped), with_dbname, service_env, clean
    config_files   queue_yaml, queue_config, channel_config: files for QUEUE_CONFIG / NOTIFICATIONS_CONFIG
    processes      WebServer (gunicorn), RQWorker, ProcessGroup, wait_until, cpu_seconds
    sse            SSEStream, ResumingStream
    api            trigger_body, post_trigger, trigger, push, put_contact, deliveries, assert_envelope
    jobs           run_jobs (the one in-process job runner), scheduled, fast_forward, drain
    rows           insert_notification, fetch_row, scalar, rows
    providers      FakeSMTP, SMTPProcess, FakeTwilio, FakeHTTP, self_signed_cert
    isolated_host  IsolatedHost: a client in a network namespace whose cable can be cut
    apps           app_factory: apps made in the test process, their pools closed at the end
    tcp_proxy      TcpProxy: a pausable proxy in front of a real server (holds, releases, cuts)

Importable from the repository's root: pytest adds it (pytest.ini `pythonpath = .`), and
`python -m bench.<module>` runs from there.
"""
