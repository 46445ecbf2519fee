"""Test session: one real Ignite node on free ports in a temporary work dir, stopped afterwards.

Tests that need Ignite take the `ignite` fixture (the node's `Settings`); the process
environment points at that node too, so subprocesses (the CLI, nbdev-test) use it.
"""
import importlib, os
from pathlib import Path

import pytest

from alliedium.config import Settings, reload_settings
from alliedium.ignite import free_port, start_local_node, stop_local_node
from alliedium.schema import ensure_schema


def node_env(var_dir) -> dict:
    "Environment variables for a local node of its own: free ports, its own var dir."
    return dict(ALLIEDIUM_VAR_DIR=str(var_dir), ALLIEDIUM_IGNITE_HOSTS='',
                ALLIEDIUM_IGNITE_CLIENT_PORT=str(free_port()),
                ALLIEDIUM_IGNITE_DISCOVERY_PORT=str(free_port()),
                ALLIEDIUM_IGNITE_COMMUNICATION_PORT=str(free_port()),
                ALLIEDIUM_IGNITE_HEAP='768m', ALLIEDIUM_IGNITE_DATA_REGION_MB='256')


def node_settings(var_dir) -> Settings:
    "Settings of a node of its own (the environment is left alone)."
    return Settings(**{k.removeprefix('ALLIEDIUM_').lower(): v for k, v in node_env(var_dir).items()})


@pytest.fixture(scope='session')
def ignite(tmp_path_factory):
    "The session's Ignite node, with the schema created."
    env = node_env(tmp_path_factory.mktemp('var'))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    settings = reload_settings()
    start_local_node(settings)
    try:
        ensure_schema(settings)
        yield settings
    finally:
        stop_local_node(settings)
        for k, v in saved.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
        reload_settings()


# Fixtures of each area live in tests/fixtures_<area>.py; importing them here shares them with every test.
for _f in sorted(Path(__file__).parent.glob('fixtures_*.py')):
    _m = importlib.import_module(_f.stem)
    globals().update({k: v for k, v in vars(_m).items() if not k.startswith('_')})
