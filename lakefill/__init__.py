"""lakefill: find disguised nulls, validate, impute with a masked autoencoder, write to Delta Lake.

The installed package maps the repository's top-level folders into one namespace:
``lakefill.transforms`` (the stages and their Beam and Spark adapters), ``lakefill.models`` (the
PyTorch model) and ``lakefill.pipelines`` (the jobs and the ``lakefill`` command). This package
itself holds what all of them share and that imports none of them: the schema types
(``lakefill.schema``), the errors (``lakefill.errors``) and small value and Arrow helpers.
Imports go one way: pipelines -> transforms -> models -> lakefill.
"""

__version__ = "0.1.0"
