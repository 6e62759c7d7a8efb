"""The subcommands of `vicregl`, one module per group, all registered on commands.app.app."""
