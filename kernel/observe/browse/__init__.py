"""``orch browse``: Datasette over the project's history, read-only, with the kernel's metadata,
canned queries and a DAG picture per workstream.

Public API:
    The modules: ``metadata`` (descriptions, facets and canned queries, from ``tables.yaml``
    and ``queries.sql``; the generated reference page), ``serve`` (the Datasette process),
    ``plugin`` (the Datasette plugin: the DAG pages, read-only connections), ``plandoc`` (the
    plan documents, computed in a process of their own).

Stability Guarantees:
    Importing this package or ``metadata`` does not import Datasette; only ``serve`` and
    ``plugin`` do, in the Datasette process.

Integration Points:
    ``kernel.cli.browse`` (the command), pyproject.toml's ``datasette`` entry point (the
    plugin), ``tools/docgen.py`` (docs/operations/DATABASE.md).

Dependencies:
    None (standard library only).
"""
