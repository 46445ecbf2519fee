"""Issue 20: the suggestion log, outcomes joined from webhooks and ingests, and live quality, against the session's
real Ignite node and a tenant trained on Storm's older tickets (the replay bar: live = offline within 0.01)."""
import uuid

import pytest
from fastapi.testclient import TestClient

from alliedium.feedback import SuggestionLog, feedback_rows, live_quality, prune_feedback, suggestion_log
from alliedium.ignite import ignite_client
from alliedium.ingest import ingest_tickets, ingest_webhook
from alliedium.jira import parse_issue
from alliedium.schema import SCHEMA
from alliedium.serving.api import LocalBackend, make_api
from alliedium.tenants import create_api_key

T0 = '2024-01-02T03:04:05.000+0000'


@pytest.fixture(scope='module')
def replays(request, ignite):
    """Storm's newest 20% replayed through the API after training on the rest (`alliedium bench replay`, learning off)
    and, when a test of the session takes `replayed_online`, the same replay with learning on, on a second tenant with
    the same models, after the first. (Side by side they took as long: 91 s against 88 s on the local node.)"""
    from alliedium.bench.replay import bench_replay
    online = any('replayed_online' in getattr(item, 'fixturenames', ()) for item in request.session.items)
    return bench_replay('Storm', 0.2, settings=ignite, online=online)


@pytest.fixture(scope='module')
def replayed(replays):
    "Storm's newest 20% replayed through the API after training on the rest (`alliedium bench replay`)."
    return replays


@pytest.fixture(scope='module')
def replayed_online(replays):
    "The same replay again with online learning on, on a second tenant with the same models (`bench_replay`'s)."
    return replays['online']


@pytest.fixture(scope='module')
def api(ignite):
    "The API in this process, its suggestion log written before each answer (sync)."
    return TestClient(make_api(LocalBackend(ignite.model_copy(update=dict(feedback_log='sync')))))


def test_replay_live_quality_equals_the_offline_evaluation(replayed):
    r = replayed
    print({k: r[k] for k in ('older', 'newest', 'offline', 'live', 'diff_top1', 'diff_top3', 'triage_p50_ms')})
    assert r['errors'] == [] and r['triages'] == r['newest'] == r['live']['suggested']
    assert r['live']['outcomes'] == r['offline']['n_test'] > 100  # every assigned replayed ticket has its outcome
    assert r['diff_top1'] <= 0.01 and r['diff_top3'] <= 0.01
    assert abs(r['live']['answered_precision'] - r['offline']['accuracy_at_threshold']) <= 0.01


def test_quality_endpoint_answers_per_task_and_version_beside_offline(replayed, api, ignite):
    tenant = replayed['tenant']
    key = create_api_key(tenant, ignite)
    r = api.get(f'/v1/tenants/{tenant}/quality', headers={'Authorization': f'Bearer {key}'})
    assert r.status_code == 200, r.text
    tasks = {x['task']: x for x in r.json()['tasks']}
    assert set(tasks) == {'assignee', 'components', 'labels', 'priority'}
    a = tasks['assignee']
    assert a['live']['top1'] == pytest.approx(replayed['live']['top1']) and 'top1' in a['offline']
    assert sum(p['suggested'] for p in a['series']) == a['live']['suggested']
    assert a['live']['verdicts']['accepted'] + a['live']['verdicts']['top_k'] + a['live']['verdicts']['overridden'] \
        == a['live']['outcomes']
    # the newest ones only: none served in the future
    r = api.get(f'/v1/tenants/{tenant}/quality?since=2999-01-01&task=assignee&period=day',
                headers={'Authorization': f'Bearer {key}'})
    assert r.status_code == 200 and r.json()['tasks'] == []


def test_quality_refuses_without_key_other_key_and_bad_queries(replayed, api, ignite, tenant):
    other = create_api_key(tenant, ignite)
    q = f"/v1/tenants/{replayed['tenant']}/quality"
    key = create_api_key(replayed['tenant'], ignite)
    auth = {'Authorization': f'Bearer {key}'}
    assert api.get(q).status_code == 401
    assert api.get(q, headers={'Authorization': f'Bearer {other}'}).status_code == 403
    r = api.get(q + '?since=yesterday', headers=auth)
    assert r.status_code == 400 and 'ISO 8601' in r.json()['detail']
    assert api.get(q + '?task=owner', headers=auth).status_code == 422
    assert api.get(q + '?period=month', headers=auth).status_code == 422


def test_retriage_keeps_the_first_and_the_latest_suggestion(replayed, api, ignite):
    tenant, key = replayed['tenant'], create_api_key(replayed['tenant'], ignite)
    issue_key = f'NEW-{uuid.uuid4().hex[:6]}'
    for summary in ('Nimbus crashes on startup', 'Supervisor leaks file handles in the worker'):
        r = api.post(f'/v1/tenants/{tenant}/triage', headers={'Authorization': f'Bearer {key}'},
                     json=dict(key=issue_key, fields=dict(summary=summary, created=T0)))
        assert r.status_code == 200, r.text
    with ignite_client(ignite) as c:
        rows = {(t, slot): (served, ranked) for t, slot, served, ranked in c.sql(
            f"SELECT task, slot, served_at, ranked FROM {SCHEMA}.SUGGESTION WHERE tenant_id = ? AND issue_key = ?",
            query_args=[tenant, issue_key])}
    assert {slot for _, slot in rows} == {0, 1} and len(rows) == 8  # 4 tasks, first and latest
    assert rows[('assignee', 0)][0] < rows[('assignee', 1)][0]  # the first kept, the latest moved on


def test_untriaged_issues_and_issues_without_a_key_are_not_logged(replayed, api, ignite):
    tenant, key = replayed['tenant'], create_api_key(replayed['tenant'], ignite)
    with ignite_client(ignite) as c:
        n = lambda: list(c.sql(f'SELECT COUNT(*) FROM {SCHEMA}.SUGGESTION WHERE tenant_id = ?', query_args=[tenant]))
        before = n()
        r = api.post(f'/v1/tenants/{tenant}/triage', headers={'Authorization': f'Bearer {key}'},
                     json=dict(fields=dict(summary='no key: nothing to join an outcome to')))
        assert r.status_code == 200 and n() == before


def _event(key, when, **fields):
    return dict(webhookEvent='jira:issue_updated',
                issue=dict(key=key, fields=dict(summary='Worker dies', reporter=dict(name='rita'), created=T0,
                                                updated=when, **fields)))


def test_outcomes_count_only_what_people_set_after_the_triaged_version(ignite, tenant):
    log = SuggestionLog(ignite, mode='sync')
    answer = dict(versions=dict(assignee=1, labels=1), abstain=False, labels=[dict(name='ui', score=.9)],
                  assignee=[dict(name='bob', score=.6), dict(name='ann', score=.2), dict(name='cy', score=.1)])
    triaged = dict(key='K-1', fields=dict(summary='Worker dies', reporter=dict(name='rita'), created=T0,
                                          updated='2024-01-02T05:00:00.000+0000', labels=['ui']))
    log.log(tenant, triaged, answer)
    # a version older than the one triaged, and the labels it already carried: no outcome
    assert ingest_webhook(tenant, _event('K-1', '2024-01-02T04:00:00.000+0000', assignee=dict(name='zed')),
                          ignite)['outcomes'] == 0
    assert ingest_webhook(tenant, _event('K-1', '2024-01-02T06:00:00.000+0000', labels=['ui']), ignite)['outcomes'] == 0
    assert [r['verdict'] for r in feedback_rows(tenant, settings=ignite)] == ['open', 'open']
    # people assign it later: an outcome; they change their mind: the newest choice is the outcome
    assert ingest_webhook(tenant, _event('K-1', '2024-01-03T00:00:00.000+0000', assignee=dict(name='cy')),
                          ignite)['outcomes'] == 1
    assert ingest_webhook(tenant, _event('K-1', '2024-01-04T00:00:00.000+0000', assignee=dict(name='zed'),
                                         labels=['ui', 'core']), ignite)['outcomes'] == 2
    rows = {r['task']: r for r in feedback_rows(tenant, settings=ignite)}
    assert (rows['assignee']['verdict'], rows['assignee']['chosen']) == ('overridden', 'zed')
    assert (rows['labels']['verdict'], rows['labels']['chosen']) == ('partial', ['core', 'ui'])
    q = {x['task']: x['live'] for x in live_quality(tenant, settings=ignite)['tasks']}
    assert (q['assignee']['top1'], q['assignee']['top3'], q['assignee']['answered']) == (0.0, 0.0, 1)
    assert (q['labels']['precision'], q['labels']['recall']) == (1.0, 0.5)


def test_a_bulk_ingest_joins_outcomes_and_the_async_log_writes_in_the_background(ignite, tenant, zk_issues):
    log = SuggestionLog(ignite, mode='async')
    issues = [i for i in zk_issues if (i['fields'].get('assignee') or {}).get('name')][:20]
    for i in issues:
        filed = {k: v for k, v in i['fields'].items() if k not in ('assignee', 'updated')}
        log.log(tenant, dict(key=i['key'], fields=filed | {'updated': i['fields']['created']}),
                dict(versions=dict(assignee=1), abstain=False, assignee=[dict(name='nobody', score=.5)]))
    assert log.flush(60) and log.written == len(issues) and log.failed == log.dropped == 0
    s = ingest_tickets(tenant, [parse_issue(i, tenant) for i in zk_issues], ignite)
    assert s.outcomes == len(issues)
    assert {r['verdict'] for r in feedback_rows(tenant, 'assignee', settings=ignite)} == {'overridden'}
    # a replay of the same file writes nothing, so it records no outcome again
    assert ingest_tickets(tenant, [parse_issue(i, tenant) for i in zk_issues], ignite).outcomes == 0


def test_retention_prunes_old_rows_only(ignite, tenant):
    SuggestionLog(ignite, mode='sync').log(tenant, dict(key='R-1', fields=dict(summary='s', created=T0)),
                                           dict(versions=dict(priority=1), priority=dict(label='Major',
                                                                                         scores={'Major': 1.0})))
    with ignite_client(ignite) as c:
        c.sql(f"UPDATE {SCHEMA}.SUGGESTION SET served_at = DATEADD('DAY', -400, served_at) WHERE tenant_id = ?",
              query_args=[tenant])
    SuggestionLog(ignite, mode='sync').log(tenant, dict(key='R-2', fields=dict(summary='s', created=T0)),
                                           dict(versions=dict(priority=1), priority=dict(label='Major',
                                                                                         scores={'Major': 1.0})))
    assert prune_feedback(ignite, days=365)['SUGGESTION'] >= 2
    assert [r['issue_key'] for r in feedback_rows(tenant, settings=ignite)] == ['R-2']


def test_the_process_log_is_one_per_cluster_and_mode(ignite):
    assert suggestion_log(ignite) is suggestion_log(ignite)
    assert suggestion_log(ignite.model_copy(update=dict(feedback_log='off'))) is not suggestion_log(ignite)


def _served(log, tenant, version, top1, n, prefix):
    "`n` answers of `version` whose top-1 is `top1`, for new issues PREFIX-i filed at T0."
    for i in range(n):
        log.log(tenant, dict(key=f'{prefix}-{i}', fields=dict(summary=f'issue {i}', created=T0, updated=T0)),
                dict(versions=dict(assignee=version), abstain=False, assignee=[dict(name=top1, score=.9)]))


def test_a_version_clearly_less_precise_live_is_rolled_back(ignite, tenant):
    from alliedium.feedback import rollback_check
    from alliedium.registry import active_versions
    from alliedium.runs import list_runs
    from alliedium.training import train_tenant
    from fixtures_data import SAMPLE, _first_issues
    ingest_tickets(tenant, [parse_issue(i, tenant) for i in _first_issues(SAMPLE/'Zookeeper.jsonl.gz', 300)], ignite)
    for _ in range(2): train_tenant(tenant, tasks=['assignee'], settings=ignite, tolerance=1.0)
    assert active_versions(tenant, ignite) == {'assignee': 2}
    s = ignite.model_copy(update=dict(feedback_rollback_min_outcomes=40))
    log = SuggestionLog(s, mode='sync')
    _served(log, tenant, 1, 'ann', 50, 'OLD')  # version 1 was right 50 times of 50
    _served(log, tenant, 2, 'bob', 30, 'NEW')  # version 2 wrong 30 times: too few answers to judge yet
    people = lambda prefix, n: [parse_issue(dict(key=f'{prefix}-{i}', fields=dict(
        summary=f'issue {i}', created=T0, updated='2024-02-01T00:00:00.000+0000', assignee=dict(name='ann'))), tenant)
        for i in range(n)]
    assert ingest_tickets(tenant, people('OLD', 50) + people('NEW', 30), s).outcomes == 80
    assert rollback_check(tenant, s) == [] and active_versions(tenant, s) == {'assignee': 2}
    _served(log, tenant, 2, 'bob', 60, 'MORE')
    assert ingest_tickets(tenant, people('MORE', 60), s).outcomes == 60
    assert rollback_check(tenant, s.model_copy(update=dict(feedback_rollback=False))) == []  # the setting
    done = rollback_check(tenant, s)
    assert [(d['task'], d['rolled_back'], d['to'], d['precision'], d['predecessor_precision']) for d in done] == \
        [('assignee', 2, 1, 0.0, 1.0)]
    assert active_versions(tenant, s) == {'assignee': 1}
    run, = [r for r in list_runs(tenant, s) if r['kind'] == 'rollback']
    assert run['status'] == 'succeeded' and run['metrics']['z'] >= 2.33
    assert rollback_check(tenant, s) == []  # version 1 is active again: nothing newer to judge


def test_a_batch_triage_logs_each_answer(replayed, api, ignite):
    tenant, key = replayed['tenant'], create_api_key(replayed['tenant'], ignite)
    keys = [f'BATCH-{uuid.uuid4().hex[:6]}' for _ in range(3)]
    body = dict(issues=[dict(key=k, fields=dict(summary=f'Topology {k} stalls', created=T0)) for k in keys]
                + [dict(fields=dict())])  # invalid: its own error, nothing logged
    r = api.post(f'/v1/tenants/{tenant}/triage/batch', headers={'Authorization': f'Bearer {key}'}, json=body)
    assert r.status_code == 200, r.text
    with ignite_client(ignite) as c:
        logged = {k for k, in c.sql(f"SELECT issue_key FROM {SCHEMA}.SUGGESTION WHERE tenant_id = ? AND slot = 0 "
                                     f"AND issue_key LIKE 'BATCH-%'", query_args=[tenant])}
    assert logged == set(keys)


def test_the_assignee_thresholds_follow_the_live_outcomes(ignite, tenant):
    from alliedium.feedback import refit_thresholds
    from alliedium.registry import active_versions, load_model
    from alliedium.runs import list_runs
    from alliedium.training import train_tenant
    from fixtures_data import SAMPLE, _first_issues
    ingest_tickets(tenant, [parse_issue(i, tenant) for i in _first_issues(SAMPLE/'Zookeeper.jsonl.gz', 300)], ignite)
    train_tenant(tenant, tasks=['assignee'], settings=ignite)
    _, before, _ = load_model(tenant, 'assignee', settings=ignite)
    s = ignite.model_copy(update=dict(feedback_refit_min_outcomes=60))
    log = SuggestionLog(s, mode='sync')
    # 80 tickets filed by rita: a confident top-1 (0.95) was right, a doubtful one (0.35) wrong
    for i in range(80):
        right = i % 2 == 0
        log.log(tenant, dict(key=f'LIVE-{i}', fields=dict(summary=f'issue {i}', reporter=dict(name='rita'),
                                                          created=T0, updated=T0)),
                dict(versions=dict(assignee=1), abstain=False,
                     assignee=[dict(name='ann' if right else 'bob', score=.95 if right else .35)]))
    assert refit_thresholds(tenant, s) is None  # no outcome yet
    ingest_tickets(tenant, [parse_issue(dict(key=f'LIVE-{i}', fields=dict(
        summary=f'issue {i}', reporter=dict(name='rita'), created=T0, updated='2024-02-01T00:00:00.000+0000',
        assignee=dict(name='ann'))), tenant) for i in range(80)], s)
    r = refit_thresholds(tenant, s)
    assert r is not None and r['outcomes'] == 80 and r['from_version'] == 1
    assert 0.35 < r['new']['threshold'] <= 0.95 and r['new_live']['precision'] == 1.0
    assert r['new']['self_threshold'] == before.self_threshold_  # no live answer of the reporter: kept
    assert active_versions(tenant, s) == {'assignee': r['version']}
    _, after, metrics = load_model(tenant, 'assignee', settings=s)
    assert after.threshold_ == r['new']['threshold'] and metrics['threshold_refit']['from_version'] == 1
    assert [x['kind'] for x in list_runs(tenant, s)].count('threshold') == 1
    assert refit_thresholds(tenant, s) is None  # the new version has no outcome of its own yet


def test_replay_with_online_learning_on_learns_from_outcomes(replayed, replayed_online):
    """The same models replayed again with learning on (`alliedium bench replay`): the same triages and outcomes.
    The gain is reported, not asserted: on Storm's 27 non-self tickets it is within a ticket either way (measured
    -0.037 top-3); that learning reaches the next suggestion is the next test's assertion."""
    on, off = replayed_online, replayed
    print({'off': (off['nonself'], off['live']['top1'], off['live']['top3']),
           'on': (on['nonself'], on['live']['top1'], on['live']['top3'])})
    assert on['errors'] == [] and on['triages'] == off['triages'] and on['all']['n'] == off['live']['outcomes']
    assert on['nonself']['n'] == off['nonself']['n'] > 20
    assert on['all']['top3'] >= off['live']['top3'] - 0.02  # learning never costs more than a few answers


def _filed(issue:dict, key:str|None=None, **fields) -> dict:
    "A Jira issue as filed (without the fields set later), with `fields` changed."
    from alliedium.bench.replay import LATER
    f = {k: v for k, v in issue['fields'].items() if k not in LATER}
    return dict(key=key or issue['key'], fields=f | {'updated': f['created']} | fields)


def test_a_person_who_starts_taking_a_component_is_suggested_after_a_few_outcomes(replayed, ignite):
    "Real Storm tickets of one component, taken by someone who never took it: top 3 with learning on, not off."
    from alliedium.bench.replay import clone_tenant, replay_split
    from alliedium.jira import jira_file
    from alliedium.registry import list_models, load_model
    older, newest = replay_split(jira_file('Storm', ignite), 'x', 0.2)
    comp = lambda i: [c['name'] for c in i['fields'].get('components') or []]
    c_tickets = [i for i in newest if comp(i)[:1] == ['storm-client']]
    took = {(i['fields'].get('assignee') or {}).get('name') for i in older if 'storm-client' in comp(i)}
    busy = {}
    for i in older:
        if (a := (i['fields'].get('assignee') or {}).get('name')): busy[a] = busy.get(a, 0) + 1
    tenant = f"online-{uuid.uuid4().hex[:6]}"
    key = clone_tenant(replayed['tenant'], tenant, older, ignite)
    stored = [(m['version'], m['created_at']) for m in list_models(tenant, 'assignee', ignite)]
    auth = {'Authorization': f'Bearer {key}'}
    apis = {on: TestClient(make_api(LocalBackend(ignite.model_copy(update=dict(online_learning=on,
                                                                                serve_poll_seconds=1e-6)))))
            for on in (True, False)}
    n, asked = 3, c_tickets[3:9]

    def top3(on:bool) -> list[list[str]]:
        out = []
        for i in asked:
            r = apis[on].post(f'/v1/tenants/{tenant}/triage', json=_filed(i, key=f"ASK-{i['key']}"), headers=auth)
            assert r.status_code == 200, r.text
            out.append([a['name'] for a in r.json()['assignee'][:3]])
        return out
    before = top3(False)
    assert top3(True) == before  # nothing learnt yet: the same answers
    shown = {p for r in before for p in r}
    # the busiest person who never took a storm-client ticket and is suggested for none of them
    person = max((p for p in busy if p not in took and p not in shown), key=busy.get)
    for i in c_tickets[:n]:  # they take the component's next n tickets (webhooks: filed, then assigned to them)
        for event, issue in (('jira:issue_created', _filed(i)), ('jira:issue_updated', _filed(
                i, assignee=dict(name=person), updated=i['fields']['updated']))):
            r = apis[True].post(f'/v1/tenants/{tenant}/webhooks/jira', json=dict(webhookEvent=event, issue=issue),
                                headers=auth)
            assert r.status_code == 200, r.text
    mine = [(i['fields'].get('reporter') or {}).get('name') != person for i in asked]  # (never their own)
    on, off = ([person in r for r, m in zip(top3(x), mine) if m] for x in (True, False))
    print(f"{person} ({busy[person]} tickets before) in the top 3 of {len(on)} later storm-client tickets after {n} "
          f"outcomes: learning on {sum(on)}, off {sum(off)}")
    assert len(on) >= 4 and sum(on) > len(on) / 2 and not any(off)  # most of them after 3 outcomes; never off
    # the stored model is as trained: the same version, and a model loaded from it does not know them
    assert [(m['version'], m['created_at']) for m in list_models(tenant, 'assignee', ignite)] == stored
    stored_model = load_model(tenant, 'assignee', settings=ignite)[1]
    assert not hasattr(stored_model, 'live_')
    assert stored_model._took_in('storm-client', stored_model.end_, stored_model.pid_[person])[0] == 0


def test_learning_while_triaging_from_threads(replayed, ignite):
    "Triage from four threads while another learns the replayed tickets: every answer whole, the state as if alone."
    from concurrent.futures import ThreadPoolExecutor
    from alliedium.bench.replay import replay_split
    from alliedium.jira import jira_file, tickets_frame
    from alliedium.models.triage import load_tenant_models
    _, newest = replay_split(jira_file('Storm', ignite), 'x', 0.2)
    df = tickets_frame([parse_issue(i, 'x') for i in newest])
    bodies = [_filed(i, key=f'ASK-{i["key"]}') for i in newest[:40]]
    tm = load_tenant_models(replayed['tenant'], ignite)

    def learner() -> int:
        for s in range(0, len(df), 10): tm.learn(df.iloc[s:s + 10])  # each part its own turn of the lock
        return len(tm.models['assignee'].live_)
    with ThreadPoolExecutor(5) as ex:
        learning = ex.submit(learner)
        asked = [ex.submit(lambda k: [tm.triage(b) for b in bodies[k::4]], k) for k in range(4)]
        answers, learnt = [a for f in asked for a in f.result()], learning.result()
    assert len(answers) == len(bodies) and all(a['assignee'] and a['versions'] for a in answers)
    assert learnt == df['assignee'].notna().sum() > 100
    alone = load_tenant_models(replayed['tenant'], ignite)
    alone.learn(df)
    assert [tm.triage(b)['assignee'] for b in bodies[:10]] == [alone.triage(b)['assignee'] for b in bodies[:10]]
