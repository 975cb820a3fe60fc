"""Models are programs: what of a model may run, read and write, checked before it does (docs/guide/security.md)."""
