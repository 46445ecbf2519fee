"""One real local Ray instance per test session (and Ray Serve on a free port), shut down at the end.

`ray_session` starts Ray after the Ignite node, so every Ray worker (Serve replicas, tasks)
gets the node's `ALLIEDIUM_*` environment; `serve_url` starts Serve's HTTP proxy on a free
port of 127.0.0.1 and yields its base URL. Replicas must ask for fractional `num_cpus`
(the instance has 2 CPUs, like the machine).
"""
import pytest


@pytest.fixture(scope='session')
def ray_session(ignite, tmp_path_factory):
    "A local Ray instance of its own (2 CPUs, no dashboard); yields the `ray` module."
    import ray
    from alliedium.serving.runtime import start_ray
    start_ray(ignite, num_cpus=2, object_store_memory=200 << 20, _temp_dir=str(tmp_path_factory.mktemp('ray')))
    try: yield ray
    finally:
        try:
            from ray import serve
            serve.shutdown()
        finally: ray.shutdown()


@pytest.fixture(scope='session')
def serve_url(ray_session):
    "Ray Serve running on the session's Ray, HTTP on a free local port: its base URL."
    from ray import serve
    from alliedium.ignite import free_port
    port = free_port()
    serve.start(http_options=dict(host='127.0.0.1', port=port))
    return f'http://127.0.0.1:{port}'
