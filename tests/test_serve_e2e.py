"""The triage API under real Ray Serve (the session's local Ray instance) and the session's Ignite node:
two tenants created, ingested from the bundled real Jira sample, trained online through the API,
triaged; a newly promoted version served without a restart; cross-tenant access refused; every
error case answered as specified. Times are printed, never asserted (they are `alliedium bench serve`'s)."""
import time, uuid

import httpx
import pytest

from alliedium.bench.serve import promotion_seconds
from alliedium.serving.runtime import load_app
from alliedium.config import Settings
from alliedium.ignite import free_port
from alliedium.serving.api import settings_overrides
from alliedium.tenants import create_tenant

from test_serving import bearer, sample_issues


@pytest.fixture(scope='module')
def service(serve_url, ignite):
    "The triage app (`serve/app.py`) at '/', and the same app with an unreachable Ignite at '/down'."
    from ray import serve
    s = Settings(**{**settings_overrides(ignite), 'serve_poll_seconds': 0.5, 'serve_key_cache_seconds': 1.0,
                    'serve_models_per_replica': 4, 'serve_replica_cpus': 0.1})
    down = Settings(**{**settings_overrides(s), 'ignite_hosts': f'127.0.0.1:{free_port()}', 'ignite_timeout': 3})
    serve.run(load_app('serve.app:build_app', dict(settings=settings_overrides(s)), s), name='triage', route_prefix='/')
    serve.run(load_app('serve.app:build_app', dict(settings=settings_overrides(down)), s),
              name='down', route_prefix='/down')
    with httpx.Client(base_url=serve_url, timeout=120) as http: yield http
    serve.delete('down'); serve.delete('triage')


def test_healthz_reports_ignite_and_serve(service):
    r = service.get('/healthz')
    assert r.status_code == 200, r.text
    assert r.json()['ignite']['ok'] is True
    assert r.json()['serve']['status'] == 'RUNNING' and r.json()['serve']['app'] == 'triage'
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
    r = service.post(f'/v1/tenants/{t}/triage', json={'fields': {'summary': 'x'}}, headers=bearer('ak_wrong'))
    assert r.status_code == 401
    r = service.post(f'/v1/tenants/{t}/triage', json={'fields': {}}, headers=bearer(key))
    assert r.status_code == 422 and ['body', 'fields', 'summary'] in [e['loc'] for e in r.json()['detail']], r.text
    r = service.post(f'/v1/tenants/{t}/triage', json={'fields': {'summary': 'x' * (1 << 20)}}, headers=bearer(key))
    assert r.status_code == 413, r.text
    r = service.get(f'/v1/tenants/{t}/jobs/nope', headers=bearer(key))
    assert r.status_code == 404 and r.json()['error'] == 'JobNotFound', r.text


def _wait_jobs(http, jobs: dict, timeout=1200) -> dict:
    "Poll GET .../jobs/{id} until every job has left 'running': tenant -> its last answer."
    done, t0 = {}, time.monotonic()
    while len(done) < len(jobs) and time.monotonic() - t0 < timeout:
        for t, (key, job) in jobs.items():
            if t in done: continue
            r = http.get(f'/v1/tenants/{t}/jobs/{job}', headers=bearer(key))
            assert r.status_code == 200, r.text
            if r.json()['status'] != 'running': done[t] = r.json()
        time.sleep(2)
    assert len(done) == len(jobs), f"jobs still running after {timeout}s: {set(jobs) - set(done)}"
    return done


def test_two_tenants_ingest_train_triage_promote(service, ignite):
    from alliedium.ingest import ingest_files
    from alliedium.jira import sample_dir
    from alliedium.registry import active_versions
    http, uid = service, uuid.uuid4().hex[:6]
    (a, ka), (b, kb) = [(t, create_tenant(t, settings=ignite)) for t in (f'e2e-zk-{uid}', f'e2e-storm-{uid}')]
    ingest_files(a, [sample_dir(ignite)/'Zookeeper.jsonl.gz'], settings=ignite)
    ingest_files(b, [sample_dir(ignite)/'Storm.jsonl.gz'], settings=ignite)
    raw = sample_issues('Zookeeper', 1)[0]
    r = http.post(f'/v1/tenants/{a}/webhooks/jira', json={'webhookEvent': 'jira:issue_updated', 'issue': raw},
                  headers=bearer(ka))
    assert r.status_code == 200 and r.json()['result'] == 'unchanged', r.text  # the CLI ingested it already: idempotent
    known = ('summary', 'description', 'issuetype', 'reporter', 'components', 'labels', 'created')
    issue = {'key': 'NEW-1', 'fields': {k: raw['fields'][k] for k in known}}

    r = http.post(f'/v1/tenants/{a}/triage', json=issue, headers=bearer(ka))
    assert r.status_code == 409 and r.json()['status'] == 'untrained', r.text
    assert f'/v1/tenants/{a}/train' in r.json()['todo'], r.text

    r = http.post(f'/v1/tenants/{a}/train', headers=bearer(ka))
    assert r.status_code == 202 and r.json()['status'] == 'running', r.text
    job_a = r.json()['job_id']
    r = http.post(f'/v1/tenants/{a}/train', headers=bearer(ka))
    assert r.status_code == 409 and r.json()['job_id'] == job_a, r.text
    r = http.post(f'/v1/tenants/{b}/train', headers=bearer(kb))
    assert r.status_code == 202, r.text
    t0 = time.monotonic()
    done = _wait_jobs(http, {a: (ka, job_a), b: (kb, r.json()['job_id'])})
    print(f"\nonline training of both tenants: {time.monotonic() - t0:.0f}s")
    assert {t: d['status'] for t, d in done.items()} == {a: 'succeeded', b: 'succeeded'}, done

    for t, k in ((a, ka), (b, kb)):
        r = http.post(f'/v1/tenants/{t}/triage', json=issue, headers=bearer(k))
        assert r.status_code == 200, r.text
        ans = r.json()
        assert ans['tenant'] == t and ans['versions'] == active_versions(t, ignite)
        assert {'assignee', 'components', 'labels', 'priority', 'rank_score', 'abstain'} <= set(ans)
        assert all({'name', 'score'} <= set(s) for s in ans['assignee'])
    assert http.post(f'/v1/tenants/{b}/triage', json=issue, headers=bearer(ka)).status_code == 403  # a's key, b's data
    assert http.get(f'/v1/tenants/{b}/models', headers=bearer(ka)).status_code == 403
    models = http.get(f'/v1/tenants/{a}/models', headers=bearer(ka)).json()['models']
    assert {m['task']: m['version'] for m in models if m['active']} == active_versions(a, ignite)

    # A new version is promoted (here: the priority model registered again); the replicas serve it without a restart.
    secs = promotion_seconds(str(http.base_url).rstrip('/'), a, ka, issue, ignite, timeout=120)
    print(f"promoted version served after {secs:.2f}s (poll interval 0.5s)")
    assert secs < 120   # inf when the new version was never answered


def test_models_held_by_the_ingress(serve_url, ignite):
    "The one-hop layout (`serve_models_in_ingress`): no ModelPool; triage, promotion and auth as before."
    from ray import serve
    from alliedium.ingest import ingest_files
    from alliedium.jira import sample_dir
    from alliedium.registry import active_versions
    from alliedium.training import train_tenant
    uid = uuid.uuid4().hex[:6]
    (a, ka), (b, kb) = [(t, create_tenant(t, settings=ignite)) for t in (f'ing-zk-{uid}', f'ing-other-{uid}')]
    ingest_files(a, [sample_dir(ignite)/'Zookeeper.jsonl.gz'], settings=ignite)
    train_tenant(a, settings=ignite)
    s = Settings(**{**settings_overrides(ignite), 'serve_models_in_ingress': True, 'serve_poll_seconds': 0.5,
                    'serve_models_per_replica': 4, 'serve_replica_cpus': 0.1})
    serve.run(load_app('serve.app:build_app', dict(settings=settings_overrides(s)), s),
              name='in-ingress', route_prefix='/in-ingress')
    try:
        assert set(serve.status().applications['in-ingress'].deployments) == {'TriageAPI'}
        raw = sample_issues('Zookeeper', 1)[0]
        issue = {'fields': {k: raw['fields'][k] for k in ('summary', 'description', 'reporter', 'components')}}
        with httpx.Client(base_url=f'{serve_url}/in-ingress', timeout=120) as http:
            r = http.post(f'/v1/tenants/{a}/triage', json=issue, headers=bearer(ka))
            assert r.status_code == 200 and r.json()['versions'] == active_versions(a, ignite), r.text
            assert http.post(f'/v1/tenants/{a}/triage', json=issue, headers=bearer(kb)).status_code == 403
            assert http.post(f'/v1/tenants/{b}/triage', json=issue, headers=bearer(kb)).json()['status'] == 'untrained'
            secs = promotion_seconds(serve_url, a, ka, issue, ignite, prefix='/in-ingress', timeout=60)
            print(f"\nmodels in the ingress: promoted version served after {secs:.2f}s")
            assert secs < 60   # inf when the new version was never answered
    finally: serve.delete('in-ingress')


def test_a_promoted_model_that_fails_to_load_is_said(service, ignite):
    """A promoted version whose artifact is refused: the older one answers, naming it in `versions_failed`; every
    replica's /healthz says degraded with tenant, task and version (no address); promoting back clears it."""
    import re
    from alliedium.ignite import ignite_client
    from alliedium.ingest import ingest_files
    from alliedium.jira import sample_dir
    from alliedium.registry import load_model, promote, register_model
    from alliedium.training import train_tenant
    t = f'e2e-bad-{uuid.uuid4().hex[:6]}'
    key = create_tenant(t, settings=ignite)
    ingest_files(t, [sample_dir(ignite)/'Zookeeper.jsonl.gz'], settings=ignite)
    train_tenant(t, tasks=['priority'], settings=ignite)
    issue = {'fields': {'summary': 'Leader election hangs after a network partition', 'issuetype': {'name': 'Bug'}}}
    r = service.post(f'/v1/tenants/{t}/triage', json=issue, headers=bearer(key))
    assert r.status_code == 200 and 'versions_failed' not in r.json(), r.text
    good = r.json()['versions']['priority']
    _, model, metrics = load_model(t, 'priority', settings=ignite)
    bad = register_model(t, 'priority', model, metrics, settings=ignite)
    with ignite_client(ignite) as c:  # its stored signature no longer matches: the registry refuses to load it
        c.sql("UPDATE ALLIEDIUM.MODEL SET format = CONCAT(format, '0') WHERE tenant_id = ? AND task = 'priority' "
              "AND version = ?", query_args=[t, bad])
    promote(t, 'priority', bad, settings=ignite)
    for _ in range(240):
        ans = service.post(f'/v1/tenants/{t}/triage', json=issue, headers=bearer(key))
        assert ans.status_code == 200, ans.text
        if 'versions_failed' in ans.json(): break
        time.sleep(0.25)
    ans = ans.json()
    assert ans['versions']['priority'] == good, ans  # the older version answered ...
    assert ans['versions_failed'] == {'priority': {'version': bad, 'serving': good, 'error': 'ArtifactRefused'}}, ans
    time.sleep(1.1)  # past the /healthz cache
    h = service.get('/healthz')
    assert h.status_code == 200 and h.json()['status'] == 'degraded', h.text
    [mine] = [f for f in h.json()['models']['failed'] if f['tenant'] == t]
    assert (mine['task'], mine['version'], mine['serving'], mine['error']) == ('priority', bad, good, 'ArtifactRefused')
    assert 'signature' in mine['detail'], mine  # its only free text, without addresses:
    assert not re.search(r'\d+\.\d+\.\d+\.\d+|localhost|[a-z]:\d{2,5}\b', mine['detail']), mine
    promote(t, 'priority', good, settings=ignite)  # back to the version that loads
    time.sleep(1.1)
    h = service.get('/healthz').json()
    assert not [f for f in h['models']['failed'] if f['tenant'] == t], h
