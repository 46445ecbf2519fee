"The `alliedium` console script, run as a user runs it (a subprocess) against the session's node."
import json, os, subprocess, sys
from pathlib import Path

from alliedium.schema import SCHEMA_VERSION

BIN = Path(sys.executable).parent/'alliedium'


def run(*args, env=None):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_status_json(ignite):
    r = run('ignite', 'status', '--json')
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st['state'] == 'ACTIVE' and st['servers'] == 1


def test_status_text_names_version_state_and_topology(ignite):
    r = run('ignite', 'status')
    assert r.returncode == 0, r.stderr
    assert 'Ignite 2.15.0: cluster ACTIVE, 1 server(s)' in r.stdout and 'node0' in r.stdout


def test_second_start_says_so_and_exits_0(ignite):
    r = run('ignite', 'start')
    assert r.returncode == 0, r.stderr
    assert 'already running' in r.stdout and f'Schema {SCHEMA_VERSION} ready' in r.stdout


def test_unreachable_cluster_is_one_clear_line(ignite, tmp_path):
    from alliedium.ignite import free_port
    r = run('ignite', 'status', env=dict(ALLIEDIUM_IGNITE_HOSTS=f'127.0.0.1:{free_port()}'))
    assert r.returncode == 3
    assert 'no Ignite node answers' in r.stderr and 'Traceback' not in r.stderr + r.stdout


def test_bad_setting_is_one_clear_line(ignite):
    r = run('ignite', 'status', env=dict(ALLIEDIUM_IGNITE_CLIENT_PORT='many'))
    assert r.returncode == 1
    assert 'ALLIEDIUM_IGNITE_CLIENT_PORT' in r.stderr and 'Traceback' not in r.stderr
