"""Fixtures of the data area (issue 3): real Jira payloads and realistic REST v3 / CSV export shapes."""
import copy, gzip, json, uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT/'data'/'sample'
APACHE = ROOT.parent/'shared'/'data'/'jira'/'apache'


def _first_issues(path, n):
    with gzip.open(path, 'rt') as fh: return [json.loads(next(fh)) for _ in range(n)]


@pytest.fixture(scope='session')
def zk_issues():
    "The first 50 real ZooKeeper issues (REST v2), as dicts."
    return _first_issues(SAMPLE/'Zookeeper.jsonl.gz', 50)


@pytest.fixture
def tenant_id():
    "A tenant id of the test's own (it is not created: use `tenant` for that)."
    return f't{uuid.uuid4().hex[:10]}'


# A REST v3 issue as `GET /rest/api/3/issue/{key}` returns it: description in Atlassian Document Format,
# people identified by accountId (no `name`).
ADF_DESCRIPTION = {'type': 'doc', 'version': 1, 'content': [
    {'type': 'paragraph', 'content': [
        {'type': 'text', 'text': 'Saving a dashboard fails for '},
        {'type': 'mention', 'attrs': {'id': '5b10ac8d82e05b22cc7d4ef5', 'text': '@Mia Krystof', 'accessLevel': ''}},
        {'type': 'text', 'text': ' since the upgrade.', 'marks': [{'type': 'em'}]}]},
    {'type': 'heading', 'attrs': {'level': 3}, 'content': [{'type': 'text', 'text': 'Steps'}]},
    {'type': 'orderedList', 'attrs': {'order': 1}, 'content': [
        {'type': 'listItem', 'content': [
            {'type': 'paragraph', 'content': [{'type': 'text', 'text': 'Open a dashboard'}]}]},
        {'type': 'listItem', 'content': [
            {'type': 'paragraph', 'content': [{'type': 'text', 'text': 'Click '},
                                              {'type': 'text', 'text': 'Save', 'marks': [{'type': 'code'}]}]}]}]},
    {'type': 'codeBlock', 'attrs': {'language': 'text'},
     'content': [{'type': 'text', 'text': 'HTTP 500 from /rest/dashboards'}]},
    {'type': 'table', 'attrs': {'isNumberColumnEnabled': False, 'layout': 'default'}, 'content': [
        {'type': 'tableRow', 'content': [
            {'type': 'tableHeader', 'attrs': {},
             'content': [{'type': 'paragraph', 'content': [{'type': 'text', 'text': 'browser'}]}]},
            {'type': 'tableHeader', 'attrs': {},
             'content': [{'type': 'paragraph', 'content': [{'type': 'text', 'text': 'result'}]}]}]},
        {'type': 'tableRow', 'content': [
            {'type': 'tableCell', 'attrs': {},
             'content': [{'type': 'paragraph', 'content': [{'type': 'text', 'text': 'Firefox'}]}]},
            {'type': 'tableCell', 'attrs': {},
             'content': [{'type': 'paragraph', 'content': [{'type': 'text', 'text': 'fails'}]}]}]}]},
    {'type': 'paragraph', 'content': [{'type': 'emoji', 'attrs': {'shortName': ':warning:', 'text': '⚠️'}},
                                      {'type': 'text', 'text': ' blocks release, see '},
                                      {'type': 'inlineCard', 'attrs': {'url': 'https://example.atlassian.net/browse/DASH-3'}}]}]}

V3_ISSUE = {
    'expand': 'renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations',
    'id': '10042', 'self': 'https://example.atlassian.net/rest/api/3/issue/10042', 'key': 'DASH-42',
    'fields': {
        'summary': 'Saving a dashboard returns HTTP 500',
        'description': ADF_DESCRIPTION,
        'issuetype': {'self': 'https://example.atlassian.net/rest/api/3/issuetype/10004', 'id': '10004', 'name': 'Bug',
                      'subtask': False},
        'project': {'id': '10000', 'key': 'DASH', 'name': 'Dashboards'},
        'priority': {'self': 'https://example.atlassian.net/rest/api/3/priority/2', 'name': 'High', 'id': '2'},
        'labels': ['regression', 'ui'],
        'components': [
            {'self': 'https://example.atlassian.net/rest/api/3/component/10010', 'id': '10010', 'name': 'Frontend'},
            {'self': 'https://example.atlassian.net/rest/api/3/component/10011', 'id': '10011', 'name': 'REST API'}],
        'reporter': {'accountId': '5b10a2844c20165700ede21g', 'displayName': 'Mia Krystof', 'active': True,
                     'accountType': 'atlassian'},
        'assignee': {'accountId': '5b10ac8d82e05b22cc7d4ef5', 'displayName': 'Emma Richards', 'active': True,
                     'accountType': 'atlassian'},
        'created': '2026-11-20T09:15:02.311+0100', 'updated': '2026-11-21T16:40:55.004+0100',
        'status': {'name': 'In Progress'}, 'resolution': None}}


@pytest.fixture
def v3_issue():
    "A realistic REST v3 issue (ADF description, accountId people); a fresh copy per test."
    return copy.deepcopy(V3_ISSUE)


# Jira's CSV export (Filters > Export > CSV (all fields)): multi-valued fields repeat their column.
JIRA_CSV = (
    'Summary,Issue key,Issue id,Issue Type,Status,Project key,Priority,Resolution,Assignee,Assignee Id,Reporter,'
    'Reporter Id,Created,Updated,Resolved,Component/s,Component/s,Labels,Labels,Labels,Description,'
    'Custom field (Story Points)\n'
    'Saving a dashboard returns HTTP 500,DASH-42,10042,Bug,In Progress,DASH,High,,Emma Richards,'
    '5b10ac8d82e05b22cc7d4ef5,'
    'Mia Krystof,5b10a2844c20165700ede21g,20/Nov/26 8:15 AM,21/Nov/26 3:40 PM,,Frontend,REST API,regression,ui,,'
    '"Saving fails.\n\nSteps: open, save, ""boom""",\n'
    'Typo on the login page,DASH-43,10043,Task,Open,DASH,Low,,,,Mia Krystof,5b10a2844c20165700ede21g,'
    '21/Nov/26 1:05 PM,21/Nov/26 1:05 PM,,,,,,,,3\n')


@pytest.fixture
def jira_csv(tmp_path):
    "A Jira CSV export file with repeated Component/s and Labels columns."
    p = tmp_path/'export.csv'
    p.write_text(JIRA_CSV, encoding='utf-8')
    return p


@pytest.fixture
def tenant(ignite, tenant_id):
    "A tenant of the test's own, created on the session's node."
    from alliedium.tenants import create_tenant
    create_tenant(tenant_id, settings=ignite)
    return tenant_id


def write_jsonl(path, objs) -> Path:
    "A JSONL file of these objects (bytes are written as they are, for broken lines)."
    path.write_bytes(b''.join((o if isinstance(o, bytes) else json.dumps(o).encode()) + b'\n'
                              for o in objs))
    return path
