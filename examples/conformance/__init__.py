"""The conformance suite: real architectures (tiny widths, seeded random weights) that
tritonfleet must export, convert, serve and match with PyTorch at several sizes of every
dynamic axis. ``models`` defines the architectures in plain torch (BERT from a ``transformers``
config, nothing downloaded); ``suite`` writes their checkpoints, data and specs into a folder.
Imports nothing of tritonfleet (a leaf, like the other examples)."""
