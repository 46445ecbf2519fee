"Parsing every shape Jira sends, and every kind of bad input, into Tickets / Rejected records."
import gzip, json
from datetime import datetime

import pytest

from alliedium.jira import (BadIssue, Deletion, Rejected, Ticket, FRAME_COLUMNS, adf_to_text, parse_event, parse_issue,
                            read_issues, tickets_frame)
from fixtures_data import APACHE, SAMPLE


def test_v2_issue_from_real_data(zk_issues):
    t = parse_issue(zk_issues[0], 'zk')
    assert (t.issue_key, t.issue_type, t.reporter, t.assignee, t.components) == (
        'ZOOKEEPER-10', 'Bug', 'phunt', 'phunt', ['server'])
    assert t.created_at == datetime(2008, 6, 10, 21, 9, 10, 268000) and t.created_at.tzinfo is None
    assert t.raw == zk_issues[0]
    assert set(Ticket.FILING_FIELDS).isdisjoint(Ticket.TRIAGE_FIELDS)


def test_v3_issue_adf_and_account_ids(v3_issue):
    t = parse_issue(v3_issue, 'dash')
    assert (t.reporter, t.assignee) == ('5b10a2844c20165700ede21g', '5b10ac8d82e05b22cc7d4ef5')
    assert (t.components, t.labels, t.priority) == (['Frontend', 'REST API'], ['regression', 'ui'], 'High')
    assert t.created_at == datetime(2026, 11, 20, 8, 15, 2, 311000)
    assert t.description == ('Saving a dashboard fails for @Mia Krystof since the upgrade.\n'
                             'Steps\n- Open a dashboard\n- Click Save\n'
                             'HTTP 500 from /rest/dashboards\nbrowser | result\nFirefox | fails\n⚠️ blocks release, see '
                             'https://example.atlassian.net/browse/DASH-3')


def test_search_page_list_and_webhooks(tmp_path, zk_issues, v3_issue):
    page = {'expand': 'schema,names', 'startAt': 0, 'maxResults': 50, 'total': 51, 'issues': zk_issues}
    (tmp_path/'page.json').write_text(json.dumps(page))
    assert [t.issue_key for t in read_issues(tmp_path/'page.json', 'zk')] == [i['key'] for i in zk_issues]
    events = [{'timestamp': 1795305600000, 'webhookEvent': e, 'issue_event_type_name': 'issue_generic',
               'user': {'accountId': 'x'}, 'issue': v3_issue}
              for e in ('jira:issue_created', 'jira:issue_updated', 'jira:issue_deleted')]
    (tmp_path/'hooks.jsonl').write_text('\n'.join(map(json.dumps, events)))
    out = list(read_issues(tmp_path/'hooks.jsonl', 'dash'))
    assert [type(o).__name__ for o in out] == ['Ticket', 'Ticket', 'Deletion']
    assert out[2].updated_at == datetime(2026, 11, 22)  # the event's time, later than the issue's `updated`
    with pytest.raises(BadIssue, match='not one of'): parse_event({'webhookEvent': 'comment_created'}, 'dash')


def test_csv_export_with_repeated_columns(jira_csv):
    a, b = read_issues(jira_csv, 'dash')
    assert (a.issue_key, a.components, a.labels, a.assignee, a.priority) == (
        'DASH-42', ['Frontend', 'REST API'], ['regression', 'ui'], '5b10ac8d82e05b22cc7d4ef5', 'High')
    assert a.description == 'Saving fails.\n\nSteps: open, save, "boom"'
    assert (a.created_at, a.updated_at) == (datetime(2026, 11, 20, 8, 15), datetime(2026, 11, 21, 15, 40))
    assert (b.issue_key, b.components, b.labels, b.assignee, b.issue_type) == ('DASH-43', [], [], None, 'Task')
    assert a.raw['csv']['Custom field (Story Points)'] == ''


def test_jsonl_gz_of_a_small_tenant_matches_its_line_count():
    path = SAMPLE/'Zookeeper.jsonl.gz'
    with gzip.open(path, 'rb') as fh: lines = sum(1 for _ in fh)
    out = list(read_issues(path, 'zk'))
    assert len(out) == lines == 1827 and all(isinstance(t, Ticket) for t in out)
    assert len({t.issue_key for t in out}) == 1827


def test_tickets_frame_columns_and_types(zk_issues, v3_issue):
    others = [Rejected('x', 1, 'bad'), Deletion(tenant_id='zk', issue_key='A-1', updated_at=datetime(2020, 1, 1))]
    df = tickets_frame([parse_issue(i, 'zk') for i in zk_issues] + others)
    assert list(df.columns) == FRAME_COLUMNS and 'raw' not in df.columns and len(df) == 50
    assert str(df.created_at.dtype).startswith('datetime64') and str(df.updated_at.dtype).startswith('datetime64')
    assert all(isinstance(c, list) for c in df.components)
    assert list(tickets_frame([]).columns) == FRAME_COLUMNS


def test_adf_edge_cases():
    assert adf_to_text({'type': 'doc', 'content': []}) == ''
    text = lambda s: {'type': 'text', 'text': s}
    paragraph = {'type': 'paragraph', 'content': [text('a'), {'type': 'hardBreak'}, text('b')]}
    assert adf_to_text({'type': 'doc', 'content': [paragraph]}) == 'a\nb'
    assert adf_to_text({'type': 'doc', 'content': [{'type': 'unknownNode', 'content': [text('kept')]}]}) == 'kept'


@pytest.mark.skipif(not (APACHE/'ActiveMQ.jsonl.gz').exists(), reason='the shared Apache data is not here')
def test_real_multi_megabyte_description_is_accepted():
    "AMQ-6705 carries a 3.05M-character pasted log: real data, so it must ingest (10 MB is refused: see test_ingest)."
    with gzip.open(APACHE/'ActiveMQ.jsonl.gz', 'rb') as fh:
        issue = next(json.loads(line) for line in fh if b'"key":"AMQ-6705"' in line[:400])
    assert len(parse_issue(issue, 'amq').description) > 3_000_000


# Issue 17: whatever a record holds, parsing answers a value or a typed `JiraError`, and a file goes on after it.

def _issue(**fields):
    return {'key': 'X-1', 'fields': {'summary': 's', 'created': '2020-01-01T00:00:00.000+0000', **fields}}


def _nested_adf(depth):
    doc = node = {'type': 'doc', 'content': []}
    for _ in range(depth):
        child = {'type': 'paragraph', 'content': []}
        node['content'].append(child)
        node = child
    node['content'].append({'type': 'text', 'text': 'deep'})
    return doc


@pytest.mark.parametrize('when', ['0001-01-01T00:00:00.000+0100', '9999-12-31T23:59:59.000-0100', '0001-01-01 00:00',
                                  -62135596800000, 253402300799999])
def test_out_of_range_timestamps_are_bad_issues(when):
    with pytest.raises(BadIssue, match='out of range'): parse_issue(_issue(created=when), 'x')
    with pytest.raises(BadIssue, match='fields.updated'): parse_issue(_issue(updated=when), 'x')


def test_lone_surrogate_in_a_read_field_is_a_bad_issue_elsewhere_it_is_kept_escaped():
    with pytest.raises(BadIssue, match='lone surrogate'): parse_issue(_issue(summary='a\ud800b'), 'x')
    with pytest.raises(BadIssue, match='fields.labels'): parse_issue(_issue(labels=['\udfff']), 'x')
    t = parse_issue(_issue(customfield_1='\ud800'), 'x')  # a field alliedium does not read: stored as JSON escapes
    assert json.loads(t.raw_utf8()) == t.raw


def test_deeply_nested_adf_is_refused_not_a_recursion_error():
    assert parse_issue(_issue(description=_nested_adf(40)), 'x').description == 'deep'
    for depth in (150, 5000):
        with pytest.raises(BadIssue, match='fields.description.*nested'):
            parse_issue(_issue(description=_nested_adf(depth)), 'x')


def test_a_file_goes_on_after_any_bad_record(tmp_path, zk_issues):
    good = zk_issues[:2]
    bad = [_issue(description=_nested_adf(300)), _issue(created='0001-01-01T00:00:00.000+0100')]
    (tmp_path/'page.json').write_text(json.dumps({'issues': [good[0], *bad, good[1]]}))
    (tmp_path/'dump.jsonl').write_text('\n'.join([json.dumps(good[0]), '[' * 100_000, *map(json.dumps, bad),
                                                  json.dumps(good[1])]))
    (tmp_path/'export.csv').write_text('Issue key,Summary,Created\nC-1,one,2026-01-01 10:00\nC-2,two,0001-01-01 00:00\n'
                                       'C-3,three,31/Dec/99 9:00 AM\nC-4,four,9999-12-31 23:59\nC-5,five,2026-01-02 10:00\n')
    for name, want in (('page.json', [1, 0, 0, 1]), ('dump.jsonl', [1, 0, 0, 0, 1]), ('export.csv', [1, 0, 1, 0, 1])):
        out = list(read_issues(tmp_path/name, 'x'))
        assert [int(isinstance(o, Ticket)) for o in out] == want, (name, out)
        assert all(o.reason for o in out if isinstance(o, Rejected))
