"""Render the generated part of deploy/k8s from the project's own code: the Ignite node configuration.

    .venv/bin/python deploy/k8s/render.py           # rewrite deploy/k8s/ignite-config.yaml
    .venv/bin/python deploy/k8s/render.py --check   # exit 1 when it is out of date (tests/test_manifests.py)

`ignite-config.yaml` is the ConfigMap the Ignite StatefulSet mounts: `node.xml` is what `alliedium ignite start`
writes for a local node (`alliedium.ignite.node_config` over `ignite/node.xml.tmpl`, security properties by
`security_xml`), rendered with `POD_SETTINGS`, then changed where a pod differs from a local node:
Kubernetes discovery (`TcpDiscoveryKubernetesIpFinder` over the headless Service) instead of a fixed address
list, the pod's IP and name from its environment, and data and WAL on two persistent volumes. `jvm.args` are
the JVM options of `alliedium.ignite.java_command` (heap, `--add-opens`, system properties).
"""
from __future__ import annotations
import argparse, difflib, sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent/'ignite-config.yaml'

# Names shared with the other manifests (tests/test_manifests.py checks they agree).
CONFIG_MAP = 'alliedium-ignite-config'
DISCOVERY_SERVICE = 'alliedium-ignite-discovery'  # the headless Service the IP finder lists the pods of
CONFIG_DIR = '/etc/alliedium/ignite'              # the ConfigMap's mount point
SECRETS_DIR = '/etc/alliedium/secrets'            # the Secret alliedium-ignite-secrets' mount point
DATA_DIR = '/ignite/data'                         # PVC `data`: work directory (db/, binary_meta/, marshaller/)
WAL_DIR = '/ignite/wal'                           # PVC `wal`: write-ahead log and its archive
APP_DIR = '/opt/alliedium'                        # the checkout in the image (deploy/Dockerfile)
PYTHON = '/usr/local/bin/python'                  # the image's Python (colocated jobs)

# Settings of a node in a pod (the rest are Settings' defaults, as for a local node).
POD_SETTINGS = dict(
    ignite_heap='1g', ignite_data_region_mb=2048,
    ignite_auth=True, ignite_tls=True, ignite_tde=True, secrets_dir=SECRETS_DIR,
)
NODES = 3  # several nodes: the node starts INACTIVE; the init Job activates the cluster once all joined

SPEL = "#{{systemEnvironment['{}']}}"  # Spring reads the pod's environment (set by the StatefulSet)
BEANS = 'http://www.springframework.org/schema/beans'
XSI = 'http://www.w3.org/2001/XMLSchema-instance'
K8S_FINDER = 'org.apache.ignite.spi.discovery.tcp.ipfinder.kubernetes.TcpDiscoveryKubernetesIpFinder'
K8S_CONNECTION = 'org.apache.ignite.kubernetes.configuration.KubernetesConnectionConfiguration'


def _settings():
    from alliedium.config import Settings

    class PodSettings(Settings):
        "Settings' defaults and POD_SETTINGS only: the caller's ALLIEDIUM_* environment (a test's node) is not the pod's."
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, **others): return (init_settings,)

    # every host the template names is the pod's own IP; name and directories are set below per pod
    return PodSettings(home=ROOT, var_dir='/nonexistent', ignite_host=SPEL.format('POD_IP'), **POD_SETTINGS)


def _q(tag: str) -> str: return f'{{{BEANS}}}{tag}'


def _prop(bean: ET.Element, name: str) -> ET.Element:
    "The `<property name=...>` child of `bean`, made when missing."
    for p in bean.findall(_q('property')):
        if p.get('name') == name: return p
    p = ET.SubElement(bean, _q('property'), name=name)
    p.tail = '\n'
    return p


def _bean_of(bean: ET.Element, prop: str) -> ET.Element:
    "The bean a property of `bean` holds."
    inner = _prop(bean, prop).find(_q('bean'))
    if inner is None: raise ValueError(f"node.xml: property {prop} holds no bean")
    return inner


def _set(bean: ET.Element, name: str, value: str):
    p = _prop(bean, name)
    for c in list(p): p.remove(c)
    p.set('value', value)


def node_xml() -> str:
    "The node configuration of an Ignite pod."
    from alliedium.ignite import LocalNode, node_config
    xml = node_config(LocalNode(_settings()), nodes=NODES)
    ET.register_namespace('', BEANS); ET.register_namespace('xsi', XSI)
    root = ET.fromstring(xml, parser=ET.XMLParser(target=ET.TreeBuilder(insert_comments=True)))
    cfg = root.find(_q('bean'))
    # the pod's name (alliedium-ignite-0, ...) is stable in a StatefulSet: the persistence folder's consistent id
    for name in ('igniteInstanceName', 'consistentId'): _set(cfg, name, SPEL.format('HOSTNAME'))
    _set(cfg, 'workDirectory', DATA_DIR)
    storage = _bean_of(cfg, 'dataStorageConfiguration')
    _set(storage, 'walPath', f'{WAL_DIR}/wal')
    _set(storage, 'walArchivePath', f'{WAL_DIR}/archive')
    finder = _prop(_bean_of(cfg, 'discoverySpi'), 'ipFinder')
    for c in list(finder): finder.remove(c)
    conn = ET.fromstring(
        f'<bean xmlns="{BEANS}" class="{K8S_FINDER}"><constructor-arg>'
        f'<bean class="{K8S_CONNECTION}">'
        f'<property name="namespace" value="{SPEL.format("POD_NAMESPACE")}"/>'
        f'<property name="serviceName" value="{DISCOVERY_SERVICE}"/>'
        # pods find each other before they are ready (the headless Service publishes not-ready addresses too)
        '<property name="includeNotReadyAddresses" value="true"/>'
        '</bean></constructor-arg></bean>')
    finder.append(conn)
    ET.indent(root, space='  ')
    header = ('<?xml version="1.0" encoding="UTF-8"?>\n'
              '<!-- Generated by deploy/k8s/render.py from ignite/node.xml.tmpl (alliedium.ignite.node_config); '
              'do not edit. -->\n')
    return header + ET.tostring(root, encoding='unicode') + '\n'


def jvm_args() -> list[str]:
    "The node JVM's options: `alliedium.ignite.java_command`'s, with the pod's paths."
    from alliedium.ignite import LocalNode, java_command
    cmd = java_command(LocalNode(_settings()))
    args = cmd[1:cmd.index('-cp')]
    fixed = {'-DIGNITE_HOME=': DATA_DIR, '-Dalliedium.home=': APP_DIR, '-Dalliedium.python=': PYTHON}
    return [next((k + v for k, v in fixed.items() if a.startswith(k)), a) for a in args]


def _block(text: str, indent: str = '    ') -> str:
    return ''.join(indent + line if line.strip() else '\n' for line in text.splitlines(keepends=True))


def configmap() -> str:
    "ignite-config.yaml: the ConfigMap with node.xml and jvm.args."
    return (
        '# Generated by deploy/k8s/render.py (.venv/bin/python deploy/k8s/render.py); do not edit.\n'
        '# The Ignite node configuration of alliedium.ignite.node_config, for the pods of the StatefulSet\n'
        '# alliedium-ignite: Kubernetes discovery, data and WAL on persistent volumes, authentication, TLS\n'
        '# and TDE on (their files come from the Secret alliedium-ignite-secrets, see README.md).\n'
        'apiVersion: v1\n'
        'kind: ConfigMap\n'
        'metadata:\n'
        f'  name: {CONFIG_MAP}\n'
        '  labels:\n'
        '    app.kubernetes.io/name: alliedium-ignite\n'
        '    app.kubernetes.io/part-of: alliedium\n'
        'data:\n'
        '  jvm.args: |\n' + _block('\n'.join(jvm_args()) + '\n') +
        '  node.xml: |\n' + _block(node_xml()))


def _shown(p: Path) -> str:
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--check', action='store_true', help='exit 1 if ignite-config.yaml is out of date')
    a = ap.parse_args(argv)
    new = configmap()
    if a.check:
        old = OUT.read_text() if OUT.exists() else ''
        if old == new: return 0
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                   _shown(OUT), 'rendered now'))
        print(f"{_shown(OUT)} is out of date: run .venv/bin/python deploy/k8s/render.py", file=sys.stderr)
        return 1
    OUT.write_text(new)
    print(f"wrote {_shown(OUT)}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
