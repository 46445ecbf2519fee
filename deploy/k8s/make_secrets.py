"""Generate the files of the Secret alliedium-ignite-secrets, as a secured local node makes its own.

    S=$(mktemp -d)/secrets && .venv/bin/python deploy/k8s/make_secrets.py $S   # then the kubectl command it prints

Into an empty folder: the Ignite passwords, the nodes' keystore and truststore, the CA certificate the thin
clients verify the nodes with and the TDE master key (`alliedium.ignite.ensure_secrets` with authentication, TLS
and TDE on), and the server keys that sign model artifacts and webhook secrets (`alliedium.config.server_key`):
every pod that trains or serves must hold the same ones. Needs a JDK's keytool.
"""
from __future__ import annotations
import argparse, os, sys
from pathlib import Path

SECRET = 'alliedium-ignite-secrets'
SERVER_KEYS = ('artifact', 'webhook')  # the names alliedium.config.server_key is called with


def generate(folder: Path) -> list[str]:
    "Write every file of the Secret into `folder`; their names (the Secret's keys)."
    from alliedium.config import Settings, server_key
    from alliedium.ignite import ensure_secrets
    folder = Path(folder).resolve()
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder} is not empty: give a new folder (existing secrets are never overwritten)")
    for name in SERVER_KEYS: os.environ.pop(f'ALLIEDIUM_{name.upper()}_KEY', None)  # the files, not the environment's
    s = Settings(secrets_dir=folder, ignite_auth=True, ignite_tls=True, ignite_tde=True,
                 ignite_password='', ignite_admin_password='', ignite_store_password='')
    ensure_secrets(s)
    for name in SERVER_KEYS: server_key(name, s)
    (folder/'.lock').unlink(missing_ok=True)
    return sorted(p.name for p in folder.iterdir())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('folder', type=Path, help='a new folder for the files (delete it once the Secret exists)')
    a = ap.parse_args(argv)
    files = generate(a.folder)
    print('\n'.join(files))
    print(f"\nkubectl -n NAMESPACE create secret generic {SECRET} --from-file={a.folder}/ && rm -rf {a.folder}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
