"""Synthetic datasets with exact labels, written in real formats: shapes, people, faces."""

from sightkit.data.synthetic import faces, people, shapes  # noqa: F401  (imported for their @export declarations)
