"""Training end to end on the session node: ingest real tickets, train, triage with the promoted models, runs and
the CLI."""
import json, subprocess, sys, uuid

import pytest

from alliedium.ingest import ingest_tickets
from alliedium.jira import Ticket, jira_file, read_issues
from alliedium.models.triage import load_tenant_models
from alliedium.registry import active_versions, list_models
from alliedium.runs import finish_run, get_run, list_runs, start_run
from alliedium.tenants import create_tenant
from alliedium.training import NotEnoughHistory, decide_task, train_tenant


@pytest.fixture(scope='module')
def storm_tenant(ignite):
    "A tenant holding Storm's real tickets, ingested the way users do."
    tenant = f'storm-{uuid.uuid4().hex[:8]}'
    create_tenant(tenant, settings=ignite)
    tickets = [t for t in read_issues(jira_file('Storm'), tenant) if isinstance(t, Ticket)]
    ingest_tickets(tenant, tickets, settings=ignite)
    return tenant


def test_train_tenant_registers_promotes_and_triages(ignite, storm_tenant):
    r = train_tenant(storm_tenant, settings=ignite)
    assert set(r) == {'assignee', 'components', 'labels', 'priority'}
    assert all(x['version'] == 1 and x['promoted'] and x['seconds'] >= 0 for x in r.values())
    assert active_versions(storm_tenant, ignite) == {t: 1 for t in r}
    models = load_tenant_models(storm_tenant, ignite)
    issue = {'fields': {'summary': 'Nimbus fails to start after upgrade',
                        'description': 'NPE in nimbus during leader election',
                        'reporter': {'name': 'kabhwan'}, 'components': [{'name': 'storm-core'}]}}
    out = models.triage(issue)
    assert set(out) >= {'versions', 'assignee', 'components', 'labels', 'priority', 'rank_score', 'abstain'}
    assert out['assignee'] and all(0 <= a['score'] <= 1 for a in out['assignee'])
    assert out['priority']['label'] in out['priority']['scores'] and 0 <= out['rank_score'] <= 1
    assert isinstance(out['abstain'], bool)


def test_too_little_history_is_a_clear_error(ignite):
    tenant = f'tiny-{uuid.uuid4().hex[:8]}'
    create_tenant(tenant, settings=ignite)
    zk = (t for t in read_issues(jira_file('Zookeeper'), tenant) if isinstance(t, Ticket))
    tickets = [t for t, _ in zip(zk, range(30))]
    ingest_tickets(tenant, tickets, settings=ignite)
    with pytest.raises(NotEnoughHistory, match='at least'): train_tenant(tenant, settings=ignite)


def test_runs_record_start_and_end(ignite):
    tenant = f'runs-{uuid.uuid4().hex[:8]}'
    rid = start_run(tenant, 'train', settings=ignite)
    assert get_run(rid, ignite)['status'] == 'running'
    finish_run(rid, 'succeeded', {'x': 1}, settings=ignite)
    r = list_runs(tenant, ignite)[0]
    assert (r['run_id'], r['status'], r['metrics'], r['finished_at'] is not None) == (rid, 'succeeded', {'x': 1}, True)


def test_cli_train_and_models_list(ignite, storm_tenant):
    run = lambda *a: subprocess.run([sys.executable, '-c', 'from alliedium.cli import main; main()', *a],
                                    capture_output=True, text=True, timeout=600)
    out = run('train', '--tenant', storm_tenant, '--task', 'priority', '--json')
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res['tasks']['priority']['version'] == 2
    assert get_run(res['run_id'], ignite)['status'] == 'succeeded'
    listed = json.loads(run('models', 'list', '--tenant', storm_tenant, '--task', 'priority', '--json').stdout)
    assert [m['version'] for m in listed] == [1, 2] and sum(m['active'] for m in listed) == 1
    active = lambda: {m['version']: m['active'] for m in list_models(storm_tenant, 'priority', ignite)}
    assert run('models', 'promote', '--tenant', storm_tenant, '--task', 'priority', '--version', '1').returncode == 0
    assert active() == {1: True, 2: False} and active_versions(storm_tenant, ignite)['priority'] == 1
    assert run('models', 'promote', '--tenant', storm_tenant, '--task', 'priority', '--version', '2').returncode == 0
    assert active() == {1: False, 2: True} and active_versions(storm_tenant, ignite)['priority'] == 2
    assert run('models', 'rollback', '--tenant', storm_tenant, '--task', 'priority').returncode == 0
    assert active() == {1: True, 2: False} and active_versions(storm_tenant, ignite)['priority'] == 1
    none = f'none-{uuid.uuid4().hex[:6]}'
    missing = run('evaluate', '--tenant', none)
    assert (missing.returncode, ' '.join(missing.stderr.split())) == (2, f"error: unknown tenant '{none}': create it "
                                                                         f"with `alliedium tenants create {none}` "
                                                                         "(see `alliedium tenants list`)")


def test_retrain_over_an_artifact_this_release_cannot_load(ignite, storm_tenant):
    "After an upgrade the active artifact may be in an older format: retraining compares with its recorded score."
    from alliedium.ignite import ignite_client
    v = (active_versions(storm_tenant, ignite).get('priority')
         or train_tenant(storm_tenant, ['priority'], settings=ignite)['priority']['version'])
    with ignite_client(ignite) as c:
        c.sql('UPDATE ALLIEDIUM.MODEL SET format = ? WHERE tenant_id = ? AND task = ? AND version = ?',
              query_args=['skops/1;sha256=00', storm_tenant, 'priority', v])
    latest = max(m['version'] for m in list_models(storm_tenant, 'priority', ignite))
    r = train_tenant(storm_tenant, ['priority'], settings=ignite, tolerance=1.0)['priority']
    decision = [m['metrics']['decision'] for m in list_models(storm_tenant, 'priority', ignite)
                if m['version'] == r['version']]
    assert r['version'] == latest + 1 and r['promoted'] and 'cannot be loaded' in r['reason'] + json.dumps(decision)
    assert active_versions(storm_tenant, ignite)['priority'] == latest + 1


def test_promotion_needs_both_assignee_slices():
    "A version that wins overall (the reporter shortcut) but loses non-self top-3 is kept inactive, and says why."
    sl = lambda s1, n3, n=40: dict(self=dict(n=n, top1=s1), nonself=dict(n=n, top3=n3))
    active = dict(top1=0.70, slices=sl(0.90, 0.30))
    ok, why = decide_task('assignee', dict(top1=0.80, slices=sl(0.99, 0.25)), active, 0.01)
    assert not ok and 'nonself top3: worse: 0.2500 vs active 0.3000' in why and 'self top1: not worse' in why
    ok, why = decide_task('assignee', dict(top1=0.71, slices=sl(0.85, 0.40)), active, 0.01)
    assert not ok and 'self top1: worse' in why
    assert decide_task('assignee', dict(top1=0.70, slices=sl(0.90, 0.295)), active, 0.01)[0]
    ok, why = decide_task('assignee', dict(top1=0.70, slices=sl(0.5, 0.1, n=19)), active, 0.01)
    assert ok and why.count('under 20 tickets, not compared') == 2
    assert not decide_task('assignee', dict(top1=0.60, slices=sl(0.99, 0.99)), active, 0.01)[0]  # overall still counts


def test_assignee_retrain_records_and_compares_slices(ignite, storm_tenant):
    "The registered assignee check carries its slices; the decision against the active version names them."
    v = active_versions(storm_tenant, ignite).get('assignee') or train_tenant(
        storm_tenant, ['assignee'], settings=ignite)['assignee']['version']
    r = train_tenant(storm_tenant, ['assignee'], settings=ignite, tolerance=0.0)['assignee']
    assert r['version'] == v + 1 and set(r['metrics']['slices']) == {'all', 'self', 'nonself'}
    assert r['metrics']['slices']['self']['n'] + r['metrics']['slices']['nonself']['n'] == r['metrics']['n_test']
    # the same seeded fit on the same tickets: not worse on any slice compared, so promoted
    assert r['promoted'] and 'self top1: not worse' in r['reason'], r['reason']
    assert 'nonself' in r['reason'], r['reason']
    recorded = next(m['metrics'] for m in list_models(storm_tenant, 'assignee', ignite) if m['version'] == r['version'])
    assert recorded['check']['slices'] == r['metrics']['slices'] and recorded['decision']['reason'] == r['reason']


def test_a_young_history_trains(ignite):
    "A tenant whose real tickets span fewer days than the held-out window (a new customer) trains: 80/20 check split."
    import pandas as pd
    tenant = f'young-{uuid.uuid4().hex[:8]}'
    create_tenant(tenant, settings=ignite)
    tickets = [t for t in read_issues(jira_file('Hive'), tenant) if isinstance(t, Ticket)]
    tickets.sort(key=lambda t: t.created_at)
    n = 300  # the busiest 300 consecutive tickets: a short history
    i = min(range(len(tickets) - n), key=lambda i: tickets[i + n - 1].created_at - tickets[i].created_at)
    young = tickets[i:i + n]
    assert young[-1].created_at - young[0].created_at < pd.Timedelta(days=ignite.train_eval_days)
    ingest_tickets(tenant, young, settings=ignite)
    r = train_tenant(tenant, tasks=['assignee', 'priority'], settings=ignite)  # all inside train_eval_days (90)
    assert all(x['version'] == 1 and x['promoted'] for x in r.values()), r
    checked = [m['metrics']['check']['n_test'] for m in list_models(tenant, 'priority', ignite)]
    assert checked == [len(young) - int(len(young) * 0.8)]
