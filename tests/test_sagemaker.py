"""Deep models on SageMaker, end to end on this machine: a tenant's deep version is trained and promoted, packaged as
model.tar.gz, served by the real container stack (the SageMaker PyTorch inference toolkit starting TorchServe, which
loads the package's code/inference.py) behind the runtime stand-in (SigV4 checked), and triaged through the API and
through Ray Serve with boto3's `sagemaker-runtime` client; equal to the in-process answer; endpoint down -> 503 with
Retry-After and the classical tasks still answered; tampered weights refused; deep_serving=auto picks by size."""
import gzip, itertools, json, tarfile, urllib.request, uuid

import pytest

torch = pytest.importorskip('torch', reason="deep models need PyTorch: the optional extra [dl] (make setup-dl)")
boto3 = pytest.importorskip('boto3', reason="SageMaker forwarding needs boto3: the optional extra [dl]")

from botocore.exceptions import ClientError  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from alliedium.config import Settings  # noqa: E402
from alliedium.jira import sample_dir  # noqa: E402
from alliedium.registry import load_model, promote  # noqa: E402
from alliedium.sagemaker import inference  # noqa: E402
from alliedium.serving.api import LocalBackend, make_api  # noqa: E402
from alliedium.serving.sagemaker import LocalEndpoint, package_model  # noqa: E402
from alliedium.tenants import create_tenant  # noqa: E402
from alliedium.training import train_frame  # noqa: E402
from fixtures_models import jira_frame  # noqa: E402

KEY, SECRET, ENDPOINT = 'AKIDALLIEDIUMTEST', 'alliedium-test-secret', 'alliedium-test'


def zk_issues(n=3) -> list[dict]:
    with gzip.open(sample_dir()/'Zookeeper.jsonl.gz', 'rt') as f: return [json.loads(l) for l in itertools.islice(f, n)]


@pytest.fixture(scope='module')
def aws_env():
    "Test credentials for boto3 (the stand-in checks the signature against them); no real AWS is reached."
    mp = pytest.MonkeyPatch()
    for k, v in dict(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION='us-east-1',
                     AWS_EC2_METADATA_DISABLED='true', AWS_CONFIG_FILE='/dev/null',
                     AWS_SHARED_CREDENTIALS_FILE='/dev/null').items(): mp.setenv(k, v)
    mp.delenv('AWS_SESSION_TOKEN', raising=False); mp.delenv('AWS_PROFILE', raising=False)
    yield
    mp.undo()


@pytest.fixture(scope='module')
def deep_tenant(ignite):
    "A ZooKeeper tenant trained with a deep priority candidate; the deep version promoted. (tenant, key, version)"
    t = f'sm-{uuid.uuid4().hex[:8]}'
    key = create_tenant(t, settings=ignite)
    s = ignite.model_copy(update=dict(deep_tasks='priority'))
    out = train_frame(t, jira_frame('Zookeeper', 800), ['priority', 'components'], s)  # a small tenant, a small model
    p = out['priority']
    assert {p['family'], p['other']['family']} == {'classical', 'deep'} and not out['components'].get('other')
    assert p['promoted'] and 'held-out tickets' in p['other']['reason'], p  # the better one went on
    deep_v = p['version'] if p['family'] == 'deep' else p['other']['version']
    print(f"\nZooKeeper (800 tickets) priority: {p['family']} promoted; {p['other']['reason']}")
    promote(t, 'priority', deep_v, settings=ignite)  # served deep whichever won: the path under test
    return t, key, deep_v


@pytest.fixture(scope='module')
def endpoint(deep_tenant, ignite, tmp_path_factory, aws_env):
    "The package under a model prefix; TorchServe (started by the toolkit) and the runtime front on free ports."
    pytest.importorskip('sagemaker_pytorch_serving_container', reason="the SageMaker toolkit: the optional extra [dl]")
    t, _, v = deep_tenant
    prefix = tmp_path_factory.mktemp('s3-models')
    path = package_model(t, 'priority', v, prefix, ignite)
    ep = LocalEndpoint(prefix, {KEY: SECRET}, ENDPOINT, container_port=0,
                       work_dir=tmp_path_factory.mktemp('endpoint'))
    assert ep.front.load_target(path.relative_to(prefix).as_posix())  # warm: a cold load takes longer than a call may
    yield ep, path
    ep.stop()
    assert ep.container.poll() is not None and ep._server_pid() is None  # TorchServe stopped with it


def runtime(ep, secret=SECRET):
    from botocore.config import Config
    return boto3.client('sagemaker-runtime', endpoint_url=ep.url, region_name='us-east-1',
                        aws_access_key_id=KEY, aws_secret_access_key=secret,
                        config=Config(retries=dict(mode='standard', total_max_attempts=4)))


def sm_settings(ignite, url, **kw) -> Settings:
    return ignite.model_copy(update=dict(dict(deep_serving='sagemaker', sagemaker_endpoint=ENDPOINT,
                                              sagemaker_endpoint_url=url, sagemaker_timeout=10, sagemaker_retries=1,
                                              sagemaker_breaker_failures=2, sagemaker_breaker_seconds=20), **kw))


def test_package_is_sagemakers_layout(endpoint, deep_tenant):
    ep, path = endpoint
    t, _, v = deep_tenant
    assert path.name == f'v{v}.tar.gz' and path.parent.name == 'priority' and path.parent.parent.name == t
    with tarfile.open(path) as tar: names = set(tar.getnames())
    assert names == {'model.safetensors', 'config.json', 'code/inference.py'}, names
    with tarfile.open(path) as tar: code = tar.extractfile('code/inference.py').read().decode()
    assert 'from alliedium.sagemaker.inference import' in code  # importable on its own, as the toolkit imports it


def test_boto3_invoke_endpoint_equals_in_process(endpoint, deep_tenant, ignite):
    ep, _ = endpoint
    t, _, v = deep_tenant
    from alliedium.features import issue_rows
    from alliedium.models.deep import instances
    rows = [issue_rows(i, t) for i in zip_issues()]
    body = json.dumps({'instances': [instances(r)[0] for r in rows]}).encode()
    r = runtime(ep).invoke_endpoint(EndpointName=ENDPOINT, TargetModel=f'{t}/priority/v{v}.tar.gz', Body=body,
                                    ContentType='application/json', Accept='application/json')
    assert r['ResponseMetadata']['HTTPStatusCode'] == 200 and r['ContentType'] == 'application/json'
    remote = json.loads(r['Body'].read())['predictions']
    _, model, _ = load_model(t, 'priority', v, settings=ignite)
    local = [model.predict(x)[0] for x in rows]
    assert [a['priority']['label'] for a in remote] == [a['priority']['label'] for a in local]
    for a, b in zip(remote, local):
        assert abs(a['rank_score'] - b['rank_score']) <= 1e-4
        assert all(abs(a['priority']['scores'][c] - s) <= 1e-4 for c, s in b['priority']['scores'].items())
    assert any(m['modelName'].startswith(t) for m in json.loads(
        urllib.request.urlopen(f'{ep.container_url}/models').read())['models'])


def zip_issues(): return zk_issues(3)


def test_signature_and_errors_are_the_runtime_apis(endpoint, deep_tenant):
    ep, _ = endpoint
    t, _, v = deep_tenant
    args = dict(EndpointName=ENDPOINT, Body=b'{"instances": []}', ContentType='application/json',
                TargetModel=f'{t}/priority/v{v}.tar.gz')
    with pytest.raises(ClientError) as e: runtime(ep, secret='not-the-secret').invoke_endpoint(**args)
    assert e.value.response['Error']['Code'] == 'InvalidSignatureException'
    with pytest.raises(ClientError) as e: runtime(ep).invoke_endpoint(**{**args, 'EndpointName': 'nope'})
    assert e.value.response['Error']['Code'] == 'ValidationError'
    with pytest.raises(ClientError) as e:
        runtime(ep).invoke_endpoint(**{**args, 'TargetModel': f'{t}/priority/v999.tar.gz'})
    assert e.value.response['Error']['Code'] == 'ValidationError' and 'download' in e.value.response['Error']['Message']
    with pytest.raises(ClientError) as e: runtime(ep).invoke_endpoint(**{**args, 'ContentType': 'text/csv'})
    assert e.value.response['Error']['Code'] == 'ModelError' and e.value.response['OriginalStatusCode'] == 415
    # throttled twice: botocore's standard retries (429 ThrottlingException) get through on the third call
    before, ep.front.throttle = ep.front.calls, 2
    r = runtime(ep).invoke_endpoint(**args)
    assert r['ResponseMetadata']['HTTPStatusCode'] == 200 and ep.front.calls - before == 3
    assert r['ResponseMetadata']['RetryAttempts'] == 2


def test_api_triage_forwards_the_deep_task(endpoint, deep_tenant, ignite):
    ep, _ = endpoint
    t, key, v = deep_tenant
    api = TestClient(make_api(LocalBackend(sm_settings(ignite, ep.url))))
    inproc = TestClient(make_api(LocalBackend(ignite)))
    for issue in zk_issues(2):
        before = ep.front.calls
        r = api.post(f'/v1/tenants/{t}/triage', json=issue, headers={'Authorization': f'Bearer {key}'})
        assert r.status_code == 200, r.text
        assert ep.front.calls == before + 1  # the priority answer came from the endpoint
        local = inproc.post(f'/v1/tenants/{t}/triage', json=issue, headers={'Authorization': f'Bearer {key}'}).json()
        a = r.json()
        assert a['versions']['priority'] == v and a['priority']['label'] == local['priority']['label']
        assert abs(a['rank_score'] - local['rank_score']) <= 1e-4
        assert a['components'] == local['components']  # the classical task, answered in-process


def test_tampered_weights_are_refused(endpoint, tmp_path):
    from alliedium.models.deep import DeepArtifactError
    _, path = endpoint
    with tarfile.open(path) as tar: tar.extractall(tmp_path, filter='data')
    assert inference.model_fn(str(tmp_path)).task == 'priority'
    w = bytearray((tmp_path/'model.safetensors').read_bytes()); w[-3] ^= 0x40
    (tmp_path/'model.safetensors').write_bytes(bytes(w))
    with pytest.raises(DeepArtifactError, match='do not match the sha256'): inference.model_fn(str(tmp_path))


def test_endpoint_down_is_503_with_retry_after_and_classical_answers(deep_tenant, ignite, tmp_path, aws_env):
    t, key, v = deep_tenant
    from alliedium.ignite import free_port
    down = f'http://127.0.0.1:{free_port()}'  # an endpoint that is down: nothing listens at its URL
    api = TestClient(make_api(LocalBackend(sm_settings(ignite, down))))
    issue, auth = zk_issues(1)[0], {'Authorization': f'Bearer {key}'}
    for _ in range(2):  # the second failure opens the circuit
        r = api.post(f'/v1/tenants/{t}/triage', json=issue, headers=auth)
        assert r.status_code == 503, r.text
        b = r.json()
        assert b['error'] == 'EndpointUnavailable' and ENDPOINT in b['detail'] and int(r.headers['Retry-After']) >= 1
        assert b['answer']['versions']['priority'] == v and b['answer']['priority'] is None
        assert isinstance(b['answer']['components'], list)  # the classical task still answered
    r = api.post(f'/v1/tenants/{t}/triage', json=issue, headers=auth)  # open circuit: refused at once
    assert r.status_code == 503 and 'circuit open' in r.json()['detail'] and int(r.headers['Retry-After']) >= 10


def test_cli_package_and_the_images_dockerfile(deep_tenant, tmp_path):
    "`alliedium sagemaker package` as a user runs it; the Dockerfile copies what exists and starts a real command."
    import re, subprocess, sys
    from pathlib import Path
    t, _, v = deep_tenant
    bin_ = Path(sys.executable).parent/'alliedium'
    r = subprocess.run([str(bin_), 'sagemaker', 'package', t, 'priority', '--out', str(tmp_path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and (tmp_path/t/'priority'/f'v{v}.tar.gz').is_file(), r.stdout + r.stderr
    r = subprocess.run([str(bin_), 'sagemaker', 'package', t, 'components', '--out', str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and 'only deep models' in ' '.join(r.stderr.split()), r.stderr  # a classical model
    root = Path(__file__).resolve().parent.parent
    lines = [l.strip() for l in (root/'sagemaker'/'Dockerfile').read_text().splitlines() if l.strip()
             and not l.startswith('#')]
    assert lines[0].startswith('FROM python:3.11')
    for l in lines:
        assert re.match(r'^(FROM|ENV|WORKDIR|COPY|RUN|LABEL|EXPOSE|ENTRYPOINT|CMD) ', l), l
        if l.startswith('COPY '): assert all((root/p).exists() for p in l.split()[1:-1]), l
    entry = json.loads(next(l for l in lines if l.startswith('ENTRYPOINT '))[len('ENTRYPOINT '):])
    cmd = json.loads(next(l for l in lines if l.startswith('CMD '))[len('CMD '):])
    assert entry[0] == 'alliedium' and cmd == ['serve'] and 'EXPOSE 8080' in lines
    r = subprocess.run([str(bin_), *entry[1:], '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and 'TorchServe' in r.stdout, r.stdout + r.stderr


def test_deploy_against_moto(endpoint, aws_env):
    "`deploy` creates the multi-model model, config and endpoint on SageMaker's control plane (moto), on S3's prefix."
    moto = pytest.importorskip('moto', reason="moto (the dev extra) runs AWS's control planes in this process")
    from alliedium.serving.sagemaker import deploy, upload_packages
    _, path = endpoint
    prefix = path.parent.parent.parent  # <prefix>/<tenant>/<task>/v<N>.tar.gz
    with moto.mock_aws():
        s3, sm = boto3.client('s3', region_name='us-east-1'), boto3.client('sagemaker', region_name='us-east-1')
        s3.create_bucket(Bucket='alliedium-models')
        keys = upload_packages(prefix, 's3://alliedium-models/mme/', s3)
        assert keys and all(k.startswith('mme/') and k.endswith('.tar.gz') for k in keys)
        assert path.relative_to(prefix).as_posix() in [k.removeprefix('mme/') for k in keys]  # = its TargetModel
        role = 'arn:aws:iam::123456789012:role/alliedium-sagemaker'
        image = '123456789012.dkr.ecr.us-east-1.amazonaws.com/alliedium:1'
        first = deploy('alliedium-mme', image, 's3://alliedium-models/mme/', role, sm=sm)
        assert first['action'] == 'created' and first['status'] in ('Creating', 'InService'), first
        m = sm.describe_model(ModelName=first['model'])['PrimaryContainer']
        assert m['Mode'] == 'MultiModel' and m['ModelDataUrl'] == 's3://alliedium-models/mme/' and m['Image'] == image
        v = sm.describe_endpoint_config(EndpointConfigName=first['endpoint_config'])['ProductionVariants'][0]
        assert v['ModelName'] == first['model'] and v['InstanceType'] == 'ml.g4dn.xlarge'
        assert sm.describe_endpoint(EndpointName='alliedium-mme')['EndpointConfigName'] == first['endpoint_config']
        # (updating an existing endpoint calls update_endpoint, which moto does not implement: not covered here)


def triage_equal(a: dict, b: dict):
    "Two triage answers agree: the same priority label, scores and rank score within 1e-4, the same components."
    assert a['priority']['label'] == b['priority']['label'], (a, b)
    assert abs(a['rank_score'] - b['rank_score']) <= 1e-4
    assert all(abs(a['priority']['scores'][c] - s) <= 1e-4 for c, s in b['priority']['scores'].items())
    assert a['components'] == b['components']


def test_deep_serving_auto_chooses_by_size(endpoint, deep_tenant, ignite):
    "`deep_serving=auto`: weights up to `deep_inprocess_max_mb` answer in-process, larger ones through the endpoint."
    from alliedium.models.deep import DeepModel, EndpointModel, forwarded
    ep, _ = endpoint
    t, key, v = deep_tenant
    _, model, _ = load_model(t, 'priority', v, settings=ignite)
    mb = len(model.weights_) / 2**20
    small = sm_settings(ignite, ep.url, deep_serving='auto', deep_inprocess_max_mb=mb * 2)  # the model fits
    large = sm_settings(ignite, ep.url, deep_serving='auto', deep_inprocess_max_mb=mb / 2)  # it does not
    assert isinstance(forwarded(t, {'priority': model}, {'priority': v}, small)['priority'], DeepModel)
    assert isinstance(forwarded(t, {'priority': model}, {'priority': v}, large)['priority'], EndpointModel)
    issue, auth = zk_issues(1)[0], {'Authorization': f'Bearer {key}'}
    local = TestClient(make_api(LocalBackend(ignite))).post(f'/v1/tenants/{t}/triage', json=issue, headers=auth).json()
    for s, calls in ((small, 0), (large, 1)):
        before = ep.front.calls
        r = TestClient(make_api(LocalBackend(s))).post(f'/v1/tenants/{t}/triage', json=issue, headers=auth)
        assert r.status_code == 200, r.text
        assert ep.front.calls - before == calls  # in-process: the endpoint was not called
        triage_equal(r.json(), local)


def test_tampered_package_is_refused_by_the_endpoint(endpoint, deep_tenant, tmp_path):
    "A model.tar.gz whose weights were changed: TorchServe's worker refuses it in model_fn; boto3 gets an error."
    ep, path = endpoint
    t, _, v = deep_tenant
    with tarfile.open(path) as tar: tar.extractall(tmp_path/'x', filter='data')
    w = bytearray((tmp_path/'x'/'model.safetensors').read_bytes()); w[-3] ^= 0x40
    (tmp_path/'x'/'model.safetensors').write_bytes(bytes(w))
    bad = path.with_name(f'v{v + 1000}.tar.gz')
    with tarfile.open(bad, 'w:gz') as tar:
        for f in ('model.safetensors', 'config.json', 'code/inference.py'): tar.add(tmp_path/'x'/f, f)
    body = json.dumps({'instances': [{'summary': 'x'}]}).encode()
    with pytest.raises(ClientError) as e:
        runtime(ep).invoke_endpoint(EndpointName=ENDPOINT, Body=body, ContentType='application/json',
                                    TargetModel=f'{t}/priority/{bad.name}')
    err = e.value.response['Error']
    assert err['Code'] == 'ModelError' and 'Failed to load' in err['Message'], err
    assert 'do not match the sha256' in ep.tail(200_000)  # the worker's model_fn said why


def test_ray_serve_forwards_the_deep_task(serve_url, endpoint, deep_tenant, ignite, tmp_path_factory):
    """Through Ray Serve (serve/app.py): the replicas get the SageMaker settings in their AppArgs, credentials from the
    file they name; priority comes from TorchServe via boto3 and the runtime front, equal to the in-process answer;
    with the endpoint down, 503 with Retry-After and the classical components still answered."""
    import httpx
    from ray import serve
    from alliedium.ignite import free_port
    from alliedium.serving.api import settings_overrides
    from alliedium.serving.runtime import load_app
    ep, _ = endpoint
    t, key, v = deep_tenant
    creds = tmp_path_factory.mktemp('aws')/'credentials'  # the replicas' processes do not have this test's AWS_*
    creds.write_text(f'[default]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n')
    serve_kw = dict(sagemaker_credentials_file=str(creds), serve_models_in_ingress=True, serve_poll_seconds=0.5,
                    serve_models_per_replica=4, serve_replica_cpus=0.1, sagemaker_region='us-east-1')
    up = sm_settings(ignite, ep.url, **serve_kw)
    down = sm_settings(ignite, f'http://127.0.0.1:{free_port()}', **serve_kw)
    for name, s in (('deep-sm', up), ('deep-sm-down', down)):
        serve.run(load_app('serve.app:build_app', dict(settings=settings_overrides(s)), s), name=name,
                  route_prefix=f'/{name}')
    auth = {'Authorization': f'Bearer {key}'}
    inproc = TestClient(make_api(LocalBackend(ignite)))
    try:
        with httpx.Client(base_url=serve_url, timeout=120) as http:
            for issue in zk_issues(3):
                before = ep.front.calls
                r = http.post(f'/deep-sm/v1/tenants/{t}/triage', json=issue, headers=auth)
                assert r.status_code == 200, r.text
                assert ep.front.calls == before + 1  # the replica called the endpoint
                assert r.json()['versions']['priority'] == v
                triage_equal(r.json(), inproc.post(f'/v1/tenants/{t}/triage', json=issue, headers=auth).json())
            r = http.post(f'/deep-sm-down/v1/tenants/{t}/triage', json=zk_issues(1)[0], headers=auth)
            assert r.status_code == 503 and int(r.headers['Retry-After']) >= 1, r.text
            b = r.json()
            assert b['error'] == 'EndpointUnavailable' and b['answer']['priority'] is None
            assert isinstance(b['answer']['components'], list)  # the classical task still answered
    finally:
        serve.delete('deep-sm'); serve.delete('deep-sm-down')
