"Evaluation: the JSON metrics the issue lists, rolling months, cross-validation, and the report plots."
import json

from alliedium.evaluation import cross_validate, evaluate_rolling, evaluate_tenant, nested_cv, plot_report


def test_temporal_split_json_has_every_metric(storm_tickets):
    r = json.loads(json.dumps(evaluate_tenant(storm_tickets, params={'assignee': {'top_k': 10}})))
    a, p = r['assignee'], r['priority']
    assert {'top1', 'top3', 'top5', 'candidate_share', 'coverage', 'accuracy_at_threshold'} <= set(a)
    assert {'macro_f1', 'accuracy', 'rank_correlation'} <= set(p)
    assert 'micro_f1' in r['components'] and 'micro_f1' in r['labels']
    assert set(r['fit_seconds']) >= {'assignee', 'components', 'labels', 'priority', 'total'}
    fig = plot_report(r, 'Storm')
    assert len(fig.axes) >= 2


def test_rolling_trains_on_everything_before_each_month(zk_tickets):
    r = evaluate_rolling(zk_tickets, ['priority'], months=2)
    assert 1 <= len(r) <= 2 and all('macro_f1' in m['priority'] for m in r.values())


def test_cross_validation_and_nested_cv(zk_tickets):
    small = zk_tickets.tail(500)
    cv = cross_validate(small, 'priority', k=3)
    assert len(cv['folds']) == 3 and 0 <= cv['mean'] <= 1
    n = nested_cv(small, 'priority', {'C': [1.0, 5.0]}, outer=2, inner=2)
    assert len(n['folds']) == 2 and all(f['chosen'] in (1.0, 5.0) for f in n['folds'])
