"Command modules: each registers its commands on `alliedium.cli.app` when imported (see `alliedium.cli.load_commands`)."
