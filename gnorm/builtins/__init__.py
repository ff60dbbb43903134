"""gnorm's built-in plugins: ordinary plugin modules (each implements registration hooks with
``@gnorm.hookimpl``), listed in code so that a bare source tree has them without install metadata.

The registry imports and registers every module of :data:`BUILTIN_PLUGINS`, in this order, before the
third-party packages of the ``gnorm`` entry-point group; nothing else in gnorm imports a built-in by
name to use it as a piece.
"""

#: gnorm's own plugin modules, registered first and reported as provided by gnorm itself.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "gnorm.builtins.tasks",
    "gnorm.builtins.architectures",
    "gnorm.builtins.controllers",
    "gnorm.builtins.criteria",
    "gnorm.builtins.analyzers",
    "gnorm.builtins.observables",
    "gnorm.builtins.executors",
)
#: Issue 14's gradient transforms (grokfast_ema, grokfast_ma, orthogonal_gradient).
BUILTIN_PLUGINS += ("gnorm.builtins.transforms",)
#: issue 14: how members learn.
BUILTIN_PLUGINS += ("gnorm.builtins.optimizers", "gnorm.builtins.losses")
