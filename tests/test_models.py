"The models on real tenants, temporal split: one contract; they beat the reference, never read targets, survive skops."
import inspect

import numpy as np
import pytest

from alliedium.evaluation import assignee_metrics, asked, multilabel_metrics, priority_metrics
from alliedium.features import TextMatrix, temporal_split
from alliedium.models import MODELS, TriageModel, new_model
from alliedium.models.triage import TenantModels
from alliedium.registry import dump_artifact, load_artifact

REFERENCE_TOP1 = {'Zookeeper': 0.29, 'Storm': 0.47}
REFERENCE_TOP3 = {'Zookeeper': 0.311, 'Storm': 0.504}   # the reference model re-run here (the issue gives top-1 only)


@pytest.fixture(scope='module')
def zk_split(zk_tickets): return temporal_split(zk_tickets)


@pytest.fixture(scope='module')
def zk_models(zk_split):
    train, _ = zk_split
    text = TextMatrix(train)
    return {t: new_model(t).fit(train, text=text) for t in MODELS}


def test_models_registry_names_every_task():
    assert set(MODELS) == {'assignee', 'components', 'labels', 'priority'}


def _params(f): return [(p.name, p.default) for p in inspect.signature(f).parameters.values()]


def test_every_family_follows_the_model_contract(zk_tickets):
    "A fitted tiny model of every task is a `TriageModel`, and its `fit` and `predict` take the protocol's parameters."
    tiny = zk_tickets.head(200)
    methods = [n for n, v in vars(TriageModel).items() if inspect.isfunction(v) and not n.startswith('_')]
    assert methods == ['fit', 'predict']
    for task in MODELS:
        m = new_model(task)
        assert m.fit(tiny) is m and isinstance(m, TriageModel) and m.task == task, task
        for name in methods: assert _params(getattr(type(m), name)) == _params(getattr(TriageModel, name)), (task, name)
        assert len(m.predict(tiny.head(3))) == 3


def test_fitted_attributes_end_in_an_underscore(zk_tickets):
    "`__init__` stores parameters only (scikit-learn's rule): what `fit` adds ends in `_`."
    for task in MODELS:
        m = new_model(task)
        params = set(vars(m))
        assert params == set(inspect.signature(type(m)).parameters), task
        added = set(vars(m.fit(zk_tickets.head(200)))) - params
        assert added and all(a.endswith('_') for a in added), (task, sorted(added))


def test_assignee_beats_the_reference_on_zookeeper(zk_split, zk_models):
    m = assignee_metrics(zk_models['assignee'], zk_split[1])
    assert m['top1'] > REFERENCE_TOP1['Zookeeper'] and m['top3'] > REFERENCE_TOP3['Zookeeper']
    assert m['top1'] <= m['top3'] <= m['top5'] <= m['candidate_share']
    assert 0 < m['coverage'] <= 1


def test_assignee_scores_are_calibrated_probabilities(zk_split, zk_models):
    test = zk_split[1][zk_split[1].assignee.notna()]
    ranked = zk_models['assignee'].rank(asked(test, 'assignee'), k=1)
    top, hit = np.array([r[0][1] for r in ranked]), np.array([r[0][0] == a for r, a in zip(ranked, test.assignee)])
    assert ((top >= 0) & (top <= 1)).all()
    hi = top >= np.median(top)
    assert hit[hi].mean() > hit[~hi].mean()      # more confident answers are right more often
    assert abs(top.mean() - hit.mean()) < 0.2    # and the mean confidence is near the accuracy on future tickets


def test_priority_beats_the_balanced_baseline_and_ranks(zk_split, zk_models):
    m = priority_metrics(zk_models['priority'], zk_split[1])
    assert m['macro_f1'] > 0.30 and m['rank_correlation'] > 0


def test_components_beat_the_one_vs_rest_baseline(storm_tickets):
    train, test = temporal_split(storm_tickets)
    assert multilabel_metrics(new_model('components').fit(train), test)['micro_f1'] > 0.28


def test_predictions_ignore_targets_and_later_fields(zk_split, zk_models):
    test = zk_split[1].head(40).copy()
    before = {t: m.predict(test) for t, m in zk_models.items()}
    test['assignee'], test['priority'] = 'someone-else', 'Blocker'
    test['labels'] = [['leak']] * len(test)
    after = {t: m.predict(test) for t, m in zk_models.items()}
    assert before['assignee'] == after['assignee'] and before['priority'] == after['priority']
    assert before['components'] == after['components']


def _close(a, b, tol=5e-3):
    "Equal answers, scores within `tol` (artifacts keep weights in half precision)."
    if isinstance(a, dict): return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list): return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float): return abs(a - b) <= tol
    return a == b


def test_models_survive_a_skops_round_trip(zk_split, zk_models):
    q = zk_split[1].head(40)
    for task, m in zk_models.items():
        back = load_artifact(*dump_artifact(m))
        assert _close(back.predict(q), m.predict(q)), task
        assert back.predict(q) != [] and type(back.vectorizer_).__name__ == 'TextEncoder'


def test_tenant_models_encode_a_ticket_once_per_request(zk_split, zk_models):
    loaded = {t: load_artifact(*dump_artifact(m)) for t, m in zk_models.items()}
    assert len({id(m.vectorizer_) for m in loaded.values()}) == 4
    tm = TenantModels('zk', loaded, {t: 1 for t in loaded})
    assert len({id(m.vectorizer_) for m in tm.models.values()}) == 1   # one encoder for the four tasks
    assert tm.models['components'].index_ is tm.models['labels'].index_   # one neighbour index for both list fields
    issue = {'key': 'ZOOKEEPER-1', 'fields': {'summary': 'Leader election hangs after a network partition',
                                             'description': 'The ensemble never recovers',
                                             'reporter': {'name': 'phunt'}}}
    answer = tm.triage(issue)
    assert answer['versions'] == {t: 1 for t in loaded}
    assert answer['priority']['label'] in set(zk_models['priority'].classes_)
    assert 0 <= answer['rank_score'] <= 1 and len(answer['assignee']) >= 1


def test_one_ticket_rows_predict_what_the_frame_predicts(zk_split, zk_models):
    "Serving predicts from `TicketRows` (plain lists, one ticket): the frame's answers, for every task."
    from alliedium.features import TicketRows
    from alliedium.jira import FRAME_COLUMNS
    q = zk_split[1].head(40).reset_index(drop=True)
    for task, m in zk_models.items():
        batch = m.predict(q)
        one_by_one = [m.predict(TicketRows({c: [q[c][i]] for c in FRAME_COLUMNS}))[0] for i in range(len(q))]
        assert _close(one_by_one, batch), task
        assert _close(m.predict(TicketRows({c: list(q[c]) for c in FRAME_COLUMNS})), batch), task


def _toy_tickets():
    "Five tickets, three people beside the reporters: `io` is ann's, `web` bob's; r1's tickets went to others."
    import pandas as pd
    df = pd.DataFrame(dict(created_at=pd.to_datetime(['2020-01-01', '2020-02-01', '2020-03-01', '2020-04-01',
                                                      '2020-05-01']),
                           summary=['disk full', 'ui colour', 'disk quota', 'ui font', 'net drop'], description='',
                           reporter=['r1', 'r1', 'r2', 'r2', 'r1'], assignee=['ann', 'bob', 'ann', 'r2', 'cat'],
                           components=[['io'], ['web'], ['io'], ['web'], ['net']]))
    df['issue_key'], df['labels'], df['priority'] = [f'T-{i}' for i in range(5)], [[]] * 5, 'Major'
    return df.assign(summary=df.summary + ' ' + df.assignee)


def _toy_others(mix, **ticket):
    "The others' mixture (reporter's scores dropped) for one new ticket of the toy tenant, by name."
    import pandas as pd
    from alliedium.models.assignee import AssigneeModel
    df = _toy_tickets()
    m = AssigneeModel(mix=mix, min_tickets=1, calibration_share=0).fit(df)
    q = df.iloc[[4]].assign(created_at=pd.Timestamp('2020-06-01'), **{k: [v] for k, v in ticket.items()})
    _, P, rep = m._raw_scores(q)
    return m, {n: p for n, p in zip(m.classes_, P[0]) if n != rep[0]}, P[0][list(m.classes_).index(rep[0])] \
        if rep[0] in set(m.classes_) else 0.0


def test_assignee_mixture_parts_each_find_their_person():
    m, p, _ = _toy_others((1, 0, 0, 0), reporter='zed', components=[])
    assert list(m.classes_) == ['ann', 'bob', 'cat', 'r2']   # everyone who took a ticket, not only the classifier's
    _, p, _ = _toy_others((0, 0, 1, 0), reporter='zed', components=['io'])
    assert max(p, key=p.get) == 'ann' and p['ann'] > 0.99 * sum(p.values())   # the component share
    _, p, _ = _toy_others((0, 0, 0, 1), reporter='r1', components=[])
    assert {n for n, s in p.items() if s > 0} == {'ann', 'bob', 'cat'}   # r1's tickets taken by others
    _, p, r = _toy_others((0, 1, 0, 0), reporter='r2', components=[], summary='ui colour bob')
    assert max(p, key=p.get) == 'bob' and r == 0               # the kNN vote; the reporter is never an other


def test_assignee_mixture_rows_sum_to_one_minus_p_self(zk_split, zk_models):
    m = zk_models['assignee']
    p_self, P, _ = m._raw_scores(asked(zk_split[1].head(30), 'assignee'))
    assert np.allclose(P.sum(1) + p_self, 1, atol=1e-6) and P.shape[1] == len(m.people_) > len(m.clf_cols_)


def test_assignee_reporter_threshold_is_stricter_where_reporters_miss_nonself_tickets():
    from alliedium.models.assignee import _thresholds
    rng = np.random.default_rng(1); n = 600
    is_rep = rng.random(n) < 0.6; is_self = np.where(is_rep, rng.random(n) < 0.7, rng.random(n) < 0.2)
    top = rng.random(n); hit = np.where(is_rep, is_self & (top > 0.3), rng.random(n) < 0.9)
    to, ts = _thresholds(top, is_rep, hit, is_self, 0.8)
    keep = np.where(is_rep, top >= ts, top >= to)
    for m in (is_self, ~is_self, np.ones(n, bool)):
        assert keep[m].sum() < 20 or hit[keep & m].mean() >= 0.8
    assert ts > to and keep.sum() > 0


def test_evaluation_answers_where_predict_answers(zk_split, zk_models):
    m = zk_models['assignee']
    test = zk_split[1][zk_split[1].assignee.notna()]
    was = m.self_threshold_
    m.self_threshold_ = 0.99   # a reporter's top-1 nearly never answers
    try:
        out = assignee_metrics(m, test)
        answered = np.array([not p['abstain'] for p in m.predict(asked(test, 'assignee'))])
        assert out['coverage'] == answered.mean() and out['self_threshold'] == 0.99
        top = [r[0][0] for r in m.rank(asked(test, 'assignee'), k=1)]
        assert not any(a and t == r for a, t, r in zip(answered, top, test.reporter))
    finally: m.self_threshold_ = was   # the shared fixture as it was


def test_assignee_suggestions_say_why_through_triage(zk_split, zk_models):
    "Each assignee suggestion of a triage answer carries `why`: words citing past tickets the model was fitted on."
    import re
    train = zk_split[0]
    loaded = {t: load_artifact(*dump_artifact(m)) for t, m in zk_models.items()}
    tm = TenantModels('zk', loaded, {t: 1 for t in loaded})
    known, cited = set(train['issue_key']), set()
    for _, row in zk_split[1].head(20).iterrows():
        issue = {'key': row['issue_key'], 'fields': {'summary': row['summary'], 'description': row['description'],
                                                    'components': [{'name': c} for c in row['components']],
                                                    'reporter': {'name': row['reporter']}}}
        answer = tm.triage(issue)
        for s in answer['assignee']:
            assert s['why'] and all(isinstance(w, str) and w for w in s['why']), s
            assert s['why'][0].startswith('reporter') == (s['name'] == row['reporter']), s
            cited |= {k for w in s['why'] for k in re.findall(r'ZOOKEEPER-\d+', w)}
    assert cited and cited <= known   # the similar tickets named are training tickets


def _tenant(self_rate:float, n:int=400, seed:int=0):
    "A synthetic tenant: each component's tickets go to its developer, or with `self_rate` to their reporter."
    import pandas as pd
    rng = np.random.default_rng(seed)
    comp = rng.choice(['io', 'web', 'net', 'db'], n); dev = dict(io='ann', web='bob', net='cat', db='dan')
    rep = [f'user{i}' for i in rng.integers(0, n // 2, n)]   # many reporters file once or twice
    asg = [r if rng.random() < self_rate else dev[c] for r, c in zip(rep, comp)]
    return pd.DataFrame(dict(created_at=pd.date_range('2020-01-01', periods=n, freq='D'), issue_key=[
        f'T-{i}' for i in range(n)], summary=[f'{c} problem {w}' for c, w in zip(comp, rng.integers(0, 50, n))],
        description='', reporter=rep, assignee=asg, components=[[c] for c in comp], labels=[[]] * n,
        priority='Major'))


@pytest.mark.parametrize('self_rate', [0.05, 0.9])
def test_a_new_reporter_is_ranked_by_what_new_reporters_did(self_rate):
    "A reporter never seen is first only where new reporters take their own tickets; the `why` says which."
    import pandas as pd
    from alliedium.models.assignee import AssigneeModel
    df = _tenant(self_rate); m = AssigneeModel().fit(df)
    q = df.tail(1).assign(created_at=df['created_at'].max() + pd.Timedelta(days=1), reporter='nobody',
                          summary='net problem 7', components=[['net']])
    (a,) = m.predict(q)
    first = a['assignee'][0]
    assert (first['name'] == 'nobody') == (self_rate > 0.5), a
    if self_rate < 0.5: assert first['name'] == 'cat' and any('component net' in w for w in first['why']), a
    why = next(s['why'] for s in a['assignee'] if s['name'] == 'nobody')
    took, n = m.new_self_
    assert why == [f'reporter new to this tenant: new reporters took {took} of their {n} first tickets here']
    assert (took / n > 0.5) == (self_rate > 0.5)
