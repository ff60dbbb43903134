"""gnorm's built-in plugins. Each module is declared under the ``gnorm`` entry-point group in
pyproject.toml and loaded by the same path as a third-party plugin."""
