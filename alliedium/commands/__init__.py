"Command modules: each registers its commands on `alliedium.commands.app.app` when imported."
