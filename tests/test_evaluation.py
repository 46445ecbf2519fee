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


def test_multilabel_metrics_of_a_month_without_any_value(zk_tickets):
    "A rolling month where nobody used a label and none was suggested: F1 is undefined (None), not an error."
    from alliedium.evaluation import multilabel_metrics
    from alliedium.models import new_model
    df = zk_tickets.head(300).copy()
    df['labels'] = [[] for _ in range(len(df))]
    m = new_model('labels').fit(df.head(250))
    r = multilabel_metrics(m, df.tail(50))
    assert r['micro_f1'] is None and r['predicted_share'] == 0 and r['n_test'] == 50
