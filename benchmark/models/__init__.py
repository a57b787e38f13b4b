"""The model zoo: the papers' teachers and students, each a registered builder with named feature points.

Builders register themselves in :data:`benchmark.registry.MODELS` when :func:`benchmark.registry.load_all`
imports this package's modules; see ``docs/models.md`` for the table of models, sources and costs.
"""
