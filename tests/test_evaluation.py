"""Evaluation: the metrics' values (against computations of the test's own and hand-built cases), rolling months
(every month, trained on the past only), cross-validation, and the report plots."""
import json

import numpy as np
import pandas as pd
import pytest

from alliedium.evaluation import (asked, cross_validate, evaluate_rolling, evaluate_split, evaluate_tenant, fit_tasks,
                                  nested_cv, plot_report)
from alliedium.features import temporal_split
from alliedium.jira import Ticket, tickets_frame


def frame(rows, start='2024-01-01', hours=1):
    "Tickets from (summary, reporter, assignee, priority) rows, one every `hours` from `start`."
    t0 = pd.Timestamp(start)
    return tickets_frame([Ticket(tenant_id='t', issue_key=f'T-{start}-{i}', created_at=t0 + pd.Timedelta(hours=hours*i),
                                 updated_at=t0 + pd.Timedelta(hours=hours*i), summary=s, description=s, reporter=r,
                                 issue_type='Bug', priority=p, assignee=a) for i, (s, r, a, p) in enumerate(rows)])


def micro_f1(truth, pred):
    "Micro-F1 of lists of sets, counted by hand."
    tp = sum(len(set(t) & set(p)) for t, p in zip(truth, pred))
    fp = sum(len(set(p) - set(t)) for t, p in zip(truth, pred))
    fn = sum(len(set(t) - set(p)) for t, p in zip(truth, pred))
    return 2 * tp / (2 * tp + fp + fn)


def macro_f1(truth, pred):
    "Macro-F1 over every label that is true or predicted, counted by hand."
    f1 = []
    for c in set(truth) | set(pred):
        tp = sum(t == c and p == c for t, p in zip(truth, pred))
        f1.append(2 * tp / (sum(t == c for t in truth) + sum(p == c for p in pred)))
    return float(np.mean(f1))


def test_temporal_split_metrics_are_the_models_scores_on_the_newest_tickets(storm_tickets):
    params = {'assignee': {'top_k': 10}}
    r = json.loads(json.dumps(evaluate_tenant(storm_tickets, params=params)))
    train, test = temporal_split(storm_tickets, 0.2)
    assert r['split'] == dict(train=len(train), test=len(test), test_from=str(test['created_at'].min()))
    assert train['created_at'].max() <= test['created_at'].min() and len(test) == round(0.2 * len(storm_tickets))
    models, _ = fit_tasks(train, params=params)  # the fits are seeded: the same models as evaluate_tenant's
    assigned = test[test['assignee'].notna()]
    ranked = models['assignee'].rank(asked(assigned, 'assignee'), k=10)
    top = lambda k: np.mean([t in [n for n, _ in x[:k]] for x, t in zip(ranked, assigned['assignee'])])
    a = r['assignee']
    assert a['n_test'] == len(assigned) and a['top1'] == pytest.approx(top(1)) and a['top3'] == pytest.approx(top(3))
    assert a['topk_curve'] == pytest.approx([top(k) for k in range(1, 11)]) and a['top5'] == a['topk_curve'][4]
    assert 0.5 < a['top1'] <= a['top3'] <= a['top5'] <= a['candidate_share'] <= 1
    p, m = test[test['priority'].notna()], models['priority']
    pred = m.classes_[m.proba(asked(p, 'priority')).argmax(1)]
    assert r['priority']['accuracy'] == pytest.approx(np.mean(pred == p['priority'].to_numpy()))
    assert r['priority']['macro_f1'] == pytest.approx(macro_f1(list(p['priority']), list(pred)))
    assert sum(map(sum, r['priority']['confusion']['matrix'])) == r['priority']['n_test'] == len(p)
    for task in ('components', 'labels'):
        truth, sets = list(test[task]), models[task].predict_sets(asked(test, task))
        assert r[task]['micro_f1'] == pytest.approx(micro_f1(truth, sets)) and r[task]['n_test'] == len(test)
    assert set(r['fit_seconds']) >= {'assignee', 'components', 'labels', 'priority', 'total'}
    assert len(plot_report(r, 'Storm').axes) >= 2


def test_assignee_metrics_of_a_hand_built_case():
    "Disk tickets go to alice and dialog tickets to bob; the test asks about 4 assigned tickets and 1 unassigned."
    train = frame([('disk full on broker', f'r{i % 3}', 'alice', 'Major') if i % 2 else
                   ('button misaligned in dialog', f'r{i % 3}', 'bob', 'Major') for i in range(120)]
                  + [('release notes', 'dave', 'dave', 'Major')] * 6)  # some self-assignment, as in every tenant
    test = frame([('disk full again', 'r0', 'alice', 'Major'),  # top-1 right
                  ('broker disk full', 'r1', 'alice', 'Major'),  # top-1 right
                  ('dialog button misaligned', 'r2', 'alice', 'Major'),  # bob first, alice second
                  ('disk full', 'r0', 'carol', 'Major'),  # carol never took a ticket: no model can name her
                  ('button misaligned', 'r1', None, 'Major')], start='2024-02-01')  # unassigned: not counted
    a = evaluate_split(train, test, ['assignee'])['assignee']
    assert (a['n_test'], a['top1'], a['top3'], a['top5'], a['candidate_share']) == (4, 0.5, 0.75, 0.75, 0.75), a
    assert a['coverage'] < 1 or a['accuracy_at_threshold'] == 0.5


def test_rolling_has_every_month_each_trained_on_the_months_before_it():
    "Each month's priority is new and comes back the month after: a month trained on itself or a later one scores."
    past = [(f'2024-0{k}', 'disk full broker' if k % 2 else 'typo in docs', 'Major' if k % 2 else 'Trivial')
            for k in range(1, 7)]
    months = {m: [(words, 'r0', None, prio)] * 40 for m, words, prio in past}
    months['2024-07'] = [('alpha beta', 'r1', None, 'Minor')] * 30
    months['2024-08'] = [('alpha beta', 'r1', None, 'Minor')] * 10 + [('gamma delta', 'r2', None, 'Critical')] * 10
    df = pd.concat([frame(rows, start=f'{m}-01', hours=6) for m, rows in months.items()], ignore_index=True)
    r = evaluate_rolling(df, ['priority'], months=3)
    assert list(r) == ['2024-06', '2024-07', '2024-08']  # the newest three months, none dropped
    assert [r[m]['priority']['n_test'] for m in r] == [40, 30, 20]  # each month's tickets, and only them
    f1 = [r[m]['priority']['macro_f1'] for m in r]
    assert f1[0] == 1.0  # June's Trivial docs typos were learned from January to May
    assert f1[1] == 0.0  # July's Minor is in neither the past nor July's training set (nor August, which has it)
    assert 0 < f1[2] < 1  # August: July's Minor is learned from the past, its own Critical is not


def test_cross_validation_and_nested_cv(zk_tickets):
    small = zk_tickets.tail(500)
    cv = cross_validate(small, 'priority', k=3)
    assert len(cv['folds']) == 3 and all(0 < f < 1 for f in cv['folds'])
    assert (cv['metric'], cv['mean'], cv['std']) == ('macro_f1', pytest.approx(np.mean(cv['folds'])),
                                                     pytest.approx(np.std(cv['folds'])))
    n = nested_cv(small, 'priority', {'C': [1.0, 5.0]}, outer=2, inner=2)
    assert len(n['folds']) == 2 and n['mean'] == pytest.approx(np.mean([f['outer'] for f in n['folds']]))
    assert all(f['chosen'] == max(f['inner'], key=f['inner'].get) for f in n['folds'])


def test_multilabel_metrics_of_a_month_without_any_value(zk_tickets):
    "A rolling month where nobody used a label and none was suggested: F1 is undefined (None), not an error."
    from alliedium.evaluation import multilabel_metrics
    from alliedium.models import new_model
    df = zk_tickets.head(300).copy()
    df['labels'] = [[] for _ in range(len(df))]
    m = new_model('labels').fit(df.head(250))
    r = multilabel_metrics(m, df.tail(50))
    assert r['micro_f1'] is None and r['predicted_share'] == 0 and r['n_test'] == 50


def test_assignee_slices_and_baselines_on_a_real_tenant(zk_tickets):
    "Per-slice figures recomputed here from the model's ranking; the baselines on the same tickets; the table row."
    from alliedium.evaluation import assignee_row, component_owner_ranks, knn_vote_ranks
    r = json.loads(json.dumps(evaluate_tenant(zk_tickets, ['assignee'])))
    train, test = temporal_split(zk_tickets, 0.2)
    test = test[test['assignee'].notna()]
    m = fit_tasks(train, ['assignee'])[0]['assignee']
    ranked = m.rank(asked(test, 'assignee'), k=10)
    truth, rep = test['assignee'].to_numpy(), test['reporter'].to_numpy()
    is_self = truth == rep
    a = r['assignee']
    for name, mask in (('all', np.ones(len(test), bool)), ('self', is_self), ('nonself', ~is_self)):
        s, idx = a['slices'][name], np.nonzero(mask)[0]
        assert s['n'] == len(idx) > 20
        for k in (1, 3, 5):
            assert s[f'top{k}'] == pytest.approx(np.mean([truth[i] in [n for n, _ in ranked[i][:k]] for i in idx]))
        answered = [i for i in idx if ranked[i] and ranked[i][0][1] >= (m.self_threshold_ if ranked[i][0][0] == rep[i]
                                                                     else m.threshold_)]
        assert (s['answered'], s['coverage']) == (len(answered), pytest.approx(len(answered) / len(idx)))
        if answered:
            assert s['precision'] == pytest.approx(np.mean([ranked[i][0][0] == truth[i] for i in answered]))
        pool = set(m.candidates_)
        assert s['ceiling'] == pytest.approx(np.mean([truth[i] in pool or truth[i] == rep[i] for i in idx]))
    assert a['slices']['all']['top1'] == a['top1'] and a['slices']['nonself']['top1'] < a['slices']['self']['top1']
    # per kind of top-1 answer (the reporter, someone else), recounted from what `predict` answers
    answers = m.predict(asked(test, 'assignee'))
    assert a['answers']['reporter']['n'] + a['answers']['other']['n'] == len(test) > 0
    for kind in ('reporter', 'other'):
        idx = [i for i, p in enumerate(answers) if p['assignee'] and (p['assignee'][0]['name'] == rep[i]) == (kind == 'reporter')]
        done = [i for i in idx if not answers[i]['abstain']]
        k = a['answers'][kind]
        assert (k['n'], k['answered']) == (len(idx), len(done))
        assert k['coverage'] == (pytest.approx(len(done) / len(idx)) if idx else None)
        assert k['precision'] == (pytest.approx(np.mean([answers[i]['assignee'][0]['name'] == truth[i] for i in done]))
                                  if done else None)
    for name, f in (('component_owner', component_owner_ranks), ('knn_vote', knn_vote_ranks)):
        ranks = f(train, test)
        for sl, mask in (('self', is_self), ('nonself', ~is_self)):
            got = np.mean([t in [n for n, _ in ranks[i][:3]] for i in np.nonzero(mask)[0] for t in [truth[i]]])
            assert a['baselines'][name][sl]['top3'] == pytest.approx(got), (name, sl)
    row = assignee_row('zk', a)
    assert row['nonself_top3'] == a['slices']['nonself']['top3']
    assert row['knn_vote_nonself_top3'] == a['baselines']['knn_vote']['nonself']['top3']
    assert row['nonself_share'] == pytest.approx((~is_self).mean())
    fig = plot_report(r, 'ZooKeeper')
    assert len(fig.axes[1].containers) == 4  # model top-1, top-3, the two baselines' top-3


def test_plain_baselines_of_a_hand_built_case():
    "Component owner: the newest third of training; kNN vote: the most similar tickets' assignees."
    from alliedium.evaluation import component_owner_ranks, knn_vote_ranks
    train = frame([('disk quota warning', 'r0', 'old', 'Major')] * 20
                  + [('disk full on broker', 'r0', 'alice', 'Major'),
                     ('button misaligned in dialog', 'r1', 'bob', 'Major')] * 10)
    train['components'] = [['core']] * 20 + [['core'], ['ui']] * 10
    test = frame([('broker disk full', 'r1', 'alice', 'Major'), ('dialog button', 'r0', 'bob', 'Major')],
                 start='2024-03-01')
    test['components'] = [['core'], ['ui']]
    owner = component_owner_ranks(train, test)
    assert [n for n, _ in owner[0]] == ['alice', 'bob'] and [n for n, _ in owner[1]] == ['bob', 'alice']  # no 'old'
    knn = knn_vote_ranks(train, test, n=5)
    assert knn[0][0][0] == 'alice' and knn[1][0][0] == 'bob'
