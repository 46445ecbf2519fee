"The local node: start, status, stop, persistence across a restart, and the errors a user can hit."
import socket

import pytest

from alliedium.config import ConfigError, Settings
from alliedium.ignite import (IgniteJarsMissing, IgniteStartFailed, IgniteUnavailable, JavaNotFound, LocalNode,
                              PortBusy, _alive, cluster_status, ignite_client, node_pid, start_local_node,
                              stop_local_node, store_page_size)
from alliedium.schema import ensure_schema
from conftest import node_settings


def test_status_of_running_node(ignite):
    st = cluster_status(ignite)
    assert st['state'] == 'ACTIVE'
    assert st['version'].startswith('2.15.')
    assert (st['servers'], len(st['nodes'])) == (1, 1)


def test_second_start_leaves_node_alone(ignite):
    pid = node_pid(LocalNode(ignite))
    r = start_local_node(ignite)
    assert r.already_running and r.pid == pid


def test_row_survives_restart(tmp_path):
    s = node_settings(tmp_path)
    # a store made with other pages than the default
    first = start_local_node(s.model_copy(update=dict(ignite_page_size=4096)))
    try:
        ensure_schema(s)
        with ignite_client(s) as c:
            c.sql("MERGE INTO ALLIEDIUM.TENANT (id, name, settings) VALUES ('acme', 'Acme Corp', '{}')")
        assert stop_local_node(s)
        assert not _alive(first.pid) and node_pid(LocalNode(s)) is None
        with pytest.raises(IgniteUnavailable): cluster_status(s)
        second = start_local_node(s)
        assert not second.already_running and second.pid != first.pid
        with ignite_client(s) as c:
            assert list(c.sql("SELECT id, name FROM ALLIEDIUM.TENANT WHERE id = 'acme'")) == [['acme', 'Acme Corp']]
        assert cluster_status(s)['state'] == 'ACTIVE'
        assert store_page_size(LocalNode(s)) == 4096 != s.ignite_page_size   # ... reopened with its own page size
    finally:
        stop_local_node(s)


def test_busy_port_is_reported(tmp_path):
    s = node_settings(tmp_path)
    with socket.socket() as busy:
        busy.bind((s.ignite_host, s.ignite_client_port)); busy.listen()
        with pytest.raises(PortBusy, match=f'client port .*:{s.ignite_client_port} is in use'):
            start_local_node(s)
    assert not LocalNode(s).pid_path.exists()


def test_missing_java_is_reported(tmp_path):
    s = node_settings(tmp_path).model_copy(update=dict(java='/nonexistent/java'))
    with pytest.raises(JavaNotFound, match='install JDK 17'): start_local_node(s)


def test_missing_jars_are_reported(tmp_path):
    s = node_settings(tmp_path).model_copy(update=dict(ignite_libs=tmp_path/'nolibs'))
    with pytest.raises(IgniteJarsMissing, match='make setup'): start_local_node(s)


def test_node_that_does_not_come_up_in_time_is_killed(tmp_path):
    s = node_settings(tmp_path).model_copy(update=dict(ignite_start_timeout=1.0))
    with pytest.raises(IgniteStartFailed, match='did not answer SQL within'): start_local_node(s)
    assert node_pid(LocalNode(s)) is None


def test_node_that_exits_at_start_is_reported(tmp_path):
    s = node_settings(tmp_path).model_copy(update=dict(ignite_heap='1k'))
    with pytest.raises(IgniteStartFailed, match='exited with code'): start_local_node(s)


def test_external_cluster_is_used_instead_of_a_local_node(ignite, tmp_path):
    from alliedium.ignite import ignite_password
    # a cluster of someone else's: its credentials and CA given by setting, as a user brings their own
    own = dict(ignite_password=ignite_password(ignite) if ignite.ignite_auth else '', ignite_ca=ignite.ca_file)
    ext = Settings(var_dir=tmp_path, ignite_hosts=f'{ignite.ignite_host}:{ignite.ignite_client_port}',
                   ignite_client_port=1, **own)
    assert cluster_status(ext)['servers'] == 1
    with pytest.raises(ConfigError, match='starts no local node'): start_local_node(ext)
