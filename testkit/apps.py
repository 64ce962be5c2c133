"""Apps in the test process: `create_app` on a run's environment, closed when the caller is done."""
import contextlib


@contextlib.contextmanager
def app_factory(base_env):
    """Yields make(**settings) -> an app on `base_env` with `settings` over it (TESTING on); at the
    end every app made closes its database pools (the primary's, and the replica's if it has one)."""
    from app import create_app
    made = []

    def make(**settings):
        application = create_app(dict(base_env, **settings))
        application.config["TESTING"] = True
        made.append(application)
        return application

    try:
        yield make
    finally:
        for application in made:
            application.extensions["db_pool"].close()
            router = application.extensions.get("replica_router")
            if router is not None:
                router.pool.close()
