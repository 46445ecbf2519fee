"Features: what each task may see, leak-free reporter history, fast one-hot and the shared TF-IDF."
import pytest

from alliedium.features import (INPUTS, POST_FILING, TARGETS, OneHot, ReporterHistory, TextEncoder, TextMatrix,
                                active_people, check_inputs, issue_frame, temporal_split, ticket_text)


def test_no_task_sees_its_target_or_a_later_field():
    for task, cols in INPUTS.items():
        check_inputs(task, cols)
        assert TARGETS[task] not in cols and not set(cols) & POST_FILING
    with pytest.raises(ValueError, match='resolution'): check_inputs('assignee', ['summary', 'resolution'])


def test_reporter_history_of_a_training_row_excludes_its_own_answer(zk_tickets):
    df = zk_tickets.sort_values('created_at').reset_index(drop=True)
    h = ReporterHistory().fit(df)
    before = h.transform(df, expanding=True)
    first = df.groupby('reporter').head(1).index  # each reporter's first ticket: no history at all
    assert (before[first, 1] == 0).all()           # log1p(filed) before the first ticket
    after = h.transform(df)
    assert (after[first, 1] > 0).any()             # the fitted history does count them


def test_temporal_split_puts_the_newest_tickets_in_test(zk_tickets):
    train, test = temporal_split(zk_tickets)
    assert len(test) == round(len(zk_tickets) * 0.2) and train.created_at.max() <= test.created_at.min()


def test_active_people_drop_those_gone_quiet(zk_tickets):
    train, _ = temporal_split(zk_tickets)
    end = train.created_at.max()
    recent = set(active_people(train, end, 365, 1))
    ever = set(train.assignee.dropna())
    assert recent < ever and recent


def test_issue_frame_accepts_a_new_issue_without_key_or_dates():
    row = issue_frame({'fields': {'summary': 'x', 'description': 'y', 'reporter': {'accountId': '5b10a'}}}, 't')
    assert row.loc[0, 'reporter'] == '5b10a' and row.loc[0, 'components'] == []


def test_one_hot_and_text_matrix(zk_tickets):
    oh = OneHot(2).fit(zk_tickets.reporter.tolist())
    m = oh.transform(zk_tickets.reporter.tolist())
    assert m.shape == (len(zk_tickets), len(oh.index_)) and m.sum() <= len(zk_tickets)
    tm = TextMatrix(zk_tickets.head(300))
    sub = zk_tickets.head(300).sample(20, random_state=0)
    fresh = tm.vectorizer.transform(ticket_text(sub))   # the encoder's transform: the fitted rows (to float rounding)
    assert fresh.nnz == tm.rows(sub).nnz and abs(tm.rows(sub) - fresh).max() < 1e-6


@pytest.mark.parametrize('make, fit', [
    (lambda: TextEncoder(min_df=1), lambda e, df: e.fit(ticket_text(df))),
    (lambda: OneHot(2), lambda e, df: e.fit(df.reporter.tolist())),
    (lambda: ReporterHistory(['Major', 'Minor']), lambda e, df: e.fit(df)),
])
def test_feature_estimators_keep_parameters_in_init_and_fitted_attributes_with_an_underscore(zk_tickets, make, fit):
    "scikit-learn's rule: `__init__` stores its parameters only; `fit` adds attributes ending in `_` (or private)."
    import inspect
    e = make()
    params = set(vars(e))
    assert params == set(inspect.signature(type(e)).parameters)
    added = set(vars(fit(e, zk_tickets.head(300)))) - params
    assert added and all(a.endswith('_') or a.startswith('_') for a in added), sorted(added)
