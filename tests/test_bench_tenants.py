"""`alliedium bench tenants` end to end, small: synthetic tenants ingested, trained, copied and served over HTTP.

Real Ignite (the session's node), a real local Ray with Serve (the session's), real Jira data renamed per tenant.
"""
import json

import pytest

from alliedium.bench.tenants import BenchState, results_table, run_bench, tenant_issues
from alliedium.jira import shared_dir

pytestmark = pytest.mark.skipif(not shared_dir().is_dir(), reason="needs ../shared's Jira dumps")


@pytest.fixture(scope='module')
def bench_app(ignite, serve_url):
    "The triage API deployed on the session's Serve under /bt (the bench's own prefix)."
    from ray import serve
    from alliedium.serving.api import settings_overrides
    from alliedium.serving.runtime import load_app
    serve.run(load_app('serve.app:build_app', dict(settings=settings_overrides(ignite)), ignite),
              name='bench-tenants', route_prefix='/bt')
    try: yield serve_url, '/bt'
    finally: serve.delete('bench-tenants')


def test_bench_tenants_small(ignite, bench_app, tmp_path):
    url, prefix = bench_app
    kw = dict(seed=5, low=220, high=240, workers=1, papermill=0, url=url, prefix=prefix, requests=30,
              concurrency=2, rounds=1, hot=1, memory_tenants=2)
    # two tenants ingested and trained; a third not ingested, served with a copy of a trained one's models
    res = run_bench(2, ['ingest', 'train'], tmp_path, ignite, shared_dir(), **kw)
    assert (res['ingest']['tenants'], res['ingest']['rejected'], res['train']['tenants'], res['train']['failed']) \
        == (2, 0, 2, 0)
    assert res['ingest']['tickets'] == res['plan']['tickets'] and res['models']['tenants_with_models'] >= 2
    res = run_bench(3, ['copy', 'serve'], tmp_path, ignite, shared_dir(), **kw)
    assert (res['copies']['copied'], res['ingested_tenants'], res['copied_tenants']) == (1, 2, 1)
    sv = res['serve']
    assert sv['tenants'] == 3
    for k in ('warm', 'uniform', 'zipf'):
        assert sv['runs'][k]['errors'] == 0 and sv['runs'][k]['n'] == 30, (k, sv['runs'][k])
        assert sv['steady'][k]['errors'] == 0 and sv['steady'][k]['n'] == 30, (k, sv['steady'][k])
    assert (sv['first_touch']['n'], sv['first_touch']['errors']) == (3, 0)  # each tenant once
    assert set(sv['steady_ratio_to_warm']) == {'warm', 'uniform', 'zipf'}
    assert sv['distinct_tenants']['warm'] == 1 and sv['distinct_tenants']['uniform'] == 3
    results_table(res)
    # the state: two tenants ingested and trained, the third a copy; a rerun finds nothing to do
    st = BenchState(tmp_path).tenants
    assert [bool(st[t].get('trained_fingerprint')) for t in sorted(st)] == [True, True, False]
    assert st['bt-0002']['cloned_from'] in ('bt-0000', 'bt-0001') and st['bt-0002'].get('ingested') is None
    again = run_bench(3, ['ingest', 'train'], tmp_path, ignite, shared_dir(), **kw)
    assert (again['train_last']['tenants'], again['train_last']['skipped'], again['ingest_last']['tenants']) == (0, 2, 0)
    assert again['ingest_all']['tenants'] == 2  # the copy is neither ingested nor trained
    results_table(again)


def test_tenants_share_no_identity(tmp_path):
    "The same window of one project as two tenants: no issue key and no person in common, the same texts."
    a = dict(tenant='bt-0001', prefix='T0001', project='Storm', n=300, start=200)
    b = dict(a, tenant='bt-0002', prefix='T0002')
    (ia, _), (ib, _) = tenant_issues(a, shared_dir(), 0), tenant_issues(b, shared_dir(), 0)
    ppl = lambda issues: {json.dumps(i['fields'].get(p)) for i in issues for p in ('reporter', 'assignee')
                          if i['fields'].get(p)}
    assert not {i['key'] for i in ia} & {i['key'] for i in ib}
    assert not ppl(ia) & ppl(ib) and len(ppl(ia)) > 5
    assert 'STORM-' not in json.dumps(ia)
    # the same texts, but for the issue keys they mention (renamed with each tenant's prefix)
    assert [i['fields']['summary'].replace('T0001-', 'T0002-') for i in ia] == [i['fields']['summary'] for i in ib]
