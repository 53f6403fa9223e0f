"""attnkit's built-in plugins, registered through the same hooks as installed plugins."""
