"""Real photos and real video, end to end (``python -m avatar_lightning.real_demo``).

The pieces of the real-data demo: which SynShot prior to invert (:mod:`.prior`), the two shipped
real inputs and their tracking (:mod:`.subjects`), inverting the prior onto a tracked folder through
the same CLI a user runs, with the per-stage snapshots that measure the domain gap (:mod:`.fit`), and
scoring, driving, tables and figures (:mod:`.reenact`). ``avatar_lightning`` never imports
``data_modules``: the tracked folders reach the inversion as a ``class_path`` config of
``data_modules.insta.INSTADataModule``.
"""
