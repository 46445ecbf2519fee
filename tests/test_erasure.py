"""Issue 20: erasing a tenant leaves 0 rows and 0 files of it while another tenant is untouched: two tenants with
tickets, models and a retrain's executed notebook, triage answers logged, outcomes, API keys used, a training claim;
one is erased through `DELETE /v1/tenants/{tenant}`, another through `alliedium tenants delete`."""
import json, os, subprocess, sys, uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from alliedium.feedback import suggestion_log, tenant_rows
from alliedium.ignite import ignite_client
from alliedium.ingest import ingest_tickets
from alliedium.jira import parse_issue
from alliedium.runs import TRAINING_CACHE, claim_training, start_run
from alliedium.schema import SCHEMA
from alliedium.serving.api import LocalBackend, make_api
from alliedium.tenants import KEY_USE_CACHE, create_tenant, key_hash

BIN = Path(sys.executable).parent/'alliedium'


def _issues(n):
    from fixtures_data import _first_issues, SAMPLE
    return _first_issues(SAMPLE/'Zookeeper.jsonl.gz', n)


def _filed(issue):
    f = {k: v for k, v in issue['fields'].items() if k not in ('assignee', 'labels', 'priority')}
    return dict(key=issue['key'], fields=f | {'updated': f['created']})


def _populate(tenant, issues, settings, api):
    "Tickets, a retrain (models, RUN row, executed notebook), logged answers, outcomes; the tenant's key."
    from alliedium.retrain import retrain_tenant
    key = create_tenant(tenant, settings=settings)
    older, newest = issues[:-20], issues[-20:]
    ingest_tickets(tenant, [parse_issue(i, tenant) for i in older], settings)
    run = retrain_tenant(tenant, settings=settings)
    assert run.status == 'succeeded', run
    auth = {'Authorization': f'Bearer {key}'}
    for i in newest:
        r = api.post(f'/v1/tenants/{tenant}/webhooks/jira', headers=auth,
                     json=dict(webhookEvent='jira:issue_created', issue=_filed(i)))
        assert r.status_code == 200, r.text
        assert api.post(f'/v1/tenants/{tenant}/triage', headers=auth, json=_filed(i)).status_code == 200
    assert suggestion_log(settings).flush(60)
    for i in newest:
        r = api.post(f'/v1/tenants/{tenant}/webhooks/jira', headers=auth,
                     json=dict(webhookEvent='jira:issue_updated', issue=i))
        assert r.status_code == 200, r.text
    return key


def _mentions(tenant, settings) -> dict:
    "Rows of every ALLIEDIUM table with any text column holding the tenant id: table.column -> count."
    out = {}
    with ignite_client(settings) as c:
        cols = list(c.sql("SELECT TABLE_NAME, COLUMN_NAME FROM SYS.TABLE_COLUMNS WHERE SCHEMA_NAME = ? "
                          "AND TYPE LIKE '%String%'", query_args=[SCHEMA]))
        assert {t for t, _ in cols} >= {'TICKET', 'SUGGESTION', 'OUTCOME', 'MODEL', 'RUN', 'API_KEY', 'TENANT'}
        for table, col in cols:
            if col.startswith('_'): continue
            n = list(c.sql(f'SELECT COUNT(*) FROM {SCHEMA}.{table} WHERE {col} LIKE ?', query_args=[f'%{tenant}%']))
            if n[0][0]: out[f'{table}.{col}'] = n[0][0]
    return out


def _rows(tenant, settings) -> dict:
    with ignite_client(settings) as c: return tenant_rows(tenant, c)


def _files(tenant, settings) -> list[str]:
    "Paths under var/ naming the tenant (a folder of its own, or a file in one)."
    return sorted(str(p) for r, ds, fs in os.walk(settings.var) for n in ds + fs
                  if tenant in str((p := Path(r)/n).relative_to(settings.var)))


@pytest.fixture(scope='module')
def two_tenants(ignite):
    backend = LocalBackend(ignite)
    api = TestClient(make_api(backend))
    issues = _issues(260)
    victim, survivor = f'gone-{uuid.uuid4().hex[:8]}', f'kept-{uuid.uuid4().hex[:8]}'
    keys = {t: _populate(t, issues, ignite, api) for t in (victim, survivor)}
    claim_training(victim, start_run(victim, 'train', settings=ignite), ignite, heartbeat=False)  # one running
    return api, backend, victim, survivor, keys


def test_erasure_leaves_no_row_and_no_file_of_the_tenant_and_the_other_untouched(two_tenants, ignite):
    api, backend, victim, survivor, keys = two_tenants
    before = {t: _rows(t, ignite) for t in (victim, survivor)}
    files = {t: _files(t, ignite) for t in (victim, survivor)}
    print('rows before', before, 'files', files)
    for t in (victim, survivor):
        assert all(before[t][x] > 0 for x in ('TENANT', 'API_KEY', 'TICKET', 'TICKET_STATE', 'MODEL', 'RUN',
                                                'SUGGESTION', 'OUTCOME')), before[t]
        assert any(f.endswith('.ipynb') for f in files[t])  # the retrain's executed notebook
    auth = lambda t: {'Authorization': f'Bearer {keys[t]}'}
    triage = lambda t: api.post(f'/v1/tenants/{t}/triage', headers=auth(t), json=dict(fields=dict(summary='NPE')))
    answer = triage(survivor).json()
    assert triage(victim).status_code == 200

    # refused: without the confirmation, with the other tenant's key; nothing removed
    assert api.delete(f'/v1/tenants/{victim}', headers=auth(victim)).status_code == 400
    assert api.delete(f'/v1/tenants/{victim}?confirm={victim}', headers=auth(survivor)).status_code == 403
    assert _rows(victim, ignite) == before[victim]

    r = api.delete(f'/v1/tenants/{victim}?confirm={victim}', headers=auth(victim))
    assert r.status_code == 200, r.text
    report = r.json()
    print('report', json.dumps(report))
    assert report['rows'] == {t: n for t, n in before[victim].items() if n} and report['left'] == {}
    assert report['training_claim'] is True and report['api_keys'] >= 1 and report['files']

    # 0 rows: per table, and in any text column of any table; no claim, no key-use record; 0 files
    assert set(_rows(victim, ignite).values()) == {0}
    assert _mentions(victim, ignite) == {}
    with ignite_client(ignite) as c:
        assert c.get_cache(TRAINING_CACHE).get(victim) is None
        if KEY_USE_CACHE in c.get_cache_names(): assert c.get_cache(KEY_USE_CACHE).get(key_hash(keys[victim])) is None
    assert _files(victim, ignite) == []
    # its key opens nothing; its models are no longer held
    assert triage(victim).status_code == 401
    assert api.get(f'/v1/tenants/{victim}/quality', headers=auth(victim)).status_code == 401
    assert victim not in backend.slots and survivor in backend.slots

    # the other tenant: every row and file as it was, and it answers the same
    assert _rows(survivor, ignite) == before[survivor]
    assert _files(survivor, ignite) == files[survivor]
    again = triage(survivor)
    assert again.status_code == 200 and again.json()['assignee'] == answer['assignee']


def test_erasing_from_the_command_line_asks_for_the_id(ignite, tenant):
    env = dict(os.environ, COLUMNS='200')
    wrong = subprocess.run([str(BIN), 'tenants', 'delete', tenant], input='another\n', capture_output=True,
                           text=True, timeout=300, env=env)
    assert wrong.returncode == 1 and 'nothing was removed' in wrong.stdout
    assert _rows(tenant, ignite)['TENANT'] == 1
    ok = subprocess.run([str(BIN), 'tenants', 'delete', tenant, '--yes', '--json'], capture_output=True, text=True,
                        timeout=300, env=env)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report['rows'] == {'TENANT': 1, 'API_KEY': 1} and report['left'] == {}
    assert set(_rows(tenant, ignite).values()) == {0}
    again = subprocess.run([str(BIN), 'tenants', 'delete', tenant, '--yes'], capture_output=True, text=True,
                           timeout=300, env=env)
    assert again.returncode == 2 and 'unknown tenant' in again.stderr
