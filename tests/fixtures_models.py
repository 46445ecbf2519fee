"Fixtures of the models area: real Jira tickets of the two smallest tenants as frames, loaded once per session."
import functools, itertools

import pytest

from alliedium.jira import jira_file, read_issues, tickets_frame


@functools.lru_cache(maxsize=None)
def jira_frame(project: str, n: int | None = None):
    "The tickets of a real Apache Jira project as a frame (the first `n` when given); `DataMissing` without its dump."
    items = read_issues(jira_file(project), project.lower())
    return tickets_frame(itertools.islice(items, n) if n else items)


@pytest.fixture(scope='session')
def zk_tickets():
    "ZooKeeper's 1,827 tickets (the smallest tenant)."
    return jira_frame('Zookeeper').copy()


@pytest.fixture(scope='session')
def storm_tickets():
    "Storm's 1,507 tickets (the tenant with most labels)."
    return jira_frame('Storm').copy()
