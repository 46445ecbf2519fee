"`alliedium tenants` and `alliedium ingest`, run as a user runs them (subprocesses) against the session's node."
import json, os, subprocess, sys
from pathlib import Path

from alliedium.tenants import tenant_for_key
from fixtures_data import write_jsonl

BIN = Path(sys.executable).parent/'alliedium'


def run(*args):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, COLUMNS='200'))


def test_tenants_create_prints_the_key_once_and_list_shows_it(ignite, tenant_id):
    r = run('tenants', 'create', tenant_id, '--name', 'Acme Jira')
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip().splitlines()[-1]
    assert tenant_for_key(key, ignite) == tenant_id
    r = run('tenants', 'list', '--json')
    assert r.returncode == 0, r.stderr
    listed = next(t for t in json.loads(r.stdout) if t['id'] == tenant_id)
    assert {'id': tenant_id, 'name': 'Acme Jira', 'api_keys': 1}.items() <= listed.items()
    assert key not in r.stdout
    r = run('tenants', 'create', tenant_id)
    assert r.returncode == 1 and 'exists already' in r.stderr and 'Traceback' not in r.stderr


def test_ingest_summarises_and_exit_status_says_whether_anything_was_rejected(ignite, tenant, zk_issues, tmp_path):
    good = write_jsonl(tmp_path/'good.jsonl', zk_issues[:5])
    r = run('ingest', '--tenant', tenant, good)
    assert r.returncode == 0, r.stderr
    assert 'read 5, inserted 5, updated 0, unchanged 0, older skipped 0, deleted 0, rejected 0' in r.stdout
    bad = write_jsonl(tmp_path/'bad.jsonl', [zk_issues[5], b'{"key": "ZOOKEEPER-1", "fie', zk_issues[6]])
    r = run('ingest', '--tenant', tenant, good, bad, '--json')
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert (out['read'], out['inserted'], out['unchanged'], out['rejected']) == (8, 2, 5, 1)
    assert out['rejections'][0].startswith('bad.jsonl:2: not JSON')
    r = run('ingest', '--tenant', tenant, bad)
    assert r.returncode == 1 and 'rejected bad.jsonl:2: not JSON' in r.stdout


def test_ingest_into_an_unknown_tenant_is_one_clear_line(ignite, tenant_id, tmp_path):
    r = run('ingest', '--tenant', tenant_id, write_jsonl(tmp_path/'x.jsonl', []))
    assert r.returncode == 2
    assert f'unknown tenant {tenant_id!r}' in r.stderr and 'alliedium tenants create' in r.stderr
    assert 'Traceback' not in r.stderr


def test_bench_ingest_warms_up_then_times_first_and_repeated_ingestion(ignite):
    from fixtures_data import SAMPLE
    r = run('bench', 'ingest', '--data', SAMPLE, '--file', 'Storm', '--json')
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)
    assert res['counts_match'] and res['issues'] == res['rows'] == res['reingest_unchanged'] == 1507
    assert res['warmup_issues'] == 1507 and res['warmup_rounds'] == 3 and res['ratio'] > 0 and 'load_average' in res
    assert res['node_cpu_s'] > 0   # the session's local node did the writing
