"Ingestion into the session's Ignite node: idempotent upserts by updated_at, deletions, every kind of bad input."
import gzip, json, threading

import pytest

from alliedium.ignite import ignite_client
from alliedium.ingest import ingest_files, ingest_tickets, ingest_webhook, load_tickets, tickets_fingerprint
from alliedium.schema import stored_raw
from alliedium.jira import FRAME_COLUMNS, BadIssue, parse_issue, read_issues, tickets_frame
from alliedium.tenants import UnknownTenant
from fixtures_data import SAMPLE, write_jsonl


def _with_updated(issue, updated, **fields):
    return {**issue, 'fields': {**issue['fields'], 'updated': updated, **fields}}


def _stored(ignite, tenant, key):
    with ignite_client(ignite) as c:
        rows = list(c.sql('SELECT summary, updated_at FROM ALLIEDIUM.TICKET WHERE tenant_id = ? AND issue_key = ?',
                          query_args=[tenant, key]))
    return rows[0][0] if rows else None


def test_small_tenant_ingests_with_matching_counts_and_replay_changes_nothing(ignite, tenant):
    path = SAMPLE/'Storm.jsonl.gz'
    with gzip.open(path, 'rb') as fh: lines = sum(1 for _ in fh)
    first = ingest_files(tenant, [path], ignite)
    assert first.counts() == dict(read=lines, inserted=lines, updated=0, unchanged=0, older_skipped=0, deleted=0,
                                  rejected=0)
    fp = tickets_fingerprint(tenant, ignite)
    again = ingest_files(tenant, [path], ignite)
    assert (again.inserted, again.updated, again.unchanged, again.deleted) == (0, 0, lines, 0)
    assert tickets_fingerprint(tenant, ignite) == fp
    df = load_tickets(tenant, ignite)
    assert len(df) == lines == 1507 and list(df.columns) == FRAME_COLUMNS
    want = tickets_frame(read_issues(path, tenant)).sort_values(['created_at', 'issue_key']).reset_index(drop=True)
    assert df.drop(columns=['created_at', 'updated_at']).equals(want.drop(columns=['created_at', 'updated_at']))
    assert (df.created_at == want.created_at).all() and (df.updated_at == want.updated_at).all()


def test_raw_json_is_kept(ignite, tenant, zk_issues):
    ingest_tickets(tenant, [parse_issue(zk_issues[0], tenant)], ignite)
    with ignite_client(ignite) as c:
        (raw, raw_zstd), = c.sql('SELECT raw, raw_zstd FROM ALLIEDIUM.TICKET WHERE tenant_id = ?', query_args=[tenant])
    assert raw is None and len(raw_zstd) < len(json.dumps(zk_issues[0])) / 2  # stored compressed (schema v4)
    raw = stored_raw(raw, raw_zstd)
    assert json.loads(raw) == zk_issues[0]


def test_rows_stored_before_compression_read_back(ignite, tenant, zk_issues):
    "A TICKET row written before schema v4 (its Jira JSON as text in `raw`) reads back beside a compressed one."
    from alliedium.duplicates import ignite_raws
    ingest_tickets(tenant, [parse_issue(zk_issues[0], tenant)], ignite)
    old = zk_issues[1]
    with ignite_client(ignite) as c:
        c.sql('INSERT INTO ALLIEDIUM.TICKET (tenant_id, issue_key, summary, raw) VALUES (?, ?, ?, ?)',
              query_args=[tenant, old['key'], old['fields']['summary'], json.dumps(old)])
    raws = ignite_raws(tenant, ignite)
    assert raws.keys() == {zk_issues[0]['key'], old['key']}
    assert json.loads(raws[zk_issues[0]['key']]) == zk_issues[0] and json.loads(raws[old['key']]) == old


def test_newer_wins_older_is_skipped_in_any_order(ignite, tenant, zk_issues):
    base = zk_issues[0]
    v1, v2, v3 = (_with_updated(base, f'2030-01-0{d}T00:00:00.000+0000', summary=f'v{d}') for d in (1, 2, 3))
    s = ingest_tickets(tenant, [parse_issue(v, tenant) for v in (v2, v3, v1)], ignite)  # one batch, out of order
    assert (s.inserted, s.older_skipped) == (1, 2) and _stored(ignite, tenant, base['key']) == 'v3'
    s = ingest_tickets(tenant, [parse_issue(v1, tenant)], ignite)
    assert s.older_skipped == 1 and _stored(ignite, tenant, base['key']) == 'v3'
    v4 = parse_issue(_with_updated(base, '2030-01-04T00:00:00.000+0000', summary='v4'), tenant)
    s = ingest_tickets(tenant, [v4], ignite)
    assert s.updated == 1 and _stored(ignite, tenant, base['key']) == 'v4'


def test_webhooks_are_idempotent_and_deletes_are_honoured(ignite, tenant, v3_issue):
    ev = lambda kind, updated, ts=0: {'timestamp': ts, 'webhookEvent': kind, 'issue_event_type_name': 'issue_generic',
                                      'issue': _with_updated(v3_issue, updated)}
    result = lambda *a: ingest_webhook(tenant, ev(*a), ignite)['result']
    assert result('jira:issue_created', '2026-11-20T09:15:02.311+0100') == 'inserted'
    assert result('jira:issue_created', '2026-11-20T09:15:02.311+0100') == 'unchanged'
    assert result('jira:issue_updated', '2026-11-21T09:00:00.000+0100') == 'updated'
    fp = tickets_fingerprint(tenant, ignite)
    assert result('jira:issue_deleted', '2026-11-21T09:00:00.000+0100', 1795305600000) == 'deleted'
    assert tickets_fingerprint(tenant, ignite) != fp
    assert load_tickets(tenant, ignite).empty
    # a late update (older than the deletion) does not bring the ticket back; replaying the deletion changes nothing
    assert result('jira:issue_updated', '2026-11-21T10:00:00.000+0100') == 'older_skipped'
    assert result('jira:issue_deleted', '2026-11-21T09:00:00.000+0100', 1795305600000) == 'unchanged'
    assert load_tickets(tenant, ignite).empty
    with pytest.raises(BadIssue, match='not one of'):
        ingest_webhook(tenant, {'webhookEvent': 'jira:worklog_updated'}, ignite)


def test_concurrent_writers_never_regress_a_ticket(ignite, tenant, zk_issues):
    "Two writers race with different versions of the same 50 tickets; every ticket ends at its newest version."
    old = [parse_issue(_with_updated(i, '2030-01-01T00:00:00.000+0000', summary='old'), tenant) for i in zk_issues]
    new = [parse_issue(_with_updated(i, '2030-06-01T00:00:00.000+0000', summary='new'), tenant) for i in zk_issues]
    errors, barrier = [], threading.Barrier(4)
    def run(items, writers):
        try:
            barrier.wait(30)  # the four start together, so their batches interleave
            for _ in range(3): ingest_tickets(tenant, items, ignite, batch_size=10, writers=writers)
        except Exception as e: errors.append(e)
    runs = ((old, 1), (new, 2), (list(reversed(old)), 2), (list(reversed(new)), 1))
    threads = [threading.Thread(target=run, args=(x, w)) for x, w in runs]
    for t in threads: t.start()
    for t in threads: t.join()
    assert not errors
    df = load_tickets(tenant, ignite)
    assert len(df) == 50 and set(df.summary) == {'new'}


def test_parallel_writers_count_like_one(ignite, tenant, zk_issues):
    "With two writer connections each key stays with one writer, in input order: counts and rows as with one."
    items = [parse_issue(_with_updated(i, f'2030-01-0{d}T00:00:00.000+0000', summary=f'v{d}'), tenant)
             for d in (1, 3, 2) for i in zk_issues]
    s = ingest_tickets(tenant, items, ignite, batch_size=7, writers=2)
    assert (s.inserted, s.updated, s.older_skipped) == (50, 50, 50)
    df = load_tickets(tenant, ignite)
    assert len(df) == 50 and set(df.summary) == {'v3'}
    again = ingest_tickets(tenant, items, ignite, batch_size=7, writers=2)
    assert (again.unchanged, again.older_skipped, again.written) == (50, 100, 0)


def test_ticket_indexes_hold_whole_keys(ignite):
    "Index entries inline both key strings, so comparing keys never reads the (multi-page) ticket row."
    with ignite_client(ignite) as c:
        sizes = {(t, i): n for t, i, n in c.sql("SELECT TABLE_NAME, INDEX_NAME, INLINE_SIZE FROM SYS.INDEXES "
                                                 "WHERE SCHEMA_NAME = 'ALLIEDIUM' AND TABLE_NAME LIKE 'TICKET%'")}
    assert sizes[('TICKET', '_key_PK')] >= 64 and sizes[('TICKET_STATE', '_key_PK')] >= 64, sizes
    assert sizes[('TICKET', 'TICKET_TENANT_CREATED')] >= 81, sizes


def test_unknown_tenant_is_a_clear_error(ignite, tenant_id):
    with pytest.raises(UnknownTenant, match='alliedium tenants create'):
        ingest_files(tenant_id, [SAMPLE/'Storm.jsonl.gz'], ignite)
    with pytest.raises(UnknownTenant): load_tickets(tenant_id, ignite)


# Bad input: each case gives a per-record or per-file rejection, the rest is ingested, nothing stored is damaged.

def _ingest_bad(ignite, tenant, zk_issues, tmp_path, name, content):
    "Ingest a good file, then the bad one next to more good records; return the bad run's summary."
    good = write_jsonl(tmp_path/'good.jsonl', zk_issues[:10])
    assert ingest_files(tenant, [good], ignite).inserted == 10
    bad = tmp_path/name
    bad.write_bytes(content)
    more = write_jsonl(tmp_path/'more.jsonl', zk_issues[10:12])
    s = ingest_files(tenant, [bad, more, good], ignite)
    df = load_tickets(tenant, ignite)
    assert set(df.issue_key) >= {i['key'] for i in zk_issues[:12]}  # the rest went in, the earlier rows are intact
    summaries = df.set_index('issue_key').loc[[i['key'] for i in zk_issues[:10]], 'summary']
    assert list(summaries) == [i['fields']['summary'] for i in zk_issues[:10]]
    assert s.unchanged == 10 and s.rejected
    return s


def _line(obj) -> bytes: return json.dumps(obj).encode()


@pytest.mark.parametrize('case', ['truncated_line', 'not_an_issue', 'wrong_types', 'missing_fields', 'huge_description',
                                  'invalid_utf8', 'lone_surrogate', 'name_not_text'])
def test_bad_records_are_rejected_with_line_and_reason(ignite, tenant, zk_issues, tmp_path, case):
    issue = zk_issues[20]
    bad = {'truncated_line': _line(issue)[:200],
           'not_an_issue': _line({'startAt': 0, 'total': 0, 'note': 'hello'}),
           'wrong_types': _line({**issue, 'fields': {**issue['fields'], 'components': 'server', 'created': 42.5e18}}),
           'missing_fields': _line({'key': 'ZOOKEEPER-99999', 'id': '1'}),
           'huge_description': _line({**issue, 'fields': {**issue['fields'], 'description': 'x' * (10 * 2**20)}}),
           'invalid_utf8': _line(issue).replace(b'"summary": "', b'"summary": "\xff\xfe', 1),
           'lone_surrogate': _line(issue).replace(b'"summary": "', b'"summary": "\\ud800', 1),
           'name_not_text': _line({**issue, 'fields': {**issue['fields'], 'priority': {'name': 3}}})}[case]
    reason = {'truncated_line': 'not JSON', 'not_an_issue': 'not a Jira issue', 'wrong_types': 'fields.',
              'missing_fields': '`fields` is missing',
              'huge_description': 'over the limit', 'invalid_utf8': 'UTF-8', 'lone_surrogate': 'lone surrogate',
              'name_not_text': 'fields.priority'}[case]
    content = _line(zk_issues[30]) + b'\n' + bad + b'\n' + _line(zk_issues[31]) + b'\n'
    s = _ingest_bad(ignite, tenant, zk_issues, tmp_path, 'bad.jsonl', content)
    (r,) = s.rejected
    assert (r.source, r.line) == ('bad.jsonl', 2) and reason in r.reason, r
    assert s.inserted == 4  # the two good lines around the bad one, and more.jsonl
    assert _stored(ignite, tenant, issue['key']) is None


@pytest.mark.parametrize('case', ['empty', 'truncated_document', 'unknown_csv_header', 'gzip_ends_early'])
def test_bad_files_are_rejected_and_the_rest_is_ingested(ignite, tenant, zk_issues, tmp_path, case):
    page = json.dumps({'startAt': 0, 'maxResults': 50, 'total': 2, 'issues': zk_issues[30:32]}).encode()
    gz = gzip.compress(b''.join(_line(i) + b'\n' for i in zk_issues[30:40]))
    name, content, reason = {'empty': ('empty.json', b'', 'empty'),
                             'truncated_document': ('page.json', page[:len(page) // 2], 'truncated'),
                             'unknown_csv_header': ('export.csv', b'Name,Team,Hours\nann,core,3\n',
                                                    'not a Jira CSV export'),
                             'gzip_ends_early': ('dump.jsonl.gz', gz[:len(gz) * 2 // 3], 'ends early')}[case]
    s = _ingest_bad(ignite, tenant, zk_issues, tmp_path, name, content)
    (r,) = s.rejected
    assert r.source == name and reason in r.reason, r
    if case == 'gzip_ends_early':  # what came before the break is kept
        assert r.line is not None and s.inserted == 2 + (r.line - 1)
    else: assert r.line is None and s.inserted == 2


# Issue 17: a bad record never ends a file; times are stored as UTC whatever the local zone.

def test_csv_rows_with_bad_dates_are_rejected_and_the_file_goes_on(ignite, tenant, tmp_path):
    rows = [('C-1', '2026-01-01 10:00'), ('C-2', '0001-01-01 00:00'), ('C-3', '2026-01-02 10:00'),
            ('C-4', '9999-12-31 23:59'), ('C-5', 'soon'), ('C-6', '2026-01-03 10:00')]
    path = tmp_path/'export.csv'
    path.write_text('Issue key,Summary,Created\n' + ''.join(f'{k},s,{d}\n' for k, d in rows))
    s = ingest_files(tenant, [path], ignite, batch_size=1)
    assert (s.inserted, [r.key for r in s.rejected]) == (3, ['C-2', 'C-4', 'C-5']), s.rejected
    assert sorted(load_tickets(tenant, ignite).issue_key) == ['C-1', 'C-3', 'C-6']


@pytest.fixture
def berlin_time():
    "The process in a zone with daylight saving time (Europe/Berlin) for the test."
    import os, time
    saved = os.environ.get('TZ')
    os.environ['TZ'] = 'Europe/Berlin'; time.tzset()
    try: yield
    finally:
        if saved is None: os.environ.pop('TZ', None)
        else: os.environ['TZ'] = saved
        time.tzset()


def test_times_are_utc_across_a_daylight_saving_change(ignite, tenant, zk_issues, berlin_time):
    "02:30 and 03:30 UTC on 2026-03-29 are the same Berlin wall-clock time read as local: both must stay distinct."
    import struct
    from datetime import datetime
    from alliedium.ingest import _write_timestamp
    assert struct.unpack('<bqi', _write_timestamp(datetime(1970, 1, 1, 0, 0, 1, 2500)))[1:] == (1002, 500_000)
    base = zk_issues[0]
    before, after = (_with_updated(base, f'2026-03-29T0{h}:30:00.000+0000', summary=f'at {h}') for h in (2, 3))
    assert ingest_tickets(tenant, [parse_issue(before, tenant)], ignite).inserted == 1
    s = ingest_tickets(tenant, [parse_issue(after, tenant)], ignite)
    assert (s.updated, s.unchanged) == (1, 0) and _stored(ignite, tenant, base['key']) == 'at 3'
    (updated,) = load_tickets(tenant, ignite).updated_at
    assert updated == datetime(2026, 3, 29, 3, 30)
    assert ingest_tickets(tenant, [parse_issue(after, tenant)], ignite).unchanged == 1


def test_tickets_built_with_unstorable_times_are_rejected(ignite, tenant, zk_issues):
    "A Ticket built in Python (not by parse_issue) with year 1 is a rejection, not a row no reader can decode."
    from datetime import datetime
    good = parse_issue(zk_issues[0], tenant)
    odd = good.model_copy(update=dict(issue_key='ODD-1', created_at=datetime(1, 1, 1), updated_at=datetime(1, 1, 1)))
    s = ingest_tickets(tenant, [odd, good], ignite)
    assert s.inserted == 1 and [r.key for r in s.rejected] == ['ODD-1'] and 'out of range' in s.rejected[0].reason
    assert list(load_tickets(tenant, ignite).issue_key) == [good.issue_key]
