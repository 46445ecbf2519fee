"""Fuzzing the Jira parsers (issue 17): whatever a REST v2/v3 issue, ADF document, webhook event, CSV row or timestamp
holds, `parse_issue` / `parse_event` / `jira_time` / `read_issues` give a value or the typed `JiraError`, and a
parsed ticket can be stored. `make test` runs a seeded, bounded run; `make fuzz` (ALLIEDIUM_FUZZ=long) a long one."""
import csv, io, json, os
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from alliedium.ingest import _ticket_value
from alliedium.jira import (TIME_RANGE, Deletion, JiraError, Rejected, Ticket, jira_time, parse_event, parse_issue,
                            read_issues)

settings.register_profile('suite', max_examples=150, derandomize=True, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
settings.register_profile('long', max_examples=int(os.environ.get('ALLIEDIUM_FUZZ_EXAMPLES', 10_000)), deadline=None,
                          database=None, suppress_health_check=list(HealthCheck))
settings.load_profile('long' if os.environ.get('ALLIEDIUM_FUZZ') == 'long' else 'suite')
TRIED = Counter()


@pytest.fixture(scope='module', autouse=True)
def report_counts():
    yield
    print(f"\nparser inputs tried: {dict(TRIED)}, total {sum(TRIED.values())}")


# -- strategies ---------------------------------------------------------------------------------------------------

text = st.text(max_size=30) | st.sampled_from(['', ' ', '\ud800', 'a\udfffb', 'é', '\x00', '9' * 40])
scalars = st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63) | st.floats() | text
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(text, kids, max_size=4),
                           max_leaves=20)

_formats = ['%Y-%m-%dT%H:%M:%S.000%z', '%Y-%m-%dT%H:%M:%S', '%d/%b/%y %I:%M %p', '%Y-%m-%d %H:%M', '%d.%m.%Y %H:%M']
stamps = st.one_of(
    st.builds(lambda d, off, fmt: d.replace(tzinfo=timezone(timedelta(minutes=off))).strftime(fmt),
              st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
              st.integers(-23 * 60 - 59, 23 * 60 + 59), st.sampled_from(_formats)),
    st.integers(-2**70, 2**70), st.floats(), text, json_values)

ADF_TYPES = ['doc', 'paragraph', 'text', 'hardBreak', 'mention', 'emoji', 'status', 'date', 'inlineCard', 'listItem',
             'bulletList', 'tableCell', 'tableHeader', 'tableRow', 'table', 'codeBlock', 'rule', 'heading', 'panel']
adf_leaf = st.fixed_dictionaries({'type': st.sampled_from(ADF_TYPES) | json_values},
                                 optional={'text': json_values, 'attrs': json_values | st.dictionaries(
                                     st.sampled_from(['text', 'shortName', 'timestamp', 'url']), json_values)})
adf = st.recursive(adf_leaf, lambda kids: st.fixed_dictionaries(
    {'type': st.sampled_from(ADF_TYPES), 'content': st.lists(kids, max_size=4) | json_values}), max_leaves=25)

def chain(depth:int) -> dict:
    "An ADF paragraph chain `depth` nodes deep."
    doc = node = {'type': 'doc', 'content': []}
    for _ in range(depth): node['content'].append(node := {'type': 'paragraph', 'content': []})
    return doc

deep_adf = st.integers(0, 400).map(chain)
named = st.fixed_dictionaries({}, optional={'name': json_values, 'id': json_values}) | text | json_values
person = st.fixed_dictionaries({}, optional={'name': json_values, 'accountId': text, 'key': text}) | text | json_values
fields = st.fixed_dictionaries({}, optional={
    'summary': text | json_values, 'description': text | adf | deep_adf | json_values, 'created': stamps,
    'updated': stamps, 'issuetype': named, 'priority': named, 'reporter': person, 'assignee': person,
    'components': st.lists(named, max_size=3) | json_values, 'labels': st.lists(text, max_size=3) | json_values,
    'customfield_10001': json_values})
issues = st.fixed_dictionaries({'key': st.sampled_from(['ZK-1', ' A-2 ', '', 'X-\ud800']) | json_values,
                                'fields': fields | json_values}) | json_values
events = st.fixed_dictionaries(
    {'webhookEvent': st.sampled_from(['jira:issue_created', 'jira:issue_updated', 'jira:issue_deleted']) | text},
    optional={'issue': issues, 'timestamp': stamps})


def storable(t):
    "What ingestion needs of a parsed item: times in range, every stored field encodable."
    assert TIME_RANGE[0] <= t.updated_at < TIME_RANGE[1]
    if isinstance(t, Ticket):
        assert TIME_RANGE[0] <= t.created_at < TIME_RANGE[1]
        _ticket_value(t, True)
        json.loads(t.raw_utf8())
    else: t.issue_key.encode('utf-8')


# -- properties ---------------------------------------------------------------------------------------------------

@given(stamps)
def test_jira_time_gives_a_time_in_range_or_bad_issue(s):
    TRIED['timestamps'] += 1
    try: d = jira_time(s)
    except JiraError: return
    assert TIME_RANGE[0] <= d < TIME_RANGE[1] and d.tzinfo is None


def parsed_or_bad(kind: str, parse):
    "Count one input of `kind`; `parse()` gives a storable item (returned) or raises JiraError (None)."
    TRIED[kind] += 1
    try: item = parse()
    except JiraError: return None
    storable(item)
    return item


@given(adf | deep_adf | json_values)
def test_adf_gives_text_or_bad_issue(doc):
    parsed_or_bad('adf documents', lambda: parse_issue({'key': 'A-1', 'fields': {'created': 0, 'description': doc}}, 'f'))


@given(issues)
def test_parse_issue_gives_a_storable_ticket_or_bad_issue(obj):
    parsed_or_bad('REST issues', lambda: parse_issue(obj, 'f'))


@given(events)
def test_parse_event_gives_a_storable_item_or_bad_issue(event):
    item = parsed_or_bad('webhook events', lambda: parse_event(event, 'f'))
    assert item is None or isinstance(item, (Ticket, Deletion))


cell = st.text(max_size=20) | stamps.map(str) | st.sampled_from(['', ',', '"', '\n', '0001-01-01 00:00'])

@given(st.lists(st.lists(cell, min_size=1, max_size=7), max_size=6),
       st.permutations(['Issue key', 'Summary', 'Created', 'Updated', 'Component/s', 'Component/s', 'Labels']))
def test_csv_rows_give_tickets_or_rejections(tmp_path_factory, rows, header):
    TRIED['CSV rows'] += len(rows)
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    path = tmp_path_factory.mktemp('csv')/'export.csv'
    path.write_bytes(buf.getvalue().encode('utf-8', 'surrogatepass'))
    for item in read_issues(path, 'f'):
        assert isinstance(item, (Ticket, Rejected))
        if isinstance(item, Ticket): storable(item)


@given(st.lists(issues | events | json_values, max_size=5), st.lists(st.binary(max_size=40), max_size=2))
def test_jsonl_files_give_items_or_rejections(tmp_path_factory, docs, junk):
    TRIED['JSONL lines'] += len(docs) + len(junk)
    lines = [json.dumps(d).encode() for d in docs] + junk
    path = tmp_path_factory.mktemp('jsonl')/'dump.jsonl'
    path.write_bytes(b'\n'.join(lines))
    for item in read_issues(path, 'f'):
        assert isinstance(item, (Ticket, Deletion, Rejected))
        if not isinstance(item, Rejected): storable(item)


@pytest.mark.parametrize('field', ['reporter', 'assignee', 'issuetype', 'priority'])
def test_a_lone_surrogate_in_a_name_given_as_plain_text_is_a_bad_issue(field):
    "Found by `make fuzz`: a person or type named by a plain string skipped the UTF-8 check and failed at the write."
    with pytest.raises(JiraError, match='lone surrogate'):
        parse_issue({'key': 'A-1', 'fields': {'created': 0, field: 'x\ud800'}}, 'f')
