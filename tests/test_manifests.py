"""deploy/k8s: the Kubernetes manifests validate, agree with the project's own config, and say what they promise.

No cluster runs here. The built-in kinds are validated with kubernetes-validate (strict: unknown fields are
errors) at the oldest and the newest Kubernetes version we state (`K8S_VERSIONS`); the RayService against
KubeRay's documented ray.io/v1 fields (`RAYSERVICE_SCHEMA`), its pod templates as PodTemplates, its
serveConfigV2 against serve/config.yaml. Then the promises: requests and limits on every container, no Secret
value committed (only references, by the file names alliedium's settings use), NetworkPolicies that open the
API alone to the outside and the Ignite ports to the namespace's own pods, references that resolve, the node
configuration rendered from ignite/node.xml.tmpl and loadable by Ignite. Each check is a function returning
the problems it finds; the `test_*_caught` tests break a copy of the manifests and see the problem reported.
"""
import copy, importlib.util, re, shutil, subprocess, sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from alliedium.config import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT/'deploy'/'k8s'
K8S_VERSIONS = ('1.30', '1.37')  # the oldest Kubernetes we state support for, and the newest the validator knows
SECRET = 'alliedium-ignite-secrets'
OPEN_API_PORT = 8000  # Serve's HTTP port: the only one open to the world
IGNITE_PORTS = {10800, 47500, 47100}
RAY_OPERATOR_PORTS = {8265, 52365}


def load_docs(root: Path = K8S) -> list[dict]:
    "Every object of every manifest under `root`, each with `_file` (its path relative to `root`)."
    docs = []
    for f in sorted(root.rglob('*.yaml')):
        for d in yaml.safe_load_all(f.read_text()):
            if d: docs.append({**d, '_file': str(f.relative_to(root))})
    return docs


@pytest.fixture(scope='module')
def docs(): return load_docs()


def strip(d: dict) -> dict: return {k: v for k, v in d.items() if k != '_file'}


def name(d): return f"{d['_file']}: {d['kind']} {d['metadata']['name']}"


def find(docs, kind, nm=None):
    return [d for d in docs if d['kind'] == kind and (nm is None or d['metadata']['name'] == nm)]


# ---------------------------------------------------------------------------------------------------------------
# Pod templates and containers of every workload kind in the manifests

def pod_templates(docs) -> list[tuple[str, dict, dict]]:
    "(where, extra labels the controller adds, pod template) of every workload."
    out = []
    for d in docs:
        k, s = d['kind'], d.get('spec', {})
        if k in ('StatefulSet', 'Deployment', 'DaemonSet', 'ReplicaSet', 'Job'): out.append((name(d), {}, s['template']))
        elif k == 'CronJob': out.append((name(d), {}, s['jobTemplate']['spec']['template']))
        elif k == 'RayService':
            rc = s.get('rayClusterConfig', {})
            out.append((name(d) + ' head', {'ray.io/node-type': 'head'}, rc.get('headGroupSpec', {}).get('template', {})))
            for g in rc.get('workerGroupSpecs', []):
                out.append((f"{name(d)} worker {g.get('groupName')}", {'ray.io/node-type': 'worker'},
                            g.get('template', {})))
    return out


def containers(docs):
    for where, _, t in pod_templates(docs):
        spec = t.get('spec', {})
        for c in spec.get('initContainers', []) + spec.get('containers', []): yield where, c, spec


def pod_labels(template, extra) -> dict: return {**template.get('metadata', {}).get('labels', {}), **extra}


# ---------------------------------------------------------------------------------------------------------------
# The checks: each returns a list of problems

def builtin_problems(docs, version) -> list[str]:
    "kubernetes-validate, strict, on every object of a built-in kind."
    out = []
    for d in docs:
        if d['apiVersion'].startswith('ray.io/'): continue
        try: kubernetes_validate.validate(strip(d), version, strict=True)
        except kubernetes_validate.ValidationError as e:
            out.append(f"{name(d)}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e: out.append(f"{name(d)}: {e.message}")
    return out


_str_map = {'type': 'object', 'additionalProperties': {'type': 'string'}}
_template = {'type': 'object', 'required': ['spec'], 'properties': {'metadata': {'type': 'object'},
                                                                      'spec': {'type': 'object'}}}
_int = {'type': 'integer', 'minimum': 0}
# KubeRay's ray.io/v1 API reference (RayService, RayServiceSpec, RayClusterSpec, HeadGroupSpec, WorkerGroupSpec,
# RayServiceUpgradeStrategy): the fields it documents, their types, the required ones; unknown fields are errors.
RAYSERVICE_SCHEMA = {
    'type': 'object', 'required': ['apiVersion', 'kind', 'metadata', 'spec'], 'additionalProperties': False,
    'properties': {
        'apiVersion': {'const': 'ray.io/v1'}, 'kind': {'const': 'RayService'},
        'metadata': {'type': 'object', 'required': ['name']},
        'spec': {
            'type': 'object', 'required': ['serveConfigV2', 'rayClusterConfig'], 'additionalProperties': False,
            'properties': {
                'serveConfigV2': {'type': 'string'},
                'serviceUnhealthySecondThreshold': {'type': 'integer'},
                'deploymentUnhealthySecondThreshold': {'type': 'integer'},
                'serveService': {'type': 'object'},
                'upgradeStrategy': {'type': 'object', 'additionalProperties': False, 'properties': {
                    'type': {'enum': ['NewCluster', 'None', 'NewClusterWithIncrementalUpgrade']},
                    'clusterUpgradeOptions': {'type': 'object'}}},
                'excludeHeadPodFromServeSvc': {'type': 'boolean'},
                'rayClusterDeletionDelaySeconds': {'type': 'integer'},
                'managedBy': {'type': 'string'},
                'rayClusterConfig': {
                    'type': 'object', 'required': ['headGroupSpec'], 'additionalProperties': False,
                    'properties': {
                        'rayVersion': {'type': 'string'},
                        'enableInTreeAutoscaling': {'type': 'boolean'},
                        'autoscalerOptions': {'type': 'object'},
                        'headServiceAnnotations': _str_map,
                        'gcsFaultToleranceOptions': {'type': 'object'},
                        'authOptions': {'type': 'object'},
                        'suspend': {'type': 'boolean'},
                        'managedBy': {'type': 'string'},
                        'headGroupSpec': {
                            'type': 'object', 'required': ['template'], 'additionalProperties': False,
                            'properties': {
                                'serviceType': {'enum': ['ClusterIP', 'NodePort', 'LoadBalancer']},
                                'headService': {'type': 'object'}, 'enableIngress': {'type': 'boolean'},
                                'rayStartParams': _str_map, 'template': _template}},
                        'workerGroupSpecs': {'type': 'array', 'items': {
                            'type': 'object', 'required': ['groupName', 'template'], 'additionalProperties': False,
                            'properties': {
                                'groupName': {'type': 'string'}, 'replicas': _int, 'minReplicas': _int,
                                'maxReplicas': _int, 'numOfHosts': _int, 'idleTimeoutSeconds': _int,
                                'suspend': {'type': 'boolean'}, 'scaleStrategy': {'type': 'object'},
                                'rayStartParams': _str_map, 'template': _template}}},
                    }},
            }},
    }}

# what a cluster needs changed in serve/config.yaml (the applications stay as they are)
SERVE_OVERRIDES = {'proxy_location': 'EveryNode', 'http_options': {'host': '0.0.0.0', 'port': OPEN_API_PORT}}


def pinned(package: str) -> str:
    m = re.search(rf'^{re.escape(package)}==(\S+)$', (ROOT/'requirements.lock').read_text(), re.M)
    return m.group(1)


def rayservice_problems(docs, version=K8S_VERSIONS[0]) -> list[str]:
    out = []
    services = find(docs, 'RayService')
    if len(services) != 1: return [f"{len(services)} RayServices, expected 1"]
    d = services[0]
    v = jsonschema.Draft202012Validator(RAYSERVICE_SCHEMA)
    out += [f"{name(d)}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(strip(d))]
    if out: return out
    rc = d['spec']['rayClusterConfig']
    if rc.get('rayVersion') != pinned('ray'): out.append(f"rayVersion {rc.get('rayVersion')} != ray {pinned('ray')}")
    for g in rc.get('workerGroupSpecs', []):
        lo, n, hi = g.get('minReplicas', 0), g.get('replicas', 0), g.get('maxReplicas', 2**31)
        if not lo <= n <= hi: out.append(f"worker group {g['groupName']}: replicas {n} not within [{lo}, {hi}]")
    for where, _, t in pod_templates([d]):  # each pod template is a core/v1 PodTemplateSpec
        pt = {'apiVersion': 'v1', 'kind': 'PodTemplate', 'metadata': {'name': 'x'}, 'template': t}
        try: kubernetes_validate.validate(pt, version, strict=True)
        except kubernetes_validate.ValidationError as e: out.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
    try: serve = yaml.safe_load(d['spec']['serveConfigV2'])
    except yaml.YAMLError as e: return out + [f"serveConfigV2 is not YAML: {e}"]
    local = yaml.safe_load((ROOT/'serve'/'config.yaml').read_text())
    if not isinstance(serve, dict): return out + ["serveConfigV2 is not a mapping"]
    if serve.get('applications') != local['applications']:
        out.append(f"serveConfigV2 applications differ from serve/config.yaml's:\n{serve.get('applications')}\n"
                   f"!= {local['applications']}")
    expected = {**{k: v for k, v in local.items() if k != 'applications'}, **SERVE_OVERRIDES}
    got = {k: v for k, v in serve.items() if k != 'applications'}
    if got != expected: out.append(f"serveConfigV2 outside applications: {got} != serve/config.yaml with "
                                   f"{SERVE_OVERRIDES}: {expected}")
    for app in serve.get('applications') or []:
        module, _, attr = app['import_path'].partition(':')
        path = ROOT/(module.replace('.', '/') + '.py')
        if not path.exists() or f'def {attr}(' not in path.read_text():
            out.append(f"import_path {app['import_path']}: no def {attr} in {path.relative_to(ROOT)}")
    return out


def _cpus(q) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith('m') else float(q)


def app_deployments(docs) -> list[tuple[str, int, float]]:
    """(name, num_replicas, num_cpus) of every deployment serveConfigV2's applications build in the Ray pods: the
    import path's builder (alliedium.serving.runtime.load_app) with the pods' settings (alliedium-settings)."""
    from alliedium.serving.runtime import load_app
    serve = yaml.safe_load(find(docs, 'RayService')[0]['spec']['serveConfigV2'])
    env = find(docs, 'ConfigMap', 'alliedium-settings')[0]['data']
    pod = {k.removeprefix('ALLIEDIUM_').lower(): v for k, v in env.items()}
    out = []
    for app in serve['applications']:
        args = app.get('args') or {}
        todo = [load_app(app['import_path'], {**args, 'settings': {**pod, **args.get('settings', {})}})]
        while todo:
            d = todo.pop()._bound_deployment
            out.append((d.name, d.num_replicas, (d.ray_actor_options or {}).get('num_cpus', 1)))
            todo += [a for a in (*d.init_args, *d.init_kwargs.values()) if hasattr(a, '_bound_deployment')]
    return out


def serve_fit_problems(docs) -> list[str]:
    "The deployments' replicas (and one online training) fit on the minimum number of workers; none on the head."
    out, rc = [], find(docs, 'RayService')[0]['spec']['rayClusterConfig']
    if rc['headGroupSpec'].get('rayStartParams', {}).get('num-cpus') != '0':
        out.append("the head offers CPUs: replicas could land on it")
    workers = [(g.get('minReplicas', g.get('replicas', 0)),
                _cpus(g['template']['spec']['containers'][0]['resources']['limits']['cpu']))
               for g in rc.get('workerGroupSpecs', [])]
    capacity, biggest = sum(n * c for n, c in workers), max((c for _, c in workers), default=0)
    deps = app_deployments(docs)
    env = find(docs, 'ConfigMap', 'alliedium-settings')[0]['data']
    train = Settings(**{k.removeprefix('ALLIEDIUM_').lower(): v for k, v in env.items()}).serve_train_cpus
    need = sum(n * c for _, n, c in deps) + train
    if need > capacity: out.append(f"deployments {deps} and a training need {need} CPUs; the workers have {capacity}")
    for nm, _, c in deps:
        if c > biggest: out.append(f"a {nm} replica needs {c} CPUs; a worker has {biggest}")
    return out


def resource_problems(docs) -> list[str]:
    out = []
    for where, c, _ in containers(docs):
        r = c.get('resources', {})
        for part in ('requests', 'limits'):
            missing = {'cpu', 'memory'} - set(r.get(part, {}))
            if missing: out.append(f"{where} container {c['name']}: no {part} {sorted(missing)}")
    if not list(containers(docs)): out.append("no containers found")
    return out


def load_script(name):
    spec = importlib.util.spec_from_file_location(f'k8s_{name}', K8S/f'{name}.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_render(): return load_script('render')


def secret_keys() -> set[str]:
    "The Secret's keys: the file names alliedium's settings read under ALLIEDIUM_SECRETS_DIR."
    import alliedium.ignite  # noqa: F401  (it adds the secrets' paths to Settings)
    s = Settings(secrets_dir='/s')
    files = {p.name for p in (s.keystore, s.truststore, s.ca_file, s.tde_keystore)}
    server_keys = {f'{n}.key' for n in load_script('make_secrets').SERVER_KEYS}
    return files | server_keys | {'ignite-password', 'ignite-admin-password', 'store-password'}


# the Secret's keys each kind of pod needs (the Ignite pods mount the whole Secret)
NEEDS = {
    'alliedium-serve': {'ignite-password', 'ca.pem', 'artifact.key', 'webhook.key'},  # serving, online training
    'alliedium-retrain': {'ignite-password', 'ca.pem', 'artifact.key'},  # writes signed artifacts
    'alliedium-ignite-init': {'ignite-password', 'ignite-admin-password', 'ca.pem'},  # creates the user
}


_SECRETISH = re.compile(r'PASSWORD|TOKEN|PRIVATE|CREDENTIAL', re.I)


def secret_problems(docs) -> list[str]:
    "No Secret objects or values: only references to the Secret, by the names the settings use."
    out, keys = [], secret_keys()
    for d in docs:
        if d['kind'] == 'Secret': out.append(f"{name(d)}: a Secret is committed (create it on the cluster instead)")
        text = yaml.safe_dump(strip(d))
        if 'BEGIN' in text and 'PRIVATE KEY' in text or 'BEGIN CERTIFICATE' in text:
            out.append(f"{name(d)}: holds a PEM key or certificate")
        if d['kind'] == 'ConfigMap':
            for k, v in d.get('data', {}).items():
                if _SECRETISH.search(k): out.append(f"{name(d)}: data key {k} looks like a secret")
            xml = d.get('data', {}).get('node.xml', '')
            for prop, value in re.findall(r'name="(\w*[Pp]assword)"\s+value="([^"]*)"', xml):
                if not value.startswith("#{systemEnvironment["):
                    out.append(f"{name(d)}: node.xml {prop} has a value, not the environment's")
    for where, c, spec in containers(docs):
        for e in c.get('env', []):
            if _SECRETISH.search(e['name']) and 'value' in e:
                out.append(f"{where} {c['name']}: env {e['name']} has a literal value")
            ref = e.get('valueFrom', {}).get('secretKeyRef')
            if ref and (ref['name'] != SECRET or ref['key'] not in keys):
                out.append(f"{where} {c['name']}: env {e['name']} reads {ref['name']}/{ref['key']}, "
                           f"not one of {SECRET}'s keys {sorted(keys)}")
        mounted = {it['key'] for v in spec.get('volumes', []) if v.get('secret') for it in v['secret'].get('items', [])}
        app = next((pod_labels(t, e).get('app.kubernetes.io/name') for w, e, t in pod_templates(docs) if w == where), None)
        if app in NEEDS and NEEDS[app] - mounted:
            out.append(f"{where}: mounts no {sorted(NEEDS[app] - mounted)} of {SECRET}")
        for v in spec.get('volumes', []):
            sec = v.get('secret')
            if not sec: continue
            if sec['secretName'] != SECRET: out.append(f"{where}: volume {v['name']} mounts {sec['secretName']}")
            for it in sec.get('items', []):
                if it['key'] not in keys or it['path'] != it['key']:
                    out.append(f"{where}: volume {v['name']} item {it} is not one of {sorted(keys)} at its own name")
    return out


def _selects(selector: dict, labels: dict) -> bool:
    if set(selector) - {'matchLabels'}: raise AssertionError(f"selector {selector}: only matchLabels is checked")
    return all(labels.get(k) == v for k, v in selector.get('matchLabels', {}).items())


def _ports(rule) -> set | None:
    "The ports a rule opens; None: all of them."
    return None if not rule.get('ports') else {p['port'] for p in rule['ports']}


def network_problems(docs) -> list[str]:
    "Ingress: the API alone open to the outside; Ignite to the namespace's pods; nothing else."
    out, policies = [], find(docs, 'NetworkPolicy')
    deny = [p for p in policies if p['spec'].get('podSelector') == {} and p['spec'].get('policyTypes') == ['Ingress']
            and not p['spec'].get('ingress')]
    if not deny: out.append("no default-deny ingress policy (podSelector {}, policyTypes [Ingress], no rules)")
    for where, extra, t in pod_templates(docs):
        labels = pod_labels(t, extra)
        mine = [p for p in policies if _selects(p['spec']['podSelector'], labels)]
        if not any('Ingress' in p['spec'].get('policyTypes', []) for p in mine):
            out.append(f"{where}: no NetworkPolicy selects its pods")
        app = labels.get('app.kubernetes.io/name')
        cports = {p['containerPort'] for c in t['spec']['containers'] for p in c.get('ports', [])}
        opened_in_namespace = set()
        for p in mine:
            for rule in p['spec'].get('ingress', []):
                ports, sources = _ports(rule), rule.get('from')
                where_rule = f"{where}: {p['metadata']['name']}"
                if sources is None:  # from anywhere
                    if app != 'alliedium-serve' or ports != {OPEN_API_PORT}:
                        out.append(f"{where_rule} opens {ports or 'every port'} to everyone; only the API "
                                   f"(port {OPEN_API_PORT} of the Serve pods) may be")
                    continue
                for src in sources:
                    if 'ipBlock' in src: out.append(f"{where_rule}: an ipBlock source reaches it from outside")
                    elif 'namespaceSelector' in src:
                        operator = (src.get('podSelector', {}).get('matchLabels') ==
                                    {'app.kubernetes.io/name': 'kuberay-operator'})
                        if not (operator and extra.get('ray.io/node-type') == 'head' and ports == RAY_OPERATOR_PORTS):
                            out.append(f"{where_rule}: {src} reaches {ports or 'every port'} from other namespaces")
                    elif app == 'alliedium-ignite':
                        if ports is None: out.append(f"{where_rule}: every port open to {src}")
                        else: opened_in_namespace |= ports
        if app == 'alliedium-ignite':
            if cports != IGNITE_PORTS: out.append(f"{where}: container ports {cports} != {IGNITE_PORTS}")
            if opened_in_namespace != IGNITE_PORTS:
                out.append(f"{where}: the namespace's pods reach {opened_in_namespace}, expected {IGNITE_PORTS}")
        if app == 'alliedium-serve':  # every Ray pod runs an HTTP proxy (proxy_location: EveryNode)
            if not any(r.get('from') is None and _ports(r) == {OPEN_API_PORT}
                       for p in mine for r in p['spec'].get('ingress', [])):
                out.append(f"{where}: the API port {OPEN_API_PORT} is not open")
    return out


def reference_problems(docs) -> list[str]:
    "Names one object uses of another resolve within the manifests (the Secret: created by the user)."
    out = []
    have = {(d['kind'], d['metadata']['name']) for d in docs}
    def need(kind, nm, where):
        if (kind, nm) not in have: out.append(f"{where}: {kind} {nm} is not in deploy/k8s")
    for where, c, spec in containers(docs):
        for e in c.get('envFrom', []):
            if 'configMapRef' in e: need('ConfigMap', e['configMapRef']['name'], where)
        for v in spec.get('volumes', []):
            if 'configMap' in v: need('ConfigMap', v['configMap']['name'], where)
            if 'persistentVolumeClaim' in v: need('PersistentVolumeClaim', v['persistentVolumeClaim']['claimName'], where)
        if spec.get('serviceAccountName'): need('ServiceAccount', spec['serviceAccountName'], where)
        mounts = {m['name'] for m in c.get('volumeMounts', [])}
        vols = {v['name'] for v in spec.get('volumes', [])}
        for sts in find(docs, 'StatefulSet'):
            vols |= {t['metadata']['name'] for t in sts['spec'].get('volumeClaimTemplates', [])}
        if mounts - vols: out.append(f"{where} {c['name']}: mounts {sorted(mounts - vols)} that are no volume")
    for sts in find(docs, 'StatefulSet'):
        need('Service', sts['spec']['serviceName'], name(sts))
        svc = find(docs, 'Service', sts['spec']['serviceName'])
        if svc and svc[0]['spec'].get('clusterIP') != 'None': out.append(f"{name(svc[0])}: not headless")
    for svc in find(docs, 'Service'):
        pods = [(w, pod_labels(t, e), t) for w, e, t in pod_templates(docs)
                if all(pod_labels(t, e).get(k) == v for k, v in svc['spec']['selector'].items())]
        if not pods: out.append(f"{name(svc)}: selects no pods")
        for p in svc['spec']['ports']:
            named = {cp.get('name') for _, _, t in pods for c in t['spec']['containers'] for cp in c.get('ports', [])}
            if isinstance(p.get('targetPort'), str) and p['targetPort'] not in named:
                out.append(f"{name(svc)}: targetPort {p['targetPort']} is no container port of its pods")
    for rb in find(docs, 'RoleBinding'):
        need(rb['roleRef']['kind'], rb['roleRef']['name'], name(rb))
        for s in rb['subjects']: need(s['kind'], s['name'], name(rb))
    return out


def ignite_problems(docs) -> list[str]:
    "The StatefulSet, its discovery Service, RBAC and the client settings agree with the node configuration."
    render, out = load_render(), []
    sts = find(docs, 'StatefulSet', 'alliedium-ignite')
    if not sts: return ["no StatefulSet alliedium-ignite"]
    sts = sts[0]['spec']
    if sts['serviceName'] != render.DISCOVERY_SERVICE:
        out.append(f"serviceName {sts['serviceName']} != the IP finder's {render.DISCOVERY_SERVICE}")
    if not find(docs, 'Service', render.DISCOVERY_SERVICE)[0]['spec'].get('publishNotReadyAddresses'):
        out.append("the discovery Service does not publish not-ready pods: the first nodes could never join")
    claims = {t['metadata']['name']: t for t in sts.get('volumeClaimTemplates', [])}
    mounts = {m['mountPath']: m['name'] for m in sts['template']['spec']['containers'][0]['volumeMounts']}
    for path, what in ((render.DATA_DIR, 'data'), (render.WAL_DIR, 'WAL')):
        if mounts.get(path) not in claims: out.append(f"{what} ({path}) is not on a persistent volume claim")
    if mounts.get(render.CONFIG_DIR) != 'config': out.append(f"node.xml is not mounted at {render.CONFIG_DIR}")
    if sts['replicas'] < 2: out.append("fewer than 2 nodes: backups 1 has nowhere to go")
    rules = [r for role in find(docs, 'Role') for r in role['rules']]
    for res in ('endpoints', 'pods'):
        if not any(res in r['resources'] and {'get', 'list'} <= set(r['verbs']) for r in rules):
            out.append(f"no Role grants get and list on {res}")
    env = {e['name'] for e in sts['template']['spec']['containers'][0].get('env', [])}
    xml = find(docs, 'ConfigMap', render.CONFIG_MAP)[0]['data']['node.xml']
    for var in set(re.findall(r"systemEnvironment\['(\w+)'\]", xml)) - env:
        out.append(f"node.xml reads ${var}, which the container's env does not set")
    settings = find(docs, 'ConfigMap', 'alliedium-settings')[0]['data']
    fields = Settings.model_fields
    for k in settings:
        if not k.startswith('ALLIEDIUM_') or k.removeprefix('ALLIEDIUM_').lower() not in fields:
            out.append(f"alliedium-settings: {k} is no setting")
    s = Settings(**{k.removeprefix('ALLIEDIUM_').lower(): v for k, v in settings.items()})
    pods = {f"{find(docs, 'StatefulSet')[0]['metadata']['name']}-{i}.{sts['serviceName']}" for i in range(sts['replicas'])}
    if {h for h, _ in s.ignite_addresses()} != pods: out.append(f"ALLIEDIUM_IGNITE_HOSTS {s.ignite_hosts} != {pods}")
    if s.ignite_backups < 1: out.append("ALLIEDIUM_IGNITE_BACKUPS < 1")
    pdbs = [p for p in find(docs, 'PodDisruptionBudget')
            if _selects(p['spec']['selector'], sts['template']['metadata']['labels'])]
    if not pdbs or any(p['spec'].get('maxUnavailable', sts['replicas']) > s.ignite_backups for p in pdbs):
        out.append(f"no PodDisruptionBudget keeps evictions of Ignite pods within the backups ({s.ignite_backups})")
    for flag, prop in (('ignite_auth', 'authenticationEnabled'), ('ignite_tls', 'sslContextFactory'),
                       ('ignite_tde', 'encryptionSpi')):
        if getattr(s, flag) != (f'name="{prop}"' in xml):
            out.append(f"clients' {flag}={getattr(s, flag)} but node.xml {'has' if not getattr(s, flag) else 'lacks'} {prop}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# The tests

@pytest.mark.parametrize('version', K8S_VERSIONS)
def test_builtin_kinds_validate(docs, version):
    kinds = {d['kind'] for d in docs}
    assert {'StatefulSet', 'Service', 'ConfigMap', 'ServiceAccount', 'Role', 'RoleBinding', 'NetworkPolicy',
            'CronJob', 'Job', 'PersistentVolumeClaim', 'RayService', 'PodDisruptionBudget'} <= kinds, kinds
    assert builtin_problems(docs, version) == []


def test_rayservice(docs): assert rayservice_problems(docs) == []


def test_serve_deployments_fit_the_ray_workers(docs):
    deps = app_deployments(docs)
    assert {nm for nm, _, _ in deps} == {'TriageAPI', 'ModelPool'}, deps
    assert serve_fit_problems(docs) == []


def test_every_container_has_requests_and_limits(docs): assert resource_problems(docs) == []


def test_no_secret_values(docs): assert secret_problems(docs) == []


def test_network_policies(docs): assert network_problems(docs) == []


def test_references_resolve(docs): assert reference_problems(docs) == []


def test_ignite_statefulset_agrees_with_its_config(docs): assert ignite_problems(docs) == []


def test_node_config_is_rendered_from_the_template():
    "ignite-config.yaml is what render.py makes now from ignite/node.xml.tmpl and alliedium's settings."
    r = subprocess.run([sys.executable, str(K8S/'render.py'), '--check'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr


def test_init_job_uses_existing_functions(docs):
    "The init Job's script imports names alliedium has."
    job = find(docs, 'Job', 'alliedium-ignite-init')[0]
    script = job['spec']['template']['spec']['containers'][0]['command'][-1]
    compile(script, 'init', 'exec')
    imports = re.findall(r'^from (alliedium[\w.]*) import (.+)$', script, re.M)
    assert imports
    for mod, names in imports:
        m = importlib.import_module(mod)
        for n in names.split(','): assert hasattr(m, n.strip()), f"{mod} has no {n.strip()}"


LOADER = """
import java.lang.reflect.Field;
import org.apache.ignite.configuration.IgniteConfiguration;
import org.apache.ignite.internal.IgnitionEx;
import org.apache.ignite.spi.discovery.tcp.TcpDiscoverySpi;
public class LoadConfig {
    public static void main(String[] a) throws Exception {
        IgniteConfiguration c = IgnitionEx.loadConfiguration(a[0]).get1();
        Object finder = ((TcpDiscoverySpi) c.getDiscoverySpi()).getIpFinder();
        Object conn = null;
        for (Field f : finder.getClass().getDeclaredFields())
            if (f.getType().getSimpleName().equals("KubernetesConnectionConfiguration")) {
                f.setAccessible(true); conn = f.get(finder); }
        org.apache.ignite.kubernetes.configuration.KubernetesConnectionConfiguration k =
            (org.apache.ignite.kubernetes.configuration.KubernetesConnectionConfiguration) conn;
        System.out.println("name=" + c.getIgniteInstanceName() + "\\nconsistentId=" + c.getConsistentId()
            + "\\nlocalHost=" + c.getLocalHost() + "\\nworkDirectory=" + c.getWorkDirectory()
            + "\\nwalPath=" + c.getDataStorageConfiguration().getWalPath()
            + "\\nwalArchivePath=" + c.getDataStorageConfiguration().getWalArchivePath()
            + "\\nipFinder=" + finder.getClass().getName()
            + "\\nnamespace=" + k.getNamespace() + "\\nserviceName=" + k.getServiceName()
            + "\\nincludeNotReady=" + k.getIncludeNotReadyAddresses()
            + "\\nauth=" + c.isAuthenticationEnabled() + "\\nssl=" + (c.getSslContextFactory() != null)
            + "\\nclientSsl=" + c.getClientConnectorConfiguration().isSslEnabled()
            + "\\nencryption=" + c.getEncryptionSpi().getClass().getSimpleName());
    }
}
"""


@pytest.mark.timeout(600)
def test_ignite_loads_the_node_config(docs, tmp_path):
    """Ignite's own Spring loader reads node.xml with the image's jars (ignite/lib + deploy/ignite-kubernetes.pom.xml,
    resolved by Maven as the Dockerfile does) and the pod's environment: every property and SpEL expression resolves."""
    from alliedium.ignite import JAVA17_OPENS
    settings = Settings()
    java, mvn = shutil.which(settings.java), shutil.which('mvn')
    assert java and mvn and (settings.libs/'ignite-core-2.15.0.jar').exists(), "make setup installs JDK 17, Maven, jars"
    r = subprocess.run([mvn, '-q', '-B', '-f', str(ROOT/'deploy'/'ignite-kubernetes.pom.xml'), 'dependency:copy-dependencies',
                        f'-DoutputDirectory={tmp_path/"k8s"}'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (tmp_path/'k8s'/'ignite-kubernetes-2.15.0.jar').exists()
    render = load_render()
    (tmp_path/'node.xml').write_text(find(docs, 'ConfigMap', render.CONFIG_MAP)[0]['data']['node.xml'])
    (tmp_path/'LoadConfig.java').write_text(LOADER)
    env = dict(PATH='/usr/bin:/bin', POD_IP='10.1.2.3', POD_NAMESPACE='alliedium', HOSTNAME='alliedium-ignite-1',
               ALLIEDIUM_IGNITE_STORE_PASSWORD='unused-here')
    r = subprocess.run([java, *JAVA17_OPENS, '-cp', f'{settings.libs}/*:{tmp_path/"k8s"}/*', 'LoadConfig.java',
                        'node.xml'], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = dict(line.split('=', 1) for line in r.stdout.splitlines() if '=' in line and not line.startswith('SLF4J'))
    assert got == dict(
        name='alliedium-ignite-1', consistentId='alliedium-ignite-1', localHost='10.1.2.3',
        workDirectory=render.DATA_DIR, walPath=f'{render.WAL_DIR}/wal', walArchivePath=f'{render.WAL_DIR}/archive',
        ipFinder=render.K8S_FINDER, namespace='alliedium', serviceName=render.DISCOVERY_SERVICE, includeNotReady='true',
        auth='true', ssl='true', clientSsl='true', encryption='KeystoreEncryptionSpi'), got


# ---------------------------------------------------------------------------------------------------------------
# The checks catch broken manifests (each on a copy, one breakage at a time)

def _broken(docs, kind, nm, change):
    out = copy.deepcopy(docs)
    change(find(out, kind, nm)[0])
    return out


def _container(d, i=0):
    s = d['spec']
    t = s['jobTemplate']['spec']['template'] if d['kind'] == 'CronJob' else s['template']
    return t['spec']['containers'][i]


def test_a_misspelt_or_mistyped_field_is_caught(docs):
    def typo(d): _container(d)['resource'] = _container(d).pop('resources')
    assert any('resource' in p for p in builtin_problems(_broken(docs, 'StatefulSet', 'alliedium-ignite', typo), '1.30'))
    def wrong_type(d): d['spec']['replicas'] = 'three'
    assert any('replicas' in p for p in builtin_problems(_broken(docs, 'StatefulSet', 'alliedium-ignite', wrong_type),
                                                         '1.37'))


def test_a_rayservice_breakage_is_caught(docs):
    cases = {
        'import_path': lambda d: d['spec'].update(serveConfigV2=d['spec']['serveConfigV2'].replace(
            'serve.app:build_app', 'serve.app:app_builder')),
        'not YAML': lambda d: d['spec'].update(serveConfigV2='applications: [\n'),
        'headGroupSpec': lambda d: d['spec']['rayClusterConfig'].pop('headGroupSpec'),
        'rayStartParams': lambda d: d['spec']['rayClusterConfig']['headGroupSpec']['rayStartParams'].update(
            {'num-cpus': 0}),
        'rayVersion': lambda d: d['spec']['rayClusterConfig'].update(rayVersion='2.9.0'),
        'serveConfig': lambda d: d['spec'].update(serveConfig=d['spec'].pop('serveConfigV2')),
        'containerz': lambda d: d['spec']['rayClusterConfig']['workerGroupSpecs'][0]['template']['spec'].update(
            containerz=[]),
        'http_options': lambda d: d['spec'].update(serveConfigV2=d['spec']['serveConfigV2'].replace(
            'host: 0.0.0.0', 'host: 127.0.0.1')),
    }
    for what, change in cases.items():
        problems = rayservice_problems(_broken(docs, 'RayService', 'alliedium-serve', change))
        assert problems, f"a RayService with a broken {what} passed"


def test_deployments_that_do_not_fit_are_caught(docs):
    def many(d): d['data']['ALLIEDIUM_SERVE_MODEL_REPLICAS'] = '12'
    problems = serve_fit_problems(_broken(docs, 'ConfigMap', 'alliedium-settings', many))
    assert any('CPUs' in p for p in problems), problems


def test_a_container_without_limits_is_caught(docs):
    def no_limits(d): _container(d)['resources'].pop('limits')
    problems = resource_problems(_broken(docs, 'CronJob', 'alliedium-retrain', no_limits))
    assert any('retrain' in p and 'limits' in p for p in problems), problems


def test_a_committed_secret_value_is_caught(docs):
    leaked = copy.deepcopy(docs) + [{'apiVersion': 'v1', 'kind': 'Secret', 'metadata': {'name': SECRET},
                                     'stringData': {'store-password': 'hunter2'}, '_file': 'secret.yaml'}]
    assert secret_problems(leaked)
    def literal(d): _container(d)['env'].append({'name': 'ALLIEDIUM_IGNITE_PASSWORD', 'value': 'hunter2'})
    assert secret_problems(_broken(docs, 'CronJob', 'alliedium-retrain', literal))
    def wrong_key(d): _container(d)['env'][3]['valueFrom']['secretKeyRef']['key'] = 'keystore-password'
    assert secret_problems(_broken(docs, 'StatefulSet', 'alliedium-ignite', wrong_key))
    def in_settings(d): d['data']['ALLIEDIUM_IGNITE_PASSWORD'] = 'hunter2'
    assert secret_problems(_broken(docs, 'ConfigMap', 'alliedium-settings', in_settings))
    def no_artifact_key(d):
        items = d['spec']['rayClusterConfig']['workerGroupSpecs'][0]['template']['spec']['volumes'][0]['secret']['items']
        items[:] = [i for i in items if i['key'] != 'artifact.key']
    assert any('artifact.key' in p for p in secret_problems(_broken(docs, 'RayService', 'alliedium-serve', no_artifact_key)))


def test_an_opened_port_is_caught(docs):
    def ignite_to_all(d): d['spec']['ingress'][0]['from'].append({'namespaceSelector': {}})
    assert any('other namespaces' in p for p in network_problems(_broken(docs, 'NetworkPolicy', 'alliedium-ignite',
                                                                         ignite_to_all)))
    def dashboard_to_all(d): d['spec']['ingress'][0]['ports'].append({'protocol': 'TCP', 'port': 8265})
    assert network_problems(_broken(docs, 'NetworkPolicy', 'alliedium-serve-api', dashboard_to_all))
    def wrong_pods(d): d['spec']['podSelector']['matchLabels']['app.kubernetes.io/name'] = 'ignite'
    assert network_problems(_broken(docs, 'NetworkPolicy', 'alliedium-ignite', wrong_pods))
    assert network_problems([d for d in docs if d['metadata']['name'] != 'alliedium-default-deny'])


def test_a_broken_reference_is_caught(docs):
    def other_service(d): d['spec']['serviceName'] = 'ignite'
    assert reference_problems(_broken(docs, 'StatefulSet', 'alliedium-ignite', other_service))
    assert ignite_problems(_broken(docs, 'StatefulSet', 'alliedium-ignite', other_service))
    def no_wal_volume(d): d['spec']['volumeClaimTemplates'] = d['spec']['volumeClaimTemplates'][:1]
    assert any('WAL' in p for p in ignite_problems(_broken(docs, 'StatefulSet', 'alliedium-ignite', no_wal_volume)))
    def no_tls(d): d['data']['ALLIEDIUM_IGNITE_TLS'] = 'false'
    assert any('ignite_tls' in p for p in ignite_problems(_broken(docs, 'ConfigMap', 'alliedium-settings', no_tls)))
    def two_at_once(d): d['spec']['maxUnavailable'] = 2
    assert any('PodDisruptionBudget' in p
               for p in ignite_problems(_broken(docs, 'PodDisruptionBudget', 'alliedium-ignite', two_at_once)))


def test_a_stale_node_config_is_caught(tmp_path):
    render = load_render()
    stale = tmp_path/'ignite-config.yaml'
    stale.write_text(render.configmap().replace('value="10800"', 'value="10801"'))
    render.OUT = stale
    assert render.main(['--check']) == 1


@pytest.mark.timeout(300)
def test_secret_keys_are_the_files_alliedium_generates(tmp_path):
    """The Secret's keys the manifests use are exactly the files deploy/k8s/make_secrets.py writes (what the README
    has the user create the Secret from): `ensure_secrets` with authentication, TLS and TDE on, and every server key."""
    r = subprocess.run([sys.executable, str(K8S/'make_secrets.py'), str(tmp_path/'secrets')], capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    made = {p.name for p in (tmp_path/'secrets').iterdir()}
    assert made == secret_keys(), made
    assert 'kubectl -n NAMESPACE create secret generic alliedium-ignite-secrets' in r.stdout
    r = subprocess.run([sys.executable, str(K8S/'make_secrets.py'), str(tmp_path/'secrets')], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 and 'not empty' in r.stderr, "existing secrets must never be overwritten"
    called = set()
    for f in (ROOT/'alliedium').rglob('*.py'): called |= set(re.findall(r"server_key\('(\w+)'", f.read_text()))
    assert called and called <= set(load_script('make_secrets').SERVER_KEYS), called
